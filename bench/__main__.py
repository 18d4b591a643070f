"""Run every bench/bench_*.py and write bench/results.md.

Each benchmark reports its workload, its time, a baseline measured in the same run on the
same machine, the ratio, and the peak memory (max RSS of a child process). Absolute times on
shared machines are noise; the ratios are what to compare between runs.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}"


def main(names=None) -> int:
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if names:
        modules = [m for m in modules if any(n in m for n in names)]
    rows = []
    for name in modules:
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        for row in module.run():
            print("   ", row, flush=True)
            rows.append(row)
    lines = [
        "# Benchmark results", "",
        f"Run {_dt.datetime.now().isoformat(timespec='seconds')} on {machine()}.", "",
        "| benchmark | workload | time (s) | baseline | baseline time (s) | ratio | peak memory (MiB) | target | ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['workload']} | {r['seconds']:.1f} | {r['baseline']} | "
                     f"{r['baseline_seconds']:.1f} | {r['seconds'] / r['baseline_seconds']:.2f} | "
                     f"{r['peak_mib']:.0f} | {r.get('target', '')} | {r.get('ok', '')} |")
    lines += ["", "ratio = time / baseline time, both measured in this run.", ""]
    (HERE / "results.md").write_text("\n".join(lines))
    print((HERE / "results.md").read_text())
    return 0 if all(r.get("ok", True) is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
