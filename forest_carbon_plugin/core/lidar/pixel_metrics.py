"""Canopy metrics on a raster grid from a LAS/LAZ file or catalog (lidR's ``pixel_metrics``).

One pass over the tiles, each decoded once. Cells touched by a single tile are finished by
the worker that reads it; cells straddling tile edges wait, as points, until every tile
that touches them has been read, then are finished from all their points. So a catalog
gives exactly the metrics of the same points merged into one file, and memory is bounded
by one tile plus the edge strips. Tiles run in worker processes (``max_workers``).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ForestCarbonError
from ..outputs import provenance as make_provenance
from ..parallel.tilemap import current_executor, map_tiles
from ..progress import NullProgress, Progress, check_cancel
from ..raster.grid import Grid
from ..raster.write import write_raster
from .catalog import Catalog, Extent, open_extent, read_tile
from .metrics import cover_and_density, metric_names, stdmetrics_i, stdmetrics_z
from .normalize import check_normalize_mode, normalized_heights, wants_heights


@dataclass(frozen=True)
class MetricsSettings:
    """What :func:`canopy_metrics` computes.

    Parameters
    ----------
    res_m : float
        Cell size (m); the grid is snapped to multiples of it.
    height_break_m : float
        Height (m) above which returns count for ``cover`` and ``pzabove``.
    min_points : int
        Cells with fewer points are nodata.
    intensity : bool
        Add lidR's ``stdmetrics_i`` bands.
    normalize : {"auto", "always", "never"}
        "auto" subtracts the ground (lidR's ``tin()``) from tiles whose Z are elevations, "always"
        from every tile, "never" uses Z as heights.
    """

    res_m: float = 20.0
    height_break_m: float = 2.0
    min_points: int = 4
    intensity: bool = False
    normalize: str = "auto"

    def check(self) -> None:
        """Refuse settings that cannot make a grid, naming the argument."""
        if not self.res_m > 0:
            raise ForestCarbonError(f"res_m must be positive (got {self.res_m} m).")
        if self.min_points < 1:
            raise ForestCarbonError(f"min_points must be at least 1 (got {self.min_points}).")
        check_normalize_mode(self.normalize)


@dataclass
class MetricsResult:
    path: str
    grid: Grid
    bands: list
    points: int
    cells_with_data: int


def canopy_metrics(source, output, settings: MetricsSettings = MetricsSettings(), crs: str | None = None,
                   extent: Extent | None = None, max_workers: int = 1, progress: Progress | None = None,
                   parameters: dict | None = None) -> MetricsResult:
    """Write one band per metric, as lidR's ``pixel_metrics(las, ~stdmetrics_z(Z), res)``.

    Bands: lidR's ``stdmetrics_z`` in lidR's order, then ``cover``, ``n``, ``point_density``,
    ``pulse_density``, and with ``settings.intensity`` lidR's ``stdmetrics_i``.

    Parameters
    ----------
    source : str or Path
        A LAS/LAZ file, a .vpc or a folder of tiles.
    output : str or Path
        The GeoTIFF to write (float32, one band per metric, named after it).
    settings : MetricsSettings
        Resolution, height break, minimum points, intensity and height normalization.
    crs : str, optional
        The CRS to assume when the files have none.
    extent : Extent, optional
        The area to compute; None: the whole cloud.
    max_workers : int
        Tiles read in parallel worker processes (each decoding on one core).
    progress : Progress, optional
        Progress and cancel.
    parameters : dict, optional
        The parameters recorded in the output's provenance (default: ``settings``).

    Returns
    -------
    MetricsResult
        The path, grid, band names, number of points and of cells with data.

    References
    ----------
    Roussel et al. (2020) lidR, Remote Sensing of Environment 251:112061; McGaughey (2021)
    FUSION/LDV manual (cover).
    """
    progress = progress or NullProgress()
    settings.check()
    full, catalog, bounds = open_extent(source, crs, extent)
    grid = Grid.covering(*bounds, settings.res_m)
    bands = metric_names(settings.intensity)
    values = compute_metrics(catalog, grid, bands, settings.height_break_m, settings.intensity, settings.normalize,
                             max_workers, progress, full.bounds)
    n = values[bands.index("n")]
    sparse = ~(n >= settings.min_points)
    values[:, sparse] = np.nan
    data = values.astype(np.float32).reshape(len(bands), *grid.shape)
    executor = current_executor()
    record = make_provenance("forestcarbon:canopymetrics", parameters or asdict(settings),
                             inputs=[t.path for t in catalog.tiles],
                             **(executor.describe() if executor is not None else {}))
    check_cancel(progress)
    write_raster(output, data, grid.transform, catalog.crs, descriptions=bands,
                 provenance=record)
    return MetricsResult(str(output), grid, bands, int(np.nansum(n)), int((~sparse).sum()))


def compute_metrics(catalog: Catalog, grid: Grid, bands, height_break, intensity, normalize, max_workers,
                    progress, data_bounds=None) -> np.ndarray:
    """The metrics of every cell of ``grid``, one pass over the tiles.

    Parameters
    ----------
    catalog : Catalog
        The tiles to read (each once).
    grid : Grid
        The raster of cells the metrics are computed on.
    bands : list of str
        Metric names, as :func:`.metrics.metric_names` gives them.
    height_break : float
        Height (m) for ``cover`` and ``pzabove``.
    intensity : bool
        Read intensities (for the ``stdmetrics_i`` bands).
    normalize : {"auto", "always", "never"}
        What to do to Z, per tile.
    max_workers : int
        Tiles read in parallel worker processes (or on the current Dask executor).
    progress : Progress
        Progress and cancel.
    data_bounds : tuple, optional
        Points outside these bounds are dropped (the whole catalog's, when it was cut to an extent).

    Returns
    -------
    ndarray
        (bands, cells) float64; NaN where a cell has no point.
    """
    data_bounds = data_bounds or catalog.bounds
    need = np.zeros(grid.shape, dtype=np.int32)
    rects = []
    for tile in catalog.tiles:
        r0, r1 = int(grid.rows([tile.maxy])[0]), int(grid.rows([tile.miny])[0])
        c0, c1 = int(grid.cols([tile.minx])[0]), int(grid.cols([tile.maxx])[0])
        need[r0:r1 + 1, c0:c1 + 1] += 1
        rects.append((r0, r1, c0, c1))
    out = np.full((len(bands), grid.size), np.nan)
    done = np.zeros(grid.size, dtype=np.int32)
    need_flat = need.ravel()
    pending: list = []
    settings = MetricsSettings(res_m=grid.res, height_break_m=height_break, intensity=intensity, normalize=normalize)
    tasks = [(catalog, i, grid, rect, need[rect[0]:rect[1] + 1, rect[2]:rect[3] + 1].copy(), bands, settings,
              data_bounds) for i, rect in enumerate(rects)]

    def collect(i, result):
        exclusive_cells, exclusive_values, border = result
        out[:, exclusive_cells] = exclusive_values
        r0, r1, c0, c1 = rects[i]
        rows, cols = np.mgrid[r0:r1 + 1, c0:c1 + 1]
        done[(rows * grid.ncols + cols).ravel()] += 1
        if border is not None and len(border["cell"]):
            pending.append(border)
        _finish_complete(pending, done, need_flat, out, bands, settings)
        progress.set_progress(100.0 * (i + 1) / len(tasks))

    if current_executor() is None and (max_workers <= 1 or len(tasks) == 1):
        # MAX_WORKERS bounds the cores: one worker decodes single-threaded too
        for i, task in enumerate(tasks):
            check_cancel(progress)
            collect(i, _tile_task(*task, threads=max_workers > 1))
    else:  # worker processes or a Dask cluster: one per core, each decoding single-threaded
        with contextlib.closing(map_tiles(_tile_task, tasks, max_workers, progress, 100.0,
                                          kwargs={"threads": False})) as results:
            for i, result in enumerate(results):
                collect(i, result)
    if pending and any(len(p["cell"]) for p in pending):  # cannot happen: every cell's tiles were read
        raise ForestCarbonError("Internal error: some edge cells were never completed.")
    return out


def _finish_complete(pending, done, need_flat, out, bands, settings: MetricsSettings):
    if not pending:
        return
    merged = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
    complete = done[merged["cell"]] >= need_flat[merged["cell"]]
    pending.clear()
    if (~complete).any():
        pending.append({k: v[~complete] for k, v in merged.items()})
    if complete.any():
        part = {k: v[complete] for k, v in merged.items() if k != "Z"}  # raw Z of different tiles do not compare
        cells, values = _metrics_for(part, bands, settings)
        out[:, cells] = values


def _metrics_for(points, bands, settings: MetricsSettings):
    """Metrics of the cells present in ``points`` → (cell ids, (bands, cells) values)."""
    # compact cell ids without sorting: occupied cells, numbered in order
    present = np.bincount(points["cell"])
    cells = np.flatnonzero(present)
    mapping = np.cumsum(present > 0) - 1
    local = mapping[points["cell"]]
    k = len(cells)
    m = stdmetrics_z(points["z"], local, k, th=settings.height_break_m, z_int=points.get("Z"))
    cell_area_m2 = settings.res_m * settings.res_m
    m.update(cover_and_density(points["z"], points["first"], local, k, cell_area_m2, settings.height_break_m))
    if settings.intensity:
        m.update(stdmetrics_i(points["intensity"], points["z"], points["classification"], local, k))
    return cells, np.vstack([m[b] for b in bands])


def _tile_task(catalog, i, grid, rect, need_rect, bands, settings: MetricsSettings, data_bounds,
               threads=True):
    """Read one tile; finish the cells only it touches; return the others' points."""
    path = catalog.tiles[i].path
    intensity = settings.intensity
    fields = ["x", "y", "z", "Z", "return_number", "classification"] + (["intensity"] if intensity else [])
    pts = read_tile(path, fields, threads=threads)
    inside = grid.holds(pts["x"], pts["y"], data_bounds)  # a requested extent can cut the tile
    if not inside.all():
        pts = {k: v[inside] for k, v in pts.items()}
    z = pts["z"]
    raw_z = pts["Z"]
    if wants_heights(settings.normalize, z, pts["classification"]):
        z = normalized_heights(catalog, i, pts)
        raw_z = None  # heights are no longer ordered like the raw Z
    cell = grid.cell_index(pts["x"], pts["y"])
    points = {"cell": cell, "z": z, "first": pts["return_number"] == 1, "classification": pts["classification"]}
    if raw_z is not None:
        points["Z"] = raw_z
    if intensity:
        points["intensity"] = pts["intensity"]
    r0, r1, c0, c1 = rect
    row, col = cell // grid.ncols, cell % grid.ncols
    exclusive = need_rect[row - r0, col - c0] == 1
    ex = {k: v[exclusive] for k, v in points.items()}
    cells, values = _metrics_for(ex, bands, settings) if len(ex["cell"]) \
        else (np.empty(0, np.int64), np.empty((len(bands), 0)))
    border = {k: v[~exclusive] for k, v in points.items() if k != "Z"}
    return cells, values, border
