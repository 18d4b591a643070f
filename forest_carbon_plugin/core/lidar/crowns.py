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

from ..progress import check_cancel


@dataclass(frozen=True)
class Dalponte:
    th_tree: float = 2.0
    th_seed: float = 0.45
    th_cr: float = 0.55
    max_cr: int = 10  # crown diameter, in cells


def grow_crowns(chm: np.ndarray, seed_rows, seed_cols, params: Dalponte = Dalponte(), progress=None,
                share: tuple = (0.0, 100.0), strip_rows: int = 128) -> np.ndarray:
    """Dalponte & Coomes (2016) region growing from seeds on a CHM.

    Each iteration goes through the raster in strips of ``strip_rows`` rows (progress and cancel between
    strips); the cells a strip takes are applied after the whole iteration, so growth stays simultaneous.

    Parameters
    ----------
    chm : ndarray
        Canopy heights (m), NaN for nodata.
    seed_rows, seed_cols : ndarray of int
        The cell of each seed (tree top).
    params : Dalponte
        The growth thresholds.
    progress : Progress, optional
        Progress (within ``share``) and cancel.
    share : tuple of float
        The part (start %, end %) of the progress bar the growth takes.
    strip_rows : int
        Rows per strip.

    Returns
    -------
    ndarray of int32
        Labels: 0 = no crown, k = the crown of the k-th seed (1-based).

    References
    ----------
    Dalponte & Coomes (2016), Methods in Ecology and Evolution 7:1236-1245.
    """
    chm = np.where(np.isfinite(chm), chm, -np.inf)
    labels = np.zeros(chm.shape, dtype=np.int32)
    seed_rows = np.asarray(seed_rows, dtype=np.int64)
    seed_cols = np.asarray(seed_cols, dtype=np.int64)
    n = len(seed_rows)
    if n == 0:
        return labels
    labels[seed_rows, seed_cols] = np.arange(1, n + 1)
    seed_h = np.r_[0.0, chm[seed_rows, seed_cols]]
    seed_r = np.r_[0, seed_rows]
    seed_c = np.r_[0, seed_cols]
    radius = params.max_cr / 2
    nrows, ncols = labels.shape
    strips = range(0, nrows, max(1, strip_rows))
    total = np.zeros(n + 1)
    count = np.zeros(n + 1, dtype=np.int64)
    for r0 in strips:
        check_cancel(progress)
        total, count = _add_heights(total, count, labels[r0:r0 + strip_rows], chm[r0:r0 + strip_rows])
    for iteration in range(params.max_cr):
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_h = total / count
        total = np.zeros(n + 1)
        count = np.zeros(n + 1, dtype=np.int64)
        cells, crowns = [], []
        for step, r0 in enumerate(strips):
            check_cancel(progress)
            _report(progress, share, (iteration + step / len(strips)) / params.max_cr)
            r1 = min(nrows, r0 + strip_rows)
            own = labels[r0:r1]
            # the strip with a ring of neighbours (zeros beyond the raster), as of the iteration's start
            block = np.zeros((r1 - r0 + 2, ncols + 2), dtype=np.int32)
            lo, hi = max(0, r0 - 1), min(nrows, r1 + 1)
            block[lo - r0 + 1:hi - r0 + 1, 1:-1] = labels[lo:hi]
            candidate = np.zeros(own.shape, dtype=np.int32)
            # neighbours of every crown (first direction wins a contested cell)
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                neighbour = block[1 + dr:1 + dr + r1 - r0, 1 + dc:1 + dc + ncols]
                take = (candidate == 0) & (own == 0) & (neighbour > 0)
                candidate[take] = neighbour[take]
            grown = own
            idx = np.flatnonzero(candidate)
            if idx.size:
                k = candidate.ravel()[idx]
                h = chm[r0:r1].ravel()[idx]
                ok = h > params.th_tree
                ok &= h > seed_h[k] * params.th_seed
                ok &= h > mean_h[k] * params.th_cr
                ok &= h <= seed_h[k] * 1.05
                ok &= np.hypot(idx // ncols + r0 - seed_r[k], idx % ncols - seed_c[k]) <= radius
                if ok.any():
                    cells.append(idx[ok] + r0 * ncols)
                    crowns.append(k[ok])
                    grown = own.copy()
                    grown.ravel()[idx[ok]] = k[ok]
            # the next iteration's crown heights, summed in raster order as a whole-raster bincount would
            total, count = _add_heights(total, count, grown, chm[r0:r1])
        if not cells:
            break
        labels.ravel()[np.concatenate(cells)] = np.concatenate(crowns)
    return labels


def _add_heights(total, count, labels, chm):
    """``total`` and ``count`` per crown continued with a strip's labelled cells, in raster order.

    The running totals go first into the bincount, so each crown's sum continues exactly as one
    bincount over the whole raster would add it up (0 + total, then the strip's cells in order).
    """
    flat = labels.ravel()
    cells = np.flatnonzero(flat)
    bins = np.arange(len(total))
    total = np.bincount(np.r_[bins, flat[cells]], weights=np.r_[total, chm.ravel()[cells]], minlength=len(total))
    return total, count + np.bincount(flat[cells], minlength=len(count))


def crown_polygons(labels: np.ndarray, transform, chm: np.ndarray, progress=None, share: tuple = (0.0, 100.0),
                   strip_rows: int = 32):
    """Polygons of the labelled crowns.

    The raster is traced in strips of ``strip_rows`` rows (progress and cancel between strips): each
    crown (a 4-connected region, as :func:`grow_crowns` makes them) with the strip where it starts, in a
    window reaching down to its last row.

    Parameters
    ----------
    labels : ndarray of int
        :func:`grow_crowns`' labels.
    transform : affine.Affine
        The raster's transform (polygons are in its map units).
    chm : ndarray
        Canopy heights (m), for each crown's maximum.
    progress, share, strip_rows
        As :func:`grow_crowns` (the share the tracing takes; 32 rows per strip by default).

    Returns
    -------
    list of tuple
        (label, shapely polygon, area m², crown diameter m, max height m) per crown, by label.
    """
    from rasterio.features import shapes
    from rasterio.transform import Affine
    from shapely.geometry import shape
    from shapely.ops import unary_union

    nrows = labels.shape[0]
    seen = np.zeros(int(labels.max(initial=0)) + 1, dtype=bool)
    seen[0] = True
    out = []
    strips = range(0, nrows, max(1, strip_rows))
    for step, r0 in enumerate(strips):
        check_cancel(progress)
        _report(progress, share, step / len(strips))
        present = np.unique(labels[r0:r0 + strip_rows])
        mine = present[~seen[present]]
        if not mine.size:
            continue
        seen[mine] = True
        chosen = np.zeros(len(seen), dtype=bool)
        chosen[mine] = True
        r1 = min(nrows, r0 + strip_rows)
        while r1 < nrows and chosen[labels[r1 - 1]].any():  # a crown goes on below the window
            r1 = min(nrows, r1 + 16)
        window = labels[r0:r1]
        keep = chosen[window]
        crown = window[keep]
        order = np.argsort(crown, kind="stable")
        ids = crown[order]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        height = dict(zip(ids[starts].tolist(), np.fmax.reduceat(chm[r0:r1][keep][order], starts).tolist()))
        parts: dict = {}
        for geom, value in shapes(np.where(keep, window, 0), mask=keep, transform=transform * Affine.translation(0, r0)):
            parts.setdefault(int(value), []).append(shape(geom))
        for j, k in enumerate(sorted(parts)):
            if j % 128 == 127:
                check_cancel(progress)
            poly = unary_union(parts[k])
            area = poly.area
            out.append((k, poly, area, 2 * np.sqrt(area / np.pi), height[k]))
    out.sort(key=lambda item: item[0])
    return out


def _report(progress, share, fraction):
    if progress is not None:
        progress.set_progress(share[0] + (share[1] - share[0]) * fraction)
