"""lidar.tin: point location and linear interpolation in a Delaunay triangulation: exact on a plane,
the same triangles as scipy's own (slow) search, NaN outside the hull."""

import numpy as np
import pytest

from forest_carbon_plugin.core.lidar.tin import bucket_index, interpolate, locate

spatial = pytest.importorskip("scipy.spatial")


def _cloud(seed=0, n=3000):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 100, n), rng.uniform(0, 60, n)


def test_interpolation_is_exact_on_a_plane():
    x, y = _cloud()
    tri = spatial.Delaunay(np.column_stack([x, y]))
    z = 12.5 + 0.3 * x - 0.7 * y
    rng = np.random.default_rng(1)
    qx, qy = rng.uniform(5, 95, 20_000), rng.uniform(5, 55, 20_000)
    inside = tri.find_simplex(np.column_stack([qx, qy])) >= 0
    values = interpolate(tri, z, qx, qy)
    assert np.isfinite(values[inside]).all()
    np.testing.assert_allclose(values[inside], 12.5 + 0.3 * qx[inside] - 0.7 * qy[inside], atol=1e-9)


def test_at_the_vertices_the_values_themselves():
    x, y = _cloud(seed=2, n=500)
    tri = spatial.Delaunay(np.column_stack([x, y]))
    z = np.random.default_rng(3).uniform(0, 30, 500)
    np.testing.assert_allclose(interpolate(tri, z, x, y), z, atol=1e-9)


def test_locate_finds_a_triangle_that_holds_the_point():
    x, y = _cloud(seed=4)
    tri = spatial.Delaunay(np.column_stack([x, y]))
    rng = np.random.default_rng(5)
    qx, qy = rng.uniform(-10, 110, 10_000), rng.uniform(-10, 70, 10_000)
    ours = locate(tri, qx, qy, bucket_index(tri))
    theirs = tri.find_simplex(np.column_stack([qx, qy]))
    assert np.array_equal(ours >= 0, theirs >= 0)  # the same points inside the hull
    # where the two pick different triangles, the point lies on their shared edge: both hold it
    found = ours >= 0
    bary = np.einsum("ijk,ik->ij", tri.transform[ours[found], :2],
                     np.column_stack([qx, qy])[found] - tri.transform[ours[found], 2])
    weights = np.column_stack([bary, 1 - bary.sum(axis=1)])
    assert (weights >= -1e-9).all()
    assert np.mean(ours[found] == theirs[found]) > 0.999


def test_outside_the_hull_is_nan():
    tri = spatial.Delaunay(np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    values = interpolate(tri, np.array([1.0, 2.0, 3.0]), np.array([1.0, 9.0, -1.0]), np.array([1.0, 9.0, 0.0]))
    assert values[0] == pytest.approx(1.0 + 0.1 * 1 + 0.2 * 1)
    assert np.isnan(values[1:]).all()
