"""Issue 19 item 13, acceptance 4: *Install dependencies* on a QGIS whose Python lacks them.

Debian's QGIS on its own Python (/usr/bin/python3, no .venv, a clean PYTHONPATH and no pip configuration)
with the plugin zip in a fresh profile: the installer's core function (what the button's task runs) installs
onnxruntime, laspy, lazrs, dask, distributed... from a PEP 503 index served on 127.0.0.1 out of the
wheelhouse `make setup` downloads; a second fresh QGIS then finds them through the plugin's start-up alone
and runs lidarinfo and modelinfo, with numpy still Debian's.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from forest_carbon_plugin.core import dependencies
from scripts import qgis_env

from tests.conftest import ROOT, SAMPLE_LAZ

WHEELHOUSE = ROOT / ".wheelhouse"
DRIVER = ROOT / "tests" / "cases" / "fresh_qgis.py"
SYSTEM_PYTHON = "/usr/bin/python3"


def _system_numpy():
    out = subprocess.run([SYSTEM_PYTHON, "-I", "-c", "import numpy; print(numpy.__version__); print(numpy.__file__)"],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return out[0], out[1]


@pytest.fixture
def local_index(tmp_path):
    """A PEP 503 simple index of the wheelhouse on 127.0.0.1; its URL."""
    plan = WHEELHOUSE / "plan.txt"
    if not plan.is_file() or not plan.read_text().strip():
        pytest.skip(f"{plan} is absent or empty: `make setup` downloads the installer's wheels there")
    root = tmp_path / "index"
    projects: dict[str, list[Path]] = {}
    for wheel in sorted(WHEELHOUSE.glob("*.whl")):
        projects.setdefault(re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower(), []).append(wheel)
    for project, wheels in projects.items():
        folder = root / "simple" / project
        folder.mkdir(parents=True)
        links = []
        for wheel in wheels:
            (folder / wheel.name).symlink_to(wheel)
            links.append(f'<a href="{wheel.name}">{wheel.name}</a><br>')
        (folder / "index.html").write_text("<!DOCTYPE html><html><body>" + "".join(links) + "</body></html>")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served = []
    server.served = served
    yield f"http://127.0.0.1:{server.server_address[1]}/simple/", served
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        self.server.served.append(str(args[0]) if args else "")  # the request line, e.g. "GET /simple/x/y.whl"


def _fresh_qgis(config: Path, spec: dict, tmp_path: Path, name: str, python: str = SYSTEM_PYTHON) -> dict:
    spec_path, report = tmp_path / f"{name}.json", tmp_path / f"{name}_report.json"
    spec_path.write_text(json.dumps({**spec, "report": str(report)}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    # nothing but the index the test serves: no /etc/pip.conf, ~/.config/pip or PIP_* find-links
    env.update(PIP_CONFIG_FILE=os.devnull, QGIS_CUSTOM_CONFIG_PATH=str(config), QT_QPA_PLATFORM="offscreen",
               PATH="/usr/bin:/bin")
    proc = subprocess.run([python, str(DRIVER), str(spec_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert report.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(report.read_text())
    assert not doc["errors"], "\n".join(doc["errors"]) + proc.stderr[-2000:]
    return doc


def test_install_dependencies_into_a_fresh_profile(tmp_path, local_index, plugin_zip):
    url, served = local_index
    probe = subprocess.run([SYSTEM_PYTHON, "-I", "-c", "import onnxruntime"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("onnxruntime is installed in the system Python: it cannot be missing for QGIS here")
    config = tmp_path / "config"
    qgis_env.make_profile(plugin_zip, config)
    from tests.onnx_models import affine_model

    model = affine_model(tmp_path / "affine.onnx", scale=2.0, offset=1.0, bands=3)
    numpy_version, numpy_file = _system_numpy()

    first = _fresh_qgis(config, {"steps": ["start_processing", "install"], "pip_args": ["--index-url", url]},
                        tmp_path, "install")
    assert {"onnxruntime", "laspy", "lazrs", "dask", "distributed"} <= set(first["missing"])
    installed = {r.split("==")[0].lower().replace("_", "-") for r in first["installed"]}
    assert {"onnxruntime", "laspy", "lazrs", "dask", "distributed"} <= installed
    # never another numpy (nor anything QGIS's Python has): the plan left them out
    assert "numpy" not in installed
    deps_dir = Path(first["deps_dir"])
    assert deps_dir == Path(first["settings_dir"]) / "python" / "forest_carbon_deps" / \
        f"py{sys.version_info[0]}{sys.version_info[1]}"
    assert not list(deps_dir.glob("numpy*")), "pip put a numpy into the plugin's folder"
    # every wheel came from the index on 127.0.0.1 (the server saw each one requested)
    assert sum(".whl" in line for line in served) >= len(first["installed"])

    second = _fresh_qgis(config, {"steps": ["start_processing", "run", "train"], "work": str(tmp_path), "runs": [
        ["forestcarbon:lidarinfo", {"INPUT": str(SAMPLE_LAZ), "OUTPUT_JSON": str(tmp_path / "info.json"),
                                    "OUTPUT_HTML": str(tmp_path / "info.html"),
                                    "OUTPUT_FOOTPRINTS": str(tmp_path / "fp.gpkg")}, "lidar"],
        ["forestcarbon:modelinfo", {"INPUT": str(model), "OUTPUT_JSON": str(tmp_path / "model.json")}, "model"],
    ]}, tmp_path, "run")
    assert second["missing"] == [], second["missing"]
    assert second["after_start"]["sys_path"][-1] == str(deps_dir), "the folder must come after QGIS's paths"
    assert second["laspy_file"].startswith(str(deps_dir)) and second["onnxruntime_file"].startswith(str(deps_dir))
    assert second["after_run"]["numpy"] == [numpy_version, numpy_file]
    assert numpy_file.startswith("/usr/lib/python3/")
    import laspy

    info = json.loads((tmp_path / "info.json").read_text())
    assert info["summary"]["point_count"] == laspy.open(SAMPLE_LAZ).header.point_count
    # training's export works with the versions installed (protobuf/onnx/skl2onnx pinned as the suite runs them):
    # random forest gives mean and σ, the quantile model its three quantiles in one graph
    assert len(second["train"]["fit_forest_ensemble"]) == 2 and len(second["train"]["fit_quantile_gbm"]) >= 1
    assert all(shape[0] == 4 for shapes in second["train"].values() for shape in shapes)
    # the graph affine_model wrote: input x, (N, 3, H, W), read by the onnxruntime just installed
    text = json.dumps(json.loads((tmp_path / "model.json").read_text()))
    assert '"name": "x", "shape": ["N", 3, "H", "W"]' in text and "CPUExecutionProvider" in text


def test_dialog_runs_pip_in_a_task_and_shows_its_log(qgis_app, qgis_iface, tmp_path, monkeypatch):
    """The button's path in QGIS: the dialog lists what is missing, shows the copyable command, runs the
    installer in a QgsTask (the UI keeps turning) and shows pip's own failure when the index has nothing."""
    import time

    from qgis.core import QgsApplication
    from qgis.PyQt.QtWidgets import QApplication

    from forest_carbon_plugin.gui.installer import InstallDialog

    fake = dependencies.Dependency("fc_no_such_module", "fc-no-such-module==1.0", "testing the installer")
    monkeypatch.setitem(dependencies.DEPENDENCIES, fake.module, fake)
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")  # the discard port: nothing answers
    monkeypatch.setenv("PIP_RETRIES", "0")
    dialog = InstallDialog()
    assert [d.module for d in dialog.missing] == ["fc_no_such_module"]
    assert "fc-no-such-module==1.0" in dialog.command.text() and "--target" in dialog.command.text()
    assert dialog.install_button.isEnabled() and not dialog.cancel_button.isEnabled()
    dialog.start()
    assert dialog.task is not None and not dialog.close_button.isEnabled()
    ticks, deadline = 0, time.monotonic() + 120
    while dialog.task is not None and time.monotonic() < deadline:
        QApplication.processEvents()
        ticks += 1
        time.sleep(0.02)
    assert dialog.task is None, "the installer task did not end"
    assert ticks > 5  # the event loop kept running while pip ran
    log = dialog.log.toPlainText()
    assert "--dry-run" in log and "fc-no-such-module" in log and "pip failed" in log
    assert dialog.install_button.isEnabled() and dialog.close_button.isEnabled()
    assert QgsApplication.taskManager().count() == 0 or all(
        t.description() != "Forest Carbon: install dependencies" for t in QgsApplication.taskManager().activeTasks())
    dialog.close()


def test_cancel_stops_pip(qgis_app, tmp_path, monkeypatch):
    """Cancel in the dialog ends a pip that is waiting on a silent index within seconds, not at pip's timeout."""
    import socket
    import time

    from qgis.PyQt.QtWidgets import QApplication

    from forest_carbon_plugin.gui.installer import InstallDialog

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the backlog; nothing ever answers
    fake = dependencies.Dependency("fc_no_such_module", "fc-no-such-module==1.0", "testing the installer")
    monkeypatch.setitem(dependencies.DEPENDENCIES, fake.module, fake)
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{silent.getsockname()[1]}/simple/")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "120")
    try:
        dialog = InstallDialog()
        dialog.start()
        deadline = time.monotonic() + 60
        while "$ " not in dialog.log.toPlainText() and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.02)
        time.sleep(1.5)  # pip is now waiting for the index
        assert dialog.task is not None and dialog.cancel_button.isEnabled()
        dialog.cancel_button.click()
        cancelled_at = time.monotonic()
        while dialog.task is not None and time.monotonic() < cancelled_at + 30:
            QApplication.processEvents()
            time.sleep(0.02)
        assert dialog.task is None and time.monotonic() - cancelled_at < 10
        assert "cancelled" in dialog.log.toPlainText().lower()
        assert not dependencies.is_available("fc_no_such_module")
        dialog.close()
    finally:
        silent.close()
