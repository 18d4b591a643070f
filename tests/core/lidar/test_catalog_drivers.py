"""A catalog is processed exactly like one file (lidR's LAScatalog): the canopy height model and the tree
tops of two tiles, read with their neighbours' buffers, against the same points merged into one file and
against the kernels run on all points at once."""

import numpy as np
import pytest

from forest_carbon_plugin.core.lidar.canopy import canopy_height_model
from forest_carbon_plugin.core.lidar.chm import P2R, PitFree, p2r
from forest_carbon_plugin.core.lidar.treetops import LMF, local_maxima
from forest_carbon_plugin.core.lidar.trees import tree_tops
from forest_carbon_plugin.core.raster.grid import Grid

from .clouds import quantized, write_las

rasterio = pytest.importorskip("rasterio")


@pytest.fixture(scope="module")
def stand(tmp_path_factory):
    """Crowns (cones 10-25 m) over flat ground, 6 returns per m², cut into two 30 m tiles and also merged."""
    rng = np.random.default_rng(70)
    n = 10_800
    x, y = rng.uniform(0, 60, n), rng.uniform(0, 30, n)
    cx, cy, h = rng.uniform(0, 60, 40), rng.uniform(0, 30, 40), rng.uniform(10, 25, 40)
    d = np.hypot(x[:, None] - cx, y[:, None] - cy)
    z = np.clip((h - 2.5 * d).max(axis=1), 0, None) + rng.uniform(0, 0.3, n)
    x, y, z = quantized(x + 700_000), quantized(y + 4_300_000), quantized(z)
    folder = tmp_path_factory.mktemp("catalog")
    west = x < 700_030
    write_las(folder / "west.laz", x[west], y[west], z[west])
    write_las(folder / "east.laz", x[~west], y[~west], z[~west])
    merged = write_las(tmp_path_factory.mktemp("merged") / "merged.laz", x, y, z)
    return folder, merged, x, y, z


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1, masked=True).filled(np.nan), src.transform


def test_p2r_of_a_catalog_is_p2r_of_all_points(stand, tmp_path):
    folder, merged, x, y, z = stand
    canopy_height_model(folder, tmp_path / "tiles.tif", res_m=1.0, method=P2R(), normalize="never")
    canopy_height_model(merged, tmp_path / "merged.tif", res_m=1.0, method=P2R(), normalize="never")
    tiles, transform = _read(tmp_path / "tiles.tif")
    whole, _ = _read(tmp_path / "merged.tif")
    np.testing.assert_array_equal(tiles, whole)
    grid = Grid.from_origin(transform.c, transform.f, 1.0, tiles.shape[1], tiles.shape[0])
    np.testing.assert_allclose(tiles, p2r(x, y, z, grid), atol=1e-5)  # float32 on disk


def test_pitfree_of_a_catalog_is_pitfree_of_the_merged_file(stand, tmp_path):
    folder, merged, *_ = stand
    canopy_height_model(folder, tmp_path / "tiles.tif", res_m=1.0, method=PitFree(), normalize="never")
    canopy_height_model(merged, tmp_path / "merged.tif", res_m=1.0, method=PitFree(), normalize="never")
    tiles, _ = _read(tmp_path / "tiles.tif")
    whole, _ = _read(tmp_path / "merged.tif")
    assert np.array_equal(np.isnan(tiles), np.isnan(whole))
    assert np.nanmax(np.abs(tiles - whole)) < 1e-4


def test_tree_tops_of_a_catalog_are_those_of_all_points(stand):
    folder, _, x, y, z = stand
    tops, crs = tree_tops(folder, LMF(ws_intercept_m=5.0, hmin_m=2.0), normalize="never")
    assert crs == "EPSG:32633"
    expected = local_maxima(x, y, z, ws_intercept=5.0, hmin=2.0)
    assert len(tops) == len(expected) > 10
    found = sorted(zip(np.round(tops.x, 2), np.round(tops.y, 2), np.round(tops.z, 2)))
    assert found == sorted(zip(np.round(expected.x, 2), np.round(expected.y, 2), np.round(expected.z, 2)))
