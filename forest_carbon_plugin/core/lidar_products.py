"""Canopy height models and tree tops from a LAS/LAZ file or a catalog of tiles.

Catalog rules (as lidR's chunks with buffers): ``p2r`` is a cell maximum, so each tile's
maxima are combined exactly; ``pitfree`` and tree tops look at neighbours, so each tile is
processed with the points of the other tiles within a buffer around it, and keeps only the
cells (or tops) that belong to it. Results near tile edges equal those of a merged file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from .catalog import buffered_points, cell_owner, open_catalog, read_tile, restrict
from .tilemap import map_tiles
from .chm import p2r, pitfree
from .errors import ForestCarbonError
from .grid import Grid
from .outputs import provenance as make_provenance
from .progress import NullProgress, Progress, check_cancel
from .raster import write_raster
from .treetops import TreeTops, local_maxima, raster_local_maxima

NODATA = -9999.0
CHM_METHODS = ("p2r", "pitfree")


def _window_of(layer: np.ndarray):
    """The bounding window of a layer's finite cells and that part of it (what a worker sends back)."""
    rows = np.flatnonzero(np.isfinite(layer).any(axis=1))
    cols = np.flatnonzero(np.isfinite(layer).any(axis=0))
    if not len(rows):
        return 0, 0, 0, 0, np.empty((0, 0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return r0, r1, c0, c1, layer[r0:r1, c0:c1]


def _p2r_task(path, grid, subcircle, data_bounds):
    pts = read_tile(path, ("x", "y", "z"))
    if subcircle == 0:
        keep = grid.holds(pts["x"], pts["y"], data_bounds)
        pts = {k: v[keep] for k, v in pts.items()}
    return _window_of(p2r(pts["x"], pts["y"], pts["z"], grid, subcircle))


def _pitfree_task(catalog, i, grid, subcircle, buffer):
    pts, _ = buffered_points(catalog, i, buffer, ("x", "y", "z", "return_number"))
    return _window_of(pitfree(pts["x"], pts["y"], pts["z"], pts["return_number"] == 1, grid, subcircle=subcircle))


def canopy_height_model(source, output, res: float = 0.5, method: str = "p2r", subcircle: float = 0.0,
                        fill_empty: bool = False, crs: str | None = None, progress: Progress | None = None,
                        parameters: dict | None = None, extent=None, extent_crs: str | None = None,
                        max_workers: int = 1) -> Grid:
    progress = progress or NullProgress()
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
    if method == "p2r":
        args = [(tile.path, grid, subcircle, full.bounds) for tile in tiles]
        with contextlib.closing(map_tiles(_p2r_task, args, max_workers, progress)) as parts:
            for r0, r1, c0, c1, part in parts:
                chm[r0:r1, c0:c1] = np.fmax(chm[r0:r1, c0:c1], part)
    else:
        owner = cell_owner(catalog, grid)
        buffer = max(5.0, 10 * res) + subcircle
        args = [(catalog, i, grid, subcircle, buffer) for i in range(len(tiles))]
        with contextlib.closing(map_tiles(_pitfree_task, args, max_workers, progress)) as parts:
            for i, (r0, r1, c0, c1, part) in enumerate(parts):
                mine = owner[r0:r1, c0:c1] == i
                chm[r0:r1, c0:c1][mine] = part[mine]
    if fill_empty:
        chm = fill_empty_cells(chm, grid)
    check_cancel(progress)
    record = make_provenance("forestcarbon:canopyheightmodel", parameters or {
        "RESOLUTION": res, "METHOD": method, "SUBCIRCLE": subcircle, "FILL_EMPTY": fill_empty},
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


def _tops_task(catalog, i, buffer, ws_intercept, ws_slope, hmin):
    pts, mine = buffered_points(catalog, i, buffer, ("x", "y", "z"))
    return local_maxima(pts["x"], pts["y"], pts["z"], ws_intercept, ws_slope, hmin, candidates_mask=mine)


def tree_tops(source, ws_intercept: float = 5.0, ws_slope: float = 0.0, hmin: float = 2.0,
              crs: str | None = None, progress: Progress | None = None, max_workers: int = 1):
    """Tree tops from a LAS/LAZ file or catalog, or from a CHM raster (.tif and other GDAL rasters).

    Returns ``(TreeTops, crs string)``.
    """
    progress = progress or NullProgress()
    if ws_intercept <= 0 and ws_slope <= 0:
        raise ForestCarbonError("The window must have a positive size: set WS_INTERCEPT or WS_SLOPE above 0.")
    path = Path(source)
    if path.is_file() and path.suffix.lower() not in (".las", ".laz"):
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
    args = [(catalog, i, buffer, ws_intercept, ws_slope, hmin) for i in range(len(catalog.tiles))]
    parts = list(map_tiles(_tops_task, args, max_workers, progress, share=100.0))
    result = TreeTops(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("x", "y", "z", "index")))
    return result, catalog.crs


def tree_crowns(source, tops: TreeTops, crs: str | None = None, res: float = 0.5, params=None,
                progress: Progress | None = None, max_workers: int = 1):
    """Crown polygons grown from ``tops`` on the CHM (the input raster, or a p2r CHM of the
    cloud at ``res`` with a 0.15 m subcircle, as lidR's examples). Returns a list of
    (top index, polygon, area m², crown diameter m, height m). Progress 0-100 % over the CHM
    (tiles in ``max_workers`` processes), the growth and the polygons."""
    from .crowns import Dalponte, crown_polygons, grow_crowns

    progress = progress or NullProgress()
    path = Path(source)
    if path.is_file() and path.suffix.lower() not in (".las", ".laz"):
        import rasterio

        with rasterio.open(path) as src:
            chm = src.read(1, masked=True).filled(np.nan).astype(np.float64)
            transform = src.transform
        cell = abs(transform.a)
    else:
        catalog = open_catalog(source, crs)
        grid = Grid.covering(*catalog.bounds, res)
        chm = np.full(grid.shape, np.nan)
        args = [(tile.path, grid, 0.15, catalog.bounds) for tile in catalog.tiles]
        with contextlib.closing(map_tiles(_p2r_task, args, max_workers, progress, share=20.0)) as parts:
            for r0, r1, c0, c1, part in parts:
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
