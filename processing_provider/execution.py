"""Where a heavy algorithm runs: here, on the Dask cluster of the settings, or on a local Dask cluster.

``add_execution_parameters(alg)`` adds two advanced parameters (ids are API: scripts, models and
``qgis_process`` name them):

* ``EXECUTION``: 0 = here (this process and its worker processes), 1 = the Dask cluster of
  *Cluster settings* (a local cluster when nothing is configured), 2 = a local Dask cluster
  (``distributed.LocalCluster`` with one single-threaded worker process per core, at most
  8 (:data:`forest_carbon_plugin.core.parallel.pool.MAX_DEFAULT_WORKERS`), or the number set in the settings);
* ``SCHEDULER``: a scheduler address (``tcp://host:8786``, ``tls://host:8786``) that overrides
  the settings' (with EXECUTION 1; the settings' TLS certificates are used for ``tls://``).

``execution(alg, parameters, context, feedback)`` is a context manager that connects (a clear
error naming the address when it cannot), waits for a worker (``worker_wait`` seconds, 60 by default;
``FOREST_CARBON_WORKER_WAIT`` overrides it), refuses a cluster whose versions would change the results
(:func:`forest_carbon_plugin.core.parallel.versions.check_versions`) and makes the core functions called inside run
their tiles on the cluster (:func:`forest_carbon_plugin.core.parallel.tilemap.executor_scope`).

The cluster comes from the plugin's settings (:func:`forest_carbon_plugin.settings.load_spec`).
"""

from __future__ import annotations

import contextlib

from qgis.core import QgsProcessingException, QgsProcessingParameterEnum, QgsProcessingParameterString

from forest_carbon_plugin.core.parallel.connect import ClusterSpec, open_client
from forest_carbon_plugin.core.parallel.dask import DaskExecutor
from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.parallel.tilemap import executor_scope
from forest_carbon_plugin.settings import load_spec

from .base import FeedbackProgress
from .compat import ParameterFlag

EXECUTION = "EXECUTION"
SCHEDULER = "SCHEDULER"
HERE, CLUSTER, LOCAL_CLUSTER = 0, 1, 2
EXECUTION_OPTIONS = ["Here (this machine)", "Dask cluster (Cluster settings, or SCHEDULER)",
                     "Local Dask cluster (this machine's cores)"]


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
