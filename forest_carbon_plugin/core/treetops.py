"""Tree tops by local maximum filter, as lidR's ``locate_trees(las, lmf(ws, hmin))``.

Popescu & Wynne (2004), PE&RS 70(5):589-604; lidR ``src/LAS.cpp::filter_local_maxima``
(shared/notes/lidar_metrics.md §3.2). The window is circular with diameter
``ws = intercept + slope × Z``; a point is a tree top when Z ≥ ``hmin`` and no point in
its window is strictly higher; among equal-height maxima within each other's window the
first in point order wins.

A maximum must also be the highest point of any square cell of side ws/(2√2) that holds
it (every point of that cell is inside its window), so only cell maxima are tested: the
test is exact and touches a small share of the points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .grid import Grid


@dataclass
class TreeTops:
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    index: np.ndarray  # index of each top in the input points

    def __len__(self):
        return len(self.x)


def local_maxima(x, y, z, ws_intercept: float = 5.0, ws_slope: float = 0.0, hmin: float = 2.0,
                 candidates_mask=None) -> TreeTops:
    """lidR's ``lmf`` on points. ``candidates_mask`` limits which points may be tops (used
    for the core of a buffered tile); all points still count as neighbours."""
    from scipy.spatial import cKDTree

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    n = len(z)
    if n == 0:
        return TreeTops(np.empty(0), np.empty(0), np.empty(0), np.empty(0, np.int64))
    ws_min = max(ws_intercept + ws_slope * max(hmin, 0.0), 1e-6) if ws_slope >= 0 else ws_intercept
    radius = np.maximum(ws_intercept + ws_slope * z, ws_min) / 2  # points below hmin get min(ws)
    side = ws_min / (2 * math.sqrt(2))
    grid = Grid.covering(x.min(), y.min(), x.max(), y.max(), side)
    cell = grid.cell_index(x, y)
    cell_max = np.full(grid.size, -np.inf)
    np.maximum.at(cell_max, cell, z)
    cand = (z >= hmin) & (z >= cell_max[cell])
    if candidates_mask is not None:
        cand &= candidates_mask
    idx = np.flatnonzero(cand)
    if idx.size == 0:
        return TreeTops(np.empty(0), np.empty(0), np.empty(0), np.empty(0, np.int64))
    tree = cKDTree(np.column_stack([x, y]))
    neighbours = tree.query_ball_point(np.column_stack([x[idx], y[idx]]), r=radius[idx])
    is_max = np.ones(idx.size, dtype=bool)
    ties = []
    for k, (i, nb) in enumerate(zip(idx, neighbours)):
        nz = z[nb]
        if (nz > z[i]).any():
            is_max[k] = False
        elif (nz == z[i]).sum() > 1:
            ties.append(k)
    if ties:
        # equal-height maxima in each other's window: the first in point order wins
        accepted: set = set()
        for k in sorted(ties, key=lambda k: idx[k]):
            i = idx[k]
            equal = [j for j in neighbours[k] if j != i and z[j] == z[i]]
            if any(j in accepted for j in equal) or any(j < i and _lower_index_is_max(j, z, tree, radius)
                                                          for j in equal if j not in accepted and not
                                                          (candidates_mask is not None and not candidates_mask[j])):
                is_max[k] = False
            else:
                accepted.add(i)
    tops = idx[is_max]
    return TreeTops(x[tops], y[tops], z[tops], tops)


def _lower_index_is_max(j, z, tree, radius):
    """Whether point j (an equal-height neighbour earlier in order) is itself a local maximum."""
    nb = tree.query_ball_point([tree.data[j, 0], tree.data[j, 1]], r=radius[j])
    return not (z[nb] > z[j]).any()


def raster_local_maxima(chm: np.ndarray, transform, ws_intercept=5.0, ws_slope=0.0, hmin=2.0) -> TreeTops:
    """``lmf`` on a canopy height model: cell centres as points, in row-major order."""
    rows, cols = np.nonzero(np.isfinite(chm))
    z = chm[rows, cols].astype(np.float64)
    x = transform.c + (cols + 0.5) * transform.a
    y = transform.f + (rows + 0.5) * transform.e
    return local_maxima(x, y, z, ws_intercept, ws_slope, hmin)
