"""Scene simulator: a 2 km × 2 km scene at 10 pulses/m² (issue 3: < 2 min, < 2 GB on 2 cores).

Baseline, measured in the same run: laspy + lazrs writing the same number of LAS 1.4 PF6
points (random coordinates, same tiling) to LAZ: the I/O floor of the LiDAR part alone.
"""

from __future__ import annotations

from .common import measure

SIMULATE = """
import tempfile, shutil
from forest_carbon_plugin.simulate import simulate_scene, SceneConfig
out = tempfile.mkdtemp()
m = simulate_scene(out + "/scene", SceneConfig(size_m={size}, seed=7, pulse_density=10, workers=2))
RESULT = {{"points": m["lidar"]["points"], "tiles": len(m["lidar"]["tiles"]), "trees": m["truth"]["tree_count"]}}
shutil.rmtree(out)
"""

WRITE_LAZ = """
import tempfile, shutil, numpy as np, laspy
out = tempfile.mkdtemp()
rng = np.random.default_rng(0)
per_tile = {points} // {tiles}
for t in range({tiles}):
    header = laspy.LasHeader(point_format=6, version="1.4")
    header.scales = [0.01, 0.01, 0.01]
    pts = laspy.ScaleAwarePointRecord.zeros(per_tile, header=header)
    pts.x = rng.uniform(0, 250, per_tile); pts.y = rng.uniform(0, 250, per_tile); pts.z = rng.uniform(300, 340, per_tile)
    pts.intensity = rng.integers(0, 2000, per_tile); pts.return_number = np.ones(per_tile, np.uint8); pts.number_of_returns = np.ones(per_tile, np.uint8)
    pts.gps_time = np.sort(rng.uniform(0, 1e4, per_tile))
    with laspy.open(f"{{out}}/t{{t}}.laz", mode="w", header=header, do_compress=True) as w:
        w.write_points(pts)
shutil.rmtree(out)
"""


def run():
    size = 2000
    sim = measure(SIMULATE.format(size=size))
    extra = sim["extra"]
    base = measure(WRITE_LAZ.format(points=extra["points"], tiles=extra["tiles"]))
    ok = sim["seconds"] < 120 and sim["peak_mib"] < 2048
    return [{
        "name": "simulatescene 2 km",
        "workload": f"{size} m scene, 10 pulses/m², {extra['points']:,} points in {extra['tiles']} LAZ tiles, "
                    f"{extra['trees']:,} trees, all products",
        "seconds": sim["seconds"], "peak_mib": sim["peak_mib"],
        "baseline": "laspy writes the same points as LAZ", "baseline_seconds": base["seconds"],
        "target": "< 120 s, < 2048 MiB", "ok": ok,
    }]
