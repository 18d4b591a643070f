"""The jobs dock: every long run of the session with its progress, time, log and buttons: Forest Carbon
algorithms however they were started (toolbox, models, console: :class:`jobs.RunListener`), and the
plugin's own background jobs."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtWidgets import (
    QDockWidget,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..output_info import read_output_info
from ..styling import style_by_kind
from .connections import Connections
from .jobs import FAILED, FINISHED, Job, manager


def add_outputs_to_map(paths) -> list:
    """Add each output file to the project (rasters styled by their OUTPUT_KIND tag); returns the layers."""
    layers = []
    for path in paths:
        name = Path(path).stem
        layer = QgsRasterLayer(str(path), name)
        if layer.isValid():
            try:
                style_by_kind(layer, read_output_info(path).kind)
            except Exception:  # noqa: BLE001 - a raster QGIS reads but rasterio does not: default style
                pass
        else:
            layer = QgsVectorLayer(str(path), name, "ogr")
        if layer.isValid():
            QgsProject.instance().addMapLayer(layer)
            layers.append(layer)
    return layers


class JobRow(QFrame):
    """One job: name and status, progress bar, elapsed time, message, log, Cancel and Add to map."""

    def __init__(self, job: Job, parent=None):
        super().__init__(parent)
        self.job = job
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.name_label = QLabel(f"<b>{job.name}</b>")
        self.name_label.setWordWrap(True)
        self.status_label = QLabel()
        self.elapsed_label = QLabel()
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 100)
        self.message_label = QLabel()
        self.message_label.setWordWrap(True)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumHeight(120)
        self.log_view.setVisible(False)
        self.log_button = QToolButton(text="Log")
        self.log_button.setCheckable(True)
        self.log_button.toggled.connect(self.log_view.setVisible)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(job.cancel)
        self.add_button = QPushButton("Add to map")
        self.add_button.setToolTip("Add the run's output files to the map, styled")
        self.add_button.clicked.connect(lambda: add_outputs_to_map(self.job.outputs))

        top = QHBoxLayout()
        top.addWidget(self.name_label, 1)
        top.addWidget(self.status_label)
        top.addWidget(self.elapsed_label)
        buttons = QHBoxLayout()
        buttons.addWidget(self.log_button)
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.add_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.message_label)
        layout.addLayout(buttons)
        layout.addWidget(self.log_view)

        for line in job.log:
            self.log_view.appendPlainText(line)
        # the job lives on after this row: connections go through Connections (see teardown)
        self.connections = Connections()
        self.connections.connect(job.changed, self.refresh)
        self.connections.connect(job.logged, self.log_view.appendPlainText)
        self.refresh()

    def refresh(self) -> None:
        job = self.job
        self.status_label.setText(job.status)
        self.progress_bar.setValue(int(round(job.progress)))
        self.elapsed_label.setText(f"{job.elapsed:.1f} s")
        self.message_label.setText(job.message)
        self.message_label.setStyleSheet("color: #b00020" if job.status == FAILED else "")
        self.cancel_button.setEnabled(job.running)
        self.add_button.setEnabled(job.status == FINISHED and bool(job.outputs))

    def teardown(self) -> None:
        self.connections.disconnect_all()


class JobsDock(QDockWidget):
    """Lists the jobs of :func:`jobs.manager`, newest first; finished and failed ones stay."""

    def __init__(self, parent=None, job_manager=None):
        super().__init__("Forest Carbon jobs", parent)
        self.setObjectName("forestcarbon_jobs_dock")
        self.manager = job_manager or manager()
        self.rows: list[JobRow] = []
        self.empty_label = QLabel("No job started in this session yet. Runs of Forest Carbon algorithms appear "
                                  "here however they are started: the toolbox, a model, the Python console.")
        self.empty_label.setWordWrap(True)
        container = QWidget()
        self.rows_layout = QVBoxLayout(container)
        self.rows_layout.addWidget(self.empty_label)
        self.rows_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # rows fit the dock's width
        scroll.setWidget(container)
        self.setWidget(scroll)

        self.connections = Connections()
        self.connections.connect(self.manager.jobAdded, self.add_job)
        for job in self.manager.jobs:
            self.add_job(job)
        # elapsed times of running jobs tick once a second
        self.timer = QTimer(self)
        self.timer.setInterval(1000)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def add_job(self, job: Job) -> JobRow:
        row = JobRow(job)
        self.rows.append(row)
        self.empty_label.setVisible(False)
        self.rows_layout.insertWidget(0, row)
        return row

    def row_of(self, job: Job) -> JobRow | None:
        return next((r for r in self.rows if r.job is job), None)

    def _tick(self) -> None:
        for row in self.rows:
            if row.job.running:
                row.elapsed_label.setText(f"{row.job.elapsed:.1f} s")

    def teardown(self) -> None:
        """Disconnect from the manager and the jobs (they outlive the dock)."""
        self.timer.stop()
        self.connections.disconnect_all()
        for row in self.rows:
            row.teardown()

