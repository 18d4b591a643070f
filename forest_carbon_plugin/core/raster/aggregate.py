"""Aggregating a fine raster (a 1 m CHM, a 10 m map) onto a coarse grid with exact area weights.

Every fine pixel contributes to a coarse cell in proportion to the area they share: a fine
pixel straddling a coarse edge is split between its cells. Both grids are north-up and in the
same CRS, so the shared area is a product of two 1-D overlaps, ``a(I, J, i, j) = wy(I, i) ·
wx(J, j)`` (in units of the coarse cell's area), and every sum over a cell is two small
matrix products ``Wy · V · Wxᵀ``.

Statistics (``w`` = the area weights of the *valid* fine pixels of one cell, ``v`` their values):

- ``mean`` = Σ w·v / Σ w; ``std`` = √(Σ w·(v − mean)² / Σ w) (area-weighted, population);
- ``sum`` = Σ v · (overlap area / fine pixel area): the total of a per-pixel quantity (Mg per
  pixel, counts) carried over by area;
- ``min``, ``max``: of the valid fine pixels with a positive overlap;
- ``pNN``: the area-weighted inverted-CDF quantile, the smallest value ``v`` whose cumulative
  weight (values ≤ ``v``) reaches NN % of Σ w; with equal weights it is numpy's
  ``percentile(..., method="inverted_cdf")`` (no interpolation: always one of the values);
- ``coverNN``: Σ w·[v > NN] / Σ w, the share of the valid area above NN (``cover2``: canopy
  cover above 2 m);
- the last band ``valid_fraction`` = Σ w: the share of the cell covered by valid fine pixels.

Cells without any valid fine pixel are NaN (the output's nodata) in every statistic band and 0
in ``valid_fraction``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ForestCarbonError
from ..outputs import provenance as make_provenance
from ..progress import Progress
from .grid import Grid, crs_name
from .read import Readers
from .write import RasterSpec, process_blocks

ALGORITHM_ID = "forestcarbon:aggregatetogrid"
SIMPLE_STATISTICS = ("mean", "min", "max", "std", "sum")
_PERCENTILE = re.compile(r"^p(\d+(?:\.\d+)?)$")
_COVER = re.compile(r"^cover(\d+(?:\.\d+)?)$")
#: fine pixels aggregated at once per worker (1 M: ~100 MB of float64 work arrays with percentiles)
FINE_PIXELS_PER_CHUNK = 1_000_000
_EDGE_TOL = 1e-6  # fraction of a fine pixel below which an overlap is rounding noise


def parse_statistics(statistics) -> list[str]:
    """The statistic names of a list, checked.

    Parameters
    ----------
    statistics : str or sequence of str or None
        ``"mean,max,p95,cover2"`` (commas, semicolons or spaces) or a sequence; None for ``["mean"]``.

    Returns
    -------
    list of str
        Lower-case names without duplicates (``valid_fraction``, always written, left out).

    Raises
    ------
    ForestCarbonError
        An unknown statistic or a percentile outside 0–100.
    """
    if statistics is None:
        items = ["mean"]
    elif isinstance(statistics, str):
        items = [s.strip().lower() for s in re.split(r"[,;\s]+", statistics) if s.strip()]
    else:
        items = [str(s).strip().lower() for s in statistics if str(s).strip()]
    if not items:
        items = ["mean"]
    out: list[str] = []
    for name in items:
        m = _PERCENTILE.match(name)
        if name in SIMPLE_STATISTICS:
            pass
        elif m:
            if not 0 <= float(m.group(1)) <= 100:
                raise ForestCarbonError(f"Unknown statistic '{name}': percentiles go from p0 to p100.")
        elif _COVER.match(name):
            pass
        else:
            raise ForestCarbonError(
                f"Unknown statistic '{name}'. Use a comma-separated list of mean, min, max, std, sum, "
                "pNN (area-weighted percentile, 0-100, e.g. p95) and coverNN (share of the area above NN, "
                "e.g. cover2).")
        if name == "valid_fraction":
            continue
        if name not in out:
            out.append(name)
    return out


# -- weights ----------------------------------------------------------------------------------

def overlap_weights(coarse_edges, fine_origin: float, fine_size: float, n_fine: int):
    """1-D overlaps of coarse intervals with the fine pixels ``[0, n_fine)``.

    ``coarse_edges`` (n + 1 increasing positions along the axis, same units as ``fine_origin``
    and ``fine_size``). Returns ``(W, first, last)``: ``W[k, j]`` = length of coarse interval
    ``k`` inside fine pixel ``first + j``, as a fraction of the coarse interval's length, for
    the fine pixels ``first .. last - 1`` that any interval touches.
    """
    u = (np.asarray(coarse_edges, dtype=np.float64) - fine_origin) / fine_size  # in fine pixels
    near = np.round(u)
    u = np.where(np.abs(u - near) < _EDGE_TOL, near, u)
    first = int(max(0, math.floor(u[0])))
    last = int(min(n_fine, math.ceil(u[-1])))
    if last <= first:
        return np.zeros((len(u) - 1, 0)), first, first
    j = np.arange(first, last, dtype=np.float64)
    lo = np.maximum(u[:-1, None], j[None, :])
    hi = np.minimum(u[1:, None], j[None, :] + 1)
    w = np.clip(hi - lo, 0, None)
    w[w < _EDGE_TOL] = 0.0
    w /= (u[1:] - u[:-1])[:, None]
    return w, first, last


def _gather_index(W):
    """Per coarse interval, the fine columns with positive weight: (index (n, k), weight (n, k))."""
    pos = W > 0
    n = W.shape[0]
    if W.shape[1] == 0:
        return np.zeros((n, 1), dtype=np.int64), np.zeros((n, 1))
    any_ = pos.any(axis=1)
    start = np.where(any_, pos.argmax(axis=1), 0)
    stop = np.where(any_, W.shape[1] - pos[:, ::-1].argmax(axis=1), 0)
    k = max(1, int((stop - start).max()))
    idx = start[:, None] + np.arange(k)[None, :]
    inside = idx < stop[:, None]
    idx = np.minimum(idx, W.shape[1] - 1)
    weight = np.where(inside, np.take_along_axis(W, idx, axis=1), 0.0)
    return idx, weight


def aggregate_array(values, valid, wy, wx, statistics: Sequence[str], fine_per_coarse: float = 1.0) -> np.ndarray:
    """The statistics of one chunk: ``values``/``valid`` (rows, cols) fine pixels, ``wy`` (nI, rows)
    and ``wx`` (nJ, cols) the overlap weights (fractions of a coarse cell's side).

    Returns ``(len(statistics) + 1, nI, nJ)`` float64, the last plane ``valid_fraction``.
    ``fine_per_coarse`` = coarse cell area / fine pixel area (for ``sum``).
    """
    valid = np.asarray(valid, dtype=bool)
    v = np.where(valid, np.asarray(values, dtype=np.float64), 0.0)
    m = valid.astype(np.float64)
    nI, nJ = wy.shape[0], wx.shape[0]

    def wsum(a):
        return wy @ a @ wx.T

    sw = wsum(m)
    has = sw > 1e-12
    out = np.full((len(statistics) + 1, nI, nJ), np.nan)
    out[-1] = np.clip(sw, 0.0, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        need_mean = any(s in ("mean", "std") for s in statistics)
        if need_mean:
            shift = float(v[valid].mean()) if valid.any() else 0.0  # limits cancellation in the variance
            d = np.where(valid, v - shift, 0.0)
            s1 = wsum(d)
            mean_d = s1 / sw
        gathered = None
        for k, name in enumerate(statistics):
            if name == "mean":
                res = mean_d + shift
            elif name == "std":
                s2 = wsum(d * d)
                res = np.sqrt(np.clip(s2 / sw - mean_d * mean_d, 0.0, None))
            elif name == "sum":
                res = wsum(v) * fine_per_coarse
            elif name.startswith("cover"):
                res = wsum(((v > float(name[5:])) & valid).astype(np.float64)) / sw
            else:
                if gathered is None:
                    gathered = _gather(values, valid, wy, wx)
                res = _gathered_statistic(name, *gathered)
            out[k] = np.where(has, res, np.nan)
    return out


def _gather(values, valid, wy, wx):
    """The fine pixels of each coarse cell side by side: (n_cells, ky·kx) values and weights."""
    iy, wgy = _gather_index(wy)
    ix, wgx = _gather_index(wx)
    vals = np.asarray(values, dtype=np.float64)[iy[:, None, :, None], ix[None, :, None, :]]
    ok = np.asarray(valid, dtype=bool)[iy[:, None, :, None], ix[None, :, None, :]]
    w = wgy[:, None, :, None] * wgx[None, :, None, :]
    w = np.where(ok, w, 0.0)
    nI, nJ = iy.shape[0], ix.shape[0]
    shape = (nI * nJ, iy.shape[1] * ix.shape[1])
    return vals.reshape(shape), w.reshape(shape), (nI, nJ)


def _gathered_statistic(name, vals, w, shape):
    use = w > 0
    if name == "min":
        res = np.where(use, vals, np.inf).min(axis=1)
    elif name == "max":
        res = np.where(use, vals, -np.inf).max(axis=1)
    else:
        q = float(name[1:]) / 100.0
        keyed = np.where(use, vals, np.inf)
        order = np.argsort(keyed, axis=1, kind="stable")
        sv = np.take_along_axis(keyed, order, axis=1)
        cw = np.cumsum(np.take_along_axis(w, order, axis=1), axis=1)
        total = cw[:, -1:]
        target = q * total - 1e-9 * total
        pos = (cw < target).sum(axis=1)
        pos = np.minimum(pos, sv.shape[1] - 1)
        res = sv[np.arange(sv.shape[0]), pos]
    res = np.where(np.isfinite(res), res, np.nan)
    return res.reshape(shape)


# -- rasters ----------------------------------------------------------------------------------

def _target_grid(src, reference_grid, resolution_m, progress):
    from rasterio.crs import CRS

    t = src.transform
    if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
        raise ForestCarbonError(f"'{src.name}' is not a north-up raster (its transform is rotated or flipped). "
                                "Warp it to a north-up grid first (Raster ▸ Projections ▸ Warp).")
    if reference_grid:
        if resolution_m is not None:
            if progress is not None:
                progress.warning("Both a reference grid and a resolution were given: the reference grid is used.")
        import rasterio

        try:
            with rasterio.open(reference_grid) as ref:
                grid = Grid.of(ref)
        except rasterio.errors.RasterioIOError as exc:
            raise ForestCarbonError(f"Cannot open the reference grid '{reference_grid}' as a raster: {exc}") from exc
        rt = grid.transform
        if rt.b != 0 or rt.d != 0 or rt.a <= 0 or rt.e >= 0:
            raise ForestCarbonError(f"The reference grid '{reference_grid}' is not north-up; use a north-up grid.")
        if (src.crs is None) != (grid.crs is None) or (
                src.crs is not None and CRS.from_user_input(src.crs) != CRS.from_user_input(grid.crs)):
            raise ForestCarbonError(
                f"The input raster ({crs_name(src.crs)}) and the reference grid ({crs_name(grid.crs)}) are in "
                "different coordinate reference systems. Warp the input raster to the reference grid's CRS at its "
                "own resolution first (Raster ▸ Projections ▸ Warp, or gdalwarp -t_srs), then aggregate.")
    elif resolution_m is not None:
        if not float(resolution_m) > 0:
            raise ForestCarbonError(f"The resolution must be greater than 0 (got {resolution_m}).")
        if src.crs is None:
            raise ForestCarbonError(
                f"'{src.name}' has no coordinate reference system, so a resolution in metres has no meaning. "
                "Assign its CRS first (Raster ▸ Projections ▸ Assign Projection), or give a REFERENCE_GRID.")
        if CRS.from_user_input(src.crs).is_geographic:
            raise ForestCarbonError(
                f"'{src.name}' is in a geographic CRS (degrees), so a resolution in metres has no meaning. "
                "Warp it to a projected CRS first, or give a REFERENCE_GRID.")
        grid = Grid.from_bounds(src.crs, src.bounds, float(resolution_m), snap=True)
    else:
        raise ForestCarbonError("Give either a reference grid (a raster whose grid the output takes) or a "
                                "resolution in metres.")
    fb, gb = src.bounds, grid.bounds
    if not (min(fb[2], gb[2]) > max(fb[0], gb[0]) and min(fb[3], gb[3]) > max(fb[1], gb[1])):
        raise ForestCarbonError(
            f"The input raster {tuple(round(b, 3) for b in fb)} and the target grid "
            f"{tuple(round(b, 3) for b in gb)} do not overlap: check that both cover the same area.")
    return grid


def _block_size(ratio_x: float, ratio_y: float) -> int:
    """Output windows whose fine footprint is about 2048² pixels (multiples of 16, 16-512)."""
    side = 2048.0 / max(1.0, math.sqrt(ratio_x * ratio_y))
    return int(min(512, max(16, math.floor(side / 16) * 16)))


def aggregate_to_grid(path, out_path, statistics=("mean",), reference_grid=None, resolution_m=None,
                      progress: Progress | None = None, max_workers: int | None = None,
                      parameters: dict | None = None, block_size: int | None = None) -> Path:
    """Aggregate a fine raster onto a coarser grid with exact area weights.

    Both grids must be north-up and share a CRS (warp the fine raster first otherwise).

    Parameters
    ----------
    path : str or Path
        The fine raster (band 1).
    out_path : str or Path
        The output: a float32 COG with one band per statistic (described by its name) and a last band
        ``valid_fraction`` (the share of each coarse cell covered by valid fine pixels).
    statistics : str or sequence of str
        See :func:`parse_statistics`: mean, min, max, std, sum, pNN (area-weighted percentile), coverNN
        (share of the area above NN).
    reference_grid : str or Path, optional
        A raster whose grid the output takes.
    resolution_m : float, optional
        Without ``reference_grid``: the output cell side, edges snapped to its multiples
        (:meth:`.grid.Grid.from_bounds`).
    progress : Progress, optional
        Progress, messages and cancellation.
    max_workers : int, optional
        Threads.
    parameters : dict, optional
        The caller's parameters, for the provenance record.
    block_size : int, optional
        Output block side in pixels (default: a fine footprint of about 2048² pixels).

    Returns
    -------
    Path
        ``out_path``.
    """
    import rasterio

    stats = parse_statistics(statistics)
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise ForestCarbonError(f"Cannot open '{path}' as a raster: {exc}") from exc
    with src:
        grid = _target_grid(src, reference_grid, resolution_m, progress)
        fine_t, fine_w, fine_h = src.transform, src.width, src.height
        nodata = src.nodata
        src_info = {"crs": crs_name(src.crs), "res": [fine_t.a, -fine_t.e], "size": [fine_w, fine_h]}
    ct = grid.transform
    ratio_x, ratio_y = ct.a / fine_t.a, -ct.e / -fine_t.e
    fine_per_coarse = ratio_x * ratio_y
    if block_size is None:
        block_size = _block_size(ratio_x, ratio_y)
    readers = Readers(grid)
    from rasterio.windows import Window

    def compute_chunk(row0, nrows, col0, ncols):
        xs = ct.c + ct.a * np.arange(col0, col0 + ncols + 1)
        ys = ct.f + ct.e * np.arange(row0, row0 + nrows + 1)  # decreasing
        wx, c0, c1 = overlap_weights(xs, fine_t.c, fine_t.a, fine_w)
        # rows: positions measured downwards from the fine raster's top edge
        wy, r0, r1 = overlap_weights(-ys, -fine_t.f, -fine_t.e, fine_h)
        result = np.full((len(stats) + 1, nrows, ncols), np.nan)
        result[-1] = 0.0
        if c1 <= c0 or r1 <= r0:
            return result
        data = readers.dataset(path).read(1, window=Window(c0, r0, c1 - c0, r1 - r0), masked=True)
        values = np.asarray(data.data)
        valid = ~np.ma.getmaskarray(data)
        if np.issubdtype(values.dtype, np.floating):
            valid &= np.isfinite(values)
            if nodata is not None and not np.isnan(nodata):
                valid &= values != nodata
        return aggregate_array(values, valid, wy, wx, stats, fine_per_coarse)

    def compute(window):
        row0, col0 = int(window.row_off), int(window.col_off)
        nrows, ncols = int(window.height), int(window.width)
        # chunks of at most about FINE_PIXELS_PER_CHUNK fine pixels (whole cells; one cell at least)
        fine_per_cell = max(1.0, (ratio_x + 1) * (ratio_y + 1))
        col_step = max(1, min(ncols, int(FINE_PIXELS_PER_CHUNK // fine_per_cell)))
        row_step = max(1, int(FINE_PIXELS_PER_CHUNK // (fine_per_cell * col_step)))
        out = np.empty((len(stats) + 1, nrows, ncols), dtype=np.float32)
        for r in range(0, nrows, row_step):
            for c in range(0, ncols, col_step):
                nr, nc = min(row_step, nrows - r), min(col_step, ncols - c)
                out[:, r:r + nr, c:c + nc] = compute_chunk(row0 + r, nr, col0 + c, nc)
        return out

    prov = make_provenance(ALGORITHM_ID, parameters or {
        "INPUT": str(path), "REFERENCE_GRID": str(reference_grid) if reference_grid else None,
        "RESOLUTION": resolution_m, "STATISTICS": ",".join(stats)},
        inputs=[p for p in (path, reference_grid) if p],
        source=src_info, weighting="exact pixel-area overlap",
        percentile_definition="area-weighted inverted CDF (smallest value whose cumulative area share >= q)",
        cover_definition="area share of valid pixels with value > NN")
    if progress is not None:
        progress.info(f"Aggregating {fine_w} × {fine_h} pixels of {fine_t.a:g} × {-fine_t.e:g} onto "
                      f"{grid.width} × {grid.height} cells of {ct.a:g} × {-ct.e:g}: {', '.join(stats)}.")
    try:
        spec = RasterSpec(count=len(stats) + 1, descriptions=(*stats, "valid_fraction"), provenance=prov,
                          block_size=block_size)
        process_blocks(grid, compute, out_path, spec, progress=progress, max_workers=max_workers)
    finally:
        readers.close()
    return Path(out_path)


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over non-overlapping ``factor`` × ``factor`` blocks.

    Parameters
    ----------
    array : numpy.ndarray
        (..., rows, cols) with rows and cols multiples of ``factor``.
    factor : int
        Block side in pixels.

    Returns
    -------
    numpy.ndarray
        (..., rows / factor, cols / factor).
    """
    rows, cols = array.shape[-2:]
    shaped = array.reshape(*array.shape[:-2], rows // factor, factor, cols // factor, factor)
    return shaped.mean(axis=(-3, -1))
