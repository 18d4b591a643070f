"""A QgsTask that runs one Python function off the UI thread and reports back on it."""

from __future__ import annotations

import time

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal


class FunctionTask(QgsTask):
    """Runs ``function(task)`` in QGIS's task manager; the function may call ``task.isCanceled()``
    and ``task.setProgress()``. ``done(task, result, error)`` is emitted on the UI thread when it
    ends: ``result`` None and ``error`` the exception when it raised, both None when cancelled."""

    done = pyqtSignal(object, object, object)

    def __init__(self, description: str, function):
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.function = function
        self.result = None
        self.error: BaseException | None = None
        self.ran: tuple[float, float] | None = None  #: perf_counter() when run() began and ended

    def run(self) -> bool:
        began = time.perf_counter()
        try:
            self.result = self.function(self)
        except Exception as exc:  # noqa: BLE001 - reported through done(), on the UI thread
            self.error = exc
            return False
        finally:
            self.ran = (began, time.perf_counter())
        return not self.isCanceled()

    def finished(self, ok: bool) -> None:
        self.done.emit(self, self.result if ok else None, self.error)
