"""Run by tests/gui/test_qt6_ready.py in a fresh interpreter, so that our modules' import-time code runs
under the warning recorder too; not collected by the main suite (its name does not start with test_)."""

import importlib
import json
import os
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = [str(ROOT / d) for d in ("processing_provider", "forest_carbon_plugin", "scripts", "tests", "bench")]


def _modules():
    for folder, package in ((ROOT / "processing_provider", "processing_provider"),
                            (ROOT / "forest_carbon_plugin" / "gui", "forest_carbon_plugin.gui")):
        for path in sorted(folder.glob("*.py")):
            yield package if path.stem == "__init__" else f"{package}.{path.stem}"
    yield "forest_carbon_plugin.plugin"
    yield "scripts.make_models"


def test_case(qgis_iface, qgis_processing, tmp_path):
    from qgis.core import QgsApplication

    log = []
    QgsApplication.messageLog().messageReceived.connect(
        lambda message, tag, level: log.append(f"[{tag}] {message}"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in _modules():
            importlib.import_module(name)
        import forest_carbon_plugin
        from scripts import make_models

        from ..conftest import SAMPLE_LAZ

        plugin = forest_carbon_plugin.classFactory(qgis_iface)
        plugin.initGui()  # registers the provider: every algorithm's initAlgorithm runs
        # the builds read their children's parameter definitions from the registered provider
        make_models.area_based_approach()
        make_models.forest_carbon_chain()
        provider = QgsApplication.processingRegistry().providerById("forestcarbon")
        algorithms = len(provider.algorithms())
        docks = plugin.docks
        docks.show_uncertainty_dock()
        docks.show_jobs_dock()
        import processing

        ran = 0
        processing.run("forestcarbon:lidarinfo", {
            "INPUT": str(SAMPLE_LAZ), "OUTPUT_JSON": str(tmp_path / "l.json"), "OUTPUT_HTML": str(tmp_path / "l.html"),
            "OUTPUT_FOOTPRINTS": str(tmp_path / "footprints.gpkg")})
        ran += 1
        processing.run("forestcarbon:treetops", {
            "INPUT": str(SAMPLE_LAZ), "WS_INTERCEPT": 5, "OUTPUT": str(tmp_path / "tops.gpkg"),
            "OUTPUT_CROWNS": str(tmp_path / "crowns.gpkg")})
        ran += 1
        processing.run("forestcarbon:canopyheightmodel", {
            "INPUT": str(SAMPLE_LAZ), "OUTPUT": str(tmp_path / "chm.tif")})
        ran += 1
        plugin.unload()
    ours = [f"{Path(w.filename).relative_to(ROOT)}:{w.lineno}: {w.category.__name__}: {w.message}"
            for w in caught if issubclass(w.category, DeprecationWarning)
            and any(str(w.filename).startswith(d + os.sep) for d in OURS)]
    report = {"algorithms": algorithms, "ran": ran, "warnings": ours,
              "log": [m for m in log if "deprecat" in m.lower()]}
    with open(os.environ["FOREST_CARBON_REPORT"], "w") as handle:
        json.dump(report, handle)
