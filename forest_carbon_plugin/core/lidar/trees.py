"""Tree tops and crowns from a LAS/LAZ file, a catalog of tiles or a CHM raster, as lidR's
``locate_trees(las, lmf(ws, hmin))`` and ``segment_trees(las, dalponte2016(chm, ttops))``, or
ForestTools' ``vwf`` (the kernels are in :mod:`.treetops` and :mod:`.crowns`).

Catalog rule (as lidR's chunks with buffers): tree tops look at neighbours, so each tile is read
with the points of the other tiles within half the largest window, and keeps only the tops
among its own points. Tops near tile edges are found once, as in a merged file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ForestCarbonError
from ..progress import NullProgress, Progress
from ..parallel.tilemap import map_tiles
from ..raster.grid import Grid
from ..vector import is_raster
from .canopy import FIELDS, p2r_chm
from .catalog import buffered_points, open_catalog
from .crowns import Dalponte, crown_polygons, grow_crowns
from .info import LAS_SUFFIXES
from .normalize import check_normalize_mode, normalization_report, tile_heights
from .treetops import LMF, VWF, TreeTops, local_maxima, raster_local_maxima, vwf_raster
from .vpc import is_vpc

# the highest tree a window is sized for when a catalog tile's buffer is chosen (m)
TALLEST_TREE_M = 80.0
# lidR's examples make the CHM for crowns with p2r(0.15)
CROWN_CHM_SUBCIRCLE_M = 0.15


def tree_tops(source, method: LMF | VWF = LMF(), normalize: str = "auto", crs: str | None = None,
              max_workers: int = 1, progress: Progress | None = None):
    """Tree tops from a LAS/LAZ file or catalog, or from a CHM raster (.tif and other GDAL rasters).

    Parameters
    ----------
    source : str or Path
        A LAS/LAZ file, a .vpc, a folder of tiles, or a CHM raster.
    method : LMF or VWF
        lidR's ``lmf`` (window diameter ``ws_intercept_m + ws_slope × h``) on points or CHM cells
        (Popescu & Wynne 2004), or ForestTools' ``vwf`` (window radius) on a CHM raster.
    normalize : {"auto", "always", "never"}
        Point clouds only: what to do to Z (see :func:`.canopy.canopy_height_model`).
    crs : str, optional
        The CRS when the input has none.
    max_workers : int
        Catalog tiles read in parallel worker processes.
    progress : Progress, optional
        Progress, cancel and the log.

    Returns
    -------
    tops : TreeTops
        x, y (map units), height (m) and index of each top.
    crs : str
        The tops' CRS.

    References
    ----------
    Popescu & Wynne (2004), PE&RS 70(5):589-604; Roussel et al. (2020) lidR, Remote Sensing of
    Environment 251:112061; Plowright & Roussel, ForestTools (R package, function ``vwf``).
    """
    progress = progress or NullProgress()
    _check_arguments(method, normalize)
    path = Path(source)
    if isinstance(method, VWF):
        return _vwf_tops(path, method, crs, progress)
    if is_chm(path):
        return _lmf_tops_on_raster(path, method, crs)
    return _lmf_tops_on_cloud(source, method, normalize, crs, max_workers, progress)


def _check_arguments(method, normalize: str) -> None:
    check_normalize_mode(normalize)
    if not isinstance(method, (LMF, VWF)):
        raise ForestCarbonError(f"method must be LMF(...) or VWF(...) (got {method!r}).")
    if method.ws_intercept_m <= 0 and method.ws_slope <= 0:
        raise ForestCarbonError("The window must have a positive size: ws_intercept_m or ws_slope must be above 0.")


def _vwf_tops(path: Path, method: VWF, crs: str | None, progress: Progress):
    if not is_chm(path):
        raise ForestCarbonError(
            f"VWF (ForestTools' vwf) works on a canopy height model raster, and '{path.name}' is a point cloud: "
            "make a CHM first (forestcarbon:canopyheightmodel) and find the tops on it, or use LMF (lmf).")
    tops, raster_crs, warning = vwf_raster(path, method.ws_intercept_m, method.ws_slope, method.min_height_m,
                                           progress=progress)
    if warning:
        progress.warning(warning)
    return tops, _crs_or_refuse(crs or raster_crs, path)


def _lmf_tops_on_raster(path: Path, method: LMF, crs: str | None):
    chm, transform, raster_crs = read_chm(path)
    tops = raster_local_maxima(chm, transform, method.ws_intercept_m, method.ws_slope, method.hmin_m)
    return tops, _crs_or_refuse(crs or raster_crs, path)


def _crs_or_refuse(crs: str | None, path: Path) -> str:
    if crs is None:
        raise ForestCarbonError(f"'{path.name}' has no CRS: set the CRS parameter.")
    return crs


def is_chm(path: Path) -> bool:
    """Whether ``path`` is a raster (a CHM) rather than a point cloud: a file GDAL opens that is not LAS/LAZ or .vpc."""
    return path.is_file() and path.suffix.lower() not in LAS_SUFFIXES and not is_vpc(path) and is_raster(path)


def read_chm(path):
    """Band 1 of a CHM raster.

    Parameters
    ----------
    path : str or Path
        A raster GDAL reads.

    Returns
    -------
    chm : ndarray
        float64 heights, NaN for nodata.
    transform : affine.Affine
    crs : str or None
        The CRS as rasterio writes it, None when the raster has none.
    """
    import rasterio

    try:
        with rasterio.open(path) as src:
            chm = src.read(1, masked=True).filled(np.nan).astype(np.float64)
            return chm, src.transform, (src.crs.to_string() if src.crs else None)
    except rasterio.errors.RasterioIOError as exc:
        raise ForestCarbonError(
            f"'{Path(path).name}' is neither a LAS/LAZ file nor a raster GDAL can read ({exc}).") from exc


def _lmf_tops_on_cloud(source, method: LMF, normalize: str, crs: str | None, max_workers: int,
                       progress: Progress):
    catalog = open_catalog(source, crs)
    buffer = (method.ws_intercept_m + max(method.ws_slope, 0) * TALLEST_TREE_M) / 2 + 0.01
    args = [(catalog, i, buffer, method, normalize) for i in range(len(catalog.tiles))]
    results = list(map_tiles(_tops_task, args, max_workers, progress, share=100.0))
    normalization_report([info for _, info in results], normalize, progress)
    parts = [tops for tops, _ in results]
    result = TreeTops(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("x", "y", "z", "index")))
    return result, catalog.crs


def _tops_task(catalog, i, buffer, method: LMF, normalize="never"):
    pts, mine = buffered_points(catalog, i, buffer, FIELDS)
    z, info = tile_heights(catalog, i, pts, normalize, mine)
    tops = local_maxima(pts["x"], pts["y"], z, method.ws_intercept_m, method.ws_slope, method.hmin_m,
                        candidates_mask=mine)
    return tops, info


def tree_crowns(source, tops: TreeTops, res_m: float = 0.5, method: Dalponte | None = None,
                normalize: str = "auto", crs: str | None = None, max_workers: int = 1,
                progress: Progress | None = None):
    """Crown polygons grown from ``tops`` on a CHM by Dalponte & Coomes (2016) region growing.

    Parameters
    ----------
    source : str or Path
        A CHM raster, or a cloud/catalog whose p2r CHM (0.15 m subcircle, as lidR's examples) is made at ``res_m``.
    tops : TreeTops
        The seeds, in the CHM's CRS.
    res_m : float
        The cell size (m) of the CHM made from a cloud.
    method : Dalponte, optional
        The growth thresholds; None: lidR's defaults with a 10 m maximum crown diameter.
    normalize : {"auto", "always", "never"}
        Point clouds only: what to do to Z.
    crs : str, optional
        The CRS when the input has none.
    max_workers : int
        Catalog tiles rasterized in parallel worker processes.
    progress : Progress, optional
        0-100 % over the CHM (20 %), the growth and the polygons; cancel.

    Returns
    -------
    list of tuple
        (top index, shapely polygon, area m², crown diameter m, height m) per crown.

    References
    ----------
    Dalponte & Coomes (2016), Methods in Ecology and Evolution 7:1236-1245.
    """
    progress = progress or NullProgress()
    path = Path(source)
    if is_chm(path):
        chm, transform, _ = read_chm(path)
        cell = abs(transform.a)
    else:
        catalog = open_catalog(source, crs)
        grid = Grid.covering(*catalog.bounds, res_m)
        chm, _ = p2r_chm(catalog, grid, CROWN_CHM_SUBCIRCLE_M, normalize, max_workers, progress, share=20.0)
        transform, cell = grid.transform, res_m
    if method is None:
        method = Dalponte(max_cr=max(3, int(round(10 / cell))))  # 10 m maximum crown diameter
    rows = np.floor((transform.f - tops.y) / -transform.e).astype(np.int64)
    cols = np.floor((tops.x - transform.c) / transform.a).astype(np.int64)
    rows = np.clip(rows, 0, chm.shape[0] - 1)
    cols = np.clip(cols, 0, chm.shape[1] - 1)
    labels = grow_crowns(chm, rows, cols, method, progress, share=(20.0, 75.0))
    crowns = crown_polygons(labels, transform, chm, progress, share=(75.0, 100.0))
    progress.set_progress(100.0)
    return crowns
