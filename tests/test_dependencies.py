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

from .conftest import ROOT, SAMPLE_LAZ


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
    # the message bar names the package and the pip command for this Python
    (warning,) = [w for w in report["warnings"] if "onnxruntime" in w]
    assert "-m pip install" in warning
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
