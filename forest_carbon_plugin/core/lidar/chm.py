"""Canopy height models from point clouds: lidR's ``p2r`` and ``pitfree``.

* ``p2r(subcircle)``: each cell takes the highest Z of all points in it; with ``subcircle``
  each point is replaced by 8 points on a circle of that radius at 45° steps (the point
  itself is not kept), which thickens sparse returns (lidR ``R/algorithm-dsm.R``).
* ``pitfree(thresholds, max_edge)``: Khosravipour et al. (2014), PE&RS 80(9):863-872, as in
  lidR: first returns, the highest per cell, then for each height threshold a Delaunay
  triangulation of the points at or above it, linearly interpolated at cell centres, with
  triangles whose longest edge exceeds ``max_edge`` dropped (0 = keep all; the first value
  for threshold 0, the second for the others); the CHM is the cell-wise maximum of the layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..raster.grid import Grid
from .tin import interpolate, locate

PITFREE_THRESHOLDS = (0.0, 2.0, 5.0, 10.0, 15.0)
PITFREE_MAX_EDGE = (0.0, 1.0)


@dataclass(frozen=True)
class P2R:
    """lidR's ``p2r(subcircle, na.fill)``: the highest return per cell.

    Parameters
    ----------
    subcircle_m : float
        Radius (m) of the circle of 8 points that replaces each return; 0 keeps the returns.
    fill_empty : bool
        Fill empty cells inside the data by linear interpolation (lidR's ``na.fill = tin()``).
    """

    subcircle_m: float = 0.0
    fill_empty: bool = False


@dataclass(frozen=True)
class PitFree:
    """lidR's ``pitfree(thresholds, max_edge, subcircle)`` (Khosravipour et al. 2014).

    Parameters
    ----------
    thresholds_m : tuple of float
        Heights (m) from which each Delaunay layer is built.
    max_edge_m : tuple of float
        Longest triangle edge kept (m; 0 keeps all): the first for threshold 0, the second for the others.
    subcircle_m : float
        Radius (m) of the circle of 8 points that replaces each first return; 0 keeps the returns.
    fill_empty : bool
        Fill empty cells inside the data by linear interpolation (lidR's ``na.fill = tin()``).
    """

    thresholds_m: tuple = PITFREE_THRESHOLDS
    max_edge_m: tuple = PITFREE_MAX_EDGE
    subcircle_m: float = 0.0
    fill_empty: bool = False


def subcircle_points(x, y, z, radius: float):
    """Each point replaced by 8 points at ``radius``, angles k·45° (lidR's subcircle).

    Parameters
    ----------
    x, y, z : ndarray
        The points.
    radius : float
        Radius (map units); 0 returns the points unchanged.

    Returns
    -------
    tuple of ndarray
        x, y, z of the 8 × n points.
    """
    if radius <= 0:
        return x, y, z
    angles = np.arange(8) * (np.pi / 4)
    dx, dy = radius * np.cos(angles), radius * np.sin(angles)
    return ((np.asarray(x)[:, None] + dx).ravel(), (np.asarray(y)[:, None] + dy).ravel(),
            np.repeat(np.asarray(z), 8))


def p2r(x, y, z, grid: Grid, subcircle: float = 0.0) -> np.ndarray:
    """lidR's ``p2r(subcircle)``: the highest Z per cell.

    Parameters
    ----------
    x, y, z : ndarray
        The points (map units; Z in m).
    grid : Grid
        The cells.
    subcircle : float
        Radius of lidR's subcircle (map units); 0 keeps the points.

    Returns
    -------
    ndarray
        Highest Z per cell, NaN where empty, shaped like the grid.
    """
    x, y, z = subcircle_points(x, y, z, subcircle)
    inside = grid.contains(x, y)
    x, y, z = x[inside], y[inside], z[inside]
    out = np.full(grid.size, -np.inf)
    np.maximum.at(out, grid.cell_index(x, y), z)
    out[np.isneginf(out)] = np.nan
    return out.reshape(grid.shape)


def highest_per_cell(x, y, z, grid: Grid):
    """Index of the highest point of each occupied cell.

    Ties are broken by position (lowest y, then x), not by file order, so that a tile read
    with its buffer and the merged catalog pick the same point.

    Parameters
    ----------
    x, y, z : ndarray
        Coordinates and heights of the candidate points.
    grid : Grid
        The cells each point is assigned to.

    Returns
    -------
    ndarray of int
        Indices of the chosen points, ascending.
    """
    cell = grid.cell_index(x, y)
    order = np.lexsort((np.asarray(x), np.asarray(y), -np.asarray(z), cell))
    first = np.r_[True, cell[order][1:] != cell[order][:-1]]
    return np.sort(order[first])


def tin_layer(x, y, z, grid: Grid, max_edge: float = 0.0) -> np.ndarray:
    """Delaunay triangulation of the points, linearly interpolated at the cell centres.

    Parameters
    ----------
    x, y, z : ndarray
        The points.
    grid : Grid
        The cells.
    max_edge : float
        Triangles with a longer edge (map units) are dropped; 0 keeps all.

    Returns
    -------
    ndarray
        Interpolated Z per cell, NaN outside every kept triangle, shaped like the grid.
    """
    from scipy.spatial import Delaunay, QhullError

    out = np.full(grid.size, np.nan)
    if len(x) < 3:
        return out.reshape(grid.shape)
    # triangulate in coordinates local to the grid origin: with map coordinates (10⁵-10⁶ m)
    # Qhull's roundoff makes near-degenerate choices depend on the whole point set
    pts = np.column_stack([x - grid.xmin, y - grid.ymax])
    try:
        tri = Delaunay(pts)
    except QhullError:
        return out.reshape(grid.shape)
    simplices = tri.simplices
    keep = np.ones(len(simplices), dtype=bool)
    if max_edge > 0:
        a, b, c = pts[simplices[:, 0]], pts[simplices[:, 1]], pts[simplices[:, 2]]
        longest = np.maximum.reduce([np.hypot(*(a - b).T), np.hypot(*(b - c).T), np.hypot(*(c - a).T)])
        keep = longest <= max_edge
    # only cells within the points' bounding box can be inside a triangle
    x0, x1, y0, y1 = x.min(), x.max(), y.min(), y.max()
    c0, c1 = grid.cols([x0])[0], grid.cols([x1])[0]
    r0, r1 = grid.rows([y1])[0], grid.rows([y0])[0]
    cols, rows = np.meshgrid(np.arange(c0, c1 + 1), np.arange(r0, r1 + 1))
    cx = (cols.ravel() + 0.5) * grid.res
    cy = -(rows.ravel() + 0.5) * grid.res
    simplex = locate(tri, cx, cy)
    ok = simplex >= 0
    ok[ok] = keep[simplex[ok]]
    values = interpolate(tri, z, cx[ok], cy[ok], simplex[ok])
    out[(rows.ravel() * grid.ncols + cols.ravel())[ok]] = values
    return out.reshape(grid.shape)


def pitfree(x, y, z, first, grid: Grid, thresholds=PITFREE_THRESHOLDS, max_edge=PITFREE_MAX_EDGE,
            subcircle: float = 0.0) -> np.ndarray:
    """lidR's ``pitfree(thresholds, max_edge, subcircle)``.

    Parameters
    ----------
    x, y, z : ndarray
        The points (Z in m above ground).
    first : ndarray of bool
        First returns (the only ones used).
    grid : Grid
        The cells.
    thresholds : sequence of float
        Heights (m) from which each Delaunay layer is built.
    max_edge : sequence of float
        Longest triangle edge kept (m; 0 keeps all): for threshold 0, then for the others.
    subcircle : float
        Radius of lidR's subcircle (m); 0 keeps the returns.

    Returns
    -------
    ndarray
        The cell-wise maximum of the layers, NaN where empty, shaped like the grid.

    References
    ----------
    Khosravipour et al. (2014), PE&RS 80(9):863-872.
    """
    x, y, z = np.asarray(x)[first], np.asarray(y)[first], np.asarray(z)[first]
    x, y, z = subcircle_points(x, y, z, subcircle)
    keep = highest_per_cell(x, y, z, grid)
    # a canonical order: Qhull resolves co-circular points by input order
    keep = keep[np.lexsort((x[keep], y[keep]))]
    x, y, z = x[keep], y[keep], z[keep]
    chm = np.full(grid.shape, np.nan)
    for th in sorted(thresholds):
        if np.count_nonzero(z > th) <= 3:
            continue
        sel = z >= th
        x, y, z = x[sel], y[sel], z[sel]
        layer = tin_layer(x, y, z, grid, max_edge[0] if th == 0 else max_edge[1])
        chm = np.fmax(chm, layer)
    return chm
