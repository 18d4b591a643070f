"""Tree crowns from a canopy height model and tree tops: Dalponte-style region growing.

Dalponte & Coomes (2016), Methods in Ecology and Evolution 7:1236-1245, as in the R packages
itcSegment and lidR (``dalponte2016(chm, treetops, th_tree = 2, th_seed = 0.45, th_cr = 0.55,
max_cr = 10)``): each crown grows from its top, cell by cell (4-neighbours), taking a cell
when it is higher than ``th_tree``, higher than ``th_seed`` × the top and ``th_cr`` × the
crown's mean height, not above the top by more than 5%, and within ``max_cr`` cells
(a diameter) of the top. Growth is simultaneous for every crown, one ring per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dalponte:
    th_tree: float = 2.0
    th_seed: float = 0.45
    th_cr: float = 0.55
    max_cr: int = 10  # crown diameter, in cells


def grow_crowns(chm: np.ndarray, seed_rows, seed_cols, params: Dalponte = Dalponte()) -> np.ndarray:
    """Label raster: 0 = no crown, k = the crown of the k-th seed (1-based)."""
    chm = np.where(np.isfinite(chm), chm, -np.inf)
    labels = np.zeros(chm.shape, dtype=np.int32)
    seed_rows = np.asarray(seed_rows, dtype=np.int64)
    seed_cols = np.asarray(seed_cols, dtype=np.int64)
    n = len(seed_rows)
    if n == 0:
        return labels
    ids = np.arange(1, n + 1)
    labels[seed_rows, seed_cols] = ids
    seed_h = np.r_[0.0, chm[seed_rows, seed_cols]]
    seed_r = np.r_[0, seed_rows]
    seed_c = np.r_[0, seed_cols]
    rows, cols = np.indices(chm.shape)
    radius = params.max_cr / 2
    for _ in range(params.max_cr):
        total = np.bincount(labels.ravel(), weights=np.where(labels > 0, chm, 0).ravel(), minlength=n + 1)
        count = np.bincount(labels.ravel(), minlength=n + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_h = total / count
        grown = False
        candidate = np.zeros(chm.shape, dtype=np.int32)
        # neighbours of every crown (first direction wins a contested cell)
        padded = np.pad(labels, 1)
        nrows, ncols = labels.shape
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            neighbour = padded[1 + dr:1 + dr + nrows, 1 + dc:1 + dc + ncols]
            take = (candidate == 0) & (labels == 0) & (neighbour > 0)
            candidate[take] = neighbour[take]
        k = candidate
        ok = k > 0
        h = chm
        ok &= h > params.th_tree
        ok &= h > seed_h[k] * params.th_seed
        ok &= h > mean_h[k] * params.th_cr
        ok &= h <= seed_h[k] * 1.05
        ok &= np.hypot(rows - seed_r[k], cols - seed_c[k]) <= radius
        if ok.any():
            labels[ok] = k[ok]
            grown = True
        if not grown:
            break
    return labels


def crown_polygons(labels: np.ndarray, transform, chm: np.ndarray):
    """(id, shapely polygon, area m², crown diameter m, max height m) per labelled crown."""
    from rasterio.features import shapes
    from shapely.geometry import shape
    from shapely.ops import unary_union

    parts: dict = {}
    for geom, value in shapes(labels, mask=labels > 0, transform=transform):
        parts.setdefault(int(value), []).append(shape(geom))
    out = []
    for k in sorted(parts):
        poly = unary_union(parts[k])
        area = poly.area
        heights = chm[labels == k]
        out.append((k, poly, area, 2 * np.sqrt(area / np.pi), float(np.nanmax(heights))))
    return out
