"""The work of one job on this machine: worker processes for tile tasks (:func:`imap`), threads for raster
blocks (:func:`thread_map`), and how many of either by default (:func:`default_workers`).

Worker processes are the one pool every algorithm with ``MAX_WORKERS`` uses.

Workers are plain subprocesses of the Python this process runs (:func:`.dependencies.matching_python`:
never the QGIS binary nor a ``python3`` shim found on PATH), started as
``python -I -S -c BOOT forest_carbon_plugin.core.parallel.pool``. They receive the caller's ``sys.path`` and
then length-prefixed pickles of ``(function, args, kwargs)`` on stdin, and send pickled results back on
their stdout. Unlike ``multiprocessing``'s spawn they never import the caller's ``__main__`` (a
standalone script without a main guard would run again in every worker) and leave no feeder or
manager thread behind: when the pool closes, every worker is killed or has exited and is reaped.

:func:`imap` yields results in task order, keeps at most ``2 × workers`` tasks in flight and checks
for cancel every 0.2 s. Workers that cannot start leave the tasks to this process (with a warning);
a worker that dies on a task fails the run with a message saying so.

:func:`thread_map` is for work that releases the GIL (GDAL reads and writes, numpy, ONNX Runtime):
threads share the open datasets and need no pickling.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import os
import pickle
import queue
import subprocess
import sys
import tempfile
import threading
import traceback
from collections import deque

from .. import dependencies
from ..errors import ForestCarbonError
from ..progress import Progress, check_cancel

#: what a worker runs: take the caller's sys.path, then serve tasks from this module
BOOT = "import pickle, sys; sys.path[:] = pickle.load(sys.stdin.buffer); __import__(sys.argv[1], fromlist=['_']).serve()"
POLL_S = 0.2  # how often cancel is checked while waiting on workers
_HEADER = 8
#: the default number of workers is the number of cores, at most this: beyond it, threads and worker
#: processes mostly contend for memory bandwidth, and each holds a block or a tile in memory
MAX_DEFAULT_WORKERS = 8


def default_workers(max_workers: int | None = None) -> int:
    """How many threads or worker processes a job uses.

    Parameters
    ----------
    max_workers : int or None
        What the caller asked for; None or 0 for the default.

    Returns
    -------
    int
        ``max_workers`` (at least 1), or by default the number of cores, at most :data:`MAX_DEFAULT_WORKERS`.
    """
    if max_workers:
        return max(1, int(max_workers))
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


def _send(stream, data: bytes) -> None:
    stream.write(len(data).to_bytes(_HEADER, "little"))
    stream.write(data)
    stream.flush()


def _receive(stream) -> bytes:
    header = stream.read(_HEADER)
    if len(header) < _HEADER:
        raise EOFError
    size = int.from_bytes(header, "little")
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return data


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker (the ``__cause__`` of the re-raised error)."""

    def __str__(self):
        return self.args[0]


def serve() -> None:
    """A worker's loop: run each task received on stdin, send ``(ok, result or exception)`` on stdout.

    Runs in the worker processes (:data:`BOOT`); returns when the caller closes the pool or is gone.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the caller, which then stops the workers
    results = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever tasks print goes to the log, not into the result stream
    sys.stdout = sys.stderr
    tasks = sys.stdin.buffer
    try:
        import numpy  # noqa: F401 (every task needs it: a Python that cannot import it must not start)
    except BaseException:  # noqa: BLE001
        _send(results, pickle.dumps(("failed", traceback.format_exc())))
        return
    _send(results, pickle.dumps(("ready", os.getpid())))
    while True:
        try:
            data = _receive(tasks)
        except (EOFError, OSError):
            return  # the caller closed the pool, or is gone
        try:
            function, args, kwargs = pickle.loads(data)
            reply = ("done", True, function(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001
            reply = ("done", False, (exc, traceback.format_exc()))
        try:
            payload = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001
            error = reply[2][1] if not reply[1] else traceback.format_exc()
            payload = pickle.dumps(("done", False, (RuntimeError(f"A worker's result cannot be sent back:\n{error}"),
                                                    error)))
        _send(results, payload)


class _Worker:
    def __init__(self, python: str, events: queue.Queue):
        self.log = tempfile.TemporaryFile()
        self.ready = False
        self.task = None  # index of the task it runs
        self.proc = subprocess.Popen(
            [python, "-I", "-S", "-c", BOOT, __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log, close_fds=True, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        self.reader = threading.Thread(target=self._read, args=(events,), daemon=True,
                                       name="forest-carbon-worker-reader")
        self.reader.start()
        with contextlib.suppress(OSError):  # a worker that died at once is reported by its reader
            pickle.dump(list(sys.path), self.proc.stdin)
            self.proc.stdin.flush()

    def _read(self, events):
        try:
            while True:
                events.put((self, _receive(self.proc.stdout)))
        except (EOFError, OSError, ValueError):
            events.put((self, None))

    def send(self, index, function, args, kwargs) -> None:
        self.task = index
        _send(self.proc.stdin, pickle.dumps((function, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL))

    def describe_death(self) -> str:
        """Exit status and the end of the worker's log, for a message."""
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self.log.seek(0)
        tail = self.log.read().decode("utf-8", "replace").strip()[-1500:]
        status = "still running" if code is None else \
            f"killed by signal {-code}" + (" (out of memory?)" if code == -9 else "") if code < 0 else f"exit code {code}"
        return status + (f"; its last words:\n{tail}" if tail else "")

    def stop(self, kill: bool) -> None:
        """End the worker (kill it, or let it finish on the end of its task stream) and reap it."""
        if not kill:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        if self.proc.returncode is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        self.reader.join(timeout=2)
        self.log.close()


class _Pool:
    """Started workers, the tasks they run, and what their readers report."""

    def __init__(self, python: str, size: int):
        self.events: queue.Queue = queue.Queue()
        self.workers: list = []
        self.idle: deque = deque()
        self.failures: list = []  # why workers could not start
        try:
            for _ in range(size):
                self.workers.append(_Worker(python, self.events))
        except BaseException:
            self.close(kill=True)
            raise

    def dispatch(self, task, args_list, kwargs, submitted: int, limit: int) -> int:
        """Give idle workers the tasks from ``submitted`` on, below ``limit``; the next task to give."""
        while self.idle and submitted < min(limit, len(args_list)):
            worker = self.idle.popleft()
            try:
                worker.send(submitted, task, args_list[submitted], kwargs)
            except OSError:
                pass  # it died: its reader reports that
            submitted += 1
        return submitted

    def wait(self, timeout: float):
        """The next ``(task index, (ok, result))`` that came back, or None (nothing yet, or a worker left)."""
        try:
            worker, data = self.events.get(timeout=timeout)
        except queue.Empty:
            return None
        if worker not in self.workers:
            return None  # the end of the stream of a worker already given up
        message = pickle.loads(data) if data is not None else ("died",)
        if message[0] == "ready":
            worker.ready = True
            self.idle.append(worker)
            return None
        if message[0] == "done":
            index, worker.task = worker.task, None
            self.idle.append(worker)
            return index, message[1:]
        if worker.task is not None:
            raise ForestCarbonError(
                f"A worker process stopped unexpectedly on tile {worker.task + 1} ({worker.describe_death()}). "
                "Run again in this process (max_workers = 1; MAX_WORKERS = 1 in the Processing algorithms); if that "
                "fails too, the message will name the problem.")
        # it could not start ("failed": its Python cannot import the core), or died idle
        self.failures.append(message[1] if message[0] == "failed" else worker.describe_death())
        if worker in self.idle:
            self.idle.remove(worker)
        self.workers.remove(worker)
        worker.stop(kill=True)
        return None

    def close(self, kill: bool) -> None:
        for worker in self.workers:
            worker.stop(kill)
        self.workers.clear()


def _in_process(task, args_list, start, kwargs, progress, share):
    total = len(args_list)
    for i in range(start, total):
        check_cancel(progress)
        yield task(*args_list[i], **kwargs)
        _advance(progress, share, i, total)


def _advance(progress, share, i, total):
    if progress is not None:
        progress.set_progress(share * (i + 1) / total)


def _value(outcome):
    ok, value = outcome
    if not ok:
        exc, text = value
        raise exc from RemoteTraceback(text)
    return value


def imap(task, args_list, max_workers: int = 1, progress: Progress | None = None, share: float = 100.0,
         kwargs: dict | None = None):
    """Run ``task(*args, **kwargs)`` for each ``args`` of ``args_list`` in up to ``max_workers`` worker processes.

    ``task`` must be a module-level function of an importable module (not of ``__main__``). Close the
    generator (``contextlib.closing``) when the loop over it can stop early: its ``finally`` stops the workers.

    Parameters
    ----------
    task : callable
        The task.
    args_list : iterable of tuple
        The positional arguments of each task.
    max_workers : int
        Worker processes (1: in this process).
    progress : Progress, optional
        Progress (up to ``share`` %), warnings, and cancellation (checked every :data:`POLL_S` seconds).
    share : float
        The share of the progress bar the tasks fill.
    kwargs : dict, optional
        Keyword arguments of every task.

    Yields
    ------
    object
        The results, in task order.
    """
    kwargs = kwargs or {}
    args_list = list(args_list)
    total = len(args_list)
    if max_workers <= 1 or total <= 1:
        yield from _in_process(task, args_list, 0, kwargs, progress, share)
        return
    python = dependencies.matching_python()
    if python is None:
        _warn(progress, f"No Python {sys.version.split()[0]} interpreter matching this QGIS was found to start "
                        "worker processes with: the tiles run one after the other in this process.")
        yield from _in_process(task, args_list, 0, kwargs, progress, share)
        return
    pool = _Pool(python, min(max_workers, total))
    size = len(pool.workers)
    kill = True
    try:
        done: dict = {}
        submitted = i = 0
        while i < total:
            check_cancel(progress)  # also between results that are ready: the caller's work on each can be long
            if i in done:
                yield _value(done.pop(i))
                _advance(progress, share, i, total)
                i += 1
                continue
            if not pool.workers:
                last = pool.failures[-1].strip().splitlines()[-1] if pool.failures else "?"
                _warn(progress, f"Worker processes could not start ({last}): the remaining tiles run in this "
                                "process.")
                break
            submitted = pool.dispatch(task, args_list, kwargs, submitted, i + 2 * size)
            finished = pool.wait(POLL_S)
            if finished is not None:
                done[finished[0]] = finished[1]
        kill = False
    finally:
        pool.close(kill)
    # only when every worker failed to start: the tasks no worker took run here
    yield from _in_process(task, args_list, submitted, kwargs, progress, share)


def thread_map(function, items, workers: int = 1, progress: Progress | None = None):
    """Yield ``(item, function(item))`` for each of ``items`` as it finishes, computed in ``workers`` threads.

    Parameters
    ----------
    function : callable
        Called with one item; it should release the GIL (GDAL I/O, numpy) for threads to help.
    items : iterable
        Read lazily: at most ``2 × workers`` items are in flight, so memory holds a few results at a time.
    workers : int
        Threads; 1 runs each item in this thread, in order.
    progress : Progress, optional
        Checked for cancel between results (:class:`.errors.Cancelled` then stops the loop).

    Yields
    ------
    tuple
        ``(item, result)``, in the order the items finish (in order with one worker). Items not yet started
        when the loop stops (cancel, an error, or the caller closing the generator) are never run.
    """
    pending = iter(items)
    if workers <= 1:
        for item in pending:
            check_cancel(progress)
            yield item, function(item)
        return
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fc-block") as pool:
        running = {pool.submit(function, item): item for item in itertools.islice(pending, 2 * workers)}
        try:
            while running:
                check_cancel(progress)
                finished, _ = cf.wait(running, timeout=POLL_S, return_when=cf.FIRST_COMPLETED)
                for future in finished:
                    yield running.pop(future), future.result()
                for item in itertools.islice(pending, len(finished)):
                    running[pool.submit(function, item)] = item
        finally:
            for future in running:
                future.cancel()


@contextlib.contextmanager
def main_hidden():
    """Start ``multiprocessing`` spawn processes inside without them importing the caller's ``__main__``.

    Dask's LocalCluster spawns its workers so; a standalone script without a main guard would otherwise run
    again in each of them.

    Returns
    -------
    contextmanager
        ``__main__``'s ``__file__`` and ``__spec__`` are hidden inside and put back on exit.
    """
    main = sys.modules.get("__main__")
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if main is not None and name in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__spec__ = None
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)
            if "__spec__" not in saved:
                main.__dict__.pop("__spec__", None)


def _warn(progress, message):
    if progress is not None:
        progress.warning(message)
