"""The scene simulator (issue 3): determinism, files a user's tools open, and checks of the
simulated observations against the truth, computed here independently of the simulator."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import geopandas as gpd
import laspy
import numpy as np
import pytest
import rasterio
from scipy.ndimage import map_coordinates

from forest_carbon_plugin.simulate import SceneConfig, simulate_scene

# HLS v2.0 bandpass adjustment MSI -> OLI for Sentinel-2A, typed from the table in
# shared/notes/harmonization.md (official hls_libs/L8like/bandpass_parameter.S2A.txt).
HLS_S2A = {"B01": (0.9959, -0.0002), "B02": (0.9778, -0.0040), "B03": (1.0053, -0.0009),
           "B04": (0.9765, 0.0009), "B8A": (0.9983, -0.0001), "B11": (0.9987, -0.0011),
           "B12": (1.0030, -0.0012)}
OLI_NUMBER = {"B01": 1, "B02": 2, "B03": 3, "B04": 4, "B8A": 5, "B11": 6, "B12": 7}
S2_RES = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B8A": 20, "B11": 20, "B12": 20}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("scene") / "seed7"
    manifest = simulate_scene(out, SceneConfig(size_m=300, seed=7))
    return out, manifest


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_different_world(tmp_path):
    config = SceneConfig(size_m=120, seed=21, pulse_density=2, tile_m=60)
    a = _digest(Path(simulate_scene(tmp_path / "a", config) and tmp_path / "a"))
    b = _digest(Path(simulate_scene(tmp_path / "b", config) and tmp_path / "b"))
    assert a == b and len(a) > 30
    c = _digest(Path(simulate_scene(tmp_path / "c", SceneConfig(size_m=120, seed=22, pulse_density=2, tile_m=60))
                     and tmp_path / "c"))
    assert set(c) == set(a)
    changed = [name for name in a if a[name] != c[name]]
    for must_change in ("truth/trees.gpkg", "truth/chm_1m.tif", "truth/agb_30m.tif", "field_plots.gpkg"):
        assert must_change in changed
    assert sum(name.startswith("lidar/") for name in changed) == 4  # every tile


def test_manifest_and_folder_layout(scene):
    out, manifest = scene
    assert json.loads((out / "scene.json").read_text()) == manifest
    assert manifest["size_m"] == 300 and manifest["crs"] == "EPSG:32633"
    assert len(manifest["lidar"]["tiles"]) == 4  # 250 m tiles over 300 m
    for rel in manifest["lidar"]["tiles"] + list(manifest["sentinel2"]["files"].values()) \
            + list(manifest["landsat"]["files"].values()):
        assert (out / rel).is_file(), rel
    assert manifest["truth"]["tree_count"] > 1000
    assert 2 <= len(manifest["truth"]["projects"]) <= 3


def test_laz_tiles_open_with_laspy_and_lidarinfo(scene, tmp_path, forestcarbon_provider):
    import processing

    out, manifest = scene
    total = 0
    for rel in manifest["lidar"]["tiles"]:
        las = laspy.read(out / rel)
        assert las.header.version == "1.4" and las.header.point_format.id == 6
        assert las.header.parse_crs().to_epsg() == 32633
        cls = np.asarray(las.classification)
        rn, nr = np.asarray(las.return_number), np.asarray(las.number_of_returns)
        assert set(np.unique(cls)) <= {2, 5, 9}
        assert rn.max() <= 5 and (rn <= nr).all()
        # a pulse ends on the ground: ground returns are last returns
        ground = cls == 2
        assert (rn[ground] == nr[ground]).all()
        assert np.all(np.diff(np.asarray(las.gps_time)) >= 0)
        assert np.abs(np.asarray(las.scan_angle) * 0.006).max() <= 15.0 + 1e-6
        total += len(las.points)
    assert total == manifest["lidar"]["points"]
    pulses_per_m2 = manifest["lidar"]["pulses"] / 300 ** 2
    assert pulses_per_m2 == pytest.approx(10, rel=0.01)
    result = processing.run("forestcarbon:lidarinfo", {
        "INPUT": str(out / "lidar"), "OUTPUT_JSON": str(tmp_path / "i.json"),
        "OUTPUT_HTML": str(tmp_path / "i.html"), "OUTPUT_FOOTPRINTS": "TEMPORARY_OUTPUT"})
    assert result["POINT_COUNT"] == total and result["FILE_COUNT"] == 4
    summary = json.loads((tmp_path / "i.json").read_text())["summary"]
    assert summary["crs_epsg"] == [32633]


def test_rasters_open_in_gdal_and_qgis(scene, qgis_app):
    from qgis.core import QgsRasterLayer

    out, _ = scene
    rasters = sorted(out.rglob("*.tif")) + sorted(out.rglob("*.TIF"))
    assert len(rasters) >= 25
    for path in rasters:
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 32633, path
            assert all(src.descriptions), path
            assert src.nodata is not None, path
            assert "FOREST_CARBON_PROVENANCE" in src.tags()
        layer = QgsRasterLayer(str(path), path.stem, "gdal")
        assert layer.isValid() and layer.crs().authid() == "EPSG:32633", path


def test_vectors_open_in_geopandas_and_qgis(scene, qgis_app):
    from qgis.core import QgsVectorLayer

    out, manifest = scene
    for rel, geometry in (("truth/trees.gpkg", "Point"), ("truth/stands.gpkg", "Polygon"),
                          ("field_plots.gpkg", "Point"), ("projects.gpkg", "Polygon")):
        frame = gpd.read_file(out / rel)
        assert frame.crs.to_epsg() == 32633
        assert set(frame.geom_type) <= {geometry, "Multi" + geometry}
        layer = QgsVectorLayer(str(out / rel), rel, "ogr")
        assert layer.isValid() and layer.featureCount() == len(frame)
    trees = gpd.read_file(out / "truth/trees.gpkg")
    # AGB from Jucker et al. 2017 around which each tree scatters (log-sd 0.204): the median
    # ratio of the tree's AGB to the published formula is 1 (computed here from the table)
    hcd = trees.height_m * 2 * trees.crown_radius_m
    formula = np.where(trees.gymnosperm == 1, 0.109 * hcd ** 1.790, 0.016 * hcd ** 2.013) * np.exp(0.204 ** 2 / 2)
    log_ratio = np.log(trees.agb_kg / formula)
    assert np.median(log_ratio) == pytest.approx(-0.204 ** 2 / 2, abs=0.02)
    assert np.std(log_ratio) == pytest.approx(0.204, rel=0.1)
    # the AGB rasters hold the trees' AGB: totals agree to the kilogram
    with rasterio.open(out / "truth/agb_30m.tif") as src:
        assert src.read(1).sum() * 0.09 == pytest.approx(trees.agb_kg.sum() / 1000, rel=1e-5)
        assert (src.read(1) == 0).any()  # non-forest and deforested cells
    stands = gpd.read_file(out / "truth/stands.gpkg")
    assert stands.area.sum() == pytest.approx(300 * 300, rel=1e-9)
    assert {"water", "deforested"} & set(stands.stand_type)


def _points(out, manifest):
    parts = [laspy.read(out / rel) for rel in manifest["lidar"]["tiles"]]
    cat = {k: np.concatenate([np.asarray(getattr(p, k)) for p in parts])
           for k in ("x", "y", "z", "return_number", "classification")}
    return cat


def test_lidar_against_truth(scene):
    out, manifest = scene
    xmin, ymin, xmax, ymax = manifest["bounds"]
    pts = _points(out, manifest)
    with rasterio.open(out / "truth/dtm_1m.tif") as src:
        dtm = src.read(1).astype(float)
    with rasterio.open(out / "truth/chm_1m.tif") as src:
        chm = src.read(1)
    with rasterio.open(out / "truth/cover_30m.tif") as src:
        cover = src.read(1)
    # ground returns give back the DTM (bilinear at each return) within 0.3 m RMSE
    ground = pts["classification"] == 2
    z_dtm = map_coordinates(dtm, [ymax - pts["y"] - 0.5, pts["x"] - xmin - 0.5], order=1, mode="nearest")
    rmse = np.sqrt(np.mean((pts["z"][ground] - z_dtm[ground]) ** 2))
    assert rmse < 0.3

    # per 30 m cell: p95 of first-return heights vs p95 of the true 1 m CHM; cover above 2 m
    height = pts["z"] - z_dtm
    first = pts["return_number"] == 1
    n = cover.shape[0]
    col = np.clip(((pts["x"] - xmin) // 30).astype(int), 0, n - 1)
    row = np.clip(((ymax - pts["y"]) // 30).astype(int), 0, n - 1)
    water = np.zeros((n, n), dtype=bool)
    np.logical_or.at(water, (row[pts["classification"] == 9], col[pts["classification"] == 9]), True)
    good_p95, forest_cells, good_cover, cover_cells = 0, 0, 0, 0
    for r in range(n):
        for c in range(n):
            sel = first & (row == r) & (col == c)
            h = height[sel]
            true_p95 = np.percentile(chm[r * 30:(r + 1) * 30, c * 30:(c + 1) * 30], 95)
            if water[r, c]:
                continue  # specular water drops pulses: cover from LiDAR is biased there, by design
            cover_cells += 1
            good_cover += abs(np.mean(h > 2) - cover[r, c]) <= 0.1
            if cover[r, c] > 0.1:
                forest_cells += 1
                good_p95 += abs(np.percentile(h, 95) - true_p95) <= 1.5
    assert forest_cells >= 30
    assert good_p95 / forest_cells >= 0.9
    assert good_cover / cover_cells >= 0.95


def test_hls_bandpass_brings_sentinel2_onto_oli(tmp_path):
    """Nadir views, same sun: the published adjustment maps S2 onto OLI within 0.01."""
    config = SceneConfig(size_m=360, seed=3, pulse_density=0.5, s2_view_zenith_deg=0.0,
                         landsat_view_zenith_deg=0.0, landsat_sun_zenith_deg=35.0,
                         landsat_sun_azimuth_deg=150.0, cloud_fraction=0.03)
    manifest = simulate_scene(tmp_path / "nadir", config)
    out = tmp_path / "nadir"

    def read(rel):
        with rasterio.open(out / rel) as src:
            return src.read(1).astype(float)

    def agg(a, f):
        r, c = a.shape
        return a.reshape(r // f, f, c // f, f).mean(axis=(1, 3))

    qa = read(manifest["landsat"]["files"]["QA_PIXEL"]).astype(int)
    scl = read(manifest["sentinel2"]["files"]["SCL"]).astype(int)
    dtm = read("truth/dtm_1m.tif")
    gy, gx = np.gradient(dtm)
    slope_deg = np.degrees(np.arctan(np.hypot(gx, gy)))
    landsat_clear = (((qa >> 6) & 1) == 1) & (((qa >> 4) & 1) == 0) & (((qa >> 1) & 1) == 0)
    s2_clear = np.isin(scl, [4, 5, 6]).astype(float)
    checked = 0
    for band, (slope, offset) in HLS_S2A.items():
        grid = 60  # common multiple of 10, 20, 30 and 60 m
        s2 = (read(manifest["sentinel2"]["files"][band]) - 1000) / 10000  # PB >= 04.00 offset
        oli = read(manifest["landsat"]["files"][f"SR_B{OLI_NUMBER[band]}"]) * 2.75e-5 - 0.2
        ok = (agg(landsat_clear.astype(float), 2) == 1) & (agg(s2_clear, 3) == 1) & (agg(slope_deg, grid) < 8)
        adjusted = slope * agg(s2, grid // S2_RES[band]) + offset
        diff = np.abs(adjusted - agg(oli, 2))[ok]
        assert ok.sum() >= 10, band
        assert diff.max() < 0.01, (band, diff.max())
        checked += 1
    assert checked == 7


def test_sensors_differ_where_they_should(scene):
    """Default geometry (S2 6° off-nadir, another day): BRDF and clouds make S2 and OLI differ."""
    out, manifest = scene
    with rasterio.open(out / manifest["sentinel2"]["files"]["SCL"]) as src:
        scl = src.read(1)
    assert set(np.unique(scl)) <= {3, 4, 5, 6, 7, 8, 9}
    with rasterio.open(out / manifest["naip"]["file"]) as src:
        naip = src.read()
        assert src.count == 4 and naip.dtype == np.uint8 and src.res == (1.0, 1.0)
    gains = manifest["truth"]["naip_gain"]
    assert len(gains) == 4 and min(gains) >= 350
    with rasterio.open(out / manifest["sentinel1"]["files"]["VV"]) as vv, \
            rasterio.open(out / "truth/agb_10m.tif") as agb:
        gamma = vv.read(1)
        biomass = agb.read(1)
    forest = biomass > 100
    open_land = biomass == 0
    assert np.nanmean(gamma[forest]) > np.nanmean(gamma[open_land & (gamma > 0.001)])


def test_non_empty_target_is_refused(tmp_path):
    from forest_carbon_plugin.core.errors import ForestCarbonError

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(ForestCarbonError, match="not empty"):
        simulate_scene(tmp_path / "busy", SceneConfig(size_m=60, pulse_density=1))
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["busy"]  # no leftovers beside it


def test_processing_algorithm(tmp_path, forestcarbon_provider):
    import processing
    from qgis.core import QgsApplication

    alg = QgsApplication.processingRegistry().algorithmById("forestcarbon:simulatescene")
    defaults = {p.name(): p.defaultValue() for p in alg.parameterDefinitions()}
    assert defaults["SIZE"] == 500 and defaults["PULSE_DENSITY"] == 10 and defaults["SEED"] == 7
    result = processing.run("forestcarbon:simulatescene", {
        "SIZE": 120, "SEED": 5, "PULSE_DENSITY": 2, "OUTPUT_FOLDER": str(tmp_path / "scene")})
    manifest = json.loads(Path(result["MANIFEST"]).read_text())
    assert result["TREE_COUNT"] == manifest["truth"]["tree_count"] > 0
    assert result["POINT_COUNT"] == manifest["lidar"]["points"]
    # same parameters through the core: same trees (the adapter adds nothing)
    simulate_scene(tmp_path / "core", SceneConfig(size_m=120, seed=5, pulse_density=2))
    assert (tmp_path / "core/truth/trees.gpkg").read_bytes() == (tmp_path / "scene/truth/trees.gpkg").read_bytes()
