"""The worker pool (core/parallel/pool.py) on real processes: results in order and equal to this process's,
errors and dead workers reported, cancel within a second, workers that cannot start leave the work to
this process, and no worker outlives its pool. No QGIS needed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from forest_carbon_plugin.core import dependencies
from forest_carbon_plugin.core.parallel import pool as workerpool
from forest_carbon_plugin.core.errors import Cancelled, ForestCarbonError
from tests import worker_tasks


class Recorder:
    """Progress that records what the core reports and cancels when told to."""

    def __init__(self):
        self.percents, self.warnings = [], []
        self.cancelled = threading.Event()

    def set_progress(self, percent):
        self.percents.append(percent)

    def is_canceled(self):
        return self.cancelled.is_set()

    def info(self, message):
        pass

    def warning(self, message):
        self.warnings.append(message)


def pool_workers():
    return [p for p in psutil.Process().children(recursive=True)
            if workerpool.__name__ in " ".join(_cmdline(p))]


def _cmdline(process):
    with contextlib.suppress(psutil.Error):
        return process.cmdline()
    return []


def shim(folder: Path, body: str) -> Path:
    """An executable ``python3`` script in ``folder`` (what pyenv, conda and venvs put first on PATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "python3"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def worker_python(monkeypatch):
    """Point the pool at another interpreter for one test (the lookup is cached per process)."""
    def use(python):
        monkeypatch.setattr(dependencies, "matching_python", lambda: python)
    return use


def test_results_in_order_equal_this_process():
    args = [(seed, 20_000 + 1_000 * seed) for seed in range(9)]
    expected = [worker_tasks.square_sum(*a)[:2] for a in args]
    progress = Recorder()
    results = list(workerpool.imap(worker_tasks.square_sum, args, 3, progress, share=50.0))
    assert [r[:2] for r in results] == expected  # same floats, bit for bit, in task order
    pids = {r[2] for r in results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 3
    assert progress.percents[-1] == 50.0 and progress.percents == sorted(progress.percents)
    assert progress.warnings == []
    assert pool_workers() == []


def test_task_error_is_raised_with_its_message_and_workers_are_reaped():
    with pytest.raises(ForestCarbonError, match="tile 5 is broken") as excinfo:
        list(workerpool.imap(worker_tasks.fail_on, [(i, 5) for i in range(8)], 2))
    assert "fail_on" in str(excinfo.value.__cause__)  # the worker's traceback
    assert pool_workers() == []


def test_dead_worker_fails_clearly_and_returns():
    start = time.monotonic()
    with pytest.raises(ForestCarbonError) as excinfo:
        list(workerpool.imap(worker_tasks.die_on, [(i, 3) for i in range(6)], 2))
    message = str(excinfo.value)
    assert "stopped unexpectedly on tile 4" in message and "signal 9" in message and "MAX_WORKERS = 1" in message
    assert time.monotonic() - start < 30
    assert pool_workers() == []


def test_cancel_kills_busy_workers_within_a_second():
    progress = Recorder()
    threading.Timer(1.0, progress.cancelled.set).start()
    start = time.monotonic()
    with pytest.raises(Cancelled):
        list(workerpool.imap(worker_tasks.sleep_then, [(i, 60.0) for i in range(4)], 2, progress))
    assert time.monotonic() - start < 3.0  # 1 s, then at most a poll and the kill
    assert pool_workers() == []


def test_cancel_between_results_that_are_ready():
    """The caller's work on each result can be long: cancel is checked before every result."""
    progress = Recorder()
    seen = []
    with pytest.raises(Cancelled):
        for value in workerpool.imap(worker_tasks.sleep_then, [(i, 0.0) for i in range(20)], 2, progress):
            seen.append(value)
            if value == 2:
                progress.cancelled.set()
    assert seen == [0, 1, 2]
    assert pool_workers() == []


def test_closing_early_stops_the_workers():
    with contextlib.closing(workerpool.imap(worker_tasks.sleep_then, [(i, 0.5) for i in range(8)], 2)) as results:
        assert next(results) == 0
        assert len(pool_workers()) == 2
    assert pool_workers() == []


def test_workers_that_cannot_start_leave_the_tiles_to_this_process(tmp_path, worker_python):
    worker_python(str(shim(tmp_path / "bin", "exit 1")))
    progress = Recorder()
    args = [(seed, 5_000) for seed in range(5)]
    results = list(workerpool.imap(worker_tasks.square_sum, args, 2, progress))
    assert results == [worker_tasks.square_sum(*a) for a in args]
    assert {r[2] for r in results} == {os.getpid()}
    assert len(progress.warnings) == 1 and "could not start" in progress.warnings[0]
    assert pool_workers() == []


def test_no_matching_python_runs_here_with_a_warning(worker_python):
    worker_python(None)
    progress = Recorder()
    assert list(workerpool.imap(worker_tasks.fail_on, [(i, -1) for i in range(3)], 2, progress)) == [0, 1, 2]
    assert "No Python" in progress.warnings[0]


def test_a_python_of_another_build_is_not_used(tmp_path):
    """What a pyenv/conda ``python3`` first on PATH gives the embedded interpreter as ``sys.executable``."""
    other = Path("/root/.pyenv/versions/3.11.7/bin/python3")
    body = f'exec {other} "$@"' if other.exists() else 'exec /usr/bin/python3 -c "import sys; print(0); print(0)"'
    fake = shim(tmp_path / "shims", body)
    dependencies.matching_python.cache_clear()
    saved = sys.executable, getattr(sys, "_base_executable", None)
    try:
        sys.executable = sys._base_executable = str(fake)
        found = dependencies.matching_python()
    finally:
        sys.executable, sys._base_executable = saved
        dependencies.matching_python.cache_clear()
    assert found is not None and found != str(fake)
    assert dependencies._runs_this_python(found, Path(os.__file__).resolve().parent)
    assert not dependencies._runs_this_python(str(fake), Path(os.__file__).resolve().parent)


def test_a_worker_python_that_cannot_import_numpy_is_refused(tmp_path, worker_python):
    other = Path("/root/.pyenv/versions/3.11.7/bin/python3")
    if not other.exists():
        pytest.skip(f"{other} is absent: no Python of another build to start workers with")
    # the 3.11.7 of pyenv given this process's sys.path loads Debian's numpy, built for another Python
    worker_python(str(other))
    progress = Recorder()
    assert list(workerpool.imap(worker_tasks.fail_on, [(i, -1) for i in range(3)], 2, progress)) == [0, 1, 2]
    assert "could not start" in progress.warnings[0]
    assert pool_workers() == []


def test_spawned_processes_do_not_rerun_a_script_without_main_guard(tmp_path):
    """What Dask's LocalCluster does (multiprocessing spawn) from a script with top-level code."""
    script = tmp_path / "analysis.py"
    script.write_text(
        "import multiprocessing, os, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from forest_carbon_plugin.core.parallel.pool import main_hidden\n"
        "print('TOP-LEVEL CODE', flush=True)\n"
        "ctx = multiprocessing.get_context('spawn')\n"
        "hide = main_hidden() if sys.argv[1] == 'hidden' else __import__('contextlib').nullcontext()\n"
        "with hide:\n"
        "    process = ctx.Process(target=os.getpid)\n"
        "    process.start()\n"
        "process.join(60)\n"
        "print('EXIT', process.exitcode, __file__ == sys.argv[0], flush=True)\n")
    for mode, runs in (("hidden", 1), ("plain", 2)):  # plain: the child re-runs the script (the bug)
        proc = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=120)
        assert proc.stdout.count("TOP-LEVEL CODE") == runs, proc.stdout + proc.stderr
        if mode == "hidden":
            assert proc.returncode == 0 and "EXIT 0 True" in proc.stdout, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- threads and defaults

def test_thread_map_yields_every_item_once_and_in_order_with_one_thread():
    items = list(range(50))
    one = list(workerpool.thread_map(lambda i: i * i, items, 1))
    assert one == [(i, i * i) for i in items]
    many = list(workerpool.thread_map(lambda i: i * i, iter(items), 4))
    assert sorted(many) == one


def test_thread_map_stops_on_cancel_and_leaves_the_rest_unstarted():
    progress, started = Recorder(), []

    def slow(i):
        started.append(i)
        if i == 3:
            progress.cancelled.set()
        time.sleep(0.05)
        return i

    with pytest.raises(Cancelled):
        for _ in workerpool.thread_map(slow, range(1000), 2, progress):
            pass
    assert len(started) < 20  # at most 2 × workers in flight past the cancel


def test_default_workers_is_what_was_asked_or_the_cores_up_to_the_cap():
    assert workerpool.default_workers(3) == 3
    assert workerpool.default_workers(None) == max(1, min(workerpool.MAX_DEFAULT_WORKERS, os.cpu_count() or 1))
