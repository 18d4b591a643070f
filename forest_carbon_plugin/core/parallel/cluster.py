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

A cluster is never trusted to be the one the plugin was tested with: the address is probed with Dask's
handshake under a hard deadline (a port that is not a Dask scheduler fails instead of hanging), the
client's, scheduler's and workers' versions of the packages that matter are compared before the first task
(:func:`check_versions`: a mismatch that breaks results or transport is refused, naming the package), tasks
travel as plain data (:func:`plain_call`: an ``Affine`` as its six numbers, a CRS as WKT), and a job without
any worker for ``worker_wait`` seconds fails and cancels its tasks instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import copyreg
import hashlib
import io
import json
import math
import multiprocessing
import os
import pickle
import re
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
import uuid
from collections import ChainMap
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from ..errors import Cancelled, ForestCarbonError
from ..progress import NullProgress, Progress

DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES = 3
# how long a job waits without any worker attached (none there, or all lost) before it fails; FOREST_CARBON_WORKER_WAIT
# (seconds) overrides the settings, for qgis_process and scripts
DEFAULT_WORKER_WAIT = 60.0
WORKER_WAIT_ENV = "FOREST_CARBON_WORKER_WAIT"
SCHEMES = ("tcp://", "tls://")
INSTALL_HINT = ("install this machine's versions on the workers and the scheduler: pip install -c "
                "constraints-worker.txt .[worker] (the constraints file pins them)")


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
    worker_wait: float = DEFAULT_WORKER_WAIT  # seconds a job waits with no worker attached before it fails
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


def _within(seconds: float, func, *args, late=None):
    """``func(*args)`` in a daemon thread, abandoned after ``seconds``: returns ``(done, result, error)``. Dask's
    connection code has steps without a timeout (the handshake read); a thread we may leave behind is the one
    way to give the caller a hard deadline. ``late(result)`` disposes of a result that comes after the deadline."""
    box: dict = {}
    lock = threading.Lock()

    def run():
        try:
            result = func(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            with lock:
                box["error"] = exc
            return
        with lock:
            box["result"] = result
            abandoned = box.get("late", False)
        if abandoned and late is not None:
            with contextlib.suppress(Exception):
                late(result)

    thread = threading.Thread(target=run, name="forest-carbon-connect", daemon=True)
    thread.start()
    thread.join(seconds)
    with lock:
        if thread.is_alive() and "result" not in box and "error" not in box:
            box["late"] = True
            return False, None, None
    thread.join()
    return True, box.get("result"), box.get("error")


def probe_scheduler(address: str, security=None, timeout: float = DEFAULT_TIMEOUT) -> dict:
    """Dask's handshake and an ``identity`` request to ``address`` within ``timeout`` seconds (its own event loop):
    the identity of a scheduler, or a :class:`ForestCarbonError` that says what answered instead."""
    import asyncio

    from distributed.comm import connect as comm_connect

    args = security.get_connection_args("client") if security is not None else {}

    async def ask():
        comm = await comm_connect(address, timeout=timeout, **args)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    def run():
        return asyncio.run(asyncio.wait_for(ask(), timeout))

    started = time.monotonic()
    done, identity, error = _within(timeout + 1.0, run)
    waited = time.monotonic() - started
    where = f"the Dask scheduler at {address}"
    if not done or isinstance(error, asyncio.TimeoutError):
        raise ForestCarbonError(
            f"Cannot connect to {where}: nothing answered Dask's handshake within {timeout:g} s. Is it the scheduler's "
            "port (8786 unless set otherwise; 8787 is its dashboard, not the scheduler) and is the scheduler running? "
            "Check the address, the firewall or VPN, and raise the connection timeout in Cluster settings for a slow "
            "link.") from error
    if error is not None:
        raise _cannot_connect(address, waited, error) from error
    kind = identity.get("type") if isinstance(identity, dict) else None
    if kind != "Scheduler":
        what = f"a Dask {kind.lower()}" if isinstance(kind, str) and kind else "something else"
        raise ForestCarbonError(f"Cannot connect to {where}: it answered as {what}, not as a scheduler. Give the "
                                "scheduler's address (the one `dask scheduler` prints, port 8786 by default).")
    return identity


def connect(address: str, security=None, timeout: float = DEFAULT_TIMEOUT):
    """A ``distributed.Client`` of the scheduler at ``address``, or a :class:`ForestCarbonError`
    naming the address within about ``timeout`` seconds (twice that at most: the probe, then the client)."""
    from ..dependencies import require

    require("distributed")
    from distributed import Client

    address = check_address(address)
    if address.startswith("tls://") and security is None:
        raise ForestCarbonError(f"The scheduler {address} speaks TLS: set the CA certificate, the client certificate "
                                "and its key in Cluster settings (or use a tcp:// address).")
    if address.startswith("tcp://") and security is not None:
        security = None  # certificates only matter for tls://
    timeout = float(timeout) if timeout and timeout > 0 else DEFAULT_TIMEOUT
    probe_scheduler(address, security, timeout)
    started = time.monotonic()
    done, client, error = _within(timeout + 2.0, lambda: Client(address, security=security, timeout=timeout,
                                                                set_as_default=False, direct_to_workers=False),
                                  late=lambda c: c.close(timeout=2))
    if not done:
        raise ForestCarbonError(f"Cannot connect to the Dask scheduler at {address}: it answered the handshake but "
                                f"did not accept the client within {timeout:g} s (overloaded, or another Dask "
                                "version?). Try again, or raise the connection timeout in Cluster settings.")
    if error is not None:
        raise _cannot_connect(address, time.monotonic() - started, error) from error
    return client


def _cannot_connect(address: str, waited: float, error: BaseException) -> ForestCarbonError:
    reason = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
    hint = "check the address and port, that the scheduler is running and that this machine can reach it (firewall, VPN)"
    if address.startswith("tls://"):
        hint += "; for TLS check that the CA, certificate and key are the ones the cluster was set up with"
    return ForestCarbonError(f"Cannot connect to the Dask scheduler at {address} (after {waited:.1f} s: {reason}): "
                             f"{hint}.")


_LOCAL: dict = {}
_LOCAL_LOCK = threading.Lock()


def local_cluster(n_workers: int = 0):
    """A client of a ``distributed.LocalCluster`` on this machine (one worker process per core by default,
    one thread each), kept for the session and reused by later jobs."""
    from ..dependencies import qgis_python_executable, require
    from .pool import main_hidden

    require("distributed")
    n = int(n_workers) if n_workers and n_workers > 0 else max(1, os.cpu_count() or 1)
    with _LOCAL_LOCK:
        entry = _LOCAL.get(n)
        if entry is not None and entry[1].status == "running":
            return entry[1]
        import logging

        from distributed import Client, LocalCluster

        # inside QGIS sys.executable is the QGIS binary or a python3 shim from PATH: spawn QGIS's own Python
        multiprocessing.set_executable(qgis_python_executable())
        try:
            with main_hidden():  # a standalone script without a main guard must not run again in each worker
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


# --------------------------------------------------------------------------- versions

CORE_DISTRIBUTION = "forest-carbon-plugin"
# package → how many leading version numbers must agree (3 exact, 2 major.minor, 1 major, 0 never refused) and why.
# Tasks travel as plain data (see plain_call), so what remains fatal is what changes the wire format, the pickles of
# results (arrays), or the numbers themselves; other differences are reported as warnings.
VERSION_RULES = {
    "dask": (3, "the task graph format changes between releases"),
    "distributed": (3, "client, scheduler and workers speak one protocol per release"),
    "cloudpickle": (2, "tasks and results are pickled with it"),
    "msgpack": (1, "Dask's messages are encoded with it"),
    CORE_DISTRIBUTION: (3, "the workers run the plugin's own tile functions"),
    "numpy": (2, "arrays travel between this machine and the workers, and a numpy release changes results"),
    "rasterio": (2, "workers read and write the tiles with it (and with the GDAL it brings)"),
    "onnxruntime": (1, "it runs the model"),
    "laspy": (1, "it reads the LiDAR tiles"),
    "lazrs": (0, "it decodes LAZ"),
    "affine": (0, "transforms travel as six numbers"),
    "pyproj": (0, "it transforms coordinates"),
    "scipy": (0, "some tile functions use it"),
}
# what the scheduler itself needs: it unpickles the task graph (the plugin's function references) and routes messages
SCHEDULER_PACKAGES = ("dask", "distributed", "cloudpickle", "msgpack", CORE_DISTRIBUTION)
# missing on a worker, these break every job; the others only the jobs that use them
ESSENTIAL = {"dask", "distributed", "cloudpickle", "msgpack", CORE_DISTRIBUTION, "numpy", "rasterio"}


def local_versions() -> dict:
    """This machine's versions of the packages of :data:`VERSION_RULES` (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in VERSION_RULES:
        if name == CORE_DISTRIBUTION:  # inside QGIS the plugin is not an installed distribution
            from ... import __version__

            found[name] = __version__
            continue
        try:
            found[name] = version(name)
        except (PackageNotFoundError, ValueError):
            found[name] = None
    found["python"] = ".".join(map(str, sys.version_info[:3]))
    return found


def _numbers(text) -> tuple:
    return tuple(int(n) for n in re.findall(r"\d+", str(text).split("+")[0])[:3])


def compare_versions(client_versions: dict, remote: dict, where: str, names) -> tuple[list, list]:
    """``(fatal, warnings)``: one message for each package of ``names`` whose version ``where`` ("on the scheduler at
    …", "on the workers") differs from this machine's, as :data:`VERSION_RULES` says."""
    fatal, warnings = [], []
    for name in names:
        mine, theirs = client_versions.get(name), remote.get(name)
        if mine is None or mine == theirs:
            continue
        level, why = VERSION_RULES.get(name, (0, ""))
        if theirs is None:
            if name in ESSENTIAL:
                fatal.append(f"{name} is missing {where} ({mine} here)")
            else:
                warnings.append(f"{name} is missing {where} ({mine} here): jobs that need it will fail ({why})")
        elif level and _numbers(mine)[:level] != _numbers(theirs)[:level]:
            fatal.append(f"{name} {theirs} {where}, {mine} here ({why})")
        else:
            warnings.append(f"{name} {theirs} {where}, {mine} here: results may differ in the last bits")
    return fatal, warnings


def check_versions(client, timeout: float = 30.0, workers: bool = True) -> list:
    """Compare the versions of this machine, the scheduler and (``workers``) the workers attached now. A mismatch that
    breaks results or transport raises a :class:`ForestCarbonError` naming the package, both versions and the fix;
    the others come back as warnings (one line per package)."""
    address = scheduler_address(client)
    packages = list(VERSION_RULES)
    done, versions, error = _within(timeout, lambda: client.get_versions(packages=packages))
    if not done or error is not None:
        raise ForestCarbonError(f"The Dask scheduler at {address} did not say which versions it and its workers run "
                                f"({'no answer within ' + format(timeout, 'g') + ' s' if not done else error}): "
                                "is it overloaded, or of another Dask version than this machine?")
    mine = local_versions()
    scheduler = (versions.get("scheduler") or {}).get("packages") or {}
    fatal, warnings = compare_versions(mine, scheduler, f"on the scheduler at {address}", SCHEDULER_PACKAGES)
    by_message: dict = {}
    for worker, info in ((versions.get("workers") or {}).items() if workers else ()):
        f, w = compare_versions(mine, (info or {}).get("packages") or {}, "on the workers", VERSION_RULES)
        for message in f + w:
            by_message.setdefault((message in f, message), []).append(str(worker))
    for (is_fatal, message), names in by_message.items():
        named = message.replace("on the workers", f"on {len(names)} worker(s) ({', '.join(sorted(names)[:2])}"
                                f"{'…' if len(names) > 2 else ''})", 1)
        (fatal if is_fatal else warnings).append(named)
    if fatal:
        hint = INSTALL_HINT
        if any(CORE_DISTRIBUTION in m and "scheduler" in m for m in fatal):
            hint += ("; the scheduler needs the worker package too, since it reads the job's tasks (the plugin's "
                     "function names)")
        raise ForestCarbonError(f"The Dask cluster at {address} would not give this machine's results: "
                                + "; ".join(fatal) + f". To fix it, {hint}.")
    return warnings


def running_workers(client, timeout: float = 5.0) -> int | None:
    """Worker threads attached to the scheduler now (None: the scheduler did not answer within ``timeout``)."""
    done, nthreads, error = _within(timeout, client.nthreads)
    if not done or error is not None or not isinstance(nthreads, dict):
        return None
    return sum(int(n or 0) for n in nthreads.values())


def worker_wait_seconds(configured: float | None = None) -> float:
    """The seconds a job waits with no worker attached: ``FOREST_CARBON_WORKER_WAIT`` when set, else
    ``configured``, else :data:`DEFAULT_WORKER_WAIT`."""
    text = os.environ.get(WORKER_WAIT_ENV, "").strip()
    if text:
        try:
            if float(text) > 0:
                return float(text)
        except ValueError:
            pass
    return float(configured) if configured and configured > 0 else DEFAULT_WORKER_WAIT


def wait_for_workers(client, wait: float, progress: Progress | None = None) -> int:
    """The worker threads attached, waiting up to ``wait`` seconds for the first (a cluster that is scaling up);
    a clear error when none came."""
    deadline = time.monotonic() + wait
    told = False
    while True:
        threads = running_workers(client)
        if threads:
            return threads
        if progress is not None and progress.is_canceled():
            raise Cancelled()
        if time.monotonic() >= deadline:
            address = scheduler_address(client)
            raise ForestCarbonError(
                f"No Dask worker is attached to the scheduler at {address} (waited {wait:g} s). Start workers with "
                f"`dask worker {address}`; a worker that joins and leaves again at once usually lacks the plugin's "
                f"core or runs other package versions than this machine (see its log; {INSTALL_HINT}).")
        if progress is not None and not told:
            progress.info(f"Waiting up to {wait:g} s for a Dask worker to attach to {scheduler_address(client)}…")
            told = True
        time.sleep(0.5)


# --------------------------------------------------------------------------- tasks as plain data

def _affine(coefficients):
    from affine import Affine

    return Affine(*coefficients)


def _rasterio_crs(wkt):
    from rasterio.crs import CRS

    return CRS.from_wkt(wkt)


def _pyproj_crs(wkt):
    from pyproj import CRS

    return CRS.from_wkt(wkt)


def _plain_reducers() -> dict:
    """Reducers for the objects whose own pickles depend on a library's version (affine 3 cannot read affine 2's):
    each is sent as plain numbers or text and rebuilt by the worker's library. Only for modules already imported."""
    table = {}
    affine = sys.modules.get("affine")
    if affine is not None:
        table[affine.Affine] = lambda t: (_affine, (tuple(float(v) for v in tuple(t)[:6]),))
    crs = sys.modules.get("rasterio.crs")
    if crs is not None:
        table[crs.CRS] = lambda c: (_rasterio_crs, (c.to_wkt(),))
    pyproj = sys.modules.get("pyproj")
    if pyproj is not None:
        table[pyproj.CRS] = lambda c: (_pyproj_crs, (c.to_wkt(),))
    return table


def plain_call(func, args=(), kwargs=None) -> tuple[bytes, list]:
    """``(payload, futures)``: the call pickled with :func:`_plain_reducers`; Dask futures among the arguments are
    left out of the bytes (Dask resolves them when they are passed beside, see :func:`run_plain`)."""
    import cloudpickle
    from distributed import Future

    futures: list = []

    class PlainPickler(cloudpickle.Pickler):
        dispatch_table = ChainMap(_plain_reducers(), getattr(cloudpickle.Pickler, "dispatch_table",
                                                             copyreg.dispatch_table))

        def persistent_id(self, obj):
            if isinstance(obj, Future):
                futures.append(obj)
                return len(futures) - 1
            return None

    buffer = io.BytesIO()
    PlainPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump((func, tuple(args), dict(kwargs or {})))
    return buffer.getvalue(), futures


def run_plain(payload: bytes, resolved: list):
    """(runs on a worker) the call of :func:`plain_call`, with the futures' values in their places."""

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            return resolved[pid]

    func, args, kwargs = Unpickler(io.BytesIO(payload)).load()
    return func(*args, **kwargs)


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
              event_name: str | None = None, worker_wait: float | None = None):
    """Submit ``func(*args, **kwargs)`` for each ``args`` of ``tiles`` (as plain data, :func:`plain_call`); yield
    ``(index, result)`` as tiles complete. Progress goes from ``offset`` to ``offset + share`` %. Cancellation
    (``progress.is_canceled()``) cancels every future, sets the job's event and raises :class:`Cancelled`; a failed
    tile cancels the others and raises a :class:`ForestCarbonError` with that tile's error; so does a cluster that has
    had no worker for ``worker_wait`` seconds while no tile completed (all lost, or none there)."""
    import queue

    from distributed import Event

    progress = progress or NullProgress()
    wait = worker_wait_seconds(worker_wait)
    tiles = list(tiles)
    total = len(tiles)
    if not total:
        return
    prefix = f"forestcarbon-{getattr(func, '__name__', 'task')}-{uuid.uuid4().hex[:10]}"
    futures = []
    for i, args in enumerate(tiles):
        payload, needs = plain_call(func, args, kwargs)
        futures.append(client.submit(run_plain, payload, needs, key=f"{prefix}-{i}", retries=retries, pure=False))
    index = {f.key: i for i, f in enumerate(futures)}
    pending = set(futures)
    done_count = 0
    completed: queue.Queue = queue.Queue()
    for future in futures:
        future.add_done_callback(completed.put)
    last_check = time.monotonic()
    without_workers = None  # since when no worker was attached and no tile completed
    try:
        while pending:
            if progress.is_canceled():
                raise Cancelled()
            try:
                finished = [completed.get(timeout=0.1)]
            except queue.Empty:
                now = time.monotonic()
                if now - last_check >= 1.0:
                    last_check = now
                    threads = running_workers(client, timeout=min(5.0, wait))
                    if threads:
                        without_workers = None
                    elif without_workers is None:
                        without_workers = now
                    elif now - without_workers >= wait:
                        raise ForestCarbonError(_no_workers_message(client, wait, done_count, total, label,
                                                                    answered=threads is not None))
                continue
            without_workers = None
            while True:
                try:
                    finished.append(completed.get_nowait())
                except queue.Empty:
                    break
            finished = [f for f in finished if f in pending]
            for future in sorted(finished, key=lambda f: index[f.key]):
                i = index[future.key]
                pending.discard(future)
                yield i, _result(future, i, total, label, progress)
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


def _no_workers_message(client, wait, done, total, label, answered=True) -> str:
    address = scheduler_address(client)
    if not answered:
        return (f"The job stopped: the Dask scheduler at {address} has not answered for {wait:g} s ({done} of {total} "
                f"{label}s done; nothing was written). Check that the scheduler still runs and that this machine "
                "can reach it, then run the job again.")
    return (f"The job stopped: no Dask worker has been attached to the scheduler at {address} for {wait:g} s "
            f"({done} of {total} {label}s done; the rest were cancelled, nothing was written). Workers that were "
            f"there and dropped off usually crashed or ran out of memory, or run other package versions than this "
            f"machine (see the workers' log; {INSTALL_HINT}). Start workers with `dask worker {address}` and run "
            f"the job again (the wait is set in Cluster settings, or {WORKER_WAIT_ENV}).")


def _result(future, i, total, label, progress=None):
    from distributed.client import FutureCancelledError

    try:
        return future.result()
    except ForestCarbonError as exc:
        if isinstance(exc, Cancelled):
            raise
        raise ForestCarbonError(f"{label.capitalize()} {i + 1} of {total} failed on the cluster: {exc}") from exc
    except FutureCancelledError as exc:
        if progress is None or progress.is_canceled():
            raise Cancelled("The job's tasks were cancelled on the cluster; no output was written.") from exc
        raise ForestCarbonError(f"The cluster cancelled {label} {i + 1} of {total} ({str(exc)[:300]}): the connection "
                                "to the scheduler was lost, or someone cancelled the job's tasks. Nothing was "
                                "written; run the job again.") from exc
    except Exception as exc:  # noqa: BLE001 - a worker's error, or KilledWorker
        name = type(exc).__name__
        text = str(exc)
        if name == "KilledWorker":
            raise ForestCarbonError(f"{label.capitalize()} {i + 1} of {total} was lost with its worker too many times "
                                    f"(out of memory on the workers, or a worker that crashes on the task: see its "
                                    f"log; {exc}).") from exc
        if "deserializ" in text.lower() and "graph" in text.lower():
            cause = exc.__cause__ or exc.__context__
            raise ForestCarbonError(
                f"The Dask scheduler could not read the job's tasks ({type(cause).__name__ + ': ' if cause else ''}"
                f"{str(cause or exc).splitlines()[0][:300]}): the scheduler lacks the plugin's core or a package "
                f"the tasks need, so this is not about the workers. Install the worker package where the scheduler "
                f"runs too: pip install -c constraints-worker.txt .[worker].") from exc
        raise ForestCarbonError(f"{label.capitalize()} {i + 1} of {total} failed on the cluster ({name}: "
                                f"{text[:500]}).") from exc


class DaskExecutor:
    """Runs tile tasks on a Dask cluster: what the core functions use when a job is remote."""

    kind = "dask"

    def __init__(self, client, retries: int = DEFAULT_RETRIES, owned: bool = False, job_dir: str = "",
                 progress: Progress | None = None, tasks_per_thread: int = 8, worker_wait: float | None = None,
                 check: bool = True):
        self.client = client
        self.tasks_per_thread = tasks_per_thread  # raster jobs: about this many row bands per worker thread
        self.retries = int(retries)
        self.owned = owned
        self.job_dir = job_dir
        self.progress = progress
        self.worker_wait = worker_wait_seconds(worker_wait)
        self.address = scheduler_address(client)
        self._event_names: list = []
        self._sent: list = []
        self._checked = not check
        self.warnings: list = []

    # -- before the first task -------------------------------------------------------
    def check(self, progress: Progress | None = None) -> list:
        """Wait (up to ``worker_wait``) for a worker, then compare versions (:func:`check_versions`); once per
        executor. Returns the version warnings (also given to ``progress``)."""
        if self._checked:
            return self.warnings
        check_versions(self.client, workers=False)  # a scheduler that cannot read the tasks fails now, not later
        wait_for_workers(self.client, self.worker_wait, progress)
        self.warnings = check_versions(self.client)
        self._checked = True
        for message in self.warnings:
            if progress is not None:
                progress.warning(f"Cluster at {self.address}: {message}.")
        return self.warnings

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
        self.check(progress)
        buffered = {}
        following = 0
        for i, result in run_tiles(self.client, func, args_list, progress, self.retries, share, kwargs=kwargs,
                                   worker_wait=self.worker_wait):
            buffered[i] = result
            while following in buffered:
                yield buffered.pop(following)
                following += 1

    def row_bands(self, func, args_list, progress: Progress | None = None, share: float = 95.0) -> list:
        """``func(*args, progress=…)`` for each row band's ``args``, results in band order. Each task gets a
        :class:`TaskProgress` on a fresh cancel event, so that cancelling the job stops tasks already running."""
        self.check(progress)
        event = self.new_event()
        results = [None] * len(args_list)
        for i, result in run_tiles(self.client, func, args_list, progress, self.retries, share,
                                   kwargs={"progress": TaskProgress(event)}, label="row band", event_name=event,
                                   worker_wait=self.worker_wait):
            results[i] = result
        return results

    def send_file(self, path) -> object:
        """A model the workers may not see, sent with the job: a future of its bytes and those of the external data
        files it names (:func:`model_bundle`), which Dask copies to each worker that needs it."""
        self.check(self.progress)
        bundle = model_bundle(path)
        # a task holding the bytes rather than scattered data: the scheduler keeps its spec, so a copy lost with a
        # worker is made again (scattered data would be lost for good)
        key = f"forestcarbon-file-{bundle_digest(bundle)[:20]}-{uuid.uuid4().hex[:6]}"
        future = self.client.submit(file_bytes, bundle, key=key, pure=False)
        self._sent.append(future)
        return future

    def release(self, futures) -> None:
        """Forget files sent with a job (:meth:`send_file`) once the job is over, whatever its outcome: the
        scheduler would otherwise keep their bytes for as long as this executor lives."""
        gone = {id(f) for f in futures}
        self._sent = [f for f in self._sent if id(f) not in gone]
        with contextlib.suppress(Exception):
            self.client.cancel(list(futures), force=True)

    def check_visible(self, paths, progress: Progress | None = None) -> None:
        """Fail early, naming the file, when a worker cannot see an input."""
        local = [str(p) for p in paths if not str(p).startswith(("/vsi", "http://", "https://", "s3://", "gs://"))]
        if not local:
            return
        self.check(progress or self.progress)
        missing = next(result for _, result in run_tiles(self.client, missing_paths, [(local,)], progress, 0, 0.0,
                                                          label="input check", worker_wait=self.worker_wait))
        if missing:
            raise ForestCarbonError(
                f"The workers of {self.address} cannot read {', '.join(missing[:3])}{'…' if len(missing) > 3 else ''}: "
                "put the inputs on storage the workers share (the same path on every machine), or give them as "
                "GDAL /vsi paths or URLs (/vsis3/bucket/key.tif, /vsicurl/https://…).")

    def close(self) -> None:
        if self._sent:
            with contextlib.suppress(Exception):
                self.client.cancel(self._sent, force=True)
            self._sent = []
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


def file_bytes(data):
    """(runs on a worker) a file's bytes sent with the job (see :meth:`DaskExecutor.send_file`)."""
    return data


def missing_paths(paths) -> list:
    """(runs on a worker) the paths it cannot see."""
    return [p for p in paths if not os.path.exists(p)]


# --------------------------------------------------------------------------- files sent with a job

CACHE_MAX_AGE_S = 7 * 24 * 3600  # cache entries unused this long are removed
_EXTERNAL = re.compile(rb"\n\x08location\x12")
_CACHE: dict = {}


def external_data_files(model) -> list:
    """The external data files an ONNX model names (``location`` entries of its tensors), relative to its folder.
    Read from the protobuf bytes, so that the client needs no ``onnx`` package; a location outside the model's folder
    is refused before the job starts."""
    model = Path(model)
    data = model.read_bytes()
    names = []
    for match in _EXTERNAL.finditer(data):
        pos, length, shift = match.end(), 0, 0
        while pos < len(data):  # the string's length, a protobuf varint
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        name = data[pos:pos + length].decode("utf-8", "replace")
        if name and name not in names:
            names.append(name)
    folder = model.resolve().parent
    for name in names:
        target = (folder / name).resolve()
        if folder not in target.parents or not target.is_file():
            raise ForestCarbonError(f"The model '{model.name}' keeps weights in '{name}', which is not a file in the "
                                    "model's folder: a cluster job sends the model and its external data files, so "
                                    "they must sit beside it (or save the model as one file).")
    return names


def model_bundle(path) -> tuple:
    """``(file name, {relative path: bytes})``: a model and its external data files, as sent to the workers."""
    path = Path(path)
    files = {path.name: path.read_bytes()}
    if path.suffix.lower() == ".onnx":
        for name in external_data_files(path):
            files[name] = (path.parent / name).read_bytes()
    return path.name, files


def bundle_digest(bundle) -> str:
    digest = hashlib.sha256()
    name, files = bundle
    for rel in sorted(files):
        digest.update(rel.encode() + b"\0" + hashlib.sha256(files[rel]).digest())
    return digest.hexdigest()


def cache_folder() -> Path:
    """(runs on a worker) this user's folder for files sent with jobs: ``forest_carbon_jobs_<uid>`` in the temporary
    folder, mode 0700 and owned by this user. One owned by someone else, or a link, is never used: a private folder of
    this process takes its place."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    folder = Path(tempfile.gettempdir()) / f"forest_carbon_jobs_{uid if uid is not None else 0}"
    cached = _CACHE.get("folder")
    if cached is not None and cached.is_dir():
        return cached
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(folder)
        usable = stat.S_ISDIR(info.st_mode) and (uid is None or info.st_uid == uid)
        if usable and uid is not None and stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(folder, 0o700)  # made by an older version, world-readable
    except OSError:
        usable = False
    if not usable:
        import atexit

        folder = Path(tempfile.mkdtemp(prefix=f"forest_carbon_jobs_{uid}_"))
        atexit.register(shutil.rmtree, folder, True)
    _CACHE["folder"] = folder
    _clean_cache(folder)
    return folder


def _clean_cache(folder: Path, max_age: float = CACHE_MAX_AGE_S) -> None:
    """Remove entries not used for ``max_age`` seconds (each use touches its entry)."""
    now = time.time()
    for entry in folder.iterdir():
        with contextlib.suppress(OSError):
            if now - entry.lstat().st_mtime > max_age:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()


def materialize(data, suffix: str = ".onnx") -> Path:
    """(runs on a worker) a file sent with the job (its bytes, or a :func:`model_bundle`), written once per worker
    machine into :func:`cache_folder`; returns the model file's path (its external data files beside it)."""
    if isinstance(data, (bytes, bytearray)):
        data = (f"model{suffix}", {f"model{suffix}": bytes(data)})
    name, files = data
    folder = cache_folder()
    entry = folder / bundle_digest(data)[:32]
    if not entry.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".part-", dir=folder))
        try:
            for rel, content in files.items():
                target = (tmp / rel).resolve()
                if tmp.resolve() not in target.parents:
                    raise ForestCarbonError(f"A file sent with the job has an unsafe name: {rel!r}.")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            try:
                os.rename(tmp, entry)  # atomic: another task may have written the same entry meanwhile
            except OSError:
                if not entry.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.utime(entry)
    return entry / name


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


JOB_OWNER = ".forest_carbon_job.json"


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (None: no such process here)."""
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
    """Remove the job folders in ``base`` whose process (on this machine) is gone: what a killed QGIS left. Folders of
    other machines or of running processes are left alone. Returns the removed folders."""
    removed = []
    host = socket.gethostname()
    with contextlib.suppress(OSError):
        for folder in Path(base).glob(".*.dask-*"):
            try:
                owner = json.loads((folder / JOB_OWNER).read_text())
                if owner.get("host") != host:
                    continue
                started = _process_start(int(owner["pid"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            known = owner.get("started")
            if started is None or (started >= 0 and known is not None and abs(started - float(known)) > 1.0):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


@contextlib.contextmanager
def job_folder(output, job_dir: str = ""):
    """A folder for the job's tiles: ``job_dir`` (storage the workers share) or a hidden folder beside the
    output; removed when the job ends, whatever happens. It records this process (host, pid, start time), so that
    the next job removes the folders of processes that were killed before they could."""
    base = Path(job_dir) if job_dir else Path(output).resolve().parent
    try:
        base.mkdir(parents=True, exist_ok=True)
        clean_stale_job_folders(base)
        folder = Path(tempfile.mkdtemp(prefix=f".{Path(output).stem}.dask-", dir=base))
        try:
            (folder / JOB_OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                        "started": _process_start(os.getpid())}))
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
                    streamed: bool = False, units=None) -> Path:
    """The output from its row-band tiles ``[(row0, row1, path)]``: a VRT of them (descriptions, nodata, tags and
    provenance in it) → GDAL's COG driver (tiles, averaged overviews, as the local path) inside ``atomic_output``.
    ``streamed``: the tiles' rows go in order through :mod:`.cog` instead (one float32 band with NaN nodata), as the
    local path of predictraster writes its outputs, so that both make the same file."""
    from ..raster.write import COMPRESS, to_cog
    from ..outputs import atomic_output, gdal_tags

    import numpy as np

    if streamed:
        return _assemble_streamed(grid, tiles, out_path, descriptions, tags, provenance, COMPRESS, units)

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
        if units and len(units) >= b and units[b - 1]:
            lines.append(f"    <UnitType>{escape(str(units[b - 1]))}</UnitType>\n")
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
            to_cog(vrt, tmp, COMPRESS, workers=workers)
    finally:
        with contextlib.suppress(OSError):
            vrt.unlink()
    return Path(out_path)


def _assemble_streamed(grid, tiles, out_path, descriptions, tags, provenance, compress, units=None) -> Path:
    import rasterio
    from rasterio.windows import Window

    from ..raster.cog import cog_writer

    with cog_writer(grid, out_path, descriptions=descriptions, tags=tags, provenance=provenance,
                    compress=compress, units=units) as dst:
        for row0, row1, path in sorted(tiles, key=lambda t: t[0]):
            with rasterio.open(path) as src:
                for top in range(0, row1 - row0, 512):  # memory: 512 rows at a time, whatever the band's height
                    rows = min(512, row1 - row0 - top)
                    dst.write(src.read(1, window=Window(0, top, grid.width, rows), out_dtype="float32")[None],
                              window=Window(0, row0 + top, grid.width, rows))
    return Path(out_path)


__all__ = ["ClusterSpec", "DaskExecutor", "connect", "local_cluster", "gateway_cluster", "open_client", "security",
           "run_tiles", "assemble_raster", "close_local_clusters", "check_versions", "probe_scheduler",
           "wait_for_workers", "plain_call", "run_plain", "materialize", "model_bundle", "job_folder"]
