"""Run every bench/bench_*.py and write bench/results.md.

Each benchmark reports its workload, its time, a baseline measured in the same run on the
same machine, the ratio, and the peak memory (max RSS of a child process). Absolute times on
shared machines are noise; the ratios are what to compare between runs.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
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
    store = HERE / "results"
    store.mkdir(exist_ok=True)
    for name in modules:
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        found = module.run()
        for row in found:
            print("   ", row, flush=True)
        (store / f"{name}.json").write_text(json.dumps({"machine": machine(), "rows": found}, indent=1))
    # the table holds the latest run of every benchmark (a partial run keeps the others' rows)
    rows = [r for f in sorted(store.glob("bench_*.json")) for r in json.loads(f.read_text())["rows"]]
    lines = [
        "# Benchmark results", "",
        f"Written {_dt.datetime.now().isoformat(timespec='seconds')} on {machine()}; each benchmark's rows "
        "come from its latest run (bench/results/).", "",
        "| benchmark | workload | time (s) | baseline | baseline time (s) | ratio | peak memory (MiB) | target | ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['seconds'] / r['baseline_seconds']:.2f}" if r["baseline_seconds"] else "—"
        note = f" ({r['note']})" if r.get("note") else ""
        lines.append(f"| {r['name']} | {r['workload']}{note} | {r['seconds']:.1f} | {r['baseline']} | "
                     f"{r['baseline_seconds']:.1f} | {ratio} | "
                     f"{r['peak_mib']:.0f} | {r.get('target', '')} | {r.get('ok', '')} |")
    lines += ["", "ratio = time / baseline time, both measured in this run.", ""]
    (HERE / "results.md").write_text("\n".join(lines))
    print((HERE / "results.md").read_text())
    # missed targets are reported in the table, not as a failed command
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
