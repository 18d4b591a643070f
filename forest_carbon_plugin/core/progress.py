"""How long-running core functions report progress and learn of cancellation.

A tiny protocol so that the core never sees QGIS: Processing adapters wrap their
``QgsProcessingFeedback``, the Dask executor its futures, tests a plain recorder.
"""

from __future__ import annotations

from typing import Protocol

from .errors import Cancelled


class Progress(Protocol):
    def set_progress(self, percent: float) -> None: ...

    def is_canceled(self) -> bool: ...

    def info(self, message: str) -> None: ...

    def warning(self, message: str) -> None: ...


class NullProgress:
    """Progress that goes nowhere; warnings are kept so that callers can read them."""

    def __init__(self):
        self.warnings: list[str] = []

    def set_progress(self, percent: float) -> None:
        pass

    def is_canceled(self) -> bool:
        return False

    def info(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        self.warnings.append(message)


def check_cancel(progress: Progress | None) -> None:
    """Raise :class:`Cancelled` when the user asked to stop."""
    if progress is not None and progress.is_canceled():
        raise Cancelled()
