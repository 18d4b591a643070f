"""forestcarbon:modelinfo on real ONNX files, through a real ONNX Runtime session."""

import json

import numpy as np
import pytest
from qgis.core import QgsProcessingException

from tests.onnx_models import affine_model


def test_describes_inputs_outputs_and_metadata(tmp_path, forestcarbon_provider):
    import processing

    card = {"mlm:name": "affine-test", "bands": ["red", "nir", "swir1"]}
    model = affine_model(tmp_path / "affine.onnx", metadata={"forest_carbon": card, "model_type": "Regressor"})
    result = processing.run("forestcarbon:modelinfo", {"INPUT": str(model),
                                                       "OUTPUT_JSON": str(tmp_path / "m.json")})
    doc = json.loads((tmp_path / "m.json").read_text())["model"]
    assert result["OUTPUT_JSON"] == str(tmp_path / "m.json")
    assert [t["name"] for t in doc["inputs"]] == ["x"]
    assert doc["inputs"][0]["shape"] == ["N", 3, "H", "W"]
    assert doc["inputs"][0]["type"] == "tensor(float)"
    assert [t["name"] for t in doc["outputs"]] == ["y"]
    assert doc["producer"] == "forest-carbon-tests"
    assert doc["metadata"]["forest_carbon"] == card  # JSON decoded
    assert doc["metadata"]["model_type"] == "Regressor"
    assert "CPUExecutionProvider" in doc["available_providers"]

    # the file is a real, runnable model: 2x + 1 (checks the fixture itself)
    import onnxruntime as ort

    x = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    (y,) = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, 2 * x + 1)


def test_not_an_onnx_file(tmp_path, forestcarbon_provider):
    import processing

    bad = tmp_path / "weights.onnx"
    bad.write_bytes(b"\x00\x01 definitely not protobuf")
    with pytest.raises(QgsProcessingException) as excinfo:
        processing.run("forestcarbon:modelinfo", {"INPUT": str(bad), "OUTPUT_JSON": str(tmp_path / "m.json")})
    assert "weights.onnx" in str(excinfo.value) and "not a valid ONNX model" in str(excinfo.value)
    assert not (tmp_path / "m.json").exists()


def test_reports_the_unit_and_output_scaling_of_the_card(tmp_path, forestcarbon_provider):
    import processing

    card = {"mlm:input": [{"name": "x"}], "mlm:output": [{"name": "y", "forest_carbon:meaning": "mean"}],
            "forest_carbon:target": "agb", "forest_carbon:unit": "Mg/ha"}
    carded = affine_model(tmp_path / "carded.onnx", metadata={"model_card": card})
    deepness = affine_model(tmp_path / "deepness.onnx", metadata={"model_type": "Regressor", "reg_output_scaling": 25})
    docs = {}
    for model in (carded, deepness):
        processing.run("forestcarbon:modelinfo", {"INPUT": str(model), "OUTPUT_JSON": str(tmp_path / "m.json")})
        docs[model.stem] = json.loads((tmp_path / "m.json").read_text())["model"]
    assert (docs["carded"]["target"], docs["carded"]["unit"], docs["carded"]["card_source"]) == ("agb", "Mg/ha",
                                                                                                  "metadata")
    assert docs["carded"]["output_scale"] == 1.0
    assert docs["deepness"]["card_source"] == "deepness" and docs["deepness"]["output_scale"] == 25.0
