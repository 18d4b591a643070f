"""Raster jobs on a cluster: row bands, the job folder the workers write them into, and the output assembled.

The workers write each row band of an output as a plain GeoTIFF into a job folder (:func:`job_folder`,
:func:`write_tile`); this machine then assembles them (:func:`assemble_raster`) into the same COG the local path
writes, atomically. Band edges fall on the local path's strip edges (:func:`bands_for`), so that both give the
same bits.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from ..errors import ForestCarbonError
from ..outputs import atomic_output, gdal_tags
from ..raster.cog import cog_writer
from ..raster.write import RasterSpec, to_cog


def row_bands(height: int, unit: int, units_per_band: int) -> list:
    """Row ranges covering a raster, each a whole number of the local path's strips.

    Parameters
    ----------
    height : int
        Rows of the raster.
    unit : int
        Rows of one strip of the local path.
    units_per_band : int
        Strips per band.

    Returns
    -------
    list of tuple
        ``[(row0, row1)]``, each ``unit × units_per_band`` rows (the last shorter), so that band edges fall on
        the local path's strip edges.
    """
    size = max(1, int(unit)) * max(1, int(units_per_band))
    return [(r, min(height, r + size)) for r in range(0, height, size)]


def bands_for(height: int, width: int, unit: int, workers: int, min_units: int = 1,
              max_pixels: float = 16e6, tasks_per_thread: int = 8) -> list:
    """Row bands for a raster job.

    About ``tasks_per_thread`` bands per worker thread (balance, and little lost with a worker), at least
    ``min_units`` strips each, at most ``max_pixels`` pixels each (whichever binds).

    Parameters
    ----------
    height, width : int
        The raster's rows and columns (times its bands when each pixel carries several).
    unit : int
        Rows of one strip of the local path.
    workers : int
        Worker threads of the cluster.
    min_units : int
        Fewest strips per band (2 for patch models with overlap).
    max_pixels : float
        Most pixels per band (memory on a worker).
    tasks_per_thread : int
        Bands wanted per worker thread.

    Returns
    -------
    list of tuple
        ``[(row0, row1)]`` (:func:`row_bands`).
    """
    strips = max(1, math.ceil(height / max(1, unit)))
    per_band = max(min_units, math.ceil(strips / max(1, tasks_per_thread * workers)))
    cap = max(1, int(max_pixels // max(1, unit * width)))
    return row_bands(height, unit, max(1, min(per_band, max(cap, min_units))))


JOB_OWNER = ".forest_carbon_job.json"


def process_start(pid: int) -> float | None:
    """When a process of this machine started.

    Parameters
    ----------
    pid : int
        The process id.

    Returns
    -------
    float or None
        Seconds since the epoch; None: no such process here; -1: alive, start unknown (without psutil).
    """
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except OSError:
            pass
        return -1.0  # alive, start unknown
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess, AccessDenied…
        return None


def clean_stale_job_folders(base) -> list:
    """Remove the job folders whose process (on this machine) is gone: what a killed QGIS left.

    Folders of other machines or of running processes are left alone.

    Parameters
    ----------
    base : str or Path
        The folder that holds job folders (an output's folder, or the shared job folder).

    Returns
    -------
    list of Path
        The folders removed.
    """
    removed = []
    host = socket.gethostname()
    with contextlib.suppress(OSError):
        for folder in Path(base).glob(".*.dask-*"):
            try:
                owner = json.loads((folder / JOB_OWNER).read_text())
                if owner.get("host") != host:
                    continue
                started = process_start(int(owner["pid"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            known = owner.get("started")
            if started is None or (started >= 0 and known is not None and abs(started - float(known)) > 1.0):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


@contextlib.contextmanager
def job_folder(output, job_dir: str = ""):
    """A folder for a job's tiles, removed when the job ends, whatever happens.

    It records this process (host, pid, start time), so that the next job removes the folders of processes
    that were killed before they could (:func:`clean_stale_job_folders`).

    Parameters
    ----------
    output : str or Path
        The job's output: the folder is a hidden one beside it, unless ``job_dir`` is given.
    job_dir : str
        Storage the workers share ("" for beside the output).

    Returns
    -------
    contextmanager
        Yields the folder's Path.
    """
    base = Path(job_dir) if job_dir else Path(output).resolve().parent
    try:
        base.mkdir(parents=True, exist_ok=True)
        clean_stale_job_folders(base)
        folder = Path(tempfile.mkdtemp(prefix=f".{Path(output).stem}.dask-", dir=base))
        try:
            (folder / JOB_OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                        "started": process_start(os.getpid())}))
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    except OSError as exc:
        raise ForestCarbonError(f"Cannot make a job folder in '{base}' ({exc.strerror or exc}): choose a writable "
                                "output folder (or a shared job folder in Cluster settings).") from exc
    try:
        yield folder
    finally:
        for _ in range(20):  # a cancelled tile may still be writing: try again until the folder is gone
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                break
            time.sleep(0.1)


def write_tile(folder, name: str, data, grid, row0: int, nodata=None) -> str:
    """(runs on a worker) Rows ``row0…`` of an output, all bands, as a plain GeoTIFF in the job folder.

    Written to a temporary name and renamed, so a tile that exists is complete. The folder is never created
    here: a job that ended (and removed it) makes late tiles fail instead of leaving files behind.

    Parameters
    ----------
    folder : str or Path
        The job folder (:func:`job_folder`).
    name : str
        The tile's file name, without suffix.
    data : numpy.ndarray
        ``(bands, rows, cols)`` or ``(rows, cols)``.
    grid : Grid
        The output's grid.
    row0 : int
        The output row of the tile's first row.
    nodata : float, optional
        The tile's nodata value.

    Returns
    -------
    str
        The tile's path.
    """
    import rasterio
    from rasterio.windows import Window

    folder = Path(folder)
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    transform = grid.window_transform(Window(0, row0, data.shape[2], data.shape[1]))
    final = folder / f"{name}.tif"
    tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}.part.tif"
    try:
        with rasterio.open(tmp, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                           dtype=data.dtype.name, crs=grid.crs, transform=transform, nodata=nodata,
                           BIGTIFF="IF_SAFER") as dst:
            dst.write(data)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return str(final)


def assemble_raster(grid, tiles, out_path, spec: RasterSpec, folder=None, workers: int | None = None,
                    streamed: bool = False) -> Path:
    """Write an output from the row-band tiles the workers wrote.

    Parameters
    ----------
    grid : Grid
        The output's grid.
    tiles : list of tuple
        ``(row0, row1, path)`` of each row band's GeoTIFF (:func:`write_tile`).
    out_path : str or Path
        The output, written inside :func:`.outputs.atomic_output`: a failed or cancelled job leaves nothing.
    spec : RasterSpec
        Bands, type, nodata, descriptions, units, tags and provenance of the output, and its compression.
    folder : str or Path, optional
        Where the VRT of the tiles is made (the tiles' folder by default).
    workers : int, optional
        Threads GDAL may use to compress.
    streamed : bool
        The tiles' rows go in order through :mod:`..raster.cog` (one float32 band with NaN nodata), as the local
        path of predictraster writes its outputs, so that both make the same file; otherwise a VRT of the tiles
        goes through GDAL's COG driver (tiles, averaged overviews), as the local raster writers do.

    Returns
    -------
    Path
        ``out_path``.
    """
    if streamed:
        return _assemble_streamed(grid, tiles, out_path, spec)
    folder = Path(folder) if folder else Path(tiles[0][2]).parent
    vrt = folder / f"{Path(out_path).stem}.{uuid.uuid4().hex[:6]}.vrt"
    vrt.write_text(_vrt_xml(grid, tiles, spec), encoding="utf-8")
    try:
        with atomic_output(Path(out_path)) as tmp:
            to_cog(vrt, tmp, spec.compress, workers=workers)
    finally:
        with contextlib.suppress(OSError):
            vrt.unlink()
    return Path(out_path)


_GDAL_TYPES = {"float32": "Float32", "float64": "Float64", "uint8": "Byte", "uint16": "UInt16", "int16": "Int16",
               "int32": "Int32", "uint32": "UInt32"}


def _vrt_xml(grid, tiles, spec: RasterSpec) -> str:
    """A GDAL VRT that mosaics the row-band tiles, with the output's band metadata, tags and provenance."""
    from rasterio.crs import CRS

    gdal_type = _GDAL_TYPES[np.dtype(spec.dtype).name]
    t = grid.transform
    lines = [f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">\n',
             f"  <SRS>{escape(CRS.from_user_input(grid.crs).to_wkt())}</SRS>\n",
             f"  <GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>\n",
             _vrt_metadata(gdal_tags(spec.tags, spec.provenance), "  ")]
    for b in range(1, spec.count + 1):
        lines.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{b}">\n')
        lines.extend(_vrt_band_metadata(spec, b))
        for row0, row1, path in tiles:
            rows = row1 - row0
            lines.append(f'    <SimpleSource>\n      <SourceFilename relativeToVRT="0">{escape(str(path))}'
                         f"</SourceFilename>\n      <SourceBand>{b}</SourceBand>\n"
                         f'      <SrcRect xOff="0" yOff="0" xSize="{grid.width}" ySize="{rows}"/>\n'
                         f'      <DstRect xOff="0" yOff="{row0}" xSize="{grid.width}" ySize="{rows}"/>\n'
                         "    </SimpleSource>\n")
        lines.append("  </VRTRasterBand>\n")
    lines.append("</VRTDataset>\n")
    return "".join(lines)


def _vrt_band_metadata(spec: RasterSpec, b: int) -> list:
    """The description, unit, nodata and tags elements of band ``b`` (1-based)."""
    lines = []
    if len(spec.descriptions) >= b and spec.descriptions[b - 1]:
        lines.append(f"    <Description>{escape(str(spec.descriptions[b - 1]))}</Description>\n")
    if len(spec.units) >= b and spec.units[b - 1]:
        lines.append(f"    <UnitType>{escape(str(spec.units[b - 1]))}</UnitType>\n")
    nodata = spec.nodata
    if nodata is not None:
        text = "nan" if isinstance(nodata, float) and math.isnan(nodata) else repr(nodata)
        lines.append(f"    <NoDataValue>{text}</NoDataValue>\n")
    if len(spec.band_tags) >= b and spec.band_tags[b - 1]:
        lines.append(_vrt_metadata({k: str(v) for k, v in spec.band_tags[b - 1].items()}, "    "))
    return lines


def _vrt_metadata(items, indent) -> str:
    if not items:
        return ""
    rows = "".join(f'{indent}  <MDI key="{escape(str(k), {chr(34): "&quot;"})}">{escape(str(v))}</MDI>\n'
                   for k, v in items.items())
    return f"{indent}<Metadata>\n{rows}{indent}</Metadata>\n"


def _assemble_streamed(grid, tiles, out_path, spec: RasterSpec) -> Path:
    import rasterio
    from rasterio.windows import Window

    with cog_writer(grid, out_path, descriptions=list(spec.descriptions) or None, tags=spec.tags,
                    provenance=spec.provenance, compress=spec.compress, units=list(spec.units) or None) as dst:
        for row0, row1, path in sorted(tiles, key=lambda t: t[0]):
            with rasterio.open(path) as src:
                for top in range(0, row1 - row0, 512):  # memory: 512 rows at a time, whatever the band's height
                    rows = min(512, row1 - row0 - top)
                    dst.write(src.read(1, window=Window(0, top, grid.width, rows), out_dtype="float32")[None],
                              window=Window(0, row0 + top, grid.width, rows))
    return Path(out_path)
