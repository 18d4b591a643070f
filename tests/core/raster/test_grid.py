"""raster.grid.Grid: the snapped grid and lidR's cell-membership rules (rasterize_canopy, pixel_metrics):
``col = floor((x - xmin) / res)``, ``row = floor((ymax - y) / res)``; a point on a north-south line goes east,
on an east-west line south; the grid's own east and south edges belong to the last column and row."""

import math

import numpy as np
import pytest

from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.raster.grid import Grid


def test_covering_snaps_to_multiples_of_the_resolution():
    grid = Grid.covering(100.3, 200.7, 139.9, 241.0, 20.0)
    assert (grid.xmin, grid.ymax, grid.ncols, grid.nrows) == (100.0, 260.0, 2, 3)
    assert (grid.xmax, grid.ymin) == (140.0, 200.0)
    assert grid.shape == (3, 2) and grid.size == 6
    t = grid.transform
    assert (t.a, t.e, t.c, t.f) == (20.0, -20.0, 100.0, 260.0)
    # two grids over neighbouring boxes share their lines: they mosaic exactly
    other = Grid.covering(141.0, 199.0, 175.0, 230.0, 20.0)
    assert (other.xmin - grid.xmin) % 20 == 0 and (other.ymax - grid.ymax) % 20 == 0


def test_a_point_on_a_cell_line_goes_east_and_south():
    grid = Grid.from_origin(xmin=0.0, ymax=10.0, res=1.0, ncols=10, nrows=10)
    # on the vertical line x = 3: column 3 (the cell east of it); on the horizontal line y = 7: row 3 (south)
    assert grid.cols([3.0])[0] == 3 and grid.cols([2.999])[0] == 2
    assert grid.rows([7.0])[0] == 3 and grid.rows([7.001])[0] == 2
    assert grid.cell_index([3.0], [7.0])[0] == 3 * 10 + 3


def test_the_grid_edges():
    grid = Grid.from_origin(xmin=0.0, ymax=10.0, res=1.0, ncols=10, nrows=10)
    # the west and north edges are the first column and row; east and south the last (not outside)
    assert grid.cols([0.0, 10.0])[:].tolist() == [0, 9]
    assert grid.rows([10.0, 0.0])[:].tolist() == [0, 9]
    assert grid.contains(np.array([0.0, 10.0, 10.01]), np.array([0.0, 10.0, 5.0])).tolist() == [True, True, False]


def test_cell_index_against_a_brute_force_search():
    """Each point's cell found by testing every cell's half-open interval (west and north edges in)."""
    rng = np.random.default_rng(1)
    res = 2.5
    grid = Grid.covering(0.0, 0.0, 37.0, 23.0, res)
    x, y = rng.uniform(0, 37, 2000), rng.uniform(0, 23, 2000)
    x[:50] = np.round(x[:50] / res) * res  # points on cell lines
    y[50:100] = np.round(y[50:100] / res) * res
    expected = []
    for px, py in zip(x, y):
        cols = [c for c in range(grid.ncols) if grid.xmin + c * res <= px < grid.xmin + (c + 1) * res]
        rows = [r for r in range(grid.nrows) if grid.ymax - (r + 1) * res < py <= grid.ymax - r * res]
        expected.append((rows or [grid.nrows - 1])[0] * grid.ncols + (cols or [grid.ncols - 1])[0])
    assert grid.cell_index(x, y).tolist() == expected


def test_centres():
    grid = Grid.from_origin(xmin=10.0, ymax=20.0, res=2.0, ncols=3, nrows=2)
    cx, cy = grid.centres()
    assert cx.tolist() == [[11.0, 13.0, 15.0]] * 2
    assert cy.tolist() == [[19.0] * 3, [17.0] * 3]


def test_holds_cuts_a_requested_extent_half_open():
    grid = Grid.from_origin(xmin=0.0, ymax=10.0, res=1.0, ncols=5, nrows=5)  # x 0-5, y 5-10
    x, y = np.array([5.0, 5.0, 4.0]), np.array([7.0, 7.0, 5.0])
    # the data go on past the grid (east and south): the cut lines belong to the cells outside
    assert grid.holds(x, y, (0.0, 0.0, 20.0, 10.0)).tolist() == [False, False, False]
    # the grid's edges are the data's own: lidR keeps the edge points in the last column and row
    assert grid.holds(x, y, (0.0, 5.0, 5.0, 10.0)).tolist() == [True, True, True]


def test_a_grid_too_large_is_refused_before_allocating():
    with pytest.raises(ForestCarbonError, match="too large"):
        Grid.covering(0.0, 0.0, 1e6, 1e6, 0.01)
    with pytest.raises(ForestCarbonError, match="greater than 0"):
        Grid.covering(0.0, 0.0, 10.0, 10.0, 0.0)
    assert math.isfinite(Grid.covering(0.0, 0.0, 1e4, 1e4, 1.0).size)
