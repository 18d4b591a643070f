"""Canopy height models from a LAS/LAZ file or a catalog of tiles, as lidR's
``rasterize_canopy(las, res, algorithm)`` with ``p2r()`` or ``pitfree()`` (the kernels are in
:mod:`.chm`).

Catalog rules (as lidR's chunks with buffers): ``p2r`` is a cell maximum, so each tile's
maxima are combined exactly; ``pitfree`` looks at neighbours, so each tile is processed with
the points of the other tiles within a buffer around it, and keeps only the cells that belong
to it. Results near tile edges equal those of a merged file.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from ..errors import ForestCarbonError
from ..outputs import provenance as make_provenance
from ..parallel.tilemap import map_tiles
from ..progress import NullProgress, Progress, check_cancel
from ..raster.grid import Grid
from ..raster.write import write_raster
from .catalog import Catalog, Extent, buffered_points, cell_owner, open_extent, read_tile
from .chm import P2R, PitFree, p2r, pitfree, tin_layer
from .normalize import check_normalize_mode, normalization_report, tile_heights

# a p2r cell is empty when no return falls in it: with first returns spread at random (Poisson,
# d per m²) a cell of side r is empty with probability exp(−d·r²), so ~90 % of cells get one from
# r = sqrt(ln 10 / d) ≈ sqrt(2.3 / d) on
FILLED_SHARE = 0.9
EMPTY_WARN_SHARE = 0.5
FIELDS = ("x", "y", "z", "return_number", "classification")


def canopy_height_model(source, output, res_m: float = 0.5, method: P2R | PitFree = P2R(),
                        normalize: str = "auto", crs: str | None = None, extent: Extent | None = None,
                        max_workers: int = 1, progress: Progress | None = None,
                        parameters: dict | None = None) -> Grid:
    """Write a canopy height model (one float32 band ``canopy_height_m``) of a cloud or catalog.

    Parameters
    ----------
    source : str or Path
        A LAS/LAZ file, a .vpc or a folder of tiles.
    output : str or Path
        The GeoTIFF to write.
    res_m : float
        Cell size (m); the grid is snapped to multiples of it.
    method : P2R or PitFree
        lidR's ``p2r()`` or ``pitfree()`` (Khosravipour et al. 2014, PE&RS 80(9):863-872).
    normalize : {"auto", "always", "never"}
        "auto" subtracts the ground TIN from tiles whose Z look like elevations, "always" from every
        tile, "never" keeps Z.
    crs : str, optional
        The CRS to assume when the files have none.
    extent : Extent, optional
        The area to rasterize; None: the whole cloud.
    max_workers : int
        Tiles processed in parallel worker processes.
    progress : Progress, optional
        Progress, cancel and the log (what was done to Z, empty cells).
    parameters : dict, optional
        The parameters recorded in the output's provenance (default: these arguments).

    Returns
    -------
    Grid
        The grid written.

    References
    ----------
    Roussel et al. (2020) lidR, Remote Sensing of Environment 251:112061.
    """
    progress = progress or NullProgress()
    _check_arguments(res_m, method, normalize)
    full, catalog, bounds = open_extent(source, crs, extent)
    grid = Grid.covering(*bounds, res_m)
    if isinstance(method, P2R):
        chm, infos = p2r_chm(catalog, grid, method.subcircle_m, normalize, max_workers, progress,
                             data_bounds=full.bounds)
    else:
        chm, infos = pitfree_chm(catalog, grid, method, normalize, max_workers, progress)
    normalization_report(infos, normalize, progress)
    if isinstance(method, P2R) and method.subcircle_m == 0:
        empty_cells_check(chm, grid, catalog, infos, res_m, progress)
    if method.fill_empty:
        chm = fill_empty_cells(chm, grid)
    check_cancel(progress)
    record = make_provenance("forestcarbon:canopyheightmodel",
                             parameters or {"res_m": res_m, "method": repr(method), "normalize": normalize},
                             inputs=[t.path for t in catalog.tiles])
    write_raster(output, chm.astype(np.float32), grid.transform, catalog.crs, descriptions=["canopy_height_m"],
                 provenance=record)
    progress.set_progress(100.0)
    return grid


def _check_arguments(res_m: float, method, normalize: str) -> None:
    check_normalize_mode(normalize)
    if not res_m > 0:
        raise ForestCarbonError(f"res_m must be positive (got {res_m} m).")
    if not isinstance(method, (P2R, PitFree)):
        raise ForestCarbonError(f"method must be P2R(...) or PitFree(...) (got {method!r}).")
    if method.subcircle_m < 0:
        raise ForestCarbonError(f"subcircle_m must be zero or positive (got {method.subcircle_m}).")


def p2r_chm(catalog: Catalog, grid: Grid, subcircle_m: float, normalize: str, max_workers: int,
            progress: Progress, share: float = 100.0, data_bounds=None):
    """The p2r CHM of a catalog on ``grid`` (NaN where empty), and each tile's :func:`.tile_heights` info.

    Parameters
    ----------
    catalog : Catalog
        The tiles to rasterize.
    grid : Grid
        The cells.
    subcircle_m : float
        lidR's subcircle (m); 0 keeps the returns.
    normalize : {"auto", "always", "never"}
        What to do to Z, per tile.
    max_workers : int
        Tiles read in parallel worker processes.
    progress : Progress
        Progress (``share`` % of it) and cancel.
    share : float
        The part of the progress bar the tiles take (%).
    data_bounds : tuple, optional
        Points outside these bounds are dropped (the whole catalog's, when it was cut to an extent).

    Returns
    -------
    chm : ndarray
        Highest height per cell (m), shaped like the grid.
    infos : list of dict
        What was done to Z in each tile.
    """
    data_bounds = data_bounds or catalog.bounds
    chm = np.full(grid.shape, np.nan)
    infos = []
    args = [(catalog, i, grid, subcircle_m, data_bounds, normalize) for i in range(len(catalog.tiles))]
    with contextlib.closing(map_tiles(_p2r_task, args, max_workers, progress, share=share)) as parts:
        for r0, r1, c0, c1, part, info in parts:
            chm[r0:r1, c0:c1] = np.fmax(chm[r0:r1, c0:c1], part)
            infos.append(info)
    return chm, infos


def pitfree_chm(catalog: Catalog, grid: Grid, method: PitFree, normalize: str, max_workers: int,
                progress: Progress):
    """The pit-free CHM of a catalog on ``grid``: each tile with a buffer of its neighbours' points.

    Parameters and returns as :func:`p2r_chm`, with ``method`` the pit-free settings.
    """
    chm = np.full(grid.shape, np.nan)
    infos = []
    owner = cell_owner(catalog, grid)
    buffer = max(5.0, 10 * grid.res) + method.subcircle_m
    args = [(catalog, i, grid, method, buffer, normalize) for i in range(len(catalog.tiles))]
    with contextlib.closing(map_tiles(_pitfree_task, args, max_workers, progress)) as parts:
        for i, (r0, r1, c0, c1, part, info) in enumerate(parts):
            mine = owner[r0:r1, c0:c1] == i
            chm[r0:r1, c0:c1][mine] = part[mine]
            infos.append(info)
    return chm, infos


def _window_of(layer: np.ndarray):
    """The bounding window of a layer's finite cells and that part of it (what a worker sends back)."""
    rows = np.flatnonzero(np.isfinite(layer).any(axis=1))
    cols = np.flatnonzero(np.isfinite(layer).any(axis=0))
    if not len(rows):
        return 0, 0, 0, 0, np.empty((0, 0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return r0, r1, c0, c1, layer[r0:r1, c0:c1]


def _p2r_task(catalog, i, grid, subcircle_m, data_bounds, normalize="never"):
    pts = read_tile(catalog.tiles[i].path, FIELDS)
    if subcircle_m == 0:
        keep = grid.holds(pts["x"], pts["y"], data_bounds)
        pts = {k: v[keep] for k, v in pts.items()}
    z, info = tile_heights(catalog, i, pts, normalize)
    return (*_window_of(p2r(pts["x"], pts["y"], z, grid, subcircle_m)), info)


def _pitfree_task(catalog, i, grid, method: PitFree, buffer, normalize="never"):
    pts, mine = buffered_points(catalog, i, buffer, FIELDS)
    z, info = tile_heights(catalog, i, pts, normalize, mine)
    layer = pitfree(pts["x"], pts["y"], z, pts["return_number"] == 1, grid, thresholds=method.thresholds_m,
                    max_edge=method.max_edge_m, subcircle=method.subcircle_m)
    return (*_window_of(layer), info)


def empty_cells_check(chm: np.ndarray, grid: Grid, catalog: Catalog, infos: list, res_m: float,
                      progress: Progress):
    """Warn when most cells inside the tiles are empty, with a resolution from the first-return density.

    Parameters
    ----------
    chm : ndarray
        The p2r CHM (NaN where empty).
    grid : Grid
        Its cells.
    catalog : Catalog
        The tiles (their rectangles are where data is expected).
    infos : list of dict
        :func:`.tile_heights`' info of each tile (its first-return count).
    res_m : float
        The cell size (m), for the message.
    progress : Progress
        Where the warning goes.

    Returns
    -------
    tuple
        (share of empty cells, first returns per m², suggested resolution in m or None).
    """
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
        f"{empty:.0%} of the cells are empty at {res_m:g} m: the cloud has about {density:.2g} first returns "
        f"per m². At a RESOLUTION of about {suggestion:g} m, ~{FILLED_SHARE:.0%} of the cells would get one "
        "where returns are spread evenly (gaps in the data stay empty); or use FILL_EMPTY, SUBCIRCLE, or the "
        "pit-free method.")
    return empty, density, suggestion


def fill_empty_cells(chm: np.ndarray, grid: Grid) -> np.ndarray:
    """Fill empty cells inside the data's convex hull by linear interpolation (lidR's ``na.fill = tin()``).

    Parameters
    ----------
    chm : ndarray
        Heights (m), NaN where empty.
    grid : Grid
        Its cells.

    Returns
    -------
    ndarray
        ``chm`` with the cells inside the hull of the filled ones interpolated.
    """
    valid = np.isfinite(chm)
    if valid.sum() < 3 or valid.all():
        return chm
    cx, cy = grid.centres()
    filled = tin_layer(cx[valid], cy[valid], chm[valid], grid)
    return np.where(valid, chm, filled)
