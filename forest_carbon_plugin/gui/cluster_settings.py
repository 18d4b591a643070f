"""Plugins → Forest Carbon → Cluster settings…: where EXECUTION = 1 runs the heavy algorithms.

A local Dask cluster (the default), a scheduler address (``tcp://`` or ``tls://`` with the CA,
certificate and key files) or a dask-gateway (URL, authentication). Stored with ``QgsSettings``
under ``forest_carbon/cluster/…``; the gateway's password or token goes into the QGIS
authentication database (only the configuration id is kept in the settings), never into
project files or plain settings. See docs/cluster.md.
"""

from __future__ import annotations

from qgis.core import QgsApplication, QgsSettings
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from processing_provider.compat import QAction

from ..core.errors import ForestCarbonError
from ..core.parallel.connect import ClusterSpec, close_local_clusters, open_client, scheduler_address
from ..core.parallel.pool import MAX_DEFAULT_WORKERS
from ..core.parallel.versions import check_versions
from ..settings import MODES, PREFIX, load_spec, read_secret, save_spec, store_secret
from . import MENU

MODE_LABELS = ("Local cluster (worker processes on this machine)", "Dask scheduler (tcp:// or tls://)",
               "dask-gateway")
GATEWAY_AUTH = ("", "basic", "jupyterhub", "kerberos")
GATEWAY_AUTH_LABELS = ("None", "Basic (user + password)", "JupyterHub (API token)", "Kerberos")


class _PathEdit(QWidget):
    """A line edit with a "…" button that picks a file or a folder."""

    def __init__(self, folder: bool = False, parent=None):
        super().__init__(parent)
        self.folder = folder
        self.edit = QLineEdit(self)
        button = QPushButton("…", self)
        button.setFixedWidth(28)
        button.clicked.connect(self._browse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit)
        layout.addWidget(button)

    def _browse(self):
        if self.folder:
            path = QFileDialog.getExistingDirectory(self, "Folder", self.edit.text())
        else:
            path, _ = QFileDialog.getOpenFileName(self, "File", self.edit.text(), "PEM files (*.pem *.crt *.key);;All (*)")
        if path:
            self.edit.setText(path)

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's style)
        self.edit.setText(text or "")


class ClusterSettingsDialog(QDialog):
    """Edits the cluster settings; OK stores them (the secret in the authentication database)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Forest Carbon — Cluster settings")
        self.setObjectName("forestcarbon_cluster_settings")
        layout = QVBoxLayout(self)
        intro = QLabel("Algorithms run on a Dask cluster when their <b>Execution</b> parameter is 1 (this cluster) "
                       "or 2 (a local cluster). Workers need <code>pip install forest-carbon-plugin[worker]</code> "
                       "and must see the inputs and the job folder (docs/cluster.md).")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        form = QFormLayout()
        self.mode = QComboBox()
        self.mode.addItems(MODE_LABELS)
        form.addRow("Cluster", self.mode)
        layout.addLayout(form)

        self.local_box = QGroupBox("Local cluster")
        local = QFormLayout(self.local_box)
        self.local_workers = QSpinBox()
        self.local_workers.setRange(0, 256)
        self.local_workers.setSpecialValueText(f"one per core, at most {MAX_DEFAULT_WORKERS}")
        local.addRow("Worker processes", self.local_workers)
        layout.addWidget(self.local_box)

        self.scheduler_box = QGroupBox("Dask scheduler")
        sched = QFormLayout(self.scheduler_box)
        self.address = QLineEdit()
        self.address.setPlaceholderText("tcp://scheduler.example.org:8786 or tls://…")
        self.tls_ca, self.tls_cert, self.tls_key = _PathEdit(), _PathEdit(), _PathEdit()
        sched.addRow("Address", self.address)
        sched.addRow("TLS CA certificate", self.tls_ca)
        sched.addRow("TLS client certificate", self.tls_cert)
        sched.addRow("TLS client key", self.tls_key)
        layout.addWidget(self.scheduler_box)

        self.gateway_box = QGroupBox("dask-gateway")
        gate = QFormLayout(self.gateway_box)
        self.gateway_url = QLineEdit()
        self.gateway_url.setPlaceholderText("https://gateway.example.org")
        self.gateway_auth = QComboBox()
        self.gateway_auth.addItems(GATEWAY_AUTH_LABELS)
        self.gateway_user = QLineEdit()
        self.gateway_secret = QLineEdit()
        self.gateway_secret.setEchoMode(QLineEdit.EchoMode.Password)
        self.gateway_secret.setPlaceholderText("stored in the QGIS authentication database")
        self.gateway_workers = QSpinBox()
        self.gateway_workers.setRange(1, 10_000)
        gate.addRow("URL", self.gateway_url)
        gate.addRow("Authentication", self.gateway_auth)
        gate.addRow("User", self.gateway_user)
        gate.addRow("Password / token", self.gateway_secret)
        gate.addRow("Workers", self.gateway_workers)
        layout.addWidget(self.gateway_box)

        common = QGroupBox("Every cluster")
        rest = QFormLayout(common)
        self.job_dir = _PathEdit(folder=True)
        self.job_dir.edit.setPlaceholderText("beside each output (must be storage the workers share)")
        self.timeout = QDoubleSpinBox()
        self.timeout.setRange(1, 300)
        self.timeout.setSuffix(" s")
        self.retries = QSpinBox()
        self.retries.setRange(0, 20)
        self.worker_wait = QDoubleSpinBox()
        self.worker_wait.setRange(1, 86_400)
        self.worker_wait.setDecimals(0)
        self.worker_wait.setSuffix(" s")
        self.worker_wait.setToolTip("A job fails, cancelling its tasks, when no worker has been attached for this long "
                                    "(none there, or all lost).")
        rest.addRow("Job folder", self.job_dir)
        rest.addRow("Connection timeout", self.timeout)
        rest.addRow("Retries per tile", self.retries)
        rest.addRow("Wait for workers", self.worker_wait)
        layout.addWidget(common)

        test_row = QHBoxLayout()
        self.test_button = QPushButton("Test connection")
        self.test_button.clicked.connect(self.test_connection)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        test_row.addWidget(self.test_button)
        test_row.addWidget(self.status, 1)
        layout.addLayout(test_row)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.mode.currentIndexChanged.connect(self._show_mode)
        self.load()

    # -- settings <-> widgets ------------------------------------------------------------
    def load(self) -> None:
        spec = load_spec()
        stored_mode = QgsSettings().value(PREFIX + "mode", "local")  # keep "scheduler" even without an address
        self.mode.setCurrentIndex(MODES.index(stored_mode) if stored_mode in MODES else 0)
        self.local_workers.setValue(spec.n_workers)
        self.address.setText(spec.address)
        self.tls_ca.setText(spec.tls_ca)
        self.tls_cert.setText(spec.tls_cert)
        self.tls_key.setText(spec.tls_key)
        self.gateway_url.setText(spec.gateway_url)
        self.gateway_auth.setCurrentIndex(GATEWAY_AUTH.index(spec.gateway_auth) if spec.gateway_auth in GATEWAY_AUTH
                                          else 0)
        self.gateway_user.setText(spec.gateway_user)
        self.gateway_secret.setText("")  # never shown again; left empty = keep the stored one
        self.gateway_workers.setValue(spec.gateway_workers)
        self.job_dir.setText(spec.job_dir)
        self.timeout.setValue(spec.timeout)
        self.retries.setValue(spec.retries)
        self.worker_wait.setValue(spec.worker_wait)
        self._show_mode()

    def spec(self) -> ClusterSpec:
        """What the widgets say (the secret as typed)."""
        return ClusterSpec(
            mode=MODES[self.mode.currentIndex()], address=self.address.text().strip(), tls_ca=self.tls_ca.text(),
            tls_cert=self.tls_cert.text(), tls_key=self.tls_key.text(), gateway_url=self.gateway_url.text().strip(),
            gateway_auth=GATEWAY_AUTH[self.gateway_auth.currentIndex()], gateway_user=self.gateway_user.text().strip(),
            gateway_secret=self.gateway_secret.text(), gateway_workers=self.gateway_workers.value(),
            n_workers=self.local_workers.value(), job_dir=self.job_dir.text(), timeout=self.timeout.value(),
            retries=self.retries.value(), worker_wait=self.worker_wait.value())

    def save(self) -> None:
        spec = self.spec()
        authcfg = QgsSettings().value(PREFIX + "authcfg", "") or ""
        if spec.gateway_secret or (spec.gateway_user and spec.mode == "gateway"):
            secret = spec.gateway_secret
            if not secret and authcfg:
                secret = read_secret(authcfg)[1]
            authcfg = store_secret(spec.gateway_user, secret, authcfg)
        save_spec(spec, authcfg)

    def accept(self) -> None:
        try:
            self.save()
        except ForestCarbonError as exc:
            self.status.setText(str(exc))
            return
        super().accept()

    def _show_mode(self) -> None:
        mode = MODES[self.mode.currentIndex()]
        self.local_box.setVisible(mode == "local")
        self.scheduler_box.setVisible(mode == "scheduler")
        self.gateway_box.setVisible(mode == "gateway")

    def test_connection(self) -> str:
        """Connect with what the widgets say; the result (workers, or the error) is shown and returned."""
        spec = self.spec()
        if spec.mode == "gateway" and not spec.gateway_secret:
            stored = load_spec()
            spec.gateway_secret = stored.gateway_secret if stored.mode == "gateway" else ""
        self.status.setText("Connecting…")
        QgsApplication.processEvents()
        try:
            client, owned = open_client(spec)
        except ForestCarbonError as exc:
            text = str(exc)
        else:
            try:
                workers = client.scheduler_info(n_workers=-1)["workers"]
                threads = sum(w.get("nthreads", 0) for w in workers.values())
                text = f"Connected to {scheduler_address(client)}: {len(workers)} worker(s), {threads} thread(s)."
                try:  # what a job would refuse, or warn about, said now
                    text += "".join(f"\nWarning: {w}." for w in check_versions(client))
                except ForestCarbonError as exc:
                    text += f"\n{exc}"
            finally:
                if owned:
                    client.close()
        self.status.setText(text)
        return text


def open_dialog(parent=None) -> bool:
    return ClusterSettingsDialog(parent).exec() == QDialog.DialogCode.Accepted


def add_menu_action(plugin) -> QAction:
    """Add "Cluster settings…" to the plugin's menu; ``plugin.unload()`` removes it with the plugin's other
    actions, and the session's local Dask clusters stop when it goes."""
    action = QAction("Cluster settings…", plugin.iface.mainWindow())
    action.setObjectName("forestcarbon_cluster_settings")
    action.triggered.connect(lambda _checked=False: open_dialog(plugin.iface.mainWindow()))
    action.destroyed.connect(lambda *_: close_local_clusters())
    plugin.iface.addPluginToMenu(MENU, action)
    plugin.actions.append(action)
    return action
