"""Tree tops by local maximum filter, as lidR's ``locate_trees(las, lmf(ws, hmin))``.

Popescu & Wynne (2004), PE&RS 70(5):589-604; lidR 4.3.2 ``src/LAS.cpp::filter_local_maxima``
(Roussel et al. 2020, Remote Sensing of Environment 251:112061). The window is circular with diameter
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
from pathlib import Path

import numpy as np

from ..errors import ForestCarbonError
from ..raster.grid import Grid
from ..progress import check_cancel


@dataclass(frozen=True)
class LMF:
    """lidR's ``lmf(ws, hmin, shape = "circular")`` with ``ws = ws_intercept_m + ws_slope × height``.

    Parameters
    ----------
    ws_intercept_m : float
        Window diameter (m) at height 0.
    ws_slope : float
        Growth of the diameter per m of height.
    hmin_m : float
        Lowest height (m) of a tree top.
    """

    ws_intercept_m: float = 5.0
    ws_slope: float = 0.0
    hmin_m: float = 2.0


@dataclass(frozen=True)
class VWF:
    """ForestTools' ``vwf(CHM, winFun, minHeight)`` with ``winFun(h) = ws_intercept_m + ws_slope × h``.

    Parameters
    ----------
    ws_intercept_m : float
        Window radius (m) at height 0 (half lmf's diameter for the same value).
    ws_slope : float
        Growth of the radius per m of height.
    min_height_m : float
        Cells below this height (m) are masked.
    """

    ws_intercept_m: float = 0.5
    ws_slope: float = 0.06
    min_height_m: float = 2.0


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
    """lidR's ``lmf(ws, hmin)`` on points: the tree tops.

    Parameters
    ----------
    x, y, z : ndarray
        The points (Z in m above ground).
    ws_intercept : float
        Window diameter (m) at height 0.
    ws_slope : float
        Growth of the diameter per m of height.
    hmin : float
        Lowest height (m) of a top.
    candidates_mask : ndarray of bool, optional
        Which points may be tops (the core of a buffered tile); all points still count as neighbours.

    Returns
    -------
    TreeTops
        x, y, height and index (in the input) of each top, in point order.

    References
    ----------
    Popescu & Wynne (2004), PE&RS 70(5):589-604.
    """
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
    """lidR's ``lmf`` on a canopy height model: the cell centres as points, in row-major order.

    Parameters
    ----------
    chm : ndarray
        Canopy heights (m), NaN for nodata.
    transform : affine.Affine
        The CHM's transform.
    ws_intercept, ws_slope, hmin : float
        As :func:`local_maxima`.

    Returns
    -------
    TreeTops
        ``index`` is the position among the finite cells, row-major.
    """
    rows, cols = np.nonzero(np.isfinite(chm))
    z = chm[rows, cols].astype(np.float64)
    x = transform.c + (cols + 0.5) * transform.a
    y = transform.f + (rows + 0.5) * transform.e
    return local_maxima(x, y, z, ws_intercept, ws_slope, hmin)


# --- ForestTools' variable window filter -------------------------------------------------------
#
# ForestTools ``vwf(CHM, winFun, minHeight, maxWinDiameter = 99, minWinNeib = "queen")``
# (Plowright, R/vwf.R), after Popescu & Wynne (2004): winFun gives the window *radius* in map
# units from a cell's height. Its rules, which change which cells are tops:
# * cells below minHeight are masked (NA), and the window radii are the multiples of the
#   resolution (rounded to 5 decimals) from winFun(min) rounded down to winFun(max) rounded up,
#   where min is minHeight once masking happened; radii below one cell are dropped (left with
#   none, a one-cell radius is used);
# * each cell takes the listed radius nearest to winFun(height) (the first on a tie: which.min);
# * a radius is a circle of the cells whose centre is within it (raster::focalWeight,
#   type = "circle"); a 3×3 circle is replaced by the full 3×3 queen window (minWinNeib);
# * a cell is a top when no cell of its window is higher (max(x[window], na.rm = TRUE) ==
#   centre): every cell of a flat top counts, so a plateau of equal maxima gives one top per cell;
#   NA cells and the outside of the raster are ignored;
# * a window wider than maxWinDiameter cells (99) is refused.

VWF_MAX_WIN_DIAMETER = 99


@dataclass
class VwfWindows:
    res: float
    radii: np.ndarray          # window radii (map units), ascending
    offsets: list              # per radius: (drow, dcol) arrays of the cells in the window
    half: int                  # the largest window's half width in cells (the halo of a block)
    warning: str | None = None


def vwf_windows(chm_min: float, chm_max: float, res: float, ws_intercept: float, ws_slope: float,
                max_win_diameter: int | None = VWF_MAX_WIN_DIAMETER) -> VwfWindows:
    """The windows ForestTools pre-generates for a CHM whose values run ``chm_min``..``chm_max``.

    Parameters
    ----------
    chm_min, chm_max : float
        The CHM's lowest (after masking) and highest height (m).
    res : float
        The cell size (map units).
    ws_intercept : float
        Window radius (m) at height 0.
    ws_slope : float
        Growth of the radius per m of height.
    max_win_diameter : int or None
        ForestTools' ``maxWinDiameter`` (cells); None for no limit.

    Returns
    -------
    VwfWindows
        The radii, the cell offsets of each window and the halo a block needs.
    """
    def win(h):
        return ws_intercept + ws_slope * h

    lo = res * math.floor(win(chm_min) / res)
    hi = res * math.ceil(win(chm_max) / res)
    n = max(int(math.floor((hi - lo) / res + 1e-10)), 0)  # R's seq(from, to, by)
    radii = lo + np.arange(n + 1) * res
    radii = radii[radii >= res]
    warning = None
    if radii.size == 0:
        warning = (f"The largest window radius ({win(chm_max):g} m) is smaller than the CHM's resolution "
                   f"({res:g} m): a 3 × 3 cell window is used everywhere. Use a finer CHM or larger "
                   "WS_INTERCEPT / WS_SLOPE.")
        radii = np.array([res])
    # R names the windows by their radii and matches against as.numeric(names): 15 significant digits
    radii = np.array([float(f"{r:.15g}") for r in radii])
    diameter = int(math.ceil(radii.max() / res * 2))
    if diameter % 2 == 0:
        diameter += 1
    if max_win_diameter is not None and diameter > max_win_diameter:
        raise ForestCarbonError(
            f"The window radius WS_INTERCEPT + WS_SLOPE × height reaches {radii.max():g} m at the highest "
            f"cell ({chm_max:g} m): a window {diameter} cells wide on this {res:g} m CHM, over the "
            f"{max_win_diameter}-cell limit of ForestTools' vwf. Lower WS_INTERCEPT or WS_SLOPE (the vwf "
            "window is a radius, half lmf's diameter), or use a coarser CHM.")
    offsets = []
    for radius in radii:
        k = int(math.floor(radius / res))
        dr, dc = np.mgrid[-k:k + 1, -k:k + 1]
        if k == 1:
            inside = np.ones(dr.shape, dtype=bool)  # minWinNeib = "queen"
        else:
            inside = np.sqrt((dr * res) ** 2 + (dc * res) ** 2) <= radius
        offsets.append((dr[inside], dc[inside]))
    return VwfWindows(res, radii, offsets, (diameter - 1) // 2, warning)


def vwf_block(values: np.ndarray, halo: int, windows: VwfWindows, ws_intercept: float, ws_slope: float):
    """Tops among the core cells of a block read with ``halo`` cells on every side.

    Parameters
    ----------
    values : ndarray
        Heights (m); NaN outside the raster and for masked cells.
    halo : int
        Cells read around the block's core.
    windows : VwfWindows
        :func:`vwf_windows`' result.
    ws_intercept, ws_slope : float
        The window function (radius in m).

    Returns
    -------
    rows, cols : ndarray of int
        The tops within the core, row-major.
    """
    from scipy.ndimage import maximum_filter

    filled = np.where(np.isfinite(values), values, -np.inf)
    core = (slice(halo, values.shape[0] - halo), slice(halo, values.shape[1] - halo))
    # every window holds the 8 queen neighbours (a circle of radius ≥ 2 cells does, and a 1-cell one
    # is made queen), so only cells that are the maximum of their 3×3 can be tops
    peak = (filled >= maximum_filter(filled, size=3, mode="constant", cval=-np.inf)) & np.isfinite(values)
    rows, cols = np.nonzero(peak[core])
    rows, cols = rows + halo, cols + halo
    z = values[rows, cols]
    wanted = ws_intercept + ws_slope * z
    which = np.argmin(np.abs(windows.radii[None, :] - wanted[:, None]), axis=1)
    top = np.ones(len(z), dtype=bool)
    for w in np.unique(which):
        sel = np.flatnonzero(which == w)
        r, c, h = rows[sel], cols[sel], z[sel]
        ok = np.ones(len(sel), dtype=bool)
        for dr, dc in zip(*windows.offsets[w]):
            ok &= ~(filled[r + dr, c + dc] > h)
        top[sel] = ok
    return rows[top] - halo, cols[top] - halo


def vwf_raster(path, ws_intercept: float = 0.5, ws_slope: float = 0.06, min_height: float | None = 2.0,
               block: int = 1024, progress=None, max_win_diameter: int | None = VWF_MAX_WIN_DIAMETER):
    """ForestTools' ``vwf(CHM, winFun, minHeight)`` on a CHM raster file, in blocks.

    Blocks of ``block`` × ``block`` cells are read with a halo of the largest window, so memory is
    bounded by the block size.

    Parameters
    ----------
    path : str or Path
        A north-up CHM raster with square cells.
    ws_intercept : float
        Window radius (m) at height 0.
    ws_slope : float
        Growth of the radius per m of height.
    min_height : float or None
        Cells below it (m) are masked; None or 0 masks none.
    block : int
        Block side (cells).
    progress : Progress, optional
        Progress and cancel.
    max_win_diameter : int or None
        ForestTools' ``maxWinDiameter`` (cells).

    Returns
    -------
    tops : TreeTops
        ``index`` is the flat cell index (row-major), as the tops' order.
    crs : str or None
    warning : str or None
        About tiny windows or a CRS in degrees.

    References
    ----------
    Plowright & Roussel, ForestTools (R package, ``R/vwf.R``); Popescu & Wynne (2004), PE&RS 70(5):589-604.
    """
    import rasterio
    from rasterio.windows import Window

    name = Path(path).name
    try:
        src = rasterio.open(path)
    except Exception as exc:
        raise ForestCarbonError(f"'{name}' is neither a LAS/LAZ file nor a raster GDAL can read ({exc}).") from exc
    with src:
        t = src.transform
        if t.b != 0 or t.d != 0:
            raise ForestCarbonError(f"'{name}' is a rotated raster: warp it to a north-up grid first.")
        res_x, res_y = round(abs(t.a), 5), round(abs(t.e), 5)
        if res_x != res_y:
            raise ForestCarbonError(f"'{name}' does not have square cells ({abs(t.a):g} × {abs(t.e):g}): "
                                    "resample it to square cells (e.g. with Warp) first.")
        if res_x == 0:
            raise ForestCarbonError(f"The map units of '{name}' are too small (cells of {abs(t.a):g}): "
                                    "reproject the CHM to a CRS in metres.")
        nrows, ncols = src.height, src.width
        spans = [(r, c, min(block, nrows - r), min(block, ncols - c))
                 for r in range(0, nrows, block) for c in range(0, ncols, block)]

        def read(r, c, h, w, halo=0):
            """Cells r..r+h, c..c+w with ``halo`` more on each side; NaN for nodata and outside the raster."""
            out = np.full((h + 2 * halo, w + 2 * halo), np.nan)
            r0, c0 = max(r - halo, 0), max(c - halo, 0)
            r1, c1 = min(r + h + halo, nrows), min(c + w + halo, ncols)
            data = src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0), masked=True)
            out[r0 - (r - halo):r1 - (r - halo), c0 - (c - halo):c1 - (c - halo)] = \
                data.astype(np.float64).filled(np.nan)
            return out

        lo, hi = np.inf, -np.inf
        for r, c, h, w in spans:
            v = read(r, c, h, w)
            if np.isfinite(v).any():
                lo, hi = min(lo, np.nanmin(v)), max(hi, np.nanmax(v))
        if not np.isfinite(hi):
            raise ForestCarbonError(f"'{name}' holds no valid CHM value (every cell is nodata).")
        if min_height is not None and min_height > 0:
            if min_height >= hi:
                raise ForestCarbonError(
                    f"MIN_HEIGHT ({min_height:g} m) is at or above the highest cell of '{name}' ({hi:g} m): "
                    "no tree top can be found. Lower MIN_HEIGHT.")
            lo = max(lo, min_height)
        else:
            min_height = None
        windows = vwf_windows(lo, hi, res_x, ws_intercept, ws_slope, max_win_diameter)
        rows, cols, zs = [], [], []
        for k, (r, c, h, w) in enumerate(spans):
            check_cancel(progress)
            v = read(r, c, h, w, windows.half)
            if min_height is not None:
                v[v < min_height] = np.nan
            br, bc = vwf_block(v, windows.half, windows, ws_intercept, ws_slope)
            rows.append(br + r)
            cols.append(bc + c)
            zs.append(v[br + windows.half, bc + windows.half])
            if progress is not None:
                progress.set_progress(100.0 * (k + 1) / len(spans))
        crs = src.crs.to_string() if src.crs else None
        warning = windows.warning
        if src.crs is not None and src.crs.is_geographic:
            warning = ((warning + " ") if warning else "") + (
                f"'{name}' is in degrees: the window radius WS_INTERCEPT + WS_SLOPE × height is taken in degrees "
                "too. Reproject the CHM to a CRS in metres.")
    row, col, z = np.concatenate(rows), np.concatenate(cols), np.concatenate(zs)
    order = np.lexsort((col, row))
    row, col, z = row[order], col[order], z[order]
    x = t.c + (col + 0.5) * t.a
    y = t.f + (row + 0.5) * t.e
    return TreeTops(x, y, z, row.astype(np.int64) * ncols + col), crs, warning
