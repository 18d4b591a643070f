"""Raster outputs, one convention for all of them.

Every raster the plugin writes is a Cloud-Optimized GeoTIFF (GDAL's COG driver,
https://gdal.org/drivers/raster/cog.html: square tiles, overviews averaged, the layout a reader can
fetch by HTTP range requests), compressed with ZSTD and the predictor (DEFLATE where this GDAL was
built without ZSTD), float32 with NaN as nodata unless the caller asks for another type (the scene
simulator writes sensor DNs as integers with their own nodata). Band descriptions, units, tags and the
provenance record are set by :func:`describe`, the one place that writes them. Files appear atomically
(:func:`..outputs.atomic_output`): a failed or cancelled run leaves nothing at the output path.

:func:`process_blocks` cuts a grid into square windows, computes each in a thread pool (rasterio, GDAL
and numpy release the GIL, so threads use all cores without copying arrays between processes) and writes
them as they finish; memory is bounded by ``block_size² × bands × (workers + queue)``, never by the
raster's size. :func:`write_raster` writes an array already in memory.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ForestCarbonError
from ..outputs import atomic_output, gdal_tags
from ..parallel.pool import default_workers, thread_map
from ..progress import Progress
from .grid import DEFAULT_BLOCK, Grid

__all__ = ["NODATA", "COMPRESS", "RasterSpec", "gdal_compression", "describe", "write_raster",
           "process_blocks", "raster_writer", "to_cog"]

#: The nodata value of every float raster the plugin writes.
NODATA = float("nan")

# ZSTD level 1 with the floating-point predictor: as small as DEFLATE level 1 on float rasters and twice as
# fast to write (6000² float32 COG with overviews on 2 cores: 0.96 s vs 2.16 s, both 131 MiB). GDAL reads it
# since 2.3; every QGIS 3 build we know of has it.
COMPRESS = "zstd"


@dataclass(frozen=True)
class RasterSpec:
    """What a written raster holds and how it is laid out.

    Parameters
    ----------
    count : int
        Number of bands.
    dtype : str
        numpy/GDAL data type of the bands.
    nodata : float or None
        The nodata value (NaN for float rasters; None for none).
    descriptions : sequence of str
        Band descriptions (names), in band order.
    tags : dict or None
        Dataset tags; values are written as strings.
    band_tags : sequence of dict
        Tags of each band, in band order.
    units : sequence of str
        Each band's unit type (GDAL's ``GetUnitType``), e.g. ``"Mg/ha"``.
    provenance : dict or None
        The provenance record (:func:`..outputs.provenance`), stored as JSON in the dataset tags.
    compress : str
        Compression asked for; :func:`gdal_compression` falls back to DEFLATE where GDAL lacks it.
    block_size : int
        Side of the tiles and of the computed blocks, in pixels.
    cog : bool
        Write a COG (False: a tiled GeoTIFF without overviews, for intermediate files).
    """

    count: int = 1
    dtype: str = "float32"
    nodata: float | None = NODATA
    descriptions: tuple = ()
    tags: dict | None = None
    band_tags: tuple = ()
    units: tuple = ()
    provenance: dict | None = None
    compress: str = COMPRESS
    block_size: int = DEFAULT_BLOCK
    cog: bool = True


@functools.lru_cache(maxsize=None)
def gdal_compression(compress: str) -> str:
    """The compression GDAL will write: ``compress`` when this GDAL has the codec, else DEFLATE.

    Parameters
    ----------
    compress : str
        A GeoTIFF compression name (``"zstd"``, ``"deflate"``, ``"lzw"``, ``"none"``).

    Returns
    -------
    str
        ``compress`` in lower case, or ``"deflate"``.
    """
    from rasterio.io import MemoryFile

    compress = compress.lower()
    if compress in ("deflate", "none"):
        return compress
    try:
        with warnings.catch_warnings(), MemoryFile() as memory:
            warnings.simplefilter("ignore")  # a 1-pixel probe without georeferencing
            with memory.open(driver="GTiff", width=1, height=1, count=1, dtype="uint8", compress=compress) as dst:
                dst.write(np.zeros((1, 1, 1), dtype="uint8"))
    except Exception:  # noqa: BLE001 - any failure means the codec is missing
        return "deflate"
    return compress


def describe(dst, spec: RasterSpec) -> None:
    """Write band descriptions, units, dataset and band tags and the provenance record into ``dst``.

    Parameters
    ----------
    dst : rasterio dataset
        Open for writing.
    spec : RasterSpec
        Its ``descriptions``, ``units``, ``tags``, ``provenance`` and ``band_tags``.
    """
    for i, text in enumerate(spec.descriptions or (), start=1):
        dst.set_band_description(i, text)
    if any(spec.units or ()):
        dst.units = tuple(u or "" for u in spec.units)
    all_tags = gdal_tags(spec.tags, spec.provenance)
    if all_tags:
        dst.update_tags(**all_tags)
    for i, btags in enumerate(spec.band_tags or (), start=1):
        if btags:
            dst.update_tags(i, **{k: str(v) for k, v in btags.items()})


def write_raster(path, data, transform, crs, nodata=NODATA, descriptions=None, tags=None, provenance=None,
                 band_tags=None, units=None) -> Path:
    """Write an array held in memory as a COG, atomically.

    Parameters
    ----------
    path : str or Path
        The output file.
    data : numpy.ndarray
        (bands, rows, cols) or (rows, cols); its dtype is the file's.
    transform : affine.Affine
        The grid's affine transform.
    crs : object
        Anything rasterio's ``CRS`` takes.
    nodata : float or None
        NaN (the default) for float data; integer data give their own or None.
    descriptions, tags, provenance, band_tags, units
        As in :class:`RasterSpec`.

    Returns
    -------
    Path
        ``path``.
    """
    array = np.asarray(data)
    if array.ndim == 2:
        array = array[None]
    count, height, width = array.shape
    if nodata is not None and array.dtype.kind != "f" and np.isnan(nodata):
        nodata = None
    spec = RasterSpec(count=count, dtype=array.dtype.name, nodata=nodata, descriptions=tuple(descriptions or ()),
                      tags=tags, band_tags=tuple(band_tags or ()), units=tuple(units or ()), provenance=provenance)
    with raster_writer(Grid(crs, transform, width, height), path, spec, workers=1) as dst:
        dst.write(array)
    return Path(path)


def process_blocks(grid: Grid, compute: Callable, path, spec: RasterSpec, progress: Progress | None = None,
                   max_workers: int | None = None, finish: Callable | None = None) -> Path:
    """Compute every block of ``grid`` and write the result to ``path``, atomically.

    Parameters
    ----------
    grid : Grid
        The output grid.
    compute : callable
        ``compute(window) -> array (count, rows, cols)``; runs in ``max_workers`` threads, and the
        results are written by the calling thread in completion order.
    path : str or Path
        The output file.
    spec : RasterSpec
        Bands, type, metadata and layout of the output.
    progress : Progress, optional
        Progress is reported and cancellation checked between blocks: a cancelled or failed run leaves
        nothing at ``path``.
    max_workers : int, optional
        Threads (:func:`default_workers`).
    finish : callable, optional
        Runs after the last block, before the file is moved into place: an error it raises leaves
        nothing either (e.g. a result that is no-data everywhere).

    Returns
    -------
    Path
        ``path``.
    """
    workers = default_workers(max_workers)
    with raster_writer(grid, path, spec, workers=workers) as dst:
        windows = list(grid.windows(spec.block_size))
        for done, (window, block) in enumerate(thread_map(compute, windows, workers, progress), start=1):
            dst.write(np.asarray(block, dtype=spec.dtype), window=window)
            if progress is not None:
                progress.set_progress(100.0 * done / len(windows))
        if finish is not None:
            finish()
    return Path(path)


def _profile(grid: Grid, spec: RasterSpec) -> dict:
    """rasterio's creation options of the staging GeoTIFF (tiled when the blocks can be tiles)."""
    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": spec.count,
               "dtype": np.dtype(spec.dtype).name, "crs": grid.crs, "transform": grid.transform,
               "nodata": spec.nodata, "BIGTIFF": "IF_SAFER"}
    if grid.width >= 16 and grid.height >= 16 and spec.block_size % 16 == 0:
        profile.update(tiled=True, blockxsize=spec.block_size, blockysize=spec.block_size)
    if not spec.cog:
        profile.update(compress=gdal_compression(spec.compress),
                       predictor=3 if np.dtype(spec.dtype).kind == "f" else 2)
    return profile


@contextlib.contextmanager
def raster_writer(grid: Grid, path, spec: RasterSpec, workers: int | None = None):
    """An open rasterio dataset to write windows into.

    On a clean exit it gets its descriptions and tags (:func:`describe`), becomes a COG (unless
    ``spec.cog`` is False) and is moved to ``path``; on an error nothing is left.

    Parameters
    ----------
    grid : Grid
        The output grid.
    path : str or Path
        The output file.
    spec : RasterSpec
        Bands, type, metadata and layout.
    workers : int, optional
        Threads GDAL may use to compress the COG.

    Yields
    ------
    rasterio dataset
        Open for writing, on ``grid``.
    """
    import rasterio

    profile = _profile(grid, spec)
    with atomic_output(Path(path)) as final_tmp:
        stage = final_tmp.with_name(final_tmp.name + ".stage.tif") if spec.cog else final_tmp
        try:
            try:
                dst = rasterio.open(stage, "w", **profile)
            except rasterio.errors.RasterioIOError as exc:
                raise ForestCarbonError(f"Cannot write '{path}': {exc}. Choose a writable folder.") from exc
            with dst:
                yield dst
                describe(dst, spec)
            if spec.cog:
                to_cog(stage, final_tmp, spec.compress, spec.block_size, default_workers(workers))
        finally:
            if spec.cog and stage.exists():
                stage.unlink()


def to_cog(source, out, compress: str = COMPRESS, block_size: int = DEFAULT_BLOCK, workers: int | None = None) -> None:
    """Copy a raster (a GeoTIFF, a VRT) to a COG with GDAL's COG driver.

    Parameters
    ----------
    source, out : str or Path
        The raster to copy and the COG to write (band descriptions and tags are carried over).
    compress : str
        Compression (:func:`gdal_compression`); level 1 with the predictor.
    block_size : int
        Tile side in pixels (512 when not a multiple of 16).
    workers : int, optional
        Threads GDAL may use to compress (:func:`default_workers`).
    """
    from rasterio.shutil import copy

    compress = gdal_compression(compress)
    options = {"driver": "COG", "compress": compress.upper(), "blocksize": block_size if block_size % 16 == 0 else 512,
               "overview_resampling": "AVERAGE", "num_threads": str(default_workers(workers)), "bigtiff": "IF_SAFER"}
    if compress in ("deflate", "lzw", "zstd"):
        options["predictor"] = "YES"
    if compress in ("deflate", "zstd"):
        options["level"] = 1  # the fastest level: float rasters compress little better at 6, for 1.5× the time
    copy(str(source), str(out), **options)
