"""forestcarbon:trainmodel — train, cross-validate (spatial blocks vs random K-fold), calibrate and export a model."""

from __future__ import annotations

from qgis.core import (
    QgsMapLayerType,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from forest_carbon_plugin.core.training import train_model

from .base import FeedbackProgress, ForestCarbonAlgorithm


class TrainModelAlgorithm(ForestCarbonAlgorithm):
    FEATURES = "FEATURES"
    TARGET = "TARGET"
    TARGET_FIELD = "TARGET_FIELD"
    MODEL_TYPE = "MODEL_TYPE"
    BLOCK_SIZE = "BLOCK_SIZE"
    FOLDS = "FOLDS"
    COVERAGE = "COVERAGE"
    MAX_SAMPLES = "MAX_SAMPLES"
    SEED = "SEED"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    OUTPUT_JSON = "OUTPUT_JSON"

    _name = "trainmodel"
    _display = "Train model (spatial CV, conformal intervals)"
    _group = "Models"
    _group_id = "models"
    requirements = ("sklearn", "skl2onnx", "onnx", "onnxruntime", "rasterio", "matplotlib")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Trains a per-pixel model (e.g. canopy height from harmonized imagery and LiDAR-derived labels), "
            "validates it with spatial-block and random K-fold cross-validation, calibrates its intervals and "
            "exports one ONNX file that Predict raster runs as it is.\n\n"
            "FEATURES: rasters whose band descriptions name the features; bands are stacked in order and warped "
            "onto the first raster's grid (bilinear), as Predict raster does.\n"
            "TARGET: a raster on any grid (read onto the feature grid; area average when finer, e.g. a 1 m CHM "
            "onto 30 m features), or a point/polygon layer with a numeric TARGET_FIELD (points: the pixel they fall "
            "in; polygons: the area-weighted mean of the features over the polygon, placed at its centroid).\n"
            "Sampling: every valid pixel, or at most MAX_SAMPLES of them drawn at random stratified by target "
            "deciles.\n"
            "Cross-validation: BLOCK_SIZE m square blocks dealt to FOLDS folds at random (SEED); 0 = automatic: "
            "10 pixels, halved (to 2 pixels at least) until there are 2×FOLDS blocks. Random K-fold is shown beside "
            "it: it over-states accuracy where pixels are autocorrelated.\n"
            "MODEL_TYPE 0: gradient-boosted trees with quantile losses at (1−COVERAGE)/2, 0.5 and (1+COVERAGE)/2 "
            "(outputs lower/median/upper). 1: a random forest for the mean plus a forest fitted on its squared "
            "out-of-bag residuals (outputs mean/variance; intervals mean ± z·σ).\n"
            "Calibration: conformalized quantile regression (Romano et al. 2019) on the spatial-CV held-out "
            "predictions; the factor f scales the interval half-widths around the prediction so that they reach "
            "COVERAGE; it is stored in the model card with the coverage.\n"
            "OUTPUT_MODEL: one .onnx file (input 'features', float32 [N, F]) with its model card in the metadata "
            "key 'model_card' (bands, output meanings, conformal factor, target, resolution, training extent, CRS, "
            "date and CV results). A <model>.json beside it is replaced by the card (Predict raster would read it "
            "first). OUTPUT_REPORT: HTML with PNG figures and a JSON of every number beside it; do not give it the "
            "model's name.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers(self.FEATURES, self.tr("Feature rasters"),
                                                               QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterMapLayer(self.TARGET, self.tr("Target (raster, points or polygons)")))
        self.addParameter(QgsProcessingParameterString(self.TARGET_FIELD, self.tr("Target field (vector targets)"),
                                                       optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.MODEL_TYPE, self.tr("Model type"),
            options=[self.tr("Quantile gradient boosting"), self.tr("Random forest (mean + residual variance)")],
            defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(self.BLOCK_SIZE, self.tr("Spatial CV block size (m; 0 = auto)"),
                                                       QgsProcessingParameterNumber.Double, defaultValue=0.0,
                                                       minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(self.FOLDS, self.tr("Folds"), QgsProcessingParameterNumber.Integer,
                                                       defaultValue=5, minValue=2, maxValue=50))
        self.addParameter(QgsProcessingParameterNumber(self.COVERAGE, self.tr("Interval coverage"),
                                                       QgsProcessingParameterNumber.Double, defaultValue=0.9,
                                                       minValue=0.5, maxValue=0.995))
        self.addParameter(QgsProcessingParameterNumber(self.MAX_SAMPLES, self.tr("Maximum number of samples"),
                                                       QgsProcessingParameterNumber.Integer, defaultValue=50000,
                                                       minValue=10))
        self.addParameter(QgsProcessingParameterNumber(self.SEED, self.tr("Random seed"),
                                                       QgsProcessingParameterNumber.Integer, defaultValue=0, minValue=0))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_MODEL, self.tr("Model (ONNX)"),
                                                                fileFilter="ONNX models (*.onnx)"))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_REPORT, self.tr("Training report"),
                                                                fileFilter="HTML files (*.html)"))
        self.addOutput(QgsProcessingOutputFile(self.OUTPUT_JSON, self.tr("Training numbers (JSON)")))
        for name, label in (("N_SAMPLES", "Number of samples"), ("RMSE_SPATIAL", "RMSE, spatial-block CV"),
                            ("RMSE_RANDOM", "RMSE, random K-fold CV"), ("CONFORMAL_FACTOR", "Conformal factor"),
                            ("COVERAGE_UNCALIBRATED", "Uncalibrated coverage (spatial CV)")):
            self.addOutput(QgsProcessingOutputNumber(name, self.tr(label)))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        layers = self.parameterAsLayerList(parameters, self.FEATURES, context)
        if not layers:
            raise QgsProcessingException(self.tr("Give at least one feature raster."))
        features = [layer.source() for layer in layers]
        target_layer = self.parameterAsLayer(parameters, self.TARGET, context)
        if target_layer is None:
            raise QgsProcessingException(self.tr(f"TARGET '{parameters.get(self.TARGET)}' cannot be loaded as a layer."))
        if target_layer.type() not in (QgsMapLayerType.RasterLayer, QgsMapLayerType.VectorLayer):
            raise QgsProcessingException(self.tr("TARGET must be a raster or a point/polygon layer."))
        target = target_layer.source()
        target_field = self.parameterAsString(parameters, self.TARGET_FIELD, context).strip() or None
        model_type = self.parameterAsEnum(parameters, self.MODEL_TYPE, context)
        block = self.parameterAsDouble(parameters, self.BLOCK_SIZE, context)
        folds = self.parameterAsInt(parameters, self.FOLDS, context)
        coverage = self.parameterAsDouble(parameters, self.COVERAGE, context)
        max_samples = self.parameterAsInt(parameters, self.MAX_SAMPLES, context)
        seed = self.parameterAsInt(parameters, self.SEED, context)
        out_model = self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context)
        out_report = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context)
        record = {"FEATURES": features, "TARGET": target, "TARGET_FIELD": target_field, "MODEL_TYPE": model_type,
                  "BLOCK_SIZE": block, "FOLDS": folds, "COVERAGE": coverage, "MAX_SAMPLES": max_samples, "SEED": seed}
        doc = self.call_core(train_model, features, target, out_model, out_report, target_field=target_field,
                             model_type=model_type, block_size_m=block or None, folds=folds, coverage=coverage,
                             max_samples=max_samples, seed=seed, progress=FeedbackProgress(feedback),
                             parameters=record)
        spatial, random_ = doc["cv"]["spatial"], doc["cv"]["random"]
        return {self.OUTPUT_MODEL: out_model, self.OUTPUT_REPORT: out_report, self.OUTPUT_JSON: doc["outputs"]["json"],
                "N_SAMPLES": doc["n_samples"], "RMSE_SPATIAL": spatial["rmse"], "RMSE_RANDOM": random_["rmse"],
                "CONFORMAL_FACTOR": doc["conformal_factor"],
                "COVERAGE_UNCALIBRATED": spatial["coverage_uncalibrated"]}
