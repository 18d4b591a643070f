"""forestcarbon:modelinfo — Describe an ONNX model."""

from __future__ import annotations

import html
import json

from qgis.core import QgsProcessingParameterFile, QgsProcessingParameterFileDestination

from forest_carbon_plugin.core.models import info as modelinfo
from forest_carbon_plugin.core.outputs import provenance, write_json, write_text

from .base import ForestCarbonAlgorithm
from .compat import FileBehavior


class ModelInfoAlgorithm(ForestCarbonAlgorithm):
    INPUT = "INPUT"
    OUTPUT_JSON = "OUTPUT_JSON"
    OUTPUT_HTML = "OUTPUT_HTML"

    _name = "modelinfo"
    _display = "Describe an ONNX model"
    _group = "Models"
    _group_id = "models"
    requirements = ("onnxruntime",)

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Opens an ONNX model with ONNX Runtime (on the CPU, without running it) and reports its "
            "inputs and outputs (names, shapes, element types), its producer, the metadata stored in "
            "the model (metadata_props: model cards, Deepness keys), and the execution providers this "
            "QGIS can use (CPU, CUDA, TensorRT, DirectML, CoreML).\n\n"
            "Reference: ONNX IR specification, ModelProto.metadata_props."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            self.INPUT, self.tr("ONNX model"), behavior=FileBehavior.File,
            fileFilter="ONNX models (*.onnx)"))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_JSON, self.tr("Description (JSON)"), fileFilter="JSON files (*.json)"))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_HTML, self.tr("Description (HTML)"), fileFilter="HTML files (*.html)",
            optional=True, createByDefault=False))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        path = self.parameterAsFile(parameters, self.INPUT, context)
        info = self.call_core(modelinfo.describe_model, path)
        record = provenance("forestcarbon:modelinfo", {"INPUT": path}, inputs=[path])
        document = {"model": info.to_dict(), "provenance": record}
        results = {}
        json_path = self.parameterAsFileOutput(parameters, self.OUTPUT_JSON, context)
        if json_path:
            write_json(json_path, document)
            results[self.OUTPUT_JSON] = json_path
        html_path = self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context)
        if html_path:
            write_text(html_path, "<!DOCTYPE html><html><head><meta charset='utf-8'><title>ONNX model</title>"
                       "</head><body><h1>" + html.escape(info.path) + "</h1><pre>"
                       + html.escape(json.dumps(document, indent=2, default=str)) + "</pre></body></html>\n")
            results[self.OUTPUT_HTML] = html_path
        for t in info.inputs:
            feedback.pushInfo(f"input {t.name}: {t.type} {t.shape}")
        for t in info.outputs:
            feedback.pushInfo(f"output {t.name}: {t.type} {t.shape}")
        if info.card_source:
            feedback.pushInfo(f"prediction: {info.target} in {info.unit or 'unit not given'} (model card from "
                              f"{info.card_source}; output × {info.output_scale:g})")
        feedback.pushInfo("execution providers: " + ", ".join(info.available_providers))
        return results
