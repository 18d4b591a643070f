"""The plugin in the real QGIS desktop (the ``qgis`` binary, not a stand-in main window) under Xvfb.

QGIS starts with a throwaway profile holding the packaged plugin (conftest's ``qgis_config``) at
1366×768, and runs tests/desktop_session.py (``--code``), which opens the uncertainty explorer from its
menu action, clicks *Style map*, runs predictraster from the toolbox's algorithm dialog, and reports
what the widgets show. Screenshots are kept in build/artifacts/ (git-ignored). References: the renderer
QGIS holds (legend), each button's size hint (layout), numpy on the raster (statistics), the dialog's
output file (jobs dock).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "build" / "artifacts"
SCREEN = (1366, 768)


@pytest.fixture(scope="module")
def desktop(qgis_config, tmp_path_factory):
    """Run the session once; returns (report, output folder, the prediction's paths)."""
    from scripts import qgis_env
    from tests.gui.test_docks import RES, X0, Y0, make_prediction

    if shutil.which("xvfb-run") is None or shutil.which("qgis") is None:
        pytest.skip("the QGIS desktop under Xvfb needs the Debian packages qgis and xvfb")
    out = tmp_path_factory.mktemp("desktop")
    run = make_prediction(out / "data", 300, 400)
    view = [X0 + 20 * RES, Y0 - 280 * RES, X0 + 380 * RES, Y0 - 20 * RES]
    job = {"prediction": str(run["prediction"]), "features": str(out / "data" / "features.tif"),
           "model": str(out / "data" / "agb.onnx"), "toolbox_output": str(out / "toolbox_agb.tif"), "view": view}
    (out / "job.json").write_text(json.dumps(job))
    env = qgis_env.environment(qgis_config)
    env.pop("DISPLAY", None)
    env.update(QT_QPA_PLATFORM="xcb", FC_DESKTOP_OUT=str(out))
    cmd = ["xvfb-run", "-a", "-s", f"-screen 0 {SCREEN[0]}x{SCREEN[1]}x24", "qgis", "--nologo", "--noversioncheck",
           "--code", str(ROOT / "tests" / "desktop_session.py")]
    # a session of its own: on a timeout the whole group (xvfb-run, Xvfb, qgis) is ended, not only xvfb-run
    proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    report_path = out / "report.json"
    assert report_path.is_file(), f"QGIS wrote no report (rc {proc.returncode}):\n{output[-6000:]}"
    report = json.loads(report_path.read_text())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for png in out.glob("*.png"):
        shutil.copy(png, ARTIFACTS / f"desktop_{png.name}")
    assert report["errors"] == [], report["errors"][0]
    return report, out, run


def test_the_real_desktop_loaded_the_installed_plugin(desktop):
    report, out, _ = desktop
    assert report["platform"] == "xcb" and report["plugin_loaded"]
    assert report["qgis"].split(".")[0] == "3"
    assert report["window_size"] == list(SCREEN)
    assert {"uncertainty_dock.png", "jobs_dock.png"} <= {p.name for p in out.glob("*.png")}


def test_the_legend_shows_the_renderers_range_right_after_style_map(desktop):
    report, _, _ = desktop
    before, after = report["legend_before"], report["legend_after"]
    unit = report["unit"]
    assert unit == "Mg/ha"
    renderer = after["renderer"]
    assert renderer["min"] == pytest.approx(renderer["shader_min"]) and renderer["max"] == pytest.approx(renderer["shader_max"])
    # read from the layer tree view before any event was processed: no refresh needed
    assert after["ramp"] == [f"{report['legend_number_min']} {unit}", f"{report['legend_number_max']} {unit}"]
    assert after["ramp"] != before["ramp"]
    assert renderer["item_labels"][0] == after["ramp"][0] and renderer["item_labels"][-1] == after["ramp"][-1]
    # three significant digits: "52.3 Mg/ha", "239 Mg/ha"
    for label in after["ramp"]:
        digits = label.split()[0].replace(",", "").replace(".", "").lstrip("0")
        assert len(digits) <= 3 or digits.endswith("0" * (len(digits) - 3)), label


def test_a_toolbox_output_loads_with_its_legend_labelled(desktop):
    report, _, _ = desktop
    legend = report["toolbox_layer_legend"]
    assert legend is not None, "the dialog's output was not loaded into the project"
    assert legend["renderer"]["type"] == "singlebandpseudocolor"
    assert legend["ramp"] == [legend["renderer"]["item_labels"][0], legend["renderer"]["item_labels"][-1]]
    assert legend["ramp"][0].endswith(" Mg/ha")


def assert_whole(buttons, width):
    for button in buttons:
        x, _y, w, _h = button["rect"]
        assert 0 <= x and x + w <= width, button  # inside the dock (the scroll area scrolls vertically only)
        assert button["hint"][0] <= w, button  # not squeezed below what its text needs


def test_the_docks_at_their_default_width_show_every_button_whole(desktop):
    report, _, _ = desktop
    width = report["dock_width"]
    assert 150 < width < SCREEN[0] / 2
    texts = {b["text"] for b in report["dock_buttons"]}
    assert {"Style map", "Identify pixel", "Export plots…"} <= texts
    assert_whole(report["dock_buttons"], width)
    texts = [b["text"] for b in report["jobs_dock_buttons"]]
    assert texts.count("Cancel") == texts.count("Add to map") == texts.count("Log") >= 2  # the toolbox run, the layer
    assert_whole(report["jobs_dock_buttons"], report["jobs_dock_width"])


def test_the_dock_reports_what_the_raster_holds(desktop):
    import rasterio

    report, _, run = desktop
    assert report["files"] == {k: str(Path(run[k]).resolve()) for k in ("std", "lower", "upper")}
    labels = report["labels"]
    assert "in Mg/ha" in labels["info_label"] and "std, lower, upper" in labels["info_label"]
    r0, c0, hh, ww = report["stats"]["window"]
    with rasterio.open(run["prediction"]) as src:
        pred = src.read(1).astype("float64")[r0:r0 + hh, c0:c0 + ww]
    with rasterio.open(run["std"]) as src:
        std = src.read(1).astype("float64")[r0:r0 + hh, c0:c0 + ww]
    assert report["stats"]["shape"] == [hh, ww]  # read at full resolution: the canvas is larger than the window
    from forest_carbon_plugin.styling import legend_number

    assert labels["mean_label"] == f"{legend_number(np.nanmean(pred))} Mg/ha"
    valid = np.isfinite(pred)
    rel = std[valid] / np.abs(pred[valid])
    assert labels["rel_median_label"] == f"{100 * np.median(rel):.1f} %"
    assert labels["pixels_label"].startswith(f"{valid.sum():,} read")
    low, high = report["stats"]["rel_edges"]
    assert low <= report["stats"]["threshold"] <= high and report["stats"]["line_visible"]
    assert report["stats"]["xlim"] == pytest.approx([100 * low, 100 * high])
    assert "1st–99th percentile" in labels["clip_label"]


def test_the_jobs_dock_lists_a_run_started_from_the_toolbox(desktop):
    report, out, _ = desktop
    job = report["toolbox_job"]
    assert report["jobs_listed"] == 1 and job is not None
    assert job["is_run_job"] and job["status"] == "finished" and job["row_status"] == "finished"
    assert job["progress"] == 100
    assert job["outputs"] == [str(out / "toolbox_agb.tif")] and (out / "toolbox_agb.tif").is_file()
    assert any("Execution provider" in line for line in job["log"])


def test_the_screenshots_show_a_map_and_the_docks(desktop, qgis_app):
    from qgis.PyQt.QtGui import QColor, QImage

    report, out, _ = desktop
    image = QImage(str(out / "uncertainty_dock.png"))
    assert (image.width(), image.height()) == tuple(report["window_size"])
    x0, y0, w, h = report["canvas_rect"]
    colours = [QColor(image.pixel(x, y)) for x in range(x0, x0 + w, 4) for y in range(y0, y0 + h, 4)]
    assert len({c.rgb() for c in colours}) > 100  # a continuous ramp, not a blank canvas
    dx0, dy0, dw, dh = report["dock_rect"]
    assert len({image.pixel(x, y) for x in range(dx0, dx0 + dw, 3) for y in range(dy0, dy0 + dh, 3)}) > 30
    assert os.path.getsize(out / "jobs_dock.png") > 10_000
