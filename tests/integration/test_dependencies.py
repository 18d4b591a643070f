"""Acceptance 6: a missing dependency gives a message, not a crash; the algorithm that
needs it fails with the pip command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from forest_carbon_plugin.core import dependencies
from forest_carbon_plugin.core.errors import MissingDependency

from tests.conftest import ROOT, SAMPLE_LAZ


def test_hidden_onnxruntime_gives_message_and_clean_failure(tmp_path):
    """A real QGIS session (pytest-qgis) in a subprocess in which onnxruntime is not importable."""
    report_path = tmp_path / "report.json"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "FOREST_CARBON_HIDE": "onnxruntime",
           "FOREST_CARBON_REPORT": str(report_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.cases.hide_modules", "-o", "python_files=case_*.py",
         "--basetemp", str(tmp_path / "base"), "tests/cases/case_hidden_onnxruntime.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(report_path.read_text())
    # the message bar names the package and offers the installer
    (warning,) = [w for w in report["warnings"] if "onnxruntime" in w]
    assert "Install dependencies" in warning
    assert report["install_buttons"] == ["Install dependencies…"]
    # the algorithm that needs it fails with the pip command, and writes nothing
    assert "-m pip install" in report["modelinfo"] and "onnxruntime" in report["modelinfo"]
    assert "Traceback" not in report["modelinfo"]
    assert report["m_json_exists"] is False
    # the others still run
    assert report["lidarinfo_points"] > 0


def test_qgis_without_the_venv_packages(tmp_path):
    """qgis_process on QGIS's own Python (no .venv on PYTHONPATH): onnxruntime, laspy and
    dask are all absent. The plugin loads, lists its algorithms and fails them cleanly."""
    probe = subprocess.run(["/usr/bin/python3", "-c", "import laspy"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("laspy is installed in the system Python, so it cannot be missing for QGIS here")
    from scripts import package, qgis_env

    config = tmp_path / "config"
    qgis_env.make_profile(package.build(tmp_path / "dist"), config)
    listing = qgis_env.run(["list"], config, python_path=False)
    assert listing.returncode == 0
    assert "forestcarbon:lidarinfo" in listing.stdout
    proc, _ = qgis_env.run_algorithm("forestcarbon:lidarinfo", {
        "INPUT": SAMPLE_LAZ, "OUTPUT_JSON": tmp_path / "r.json", "OUTPUT_HTML": tmp_path / "r.html",
        "OUTPUT_FOOTPRINTS": tmp_path / "fp.gpkg"}, config, python_path=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "-m pip install" in text and "laspy" in text
    assert "Traceback" not in text
    assert not (tmp_path / "r.json").exists()


def test_require_names_the_pip_command():
    with pytest.raises(MissingDependency) as excinfo:
        dependencies.require("json", "forest_carbon_no_such_package")
    message = str(excinfo.value)
    assert "forest_carbon_no_such_package" in message and "-m pip install" in message
    assert dependencies.require("json").dumps({}) == "{}"


def test_pip_command_targets_this_python():
    command = dependencies.pip_command([dependencies.DEPENDENCIES["laspy"]])
    assert command.startswith(dependencies.qgis_python_executable())
    assert "laspy" in command


def test_install_command_per_platform(tmp_path):
    deps = [dependencies.DEPENDENCIES["onnxruntime"], dependencies.DEPENDENCIES["laspy"]]
    linux = dependencies.install_command(deps, tmp_path / "py311", tmp_path / "c.txt", python="/usr/bin/python3.11",
                                         platform="linux")
    assert linux == (f"/usr/bin/python3.11 -m pip install --target {tmp_path / 'py311'} -c {tmp_path / 'c.txt'} "
                     "'onnxruntime>=1.17,<2' 'laspy>=2.5,<3'")
    windows = dependencies.install_command(deps, r"C:\Users\a b\QGIS3\python\forest_carbon_deps\py312",
                                           r"C:\c.txt", platform="win32")
    # the OSGeo4W Shell's python is QGIS's; cmd.exe quotes with double quotes (and < > must be inside them)
    assert windows == ('python -m pip install --target "C:\\Users\\a b\\QGIS3\\python\\forest_carbon_deps\\py312" '
                       '-c "C:\\c.txt" "onnxruntime>=1.17,<2" "laspy>=2.5,<3"')
    mac = dependencies.install_command(deps, "/t", "/c", python="/Applications/QGIS.app/Contents/MacOS/bin/python3",
                                       platform="darwin")
    assert mac.startswith("/Applications/QGIS.app/Contents/MacOS/bin/python3 -m pip install --target /t -c /c ")


def test_dependency_folder_comes_after_qgis_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder = dependencies.deps_dir(tmp_path)
    assert folder == tmp_path / "python" / "forest_carbon_deps" / f"py{sys.version_info[0]}{sys.version_info[1]}"
    assert dependencies.add_deps_dir(folder) is False and str(folder) not in sys.path  # not made until installed
    (folder / "fc_probe_pkg").mkdir(parents=True)
    (folder / "fc_probe_pkg" / "__init__.py").write_text("VALUE = 7\n")
    before = list(sys.path)
    assert dependencies.add_deps_dir(folder) and dependencies.add_deps_dir(folder)
    assert sys.path == before + [str(folder)]  # once, at the end
    assert dependencies.is_available("fc_probe_pkg")


def test_pins_are_what_this_python_runs():
    import numpy

    pins = dependencies.installed_pins()
    assert pins["numpy"] == numpy.__version__.split("+")[0]
    text = dependencies.constraints_text(pins)
    assert f"numpy=={pins['numpy']}\n" in text and text.count("\n") == len(pins)


def test_installer_pins_what_the_suite_runs():
    """The installer's fixed versions are requirements.txt's (the tested set), and an installed package's own
    version wins over them."""
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    for pin in dependencies.TESTED_PINS:
        assert pin in requirements, pin
    text = dependencies.install_constraints({"protobuf": "4.21.12", "numpy": "1.24.2"})
    lines = text.splitlines()
    assert "protobuf==4.21.12" in lines and "protobuf==5.29.5" not in lines
    assert "skl2onnx==1.19.1" in lines and "numpy==1.24.2" in lines
