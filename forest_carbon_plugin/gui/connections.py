"""A record of the signal connections a widget makes to objects that outlive it."""

from __future__ import annotations

import contextlib


class Connections:
    """Connect through :meth:`connect` and undo them all with :meth:`disconnect_all`.

    Qt drops a connection when its receiver QObject dies, but not one whose slot is a lambda or a
    method of a plain Python object, and a dock may be unloaded while the canvas, the project and
    the job manager live on: so every connection to them goes through here.
    """

    def __init__(self):
        self._made: list = []

    def connect(self, signal, slot) -> None:
        signal.connect(slot)
        self._made.append((signal, slot))

    def disconnect_all(self) -> None:
        while self._made:
            signal, slot = self._made.pop()
            with contextlib.suppress(TypeError, RuntimeError):  # already gone with its sender
                signal.disconnect(slot)

    def __len__(self) -> int:
        return len(self._made)
