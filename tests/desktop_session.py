"""Run inside the real QGIS desktop (``qgis --code tests/desktop_session.py``) by test_desktop_xvfb.py.

It drives the installed plugin as an analyst would (menu action, dock buttons, the toolbox's algorithm
dialog), records what the widgets show in ``$FC_DESKTOP_OUT/report.json``, saves screenshots beside it,
and quits QGIS. Nothing here asserts: the test does, on the report. Any error goes into the report.
"""

import json
import os
import time
import traceback
from pathlib import Path

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsRectangle
from qgis.PyQt.QtCore import QEventLoop, QTimer
from qgis.PyQt.QtWidgets import QAbstractButton, QPushButton
from qgis.utils import iface, plugins

OUT = Path(os.environ["FC_DESKTOP_OUT"])
JOB = json.loads((OUT / "job.json").read_text())
report = {"errors": []}


def pump(seconds: float) -> None:
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def wait_until(condition, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        pump(0.05)
    return True


def legend_of(layer) -> dict:
    """What the layer tree view shows for ``layer``: the continuous ramp's end labels, or the item labels."""
    from qgis.core import QgsColorRampLegendNode
    from qgis.PyQt import sip
    from qgis.PyQt.QtCore import Qt

    model = iface.layerTreeView().layerTreeModel()
    node = QgsProject.instance().layerTreeRoot().findLayer(layer.id())
    shown = {"ramp": None, "items": []}
    for legend_node in model.layerLegendNodes(node):
        if legend_node.metaObject().className() == "QgsColorRampLegendNode":
            settings = sip.cast(legend_node, QgsColorRampLegendNode).settings()
            shown["ramp"] = [settings.minimumLabel(), settings.maximumLabel()]
        else:
            shown["items"].append(legend_node.data(Qt.ItemDataRole.DisplayRole))
    renderer = layer.renderer()
    shader = renderer.shader().rasterShaderFunction() if renderer.type() == "singlebandpseudocolor" else None
    shown["renderer"] = None if shader is None else {
        "type": renderer.type(), "min": renderer.classificationMin(), "max": renderer.classificationMax(),
        "shader_min": shader.minimumValue(), "shader_max": shader.maximumValue(),
        "item_labels": [item.label for item in shader.colorRampItemList()]}
    return shown


def buttons_of(widget) -> list:
    """Each visible button: its text, geometry in ``widget``'s coordinates, width and size hint."""
    found = []
    for button in widget.findChildren(QAbstractButton):
        if not button.isVisibleTo(widget) or not button.text():
            continue
        top_left = button.mapTo(widget, button.rect().topLeft())
        found.append({"text": button.text(), "rect": [top_left.x(), top_left.y(), button.width(), button.height()],
                      "hint": [button.sizeHint().width(), button.sizeHint().height()]})
    return found


def rect_in_window(widget) -> list:
    top_left = widget.mapTo(iface.mainWindow(), widget.rect().topLeft())
    return [top_left.x(), top_left.y(), widget.width(), widget.height()]


def session() -> None:
    window = iface.mainWindow()
    window.resize(1366, 768)  # the screen: Xvfb has no window manager to maximise it
    report["qgis"] = __import__("qgis.core").core.Qgis.QGIS_VERSION
    report["platform"] = QgsApplication.platformName()
    report["plugin_loaded"] = "forest_carbon_plugin" in plugins
    plugin = plugins["forest_carbon_plugin"]
    from forest_carbon_plugin.gui.jobs import RunJob, manager
    from forest_carbon_plugin.styling import legend_number

    # the uncertainty explorer, opened from its menu action, at the width QGIS gives it
    action = next(a for a in window.findChildren(type(plugin.docks.actions[0]))
                  if a.objectName() == "forestcarbon_show_uncertainty_dock")
    action.trigger()
    dock = plugin.docks.uncertainty_dock
    layer = QgsRasterLayer(JOB["prediction"], "agb")
    QgsProject.instance().addMapLayer(layer)
    canvas = iface.mapCanvas()
    canvas.setDestinationCrs(layer.crs())
    canvas.setExtent(QgsRectangle(*JOB["view"]))
    dock.prediction_combo.setLayer(layer)
    wait_until(lambda: dock.last_stats is not None and not dock.stats_running)
    report["legend_before"] = legend_of(layer)
    # the button, as a user clicks it; the legend is read before any event is processed
    dock.style_button.click()
    report["legend_after"] = legend_of(layer)
    report["unit"] = dock.info.unit
    report["legend_number_min"] = legend_number(layer.renderer().classificationMin())
    report["legend_number_max"] = legend_number(layer.renderer().classificationMax())
    wait_until(lambda: not dock.stats_running and QgsApplication.taskManager().countActiveTasks() == 0
               and not canvas.isDrawing())
    iface.layerTreeView().setCurrentLayer(layer)
    pump(0.5)
    report["dock_width"], report["dock_height"] = dock.width(), dock.height()
    report["dock_rect"] = rect_in_window(dock)
    report["canvas_rect"] = rect_in_window(canvas)
    report["dock_buttons"] = buttons_of(dock)
    report["window_size"] = [window.width(), window.height()]
    report["labels"] = {name: getattr(dock, name).text() for name in (
        "info_label", "pixels_label", "mean_label", "rel_median_label", "share_label", "near_zero_label",
        "clip_label")}
    report["files"] = {k: w.filePath() for k, w in dock.file_widgets.items()}
    stats = dock.last_stats
    report["stats"] = {"window": list(stats.window), "shape": list(stats.shape), "rel_median": stats.rel_median,
                       "rel_edges": [float(stats.rel_edges[0]), float(stats.rel_edges[-1])],
                       "threshold": stats.threshold, "line_visible": bool(dock.threshold_line.get_visible()),
                       "xlim": list(dock.rel_axes.get_xlim())}
    window.grab().save(str(OUT / "uncertainty_dock.png"), "PNG")
    dock.widget().widget().grab().save(str(OUT / "uncertainty_dock_contents.png"), "PNG")  # the scrolled part too

    # a toolbox run: the algorithm dialog the toolbox opens, its Run button
    import processing

    before = len(manager().jobs)
    dialog = processing.createAlgorithmDialog("forestcarbon:predictraster", {
        "INPUT": [JOB["features"]], "MODEL": JOB["model"], "TILE_SIZE": 64, "OUTPUT": JOB["toolbox_output"]})
    dialog.show()
    run_button = next(b for b in dialog.findChildren(QPushButton) if b.text().replace("&", "") == "Run")
    run_button.click()
    wait_until(lambda: len(manager().jobs) > before and not manager().jobs[-1].running, 60)
    jobs_dock = plugin.docks.show_jobs_dock()
    job = manager().jobs[-1] if len(manager().jobs) > before else None
    report["toolbox_job"] = None if job is None else {
        "class": type(job).__name__, "is_run_job": isinstance(job, RunJob), "name": job.name, "status": job.status,
        "progress": job.progress, "outputs": job.outputs, "log": job.log,
        "row_status": jobs_dock.row_of(job).status_label.text() if jobs_dock.row_of(job) else None}
    report["jobs_listed"] = len(manager().jobs) - before
    wait_until(lambda: any(lyr.source() == JOB["toolbox_output"] for lyr in QgsProject.instance().mapLayers().values()), 20)
    loaded = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.source() == JOB["toolbox_output"]]
    report["toolbox_layer_legend"] = legend_of(loaded[0]) if loaded else None
    dialog.close()
    pump(0.3)
    window.grab().save(str(OUT / "jobs_dock.png"), "PNG")
    report["jobs_dock_rect"] = rect_in_window(jobs_dock)
    report["jobs_dock_width"] = jobs_dock.width()
    report["jobs_dock_buttons"] = buttons_of(jobs_dock)


def main() -> None:
    try:
        session()
    except Exception:  # noqa: BLE001 - the test reads it from the report
        report["errors"].append(traceback.format_exc())
    finally:
        (OUT / "report.json").write_text(json.dumps(report, indent=1, default=str))
        QgsApplication.exit(0)


# --code runs before QGIS's event loop starts: an exit() then would be lost
QTimer.singleShot(0, main)
