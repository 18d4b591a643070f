"""The QGIS plugin: registers the Processing provider and the plugin's menu.

``qgis_process`` calls only :meth:`initProcessing`; the desktop calls both
:meth:`initProcessing` and :meth:`initGui`. Everything graphical stays in ``initGui``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtGui import QIcon

from .core.dependencies import missing_dependencies, missing_message
from .paths import ICON_SVG

# In the plugin zip, processing_provider/ is copied inside the plugin folder; in the
# repository it sits beside the package. Either way it is imported by one absolute name.
_PLUGIN_DIR = Path(__file__).resolve().parent
if (_PLUGIN_DIR / "processing_provider").is_dir() and str(_PLUGIN_DIR) not in sys.path:
    sys.path.insert(0, str(_PLUGIN_DIR))

from processing_provider.compat import QAction  # noqa: E402 (found through the path set just above)

MENU = "&Forest Carbon"
LOG_TAG = "Forest Carbon"


class ForestCarbonPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.actions: list[QAction] = []
        self.dependency_message: str | None = None

    # -- Processing -----------------------------------------------------------------
    def initProcessing(self):  # noqa: N802
        if self.provider is not None:
            return
        from processing_provider.provider import ForestCarbonProvider

        self.provider = ForestCarbonProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)
        missing = missing_dependencies()
        if missing:
            self.dependency_message = missing_message(missing)
            QgsMessageLog.logMessage(self.dependency_message, LOG_TAG, Qgis.MessageLevel.Warning)

    # -- Desktop ----------------------------------------------------------------------
    def initGui(self):  # noqa: N802
        self.initProcessing()
        self._add_action("Describe LAS/LAZ files…", "forestcarbon:lidarinfo")
        self._add_action("Describe an ONNX model…", "forestcarbon:modelinfo")
        from .gui.cluster_settings import add_menu_action

        add_menu_action(self)  # "Cluster settings…" (remote jobs); removed with self.actions in unload()
        from .gui.docks import DockManager

        self.docks = DockManager(self.iface, MENU)  # uncertainty explorer and jobs docks
        if self.dependency_message:
            self.iface.messageBar().pushMessage(
                "Forest Carbon", self.dependency_message, level=Qgis.MessageLevel.Warning, duration=0)

    def _add_action(self, text: str, algorithm_id: str) -> QAction:
        action = QAction(QIcon(str(ICON_SVG)), text, self.iface.mainWindow())
        action.setObjectName(f"forestcarbon_{algorithm_id.split(':')[1]}")
        action.triggered.connect(lambda _checked=False, alg=algorithm_id: self._open_dialog(alg))
        self.iface.addPluginToMenu(MENU, action)
        self.actions.append(action)
        return action

    @staticmethod
    def _open_dialog(algorithm_id: str):
        import processing

        processing.execAlgorithmDialog(algorithm_id)

    def unload(self):
        if getattr(self, "docks", None) is not None:
            self.docks.unload()  # docks, their map tool and signal connections
            self.docks = None
        for action in self.actions:
            self.iface.removePluginMenu(MENU, action)
            action.setParent(None)  # no longer a child of the main window
            action.deleteLater()
        self.actions = []
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
