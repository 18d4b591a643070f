"""Running a job's tiles on a Dask cluster: the executor the core functions use when a job is remote.

Dask schedules, retries and moves data; this module only runs one task per tile (:func:`run_tiles`,
:class:`DaskExecutor`): the same module-level tile functions the local path runs, submitted with ``retries``;
progress from completed futures; cancellation through ``progress.is_canceled()`` (futures cancelled, the job's
event set so that running tiles stop at their next check); a failed tile fails the job with that tile's error;
and a job without any worker for ``worker_wait`` seconds fails and cancels its tasks instead of waiting forever.

The core functions find the executor through :func:`.tilemap.current_executor`
(``with executor_scope(executor): ...``), so that the algorithms keep one code path.
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
import uuid
from dataclasses import dataclass

from ..errors import Cancelled, ForestCarbonError
from ..progress import NullProgress, Progress
from .connect import DEFAULT_RETRIES, DEFAULT_WORKER_WAIT, scheduler_address, within
from .files import bundle_digest, model_bundle
from .plain import plain_call, run_plain
from .versions import INSTALL_HINT, check_versions

WORKER_WAIT_ENV = "FOREST_CARBON_WORKER_WAIT"


def running_workers(client, timeout: float = 5.0) -> int | None:
    """Worker threads attached to the scheduler now.

    Parameters
    ----------
    client : distributed.Client
        A client of the scheduler to ask.
    timeout : float
        How long the scheduler may take to say (seconds).

    Returns
    -------
    int or None
        None: the scheduler did not answer within ``timeout``.
    """
    done, nthreads, error = within(timeout, client.nthreads)
    if not done or error is not None or not isinstance(nthreads, dict):
        return None
    return sum(int(n or 0) for n in nthreads.values())


def worker_wait_seconds(configured: float | None = None) -> float:
    """The seconds a job waits with no worker attached before it fails.

    Parameters
    ----------
    configured : float, optional
        The settings' wait.

    Returns
    -------
    float
        ``FOREST_CARBON_WORKER_WAIT`` when set, else ``configured``, else :data:`.connect.DEFAULT_WORKER_WAIT`.
    """
    text = os.environ.get(WORKER_WAIT_ENV, "").strip()
    if text:
        try:
            if float(text) > 0:
                return float(text)
        except ValueError:
            pass
    return float(configured) if configured and configured > 0 else DEFAULT_WORKER_WAIT


def wait_for_workers(client, wait: float, progress: Progress | None = None) -> int:
    """Wait for the first worker of a cluster that is scaling up.

    Parameters
    ----------
    client : distributed.Client
        The connected client.
    wait : float
        Seconds to wait at most.
    progress : Progress, optional
        Told that the job waits; cancellation.

    Returns
    -------
    int
        The worker threads attached.

    Raises
    ------
    ForestCarbonError
        When none came, saying how to start workers and why they may drop off.
    """
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
        """Whether the job's event is set (asked at most every ``interval`` seconds; False when it cannot ask)."""
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


@dataclass(frozen=True)
class TileRun:
    """How :func:`run_tiles` runs a job's tiles.

    Parameters
    ----------
    retries : int
        Times Dask runs a tile again after its worker was lost.
    share, offset : float
        Progress goes from ``offset`` to ``offset + share`` %.
    label : str
        What a tile is called in messages ("tile", "row band").
    event_name : str or None
        The job's Dask cancel event, set when the job stops so that running tasks stop at their next check.
    worker_wait : float or None
        Seconds without any worker before the job fails (:func:`worker_wait_seconds`).
    """

    retries: int = DEFAULT_RETRIES
    share: float = 100.0
    offset: float = 0.0
    label: str = "tile"
    event_name: str | None = None
    worker_wait: float | None = None


def run_tiles(client, func, tiles, progress: Progress | None = None, kwargs: dict | None = None,
              run: TileRun = TileRun()):
    """Run ``func(*args, **kwargs)`` for each ``args`` of ``tiles`` on the cluster, as plain data (:func:`.plain_call`).

    Parameters
    ----------
    client : distributed.Client
        The connected client.
    func : callable
        A module-level function the workers can import.
    tiles : iterable of tuple
        The positional arguments of each task.
    progress : Progress, optional
        Progress, and cancellation: it cancels every future, sets the job's event and raises :class:`Cancelled`.
    kwargs : dict, optional
        Keyword arguments of every task.
    run : TileRun
        Retries, progress share, label, cancel event and the wait for workers.

    Yields
    ------
    tuple
        ``(index, result)`` as tiles complete. A failed tile cancels the others and raises a
        :class:`ForestCarbonError` with that tile's error; so does a cluster that has had no worker for
        ``run.worker_wait`` seconds while no tile completed (all lost, or none there).
    """
    from distributed import Event

    progress = progress or NullProgress()
    wait = worker_wait_seconds(run.worker_wait)
    tiles = list(tiles)
    total = len(tiles)
    if not total:
        return
    futures = _submit(client, func, tiles, kwargs, run.retries)
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
            finished = _finished(completed, pending)
            if not finished:
                now = time.monotonic()
                if now - last_check >= 1.0:
                    last_check = now
                    threads = running_workers(client, timeout=min(5.0, wait))
                    if threads:
                        without_workers = None
                    elif without_workers is None:
                        without_workers = now
                    elif now - without_workers >= wait:
                        raise ForestCarbonError(_no_workers_message(client, wait, done_count, total, run.label,
                                                                    answered=threads is not None))
                continue
            without_workers = None
            for future in sorted(finished, key=lambda f: index[f.key]):
                i = index[future.key]
                pending.discard(future)
                yield i, _result(future, i, total, run.label, progress)
                done_count += 1
                progress.set_progress(run.offset + run.share * done_count / total)
                future.release()
    except BaseException:
        with contextlib.suppress(Exception):
            if run.event_name:
                Event(run.event_name, client=client).set()
        with contextlib.suppress(Exception):
            client.cancel(list(pending) + futures, force=True)
        raise


def _submit(client, func, tiles, kwargs, retries) -> list:
    """One future per tile, keyed by the function's name and a job id (the scheduler's dashboard shows them)."""
    prefix = f"forestcarbon-{getattr(func, '__name__', 'task')}-{uuid.uuid4().hex[:10]}"
    futures = []
    for i, args in enumerate(tiles):
        payload, needs = plain_call(func, args, kwargs)
        futures.append(client.submit(run_plain, payload, needs, key=f"{prefix}-{i}", retries=retries, pure=False))
    return futures


def _finished(completed: queue.Queue, pending: set) -> list:
    """The futures of ``pending`` completed since the last call, waiting up to 0.1 s for the first."""
    try:
        finished = [completed.get(timeout=0.1)]
    except queue.Empty:
        return []
    while True:
        try:
            finished.append(completed.get_nowait())
        except queue.Empty:
            break
    return [f for f in finished if f in pending]


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
        """Wait (up to ``worker_wait``) for a worker, then compare versions (:func:`.versions.check_versions`).

        Once per executor.

        Parameters
        ----------
        progress : Progress, optional
            Given the version warnings; cancellation while waiting.

        Returns
        -------
        list of str
            The version warnings.
        """
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
        """Worker threads of the cluster now (at least 1: the bands are planned for one when it cannot say)."""
        with contextlib.suppress(Exception):
            return max(1, sum(self.client.nthreads().values()))
        return 1

    def describe(self) -> dict:
        """What the provenance record says about where the job ran."""
        return {"execution": "dask", "scheduler": self.address, "worker_threads": self.workers}

    def new_event(self) -> str:
        """The name of a new Dask event that cancels this job's running tasks when set."""
        name = f"forestcarbon-cancel-{uuid.uuid4().hex[:12]}"
        self._event_names.append(name)
        return name

    def map(self, func, args_list, progress: Progress | None = None, share: float = 90.0, kwargs=None):
        """Run ``func(*args, **kwargs)`` for each ``args`` on the cluster, yielding the results in order.

        Results are buffered until their turn, so that whatever combines them does it in the order of the local
        path.

        Parameters
        ----------
        func, args_list, progress, share, kwargs
            As for :func:`.pool.imap`.

        Yields
        ------
        object
            The results, in task order.
        """
        self.check(progress)
        buffered = {}
        following = 0
        run = TileRun(self.retries, share, worker_wait=self.worker_wait)
        for i, result in run_tiles(self.client, func, args_list, progress, kwargs=kwargs, run=run):
            buffered[i] = result
            while following in buffered:
                yield buffered.pop(following)
                following += 1

    def row_bands(self, func, args_list, progress: Progress | None = None, share: float = 95.0) -> list:
        """Run ``func(*args, progress=…)`` for each row band's ``args`` on the cluster.

        Each task gets a :class:`TaskProgress` on a fresh cancel event, so that cancelling the job stops tasks
        already running.

        Parameters
        ----------
        func : callable
            A module-level tile function (it takes ``progress``).
        args_list : list of tuple
            The positional arguments of each band's task.
        progress : Progress, optional
            Progress (up to ``share`` %) and cancellation.
        share : float
            The share of the progress bar the tasks fill.

        Returns
        -------
        list
            The results, in band order.
        """
        self.check(progress)
        event = self.new_event()
        results = [None] * len(args_list)
        run = TileRun(self.retries, share, label="row band", event_name=event, worker_wait=self.worker_wait)
        for i, result in run_tiles(self.client, func, args_list, progress, kwargs={"progress": TaskProgress(event)},
                                   run=run):
            results[i] = result
        return results

    def send_file(self, path) -> object:
        """Send a model the workers may not see with the job.

        A task holding the bytes of the model and of the external data files it names (:func:`.files.model_bundle`),
        which Dask copies to each worker that needs it; a copy lost with a worker is made again.

        Parameters
        ----------
        path : str or Path
            The model, whose external data files sit beside it.

        Returns
        -------
        distributed.Future
            Pass it to the tasks; :meth:`release` it when the job is over.
        """
        self.check(self.progress)
        bundle = model_bundle(path)
        # a task holding the bytes rather than scattered data: the scheduler keeps its spec, so a copy lost with a
        # worker is made again (scattered data would be lost for good)
        key = f"forestcarbon-file-{bundle_digest(bundle)[:20]}-{uuid.uuid4().hex[:6]}"
        future = self.client.submit(file_bytes, bundle, key=key, pure=False)
        self._sent.append(future)
        return future

    def release(self, futures) -> None:
        """Forget files sent with a job (:meth:`send_file`) once the job is over, whatever its outcome.

        The scheduler would otherwise keep their bytes for as long as this executor lives.

        Parameters
        ----------
        futures : list
            What :meth:`send_file` returned.
        """
        gone = {id(f) for f in futures}
        self._sent = [f for f in self._sent if id(f) not in gone]
        with contextlib.suppress(Exception):
            self.client.cancel(list(futures), force=True)

    def check_visible(self, paths, progress: Progress | None = None) -> None:
        """Fail early, naming the file, when a worker cannot see an input.

        Parameters
        ----------
        paths : iterable of str
            The job's inputs; GDAL ``/vsi`` paths and URLs are not checked.
        progress : Progress, optional
            Cancellation.

        Raises
        ------
        ForestCarbonError
            Naming the files the workers cannot read and how to share them.
        """
        local = [str(p) for p in paths if not str(p).startswith(("/vsi", "http://", "https://", "s3://", "gs://"))]
        if not local:
            return
        self.check(progress or self.progress)
        run = TileRun(retries=0, share=0.0, label="input check", worker_wait=self.worker_wait)
        missing = next(result for _, result in run_tiles(self.client, missing_paths, [(local,)], progress, run=run))
        if missing:
            raise ForestCarbonError(
                f"The workers of {self.address} cannot read {', '.join(missing[:3])}{'…' if len(missing) > 3 else ''}: "
                "put the inputs on storage the workers share (the same path on every machine), or give them as "
                "GDAL /vsi paths or URLs (/vsis3/bucket/key.tif, /vsicurl/https://…).")

    def close(self) -> None:
        """Forget the files sent with the job and, when this executor owns the client, close it (and its
        dask-gateway cluster)."""
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
    """(runs on a worker) ``data``, a :func:`.files.model_bundle` sent with the job, as is
    (:meth:`DaskExecutor.send_file`)."""
    return data


def missing_paths(paths) -> list:
    """(runs on a worker) Those of ``paths`` (a list of str) that do not exist on this worker."""
    return [p for p in paths if not os.path.exists(p)]
