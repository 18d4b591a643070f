"""lidar.plot_metrics: lidR's plot_metrics for circles (clip_circle: (x − xc)² + (y − yc)² ≤ r²) and
polygons (a point on the boundary is inside), checked against a numpy selection of the same points."""

import numpy as np
import pytest

from forest_carbon_plugin.core.lidar.plot_metrics import Plot, plot_metrics

from .clouds import random_cloud, write_las


@pytest.fixture
def stand(tmp_path):
    """Two 40 m tiles, 2,000 points each, returns 1 and 2."""
    folder = tmp_path / "stand"
    folder.mkdir()
    west, east = random_cloud(2000, seed=50), random_cloud(2000, seed=51, x0=500_040.0)
    rn = np.random.default_rng(52).integers(1, 3, 4000)
    write_las(folder / "west.las", *west, return_number=rn[:2000])
    write_las(folder / "east.las", *east, return_number=rn[2000:])
    x, y, z = (np.concatenate([a, b]) for a, b in zip(west, east))
    return folder, x, y, z, rn == 1


def _check(result, k, inside, z, first, area):
    names = result.names
    value = dict(zip(names, result.values[k]))
    assert value["n"] == inside.sum()
    assert value["zmean"] == pytest.approx(z[inside].mean(), rel=1e-12)
    assert value["zq95"] == pytest.approx(np.quantile(z[inside], 0.95), rel=1e-12)
    assert value["pzabove2"] == pytest.approx(100 * np.mean(z[inside] > 2), rel=1e-12)
    assert value["cover"] == pytest.approx(100 * np.mean(z[inside & first] > 2), rel=1e-12)
    assert value["point_density"] == pytest.approx(inside.sum() / area, rel=1e-12)


def test_circle_and_polygon_plots_against_numpy(stand):
    folder, x, y, z, first = stand
    centre = (500_040.0, 4_200_020.0)  # on the tile edge: points come from both tiles
    square = np.array([[500_010.0, 4_200_005.0], [500_030.0, 4_200_005.0], [500_030.0, 4_200_025.0],
                       [500_010.0, 4_200_025.0]])
    hole = np.array([[500_015.0, 4_200_010.0], [500_020.0, 4_200_010.0], [500_020.0, 4_200_015.0],
                     [500_015.0, 4_200_015.0]])
    plots = [Plot(centre=centre, radius_m=11.28), Plot(polygons=[[square, hole]]),
             Plot(centre=(400_000.0, 4_000_000.0), radius_m=10.0), None]
    result = plot_metrics(folder, plots, height_break=2.0, normalize="never")
    circle = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= 11.28 ** 2
    _check(result, 0, circle, z, first, np.pi * 11.28 ** 2)
    in_square = (x >= 500_010) & (x <= 500_030) & (y >= 4_200_005) & (y <= 4_200_025)
    in_hole = (x > 500_015) & (x < 500_020) & (y > 4_200_010) & (y < 4_200_015)  # the hole's edge is the plot's
    _check(result, 1, in_square & ~in_hole, z, first, 400.0 - 25.0)
    assert plots[1].area_m2 == pytest.approx(375.0)
    assert result.empty == [2, 3] and result.values[2, result.names.index("n")] == 0
    assert np.isnan(result.values[2, result.names.index("zmean")])
    assert result.warnings and "2 of 4 plots" in result.warnings[0]


def test_a_point_on_the_circle_is_inside(tmp_path):
    x = np.array([100.0, 103.0, 103.01, 100.0])
    y = np.array([200.0, 200.0, 200.0, 197.0])
    z = np.array([10.0, 20.0, 30.0, 5.0])
    path = write_las(tmp_path / "four.las", x + 500_000, y + 4_200_000, z)
    result = plot_metrics(path, [Plot(centre=(500_100.0, 4_200_200.0), radius_m=3.0)], normalize="never")
    value = dict(zip(result.names, result.values[0]))
    assert value["n"] == 3 and value["zmax"] == 20.0
