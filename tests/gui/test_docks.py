"""The uncertainty explorer dock against a real QGIS, real predictraster outputs and independent references.

References: numpy histograms of windows read with rasterio, rasterio pixel reads, the carbon core's
``carbon_stock``. The dock in the real QGIS desktop under Xvfb, with screenshots, is tested in
test_desktop_xvfb.py (on a prediction made by :func:`make_prediction`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

X0, Y0, RES = 500_000.0, 6_000_000.0, 10.0
ROWS, COLS = 1500, 1600  # big enough that reading it at full resolution takes a noticeable time


# ----------------------------------------------------------------------------- data (no QGIS needed)

def make_prediction(folder: Path, rows: int = ROWS, cols: int = COLS) -> dict:
    """Smooth 3-band features with a nodata hole → predictraster (a linear model with a log-variance
    head) → prediction, std, lower, upper COGs with their provenance. Returns kind → path."""
    from forest_carbon_plugin.core.models.predict import PredictSettings, predict_raster
    from tests.onnx_models import pixel_model

    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:rows, 0:cols] / max(rows, cols)
    rng = np.random.default_rng(3)
    f1 = 0.5 + 0.45 * np.sin(7 * xx) * np.cos(5 * yy)
    f2 = 0.5 + 0.4 * np.cos(9 * (xx + yy))
    f3 = rng.uniform(0, 1, (rows, cols))
    data = np.stack([f1, f2, f3]).astype("float32")
    data[:, rows // 3: rows // 3 + 40, cols // 4: cols // 4 + 60] = np.nan  # no data
    features = folder / "features.tif"
    with rasterio.open(features, "w", driver="GTiff", width=cols, height=rows, count=3, dtype="float32",
                       crs="EPSG:32633", transform=from_origin(X0, Y0, RES, RES), nodata=float("nan")) as dst:
        dst.write(data)
    model = pixel_model(folder / "agb.onnx", [150.0, 60.0, 20.0], 5.0, log_variance=([-3.0, 4.0, 1.0], 4.5),
                        metadata={"model_card": {
                            "mlm:name": "test-agb", "forest_carbon:target": "agb_mg_ha", "forest_carbon:unit": "Mg/ha",
                            "mlm:input": [{"name": "features"}],
                            "mlm:output": [{"name": "mean", "forest_carbon:meaning": "mean"},
                                           {"name": "logvar", "forest_carbon:meaning": "log_variance"}]}})
    paths = {k: folder / f"agb_{k}.tif" for k in ("prediction", "std", "lower", "upper")}
    predict_raster([features], model, paths["prediction"], paths["std"], paths["lower"], paths["upper"],
                   settings=PredictSettings(coverage=0.9))
    return paths


def read_full(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1).astype("float64")


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_prediction(tmp_path_factory.mktemp("predicted"))


@pytest.fixture
def project(qgis_iface):
    from qgis.core import QgsProject

    yield QgsProject.instance()
    QgsProject.instance().removeAllMapLayers()
    qgis_iface.mapCanvas().setLayers([])


@pytest.fixture
def prediction_layer(run, project, qgis_iface):
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(str(run["prediction"]), "agb")
    assert layer.isValid()
    project.addMapLayer(layer)
    qgis_iface.mainWindow().show()  # a hidden canvas takes no resize
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(layer.crs())
    canvas.setLayers([layer])
    canvas.setExtent(layer.extent())
    return layer


@pytest.fixture
def dock(qgis_iface, qtbot, prediction_layer):
    from qgis.PyQt.QtCore import QCoreApplication, QEvent

    from forest_carbon_plugin.gui.uncertainty_dock import UncertaintyDock

    dock = UncertaintyDock(qgis_iface, qgis_iface.mainWindow())
    with qtbot.waitSignal(dock.statsUpdated, timeout=20000):
        dock.prediction_combo.setLayer(prediction_layer)
    yield dock
    dock.teardown()
    wait_for_tasks(qtbot)
    dock.setParent(None)
    dock.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)


def wait_for_tasks(qtbot, timeout=20000):
    from qgis.core import QgsApplication

    qtbot.waitUntil(lambda: QgsApplication.taskManager().countActiveTasks() == 0, timeout=timeout)


def resize_map(canvas, qtbot, width, height):
    """Resize the canvas so that its map is width × height pixels (the frame takes a few)."""
    frame = canvas.width() - canvas.viewport().width()
    canvas.resize(width + frame, height + frame)
    qtbot.waitUntil(lambda: (canvas.mapSettings().outputSize().width(),
                             canvas.mapSettings().outputSize().height()) == (width, height), timeout=5000)


def set_view(canvas, qtbot, x0, y0, x1, y1, width, height):
    """Show exactly (x0, y0, x1, y1) in a map of width × height pixels."""
    from qgis.core import QgsRectangle

    resize_map(canvas, qtbot, width, height)
    canvas.setExtent(QgsRectangle(x0, y0, x1, y1))


def expected_window(extent):
    """The rows and columns of every pixel the extent touches (independent of stats.pixel_window)."""
    c0 = max(0, int(np.floor((extent.xMinimum() - X0) / RES + 1e-6)))
    c1 = min(COLS, int(np.ceil((extent.xMaximum() - X0) / RES - 1e-6)))
    r0 = max(0, int(np.floor((Y0 - extent.yMaximum()) / RES + 1e-6)))
    r1 = min(ROWS, int(np.ceil((Y0 - extent.yMinimum()) / RES - 1e-6)))
    return r0, r1, c0, c1


# ----------------------------------------------------------------------------- provenance

def test_the_dock_finds_the_uncertainty_layers_from_provenance(dock, run):
    assert dock.file_widgets["std"].filePath() == str(run["std"].resolve())
    assert dock.file_widgets["lower"].filePath() == str(run["lower"].resolve())
    assert dock.file_widgets["upper"].filePath() == str(run["upper"].resolve())
    assert dock.coverage_spin.value() == pytest.approx(0.9)
    assert dock.info.kind == "prediction" and dock.info.unit == "Mg/ha"
    assert len(dock.info.model_id) > 8 and dock.info.model_id in dock.info_label.text()
    assert "std, lower, upper" in dock.info_label.text()


def test_a_raster_without_provenance_leaves_the_choice_to_the_user(dock, run, project, tmp_path):
    from qgis.core import QgsRasterLayer

    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=10, height=10, count=1, dtype="float32",
                       crs="EPSG:32633", transform=from_origin(X0, Y0, RES, RES)) as dst:
        dst.write(np.ones((1, 10, 10), "float32"))
    layer = QgsRasterLayer(str(plain), "plain")
    project.addMapLayer(layer)
    dock.prediction_combo.setLayer(layer)
    assert all(w.filePath() == "" for w in dock.file_widgets.values())
    assert "by hand" in dock.info_label.text()
    dock.file_widgets["std"].setFilePath(str(run["std"]))  # chosen by hand
    assert dock.sources.std == str(run["std"])


# ----------------------------------------------------------------------------- statistics

def test_histograms_of_the_map_extent_equal_numpy_on_the_same_window(dock, run, qgis_iface, qtbot):
    canvas = qgis_iface.mapCanvas()
    # 300 × 200 pixels of the raster shown in a 300 × 200 canvas: read at full resolution
    with qtbot.waitSignal(dock.statsUpdated, timeout=20000) as blocker:
        set_view(canvas, qtbot, X0 + 350 * RES, Y0 - 650 * RES, X0 + 650 * RES, Y0 - 450 * RES, 300, 200)
    stats = blocker.args[0]
    r0, r1, c0, c1 = expected_window(canvas.extent())
    assert stats.window == (r0, c0, r1 - r0, c1 - c0)
    assert stats.shape == (r1 - r0, c1 - c0)
    pred = read_full(run["prediction"])[r0:r1, c0:c1]
    std = read_full(run["std"])[r0:r1, c0:c1]
    valid = np.isfinite(pred)
    assert (~valid).sum() > 0  # the window holds part of the nodata hole
    counts, edges = np.histogram(pred[valid], bins=40)
    np.testing.assert_array_equal(stats.pred_counts, counts)
    np.testing.assert_allclose(stats.pred_edges, edges)
    assert stats.pixels == valid.sum()
    assert stats.mean == pytest.approx(pred[valid].mean(), rel=1e-12)

    limit = 0.01 * np.percentile(np.abs(pred[valid]), 99)
    assert stats.near_zero_limit == pytest.approx(limit, rel=1e-12) and stats.rel_near_zero == 0
    rel = (std / np.abs(pred))[valid]
    low, high = np.percentile(rel, [1, 99])
    assert low < 0.2 < high  # the threshold inside the 1st-99th percentile: the plot spans exactly those
    # a second method: numpy's histogram drops what is outside the range; the dock counts it in the end bars
    rel_counts, rel_edges = np.histogram(rel, bins=40, range=(low, high))
    rel_counts[0] += (rel < low).sum()
    rel_counts[-1] += (rel > high).sum()
    np.testing.assert_array_equal(stats.rel_counts, rel_counts)
    np.testing.assert_allclose(stats.rel_edges, rel_edges)
    assert stats.rel_overflow == (rel > high).sum() > 0 and stats.rel_underflow == (rel < low).sum() > 0
    assert stats.rel_median == pytest.approx(np.median(rel), rel=1e-12)
    assert stats.share_above == pytest.approx((rel > 0.2).mean(), rel=1e-12)
    assert 0.05 < stats.share_above < 0.95  # the threshold cuts the map
    assert dock.share_label.text().startswith(f"{100 * stats.share_above:.1f} %")
    assert dock.rel_median_label.text() == f"{100 * np.median(rel):.1f} %"
    assert dock.clip_label.text() == (
        f"Relative uncertainty shown from {100 * low:.3g} % to {100 * high:.3g} % (1st–99th percentile): "
        f"{(rel < low).sum():,} pixels below in the first bar; {(rel > high).sum():,} pixels above in the last bar.")
    assert dock.rel_axes.get_xlim() == pytest.approx((100 * low, 100 * high))

    # a new threshold: the share follows
    with qtbot.waitSignal(dock.statsUpdated, timeout=20000) as blocker:
        dock.threshold_spin.setValue(35.0)
    assert blocker.args[0].share_above == pytest.approx((rel > 0.35).mean(), rel=1e-12)


def test_predictions_near_zero_are_counted_apart_from_the_relative_statistics(tmp_path):
    """Bare ground beside forest: σ / prediction of the ≈ 0 pixels would be thousands of per cent."""
    from forest_carbon_plugin.gui.stats import Sources, window_stats

    rng = np.random.default_rng(5)
    pred = rng.uniform(50, 250, (60, 80))
    pred[:10] = rng.uniform(-0.4, 0.4, (10, 80))  # 800 pixels ≈ 0 (|value| < 1 % of ~248)
    pred[10, :5] = np.nan
    std = 0.1 * np.abs(pred) + 2.0
    std[11, :3] = np.nan  # 3 pixels without σ
    paths = {}
    for name, data in (("pred", pred), ("std", std)):
        paths[name] = tmp_path / f"{name}.tif"
        with rasterio.open(paths[name], "w", driver="GTiff", width=80, height=60, count=1, dtype="float64",
                           crs="EPSG:32633", transform=from_origin(X0, Y0, RES, RES), nodata=float("nan")) as dst:
            dst.write(data, 1)
    stats = window_stats(Sources(str(paths["pred"]), str(paths["std"])), (X0, Y0 - 600, X0 + 800, Y0),
                         bins=10, threshold=0.2)
    valid = np.isfinite(pred)
    limit = 0.01 * np.percentile(np.abs(pred[valid]), 99)
    assert 2.4 < limit < 2.5
    assert stats.rel_near_zero == 800 and stats.rel_undefined == 3
    kept = valid & np.isfinite(std) & (np.abs(pred) >= limit)
    rel = std[kept] / pred[kept]
    assert stats.rel_pixels == kept.sum() == 60 * 80 - 800 - 5 - 3
    assert stats.rel_median == pytest.approx(np.median(rel), rel=1e-12)
    assert stats.rel_median < 0.2  # with the ≈ 0 pixels the mean would be several hundred per cent
    assert np.nanmean(std[valid] / np.abs(pred[valid])) > 2.0
    assert stats.rel_counts.sum() == kept.sum()
    assert stats.rel_edges[0] <= 0.2 <= stats.rel_edges[-1]  # the threshold line is on the plot
    assert stats.share_above == pytest.approx((rel > 0.2).mean())


def test_the_resolution_read_is_bounded_by_the_canvas(dock, qgis_iface, qtbot):
    canvas = qgis_iface.mapCanvas()
    with qtbot.waitSignal(dock.statsUpdated, timeout=20000) as blocker:
        set_view(canvas, qtbot, X0, Y0 - ROWS * RES, X0 + COLS * RES, Y0, 320, 300)
    stats = blocker.args[0]
    assert stats.window[2:] == (ROWS, COLS)
    assert stats.shape[0] <= 300 and stats.shape[1] <= 320
    assert stats.pred_counts.sum() == stats.pixels
    assert abs(stats.mean - np.nanmean(read_full(dock.sources.prediction))) < 1.0  # Mg/ha, from overviews


def test_extent_changes_do_not_block_the_event_loop(dock, qgis_iface, qtbot, monkeypatch):
    """The statistics of a full-resolution 1500 × 1600 window run in a task's thread: while they run, a 10 ms
    timer on the UI thread keeps ticking, and the result comes back to the UI thread.

    Behaviour, not speed: the statistics are held open until the timer has ticked ten times (on a fast stack
    they take a few ms, too short to see anything between two ticks; on the UI thread no tick would come and
    the wait would time out), then run for real."""
    import threading

    from qgis.core import QgsRectangle
    from qgis.PyQt.QtCore import QTimer

    from forest_carbon_plugin.gui import uncertainty_dock

    canvas = qgis_iface.mapCanvas()
    resize_map(canvas, qtbot, COLS, ROWS)
    real_window_stats = uncertainty_dock.window_stats
    started, release = threading.Event(), threading.Event()
    threads = []

    def held_window_stats(*args, **kwargs):
        threads.append(threading.current_thread())
        started.set()
        release.wait(60)
        return real_window_stats(*args, **kwargs)

    monkeypatch.setattr(uncertainty_dock, "window_stats", held_window_stats)
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    shown_on = []
    dock.statsUpdated.connect(lambda _stats: shown_on.append(threading.current_thread()))
    timer.start()
    try:
        with qtbot.waitSignal(dock.statsUpdated, timeout=60000) as blocker:
            canvas.setExtent(QgsRectangle(X0, Y0 - ROWS * RES, X0 + COLS * RES, Y0))
            qtbot.waitUntil(started.is_set, timeout=20000)
            before = len(ticks)
            # the UI thread turns while the statistics are running (on the UI thread this would time out)
            qtbot.waitUntil(lambda: len(ticks) >= before + 10, timeout=20000)
            release.set()
    finally:
        release.set()
        timer.stop()
    stats = blocker.args[0]
    assert threads and all(t is not threading.main_thread() for t in threads)
    assert shown_on[-1] is threading.main_thread()
    assert stats.shape == (ROWS, COLS)  # full resolution: the heavy case
    assert stats.pred_counts.sum() == stats.pixels > 0


# ----------------------------------------------------------------------------- the map tool

def test_the_click_tool_reports_the_pixel_rasterio_reads(dock, run, qgis_iface, qtbot):
    from qgis.core import QgsPointXY
    from qgis.PyQt.QtCore import QPoint, Qt

    from forest_carbon_plugin.gui.map_tools import PixelInfoTool

    canvas = qgis_iface.mapCanvas()
    # 10 screen pixels per raster pixel: a click lands well inside the pixel
    set_view(canvas, qtbot, X0 + 300 * RES, Y0 - 240 * RES, X0 + 340 * RES, Y0 - 200 * RES, 400, 400)
    dock.identify_button.setChecked(True)
    assert isinstance(canvas.mapTool(), PixelInfoTool)
    arrays = {k: read_full(p) for k, p in run.items()}
    for row, col in ((213, 317), (229, 302), (201, 339)):
        x, y = X0 + (col + 0.5) * RES, Y0 - (row + 0.5) * RES
        screen = canvas.getCoordinateTransform().transform(QgsPointXY(x, y))
        with qtbot.waitSignal(dock.pixelReported, timeout=5000) as blocker:
            qtbot.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(round(screen.x()), round(screen.y())))
        report = blocker.args[0]
        assert (report["row"], report["col"]) == (row, col)
        for kind in ("prediction", "std", "lower", "upper"):
            assert report[kind] == arrays[kind][row, col]
        assert report["relative"] == pytest.approx(arrays["std"][row, col] / abs(arrays["prediction"][row, col]))
    text = dock.pixel_label.text()
    assert f"{arrays['prediction'][201, 339]:.4g}" in text and "interval" in text
    assert dock.info.model_id in text and "agb.onnx" in text

    dock.identify_button.setChecked(False)  # the canvas gets its tool back
    assert not isinstance(canvas.mapTool(), PixelInfoTool)


def test_a_click_on_nodata_reports_no_value(dock, qgis_iface, qtbot):
    from qgis.core import QgsPointXY
    from qgis.PyQt.QtCore import QPoint, Qt

    canvas = qgis_iface.mapCanvas()
    row, col = ROWS // 3 + 10, COLS // 4 + 10  # inside the hole
    set_view(canvas, qtbot, X0 + (col - 20) * RES, Y0 - (row + 20) * RES, X0 + (col + 20) * RES,
             Y0 - (row - 20) * RES, 400, 400)
    dock.identify_button.setChecked(True)
    screen = canvas.getCoordinateTransform().transform(QgsPointXY(X0 + (col + 0.5) * RES, Y0 - (row + 0.5) * RES))
    with qtbot.waitSignal(dock.pixelReported, timeout=5000) as blocker:
        qtbot.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(round(screen.x()), round(screen.y())))
    assert blocker.args[0]["prediction"] is None and blocker.args[0]["relative"] is None
    assert "nodata" in dock.pixel_label.text()


# ----------------------------------------------------------------------------- polygon total

def test_the_polygon_total_is_the_carbon_cores(dock, run, project, qtbot):
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer
    from shapely import wkt

    from forest_carbon_plugin.core.carbon.stock import BiomassMap, CarbonFactors, MonteCarlo, carbon_stock

    polygons = QgsVectorLayer("Polygon?crs=EPSG:32633", "stands", "memory")
    shapes = ["POLYGON((501234 5996789, 503456 5996512, 503011 5994321, 501555 5994876, 501234 5996789))",
              "POLYGON((510000 5990000, 511000 5990000, 511000 5989000, 510000 5990000))"]
    features = []
    for text in shapes:
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromWkt(text))
        features.append(feature)
    polygons.dataProvider().addFeatures(features)
    project.addMapLayer(polygons)
    polygons.selectByIds([next(polygons.getFeatures()).id()])
    dock.polygon_combo.setLayer(polygons)
    assert dock.correlation_range is None  # nothing recorded: carbonstock's conservative default
    dock.range_spin.setValue(0.0)
    assert dock.correlation_range == 0.0  # 0 is carbonstock's independent errors, not "not set"
    dock.range_spin.setValue(150.0)  # carbonstock's CORRELATION_RANGE, the same core function
    with qtbot.waitSignal(dock.polygonTotal, timeout=60000) as blocker:
        dock.total_of_selection()
    record = blocker.args[0]
    expected = carbon_stock([wkt.loads(shapes[0])], BiomassMap(agb=str(run["prediction"]), std=str(run["std"])),
                            factors=CarbonFactors(root_shoot=0.0),
                            monte_carlo=MonteCarlo(confidence=0.9, draws=10_000, seed=0, correlation_range_m=150.0),
                            projects_crs="EPSG:32633")["records"][0]
    assert record == expected
    assert "correlated over 150 m" in dock.polygon_label.text()
    assert record["agb_total_mg"] > 0 and record["co2e_ci_low_t"] < record["co2e_total_t"] < record["co2e_ci_high_t"]
    assert "90 % interval" in dock.polygon_label.text()
    # words an analyst reads: the total in Mg of AGB (the map is in Mg/ha), its interval in Mg
    per = record["agb_total_mg"] / record["co2e_total_t"]
    assert dock.polygon_label.text().startswith(
        f"Area {record['area_ha']:,.1f} ha: total {record['agb_total_mg']:,.0f} Mg AGB (mean ")
    assert (f"interval {record['co2e_ci_low_t'] * per:,.0f} to {record['co2e_ci_high_t'] * per:,.0f} Mg "
            in dock.polygon_label.text())
    assert "map unit" not in dock.polygon_label.text()


# ----------------------------------------------------------------------------- styling and plots

def test_legend_numbers_keep_three_significant_digits():
    from forest_carbon_plugin.styling import legend_number

    cases = {51.32795: "51.3", 199.537: "200", 4.2449: "4.24", 0.012345: "0.0123", 12345.6: "12,300",
             -3.4567: "-3.46", 0.0: "0", 5.0: "5.00", 0.00001234: "1.23e-05"}
    assert {v: legend_number(v) for v in cases} == cases


def test_the_legend_follows_a_rescaled_ramp_at_once(run, project):
    """The layer tree's legend nodes (what the Layers panel draws) hold the new range as soon as
    apply_style returns, in the unit of the file (band metadata), with 3 significant digits."""
    from qgis.core import QgsColorRampLegendNode, QgsLayerTreeModel, QgsRasterLayer
    from qgis.PyQt import sip

    from forest_carbon_plugin.styling import apply_style

    layer = QgsRasterLayer(str(run["prediction"]), "agb")
    project.addMapLayer(layer)
    model = QgsLayerTreeModel(project.layerTreeRoot())
    node = project.layerTreeRoot().findLayer(layer.id())

    def ramp_labels():
        nodes = [n for n in model.layerLegendNodes(node) if n.metaObject().className() == "QgsColorRampLegendNode"]
        return [(s.minimumLabel(), s.maximumLabel()) for s in
                (sip.cast(n, QgsColorRampLegendNode).settings() for n in nodes)]

    assert all(labels == ("", "") for labels in ramp_labels())  # QGIS's default grey style: no labels of ours
    assert apply_style(layer, "prediction")
    with rasterio.open(run["prediction"]) as src:
        values = src.read(1, masked=True).compressed()
        assert src.units[0] == "Mg/ha" or src.tags().get("UNIT") == "Mg/ha"
    renderer = layer.renderer()
    low, high = renderer.classificationMin(), renderer.classificationMax()
    # QGIS's cumulative cut estimates from a histogram: within one bin width of numpy's 2nd/98th percentiles
    bin_width = (values.max() - values.min()) / 1000
    assert abs(low - np.percentile(values, 2)) < 2 * bin_width and abs(high - np.percentile(values, 98)) < 2 * bin_width
    shader = renderer.shader().rasterShaderFunction()
    assert (shader.minimumValue(), shader.maximumValue()) == (low, high)
    def three_digits(v):  # numpy's own rounding to significant digits, values below 1,000 here
        return np.format_float_positional(v, precision=3, unique=False, fractional=False, trim="-")

    assert ramp_labels() == [(f"{three_digits(low)} Mg/ha", f"{three_digits(high)} Mg/ha")]
    assert [i.label for i in shader.colorRampItemList()][::len(shader.colorRampItemList()) - 1] == list(ramp_labels()[0])

def render_alpha(layer, x, y):
    """Render ``layer`` alone onto a transparent image and return the alpha of the pixel at (x, y)."""
    from qgis.core import QgsMapRendererSequentialJob, QgsMapSettings, QgsPointXY, QgsRectangle
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setBackgroundColor(QColor(0, 0, 0, 0))
    settings.setOutputSize(QSize(50, 50))
    settings.setExtent(QgsRectangle(x - 25, y - 25, x + 25, y + 25))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    point = settings.mapToPixel().transform(QgsPointXY(x, y))
    return QColor.fromRgba(image.pixel(int(point.x()), int(point.y()))).alpha()


def test_style_map_styles_the_prediction_and_adds_uncertainty_and_value_by_alpha(dock, run, project, qtbot,
                                                                                 tmp_path, monkeypatch):
    from forest_carbon_plugin.gui import uncertainty_dock
    from forest_carbon_plugin.gui.jobs import manager

    monkeypatch.setattr(uncertainty_dock, "CACHE_DIR", tmp_path / "cache")

    before = len(manager().jobs)
    with qtbot.waitSignal(dock.valueByAlphaReady, timeout=60000) as blocker:
        dock.style_map()
    vba = blocker.args[0]
    layer = dock.prediction_layer
    renderer = layer.renderer()
    assert renderer.type() == "singlebandpseudocolor"
    items = renderer.shader().rasterShaderFunction().colorRampItemList()
    assert items[0].color.name() == "#440154" and items[-1].color.name() == "#fde725"  # viridis
    std_layers = [lyr for lyr in project.mapLayers().values() if lyr.source() == str(run["std"].resolve())]
    assert len(std_layers) == 1 and std_layers[0].renderer().type() == "singlebandpseudocolor"
    assert std_layers[0].renderer().shader().rasterShaderFunction().colorRampItemList()[-1].color.name() == "#7f2704"

    # value by alpha: a real layer whose band 2 is the opacity, used as the renderer's alpha band
    assert vba.isValid() and vba.id() in project.mapLayers()
    assert Path(vba.source()).parent == tmp_path / "cache"
    assert vba.bandCount() == 2 and vba.renderer().alphaBand() == 2
    job = manager().jobs[before]
    assert job.status == "finished" and job.outputs == [vba.source()]
    pred, std = read_full(run["prediction"]), read_full(run["std"])
    with rasterio.open(vba.source()) as src:
        np.testing.assert_array_equal(src.read(1), read_full(run["prediction"]).astype("float32"))
        alpha = src.read(2).astype("float64")
    rel = std / np.abs(pred)
    # opaque up to 10 %, 10 % opacity from 40 % on, linear in between
    fade = np.interp(np.where(np.isfinite(rel), rel, 1e9), [0.1, 0.4], [1.0, 0.1])
    expected = np.where(np.isfinite(pred), 255 * fade, 0.0)
    np.testing.assert_allclose(alpha, expected, rtol=1e-5, atol=1e-3)
    # rendered: a certain pixel stays opaque, an uncertain one fades
    certain = np.unravel_index(np.nanargmin(np.where(np.isfinite(rel), rel, np.inf)), rel.shape)
    uncertain = np.unravel_index(np.nanargmax(np.where(np.isfinite(rel), rel, -np.inf)), rel.shape)
    centre = [(X0 + (c + 0.5) * RES, Y0 - (r + 0.5) * RES) for r, c in (certain, uncertain)]
    assert render_alpha(vba, *centre[0]) >= 250
    assert render_alpha(vba, *centre[1]) <= 30

    # a second click reuses the cached layer
    with qtbot.waitSignal(dock.valueByAlphaReady, timeout=10000):
        dock.style_map()
    assert len(manager().jobs) == before + 1


def test_the_plots_export_as_png(dock, tmp_path):
    from qgis.PyQt.QtGui import QImage

    path = dock.export_plots(tmp_path / "plots.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = QImage(str(path))
    assert image.width() > 300 and image.height() > 300
    # the plots show the statistics' histograms
    np.testing.assert_array_equal(dock.pred_steps.get_data().values, dock.last_stats.pred_counts)
    np.testing.assert_array_equal(dock.rel_steps.get_data().values, dock.last_stats.rel_counts)
    assert dock.pred_steps.get_visible() and dock.rel_steps.get_visible()
    colours = {image.pixel(x, y) for x in range(0, image.width(), 3) for y in range(0, image.height(), 3)}
    assert len(colours) > 20


# ----------------------------------------------------------------------------- plugin life cycle

def test_loading_and_unloading_twice_leaves_nothing_behind(qgis_iface, qgis_processing, qtbot):
    from qgis.core import QgsApplication, QgsProject
    from qgis.PyQt.QtCore import QCoreApplication, QEvent
    from qgis.PyQt.QtWidgets import QDockWidget

    import forest_carbon_plugin
    from forest_carbon_plugin.gui.jobs import manager
    from processing_provider.compat import QAction
    from forest_carbon_plugin.gui.map_tools import PixelInfoTool

    registry = QgsApplication.processingRegistry()
    if registry.providerById("forestcarbon") is not None:
        registry.removeProvider(registry.providerById("forestcarbon"))
    canvas, window, project = qgis_iface.mapCanvas(), qgis_iface.mainWindow(), QgsProject.instance()
    signals = [(canvas, canvas.extentsChanged), (canvas, canvas.mapToolSet), (project, project.layersAdded),
               (project, project.layerWillBeRemoved), (manager(), manager().jobAdded)]
    before = [obj.receivers(sig) for obj, sig in signals]

    def ours(kind):
        return [w for w in window.findChildren(kind) if w.objectName().startswith("forestcarbon")]

    for _ in range(2):
        plugin = forest_carbon_plugin.classFactory(qgis_iface)
        plugin.initGui()
        names = {a.objectName() for a in ours(QAction)}
        assert {"forestcarbon_show_uncertainty_dock", "forestcarbon_show_jobs_dock"} <= names
        for action in ours(QAction):
            if action.objectName().endswith("_dock"):
                action.trigger()
        assert {d.objectName() for d in ours(QDockWidget)} == {"forestcarbon_uncertainty_dock",
                                                               "forestcarbon_jobs_dock"}
        assert [obj.receivers(sig) for obj, sig in signals] != before

        plugin.unload()
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        assert ours(QDockWidget) == [] and ours(QAction) == []
        assert not isinstance(canvas.mapTool(), PixelInfoTool)
        assert [obj.receivers(sig) for obj, sig in signals] == before
        assert registry.providerById("forestcarbon") is None


def test_unload_gives_the_canvas_its_tool_back(qgis_iface, qgis_processing, run, project, prediction_layer, qtbot):
    from qgis.PyQt.QtCore import QCoreApplication, QEvent

    import forest_carbon_plugin
    from forest_carbon_plugin.gui.map_tools import PixelInfoTool

    plugin = forest_carbon_plugin.classFactory(qgis_iface)
    plugin.initGui()
    dock = plugin.docks.show_uncertainty_dock()
    dock.prediction_combo.setLayer(prediction_layer)
    dock.identify_button.setChecked(True)
    canvas = qgis_iface.mapCanvas()
    assert isinstance(canvas.mapTool(), PixelInfoTool)
    plugin.unload()
    wait_for_tasks(qtbot)
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    assert canvas.mapTool() is None
