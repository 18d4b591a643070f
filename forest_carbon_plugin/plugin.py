"""The QGIS plugin: registers the Processing provider and the plugin's menu.

``qgis_process`` calls only :meth:`initProcessing`; the desktop calls both
:meth:`initProcessing` and :meth:`initGui`. Everything graphical stays in ``initGui``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtGui import QIcon

from .core import dependencies
from .core.dependencies import missing_dependencies, missing_message
from .gui import LOG_TAG, MENU
from .gui.cluster_settings import add_menu_action
from .gui.docks import DockManager
from .gui.installer import add_install_action, push_missing_message
from .paths import ICON_SVG

# The repository keeps processing_provider/ at the top level (tests and scripts import it so); the plugin
# zip puts it inside this package and scripts/package.py makes these imports relative there, so the
# installed plugin adds no generic top-level name (nothing but the plugins folder) to sys.path.
from processing_provider.compat import QAction  # noqa: E402
from processing_provider.provider import ForestCarbonProvider  # noqa: E402

_PLUGIN_DIR = Path(__file__).resolve().parent
#: True for the installed plugin (processing_provider/ inside the package), False in the repository
INSTALLED = (_PLUGIN_DIR / "processing_provider").is_dir()


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
        use_dependency_folder()  # before any algorithm runs: the core imports its dependencies when it needs them
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
        add_menu_action(self)  # "Cluster settings…" (remote jobs); removed with self.actions in unload()
        self.docks = DockManager(self.iface, MENU)  # uncertainty explorer and jobs docks
        add_install_action(self)  # "Install dependencies…"
        if self.dependency_message:
            push_missing_message(self, self.dependency_message)

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
        if INSTALLED:
            forget_modules()


def use_dependency_folder() -> Path:
    """Append the profile's Forest Carbon package folder to sys.path (after QGIS's) and tell the core about it."""
    folder = dependencies.deps_dir(QgsApplication.qgisSettingsDirPath())
    dependencies.configure_install_target(folder)
    dependencies.add_deps_dir(folder)
    return folder


def forget_modules() -> list:
    """Drop every module of the installed plugin from sys.modules, so that loading it again (QGIS's plugin
    reloader, qgis.utils.reloadPlugin) runs the files on disk. QGIS forgets only the modules its import hook
    saw, which misses those imported relatively or through importlib.

    Not done from the repository: there the test session imports the core once for all its tests, and
    dropping it would give later imports new classes that the earlier ``except`` clauses do not catch."""
    package = __name__.rpartition(".")[0]
    names = [name for name in sys.modules if name == package or name.startswith(package + ".")]
    for name in names:
        del sys.modules[name]
    return names
