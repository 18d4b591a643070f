"""The session's long runs, listed by the jobs dock: every Forest Carbon algorithm run and every QgsTask
the plugin starts.

Three ways in:

- every run of a Forest Carbon algorithm, whoever starts it (the toolbox, a model, the Python console),
  is listed while the plugin's GUI is loaded: :class:`RunListener` hears the algorithms' run wrapper
  (``processing_provider.base.RUN_LISTENERS``) and makes a :class:`RunJob` driven by the run's
  feedback (progress, log; Cancel cancels that feedback, as the toolbox dialog's own button does);
- :func:`run_algorithm` — a Processing algorithm (``forestcarbon:predictraster``…) as a
  ``QgsProcessingAlgRunnerTask``; its log is the algorithm's feedback, its outputs the result paths.
- :func:`register_task` — any ``QgsTask`` (a remote Dask job, a derived layer…)::

      from forest_carbon_plugin.gui.jobs import register_task
      job = register_task(task, "Predict on the cluster", outputs=["/data/agb.tif"])
      job.append_log("scheduler: 4 workers")   # from any thread
      job.set_outputs([...])                    # when the paths are known only at the end

  The task's ``progressChanged``, ``taskCompleted`` and ``taskTerminated`` drive the job; by default
  it is handed to QGIS's task manager (``start=False`` when the caller already did).

Jobs stay in :func:`manager` for the session, finished or not. A job drops its task when the task
ends (QGIS deletes finished tasks), keeping only what it learned: status, progress, times, log.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from qgis.core import QgsApplication, QgsProcessingFeedback, QgsTask
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QObject, Qt, pyqtSignal

from processing_provider.base import RUN_LISTENERS

QUEUED, RUNNING, FINISHED, FAILED, CANCELLED = "queued", "running", "finished", "failed", "cancelled"
ENDED = (FINISHED, FAILED, CANCELLED)


class Job(QObject):
    """One long run: name, status, progress (0-100), times, log lines, output paths, message."""

    changed = pyqtSignal()  #: status, progress, message or outputs changed
    logged = pyqtSignal(str)  #: a log line was appended

    def __init__(self, task: QgsTask, name: str, outputs=None, parent=None):
        super().__init__(parent)
        self.task = task
        self.name = name
        self.outputs: list[str] = [str(p) for p in (outputs or [])]
        self.status = QUEUED
        self.progress = 0.0
        self.message = ""
        self.created = time.monotonic()
        self.started: float | None = None
        self.ended: float | None = None
        self.cancel_requested = False
        self._log: list[str] = []
        self._keep = None  # objects a task points to without owning them
        self._lock = threading.Lock()
        if task is not None:
            task.progressChanged.connect(self._on_progress)
            task.statusChanged.connect(self._on_status)
            task.taskCompleted.connect(lambda: self._end(FINISHED))
            task.taskTerminated.connect(lambda: self._end(CANCELLED if self.cancel_requested else FAILED))

    # -- what the dock reads -----------------------------------------------------------
    @property
    def log(self) -> list[str]:
        with self._lock:
            return list(self._log)

    @property
    def elapsed(self) -> float:
        """Seconds since the job started running (since it was registered while queued)."""
        start = self.started if self.started is not None else self.created
        return (self.ended if self.ended is not None else time.monotonic()) - start

    @property
    def running(self) -> bool:
        return self.status not in ENDED

    # -- what a task (or its owner) calls ------------------------------------------------
    def append_log(self, line: str) -> None:
        """Add a log line; safe from a worker thread (the signal is queued to the dock)."""
        with self._lock:
            self._log.append(str(line))
        self.logged.emit(str(line))

    def set_outputs(self, paths) -> None:
        self.outputs = [str(p) for p in paths]
        self.changed.emit()

    def cancel(self) -> None:
        if self.running and self.task is not None:
            self.cancel_requested = True
            self.task.cancel()
            self.append_log("Cancel requested.")

    # -- task signals (main thread) ------------------------------------------------------
    def _on_progress(self, value: float) -> None:
        self.progress = float(value)
        self.changed.emit()

    def _on_status(self, status: int) -> None:
        if status == QgsTask.TaskStatus.Running and self.status == QUEUED:
            self.status = RUNNING
            self.started = time.monotonic()
            self.changed.emit()

    def _end(self, status: str) -> None:
        if not self.running:
            return
        self.status = status
        self.ended = time.monotonic()
        if status == FINISHED:
            self.progress = 100.0
            self.outputs = [p for p in self.outputs if Path(p).exists()]
            self.message = self.message or f"Finished in {self.elapsed:.1f} s."
        elif status == CANCELLED:
            self.message = "Cancelled; no output was written."
        else:
            errors = [line for line in self.log if line.startswith("Error")]
            self.message = self.message or (errors[-1] if errors else "Failed (see the log).")
        self.task = None  # QGIS deletes ended tasks
        self._keep = None
        self.changed.emit()


class RunJob(Job):
    """A run started outside the jobs dock (the toolbox, a model, ``processing.run``), followed through
    its feedback: made by :class:`RunListener` on the UI thread when the run starts."""

    def __init__(self, name: str, feedback, parent=None):
        super().__init__(None, name, parent=parent)
        self.feedback = feedback
        self.status = RUNNING
        self.started = time.monotonic()
        self._lines_seen = 0

    def cancel(self) -> None:
        feedback = self.feedback
        if self.running and feedback is not None and not sip.isdeleted(feedback):
            self.cancel_requested = True
            feedback.cancel()
            self.append_log("Cancel requested.")

    def take_log(self, text: str) -> None:
        """The feedback's whole text log so far: the lines not yet seen are appended."""
        lines = text.splitlines()
        for line in lines[self._lines_seen:]:
            self.append_log(line)
        self._lines_seen = max(self._lines_seen, len(lines))

    def finish(self, outputs, error: str | None, cancelled: bool) -> None:
        if error is None and not cancelled:
            self.outputs = list(outputs)
            self._end(FINISHED)
        elif cancelled or self.cancel_requested:
            self._end(CANCELLED)
        else:
            self.message = f"Error: {error}"
            self._end(FAILED)
        self.feedback = None  # its owner (the dialog) deletes it


class RunListener(QObject):
    """Lists every run of a Forest Carbon algorithm as a :class:`RunJob` of ``job_manager``.

    The algorithms' run wrapper calls :meth:`started` and :meth:`ended` on the run's thread (a task's
    thread for the toolbox); they only read the feedback there and pass plain values on through
    queued signals, so the jobs are made and changed on the UI thread. Runs that the jobs manager
    started itself (a :class:`JobFeedback`) are listed already and left out."""

    _run_started = pyqtSignal(int, str, object)
    _run_progress = pyqtSignal(int, float, str)
    _run_ended = pyqtSignal(int, object, object, bool, str)

    def __init__(self, job_manager=None, parent=None):
        super().__init__(parent)
        self.manager = job_manager or manager()
        self.jobs: dict[int, RunJob] = {}
        self._watchers: dict[int, tuple] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._run_started.connect(self._on_started)
        self._run_progress.connect(self._on_progress)
        self._run_ended.connect(self._on_ended)

    def install(self) -> "RunListener":
        if self not in RUN_LISTENERS:
            RUN_LISTENERS.append(self)
        return self

    def uninstall(self) -> None:
        while self in RUN_LISTENERS:
            RUN_LISTENERS.remove(self)

    # -- the run's thread ----------------------------------------------------------------
    def started(self, alg, _parameters, feedback):
        if isinstance(feedback, JobFeedback):
            return None
        with self._lock:
            self._next += 1
            token = self._next
        if feedback is not None:
            def progress(value, token=token, feedback=feedback):
                self._run_progress.emit(token, float(value), feedback.textLog())

            # direct: the feedback's log is read on the thread that writes it
            feedback.progressChanged.connect(progress, Qt.ConnectionType.DirectConnection)
            self._watchers[token] = (feedback, progress)
        self._run_started.emit(token, alg.displayName(), feedback)
        return token

    def ended(self, token, results, error) -> None:
        if token is None:
            return
        feedback, progress = self._watchers.pop(token, (None, None))
        log, cancelled = "", False
        if feedback is not None and not sip.isdeleted(feedback):
            try:
                feedback.progressChanged.disconnect(progress)
            except (TypeError, RuntimeError):
                pass
            log, cancelled = feedback.textLog(), feedback.isCanceled()
        outputs = [v for v in (results or {}).values() if isinstance(v, str) and Path(v).is_file()]
        self._run_ended.emit(token, outputs, None if error is None else str(error), cancelled, log)

    # -- the UI thread --------------------------------------------------------------------
    def _on_started(self, token: int, name: str, feedback) -> None:
        job = RunJob(name, feedback, parent=self.manager)
        self.jobs[token] = job
        self.manager.add_job(job)

    def _on_progress(self, token: int, value: float, log: str) -> None:
        job = self.jobs.get(token)
        if job is not None and job.running:
            job.take_log(log)
            job._on_progress(value)

    def _on_ended(self, token: int, outputs, error, cancelled: bool, log: str) -> None:
        job = self.jobs.pop(token, None)
        if job is not None:
            job.take_log(log)
            job.finish(outputs, error, cancelled)


class JobFeedback(QgsProcessingFeedback):
    """A Processing feedback that copies the algorithm's messages into the job's log."""

    def __init__(self, job_log):
        super().__init__()
        self._log = job_log

    def pushInfo(self, info):  # noqa: N802
        super().pushInfo(info)
        self._log(info)

    def pushWarning(self, warning):  # noqa: N802
        super().pushWarning(warning)
        self._log(f"Warning: {warning}")

    def reportError(self, error, fatalError=False):  # noqa: N802, N803
        super().reportError(error, fatalError)
        self._log(f"Error: {error}")


class JobManager(QObject):
    """The jobs of this session, in the order they were registered."""

    jobAdded = pyqtSignal(object)  # noqa: N815 (Qt's style)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.jobs: list[Job] = []

    def add_job(self, job: Job) -> Job:
        self.jobs.append(job)
        self.jobAdded.emit(job)
        return job

    def register_task(self, task: QgsTask, name: str, outputs=None, start: bool = True) -> Job:
        job = self.add_job(Job(task, name, outputs, parent=self))
        if start:
            QgsApplication.taskManager().addTask(task)
        return job

    def run_algorithm(self, algorithm_id: str, parameters: dict, name: str | None = None, context=None) -> Job:
        """Start a Processing algorithm in the background; its outputs are the result values that are
        existing files when it finishes."""
        from qgis.core import QgsProcessingAlgRunnerTask, QgsProcessingContext, QgsProject

        algorithm = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
        if algorithm is None:
            raise ValueError(f"No Processing algorithm '{algorithm_id}' (is its provider loaded?)")
        if context is None:
            context = QgsProcessingContext()
            context.setProject(QgsProject.instance())
        holder: list[Job] = []
        feedback = JobFeedback(lambda line: holder[0].append_log(line) if holder else None)
        task = QgsProcessingAlgRunnerTask(algorithm, parameters, context, feedback)
        job = self.register_task(task, name or algorithm.displayName(), start=False)
        holder.append(job)
        # the task keeps raw pointers to these: they must live until it ends
        job._keep = (algorithm, context, feedback, task)
        task.executed.connect(lambda ok, results, job=job: self._executed(job, ok, results))
        QgsApplication.taskManager().addTask(task)
        return job

    @staticmethod
    def _executed(job: Job, ok: bool, results: dict) -> None:
        if ok:
            job.set_outputs(v for v in (results or {}).values() if isinstance(v, str) and Path(v).is_file())


_MANAGER: JobManager | None = None


def manager() -> JobManager:
    """The session's job manager (made on first use)."""
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = JobManager()
    return _MANAGER


def register_task(task: QgsTask, name: str, outputs=None, start: bool = True) -> Job:
    """List ``task`` in the jobs dock (and start it unless ``start`` is False); see the module doc."""
    return manager().register_task(task, name, outputs, start)


def run_algorithm(algorithm_id: str, parameters: dict, name: str | None = None, context=None) -> Job:
    """Run a Processing algorithm as a listed background job; see :meth:`JobManager.run_algorithm`."""
    return manager().run_algorithm(algorithm_id, parameters, name, context)
