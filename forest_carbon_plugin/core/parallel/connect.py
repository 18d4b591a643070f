"""Connecting to a Dask cluster: a scheduler (``tcp://``, ``tls://``), a dask-gateway or a ``LocalCluster``.

Every failure is a :class:`.errors.ForestCarbonError` that names the address and what to check. The address is
probed with Dask's handshake under a hard deadline (:func:`probe_scheduler`), so that a port that is not a Dask
scheduler fails instead of hanging. QGIS-free: the plugin's settings (:class:`ClusterSpec`) are stored by
``forest_carbon_plugin.settings``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..dependencies import qgis_python_executable, require
from ..errors import ForestCarbonError
from .pool import default_workers, main_hidden

DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES = 3
# how long a job waits without any worker attached (none there, or all lost) before it fails; FOREST_CARBON_WORKER_WAIT
# (seconds) overrides the settings, for qgis_process and scripts (.dask.worker_wait_seconds)
DEFAULT_WORKER_WAIT = 60.0
SCHEMES = ("tcp://", "tls://")


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
    n_workers: int = 0  # local cluster; 0 = one per core (at most pool.MAX_DEFAULT_WORKERS)
    job_dir: str = ""  # folder the workers and this machine share for output tiles ("" = beside the output)
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    worker_wait: float = DEFAULT_WORKER_WAIT  # seconds a job waits with no worker attached before it fails


def check_address(address: str) -> str:
    """A Dask scheduler address with its scheme, or a clear error.

    Parameters
    ----------
    address : str
        ``tcp://host:port``, ``tls://host:port`` or ``host:port`` (then ``tcp://``).

    Returns
    -------
    str
        The address with its scheme.

    Raises
    ------
    ForestCarbonError
        When it is empty, names no host, or has another scheme (a dask-gateway URL, say).
    """
    address = (address or "").strip()
    if not address:
        raise ForestCarbonError("No Dask scheduler address: give one like tcp://scheduler:8786 or tls://scheduler:8786 "
                                "(Cluster settings, or the algorithms' SCHEDULER), or choose the local cluster.")
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
    """The TLS settings of a ``tls://`` scheduler.

    Parameters
    ----------
    tls_ca, tls_cert, tls_key : str
        The CA certificate, the client certificate and its key (PEM files); all three or none.

    Returns
    -------
    distributed.security.Security or None
        Encryption required, with these files; None when no file is given.
    """
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


def within(seconds: float, func, *args, late=None):
    """Run ``func(*args)`` in a daemon thread, abandoned after ``seconds``.

    Dask's connection code has steps without a timeout (the handshake read); a thread we may leave behind is
    the one way to give the caller a hard deadline.

    Parameters
    ----------
    seconds : float
        The deadline.
    func : callable
        What to run, with ``args``.
    late : callable, optional
        Disposes of a result that comes after the deadline (closes a client, say).

    Returns
    -------
    tuple
        ``(done, result, error)``: ``done`` False when the deadline passed first.
    """
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
    """Dask's handshake and an ``identity`` request to ``address``, in its own event loop, under a hard deadline.

    Parameters
    ----------
    address : str
        The scheduler's address, with its scheme.
    security : distributed.security.Security, optional
        For ``tls://``.
    timeout : float
        Seconds for the whole exchange.

    Returns
    -------
    dict
        The scheduler's identity.

    Raises
    ------
    ForestCarbonError
        Saying what answered instead (nothing, a worker, something that is not Dask).
    """
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
    done, identity, error = within(timeout + 1.0, run)
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
    """A client of the scheduler at ``address``, probed first (:func:`probe_scheduler`).

    Parameters
    ----------
    address : str
        ``tcp://`` or ``tls://`` address (:func:`check_address`).
    security : distributed.security.Security, optional
        Needed for ``tls://``; ignored for ``tcp://``.
    timeout : float
        Seconds for the probe, then as much for the client (twice that at most).

    Returns
    -------
    distributed.Client
        Not set as Dask's default client.

    Raises
    ------
    ForestCarbonError
        Naming the address and what to check.
    """
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
    done, client, error = within(timeout + 2.0, lambda: Client(address, security=security, timeout=timeout,
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
    """A client of a ``distributed.LocalCluster`` on this machine, kept for the session and reused by later jobs.

    Parameters
    ----------
    n_workers : int
        Worker processes, one thread each; 0 for :func:`.pool.default_workers`.

    Returns
    -------
    distributed.Client
        The session's client of that cluster (closed by :func:`close_local_clusters`).
    """
    require("distributed")
    n = default_workers(n_workers if n_workers and n_workers > 0 else None)
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
    """Stop the session's local clusters and their clients (plugin unload, end of tests)."""
    with _LOCAL_LOCK:
        for cluster, client in _LOCAL.values():
            with contextlib.suppress(Exception):
                client.close()
            with contextlib.suppress(Exception):
                cluster.close()
        _LOCAL.clear()


def gateway_cluster(url: str, auth: str = "", user: str = "", secret: str = "", workers: int = 2):
    """A client of a new cluster from a dask-gateway, closed with the client (:meth:`.dask.DaskExecutor.close`).

    Parameters
    ----------
    url : str
        The gateway's address.
    auth : str
        "" (none), "basic", "jupyterhub" or "kerberos".
    user, secret : str
        The user and password (basic) or the API token (jupyterhub).
    workers : int
        Workers to scale the new cluster to.

    Returns
    -------
    distributed.Client
        The new cluster's client.
    """
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
    """A client of the cluster the settings describe.

    Parameters
    ----------
    spec : ClusterSpec
        Where to run.

    Returns
    -------
    tuple
        ``(client, owned)``; ``owned``: the caller closes the client after the job (not the session's local
        cluster).
    """
    if spec.mode == "local":
        return local_cluster(spec.n_workers), False
    if spec.mode == "gateway":
        return gateway_cluster(spec.gateway_url, spec.gateway_auth, spec.gateway_user, spec.gateway_secret,
                               spec.gateway_workers), True
    return connect(spec.address, security(spec.tls_ca, spec.tls_cert, spec.tls_key), spec.timeout), True


def scheduler_address(client) -> str:
    """The address of the scheduler a client is connected to.

    Parameters
    ----------
    client : distributed.Client
        A client.

    Returns
    -------
    str
        The address, or "?" when the client cannot say.
    """
    with contextlib.suppress(Exception):
        return str(client.scheduler.address)
    return "?"
