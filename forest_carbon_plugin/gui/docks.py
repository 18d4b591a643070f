"""The plugin's docks: menu actions that show them, and their clean removal at unload."""

from __future__ import annotations

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon

from processing_provider.compat import QAction

from ..paths import ICON_SVG
from .jobs import RunListener
from .jobs_dock import JobsDock
from .uncertainty_dock import UncertaintyDock


class DockManager:
    """Adds *Uncertainty explorer…* and *Jobs…* to ``menu``; each dock is made the first time it is
    shown. From the start every Forest Carbon run of the session, toolbox runs included, is listed
    (:class:`jobs.RunListener`), whether the jobs dock is open or not. :meth:`unload` removes the actions,
    the docks, the docks' map tool and connections, and the listener."""

    def __init__(self, iface, menu: str):
        self.iface = iface
        self.menu = menu
        self.uncertainty_dock = None
        self.jobs_dock = None
        self.run_listener = RunListener().install()
        self.actions = [self._action("Uncertainty explorer…", "forestcarbon_show_uncertainty_dock",
                                     self.show_uncertainty_dock),
                        self._action("Jobs…", "forestcarbon_show_jobs_dock", self.show_jobs_dock)]

    def _action(self, text: str, name: str, slot) -> QAction:
        action = QAction(QIcon(str(ICON_SVG)), text, self.iface.mainWindow())
        action.setObjectName(name)
        action.triggered.connect(lambda _checked=False: slot())
        self.iface.addPluginToMenu(self.menu, action)
        return action

    def show_uncertainty_dock(self):
        if self.uncertainty_dock is None:
            self.uncertainty_dock = UncertaintyDock(self.iface, self.iface.mainWindow())
            self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.uncertainty_dock)
        self._raise(self.uncertainty_dock)
        return self.uncertainty_dock

    def show_jobs_dock(self):
        if self.jobs_dock is None:
            self.jobs_dock = JobsDock(self.iface.mainWindow())
            self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.jobs_dock)
        self._raise(self.jobs_dock)
        return self.jobs_dock

    @staticmethod
    def _raise(dock) -> None:
        dock.show()
        dock.raise_()

    def unload(self) -> None:
        if self.run_listener is not None:
            self.run_listener.uninstall()
            self.run_listener.deleteLater()
            self.run_listener = None
        for dock in (self.uncertainty_dock, self.jobs_dock):
            if dock is not None:
                dock.teardown()
                self.iface.removeDockWidget(dock)
                dock.setParent(None)
                dock.deleteLater()
        self.uncertainty_dock = self.jobs_dock = None
        for action in self.actions:
            self.iface.removePluginMenu(self.menu, action)
            action.setParent(None)
            action.deleteLater()
        self.actions = []
