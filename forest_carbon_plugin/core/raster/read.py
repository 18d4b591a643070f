"""Reading rasters onto an output grid.

Block functions open their inputs through :class:`Readers`, which keeps one rasterio handle per
thread and file (handles are not thread-safe), and read windows of the *output* grid with
:meth:`Readers.read`, reprojected/resampled through a ``WarpedVRT`` when the source grid differs.
:func:`stack_bands` lines up the bands of several rasters on the first one's grid.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from pathlib import Path

import numpy as np

from ..errors import ForestCarbonError
from .grid import Grid

__all__ = ["Readers", "stack_bands", "overlaps", "same_grid"]


class Readers:
    """Per-thread rasterio handles, reading windows of an output grid from any source.

    Parameters
    ----------
    grid : Grid
        The output grid that windows refer to; sources on another grid are warped onto it.
    direct_io : bool
        Read uncompressed GeoTIFFs with GDAL's ``GTIFF_DIRECT_IO`` (reads that visit each pixel once).
    """

    def __init__(self, grid: Grid, direct_io: bool = False):
        self.grid = grid
        # GDAL's GTIFF_DIRECT_IO for reads that visit each pixel once, in order: uncompressed GeoTIFFs are read
        # straight into the caller's array instead of through the block cache (whose fresh memory is
        # page-faulted in block by block); compressed files read as usual
        self.direct_io = direct_io
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()

    def _open(self, path, resampling, src_nodata):
        import rasterio
        from rasterio.vrt import WarpedVRT

        cache = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = {}
        key = (str(path), resampling, src_nodata)
        if key not in cache:
            with rasterio.Env(GTIFF_DIRECT_IO="YES") if self.direct_io else contextlib.nullcontext():
                src = rasterio.open(path)  # GDAL takes the option when the file is opened
            handles = [src]
            if not same_grid(Grid.of(src), self.grid):
                # float output: averaging integer DNs must not round them back to integers
                options = {"crs": self.grid.crs, "transform": self.grid.transform, "width": self.grid.width,
                           "height": self.grid.height, "resampling": resampling, "dtype": "float32"}
                if src_nodata is not None:
                    options["src_nodata"] = src_nodata
                    options["nodata"] = src_nodata
                if src.crs is None:  # taken to be in the grid's CRS, as same_grid does
                    options["src_crs"] = self.grid.crs
                src = WarpedVRT(src, **options)
                handles.append(src)
            cache[key] = src
            with self._lock:
                self._all.extend(handles)
        return cache[key]

    def read(self, path, window, band: int = 1, resampling=None, src_nodata=None, dtype=None) -> np.ndarray:
        """Band ``band`` of ``path`` over ``window`` of the output grid (a masked array when the
        source has nodata; pixels outside the source are masked too)."""
        from rasterio.enums import Resampling
        from rasterio.errors import NodataShadowWarning

        src = self._open(path, resampling if resampling is not None else Resampling.nearest, src_nodata)
        with warnings.catch_warnings():
            # a warped view carries the source's nodata, which "shadows" its alpha band: intended
            warnings.filterwarnings("ignore", category=NodataShadowWarning)
            return src.read(band, window=window, masked=True, out_dtype=dtype)

    def read_into(self, path, window, bands, out: np.ndarray, resampling=None, src_nodata=None) -> np.ndarray | None:
        """Bands ``bands`` of ``path`` over ``window`` into ``out`` (bands, rows, cols); returns the mask
        (True = no data, any band) or None when every pixel is valid. One GDAL call for all bands of a
        file, no mask computed for a source that has none: on a pixel-interleaved file three
        single-band masked reads cost three times the de-interleaving and a mask per band."""
        from rasterio.enums import MaskFlags, Resampling

        src = self._open(path, resampling if resampling is not None else Resampling.nearest, src_nodata)
        flags = [src.mask_flag_enums[b - 1] for b in bands]
        if all(f in ([MaskFlags.all_valid], [MaskFlags.nodata]) for f in flags):
            src.read(list(bands), window=window, out=out, out_dtype=out.dtype)
            if all(f == [MaskFlags.all_valid] for f in flags):
                return None
            invalid = np.zeros(out.shape[1:], dtype=bool)
            for k, band in enumerate(bands):  # GDAL's nodata mask: equal to the nodata value, NaN for NaN
                nodata = src.nodatavals[band - 1]
                if nodata is not None:
                    invalid |= np.isnan(out[k]) if math.isnan(nodata) else out[k] == np.asarray(nodata, out.dtype)
            return invalid
        invalid = np.zeros(out.shape[1:], dtype=bool)
        for k, band in enumerate(bands):
            values = self.read(path, window, band=band, resampling=resampling, src_nodata=src_nodata,
                               dtype=out.dtype)
            out[k] = np.ma.getdata(values)
            invalid |= np.ma.getmaskarray(values)
        return invalid

    def dataset(self, path):
        """This thread's handle of ``path`` on its own grid (for reads in source pixels)."""
        import rasterio

        cache = getattr(self._local, "native", None)
        if cache is None:
            cache = self._local.native = {}
        key = str(path)
        if key not in cache:
            cache[key] = rasterio.open(path)
            with self._lock:
                self._all.append(cache[key])
        return cache[key]

    def profile(self, path) -> dict:
        import rasterio

        with rasterio.open(path) as src:
            return dict(src.profile)

    def close(self) -> None:
        with self._lock:
            for handle in reversed(self._all):
                try:
                    handle.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
            self._all.clear()


def stack_bands(paths, what: str = "input raster"):
    """The bands of several rasters stacked in order, on the first one's grid.

    Parameters
    ----------
    paths : sequence of str or Path
        The rasters; every band of each is taken, in order.
    what : str
        How messages name the rasters.

    Returns
    -------
    tuple
        ``(grid, sources, names)``: the first raster's :class:`Grid`, ``[(path, band (1-based), nodata)]``
        and each band's description (``""`` where it has none).

    Raises
    ------
    ForestCarbonError
        A raster that cannot be read, a first raster without a CRS, or one that misses the first.
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    sources, names, grid, first = [], [], None, None
    for path in (Path(p) for p in paths):
        try:
            with rasterio.open(path) as src:
                if grid is None:
                    if src.crs is None:
                        raise ForestCarbonError(f"The {what} '{path.name}' has no CRS: georeference it first.")
                    grid, first = Grid.of(src), path
                elif not overlaps(grid, src):
                    raise ForestCarbonError(
                        f"The {what} '{path.name}' does not overlap the first one, '{first.name}': its bands are read "
                        "onto the first one's grid, where they would be no-data everywhere. Give rasters of the same "
                        "area, and check that their CRSs are set correctly.")
                for i in range(1, src.count + 1):
                    sources.append((path, i, src.nodatavals[i - 1]))
                    names.append((src.descriptions[i - 1] or "").strip())
        except RasterioIOError as exc:
            raise ForestCarbonError(f"Cannot read the {what} '{path}': {exc}.") from exc
    return grid, sources, names


def overlaps(grid: Grid, src) -> bool:
    """Whether an open raster covers part of a grid (an area, not just an edge).

    Parameters
    ----------
    grid : Grid
        The grid.
    src : rasterio dataset
        The raster; without a CRS it is taken to be in the grid's CRS.

    Returns
    -------
    bool
        True when they share an area (also when the bounds cannot be projected: the warp decides).
    """
    from rasterio.warp import transform_bounds

    bounds = tuple(src.bounds)
    if src.crs is not None and grid.crs is not None and src.crs != grid.crs:
        try:
            bounds = transform_bounds(src.crs, grid.crs, *bounds, densify_pts=21)
        except Exception:  # noqa: BLE001 - bounds outside the target CRS's area of use: let the warp decide
            return True
    gx0, gy0, gx1, gy1 = grid.bounds
    x0, y0, x1, y1 = min(bounds[0], bounds[2]), min(bounds[1], bounds[3]), max(bounds[0], bounds[2]), \
        max(bounds[1], bounds[3])
    return x0 < gx1 and x1 > gx0 and y0 < gy1 and y1 > gy0


def same_grid(a: Grid, b: Grid) -> bool:
    """Whether two grids are the same pixels (size, transform to 1e-6 pixel, CRS).

    Parameters
    ----------
    a, b : Grid
        The grids; one without a CRS is taken to be in the other's.

    Returns
    -------
    bool
        True when a window of one reads the same pixels from the other without warping.
    """
    from rasterio.crs import CRS

    if (a.width, a.height) != (b.width, b.height):
        return False
    if not all(math.isclose(x, y, rel_tol=0, abs_tol=1e-6 * max(a.res_xy)) for x, y in zip(a.transform, b.transform)):
        return False
    if a.crs is None or b.crs is None:  # a raster without a CRS is taken to be in the other's
        return True
    return CRS.from_user_input(a.crs) == CRS.from_user_input(b.crs)
