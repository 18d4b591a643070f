"""forestcarbon:predictraster — ONNX model inference over rasters with uncertainty maps."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
    QgsProcessingOutputString,
)

from forest_carbon_plugin.core.models.onnx import DEVICES
from forest_carbon_plugin.core.models.predict import PredictSettings, predict_raster

from .base import FeedbackProgress, ForestCarbonAlgorithm, StyleLoader
from .compat import NumberType, SourceType
from .execution import add_execution_parameters, execution


class PredictRasterAlgorithm(ForestCarbonAlgorithm):
    INPUT = "INPUT"
    BANDS = "BANDS"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    REQUIRE_GPU = "REQUIRE_GPU"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    BATCH_SIZE = "BATCH_SIZE"
    COVERAGE = "COVERAGE"
    OUTPUT = "OUTPUT"
    OUTPUT_STD = "OUTPUT_STD"
    OUTPUT_LOWER = "OUTPUT_LOWER"
    OUTPUT_UPPER = "OUTPUT_UPPER"

    _name = "predictraster"
    _display = "Predict raster (ONNX model)"
    _group = "Models"
    _group_id = "models"
    requirements = ("onnxruntime", "onnx", "rasterio", "scipy")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Applies an ONNX model (canopy height, biomass, cover...) to rasters: a prediction and, for every "
            "pixel, its standard deviation and interval bounds.\n\n"
            "INPUT: one or more rasters whose bands are stacked as the model's features (other grids are "
            "warped onto the first raster's). The model card (ONNX metadata 'model_card', a sidecar .json "
            "following the STAC MLM extension, or Deepness's keys) names the bands, their scaling and what each "
            "output means (mean, variance, log_variance, std, quantile:q); BANDS ('1,2,3') picks and orders "
            "the stacked bands when it does not. A Deepness Regressor model runs as in Deepness: inputs divided by "
            "255, standardized by standardization_mean/std when both are given, bands 1 to n of the input used, the "
            "output multiplied by reg_output_scaling (recorded in the provenance); Deepness segmentation and "
            "detection models are refused. MODEL may be a card listing several .onnx members: a deep "
            "ensemble (mean of members; epistemic variance between members added to the mean aleatoric "
            "variance, as Lang et al. 2023).\n"
            "Per-pixel models ([N, F] inputs, e.g. tree ensembles) stream strips of rows; patch models "
            "([N, C, H, W]) run on TILE_SIZE tiles overlapping by OVERLAP pixels, blended without seams "
            "(exact for fully convolutional networks whose receptive-field radius is ≤ OVERLAP/4), BATCH_SIZE "
            "at a time, reading and writing while the model runs.\n"
            "Intervals: Gaussian mean ± z·σ at COVERAGE (default 0.9), or the model's quantiles; a conformal "
            "factor in the card scales them to their calibrated coverage.\n"
            "DEVICE: auto picks CUDA, DirectML or CoreML when onnxruntime has it, else the CPU; a GPU device "
            "that is missing falls back to the CPU with a warning (or fails with REQUIRE_GPU). The provider used "
            "is logged and written in each output's provenance. Outputs: float32 Cloud-Optimized GeoTIFFs on "
            "the first input's grid, no-data where any input is no-data (NaN included), with the card's unit (Mg/ha, "
            "m...) as the band's unit and in the UNIT tag and provenance."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers(self.INPUT, self.tr("Input rasters (features)"),
                                                               SourceType.Raster))
        self.addParameter(QgsProcessingParameterString(self.BANDS, self.tr("Bands to use, in order (e.g. 1,2,3)"),
                                                       optional=True))
        self.addParameter(QgsProcessingParameterFile(self.MODEL, self.tr("Model (.onnx or model card .json)"),
                                                     fileFilter="ONNX models (*.onnx);;Model cards (*.json)"))
        self.addParameter(QgsProcessingParameterEnum(self.DEVICE, self.tr("Device"),
                                                     options=["Auto", "CPU", "CUDA", "TensorRT", "DirectML", "CoreML"],
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterBoolean(self.REQUIRE_GPU, self.tr("Require a GPU"),
                                                        defaultValue=False))
        self.addParameter(QgsProcessingParameterNumber(self.TILE_SIZE, self.tr("Tile size (pixels)"),
                                                       NumberType.Integer, defaultValue=256,
                                                       minValue=8))
        self.addParameter(QgsProcessingParameterNumber(self.OVERLAP, self.tr("Tile overlap (pixels)"),
                                                       NumberType.Integer, defaultValue=32,
                                                       minValue=0))
        self.addParameter(QgsProcessingParameterNumber(self.BATCH_SIZE, self.tr("Batch size (0 = automatic)"),
                                                       NumberType.Integer, defaultValue=0,
                                                       minValue=0))
        self.addParameter(QgsProcessingParameterNumber(self.COVERAGE, self.tr("Interval coverage"),
                                                       NumberType.Double, defaultValue=0.9,
                                                       minValue=0.01, maxValue=0.999))
        add_execution_parameters(self)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Prediction")))
        for name, label in ((self.OUTPUT_STD, "Standard deviation"), (self.OUTPUT_LOWER, "Lower bound"),
                            (self.OUTPUT_UPPER, "Upper bound")):
            self.addParameter(QgsProcessingParameterRasterDestination(name, self.tr(label), optional=True,
                                                                      createByDefault=False))
        self.addOutput(QgsProcessingOutputString("EXECUTION_PROVIDER", self.tr("ONNX Runtime execution provider")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        layers = self.parameterAsLayerList(parameters, self.INPUT, context)
        if not layers:
            raise QgsProcessingException(self.tr("INPUT needs at least one raster."))
        outputs = {name: self.parameterAsOutputLayer(parameters, name, context) or None
                   for name in (self.OUTPUT, self.OUTPUT_STD, self.OUTPUT_LOWER, self.OUTPUT_UPPER)}
        overlap = parameters.get(self.OVERLAP)
        if self.parameterAsEnum(parameters, self.DEVICE, context) == DEVICES.index("cpu") and \
                self.parameterAsBoolean(parameters, self.REQUIRE_GPU, context):
            raise QgsProcessingException(self.tr("DEVICE is CPU but REQUIRE_GPU is set: choose a GPU device or "
                                                 "clear it."))
        with execution(self, parameters, context, feedback):
            result = self._predict(parameters, context, feedback, layers, outputs, overlap)
        results = {}
        kinds = {self.OUTPUT: "prediction", self.OUTPUT_STD: "std", self.OUTPUT_LOWER: "lower",
                 self.OUTPUT_UPPER: "upper"}
        for name, kind in kinds.items():
            if kind in result.outputs:
                results[name] = str(result.outputs[kind])
                StyleLoader.attach(context, results[name], "uncertainty" if kind == "std" else "prediction",
                                   rescale=True)
        results["EXECUTION_PROVIDER"] = result.provider
        return results

    def _predict(self, parameters, context, feedback, layers, outputs, overlap):
        return self.call_core(
            predict_raster, [layer.source() for layer in layers],
            self.parameterAsFile(parameters, self.MODEL, context), outputs[self.OUTPUT],
            out_std=outputs[self.OUTPUT_STD], out_lower=outputs[self.OUTPUT_LOWER],
            out_upper=outputs[self.OUTPUT_UPPER],
            bands=self.parameterAsString(parameters, self.BANDS, context).strip() or None,
            settings=PredictSettings(
                device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
                require_gpu=self.parameterAsBoolean(parameters, self.REQUIRE_GPU, context),
                tile_size=self.parameterAsInt(parameters, self.TILE_SIZE, context),
                overlap=None if overlap is None else self.parameterAsInt(parameters, self.OVERLAP, context),
                batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context) or None,
                coverage=self.parameterAsDouble(parameters, self.COVERAGE, context)),
            progress=FeedbackProgress(feedback))
