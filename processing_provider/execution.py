"""Where a heavy algorithm runs: here, on the Dask cluster of the settings, or on a local Dask cluster.

``add_execution_parameters(alg)`` adds two advanced parameters (ids are API: scripts, models and
``qgis_process`` name them):

* ``EXECUTION``: 0 = here (this process and its worker processes), 1 = the Dask cluster of
  *Cluster settings* (a local cluster when nothing is configured), 2 = a local Dask cluster
  (``distributed.LocalCluster`` with one single-threaded worker process per core, or the
  number set in the settings);
* ``SCHEDULER``: a scheduler address (``tcp://host:8786``, ``tls://host:8786``) that overrides
  the settings' (with EXECUTION 1; the settings' TLS certificates are used for ``tls://``).

``execution(alg, parameters, context, feedback)`` is a context manager that connects (a clear
error naming the address when it cannot), waits for a worker (``worker_wait`` seconds, 60 by default;
``FOREST_CARBON_WORKER_WAIT`` overrides it), refuses a cluster whose versions would change the results
(:func:`forest_carbon_plugin.core.parallel.cluster.check_versions`) and makes the core functions called inside run
their tiles on the cluster (:func:`forest_carbon_plugin.core.parallel.tilemap.executor_scope`).

Settings live in ``QgsSettings`` under ``forest_carbon/cluster/…``; the dask-gateway password or
token lives in the QGIS authentication database (a configuration whose id is stored as
``forest_carbon/cluster/authcfg``), never in project files or plain settings.
"""

from __future__ import annotations

import contextlib

from qgis.core import (
    QgsApplication,
    QgsProcessingException,
    QgsProcessingParameterEnum,
    QgsProcessingParameterString,
    QgsSettings,
)

from forest_carbon_plugin.core.parallel.cluster import DEFAULT_WORKER_WAIT, ClusterSpec, DaskExecutor, open_client
from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.parallel.tilemap import executor_scope

from .base import FeedbackProgress
from .compat import ParameterFlag

EXECUTION = "EXECUTION"
SCHEDULER = "SCHEDULER"
HERE, CLUSTER, LOCAL_CLUSTER = 0, 1, 2
EXECUTION_OPTIONS = ["Here (this machine)", "Dask cluster (Cluster settings, or SCHEDULER)",
                     "Local Dask cluster (this machine's cores)"]
PREFIX = "forest_carbon/cluster/"
MODES = ("local", "scheduler", "gateway")


def add_execution_parameters(alg) -> None:
    """EXECUTION and SCHEDULER, as advanced parameters of ``alg``."""
    execution = QgsProcessingParameterEnum(EXECUTION, alg.tr("Execution"), options=EXECUTION_OPTIONS,
                                           defaultValue=HERE)
    execution.setFlags(execution.flags() | ParameterFlag.Advanced)
    execution.setHelp(alg.tr("0 here; 1 the Dask cluster of Plugins → Forest Carbon → Cluster settings (or SCHEDULER); "
                             "2 a Dask cluster of worker processes on this machine."))
    alg.addParameter(execution)
    scheduler = QgsProcessingParameterString(SCHEDULER, alg.tr("Dask scheduler address (overrides the settings)"),
                                             optional=True)
    scheduler.setFlags(scheduler.flags() | ParameterFlag.Advanced)
    alg.addParameter(scheduler)


# --------------------------------------------------------------------------- settings

def _value(settings, key, default, kind=str):
    value = settings.value(PREFIX + key, default)
    if kind is str:
        return "" if value is None else str(value)
    try:  # QgsSettings hands numbers back as strings from the .ini file
        return kind(value)
    except (TypeError, ValueError):
        return default


def load_spec() -> ClusterSpec:
    """The cluster of the settings (secrets from the authentication database)."""
    s = QgsSettings()
    spec = ClusterSpec(
        mode=_value(s, "mode", "local"), address=_value(s, "address", ""), tls_ca=_value(s, "tls_ca", ""),
        tls_cert=_value(s, "tls_cert", ""), tls_key=_value(s, "tls_key", ""),
        gateway_url=_value(s, "gateway_url", ""), gateway_auth=_value(s, "gateway_auth", ""),
        gateway_workers=_value(s, "gateway_workers", 2, int), n_workers=_value(s, "local_workers", 0, int),
        job_dir=_value(s, "job_dir", ""), timeout=_value(s, "timeout", 5.0, float),
        retries=_value(s, "retries", 3, int), worker_wait=_value(s, "worker_wait", DEFAULT_WORKER_WAIT, float))
    if spec.mode not in MODES:
        spec.mode = "local"
    if spec.mode == "scheduler" and not spec.address:
        spec.mode = "local"  # nothing configured: the local cluster
    authcfg = _value(s, "authcfg", "")
    if spec.mode == "gateway" and authcfg:
        spec.gateway_user, spec.gateway_secret = read_secret(authcfg)
    return spec


def save_spec(spec: ClusterSpec, authcfg: str = "") -> None:
    """Store ``spec`` in QgsSettings (no secret: the gateway's credentials go in the auth database, see
    :func:`store_secret`, and only their configuration id ``authcfg`` is stored here)."""
    s = QgsSettings()
    for key, value in (("mode", spec.mode), ("address", spec.address), ("tls_ca", spec.tls_ca),
                       ("tls_cert", spec.tls_cert), ("tls_key", spec.tls_key), ("gateway_url", spec.gateway_url),
                       ("gateway_auth", spec.gateway_auth), ("gateway_workers", int(spec.gateway_workers)),
                       ("local_workers", int(spec.n_workers)), ("job_dir", spec.job_dir),
                       ("timeout", float(spec.timeout)), ("retries", int(spec.retries)),
                       ("worker_wait", float(spec.worker_wait)), ("authcfg", authcfg)):
        s.setValue(PREFIX + key, value)
    s.sync()


def store_secret(user: str, secret: str, authcfg: str = "") -> str:
    """Put the gateway's user and password/token into the QGIS authentication database (a 'Basic'
    configuration); returns its id. Raises when the database is locked (no master password)."""
    from qgis.core import QgsAuthMethodConfig

    manager = QgsApplication.authManager()
    config = QgsAuthMethodConfig()
    if authcfg:
        manager.loadAuthenticationConfig(authcfg, config, True)
    config.setName("Forest Carbon: Dask gateway")
    config.setMethod("Basic")
    config.setConfig("username", user)
    config.setConfig("password", secret)
    ok = manager.updateAuthenticationConfig(config) if config.id() else manager.storeAuthenticationConfig(config)
    ok = ok[0] if isinstance(ok, tuple) else ok
    if not ok or not config.id():
        raise ForestCarbonError("The QGIS authentication database did not take the gateway's credentials: set its "
                                "master password (Settings → Options → Authentication) and try again.")
    return config.id()


def read_secret(authcfg: str) -> tuple[str, str]:
    from qgis.core import QgsAuthMethodConfig

    config = QgsAuthMethodConfig()
    QgsApplication.authManager().loadAuthenticationConfig(authcfg, config, True)
    return config.config("username", ""), config.config("password", "")


# --------------------------------------------------------------------------- the run

def requested_spec(alg, parameters, context) -> ClusterSpec | None:
    """The cluster the parameters ask for (None: run here)."""
    mode = alg.parameterAsEnum(parameters, EXECUTION, context) if EXECUTION in parameters else HERE
    address = (alg.parameterAsString(parameters, SCHEDULER, context) or "").strip() if SCHEDULER in parameters else ""
    if mode == HERE:
        return None
    if mode not in (CLUSTER, LOCAL_CLUSTER):
        raise QgsProcessingException(f"EXECUTION must be 0 (here), 1 (cluster) or 2 (local cluster), not {mode}.")
    spec = load_spec()
    if mode == LOCAL_CLUSTER:
        spec.mode = "local"
    elif address:
        spec.mode, spec.address = "scheduler", address
    return spec


def resolve_executor(alg, parameters, context, feedback):
    """A connected :class:`DaskExecutor` for the parameters, or None to run here."""
    spec = requested_spec(alg, parameters, context)
    if spec is None:
        if (parameters.get(SCHEDULER) or "") and feedback is not None:
            feedback.pushInfo("SCHEDULER is ignored: EXECUTION is 0 (here).")
        return None
    where = {"local": "a local Dask cluster", "gateway": f"the dask-gateway {spec.gateway_url}",
             "scheduler": f"the Dask scheduler {spec.address}"}[spec.mode]
    if feedback is not None:
        feedback.pushInfo(f"Connecting to {where}…")
    try:
        client, owned = open_client(spec)
    except ForestCarbonError as exc:
        raise QgsProcessingException(str(exc)) from exc
    executor = DaskExecutor(client, spec.retries, owned, spec.job_dir, worker_wait=spec.worker_wait)
    try:  # before any file is made: no worker within the wait, or versions that would change the results
        executor.check(FeedbackProgress(feedback))
    except ForestCarbonError as exc:
        executor.close()
        raise QgsProcessingException(str(exc)) from exc
    except BaseException:
        executor.close()
        raise
    if feedback is not None:
        feedback.pushInfo(f"Running on {executor.address}: {executor.workers} worker thread(s); "
                          f"tasks retried {spec.retries} time(s).")
    return executor


@contextlib.contextmanager
def execution(alg, parameters, context, feedback):
    """Inside: the core runs its tiles where the parameters say (see the module doc)."""
    executor = resolve_executor(alg, parameters, context, feedback)
    try:
        with executor_scope(executor):
            yield executor
    finally:
        if executor is not None:
            executor.close()
