"""*Install dependencies…*: pip into the profile's Forest Carbon folder, from QGIS, without freezing it.

The work is :func:`forest_carbon_plugin.core.dependencies.install_dependencies` (the same function the
tests run in a fresh QGIS profile); here it runs in a ``QgsTask`` and the dialog shows pip's log as it
comes, the folder it writes to and the command that does the same from a terminal.
"""

from __future__ import annotations

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtGui import QGuiApplication
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
)

from processing_provider.compat import QAction

from ..core import dependencies
from ..core.errors import Cancelled
from . import LOG_TAG, MENU


class InstallTask(QgsTask):
    """Runs the installer off the main thread; pip's lines arrive through :attr:`line`."""

    line = pyqtSignal(str)

    def __init__(self, deps, target):
        super().__init__("Forest Carbon: install dependencies", QgsTask.Flag.CanCancel)
        self.deps, self.target = list(deps), target
        self.error: str | None = None
        self.plan = None

    def run(self):
        try:
            self.plan = dependencies.install_dependencies(self.deps, self.target, log=self.line.emit,
                                                          cancelled=self.isCanceled)
        except Cancelled as exc:
            self.error = str(exc)
            return False
        except Exception as exc:  # noqa: BLE001 (shown in the dialog; the task must not die silently)
            self.error = str(exc)
            return False
        return True


class InstallDialog(QDialog):
    def __init__(self, plugin=None, parent=None):
        super().__init__(parent)
        self.plugin = plugin
        self.task: InstallTask | None = None
        self.setObjectName("forestcarbon_install_dialog")
        self.setWindowTitle("Forest Carbon — install dependencies")
        self.resize(720, 460)
        self.target = dependencies.deps_dir(QgsApplication.qgisSettingsDirPath())
        self.missing = dependencies.missing_dependencies()
        layout = QVBoxLayout(self)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        layout.addWidget(QLabel("Or run this in a terminal (Windows: the OSGeo4W Shell), then restart QGIS:"))
        row = QHBoxLayout()
        self.command = QLineEdit()
        self.command.setReadOnly(True)
        copy = QPushButton("Copy")
        copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(self.command.text()))
        row.addWidget(self.command)
        row.addWidget(copy)
        layout.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        layout.addWidget(self.progress)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setObjectName("forestcarbon_install_log")
        layout.addWidget(self.log)
        buttons = QDialogButtonBox()
        self.install_button = buttons.addButton("Install", QDialogButtonBox.ButtonRole.AcceptRole)
        self.cancel_button = buttons.addButton("Cancel installation", QDialogButtonBox.ButtonRole.RejectRole)
        self.close_button = buttons.addButton("Close", QDialogButtonBox.ButtonRole.RejectRole)
        self.install_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.close)
        layout.addWidget(buttons)
        self.refresh()

    def refresh(self):
        self.missing = dependencies.missing_dependencies()
        names = ", ".join(d.requirement for d in self.missing)
        if self.missing:
            self.summary.setText(f"QGIS's Python lacks: {names}.\nThey go into {self.target}, a folder of this "
                                 "profile that the plugin adds after QGIS's own packages at start-up, so QGIS's "
                                 "numpy and the rest of its Python stay as they are.")
            constraints = dependencies.constraints_file(self.target)
            self.command.setText(dependencies.install_command(self.missing, self.target, constraints))
        else:
            self.summary.setText("Every package Forest Carbon needs is available.")
            self.command.setText("")
        running = self.task is not None
        self.install_button.setEnabled(bool(self.missing) and not running)
        self.cancel_button.setEnabled(running)
        self.close_button.setEnabled(not running)

    def start(self):
        if not self.missing or self.task is not None:
            return
        self.log.clear()
        self.progress.setRange(0, 0)  # busy: pip gives no overall percentage
        self.task = InstallTask(self.missing, self.target)
        self.task.line.connect(self.log.appendPlainText)
        self.task.taskCompleted.connect(lambda: self.finished_install(True))
        self.task.taskTerminated.connect(lambda: self.finished_install(False))
        QgsApplication.taskManager().addTask(self.task)
        self.refresh()

    def cancel(self):
        if self.task is not None:
            self.task.cancel()

    def finished_install(self, ok: bool):
        task, self.task = self.task, None
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if ok else 0)
        if ok:
            self.log.appendPlainText("\nInstalled. The algorithms that needed these packages run now; restart QGIS "
                                     "if one of them had failed to import earlier in this session.")
            if self.plugin is not None:
                self.plugin.dependency_message = None
            level = Qgis.MessageLevel.Success
        else:
            self.log.appendPlainText("\n" + (task.error if task is not None and task.error else "Failed."))
            level = Qgis.MessageLevel.Critical
        QgsMessageLog.logMessage(self.log.toPlainText()[-4000:], LOG_TAG, level)
        self.refresh()

    def closeEvent(self, event):  # noqa: N802
        if self.task is not None:  # the task would log into a deleted dialog
            event.ignore()
            return
        super().closeEvent(event)


def open_installer(plugin=None, parent=None) -> InstallDialog:
    dialog = InstallDialog(plugin, parent)
    dialog.show()
    return dialog


def add_install_action(plugin) -> QAction:
    """Add "Install dependencies…" to the plugin's menu (removed with ``plugin.actions`` in unload())."""
    action = QAction("Install dependencies…", plugin.iface.mainWindow())
    action.setObjectName("forestcarbon_install_dependencies")
    action.triggered.connect(lambda _checked=False: _keep(plugin, open_installer(plugin, plugin.iface.mainWindow())))
    plugin.iface.addPluginToMenu(MENU, action)
    plugin.actions.append(action)
    return action


def _keep(plugin, dialog):
    plugin.install_dialog = dialog  # a dialog without a Python reference would be collected while shown


def push_missing_message(plugin, text: str):
    """The message bar's warning, with a button that opens the installer."""
    bar = plugin.iface.messageBar()
    if not hasattr(bar, "createMessage"):  # a stub iface (tests, scripts): the text alone
        bar.pushMessage("Forest Carbon", text, level=Qgis.MessageLevel.Warning, duration=0)
        return None
    first = text.split("\n", 1)[0]
    widget = bar.createMessage("Forest Carbon", first)
    button = QPushButton("Install dependencies…", widget)
    button.setObjectName("forestcarbon_install_button")
    button.clicked.connect(lambda _checked=False: _keep(plugin, open_installer(plugin, plugin.iface.mainWindow())))
    widget.layout().addWidget(button)
    bar.pushWidget(widget, Qgis.MessageLevel.Warning, 0)
    return widget
