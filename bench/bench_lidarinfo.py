"""lidarinfo throughput on the real 4-tile BCTS catalog (2.83 M points) against laspy's own
chunked read of the same files (decompression floor), both in this run."""

from __future__ import annotations

from .common import ROOT, measure

CATALOG = ROOT.parent / "shared" / "data" / "lidar" / "bcts"

DESCRIBE = """
from forest_carbon_plugin.core.lidar.info import describe_catalog
infos = describe_catalog({path!r})
RESULT = sum(i.point_count for i in infos)
"""

READ = """
import glob, laspy
n = 0
for f in sorted(glob.glob({path!r} + "/*.laz")):
    with laspy.open(f) as r:
        for chunk in r.chunk_iterator(1_000_000):
            n += len(chunk)
RESULT = n
"""


def run():
    if not CATALOG.is_dir():
        print(f"skipped: {CATALOG} is absent")
        return []
    ours = measure(DESCRIBE.format(path=str(CATALOG)))
    base = measure(READ.format(path=str(CATALOG)))
    points = ours["extra"]
    return [{
        "name": "lidarinfo catalog",
        "workload": f"4 BCTS tiles, {points:,} points ({points / ours['seconds'] / 1e6:.1f} M points/s)",
        "seconds": ours["seconds"], "peak_mib": ours["peak_mib"],
        "baseline": "laspy chunked read of the same files", "baseline_seconds": base["seconds"],
        "target": "", "ok": points == base["extra"],
    }]
