"""canopyheightmodel / treetops on clouds that are not normalized (issue 19, item 4).

Topography.laz (lidR's sample) holds elevations (789–830 m), ground classified, and about 0.65
first returns per m²: a raw and sparse cloud. Its normalized copy is made by
forestcarbon:normalizeheight's core; NORMALIZE auto on the raw file must give the CHM and the tree
tops of the normalized file, "never" must keep elevations, and a 0.5 m p2r grid, mostly empty on
such a cloud, must say so with a resolution that fills it.
"""

from __future__ import annotations

import laspy
import numpy as np
import pytest
import rasterio

from forest_carbon_plugin.core.lidar.canopy import canopy_height_model
from forest_carbon_plugin.core.lidar.treetops import LMF
from forest_carbon_plugin.core.lidar.trees import tree_tops
from forest_carbon_plugin.core.lidar.normalize import normalize_height

from tests.conftest import shared_file


class Log:
    """The core's progress protocol, keeping every message."""

    def __init__(self):
        self.infos, self.warnings = [], []

    def set_progress(self, percent):
        pass

    def is_canceled(self):
        return False

    def info(self, message):
        self.infos.append(message)

    def warning(self, message):
        self.warnings.append(message)


@pytest.fixture(scope="module")
def topography(tmp_path_factory):
    raw = shared_file("lidar", "Topography.laz")
    normalized = tmp_path_factory.mktemp("topo") / "normalized.laz"
    normalize_height(raw, normalized)
    return raw, normalized


def _chm(tmp_path, source, name, **kw):
    log = Log()
    canopy_height_model(source, tmp_path / name, progress=log, **kw)
    with rasterio.open(tmp_path / name) as src:
        return src.read(1, masked=True).filled(np.nan), log


def test_raw_and_normalized_clouds_give_the_same_chm(tmp_path, topography):
    raw, normalized = topography
    las = laspy.read(raw)
    ground = int(np.isin(las.classification, (2, 9)).sum())  # 12,056, none sharing an (x, y)
    a, log = _chm(tmp_path, raw, "raw.tif", res_m=1.0)
    b, log_n = _chm(tmp_path, normalized, "norm.tif", res_m=1.0)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.nanmax(np.abs(a - b)) <= 0.001  # the normalized file stores heights at the LAS scale, 0.00025 m
    assert 15 < np.nanmax(a) < 40 and np.nanmin(a) > -5  # heights, not 789–830 m elevations
    assert log.infos == [f"heights were elevations (Z {las.z.min():,.1f}–{las.z.max():,.1f} m): normalized "
                         f"with the ground TIN of {ground:,} ground points."]
    assert "already looks like heights" in log_n.infos[0]
    never, log = _chm(tmp_path, raw, "never.tif", res_m=1.0, normalize="never")
    assert np.nanmin(never) > 780 and np.nanmax(never) == pytest.approx(las.z.max(), abs=1e-3)
    assert any("elevations, not heights" in w for w in log.warnings)
    always, _ = _chm(tmp_path, normalized, "always.tif", res_m=1.0, normalize="always")
    assert np.nanmax(np.abs(always - b)) < 0.01  # a second normalization of heights changes nothing


def test_simulated_catalog_at_one_pulse_per_m2(tmp_path):
    """The simulator's raw 4-tile catalog at 1 pulse/m²: auto gives the CHM of normalizeheight's output
    (both use each tile's ground TIN with its neighbours' ground); at 0.5 m most cells are empty and the
    warning says so."""
    from forest_carbon_plugin.simulate import SceneConfig, simulate_scene

    manifest = simulate_scene(tmp_path / "scene", SceneConfig(size_m=120, seed=3, tile_m=60, pulse_density=1))
    folder = tmp_path / "scene" / "lidar"
    normalized = tmp_path / "normalized.laz"
    normalize_height(folder, normalized)
    first, area = 0, 0.0
    for tile in manifest["lidar"]["tiles"]:
        las = laspy.read(tmp_path / "scene" / tile)
        first += int((las.return_number == 1).sum())
        area += (las.header.maxs[0] - las.header.mins[0]) * (las.header.maxs[1] - las.header.mins[1])
    a, log = _chm(tmp_path, folder, "raw.tif", res_m=0.5)
    b, _ = _chm(tmp_path, normalized, "norm.tif", res_m=0.5)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.nanmax(np.abs(a - b)) <= 0.006  # heights stored at the LAS scale of 0.01 m
    assert np.nanmin(a) > -1 and 20 < np.nanmax(a) < 60
    assert log.infos[0].startswith("heights were elevations") and "in 4 of 4 tiles" in log.infos[0]
    empty = np.isnan(a).mean()
    assert 0.6 < empty < 0.8  # measured 71 % (the issue saw 69 % on the demo's cloud)
    density = first / area
    assert f"{empty:.0%} of the cells are empty at 0.5 m" in log.warnings[0]
    suggested = float(log.warnings[0].split("At a RESOLUTION of about ")[1].split(" m")[0])
    assert np.sqrt(2 / density) <= suggested <= np.sqrt(3 / density)


def test_tree_tops_on_a_raw_cloud(topography):
    raw, normalized = topography
    log = Log()
    tops_raw, _ = tree_tops(raw, LMF(3.0, 0.07, 2.0), progress=log)
    tops_norm, _ = tree_tops(normalized, LMF(3.0, 0.07, 2.0))
    assert len(tops_raw) > 1000 and "heights were elevations" in log.infos[0]
    assert {(round(x, 2), round(y, 2)) for x, y in zip(tops_raw.x, tops_raw.y)} == \
        {(round(x, 2), round(y, 2)) for x, y in zip(tops_norm.x, tops_norm.y)}
    assert np.allclose(np.sort(tops_raw.z), np.sort(tops_norm.z), atol=0.001)
    kept, _ = tree_tops(raw, LMF(3.0, 0.0, 2.0), normalize="never")  # (a slope on 800 m "heights": 59 m windows)
    assert kept.z.min() > 780


def test_sparse_cloud_warns_with_a_resolution_that_fills(tmp_path, topography):
    _, raw = topography  # the normalized copy: the same returns, and no TIN to build each time
    las = laspy.read(raw)
    density = (las.return_number == 1).sum() / ((las.x.max() - las.x.min()) * (las.y.max() - las.y.min()))
    chm, log = _chm(tmp_path, raw, "fine.tif", res_m=0.5)
    empty = np.isnan(chm).mean()
    assert empty > 0.75  # measured 81 %: exp(−0.65 × 0.25) = 85 % for returns placed at random
    assert len(log.warnings) == 1 and f"{empty:.0%} of the cells are empty at 0.5 m" in log.warnings[0]
    assert f"about {density:.2g} first returns per m²" in log.warnings[0]
    suggested = float(log.warnings[0].split("At a RESOLUTION of about ")[1].split(" m")[0])
    assert np.sqrt(2 / density) <= suggested <= np.sqrt(3 / density)  # ~90 % of cells for returns at random
    coarse, log = _chm(tmp_path, raw, "coarse.tif", res_m=suggested)
    # measured 17 % empty at 1.9 m: the file has gaps (about 10 % of cells stay empty even at 4.5 m)
    assert np.isnan(coarse).mean() < 0.2 and not log.warnings


def test_adapters_take_normalize(tmp_path, forestcarbon_provider):
    import processing
    from qgis.core import QgsProcessingFeedback

    class Feedback(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.lines = []

        def pushInfo(self, info):  # noqa: N802
            self.lines.append(info)

        def reportError(self, error, fatalError=False):  # noqa: N802
            self.lines.append(error)

    raw = shared_file("lidar", "Topography.laz")
    feedback = Feedback()
    out = tmp_path / "chm.tif"
    processing.run("forestcarbon:canopyheightmodel", {"INPUT": str(raw), "RESOLUTION": 2, "OUTPUT": str(out)},
                   feedback=feedback)
    with rasterio.open(out) as src:
        assert 15 < src.read(1, masked=True).max() < 40
    assert any(line.startswith("heights were elevations (Z 789.0–829.8 m)") for line in feedback.lines)
    result = processing.run("forestcarbon:treetops", {
        "INPUT": str(raw), "WS_INTERCEPT": 5, "NORMALIZE": 2, "OUTPUT": "TEMPORARY_OUTPUT"})
    assert min(f["height_m"] for f in result["OUTPUT"].getFeatures()) > 780
