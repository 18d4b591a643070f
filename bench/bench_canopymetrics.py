"""canopymetrics (full metric set, 20 m) on a ≥ 20-million-point LAZ catalog made here from
shifted copies of the real BCTS tiles (issue 4). Baseline: laspy + lazrs decoding the same
files on one core (lazrs' single-threaded backend), in the same run, since one worker uses one
core; the all-core decode time is reported beside it. Targets: ≤ 1.5× the decode time with 1 worker, ≥ 1.7× faster with 2
workers than with 1, peak memory < 1 GiB."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .common import ROOT, measure

SOURCE = ROOT.parent / "shared" / "data" / "lidar" / "bcts"
COPIES = 8

MAKE = """
import glob, laspy, numpy as np
n = 0
for c in range({copies}):
    for f in sorted(glob.glob({src!r} + "/*.laz")):
        las = laspy.read(f)
        las.x = np.asarray(las.x) + 300.0 * c  # a copy shifted east, beside the others
        las.write(f"{out}/copy{{c}}_" + f.split("/")[-1])
        n += len(las.points)
RESULT = n
"""

DECODE = """
import glob, laspy
n = 0
backend = None if {threads} else laspy.LazBackend.Lazrs
for f in sorted(glob.glob({out!r} + "/*.laz")):
    with laspy.open(f, laz_backend=backend) as r:
        for chunk in r.chunk_iterator(2_000_000):
            x, y, z = chunk.x, chunk.y, chunk.z
            n += len(chunk)
RESULT = n
"""

METRICS = """
import resource
from forest_carbon_plugin.core.lidar.pixel_metrics import MetricsSettings, canopy_metrics
r = canopy_metrics({out!r}, {out!r} + "/../metrics_{w}.tif", MetricsSettings(res_m=20, normalize="never"),
                   max_workers={w})
RESULT = {{"points": r.points, "children_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}
"""


def run():
    if not SOURCE.is_dir():
        print(f"skipped: {SOURCE} is absent")
        return []
    work = Path(tempfile.mkdtemp(prefix="bench_cm_"))
    tiles = work / "tiles"
    tiles.mkdir()
    points = measure(MAKE.format(copies=COPIES, src=str(SOURCE), out=str(tiles)))["extra"]
    decode = measure(DECODE.format(out=str(tiles), threads=False))  # one core, as one worker
    decode_all = measure(DECODE.format(out=str(tiles), threads=True))  # lazrs on every core
    rows = []
    one = measure(METRICS.format(out=str(tiles), w=1))
    two = measure(METRICS.format(out=str(tiles), w=2))
    for w, r in ((1, one), (2, two)):
        peak = max(r["peak_mib"], r["extra"]["children_peak_mib"])
        rows.append({
            "name": f"canopymetrics {w} worker(s)",
            "workload": f"{COPIES * 4} LAZ tiles, {points:,} points, 20 m, 40 bands "
                        f"({points / r['seconds'] / 1e6:.2f} M points/s; lazrs on all cores decodes in "
                        f"{decode_all['seconds']:.1f} s)",
            "seconds": r["seconds"], "peak_mib": peak,
            "baseline": "laspy+lazrs decode of the same files, one core", "baseline_seconds": decode["seconds"],
            "target": "<= 1.5x decode, < 1024 MiB" if w == 1 else ">= 1.7x faster than 1 worker",
            "ok": (r["seconds"] <= 1.5 * decode["seconds"] and peak < 1024) if w == 1
            else one["seconds"] / r["seconds"] >= 1.7,
        })
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return rows
