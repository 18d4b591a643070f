"""lidar.normalize: heights above the ground as lidR's normalize_height(las, tin()): a TIN of the ground
and water returns inside their hull, inverse-distance weighting of the 3 nearest (power 1, 50 m) outside,
ground returns at exactly 0; a catalog normalized like the merged file."""

import numpy as np
import pytest

from forest_carbon_plugin.core.lidar.catalog import open_catalog, read_tile
from forest_carbon_plugin.core.lidar.normalize import GroundSurface, normalize_height, normalized_heights

from ...conftest import shared_file
from .clouds import quantized, write_las

laspy = pytest.importorskip("laspy")


def _plane(x, y):
    return 250.0 + 0.3 * (x - 600_000) - 0.2 * (y - 5_000_000)


def test_the_surface_is_exact_on_a_plane_and_idw_outside():
    rng = np.random.default_rng(80)
    gx, gy = 600_000 + rng.uniform(0, 50, 500), 5_000_000 + rng.uniform(0, 50, 500)
    surface = GroundSurface(gx, gy, _plane(gx, gy))
    qx, qy = 600_000 + rng.uniform(5, 45, 2000), 5_000_000 + rng.uniform(5, 45, 2000)
    np.testing.assert_allclose(surface(qx, qy), _plane(qx, qy), atol=1e-9)
    # outside the hull: the 3 nearest ground returns weighted by 1/distance, found by brute force
    ox, oy = np.array([600_060.0, 599_990.0]), np.array([5_000_020.0, 4_999_995.0])
    for x, y, value in zip(ox, oy, surface(ox, oy)):
        d = np.hypot(gx - x, gy - y)
        near = np.argsort(d)[:3]
        assert value == pytest.approx(np.sum(_plane(gx, gy)[near] / d[near]) / np.sum(1 / d[near]), rel=1e-12)
    # beyond 50 m of every ground return there is no ground
    assert np.isnan(surface(np.array([600_200.0]), np.array([5_000_200.0])))[0]


@pytest.fixture
def terrain(tmp_path):
    """Ground returns (class 2) on a plane and vegetation returns 3-25 m above it, inside the ground's hull
    (outside it lidR extrapolates by IDW, which a plane does not survive), in two tiles."""
    rng = np.random.default_rng(81)
    gx, gy = rng.uniform(0, 80, 4000), rng.uniform(0, 40, 4000)
    vx, vy = rng.uniform(2, 78, 3000), rng.uniform(2, 38, 3000)
    x, y = quantized(np.r_[gx, vx] + 600_000), quantized(np.r_[gy, vy] + 5_000_000)
    height = np.r_[np.zeros(4000), quantized(rng.uniform(3, 25, 3000))]
    z = quantized(_plane(x, y) + height)
    cls = np.r_[np.full(4000, 2), np.full(3000, 1)]
    folder = tmp_path / "tiles"
    folder.mkdir()
    west = x < 600_040
    write_las(folder / "west.laz", x[west], y[west], z[west], classification=cls[west])
    write_las(folder / "east.laz", x[~west], y[~west], z[~west], classification=cls[~west])
    merged = write_las(tmp_path / "merged.laz", x, y, z, classification=cls)
    return folder, merged, x, y, z, height, cls


def test_normalized_heights_of_a_tile(terrain):
    folder, _, x, y, z, height, cls = terrain
    catalog = open_catalog(folder)
    i = [t.path.endswith("east.laz") for t in catalog.tiles].index(True)
    pts = read_tile(catalog.tiles[i].path, ("x", "y", "z", "classification"))
    stats = {}
    h = normalized_heights(catalog, i, pts, stats)
    assert (h[pts["classification"] == 2] == 0).all()
    truth = dict(zip(zip(np.round(x, 2), np.round(y, 2)), height))
    expected = np.array([truth[key] for key in zip(np.round(pts["x"], 2), np.round(pts["y"], 2))])
    # the plane's TIN is exact: heights are off by the 1 cm rounding of the file's Z only
    np.testing.assert_allclose(h, expected, atol=0.011)
    # the TIN takes the west tile's ground returns within 30 m of the tile too (lidR's chunk buffer)
    assert stats["ground_points"] == np.count_nonzero((cls == 2) & (x >= catalog.tiles[i].minx - 30.0))


def test_normalize_height_writes_heights_and_keeps_z(terrain, tmp_path):
    folder, merged, *_ = terrain
    result = normalize_height(folder, tmp_path / "tiles.laz")
    normalize_height(merged, tmp_path / "merged.laz")
    assert result["points"] == 7000
    tiles, whole = laspy.read(tmp_path / "tiles.laz"), laspy.read(tmp_path / "merged.laz")
    key = lambda las: np.lexsort((np.asarray(las.y), np.asarray(las.x)))  # noqa: E731
    a, b = key(tiles), key(whole)
    np.testing.assert_allclose(np.asarray(tiles.z)[a], np.asarray(whole.z)[b], atol=1e-6)
    assert (np.asarray(tiles.z)[np.asarray(tiles.classification) == 2] == 0).all()
    np.testing.assert_allclose(np.asarray(tiles["Zref"]) - np.asarray(tiles.z),
                               _plane(np.asarray(tiles.x), np.asarray(tiles.y)), atol=0.011)


@pytest.mark.shared
def test_topography_ground_returns_at_zero(tmp_path):
    """lidR's tests/testthat/test-normalize_height.R on its Topography.laz: every ground Z == 0 after tin(),
    and the 73,403 points kept."""
    result = normalize_height(shared_file("lidar", "Topography.laz"), tmp_path / "topo.laz")
    las = laspy.read(tmp_path / "topo.laz")
    assert result["points"] == len(las.points) == 73_403
    assert (np.asarray(las.z)[np.isin(np.asarray(las.classification), (2, 9))] == 0).all()
    assert np.percentile(np.asarray(las.z), 1) > -1.0  # heights, not elevations (Z were 789-830 m)
