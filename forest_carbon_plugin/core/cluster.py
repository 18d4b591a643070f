"""Remote jobs on a Dask distributed cluster: connecting, running tile tasks, assembling rasters.

QGIS-free (the plugin's settings dialog and ``processing_provider/execution.py`` sit on top).
Dask schedules, retries and moves data; this module only

* connects (:func:`connect`: a ``tcp://`` or ``tls://`` scheduler, :func:`gateway_cluster`:
  a dask-gateway, :func:`local_cluster`: ``distributed.LocalCluster`` on this machine) with a
  clear :class:`ForestCarbonError` naming the address when that fails;
* runs one task per tile (:func:`run_tiles`, :class:`DaskExecutor`): the same module-level tile
  functions the local path runs, submitted with ``retries``; progress from completed futures,
  cancellation through ``progress.is_canceled()`` (futures cancelled, the job's event set so that
  running tiles stop at their next check), a failed tile fails the job with that tile's error;
* assembles raster outputs that workers wrote as row bands into a job folder
  (:func:`assemble_raster`: a VRT of the bands → GDAL's COG driver inside ``atomic_output``, so a
  failed or cancelled job leaves nothing at the output path).

The executor is found by the core functions through :func:`..tilemap.current_executor`
(``with executor_scope(executor): ...``), so that the algorithms keep one code path.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from .errors import Cancelled, ForestCarbonError
from .progress import NullProgress, Progress

DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES = 3
SCHEMES = ("tcp://", "tls://")


# --------------------------------------------------------------------------- connecting

@dataclass
class ClusterSpec:
    """Where to run: what the settings dialog stores (secrets resolved by the caller).

    ``mode``: "local" (a LocalCluster of ``n_workers`` on this machine), "scheduler" (``address``,
    with TLS files for ``tls://``) or "gateway" (``gateway_url`` with ``gateway_auth``).
    """

    mode: str = "local"
    address: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    gateway_url: str = ""
    gateway_auth: str = ""  # "", "basic", "jupyterhub", "kerberos"
    gateway_user: str = ""
    gateway_secret: str = ""  # password (basic) or API token (jupyterhub)
    gateway_workers: int = 2
    n_workers: int = 0  # local cluster; 0 = one per core
    job_dir: str = ""  # folder the workers and this machine share for output tiles ("" = beside the output)
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    extra: dict = field(default_factory=dict)


def check_address(address: str) -> str:
    """``address`` with its scheme (``tcp://`` when none), or a clear error."""
    address = (address or "").strip()
    if not address:
        raise ForestCarbonError("No Dask scheduler address: give one like tcp://scheduler:8786 or tls://scheduler:8786 "
                                "(SCHEDULER parameter or Cluster settings), or choose the local cluster.")
    if "://" not in address:
        address = "tcp://" + address
    if not address.startswith(SCHEMES):
        raise ForestCarbonError(f"The scheduler address '{address}' is not a Dask address: use tcp://host:port or "
                                "tls://host:port (for a dask-gateway URL, choose the gateway in Cluster settings).")
    host_port = address.split("://", 1)[1]
    if not host_port or host_port.startswith(":"):
        raise ForestCarbonError(f"The scheduler address '{address}' names no host: use e.g. tcp://10.0.0.5:8786.")
    return address


def security(tls_ca: str = "", tls_cert: str = "", tls_key: str = ""):
    """A ``distributed.security.Security`` for a ``tls://`` scheduler (None without files)."""
    if not (tls_ca or tls_cert or tls_key):
        return None
    for label, path in (("CA certificate", tls_ca), ("client certificate", tls_cert), ("client key", tls_key)):
        if not path:
            raise ForestCarbonError(f"TLS needs a CA certificate, a client certificate and its key: the {label} "
                                    "is not set (Cluster settings).")
        if not Path(path).is_file():
            raise ForestCarbonError(f"The TLS {label} '{path}' does not exist: check the path in Cluster settings.")
    from distributed.security import Security

    return Security(tls_ca_file=str(tls_ca), tls_client_cert=str(tls_cert), tls_client_key=str(tls_key),
                    require_encryption=True)


def connect(address: str, security=None, timeout: float = DEFAULT_TIMEOUT):
    """A ``distributed.Client`` of the scheduler at ``address``, or a :class:`ForestCarbonError`
    naming the address within about ``timeout`` seconds."""
    from .dependencies import require

    require("distributed")
    from distributed import Client

    address = check_address(address)
    if address.startswith("tls://") and security is None:
        raise ForestCarbonError(f"The scheduler {address} speaks TLS: set the CA certificate, the client certificate "
                                "and its key in Cluster settings (or use a tcp:// address).")
    if address.startswith("tcp://") and security is not None:
        security = None  # certificates only matter for tls://
    started = time.monotonic()
    try:
        client = Client(address, security=security, timeout=timeout, set_as_default=False,
                        direct_to_workers=False)
    except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, ssl errors, ValueError…
        waited = time.monotonic() - started
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        hint = ("check the address and port, that the scheduler is running and that this machine can reach it "
                "(firewall, VPN)")
        if address.startswith("tls://"):
            hint += "; for TLS check that the CA, certificate and key are the ones the cluster was set up with"
        raise ForestCarbonError(f"Cannot connect to the Dask scheduler at {address} (after {waited:.1f} s: "
                                f"{reason}): {hint}.") from exc
    return client


_LOCAL: dict = {}
_LOCAL_LOCK = threading.Lock()


def local_cluster(n_workers: int = 0):
    """A client of a ``distributed.LocalCluster`` on this machine (one worker process per core by default,
    one thread each), kept for the session and reused by later jobs."""
    from .dependencies import qgis_python_executable, require

    require("distributed")
    n = int(n_workers) if n_workers and n_workers > 0 else max(1, os.cpu_count() or 1)
    with _LOCAL_LOCK:
        entry = _LOCAL.get(n)
        if entry is not None and entry[1].status == "running":
            return entry[1]
        import logging

        from distributed import Client, LocalCluster

        if not Path(sys.executable or "").name.lower().startswith("python"):
            # inside QGIS sys.executable is the QGIS binary: spawn workers with QGIS's Python
            multiprocessing.set_executable(qgis_python_executable())
        try:
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                   silence_logs=logging.ERROR, host="127.0.0.1")
        except Exception as exc:  # noqa: BLE001
            raise ForestCarbonError(f"Could not start a local Dask cluster of {n} workers ({exc}).") from exc
        client = Client(cluster, set_as_default=False)
        _LOCAL[n] = (cluster, client)
        return client


def close_local_clusters() -> None:
    """Stop the session's local clusters (plugin unload, end of tests)."""
    with _LOCAL_LOCK:
        for cluster, client in _LOCAL.values():
            with contextlib.suppress(Exception):
                client.close()
            with contextlib.suppress(Exception):
                cluster.close()
        _LOCAL.clear()


def gateway_cluster(url: str, auth: str = "", user: str = "", secret: str = "", workers: int = 2,
                    timeout: float = 30.0):
    """A client of a new cluster from the dask-gateway at ``url`` (closed when the client closes)."""
    try:
        from dask_gateway import BasicAuth, Gateway, JupyterHubAuth, KerberosAuth
    except ImportError as exc:
        raise ForestCarbonError("A dask-gateway cluster needs the dask-gateway package: pip install dask-gateway "
                                "(into the Python that QGIS runs).") from exc
    authenticator = None
    if auth == "basic":
        authenticator = BasicAuth(user or None, secret or None)
    elif auth == "jupyterhub":
        authenticator = JupyterHubAuth(api_token=secret or None)
    elif auth == "kerberos":
        authenticator = KerberosAuth()
    try:
        gateway = Gateway(url, auth=authenticator)
        cluster = gateway.new_cluster(shutdown_on_close=True)
        cluster.scale(int(workers))
        client = cluster.get_client(set_as_default=False)
    except Exception as exc:  # noqa: BLE001
        raise ForestCarbonError(f"Cannot start a cluster at the dask-gateway {url}: {str(exc)[:300]}. Check the URL "
                                "and the authentication in Cluster settings.") from exc
    client._forest_carbon_gateway_cluster = cluster  # closed with the client
    return client


def open_client(spec: ClusterSpec):
    """``(client, owned)`` for ``spec``; ``owned``: the caller closes the client after the job."""
    if spec.mode == "local":
        return local_cluster(spec.n_workers), False
    if spec.mode == "gateway":
        return gateway_cluster(spec.gateway_url, spec.gateway_auth, spec.gateway_user, spec.gateway_secret,
                               spec.gateway_workers), True
    return connect(spec.address, security(spec.tls_ca, spec.tls_cert, spec.tls_key), spec.timeout), True


def scheduler_address(client) -> str:
    with contextlib.suppress(Exception):
        return str(client.scheduler.address)
    return "?"


# --------------------------------------------------------------------------- running tiles

class TaskProgress:
    """The progress a tile task sees on a worker: cancelled when the job's Dask event is set.

    Checked at most every ``interval`` seconds (one scheduler round trip each), never raising when
    the scheduler cannot be asked (the task then just runs to its end)."""

    def __init__(self, event_name: str, interval: float = 0.5):
        self.event_name = event_name
        self.interval = interval
        self._last = 0.0
        self._cancelled = False

    def __getstate__(self):
        return {"event_name": self.event_name, "interval": self.interval}

    def __setstate__(self, state):
        self.__init__(state["event_name"], state["interval"])

    def is_canceled(self) -> bool:
        if self._cancelled:
            return True
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        try:
            from distributed import Event, get_client

            self._cancelled = Event(self.event_name, client=get_client()).is_set()
        except Exception:  # noqa: BLE001 - outside a worker, or the scheduler went away
            return False
        return self._cancelled

    def set_progress(self, percent: float) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        pass


def run_tiles(client, func, tiles, progress: Progress | None = None, retries: int = DEFAULT_RETRIES,
              share: float = 100.0, offset: float = 0.0, kwargs: dict | None = None, label: str = "tile",
              event_name: str | None = None):
    """Submit ``func(*args, **kwargs)`` for each ``args`` of ``tiles``; yield ``(index, result)`` as tiles
    complete. Progress goes from ``offset`` to ``offset + share`` %. Cancellation (``progress.is_canceled()``)
    cancels every future, sets the job's event and raises :class:`Cancelled`; a failed tile cancels the others
    and raises a :class:`ForestCarbonError` with that tile's error."""
    import queue

    from distributed import Event

    progress = progress or NullProgress()
    tiles = list(tiles)
    total = len(tiles)
    if not total:
        return
    prefix = f"forestcarbon-{getattr(func, '__name__', 'task')}-{uuid.uuid4().hex[:10]}"
    futures = [client.submit(func, *args, **(kwargs or {}), key=f"{prefix}-{i}", retries=retries, pure=False)
               for i, args in enumerate(tiles)]
    index = {f.key: i for i, f in enumerate(futures)}
    pending = set(futures)
    done_count = 0
    completed: queue.Queue = queue.Queue()
    for future in futures:
        future.add_done_callback(completed.put)
    try:
        while pending:
            if progress.is_canceled():
                raise Cancelled()
            try:
                finished = [completed.get(timeout=0.1)]
            except queue.Empty:
                continue
            while True:
                try:
                    finished.append(completed.get_nowait())
                except queue.Empty:
                    break
            finished = [f for f in finished if f in pending]
            for future in sorted(finished, key=lambda f: index[f.key]):
                i = index[future.key]
                pending.discard(future)
                yield i, _result(future, i, total, label)
                done_count += 1
                progress.set_progress(offset + share * done_count / total)
                future.release()
    except BaseException:
        with contextlib.suppress(Exception):
            if event_name:
                Event(event_name, client=client).set()
        with contextlib.suppress(Exception):
            client.cancel(list(pending) + futures, force=True)
        raise


def _result(future, i, total, label):
    from distributed.client import FutureCancelledError

    try:
        return future.result()
    except ForestCarbonError as exc:
        if isinstance(exc, Cancelled):
            raise
        raise ForestCarbonError(f"{label.capitalize()} {i + 1} of {total} failed on the cluster: {exc}") from exc
    except FutureCancelledError as exc:
        raise Cancelled("The job's tasks were cancelled on the cluster; no output was written.") from exc
    except Exception as exc:  # noqa: BLE001 - a worker's error, or KilledWorker
        name = type(exc).__name__
        if name == "KilledWorker":
            raise ForestCarbonError(f"{label.capitalize()} {i + 1} of {total} was lost with its worker too many times "
                                    f"(out of memory on the workers? {exc}).") from exc
        raise ForestCarbonError(f"{label.capitalize()} {i + 1} of {total} failed on the cluster ({name}: "
                                f"{str(exc)[:500]}).") from exc


class DaskExecutor:
    """Runs tile tasks on a Dask cluster: what the core functions use when a job is remote."""

    kind = "dask"

    def __init__(self, client, retries: int = DEFAULT_RETRIES, owned: bool = False, job_dir: str = "",
                 progress: Progress | None = None, tasks_per_thread: int = 8):
        self.client = client
        self.tasks_per_thread = tasks_per_thread  # raster jobs: about this many row bands per worker thread
        self.retries = int(retries)
        self.owned = owned
        self.job_dir = job_dir
        self.progress = progress
        self.address = scheduler_address(client)
        self._event_names: list = []

    # -- what the core asks ----------------------------------------------------------
    @property
    def workers(self) -> int:
        with contextlib.suppress(Exception):
            return max(1, sum(self.client.nthreads().values()))
        return 1

    def describe(self) -> dict:
        return {"execution": "dask", "scheduler": self.address, "worker_threads": self.workers}

    def new_event(self) -> str:
        name = f"forestcarbon-cancel-{uuid.uuid4().hex[:12]}"
        self._event_names.append(name)
        return name

    def map(self, func, args_list, progress: Progress | None = None, share: float = 90.0, kwargs=None):
        """Yield ``func(*args)`` for each ``args``, in order (results are buffered until their turn), so that
        whatever combines them does it in the order of the local path."""
        buffered = {}
        following = 0
        for i, result in run_tiles(self.client, func, args_list, progress, self.retries, share, kwargs=kwargs):
            buffered[i] = result
            while following in buffered:
                yield buffered.pop(following)
                following += 1

    def row_bands(self, func, args_list, progress: Progress | None = None, share: float = 95.0) -> list:
        """``func(*args, progress=…)`` for each row band's ``args``, results in band order. Each task gets a
        :class:`TaskProgress` on a fresh cancel event, so that cancelling the job stops tasks already running."""
        event = self.new_event()
        results = [None] * len(args_list)
        for i, result in run_tiles(self.client, func, args_list, progress, self.retries, share,
                                   kwargs={"progress": TaskProgress(event)}, label="row band", event_name=event):
            results[i] = result
        return results

    def send_file(self, path) -> object:
        """A file the workers may not see (a local model), sent with the job: a future of its bytes,
        which Dask copies to each worker that needs it."""
        data = Path(path).read_bytes()
        # a task holding the bytes rather than scattered data: the scheduler keeps its spec, so a copy lost with a
        # worker is made again (scattered data would be lost for good)
        key = f"forestcarbon-file-{hashlib.sha256(data).hexdigest()[:20]}"
        return self.client.submit(file_bytes, data, key=key, pure=False)

    def check_visible(self, paths) -> None:
        """Fail early, naming the file, when a worker cannot see an input."""
        local = [str(p) for p in paths if not str(p).startswith(("/vsi", "http://", "https://", "s3://", "gs://"))]
        if not local:
            return
        future = self.client.submit(missing_paths, local, pure=False)
        try:
            missing = future.result(timeout=60)
        except Exception as exc:  # noqa: BLE001
            raise ForestCarbonError(f"The cluster at {self.address} could not run a task ({exc}): are workers "
                                    "attached to the scheduler?") from exc
        if missing:
            raise ForestCarbonError(
                f"The workers of {self.address} cannot read {', '.join(missing[:3])}{'…' if len(missing) > 3 else ''}: "
                "put the inputs on storage the workers share (the same path on every machine), or give them as "
                "GDAL /vsi paths or URLs (/vsis3/bucket/key.tif, /vsicurl/https://…).")

    def close(self) -> None:
        if self.owned:
            cluster = getattr(self.client, "_forest_carbon_gateway_cluster", None)
            with contextlib.suppress(Exception):
                self.client.close(timeout=5)
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def file_bytes(data: bytes) -> bytes:
    """(runs on a worker) a file's bytes sent with the job (see :meth:`DaskExecutor.send_file`)."""
    return data


def missing_paths(paths) -> list:
    """(runs on a worker) the paths it cannot see."""
    return [p for p in paths if not os.path.exists(p)]


# --------------------------------------------------------------------------- files sent with a job

def materialize(data: bytes, suffix: str = ".onnx") -> Path:
    """(runs on a worker) a file sent with the job, written once per worker into a cache folder."""
    digest = hashlib.sha256(data).hexdigest()[:24]
    folder = Path(tempfile.gettempdir()) / f"forest_carbon_jobs_{os.getuid() if hasattr(os, 'getuid') else 0}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}{suffix}"
    if not path.exists():
        from .outputs import atomic_output

        with atomic_output(path, "wb") as handle:
            handle.write(data)
    return path


# --------------------------------------------------------------------------- raster jobs

def row_bands(height: int, unit: int, units_per_band: int) -> list:
    """Row ranges ``[(row0, row1)]`` covering ``height`` rows, each ``unit × units_per_band`` rows (the last
    shorter), so that band edges fall on the local path's strip edges."""
    size = max(1, int(unit)) * max(1, int(units_per_band))
    return [(r, min(height, r + size)) for r in range(0, height, size)]


def bands_for(height: int, width: int, unit: int, workers: int, min_units: int = 1,
              max_pixels: float = 16e6, tasks_per_thread: int = 8) -> list:
    """Row bands for a raster job: about ``tasks_per_thread`` per worker thread (balance, and little lost with a
    worker), at least ``min_units`` strips each, at most ``max_pixels`` pixels each (whichever binds)."""
    strips = max(1, math.ceil(height / max(1, unit)))
    per_band = max(min_units, math.ceil(strips / max(1, tasks_per_thread * workers)))
    cap = max(1, int(max_pixels // max(1, unit * width)))
    return row_bands(height, unit, max(1, min(per_band, max(cap, min_units))))


@contextlib.contextmanager
def job_folder(output, job_dir: str = ""):
    """A folder for the job's tiles: ``job_dir`` (storage the workers share) or a hidden folder beside the
    output; removed when the job ends, whatever happens."""
    base = Path(job_dir) if job_dir else Path(output).resolve().parent
    try:
        base.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{Path(output).stem}.dask-", dir=base))
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
    """(runs on a worker) rows ``row0…`` of an output, all bands, as a plain GeoTIFF in the job folder; written
    to a temporary name and renamed, so a tile that exists is complete. The folder is never created here: a job
    that ended (and removed it) makes late tiles fail instead of leaving files behind."""
    import numpy as np
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


def assemble_raster(grid, tiles, out_path, count: int, dtype="float32", nodata=None, descriptions=None,
                    tags=None, provenance=None, band_tags=None, folder=None, workers: int | None = None,
                    streamed: bool = False) -> Path:
    """The output from its row-band tiles ``[(row0, row1, path)]``: a VRT of them (descriptions, nodata, tags and
    provenance in it) → GDAL's COG driver (tiles, averaged overviews, as the local path) inside ``atomic_output``.
    ``streamed``: the tiles' rows go in order through :mod:`.cog` instead (one float32 band with NaN nodata), as the
    local path of predictraster writes its outputs, so that both make the same file."""
    from .blocks import COMPRESS, DEFAULT_BLOCK, _to_cog, default_workers
    from .outputs import atomic_output, gdal_tags

    import numpy as np

    if streamed:
        return _assemble_streamed(grid, tiles, out_path, descriptions, tags, provenance, COMPRESS)

    dtype_name = np.dtype(dtype).name
    gdal_type = {"float32": "Float32", "float64": "Float64", "uint8": "Byte", "uint16": "UInt16", "int16": "Int16",
                 "int32": "Int32", "uint32": "UInt32"}[dtype_name]
    from rasterio.crs import CRS

    wkt = CRS.from_user_input(grid.crs).to_wkt()
    t = grid.transform
    all_tags = gdal_tags(tags, provenance)

    def metadata(items, indent):
        if not items:
            return ""
        rows = "".join(f'{indent}  <MDI key="{escape(str(k), {chr(34): "&quot;"})}">{escape(str(v))}</MDI>\n'
                       for k, v in items.items())
        return f"{indent}<Metadata>\n{rows}{indent}</Metadata>\n"

    lines = [f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">\n',
             f"  <SRS>{escape(wkt)}</SRS>\n",
             f"  <GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>\n",
             metadata(all_tags, "  ")]
    for b in range(1, count + 1):
        lines.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{b}">\n')
        if descriptions and len(descriptions) >= b and descriptions[b - 1]:
            lines.append(f"    <Description>{escape(str(descriptions[b - 1]))}</Description>\n")
        if nodata is not None:
            lines.append(f"    <NoDataValue>{'nan' if isinstance(nodata, float) and math.isnan(nodata) else repr(nodata)}"
                         "</NoDataValue>\n")
        if band_tags and len(band_tags) >= b and band_tags[b - 1]:
            lines.append(metadata({k: str(v) for k, v in band_tags[b - 1].items()}, "    "))
        for row0, row1, path in tiles:
            rows = row1 - row0
            lines.append(f'    <SimpleSource>\n      <SourceFilename relativeToVRT="0">{escape(str(path))}'
                         f"</SourceFilename>\n      <SourceBand>{b}</SourceBand>\n"
                         f'      <SrcRect xOff="0" yOff="0" xSize="{grid.width}" ySize="{rows}"/>\n'
                         f'      <DstRect xOff="0" yOff="{row0}" xSize="{grid.width}" ySize="{rows}"/>\n'
                         "    </SimpleSource>\n")
        lines.append("  </VRTRasterBand>\n")
    lines.append("</VRTDataset>\n")
    folder = Path(folder) if folder else Path(tiles[0][2]).parent
    vrt = folder / f"{Path(out_path).stem}.{uuid.uuid4().hex[:6]}.vrt"
    vrt.write_text("".join(lines), encoding="utf-8")
    try:
        with atomic_output(Path(out_path)) as tmp:
            _to_cog(vrt, tmp, COMPRESS, dtype, DEFAULT_BLOCK, default_workers(workers))
    finally:
        with contextlib.suppress(OSError):
            vrt.unlink()
    return Path(out_path)


def _assemble_streamed(grid, tiles, out_path, descriptions, tags, provenance, compress) -> Path:
    import rasterio
    from rasterio.windows import Window

    from .cog import cog_writer

    with cog_writer(grid, out_path, descriptions=descriptions, tags=tags, provenance=provenance,
                    compress=compress) as dst:
        for row0, row1, path in sorted(tiles, key=lambda t: t[0]):
            with rasterio.open(path) as src:
                for top in range(0, row1 - row0, 512):  # memory: 512 rows at a time, whatever the band's height
                    rows = min(512, row1 - row0 - top)
                    dst.write(src.read(1, window=Window(0, top, grid.width, rows), out_dtype="float32")[None],
                              window=Window(0, row0 + top, grid.width, rows))
    return Path(out_path)


__all__ = ["ClusterSpec", "DaskExecutor", "connect", "local_cluster", "gateway_cluster", "open_client", "security",
           "run_tiles", "assemble_raster", "close_local_clusters"]
