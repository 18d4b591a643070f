"""The uncertainty explorer: a prediction, its uncertainty layers, and what they say about the map.

- The uncertainty layers (std, lower, upper) of the chosen prediction come from its provenance
  (the ``outputs`` record ``predictraster`` writes), or are picked by hand.
- *Style map* applies the prediction's perceptual (viridis) ramp, adds the uncertainty layer(s), and
  makes the **value-by-alpha** layer: a derived GeoTIFF (band 1 the prediction, band 2 an opacity that
  falls with relative uncertainty, :func:`stats.write_value_by_alpha`) written atomically in the
  user's temporary folder (``forest_carbon_cache/``, reused while the inputs and threshold are
  unchanged) by a background job, shown with ``value_by_alpha.qml`` (viridis with alpha band 2):
  uncertain pixels fade. The derivation is a real layer QGIS renders, prints and exports.
- Statistics of the current map extent (histograms of the prediction and of the relative uncertainty,
  the mean prediction, the median relative uncertainty, the share above a threshold) are recomputed in
  a QgsTask each time the extent stops changing, read at most at the canvas's size
  (:func:`stats.window_stats`). The median, because σ / prediction is heavy-tailed (its mean was 291 %
  on the demo scene); pixels whose prediction is ≈ 0 are counted apart, and the histogram spans the
  1st–99th percentile with the rest counted in its end bars (both said under the plot).
- *Identify pixel* is a map tool reporting a pixel's value, interval, relative uncertainty and model.
- *Total of selection* gives the selected polygons' area-weighted total and its interval from the
  carbon core (:func:`core.carbon.stock.carbon_stock`, AGB only: root-to-shoot 0), with carbonstock's error model:
  the correlation range of the spin box beside it, filled from the carbon layer's carbonstock run or fitted
  from the prediction's validation report (:func:`core.carbon.variogram.recorded_error_model`).
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsProject,
    QgsRasterLayer,
)
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt, QTimer, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QDockWidget,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from processing_provider.compat import LayerFilter

from ..core.carbon.stock import BiomassMap, CarbonFactors, MonteCarlo, carbon_stock
from ..core.carbon.variogram import recorded_error_model
from ..core.vector import source_path
from ..output_info import read_output_info
from ..styling import apply_style, legend_number, raster_path
from .connections import Connections
from .jobs import register_task
from .map_tools import PixelInfoTool
from .stats import Sources, window_stats, write_value_by_alpha
from .tasks import FunctionTask

STATS_DELAY_MS = 250  #: wait for the extent to stop changing before recomputing
HISTOGRAM_BINS = 40
POLYGON_CONFIDENCE = 0.9
POLYGON_SIMULATIONS = 10_000  #: carbonstock's default (ART-TREES: 10,000 Monte Carlo draws)
CACHE_DIR = Path(tempfile.gettempdir()) / "forest_carbon_cache"  #: value-by-alpha rasters


def cache_path(sources: Sources, threshold: float) -> Path:
    """Where the value-by-alpha raster of ``sources`` at ``threshold`` is cached."""
    key = hashlib.sha1()
    for path in (sources.prediction, sources.std, sources.lower, sources.upper):
        if path:
            key.update(f"{Path(path).resolve()}:{Path(path).stat().st_mtime_ns}".encode())
    key.update(f"{threshold:.6g}:{sources.coverage}".encode())
    name = f"{Path(sources.prediction).stem}_vba_{key.hexdigest()[:12]}.tif"
    return CACHE_DIR / name


def _device(provider: str | None) -> str:
    """ONNX Runtime's provider name as a reader says it: CUDAExecutionProvider → CUDA."""
    return (provider or "?").replace("ExecutionProvider", "") or "?"


def _amount(value: float) -> str:
    """A total as an analyst reads it: 24,722 (whole units from 1,000 on), else 3 significant digits."""
    return f"{value:,.0f}" if abs(value) >= 1000 else legend_number(value)


def _form() -> QFormLayout:
    """A form whose fields go under their label when the dock is too narrow for both on one line."""
    form = QFormLayout()
    form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    return form


def _buttons(*buttons) -> QGridLayout:
    """Buttons two to a row, each as wide as half the dock (their texts are short enough for 1366×768)."""
    grid = QGridLayout()
    for i, button in enumerate(buttons):
        grid.addWidget(button, i // 2, i % 2)
    return grid


def _cancel(task) -> None:
    if not sip.isdeleted(task):  # QGIS deletes a task soon after it ends
        task.cancel()


class UncertaintyDock(QDockWidget):
    """The uncertainty explorer dock (see the module doc)."""

    statsUpdated = pyqtSignal(object)  # noqa: N815 - WindowStats, or None when nothing to show
    pixelReported = pyqtSignal(object)  # noqa: N815 - the map tool's dict
    polygonTotal = pyqtSignal(object)  # noqa: N815 - the carbon core's record, or None
    valueByAlphaReady = pyqtSignal(object)  # noqa: N815 - the value-by-alpha layer

    def __init__(self, iface, parent=None):
        super().__init__("Forest Carbon uncertainty explorer", parent)
        self.setObjectName("forestcarbon_uncertainty_dock")
        self.iface = iface
        self.canvas = iface.mapCanvas()
        self.info = None
        self.last_stats = None
        self.last_pixel = None
        self.polygon_result = None
        self.tool: PixelInfoTool | None = None
        self._stats_task: FunctionTask | None = None
        self._tasks: set = set()  # Python halves of running tasks, kept alive until they end
        self.connections = Connections()
        self._build()
        self.stats_timer = QTimer(self)
        self.stats_timer.setSingleShot(True)
        self.stats_timer.setInterval(STATS_DELAY_MS)
        self.stats_timer.timeout.connect(self.update_stats)
        self.connections.connect(self.canvas.extentsChanged, self.schedule_stats)
        self.connections.connect(self.canvas.mapToolSet, self._map_tool_set)
        self.set_prediction(self.prediction_combo.currentLayer())

    # ------------------------------------------------------------------------- widgets
    def _build(self) -> None:
        # laid out for a dock a third of a 1366×768 screen wide or less: short labels, fields under their
        # label when the row is too narrow, buttons two to a row, everything in a vertical scroll area
        self.prediction_combo = QgsMapLayerComboBox()
        self.prediction_combo.setObjectName("prediction_combo")
        self.prediction_combo.setFilters(LayerFilter.RasterLayer)
        self.prediction_combo.setAllowEmptyLayer(True)
        self.prediction_combo.layerChanged.connect(self.set_prediction)
        self.file_widgets = {}
        for kind in ("std", "lower", "upper"):
            widget = QgsFileWidget()
            widget.setObjectName(f"{kind}_file")
            widget.setFilter("Rasters (*.tif *.tiff *.vrt);;All files (*)")
            widget.fileChanged.connect(lambda _path: self.schedule_stats())
            self.file_widgets[kind] = widget
        self.coverage_spin = QDoubleSpinBox(decimals=3, minimum=0.01, maximum=0.999, singleStep=0.05, value=0.9)
        self.coverage_spin.setToolTip("Share of true values the lower–upper interval holds (0.9: a 90 % interval)")
        self.coverage_spin.valueChanged.connect(lambda _v: self.schedule_stats())
        self.info_label = QLabel()
        self.info_label.setObjectName("info_label")
        self.info_label.setWordWrap(True)
        layers = _form()
        layers.addRow("Prediction", self.prediction_combo)
        layers.addRow("Std. deviation", self.file_widgets["std"])
        layers.addRow("Lower bound", self.file_widgets["lower"])
        layers.addRow("Upper bound", self.file_widgets["upper"])
        layers.addRow("Interval coverage", self.coverage_spin)
        layers.addRow(self.info_label)

        self.style_button = QPushButton("Style map")
        self.style_button.setObjectName("style_button")
        self.style_button.setToolTip("Viridis prediction, the uncertainty layer, and a value-by-alpha layer in "
                                     "which uncertain pixels fade")
        self.style_button.clicked.connect(self.style_map)
        self.identify_button = QPushButton("Identify pixel")
        self.identify_button.setObjectName("identify_button")
        self.identify_button.setToolTip("Click the map to read a pixel's value, interval and relative uncertainty")
        self.identify_button.setCheckable(True)
        self.identify_button.toggled.connect(self.set_identify)
        self.pixel_label = QLabel("Click a pixel with Identify pixel.")
        self.pixel_label.setObjectName("pixel_label")
        self.pixel_label.setWordWrap(True)

        self.threshold_spin = QDoubleSpinBox(decimals=1, minimum=0.1, maximum=1000.0, singleStep=5.0, value=20.0,
                                             suffix=" %")
        self.threshold_spin.setObjectName("threshold_spin")
        self.threshold_spin.setToolTip("Relative uncertainty (σ / prediction) above which a pixel counts as "
                                       "uncertain; the dashed line of the lower plot")
        self.threshold_spin.valueChanged.connect(lambda _v: self.schedule_stats())
        self.pixels_label, self.mean_label, self.rel_median_label, self.share_label = (QLabel("–") for _ in range(4))
        for name, label in (("pixels", self.pixels_label), ("mean", self.mean_label),
                            ("rel_median", self.rel_median_label), ("share", self.share_label)):
            label.setObjectName(f"{name}_label")
            label.setWordWrap(True)
        self.near_zero_label = QLabel()
        self.near_zero_label.setObjectName("near_zero_label")
        self.near_zero_label.setWordWrap(True)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        stats_form = _form()
        # short labels: the widest one sets the width left to the values
        stats_form.addRow("Threshold", self.threshold_spin)
        stats_form.addRow("Pixels", self.pixels_label)
        stats_form.addRow("Mean", self.mean_label)
        stats_form.addRow("Median σ / value", self.rel_median_label)
        stats_form.addRow("Above threshold", self.share_label)
        for label, tip in ((self.rel_median_label, "Median relative uncertainty (σ / prediction) of the pixels in "
                                                   "view: the mean is dominated by the few pixels of low prediction"),
                           (self.share_label, "Share of the pixels in view whose relative uncertainty is above the "
                                              "threshold")):
            label.setToolTip(tip)
            stats_form.labelForField(label).setToolTip(tip)
        stats_form.addRow(self.near_zero_label)
        stats_form.addRow(self.status_label)
        self._build_plots()
        self.clip_label = QLabel()
        self.clip_label.setObjectName("clip_label")
        self.clip_label.setWordWrap(True)
        self.export_button = QPushButton("Export plots…")
        self.export_button.setObjectName("export_button")
        self.export_button.setToolTip("Save the two histograms as a PNG")
        self.export_button.clicked.connect(self._export_clicked)

        self.polygon_combo = QgsMapLayerComboBox()
        self.polygon_combo.setObjectName("polygon_combo")
        self.polygon_combo.setFilters(LayerFilter.PolygonLayer)
        # the error model's correlation range (default_correlation_range fills it from a carbonstock run or a
        # validation report); its minimum, −1, means "not set": carbonstock's fully correlated errors (0 stays
        # what it is in carbonstock, independent pixel errors, so that a run made with 0 is repeated as made)
        self.range_source = None
        self.range_spin = QDoubleSpinBox(decimals=0, minimum=-1.0, maximum=1_000_000.0, singleStep=50.0, value=-1.0,
                                         suffix=" m")
        self.range_spin.setObjectName("range_spin")
        self.range_spin.setSpecialValueText("not set: errors fully correlated")
        self.range_spin.setToolTip("Distance over which pixel errors are correlated (carbonstock's CORRELATION_RANGE)")
        self.polygon_combo.layerChanged.connect(lambda _layer: self.default_correlation_range())
        polygon_form = _form()
        polygon_form.addRow("Polygons", self.polygon_combo)
        polygon_form.addRow("Error correlation", self.range_spin)
        self.polygon_button = QPushButton("Total of the selected polygons")
        self.polygon_button.clicked.connect(self.total_of_selection)
        self.polygon_label = QLabel()
        self.polygon_label.setObjectName("polygon_label")
        self.polygon_label.setWordWrap(True)

        body = QVBoxLayout()
        for title, parts in (("Layers", [layers, _buttons(self.style_button, self.identify_button), self.pixel_label]),
                             ("Current map extent", [stats_form, self.plot_canvas, self.clip_label,
                                                     _buttons(self.export_button)]),
                             ("Polygon total", [polygon_form, self.polygon_button, self.polygon_label])):
            box = QGroupBox(title)
            inner = QVBoxLayout(box)
            for part in parts:
                (inner.addLayout if not isinstance(part, QWidget) else inner.addWidget)(part)
            body.addWidget(box)
        body.addStretch(1)
        container = QWidget()
        container.setObjectName("uncertainty_dock_contents")
        container.setLayout(body)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # labels wrap to the dock's width
        scroll.setWidget(container)
        self.setWidget(scroll)

    def _build_plots(self) -> None:
        from matplotlib.backends.backend_qt5agg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.6, 3.6), dpi=80, layout="constrained")
        self.pred_axes, self.rel_axes = self.figure.subplots(2, 1)
        self.pred_axes.set_title("Prediction", fontsize=9)
        self.rel_axes.set_title("Relative uncertainty (σ / prediction)", fontsize=9)
        self.rel_axes.set_xlabel("%", fontsize=8)
        # artists made once and updated: clearing axes costs the UI thread tens of ms per redraw
        self.pred_steps = self.pred_axes.stairs([0], [0, 1], fill=True, color="#21918c")
        self.rel_steps = self.rel_axes.stairs([0], [0, 1], fill=True, color="#d94801")
        self.threshold_line = self.rel_axes.axvline(0, color="black", linestyle="--", linewidth=1.2, zorder=3)
        for axes in (self.pred_axes, self.rel_axes):
            axes.tick_params(labelsize=7)
            axes.set_ylabel("pixels", fontsize=8)
        self.plot_canvas = FigureCanvasQTAgg(self.figure)
        self.plot_canvas.setMinimumHeight(260)
        self.plot_canvas.setMinimumWidth(120)

    # ------------------------------------------------------------------------- layers
    @property
    def prediction_layer(self):
        return self.prediction_combo.currentLayer()

    @property
    def sources(self) -> Sources | None:
        """The prediction and the uncertainty layers now chosen (None without a file-based prediction)."""
        path = raster_path(self.prediction_layer)
        if path is None:
            return None
        chosen = {k: (w.filePath() or None) for k, w in self.file_widgets.items()}
        chosen = {k: (p if p and Path(p).is_file() else None) for k, p in chosen.items()}
        return Sources(path, chosen["std"], chosen["lower"], chosen["upper"], coverage=self.coverage_spin.value())

    def set_prediction(self, layer) -> None:
        """Take ``layer`` as the prediction and fill in its uncertainty layers from its provenance."""
        path = raster_path(layer)
        self.info = read_output_info(path) if path else None
        for kind, widget in self.file_widgets.items():
            widget.blockSignals(True)
            widget.setFilePath((self.info.siblings.get(kind) if self.info else "") or "")
            widget.blockSignals(False)
        if self.info and self.info.coverage:
            self.coverage_spin.blockSignals(True)
            self.coverage_spin.setValue(self.info.coverage)
            self.coverage_spin.blockSignals(False)
        self.info_label.setText(self._describe_info())
        if self.tool is not None:
            self.identify_button.setChecked(False)
        self.schedule_stats()

    def _describe_info(self) -> str:
        if self.prediction_layer is None:
            return "Choose a prediction layer."
        if self.info is None:
            return "Not a file-based raster: statistics need a GeoTIFF (or any GDAL file)."
        if not self.info.kind:
            return "No Forest Carbon provenance: choose the uncertainty layers by hand."
        found = ", ".join(k for k in ("std", "lower", "upper") if k in self.info.siblings)
        unit = f"in {self.info.unit}" if self.info.unit else "unit not recorded"
        layers = (f"uncertainty layers of the same run: {found}." if found else
                  "no uncertainty layer of the same run found: choose them by hand.")
        return f"Model {self.info.model_id or '?'} (ran on {_device(self.info.execution_provider)}), {unit}; {layers}"

    # ------------------------------------------------------------------------- styling
    def style_map(self) -> None:
        """One click: style the prediction, add its uncertainty layer(s), start the value-by-alpha layer."""
        layer, sources = self.prediction_layer, self.sources
        if sources is None:
            return
        apply_style(layer, "prediction")
        present = {str(source_path(lyr.source())) for lyr in QgsProject.instance().mapLayers().values()}
        kinds = ["std"] if sources.std else [k for k in ("lower", "upper") if getattr(sources, k)]
        for kind in kinds:
            path = getattr(sources, kind)
            if path not in present:
                extra = QgsRasterLayer(path, f"{layer.name()} {kind}")
                apply_style(extra, "uncertainty" if kind == "std" else "prediction")
                QgsProject.instance().addMapLayer(extra)
        if sources.has_uncertainty:
            self.start_value_by_alpha(sources)

    def start_value_by_alpha(self, sources: Sources):
        """Make (or reuse) the value-by-alpha raster in a listed background job; the layer is added
        and ``valueByAlphaReady`` emitted when it is there. Returns the job, or None when cached."""
        threshold = self.threshold_spin.value() / 100.0
        target = cache_path(sources, threshold)
        name = f"{self.prediction_layer.name()} value by alpha"
        if target.is_file():
            self._add_value_by_alpha(target, name)
            return None

        def derive(task):
            return write_value_by_alpha(sources, target, threshold, is_canceled=task.isCanceled,
                                        set_progress=task.setProgress)

        task = FunctionTask(f"Value by alpha of {Path(sources.prediction).name}", derive)
        self.connections.connect(task.done, lambda _t, result, _e: result and self._add_value_by_alpha(result, name))
        self._keep_until_done(task)
        return register_task(task, f"Value-by-alpha layer: {Path(sources.prediction).name}", outputs=[target])

    def _add_value_by_alpha(self, path, name: str) -> None:
        layer = QgsRasterLayer(str(path), name)
        apply_style(layer, "value_by_alpha")
        QgsProject.instance().addMapLayer(layer)
        self.valueByAlphaReady.emit(layer)

    # ------------------------------------------------------------------------- statistics
    def schedule_stats(self) -> None:
        """Recompute the statistics once the extent (or a setting) has stopped changing."""
        self.stats_timer.start()

    def update_stats(self) -> FunctionTask | None:
        """Start the statistics of the current extent in a background task (cancelling one running)."""
        if self._stats_task is not None:
            _cancel(self._stats_task)
            self._stats_task = None
        sources = self.sources
        if sources is None:
            self._show_stats(None)
            return None
        layer_crs = self.prediction_layer.crs()
        extent = self.canvas.extent()
        canvas_crs = self.canvas.mapSettings().destinationCrs()
        if canvas_crs.isValid() and layer_crs.isValid() and canvas_crs != layer_crs:
            extent = QgsCoordinateTransform(canvas_crs, layer_crs, QgsProject.instance()).transformBoundingBox(extent)
        bounds = (extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum())
        size = self.canvas.mapSettings().outputSize()
        max_shape = (max(1, size.height()), max(1, size.width()))
        threshold = self.threshold_spin.value() / 100.0

        def compute(task):
            return window_stats(sources, bounds, max_shape, HISTOGRAM_BINS, threshold, is_canceled=task.isCanceled)

        task = FunctionTask("Forest Carbon: statistics of the map extent", compute)
        self.connections.connect(task.done, self._stats_done)
        self._keep_until_done(task)
        self._stats_task = task
        self.status_label.setText("Computing…")
        self.status_label.setVisible(True)
        QgsApplication.taskManager().addTask(task)
        return task

    @property
    def stats_running(self) -> bool:
        return self._stats_task is not None or self.stats_timer.isActive()

    def _stats_done(self, task, result, error) -> None:
        if task is not self._stats_task:
            return  # an older extent's, cancelled
        self._stats_task = None
        self.status_label.setText(f"Error: {error}" if error else "")
        self.status_label.setVisible(bool(self.status_label.text()))
        self._show_stats(result)

    def _show_stats(self, stats) -> None:
        self.last_stats = stats
        unit = (self.info.unit if self.info else "") or ""
        labels = (self.pixels_label, self.mean_label, self.rel_median_label, self.share_label)
        if stats is None or stats.pixels == 0:
            for label in labels:
                label.setText("–")
            self.near_zero_label.setText("")
        else:
            self.pixels_label.setText(f"{stats.pixels:,} read at {stats.shape[0]}×{stats.shape[1]} "
                                      f"(of {stats.window[2]}×{stats.window[3]} in view)")
            self.mean_label.setText(f"{legend_number(stats.mean)} {unit}".strip())
            self.rel_median_label.setText("–" if stats.rel_median is None else f"{100 * stats.rel_median:.1f} %")
            self.share_label.setText("–" if stats.share_above is None else
                                     f"{100 * stats.share_above:.1f} % of {stats.rel_pixels:,} pixels")
            notes = []
            if stats.rel_near_zero:
                notes.append(f"{stats.rel_near_zero:,} pixels with prediction ≈ 0 (below "
                             f"{legend_number(stats.near_zero_limit)} {unit}".rstrip() +
                             ") are not in the relative statistics.")
            if stats.rel_undefined:
                notes.append(f"{stats.rel_undefined:,} pixels have no uncertainty value.")
            self.near_zero_label.setText(" ".join(notes))
        self.clip_label.setText(self._describe_clip(stats))
        for label in (self.near_zero_label, self.clip_label):
            label.setVisible(bool(label.text()))  # an empty row would leave a gap
        self._draw(stats, unit)
        self.statsUpdated.emit(stats)

    @staticmethod
    def _describe_clip(stats) -> str:
        if stats is None or stats.rel_counts is None:
            return ""
        text = (f"Relative uncertainty shown from {100 * stats.rel_edges[0]:.3g} % to {100 * stats.rel_edges[-1]:.3g} % "
                "(1st–99th percentile)")
        ends = [f"{n:,} pixels {where} in the {bin_} bar" for n, where, bin_ in
                ((stats.rel_underflow, "below", "first"), (stats.rel_overflow, "above", "last")) if n]
        return text + (": " + "; ".join(ends) + "." if ends else ".")

    def _draw(self, stats, unit: str) -> None:
        has_pred = stats is not None and stats.pixels > 0
        has_rel = has_pred and stats.rel_counts is not None
        if has_pred:
            self.pred_steps.set_data(stats.pred_counts, stats.pred_edges)
            self.pred_axes.set_xlabel(unit or "value", fontsize=8)
        if has_rel:
            self.rel_steps.set_data(stats.rel_counts, 100 * stats.rel_edges)
            self.threshold_line.set_xdata([100 * stats.threshold] * 2)
        for axes, steps, shown in ((self.pred_axes, self.pred_steps, has_pred),
                                   (self.rel_axes, self.rel_steps, has_rel)):
            steps.set_visible(shown)
            if shown:
                axes.relim()
                axes.autoscale_view()
        if has_rel:  # the histogram's own range, whatever margins autoscale adds: the threshold is inside it
            self.rel_axes.set_xlim(100 * stats.rel_edges[0], 100 * stats.rel_edges[-1])
        self.threshold_line.set_visible(has_rel)
        self.plot_canvas.draw_idle()

    def export_plots(self, path) -> Path:
        """Save the histograms as a PNG."""
        self.figure.savefig(str(path), dpi=150, format="png")
        return Path(path)

    def _export_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export plots", "uncertainty_plots.png", "PNG (*.png)")
        if path:
            self.export_plots(path)

    # ------------------------------------------------------------------------- pixel tool
    def set_identify(self, on: bool) -> None:
        """Make the pixel tool the canvas's tool (or give the canvas back its previous one)."""
        if on:
            sources = self.sources
            if sources is None:
                self.identify_button.setChecked(False)
                return
            self.tool = PixelInfoTool(self.canvas, sources, self.prediction_layer.crs())
            self.tool.pixelReported.connect(self.show_pixel)
            self.canvas.setMapTool(self.tool)
        else:
            self._drop_tool()

    def _drop_tool(self) -> None:
        tool, self.tool = self.tool, None
        if tool is not None:
            if self.canvas.mapTool() is tool:
                self.canvas.unsetMapTool(tool)
            tool.deleteLater()

    def _map_tool_set(self, new, _old) -> None:
        if self.tool is not None and new is not self.tool:
            self.identify_button.setChecked(False)

    def show_pixel(self, report) -> None:
        self.last_pixel = report
        if report is None:
            self.pixel_label.setText("Outside the prediction.")
        else:
            self.pixel_label.setText(self._describe_pixel(report))
        self.pixelReported.emit(report)

    def _describe_pixel(self, r: dict) -> str:
        unit = (self.info.unit if self.info else "") or ""

        def fmt(v):
            return "nodata" if v is None else f"{v:.4g}"

        lines = [f"Row {r['row']}, column {r['col']}: <b>{fmt(r['prediction'])}</b> {unit}"]
        if r.get("lower") is not None or r.get("upper") is not None:
            lines.append(f"interval [{fmt(r.get('lower'))}, {fmt(r.get('upper'))}] at "
                         f"{100 * (self.sources.coverage or 0):.0f} %")
        if r.get("std") is not None:
            lines.append(f"std {fmt(r['std'])}")
        if r.get("relative") is not None:
            lines.append(f"relative uncertainty {100 * r['relative']:.1f} %")
        if self.info and self.info.kind:
            lines.append(f"model {self.info.model_id or '?'} ({self.info.model or 'unknown file'}, ran on "
                         f"{_device(self.info.execution_provider)})")
        return "<br>".join(lines)

    # ------------------------------------------------------------------------- polygon total
    def default_correlation_range(self) -> None:
        """Set the range spin box from the chosen polygon layer's carbonstock run, else from the prediction's
        validation report (:func:`core.carbon.variogram.recorded_error_model`); leave it as it is when neither is found."""
        layer = self.polygon_combo.currentLayer()
        carbon = layer.source() if layer is not None and layer.providerType() == "ogr" else None
        try:
            model = recorded_error_model(carbon, raster_path(self.prediction_layer))
        except Exception:  # noqa: BLE001 - an unreadable report leaves the range for the user to set
            model = None
        if model is None:
            return
        self.range_source = model
        self.range_spin.setValue(self.range_spin.minimum() if math.isinf(model["range_m"]) else model["range_m"])
        self.range_spin.setToolTip(f"Range from {model['source']}.")

    @property
    def correlation_range(self) -> float | None:
        """The dock's range in metres; None = not set (carbonstock's conservative fully correlated errors)."""
        value = self.range_spin.value()
        return None if value < 0 else value

    def total_of_selection(self) -> FunctionTask | None:
        """Area-weighted total of the selected polygons (as one area) and its interval, from the carbon
        core, in a background task; the result arrives through ``polygonTotal``."""
        from shapely import wkb

        layer, sources = self.polygon_combo.currentLayer(), self.sources
        if layer is None or sources is None:
            self.polygon_label.setText("Choose a prediction and a polygon layer.")
            return None
        geometries = [f.geometry() for f in layer.selectedFeatures()]
        if not geometries:
            self.polygon_label.setText("Select one or more polygons first.")
            return None
        shape = wkb.loads(bytes(QgsGeometry.unaryUnion(geometries).asWkb()))
        crs = layer.crs().toWkt()
        errors = ({"std": sources.std} if sources.std else
                  {"lower": sources.lower, "upper": sources.upper} if sources.lower and sources.upper else {})

        if self.range_source is None and self.correlation_range is None:
            self.default_correlation_range()  # layers chosen before the dock connected its signals
        recorded = self.range_source or {}
        correlation_range = self.correlation_range
        simulations = int(recorded.get("simulations") or POLYGON_SIMULATIONS)
        seed = int(recorded.get("seed") or 0)

        def compute(_task):
            biomass = BiomassMap(agb=sources.prediction, coverage=sources.coverage or 0.9, **errors)
            monte_carlo = MonteCarlo(draws=simulations, correlation_range_m=correlation_range,
                                     confidence=POLYGON_CONFIDENCE, seed=seed)
            return carbon_stock([shape], biomass, factors=CarbonFactors(root_shoot=0.0), monte_carlo=monte_carlo,
                                projects_crs=crs)["records"][0]

        task = FunctionTask("Forest Carbon: total of the selected polygons", compute)
        self.connections.connect(task.done, self._polygon_done)
        self._keep_until_done(task)
        self.polygon_label.setText("Computing…")
        QgsApplication.taskManager().addTask(task)
        return task

    def _polygon_done(self, _task, record, error) -> None:
        self.polygon_result = record
        if error is not None or record is None:
            self.polygon_label.setText(f"Error: {error}" if error else "Cancelled.")
        elif record.get("agb_total_mg") is None:
            self.polygon_label.setText(f"Area {record['area_ha']:.4g} ha: no valid pixel inside.")
        else:
            total_unit, per_ha = self._total_unit()
            text = (f"Area {record['area_ha']:,.1f} ha: total {_amount(record['agb_total_mg'])} {total_unit} "
                    f"(mean {legend_number(record['agb_mean_mg_ha'])} {per_ha})")
            if record.get("co2e_ci_low_t") is not None and record["co2e_total_t"]:
                per = record["agb_total_mg"] / record["co2e_total_t"]  # the core's CO2e interval, in map units
                corr = self.correlation_range
                text += (f"; {100 * POLYGON_CONFIDENCE:.0f} % interval {_amount(record['co2e_ci_low_t'] * per)} to "
                         f"{_amount(record['co2e_ci_high_t'] * per)} {total_unit.split()[0]} "
                         f"(± {record['uncertainty_pct']:.1f} %, errors "
                         + ("fully correlated" if corr is None else f"correlated over {corr:g} m") + ")")
            self.polygon_label.setText(text)
        self.polygonTotal.emit(record)

    def _total_unit(self) -> tuple[str, str]:
        """(unit of a total, unit of the map): ("Mg AGB", "Mg/ha") for a biomass map in Mg/ha; a map in
        another unit per hectare totals in that unit; anything else is summed as value × ha."""
        unit = ((self.info.unit if self.info else "") or "").strip()
        target = ((self.info.target if self.info else "") or "").lower()
        if unit.lower().endswith("/ha"):
            mass = unit[:-3].strip()
            return (f"{mass} AGB" if "agb" in target or "biomass" in target else mass), unit
        return (f"{unit}·ha" if unit else "(map value × ha)"), unit

    # ------------------------------------------------------------------------- life cycle
    def _keep_until_done(self, task) -> None:
        self._tasks.add(task)
        task.done.connect(lambda t, *_: self._tasks.discard(t))

    def teardown(self) -> None:
        """Before deletion: stop tasks and timers, give the canvas its tool back, disconnect everything."""
        self.stats_timer.stop()
        for task in list(self._tasks):
            _cancel(task)
        self._stats_task = None
        self._drop_tool()
        self.connections.disconnect_all()
