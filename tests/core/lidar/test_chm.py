"""lidar.chm: lidR's p2r (highest return per cell, subcircle) and pitfree (Khosravipour et al. 2014), on
brute-force references, a planar canopy, and lidR's own rasters of MixedConifer.laz."""

import numpy as np
import pytest

from forest_carbon_plugin.core.lidar.catalog import open_catalog, read_tile
from forest_carbon_plugin.core.lidar.chm import p2r, pitfree
from forest_carbon_plugin.core.raster.grid import Grid

from ...conftest import SAMPLE_LAZ, shared_file
from .clouds import LIDR_REFERENCE, random_cloud


def _brute_force_max(x, y, z, grid):
    """Highest z per cell by looping over the points, with the cell found from the grid's lines."""
    out = np.full(grid.shape, np.nan)
    for px, py, pz in zip(x, y, z):
        if not (grid.xmin <= px <= grid.xmax and grid.ymin <= py <= grid.ymax):
            continue
        col = min(int(np.floor((px - grid.xmin) / grid.res)), grid.ncols - 1)
        row = min(int(np.floor((grid.ymax - py) / grid.res)), grid.nrows - 1)
        if not pz <= out[row, col]:  # NaN or lower
            out[row, col] = pz
    return out


def test_p2r_is_the_highest_point_of_each_cell():
    x, y, z = random_cloud(4000, seed=10, size=20.0)
    grid = Grid.covering(x.min(), y.min(), x.max(), y.max(), 1.0)
    np.testing.assert_array_equal(p2r(x, y, z, grid), _brute_force_max(x, y, z, grid))


def test_p2r_subcircle_replaces_each_point_by_eight():
    x = np.array([10.2, 13.7, 13.9])
    y = np.array([10.5, 12.1, 14.8])
    z = np.array([5.0, 9.0, 7.0])
    grid = Grid.from_origin(xmin=8.0, ymax=17.0, res=0.5, ncols=16, nrows=18)
    angles = np.arange(8) * np.pi / 4
    sx = (x[:, None] + 0.3 * np.cos(angles)).ravel()
    sy = (y[:, None] + 0.3 * np.sin(angles)).ravel()
    expected = _brute_force_max(sx, sy, np.repeat(z, 8), grid)
    np.testing.assert_array_equal(p2r(x, y, z, grid, subcircle=0.3), expected)
    # the point itself is not kept (lidR): with a 1 m circle no circle point falls in its own 0.5 m cell
    row, col = int((17.0 - 10.5) // 0.5), int((10.2 - 8.0) // 0.5)
    assert p2r(x, y, z, grid)[row, col] == 5.0 and np.isnan(p2r(x, y, z, grid, subcircle=1.0)[row, col])


def test_p2r_on_the_bundled_sample_against_a_dictionary():
    pts = read_tile(SAMPLE_LAZ)
    grid = Grid.covering(*open_catalog(SAMPLE_LAZ).bounds, 2.0)
    ours = p2r(pts["x"], pts["y"], pts["z"], grid)
    best = {}
    for px, py, pz in zip(pts["x"], pts["y"], pts["z"]):
        key = (min(int((grid.ymax - py) // 2.0), grid.nrows - 1), min(int((px - grid.xmin) // 2.0), grid.ncols - 1))
        best[key] = max(best.get(key, -np.inf), pz)
    assert np.count_nonzero(np.isfinite(ours)) == len(best)
    assert all(ours[key] == value for key, value in best.items())


def test_pitfree_fills_the_pits_of_a_canopy():
    """A flat canopy at 20 m with 3 % of first returns deep in gaps (1 m): p2r keeps the pits, pitfree's
    layers above 2 m triangulate over them (max_edge 1 m is longer than the 0.25 m spacing)."""
    step = 0.25
    gx, gy = np.meshgrid(np.arange(0.125, 20, step), np.arange(0.125, 20, step))
    x, y = gx.ravel() + 1000.0, gy.ravel() + 2000.0
    z = np.full(x.size, 20.0)
    pits = np.random.default_rng(7).random(x.size) < 0.03
    z[pits] = 1.0
    grid = Grid.covering(1000.0, 2000.0, 1020.0, 2020.0, 1.0)
    first = np.ones(x.size, dtype=bool)
    assert np.nanmin(p2r(x, y, z, grid)) == 20.0  # 16 points per cell: a pit rarely empties a cell of canopy
    fine = Grid.covering(1000.0, 2000.0, 1020.0, 2020.0, 0.25)
    assert np.nanmin(p2r(x, y, z, fine)) == 1.0  # at the point spacing every pit is a cell
    chm = pitfree(x, y, z, first, fine)
    interior = chm[2:-2, 2:-2]
    assert np.isfinite(interior).all()
    np.testing.assert_allclose(interior, 20.0, atol=1e-9)


def test_pitfree_is_exact_on_a_sloping_canopy():
    rng = np.random.default_rng(8)
    x, y = rng.uniform(0, 30, 20_000), rng.uniform(0, 30, 20_000)
    z = 5.0 + 0.4 * x + 0.2 * y
    grid = Grid.covering(0.0, 0.0, 30.0, 30.0, 1.0)
    chm = pitfree(x, y, z, np.ones(x.size, bool), grid)
    cx, cy = grid.centres()
    inner = (slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(chm[inner], (5.0 + 0.4 * cx + 0.2 * cy)[inner], atol=1e-9)


def test_only_first_returns_make_a_pitfree_chm():
    x, y, z = random_cloud(3000, seed=9, size=20.0)
    first = np.arange(x.size) % 2 == 0
    grid = Grid.covering(x.min(), y.min(), x.max(), y.max(), 1.0)
    z_noise = np.where(first, z, 100.0)  # later returns far above: ignored
    np.testing.assert_array_equal(pitfree(x, y, z_noise, first, grid), pitfree(x[first], y[first], z[first],
                                                                                np.ones(first.sum(), bool), grid))


@pytest.mark.shared
def test_p2r_equals_lidr_on_mixedconifer():
    rasterio = pytest.importorskip("rasterio")
    las = shared_file("lidar", "MixedConifer.laz")
    pts = read_tile(las)
    grid = Grid.covering(*open_catalog(las).bounds, 0.5)
    with rasterio.open(LIDR_REFERENCE / "MixedConifer_chm_p2r_0.5m.tif") as src:
        ref = src.read(1, masked=True).filled(np.nan)
        assert src.transform == grid.transform
    ours = p2r(pts["x"], pts["y"], pts["z"], grid).astype(np.float32)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    assert np.array_equal(ours[np.isfinite(ours)], ref[np.isfinite(ref)])


@pytest.mark.shared
def test_pitfree_close_to_lidr_on_mixedconifer():
    rasterio = pytest.importorskip("rasterio")
    las = shared_file("lidar", "MixedConifer.laz")
    pts = read_tile(las, ("x", "y", "z", "return_number"))
    grid = Grid.covering(*open_catalog(las).bounds, 0.5)
    with rasterio.open(LIDR_REFERENCE / "MixedConifer_chm_pitfree_0.5m.tif") as src:
        ref = src.read(1, masked=True).filled(np.nan)
    ours = pitfree(pts["x"], pts["y"], pts["z"], pts["return_number"] == 1, grid)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    d = np.abs(ours - ref)[np.isfinite(ref)]
    # Delaunay triangulations differ from lidR's in degenerate (co-circular) cases only
    assert (d <= 0.01).mean() > 0.97 and (d <= 0.5).mean() > 0.99
    assert abs(np.nanmean(ours) - np.nanmean(ref)) < 0.01
