"""Issue 19 item 17: the installed plugin owns only its package name, and a reload runs edited code.

The zip of `make package` (scripts/package.py makes its processing_provider imports relative) unpacked
into a throwaway profile; a fresh QGIS (standalone PyQGIS with a stub iface, started as the desktop starts
plugins) in which another plugin's top-level ``processing_provider`` package is importable first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

from scripts import qgis_env

from tests.conftest import ROOT, SAMPLE_LAZ

DRIVER = ROOT / "tests" / "cases" / "fresh_qgis.py"
MARKER = "Edited in the installed copy for the reload test."


def test_zip_has_no_top_level_provider_import(plugin_zip):
    archive = zipfile.ZipFile(plugin_zip)
    offenders = []
    for name in archive.namelist():
        if name.endswith(".py"):
            for number, line in enumerate(archive.read(name).decode("utf-8").splitlines(), 1):
                if line.lstrip().startswith(("from processing_provider", "import processing_provider")):
                    offenders.append(f"{name}:{number}: {line.strip()}")
    assert offenders == []
    # the rewrite keeps the names: gui/docks.py imports compat two levels up
    docks = archive.read("forest_carbon_plugin/gui/docks.py").decode("utf-8")
    assert "from ..processing_provider.compat import" in docks


def test_installed_plugin_namespace_and_reload(plugin_zip, tmp_path):
    config = tmp_path / "config"
    plugin_dir = qgis_env.install_zip(plugin_zip, config / "profiles" / "default")
    # another plugin's generic package, importable before ours could be: it must never be imported
    decoy = tmp_path / "other_plugin"
    (decoy / "processing_provider").mkdir(parents=True)
    (decoy / "processing_provider" / "__init__.py").write_text("raise ImportError('the other plugin')\n")
    spec_path, report_path = tmp_path / "spec.json", tmp_path / "report.json"
    algorithm_file = "processing_provider/lidar_info.py"
    original = "Reference: ASPRS LAS Specification 1.4 R15 (2019)."
    assert original in (plugin_dir / algorithm_file).read_text(encoding="utf-8")
    spec_path.write_text(json.dumps({
        "report": str(report_path), "gui": True, "steps": ["start", "edit_help", "reload", "run"],
        "edit": [algorithm_file, original, MARKER], "edit_algorithm": "forestcarbon:lidarinfo",
        "runs": [["forestcarbon:lidarinfo", {"INPUT": str(SAMPLE_LAZ), "OUTPUT_JSON": str(tmp_path / "i.json"),
                                             "OUTPUT_HTML": str(tmp_path / "i.html"),
                                             "OUTPUT_FOOTPRINTS": str(tmp_path / "fp.gpkg")}, "lidar"]]}))
    env = {**os.environ, "QGIS_CUSTOM_CONFIG_PATH": str(config), "QT_QPA_PLATFORM": "offscreen",
           "PYTHONPATH": str(decoy)}
    proc = subprocess.run([sys.executable, str(DRIVER), str(spec_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert report_path.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert not report["errors"], "\n".join(report["errors"])
    plugins_dir = str(config / "profiles" / "default" / "python" / "plugins")
    for key in ("after_start", "after_reload", "after_run"):
        state = report[key]
        assert state["processing_provider_loaded"] is False, key
        assert state["plugin_file"].startswith(plugins_dir), (key, state["plugin_file"])
        # nothing on sys.path beyond QGIS's plugins folder (the dependency folder exists only once installed)
        assert [p for p in state["new_sys_path"] if p != plugins_dir] == [], (key, state["new_sys_path"])
    assert MARKER not in report["help_before_reload"] and original in report["help_before_reload"]
    assert report["reloaded"] is True
    # every module of the plugin was loaded again from disk (QGIS alone forgets only those its hook saw)
    assert report["modules_before_reload"] > 30 and report["modules_kept_by_reload"] == []
    assert MARKER in report["help_after_reload"] and original not in report["help_after_reload"]
    assert report["lidar"]["result"]["POINT_COUNT"] > 0
