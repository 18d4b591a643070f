"""Canopy height models and tree tops from a LAS/LAZ file or a catalog of tiles.

Catalog rules (as lidR's chunks with buffers): ``p2r`` is a cell maximum, so each tile's
maxima are combined exactly; ``pitfree`` and tree tops look at neighbours, so each tile is
processed with the points of the other tiles within a buffer around it, and keeps only the
cells (or tops) that belong to it. Results near tile edges equal those of a merged file.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np

from .normalize import check_normalize_mode, looks_normalized_z, normalized_heights
from .catalog import buffered_points, cell_owner, open_catalog, read_tile, restrict
from ..parallel.tilemap import map_tiles
from .chm import p2r, pitfree
from ..errors import ForestCarbonError
from ..raster.grid import Grid
from ..outputs import provenance as make_provenance
from ..progress import NullProgress, Progress, check_cancel
from ..raster.write import write_raster
from .treetops import TreeTops, local_maxima, raster_local_maxima, vwf_raster

NODATA = -9999.0
CHM_METHODS = ("p2r", "pitfree")
TREETOP_METHODS = ("lmf", "vwf")
# a p2r cell is empty when no return falls in it: with first returns spread at random (Poisson,
# d per m²) a cell of side r is empty with probability exp(−d·r²), so ~90 % of cells get one from
# r = sqrt(ln 10 / d) ≈ sqrt(2.3 / d) on
FILLED_SHARE = 0.9
EMPTY_WARN_SHARE = 0.5


def _window_of(layer: np.ndarray):
    """The bounding window of a layer's finite cells and that part of it (what a worker sends back)."""
    rows = np.flatnonzero(np.isfinite(layer).any(axis=1))
    cols = np.flatnonzero(np.isfinite(layer).any(axis=0))
    if not len(rows):
        return 0, 0, 0, 0, np.empty((0, 0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return r0, r1, c0, c1, layer[r0:r1, c0:c1]


def _heights(catalog, i, pts, normalize, mine=None):
    """Z of ``pts`` as heights above ground per NORMALIZE, and what was done (for the log).

    The decision of "auto" is canopymetrics' (lasinfo's test on the tile's own points)."""
    own = pts if mine is None else {k: v[mine] for k, v in pts.items()}
    z = pts["z"]
    first = own["return_number"] == 1
    info = {"zmin": float(own["z"].min()) if len(own["z"]) else np.nan,
            "zmax": float(own["z"].max()) if len(own["z"]) else np.nan, "normalized": False, "ground": 0,
            "looks_normalized": None, "first": int(first.sum())}
    if normalize != "always" and len(own["z"]):
        info["looks_normalized"] = looks_normalized_z(own["z"], own["classification"])
    if normalize == "always" or (normalize == "auto" and info["looks_normalized"] is False):
        stats: dict = {}
        try:
            z = normalized_heights(catalog, i, pts, stats=stats)
        except ForestCarbonError as exc:
            why = "NORMALIZE is always" if normalize == "always" else \
                f"its Z look like elevations ({info['zmin']:,.1f}–{info['zmax']:,.1f} m)"
            raise ForestCarbonError(f"Heights above ground are needed ({why}), but: {exc} Or set NORMALIZE "
                                    "(Height normalization) to never to use Z as it is.") from exc
        info.update(normalized=True, ground=stats.get("ground_points", 0))
    return z, info


_FIELDS = ("x", "y", "z", "return_number", "classification")


def _p2r_task(catalog, i, grid, subcircle, data_bounds, normalize="never"):
    pts = read_tile(catalog.tiles[i].path, _FIELDS)
    if subcircle == 0:
        keep = grid.holds(pts["x"], pts["y"], data_bounds)
        pts = {k: v[keep] for k, v in pts.items()}
    z, info = _heights(catalog, i, pts, normalize)
    return (*_window_of(p2r(pts["x"], pts["y"], z, grid, subcircle)), info)


def _pitfree_task(catalog, i, grid, subcircle, buffer, normalize="never"):
    pts, mine = buffered_points(catalog, i, buffer, _FIELDS)
    z, info = _heights(catalog, i, pts, normalize, mine)
    return (*_window_of(pitfree(pts["x"], pts["y"], z, pts["return_number"] == 1, grid, subcircle=subcircle)),
            info)


def normalization_report(infos, normalize: str, progress: Progress) -> None:
    """Say in the log what was done to Z: 'heights were elevations (449–557 m): normalized with …'."""
    done = [f for f in infos if f["normalized"]]
    kept = [f for f in infos if not f["normalized"] and np.isfinite(f["zmin"])]
    tiles = len(infos)

    def span(fs):
        return f"{min(f['zmin'] for f in fs):,.1f}–{max(f['zmax'] for f in fs):,.1f} m"

    if done:
        what = "heights were elevations" if normalize == "auto" else "NORMALIZE is always"
        where = "" if tiles == 1 else f" in {len(done)} of {tiles} tiles (each with its neighbours' ground within 30 m)"
        progress.info(f"{what} (Z {span(done)}): normalized with the ground TIN of "
                      f"{sum(f['ground'] for f in done):,} ground points{where}.")
    if kept:
        if normalize == "never" and any(f["looks_normalized"] is False for f in kept):
            progress.warning(f"NORMALIZE is never and Z looks like elevations (Z {span(kept)}): the output holds "
                             "elevations, not heights. Use NORMALIZE auto, or forestcarbon:normalizeheight first.")
        elif normalize == "never":
            progress.info(f"NORMALIZE is never: Z used as heights (Z {span(kept)}).")
        else:
            progress.info(f"Z already looks like heights above ground (Z {span(kept)}): used as it is"
                          + ("" if tiles == 1 else f" in {len(kept)} of {tiles} tiles") + ".")


def empty_cells_check(chm: np.ndarray, grid: Grid, catalog, infos, res: float, progress: Progress):
    """Warn when most cells inside the tiles are empty, with a resolution from the first-return density.

    Returns (share of empty cells, first returns per m², suggested resolution or None)."""
    cx, cy = grid.centres()
    inside = np.zeros(grid.shape, dtype=bool)
    area = 0.0
    for t in catalog.tiles:
        inside |= (cx >= t.minx) & (cx <= t.maxx) & (cy >= t.miny) & (cy <= t.maxy)
        area += max(min(t.maxx, grid.xmax) - max(t.minx, grid.xmin), 0) * \
            max(min(t.maxy, grid.ymax) - max(t.miny, grid.ymin), 0)
    if not inside.any() or area <= 0:
        return 0.0, float("nan"), None
    empty = float(np.isnan(chm[inside]).mean())
    density = sum(f["first"] for f in infos) / area
    if empty <= EMPTY_WARN_SHARE or density <= 0:
        return empty, density, None
    suggestion = math.ceil(math.sqrt(math.log(1 / (1 - FILLED_SHARE)) / density) * 10) / 10
    progress.warning(
        f"{empty:.0%} of the cells are empty at {res:g} m: the cloud has about {density:.2g} first returns "
        f"per m². At a RESOLUTION of about {suggestion:g} m, ~{FILLED_SHARE:.0%} of the cells would get one "
        "where returns are spread evenly (gaps in the data stay empty); or use FILL_EMPTY, SUBCIRCLE, or the "
        "pit-free method.")
    return empty, density, suggestion


def canopy_height_model(source, output, res: float = 0.5, method: str = "p2r", subcircle: float = 0.0,
                        fill_empty: bool = False, crs: str | None = None, progress: Progress | None = None,
                        parameters: dict | None = None, extent=None, extent_crs: str | None = None,
                        max_workers: int = 1, normalize: str = "auto") -> Grid:
    """``normalize`` as canopymetrics': "auto" subtracts the ground TIN from tiles whose Z look like
    elevations, "always" from every tile, "never" keeps Z."""
    progress = progress or NullProgress()
    check_normalize_mode(normalize)
    if not res > 0:
        raise ForestCarbonError(f"The resolution (RESOLUTION) must be positive (got {res} m).")
    if method not in CHM_METHODS:
        raise ForestCarbonError(f"METHOD must be one of {CHM_METHODS} (got {method!r}).")
    if subcircle < 0:
        raise ForestCarbonError(f"SUBCIRCLE must be zero or positive (got {subcircle}).")
    full = open_catalog(source, crs)
    catalog, bounds = restrict(full, extent, extent_crs)
    grid = Grid.covering(*bounds, res)
    chm = np.full(grid.shape, np.nan)
    tiles = catalog.tiles
    infos = []
    if method == "p2r":
        args = [(catalog, i, grid, subcircle, full.bounds, normalize) for i in range(len(tiles))]
        with contextlib.closing(map_tiles(_p2r_task, args, max_workers, progress)) as parts:
            for r0, r1, c0, c1, part, info in parts:
                chm[r0:r1, c0:c1] = np.fmax(chm[r0:r1, c0:c1], part)
                infos.append(info)
    else:
        owner = cell_owner(catalog, grid)
        buffer = max(5.0, 10 * res) + subcircle
        args = [(catalog, i, grid, subcircle, buffer, normalize) for i in range(len(tiles))]
        with contextlib.closing(map_tiles(_pitfree_task, args, max_workers, progress)) as parts:
            for i, (r0, r1, c0, c1, part, info) in enumerate(parts):
                mine = owner[r0:r1, c0:c1] == i
                chm[r0:r1, c0:c1][mine] = part[mine]
                infos.append(info)
    normalization_report(infos, normalize, progress)
    if method == "p2r" and subcircle == 0:
        empty_cells_check(chm, grid, catalog, infos, res, progress)
    if fill_empty:
        chm = fill_empty_cells(chm, grid)
    check_cancel(progress)
    record = make_provenance("forestcarbon:canopyheightmodel", parameters or {
        "RESOLUTION": res, "METHOD": method, "SUBCIRCLE": subcircle, "FILL_EMPTY": fill_empty,
        "NORMALIZE": normalize},
        inputs=[t.path for t in tiles])
    data = np.where(np.isfinite(chm), chm, NODATA).astype(np.float32)
    write_raster(output, data, grid.transform, catalog.crs, nodata=NODATA, descriptions=["canopy_height_m"],
                 provenance=record)
    progress.set_progress(100.0)
    return grid


def fill_empty_cells(chm: np.ndarray, grid: Grid) -> np.ndarray:
    """Fill empty cells inside the data's convex hull by linear interpolation (lidR's na.fill = tin())."""
    from .chm import tin_layer

    valid = np.isfinite(chm)
    if valid.sum() < 3 or valid.all():
        return chm
    cx, cy = grid.centres()
    filled = tin_layer(cx[valid], cy[valid], chm[valid], grid)
    return np.where(valid, chm, filled)


def _tops_task(catalog, i, buffer, ws_intercept, ws_slope, hmin, normalize="never"):
    pts, mine = buffered_points(catalog, i, buffer, _FIELDS)
    z, info = _heights(catalog, i, pts, normalize, mine)
    return local_maxima(pts["x"], pts["y"], z, ws_intercept, ws_slope, hmin, candidates_mask=mine), info


def _is_raster(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() not in (".las", ".laz")


def tree_tops(source, ws_intercept: float = 5.0, ws_slope: float = 0.0, hmin: float = 2.0,
              crs: str | None = None, progress: Progress | None = None, max_workers: int = 1,
              method: str = "lmf", normalize: str = "auto"):
    """Tree tops from a LAS/LAZ file or catalog, or from a CHM raster (.tif and other GDAL rasters).

    ``method`` "lmf": lidR's ``lmf`` (window diameter ws_intercept + ws_slope·h) on points or CHM
    cells; "vwf": ForestTools' ``vwf`` (window radius ws_intercept + ws_slope·h) on a CHM raster.
    ``normalize`` (points only) as canopy_height_model's. Returns ``(TreeTops, crs string)``.
    """
    progress = progress or NullProgress()
    if method not in TREETOP_METHODS:
        raise ForestCarbonError(f"METHOD must be one of {TREETOP_METHODS} (got {method!r}).")
    check_normalize_mode(normalize)
    if ws_intercept <= 0 and ws_slope <= 0:
        raise ForestCarbonError("The window must have a positive size: set WS_INTERCEPT or WS_SLOPE above 0.")
    path = Path(source)
    if method == "vwf":
        if not _is_raster(path):
            raise ForestCarbonError(
                f"METHOD vwf (ForestTools) works on a canopy height model raster, and '{path.name}' is a point "
                "cloud: make a CHM with forestcarbon:canopyheightmodel and run treetops on it, or use METHOD lmf.")
        tops, raster_crs, warning = vwf_raster(path, ws_intercept, ws_slope, hmin, progress=progress)
        if warning:
            progress.warning(warning)
        out_crs = crs or raster_crs
        if out_crs is None:
            raise ForestCarbonError(f"'{path.name}' has no CRS: set the CRS parameter.")
        return tops, out_crs
    if _is_raster(path):
        import rasterio

        try:
            with rasterio.open(path) as src:
                chm = src.read(1, masked=True).filled(np.nan).astype(np.float64)
                transform, raster_crs = src.transform, src.crs
        except Exception as exc:
            raise ForestCarbonError(f"'{path.name}' is neither a LAS/LAZ file nor a raster GDAL can read ({exc}).") from exc
        out_crs = crs or (raster_crs.to_string() if raster_crs else None)
        if out_crs is None:
            raise ForestCarbonError(f"'{path.name}' has no CRS: set the CRS parameter.")
        return raster_local_maxima(chm, transform, ws_intercept, ws_slope, hmin), out_crs
    catalog = open_catalog(source, crs)
    zmax = 80.0  # window radius bound for the buffer (heights above 80 m do not occur)
    buffer = (ws_intercept + max(ws_slope, 0) * zmax) / 2 + 0.01
    args = [(catalog, i, buffer, ws_intercept, ws_slope, hmin, normalize) for i in range(len(catalog.tiles))]
    results = list(map_tiles(_tops_task, args, max_workers, progress, share=100.0))
    normalization_report([info for _, info in results], normalize, progress)
    parts = [tops for tops, _ in results]
    result = TreeTops(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("x", "y", "z", "index")))
    return result, catalog.crs


def tree_crowns(source, tops: TreeTops, crs: str | None = None, res: float = 0.5, params=None,
                progress: Progress | None = None, max_workers: int = 1, normalize: str = "auto"):
    """Crown polygons grown from ``tops`` on the CHM (the input raster, or a p2r CHM of the
    cloud at ``res`` with a 0.15 m subcircle, as lidR's examples). Returns a list of
    (top index, polygon, area m², crown diameter m, height m). Progress 0-100 % over the CHM
    (tiles in ``max_workers`` processes), the growth and the polygons."""
    from .crowns import Dalponte, crown_polygons, grow_crowns

    progress = progress or NullProgress()
    path = Path(source)
    if _is_raster(path):
        import rasterio

        with rasterio.open(path) as src:
            chm = src.read(1, masked=True).filled(np.nan).astype(np.float64)
            transform = src.transform
        cell = abs(transform.a)
    else:
        catalog = open_catalog(source, crs)
        grid = Grid.covering(*catalog.bounds, res)
        chm = np.full(grid.shape, np.nan)
        args = [(catalog, i, grid, 0.15, catalog.bounds, normalize) for i in range(len(catalog.tiles))]
        with contextlib.closing(map_tiles(_p2r_task, args, max_workers, progress, share=20.0)) as parts:
            for r0, r1, c0, c1, part, _ in parts:
                chm[r0:r1, c0:c1] = np.fmax(chm[r0:r1, c0:c1], part)
        transform = grid.transform
        cell = res
    if params is None:
        params = Dalponte(max_cr=max(3, int(round(10 / cell))))  # 10 m maximum crown diameter
    rows = np.floor((transform.f - tops.y) / -transform.e).astype(np.int64)
    cols = np.floor((tops.x - transform.c) / transform.a).astype(np.int64)
    rows = np.clip(rows, 0, chm.shape[0] - 1)
    cols = np.clip(cols, 0, chm.shape[1] - 1)
    labels = grow_crowns(chm, rows, cols, params, progress, share=(20.0, 75.0))
    crowns = crown_polygons(labels, transform, chm, progress, share=(75.0, 100.0))
    progress.set_progress(100.0)
    return crowns
