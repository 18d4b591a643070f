"""Helpers: run Python code in a child process and measure its wall time and peak RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_WRAPPER = r"""
import json, resource, runpy, sys, time
code = sys.argv[1]
start = time.perf_counter()
namespace = {}
exec(compile(code, "<bench>", "exec"), namespace)
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("BENCH_RESULT " + json.dumps({"seconds": elapsed, "peak_mib": peak, "extra": namespace.get("RESULT")}))
"""


def measure(code: str, timeout: float = 1800) -> dict:
    """Run ``code`` in a fresh interpreter; return seconds, peak_mib and the code's RESULT."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROJ_DATA": os.environ.get("PROJ_DATA", "/usr/share/proj")}
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, code], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-4000:])
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")][-1]
    return json.loads(line[len("BENCH_RESULT "):])
