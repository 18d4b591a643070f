"""Run by tests/integration/test_dependencies.py in a subprocess with onnxruntime hidden; not collected
by the main suite (its name does not start with test_)."""

import json
import os

import pytest
from qgis.core import Qgis, QgsProcessingException

import forest_carbon_plugin

from ..conftest import SAMPLE_LAZ
from ..onnx_models import affine_model


def test_case(qgis_iface, qgis_processing, tmp_path):
    with pytest.raises(ImportError):
        import onnxruntime  # noqa: F401
    plugin = forest_carbon_plugin.classFactory(qgis_iface)
    plugin.initGui()
    from qgis.PyQt.QtWidgets import QPushButton

    bar = qgis_iface.messageBar()
    items = bar.items()  # the message pushed as a widget, with its Install dependencies… button
    report = {"warnings": bar.get_messages(Qgis.MessageLevel.Warning) + [item.text() for item in items],
              "install_buttons": [b.text() for item in items
                                  for b in item.findChildren(QPushButton, "forestcarbon_install_button")]}
    import processing

    model = affine_model(tmp_path / "affine.onnx")
    try:
        processing.run("forestcarbon:modelinfo", {"INPUT": str(model), "OUTPUT_JSON": str(tmp_path / "m.json")})
        report["modelinfo"] = "ran"
    except QgsProcessingException as exc:
        report["modelinfo"] = str(exc)
    result = processing.run("forestcarbon:lidarinfo", {
        "INPUT": str(SAMPLE_LAZ), "OUTPUT_JSON": str(tmp_path / "l.json"),
        "OUTPUT_HTML": str(tmp_path / "l.html"), "OUTPUT_FOOTPRINTS": "TEMPORARY_OUTPUT"})
    report["lidarinfo_points"] = result["POINT_COUNT"]
    report["m_json_exists"] = os.path.exists(tmp_path / "m.json")
    plugin.unload()
    with open(os.environ["FOREST_CARBON_REPORT"], "w") as handle:
        json.dump(report, handle)
