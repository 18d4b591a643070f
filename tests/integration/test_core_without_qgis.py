"""Acceptance 4: the core never needs QGIS (it must run on a Dask worker without it)."""

import json
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = r"""
import importlib, importlib.abc, json, pkgutil, sys

class NoQgis(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("qgis", "PyQt5", "sip"):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
        return None

sys.meta_path.insert(0, NoQgis())
try:
    import qgis  # noqa: F401
    qgis_importable = True
except ImportError:
    qgis_importable = False

import forest_carbon_plugin
GUI = {"forest_carbon_plugin.plugin", "forest_carbon_plugin.settings", "forest_carbon_plugin.gui"}
imported, failed = [], {}
for info in pkgutil.walk_packages(forest_carbon_plugin.__path__, "forest_carbon_plugin."):
    if any(info.name == g or info.name.startswith(g + ".") for g in GUI):
        continue
    try:
        importlib.import_module(info.name)
        imported.append(info.name)
    except Exception as exc:
        failed[info.name] = repr(exc)
print(json.dumps({"qgis_importable": qgis_importable, "imported": imported, "failed": failed,
                  "qgis_loaded": [m for m in sys.modules if m.split(".")[0] in ("qgis", "PyQt5")]}))
"""


def test_every_core_module_imports_without_qgis():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["qgis_importable"] is False
    assert report["failed"] == {}
    assert report["qgis_loaded"] == []
    # the modules that exist today must all have been tried
    for name in ("forest_carbon_plugin.core.lidar.info", "forest_carbon_plugin.core.models.info",
                 "forest_carbon_plugin.core.outputs", "forest_carbon_plugin.core.dependencies",
                 "forest_carbon_plugin.paths", "forest_carbon_plugin.core.imagery.hls",
                 "forest_carbon_plugin.simulate.scene", "forest_carbon_plugin.simulate.lidar",
                 "forest_carbon_plugin.simulate.optical", "forest_carbon_plugin.simulate.__main__",
                 "forest_carbon_plugin.core.raster.write", "forest_carbon_plugin.core.raster.read", "forest_carbon_plugin.core.imagery.harmonize",
                 "forest_carbon_plugin.core.imagery.highres", "forest_carbon_plugin.core.imagery.sar",
                 "forest_carbon_plugin.core.imagery.indices", "forest_carbon_plugin.core.imagery.composite"):
        assert name in report["imported"]
