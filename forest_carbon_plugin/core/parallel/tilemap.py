"""Run one task per catalog tile, in this process or in worker processes (``MAX_WORKERS``).

Results come back in tile order (writers append tiles in order, so outputs do not depend on
the number of workers). At most ``2 × workers`` tasks are in flight, so memory is bounded by
a few tiles' results. The worker processes are those of :mod:`.pool`.
"""

from __future__ import annotations

import contextlib
import contextvars

from ..progress import Progress
from .pool import imap


_EXECUTOR: contextvars.ContextVar = contextvars.ContextVar("forest_carbon_executor", default=None)


@contextlib.contextmanager
def executor_scope(executor):
    """Run the core functions called inside on ``executor``.

    Parameters
    ----------
    executor : DaskExecutor or None
        A :class:`.dask.DaskExecutor`; None runs here.

    Returns
    -------
    contextmanager
        Yields ``executor``.
    """
    token = _EXECUTOR.set(executor)
    try:
        yield executor
    finally:
        _EXECUTOR.reset(token)


def current_executor():
    """The remote executor of the enclosing :func:`executor_scope`.

    Returns
    -------
    DaskExecutor or None
        None: run here.
    """
    return _EXECUTOR.get()


def map_tiles(task, args_list: list, max_workers: int = 1, progress: Progress | None = None, share: float = 90.0,
              kwargs: dict | None = None):
    """Run one task per tile, here or on the executor of the enclosing :func:`executor_scope`.

    Here the tasks run in ``max_workers`` worker processes (:func:`.pool.imap`; 1: in this process); inside
    :func:`executor_scope` on that executor (a Dask cluster). Close the generator (``contextlib.closing``)
    when the loop over it can stop early.

    Parameters
    ----------
    task, args_list, max_workers, progress, share, kwargs
        As for :func:`.pool.imap` (``max_workers`` counts only here, not on a cluster).

    Yields
    ------
    object
        ``task(*args, **kwargs)`` for each ``args``, in order.
    """
    executor = current_executor()
    if executor is not None:
        yield from executor.map(task, list(args_list), progress, share, kwargs=kwargs)
        return
    yield from imap(task, args_list, max_workers, progress, share, kwargs)
