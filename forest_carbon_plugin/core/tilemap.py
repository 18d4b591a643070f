"""Run one task per catalog tile, in this process or in worker processes (``MAX_WORKERS``).

Results come back in tile order (writers append tiles in order, so outputs do not depend on
the number of workers). At most ``2 × workers`` tasks are in flight, so memory is bounded by
a few tiles' results. Workers are spawned with the Python QGIS runs and import only the core;
cancellation terminates them.
"""

from __future__ import annotations

import contextlib
import contextvars
from concurrent.futures import ProcessPoolExecutor, TimeoutError
from concurrent.futures.process import BrokenProcessPool

from .errors import Cancelled, ForestCarbonError
from .progress import Progress, check_cancel


_EXECUTOR: contextvars.ContextVar = contextvars.ContextVar("forest_carbon_executor", default=None)


@contextlib.contextmanager
def executor_scope(executor):
    """Run the core functions called inside on ``executor`` (a :class:`.cluster.DaskExecutor`; None: here)."""
    token = _EXECUTOR.set(executor)
    try:
        yield executor
    finally:
        _EXECUTOR.reset(token)


def current_executor():
    """The remote executor of the enclosing :func:`executor_scope`, or None (run here)."""
    return _EXECUTOR.get()


def map_tiles(task, args_list: list, max_workers: int = 1, progress: Progress | None = None, share: float = 90.0):
    """Yield ``task(*args)`` for each ``args`` of ``args_list``, in order; progress up to ``share`` %.

    Inside :func:`executor_scope` the same tasks run on that executor (a Dask cluster), results still in order.
    """
    from .canopy_metrics import _spawn_context, _terminate

    executor = current_executor()
    if executor is not None:
        yield from executor.map(task, list(args_list), progress, share)
        return
    total = len(args_list)
    if max_workers <= 1 or total <= 1:
        for i, args in enumerate(args_list):
            check_cancel(progress)
            yield task(*args)
            if progress is not None:
                progress.set_progress(share * (i + 1) / total)
        return
    with ProcessPoolExecutor(max_workers=max_workers, mp_context=_spawn_context()) as pool:
        futures = {}
        submitted = 0
        try:
            for i in range(total):
                while submitted < total and submitted < i + 2 * max_workers:
                    futures[submitted] = pool.submit(task, *args_list[submitted])
                    submitted += 1
                future = futures.pop(i)
                while True:
                    try:
                        result = future.result(timeout=0.2)
                        break
                    except TimeoutError:
                        if progress is not None and progress.is_canceled():
                            raise Cancelled()
                yield result
                if progress is not None:
                    progress.set_progress(share * (i + 1) / total)
        except BrokenProcessPool as exc:
            _terminate(pool)
            raise ForestCarbonError(f"A worker process stopped unexpectedly ({exc}). Run again with MAX_WORKERS = 1; "
                                    "if that fails too, the message will name the problem.") from exc
        except BaseException:
            for f in futures.values():
                f.cancel()
            _terminate(pool)
            raise
