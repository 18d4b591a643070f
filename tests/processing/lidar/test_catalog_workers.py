"""Every LiDAR algorithm runs catalog tiles in worker processes (MAX_WORKERS): same output as one
process, and as the merged file."""

from __future__ import annotations

import laspy
import numpy as np
import rasterio


def _run(alg, **params):
    import processing

    return processing.run(f"forestcarbon:{alg}", params)


def _raster(path):
    with rasterio.open(path) as src:
        return src.read(1)


def test_workers_equal_one_process(tmp_path, forestcarbon_provider):
    from forest_carbon_plugin.simulate import SceneConfig, simulate_scene

    scene = tmp_path / "scene"
    simulate_scene(scene, SceneConfig(size_m=240, seed=21, tile_m=80, pulse_density=2))  # 9 tiles
    folder = scene / "lidar"
    tiles = sorted(folder.glob("*.laz"))
    merged = tmp_path / "merged.laz"
    with laspy.open(merged, mode="w", header=laspy.read(tiles[0]).header) as writer:
        for t in tiles:
            writer.write_points(laspy.read(t).points)
    out = {}
    for w in (1, 2):
        _run("classifyground", INPUT=str(folder), METHOD=0, MAX_WORKERS=w, OUTPUT=str(tmp_path / f"g{w}.laz"))
        _run("normalizeheight", INPUT=str(folder), MAX_WORKERS=w, OUTPUT=str(tmp_path / f"n{w}.laz"),
             OUTPUT_DTM=str(tmp_path / f"dtm{w}.tif"))
        _run("canopyheightmodel", INPUT=str(tmp_path / f"n{w}.laz"), METHOD=1, RESOLUTION=1, MAX_WORKERS=w,
             OUTPUT=str(tmp_path / f"pf{w}.tif"))
        _run("canopyheightmodel", INPUT=str(folder), METHOD=0, RESOLUTION=1, MAX_WORKERS=w,
             OUTPUT=str(tmp_path / f"p2r{w}.tif"))  # raw elevations: NORMALIZE auto uses each tile's ground TIN
        tops = _run("treetops", INPUT=str(folder), WS_INTERCEPT=5, MIN_HEIGHT=2, MAX_WORKERS=w,
                    OUTPUT=str(tmp_path / f"tops{w}.gpkg"))
        out[w] = tops["TREE_COUNT"]
    for stem in ("dtm", "pf", "p2r"):
        assert np.array_equal(_raster(tmp_path / f"{stem}1.tif"), _raster(tmp_path / f"{stem}2.tif"), equal_nan=True)
    for stem in ("g", "n"):
        a, b = laspy.read(tmp_path / f"{stem}1.laz"), laspy.read(tmp_path / f"{stem}2.laz")
        assert np.array_equal(a.classification, b.classification) and np.array_equal(a.z, b.z)
    assert out[1] == out[2] > 0
    # tiles in workers = the merged file. Each tile's ground TIN is built from its ground and its neighbours'
    # within the 30 m buffer (lidR's catalog rule); it equals the merged file's TIN except where ground is so
    # sparse that a Delaunay circle reaches past the buffer: 0.2 % of the points here (measured; before the TIN
    # was built in local coordinates, 5.8 % of the points of another scene differed by up to 0.15 m)
    _run("normalizeheight", INPUT=str(merged), OUTPUT=str(tmp_path / "n_merged.laz"))
    a, b = laspy.read(tmp_path / "n2.laz"), laspy.read(tmp_path / "n_merged.laz")
    ka, kb = (np.lexsort((np.asarray(p["Zref"]), p.y, p.x)) for p in (a, b))
    assert np.array_equal(np.asarray(a.x)[ka], np.asarray(b.x)[kb])
    dz = np.abs(np.asarray(a.z)[ka] - np.asarray(b.z)[kb])
    assert (dz > 0.005).mean() < 0.005 and np.median(dz) == 0
    _run("canopyheightmodel", INPUT=str(merged), METHOD=0, RESOLUTION=1, MAX_WORKERS=2,
         OUTPUT=str(tmp_path / "p2r_merged.tif"))
    tiled, one = _raster(tmp_path / "p2r2.tif"), _raster(tmp_path / "p2r_merged.tif")
    assert np.array_equal(np.isnan(tiled), np.isnan(one))
    differ = np.abs(tiled - one)[~np.isnan(one)] > 0.005
    print(f"cells of the tiled CHM that differ from the merged file's: {differ.mean():.2%}")
    assert differ.mean() < 0.01
