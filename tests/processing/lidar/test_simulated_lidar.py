"""The LiDAR chain on a simulated scene, against its truth (issue 4, acceptance 3)."""

from __future__ import annotations

import json

import geopandas as gpd
import laspy
import numpy as np
import pytest
import rasterio
from scipy.spatial import cKDTree

from forest_carbon_plugin.simulate import SceneConfig, simulate_scene


@pytest.fixture(scope="module")
def chain(tmp_path_factory, qgis_processing):
    """Simulate, normalize (catalog of 4 tiles), CHM and tree tops, through processing.run."""
    import processing
    from qgis.core import QgsApplication

    from processing_provider.provider import ForestCarbonProvider

    registry = QgsApplication.processingRegistry()
    provider = None
    if registry.providerById("forestcarbon") is None:
        provider = ForestCarbonProvider()  # held until the runs are done, then removed: the registry
        registry.addProvider(provider)  # does not own the Python object
    root = tmp_path_factory.mktemp("simchain")
    scene = root / "scene"
    simulate_scene(scene, SceneConfig(size_m=240, seed=13, tile_m=120))
    manifest = json.loads((scene / "scene.json").read_text())
    processing.run("forestcarbon:normalizeheight", {
        "INPUT": str(scene / "lidar"), "OUTPUT": str(root / "norm.laz"), "OUTPUT_DTM": str(root / "dtm.tif"),
        "DTM_RESOLUTION": 1})
    processing.run("forestcarbon:canopyheightmodel", {
        "INPUT": str(root / "norm.laz"), "RESOLUTION": 1, "METHOD": 1, "OUTPUT": str(root / "chm.tif")})
    tops = processing.run("forestcarbon:treetops", {
        "INPUT": str(root / "norm.laz"), "WS_INTERCEPT": 3, "WS_SLOPE": 0.07, "MIN_HEIGHT": 5,
        "OUTPUT": str(root / "tops.gpkg")})
    if provider is not None:
        registry.removeProvider(provider)
    return root, scene, manifest, tops


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1, masked=True).filled(np.nan), src.transform


def test_dtm_against_truth(chain):
    root, scene, _, _ = chain
    dtm, t1 = _read(root / "dtm.tif")
    truth, t2 = _read(scene / "truth/dtm_1m.tif")
    assert t1 == t2  # both snapped to the 1 m grid
    rmse = np.sqrt(np.nanmean((dtm - truth) ** 2))
    assert rmse < 0.1, rmse  # measured 0.032 m (seed 13); returns carry 4 cm noise


def test_ground_heights_are_zero_and_zref_kept(chain):
    root, scene, manifest, _ = chain
    las = laspy.read(root / "norm.laz")
    assert len(las.points) == manifest["lidar"]["points"]
    assert (np.asarray(las.z)[np.asarray(las.classification) == 2] == 0).all()
    assert "Zref" in las.point_format.extra_dimension_names
    assert np.asarray(las.Zref).min() > 200  # elevations kept


def test_chm_against_truth(chain):
    root, scene, _, _ = chain
    chm, _ = _read(root / "chm.tif")
    truth, _ = _read(scene / "truth/chm_1m.tif")
    forest = truth > 2
    rmse = np.sqrt(np.nanmean((chm[forest] - truth[forest]) ** 2))
    bias = np.nanmean(chm[forest] - truth[forest])
    # measured (seed 13, pit-free at 1 m vs the crown surface at cell centres): RMSE 1.76 m, bias
    # −0.08 m. Crown edges dominate the error: a 1 m cell straddles a steep cone.
    assert rmse < 2.2, rmse
    assert abs(bias) < 0.5, bias


def test_tree_detection_above_10_m(chain):
    root, scene, _, tops = chain
    trees = gpd.read_file(scene / "truth/trees.gpkg")
    tall = trees[trees.height_m > 10]
    found = gpd.read_file(root / "tops.gpkg")
    found = found[found.height_m > 10]
    # a detection matches a true tree when its stem is within 2 m (one-to-one, nearest first)
    tree_index = cKDTree(np.column_stack([tall.x, tall.y]))
    dist, idx = tree_index.query(np.column_stack([found.x, found.y]), distance_upper_bound=2.0)
    matched = set()
    for d, i in sorted(zip(dist, idx)):
        if np.isfinite(d) and i not in matched:
            matched.add(i)
    recall = len(matched) / len(tall)
    precision = len(matched) / len(found)
    # measured (seed 13, window 3 + 0.07·H): recall 0.57, precision 1.00. Clumped stands hide
    # trees under their neighbours' crowns, which no local-maximum filter can find.
    assert recall > 0.5, recall
    assert precision > 0.9, precision
