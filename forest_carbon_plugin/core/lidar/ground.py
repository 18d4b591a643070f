"""Ground classification for clouds that lack class 2.

* SMRF, the simple morphological filter (Pingel, Clarke & McBride 2013, ISPRS J. Photogramm.
  77:21-30), with PDAL's defaults (cell 1 m, slope 0.15, window 18 m, threshold 0.5 m,
  scalar 1.25): a minimum surface, openings with growing windows that flag cells rising more
  than slope × radius above the previous opening, a provisional terrain interpolated under
  the flagged cells, and points within threshold + scalar × local slope of it are ground.
  The disk openings are built from repeated 3×3 erosions and dilations (an octagon of the
  same radius), which keeps large windows cheap.
* CSF, cloth simulation (Zhang et al. 2016, Remote Sensing 8(6):501), with RCSF/lidR's
  defaults (cloth resolution 0.5 m, rigidness 1, 500 iterations, time step 0.65, class
  threshold 0.5 m): a cloth dropped on the upside-down cloud settles on it under gravity
  and internal springs; points within the threshold of the cloth are ground.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from ..dependencies import require
from ..errors import ForestCarbonError
from ..outputs import atomic_output
from ..parallel.tilemap import map_tiles
from ..progress import NullProgress, Progress
from ..raster.grid import Grid
from .catalog import LasWriter, buffered_points, open_catalog, read_las

_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
_SQUARE = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class SMRF:
    """The simple morphological filter (Pingel et al. 2013) with PDAL's defaults.

    Parameters
    ----------
    cell_m : float
        Cell size (m) of the minimum surface.
    slope : float
        Terrain slope (rise over run) that still counts as ground.
    window_m : float
        Largest opening window (m): the size of the largest object to remove.
    threshold_m : float
        Elevation threshold (m) above the provisional terrain.
    scalar : float
        Threshold added per unit of local slope.
    """

    cell_m: float = 1.0
    slope: float = 0.15
    window_m: float = 18.0
    threshold_m: float = 0.5
    scalar: float = 1.25


@dataclass(frozen=True)
class CSF:
    """Cloth simulation (Zhang et al. 2016) with RCSF's / lidR's defaults.

    Parameters
    ----------
    cloth_resolution_m : float
        Distance (m) between cloth particles.
    rigidness : int
        1 for steep slopes, 2 for terraces and gentle slopes, 3 for flat terrain.
    iterations : int
        Most simulation steps.
    time_step : float
        Simulation time step.
    class_threshold_m : float
        Points within this distance (m) of the cloth are ground.
    """

    cloth_resolution_m: float = 0.5
    rigidness: int = 1
    iterations: int = 500
    time_step: float = 0.65
    class_threshold_m: float = 0.5


def _fill(surface: np.ndarray) -> np.ndarray:
    """Fill NaN cells by linear interpolation of the valid cells, nearest value outside their hull."""
    from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

    valid = np.isfinite(surface)
    if valid.all() or not valid.any():
        return surface
    rows, cols = np.nonzero(valid)
    pts = np.column_stack([rows, cols]).astype(float)
    vals = surface[valid]
    missing = np.nonzero(~valid)
    q = np.column_stack(missing).astype(float)
    out = surface.copy()
    if len(vals) >= 3:
        try:
            filled = LinearNDInterpolator(pts, vals)(q)
        except Exception:  # collinear cells
            filled = np.full(len(q), np.nan)
    else:
        filled = np.full(len(q), np.nan)
    nearest = np.isnan(filled)
    if nearest.any():
        filled[nearest] = NearestNDInterpolator(pts, vals)(q[nearest])
    out[missing] = filled
    return out


def _step(surface, op, k):
    """k alternating 3×3 cross/square passes of a grey erosion or dilation (an octagon of radius k)."""
    for i in range(k):
        surface = op(surface, footprint=_CROSS if i % 2 == 0 else _SQUARE, mode="nearest")
    return surface


#: SMRF's window is the largest object to remove; windows past this only make every tile read its whole catalog.
MAX_WINDOW_M = 1000.0


def smrf_ground(x, y, z, params: SMRF = SMRF()) -> np.ndarray:
    """Ground points by the simple morphological filter.

    Parameters
    ----------
    x, y, z : ndarray
        The points (m).
    params : SMRF
        The filter's settings.

    Returns
    -------
    ndarray of bool
        True for ground points.

    References
    ----------
    Pingel, Clarke & McBride (2013), ISPRS J. Photogramm. Remote Sens. 77:21-30.
    """
    from scipy.ndimage import grey_dilation, grey_erosion, map_coordinates

    x, y, z = (np.asarray(a, dtype=np.float64) for a in (x, y, z))
    if len(z) == 0:
        return np.zeros(0, dtype=bool)
    grid = Grid.covering(x.min(), y.min(), x.max(), y.max(), params.cell_m)
    zmin = np.full(grid.size, np.inf)
    np.minimum.at(zmin, grid.cell_index(x, y), z)
    zmin[np.isinf(zmin)] = np.nan
    surface = _fill(zmin.reshape(grid.shape))
    objects = np.zeros(grid.shape, dtype=bool)
    # past the grid's own size an opening is the grid's minimum everywhere and flags nothing more
    radius_cells = min(max(1, int(np.ceil(params.window_m / params.cell_m))), max(grid.shape) + 1)
    eroded = surface
    previous = surface
    for k in range(1, radius_cells + 1):
        eroded = _step(eroded, grey_erosion, 1)  # erosion by radius k = one more unit erosion
        opened = _step(eroded, grey_dilation, k)
        objects |= (previous - opened) > params.slope * k * params.cell_m
        previous = opened
    provisional = zmin.reshape(grid.shape).copy()
    provisional[objects] = np.nan
    dem = _fill(provisional)
    gy, gx = np.gradient(dem, params.cell_m)
    slope = np.hypot(gx, gy)
    row = (grid.ymax - y) / params.cell_m - 0.5
    col = (x - grid.xmin) / params.cell_m - 0.5
    z_dem = map_coordinates(dem, [row, col], order=1, mode="nearest")
    s = map_coordinates(slope, [row, col], order=1, mode="nearest")
    return np.abs(z - z_dem) <= params.threshold_m + params.scalar * s


def csf_ground(x, y, z, params: CSF = CSF()) -> np.ndarray:
    """Ground points by cloth simulation.

    Parameters
    ----------
    x, y, z : ndarray
        Coordinates and elevations (m) of the returns; the cloth falls on them upside down.
    params : CSF
        Cloth resolution, rigidness, iterations, time step and class threshold.

    Returns
    -------
    ndarray of bool
        Whether each return lies within the class threshold of the settled cloth.

    References
    ----------
    Zhang et al. (2016), Remote Sensing 8(6):501.
    """
    from scipy.ndimage import map_coordinates

    x, y, z = (np.asarray(a, dtype=np.float64) for a in (x, y, z))
    if len(z) == 0:
        return np.zeros(0, dtype=bool)
    res = params.cloth_resolution_m
    grid = Grid.covering(x.min() - res, y.min() - res, x.max() + res, y.max() + res, res)
    inverted = -z
    # the lowest original point (highest inverted) under each cloth node stops the cloth there
    stop = np.full(grid.size, -np.inf)
    np.maximum.at(stop, grid.cell_index(x, y), inverted)
    stop[np.isinf(stop)] = np.nan
    stop = _fill(stop.reshape(grid.shape))
    height = np.full(grid.shape, inverted.max() + 2.0)
    previous = height.copy()
    movable = np.ones(grid.shape, dtype=bool)
    gravity = 0.2 * params.time_step ** 2  # displacement per step (RCSF's g·dt²/2 with its units)
    damping = 0.01
    for _ in range(params.iterations):
        step = (height - previous) * (1 - damping) - gravity
        previous = height
        height = np.where(movable, height + step, height)
        landed = movable & (height <= stop)
        height[landed] = stop[landed]
        movable &= ~landed
        # springs between neighbours, as many passes as the rigidness (1 to 3)
        for _ in range(params.rigidness):
            padded = np.pad(height, 1, mode="edge")
            mean4 = (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]) / 4
            height = np.where(movable, height + 0.5 * (mean4 - height), height)
        if not movable.any() or np.abs(height - previous).max() < 0.005:
            break
    row = (grid.ymax - y) / res - 0.5
    col = (x - grid.xmin) / res - 0.5
    cloth = map_coordinates(height, [row, col], order=1, mode="nearest")
    return np.abs(inverted - cloth) <= params.class_threshold_m


def _ground_task(catalog, i, buffer, method):
    """Ground flags of tile ``i``'s own points, filtered with its neighbours' points around it."""
    pts, mine = buffered_points(catalog, i, buffer, ("x", "y", "z", "return_number", "number_of_returns"))
    ground = smrf_ground(pts["x"], pts["y"], pts["z"], method) if isinstance(method, SMRF) \
        else csf_ground(pts["x"], pts["y"], pts["z"], method)
    last = pts["return_number"] >= pts["number_of_returns"]
    return (ground & last)[mine]


def check_ground_method(method: SMRF | CSF) -> None:
    """Refuse settings SMRF or CSF cannot run with, naming the field."""
    if not isinstance(method, (SMRF, CSF)):
        raise ForestCarbonError(f"method must be SMRF(...) or CSF(...) (got {method!r}).")
    numbers = {k: v for k, v in method.__dict__.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    bad = ", ".join(f"{k} = {v:g}" for k, v in numbers.items() if v <= 0)
    if bad:
        raise ForestCarbonError(f"Every {type(method).__name__} parameter must be positive ({bad}): give values "
                                f"above 0 (the defaults are {type(method)()}).")
    if isinstance(method, SMRF) and method.window_m > MAX_WINDOW_M:
        raise ForestCarbonError(
            f"window_m {method.window_m:g} m is larger than any object SMRF must remove (the window is the size of "
            f"the largest building or tree crown; 18 m by default, rarely above 50 m): give at most {MAX_WINDOW_M:g} m.")
    if isinstance(method, CSF) and method.rigidness not in (1, 2, 3):
        raise ForestCarbonError(f"rigidness must be 1, 2 or 3 (got {method.rigidness:g}): 1 for steep slopes, 2 for "
                                "terraces and gentle slopes, 3 for flat terrain, as in CSF.")


def classify_ground(source, output, method: SMRF | CSF = SMRF(), crs: str | None = None, max_workers: int = 1,
                    progress: Progress | None = None) -> dict:
    """Write ``output`` (LAS/LAZ) with ground returns in class 2; every other attribute is kept.

    Only last returns can be ground (lidR's ``last_returns = TRUE``). Former class-2 points
    that are not ground become class 1. Tiles of a catalog are filtered with a buffer of
    their neighbours' points (the filter window plus 10 m), so edges match a merged file.

    Parameters
    ----------
    source : str or Path
        A LAS/LAZ file, a .vpc or a folder of tiles.
    output : str or Path
        The LAS/LAZ file to write (the tiles one after the other).
    method : SMRF or CSF
        The filter and its settings.
    crs : str, optional
        The CRS to assume when the files have none.
    max_workers : int
        Tiles filtered in parallel worker processes.
    progress : Progress, optional
        Progress and cancel.

    Returns
    -------
    dict
        ``points`` written, ``ground`` points, ``tiles`` read.

    References
    ----------
    Pingel, Clarke & McBride (2013), ISPRS J. Photogramm. Remote Sens. 77:21-30 (SMRF); Zhang et al.
    (2016), Remote Sensing 8(6):501 (CSF).
    """
    laspy = require("laspy", "lazrs")[0]
    progress = progress or NullProgress()
    check_ground_method(method)
    catalog = open_catalog(source, crs)
    buffer = (method.window_m if isinstance(method, SMRF) else 5.0) + 10.0
    total = ground_total = 0
    args = [(catalog, i, buffer, method) for i in range(len(catalog.tiles))]
    with atomic_output(output) as tmp, LasWriter(laspy, tmp) as writer, \
            contextlib.closing(map_tiles(_ground_task, args, max_workers, progress, share=100.0)) as flags:
        for i, ground in enumerate(flags):
            tile = catalog.tiles[i]
            las = read_las(tile.path)
            cls = np.asarray(las.classification).copy()
            cls[cls == 2] = 1
            cls[ground] = 2
            las.classification = cls
            writer.write(las)
            total += len(cls)
            ground_total += int(ground.sum())
    return {"points": total, "ground": ground_total, "tiles": len(catalog.tiles)}
