"""forestcarbon:trainmodel — train, cross-validate (spatial blocks vs random K-fold), calibrate and export a model."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)

from forest_carbon_plugin.core.models.fit import RandomForest
from forest_carbon_plugin.core.models.train import TrainSettings, train_model

from .base import FeedbackProgress, ForestCarbonAlgorithm
from .compat import LayerType, NumberType, SourceType


class TrainModelAlgorithm(ForestCarbonAlgorithm):
    FEATURES = "FEATURES"
    TARGET = "TARGET"
    TARGET_FIELD = "TARGET_FIELD"
    FEATURE_FIELDS = "FEATURE_FIELDS"
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
            "onto the first raster's grid (bilinear), as Predict raster does. Or one vector layer of field plots "
            "(the area-based approach, e.g. the output of 'Plot metrics (field plots)'): its numeric fields are the "
            "features and TARGET_FIELD (the plot measurement, e.g. AGB) the response; TARGET stays empty. "
            "FEATURE_FIELDS (comma-separated) names the feature fields; by default every numeric field named like a "
            "'Canopy metrics (grid)' band (zmax, zmean, …, zq95, zpcum1…9, cover, point_density, pulse_density, and "
            "the intensity metrics), less 'n' (a point count depends on the plot's area) and the target. Plots "
            "without a target value, or with a missing feature (plots without points), are skipped and counted in "
            "the log. The model card names the fields, so Predict raster applied to a 'Canopy metrics (grid)' "
            "raster picks its bands by description, whatever their order, and refuses a raster lacking one.\n"
            "TARGET: a raster on any grid (read onto the feature grid; area average when finer, e.g. a 1 m CHM "
            "onto 30 m features), or a point/polygon layer with a numeric TARGET_FIELD (points: the pixel they fall "
            "in; polygons: the area-weighted mean of the features over the polygon, placed at its centroid).\n"
            "Sampling: every valid pixel, or at most MAX_SAMPLES of them drawn at random stratified by target "
            "deciles.\n"
            "Cross-validation: BLOCK_SIZE m square blocks dealt to FOLDS folds at random (SEED); 0 = automatic: "
            "10 pixels, halved (to 2 pixels at least) until there are 2×FOLDS blocks. Random K-fold is shown beside "
            "it: it over-states accuracy where pixels are autocorrelated. Plot data: plots closer than BLOCK_SIZE m "
            "to each other (single linkage) form a spatial group; 0 = automatic: plots are grouped only when they "
            "cluster (Clark–Evans index R < 0.7), at 1.5 × their median nearest-neighbour distance. With fewer than "
            "30 groups the validation is leave-one-group-out, otherwise the groups are dealt to FOLDS folds; the "
            "random CV beside it is leave-one-out (fewer than 30 plots) or FOLDS-fold on plots. MAX_SAMPLES does "
            "not apply to plots; on plots MODEL_TYPE 0 uses shallow trees (3 leaves, at least 5 plots per leaf, "
            "200 iterations at a learning rate of 0.05).\n"
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
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.FEATURES, self.tr("Feature rasters, or one layer of plots with metric fields"),
            SourceType.MapLayer))
        self.addParameter(QgsProcessingParameterMapLayer(
            self.TARGET, self.tr("Target (raster, points or polygons; empty for plot features)"), optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.TARGET_FIELD, self.tr("Target field (vector targets, plot features)"), optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.FEATURE_FIELDS, self.tr("Feature fields of plot features (comma-separated; empty = metric names)"),
            optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.MODEL_TYPE, self.tr("Model type"),
            options=[self.tr("Quantile gradient boosting"), self.tr("Random forest (mean + residual variance)")],
            defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(self.BLOCK_SIZE, self.tr("Spatial CV block size (m; 0 = auto)"),
                                                       NumberType.Double, defaultValue=0.0,
                                                       minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(self.FOLDS, self.tr("Folds"), NumberType.Integer,
                                                       defaultValue=5, minValue=2, maxValue=50))
        self.addParameter(QgsProcessingParameterNumber(self.COVERAGE, self.tr("Interval coverage"),
                                                       NumberType.Double, defaultValue=0.9,
                                                       minValue=0.5, maxValue=0.995))
        self.addParameter(QgsProcessingParameterNumber(self.MAX_SAMPLES, self.tr("Maximum number of samples"),
                                                       NumberType.Integer, defaultValue=50000,
                                                       minValue=10))
        self.addParameter(QgsProcessingParameterNumber(self.SEED, self.tr("Random seed"),
                                                       NumberType.Integer, defaultValue=0, minValue=0))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_MODEL, self.tr("Model (ONNX)"),
                                                                fileFilter="ONNX models (*.onnx)"))
        # optional so that a script may name only OUTPUT_MODEL; the dialog still writes it by default
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_REPORT, self.tr("Training report"),
                                                                fileFilter="HTML files (*.html)", optional=True,
                                                                createByDefault=True))
        self.addOutput(QgsProcessingOutputFile(self.OUTPUT_JSON, self.tr("Training numbers (JSON)")))
        for name, label in (("N_SAMPLES", "Number of samples"), ("RMSE_SPATIAL", "RMSE, spatial-block CV"),
                            ("RMSE_RANDOM", "RMSE, random K-fold CV"), ("CONFORMAL_FACTOR", "Conformal factor"),
                            ("COVERAGE_UNCALIBRATED", "Uncalibrated coverage (spatial CV)")):
            self.addOutput(QgsProcessingOutputNumber(name, self.tr(label)))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        layers = self.parameterAsLayerList(parameters, self.FEATURES, context)
        if not layers:
            raise QgsProcessingException(self.tr("Give at least one feature raster, or one layer of plots."))
        vectors = [layer for layer in layers if layer.type() == LayerType.Vector]
        if vectors and len(layers) > 1:
            raise QgsProcessingException(self.tr("FEATURES: give rasters, or one vector layer of plots, not both "
                                                 "or several layers of plots."))
        if vectors:
            features = [self._ogr_source(vectors[0], context, feedback)]
            target = None
            if parameters.get(self.TARGET):
                target_layer = self.parameterAsLayer(parameters, self.TARGET, context)
                if target_layer is not None and target_layer.source() != vectors[0].source():
                    raise QgsProcessingException(self.tr(
                        "FEATURES is a layer of plots: its TARGET_FIELD is the target; leave TARGET empty."))
        else:
            features = [layer.source() for layer in layers]
            target_layer = self.parameterAsLayer(parameters, self.TARGET, context) \
                if parameters.get(self.TARGET) else None
            if target_layer is None:
                raise QgsProcessingException(self.tr(
                    f"TARGET '{parameters.get(self.TARGET) or ''}' cannot be loaded as a layer: feature rasters need a "
                    "TARGET raster or point/polygon layer."))
            if target_layer.type() not in (LayerType.Raster, LayerType.Vector):
                raise QgsProcessingException(self.tr("TARGET must be a raster or a point/polygon layer."))
            target = target_layer.source()
        feature_fields = self.parameterAsString(parameters, self.FEATURE_FIELDS, context).strip() or None
        target_field = self.parameterAsString(parameters, self.TARGET_FIELD, context).strip() or None
        model_type = self.parameterAsEnum(parameters, self.MODEL_TYPE, context)
        block = self.parameterAsDouble(parameters, self.BLOCK_SIZE, context)
        folds = self.parameterAsInt(parameters, self.FOLDS, context)
        coverage = self.parameterAsDouble(parameters, self.COVERAGE, context)
        max_samples = self.parameterAsInt(parameters, self.MAX_SAMPLES, context)
        seed = self.parameterAsInt(parameters, self.SEED, context)
        out_model = self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context)
        out_report = (self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context)
                      or QgsProcessingUtils.generateTempFilename("training_report.html"))  # OUTPUT_JSON lies beside it
        if not out_model.lower().endswith(".onnx"):
            raise QgsProcessingException(self.tr(f"OUTPUT_MODEL '{out_model}' must end in .onnx."))
        if not out_report.lower().endswith((".html", ".htm")):
            raise QgsProcessingException(self.tr(f"OUTPUT_REPORT '{out_report}' must end in .html."))
        record = {"FEATURES": features, "TARGET": target, "TARGET_FIELD": target_field,
                  "FEATURE_FIELDS": feature_fields, "MODEL_TYPE": model_type,
                  "BLOCK_SIZE": block, "FOLDS": folds, "COVERAGE": coverage, "MAX_SAMPLES": max_samples, "SEED": seed}
        # MODEL_TYPE 0: the core's default quantile GBM (sized for pixels or for plots); 1: a random forest
        settings = TrainSettings(learner=None if model_type == 0 else RandomForest(), block_size_m=block or None,
                                 folds=folds, coverage=coverage, max_samples=max_samples, seed=seed)
        doc = self.call_core(train_model, features, target, out_model, out_report, target_field=target_field,
                             feature_fields=feature_fields, settings=settings, progress=FeedbackProgress(feedback),
                             parameters=record)
        spatial, random_ = doc["cv"]["spatial"], doc["cv"]["random"]
        return {self.OUTPUT_MODEL: out_model, self.OUTPUT_REPORT: out_report, self.OUTPUT_JSON: doc["outputs"]["json"],
                "N_SAMPLES": doc["n_samples"], "RMSE_SPATIAL": spatial["rmse"], "RMSE_RANDOM": random_["rmse"],
                "CONFORMAL_FACTOR": doc["conformal_factor"],
                "COVERAGE_UNCALIBRATED": spatial["coverage_uncalibrated"]}

    @staticmethod
    def _ogr_source(layer, context, feedback) -> str:
        """A source GDAL can open: the layer's own file, or (memory and other non-file layers, e.g. a model's
        intermediate output) a copy written to a GeoPackage in the processing temporary folder."""
        import os
        import uuid

        from qgis.core import QgsProcessingUtils, QgsVectorFileWriter

        if layer.providerType() == "ogr":
            return layer.source()
        path = os.path.join(QgsProcessingUtils.tempFolder(), f"plots_{uuid.uuid4().hex}.gpkg")
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName = "GPKG"
        error = QgsVectorFileWriter.writeAsVectorFormatV3(layer, path, context.transformContext(), options)
        if error[0] != QgsVectorFileWriter.WriterError.NoError:
            raise QgsProcessingException(f"Cannot copy the plots layer to '{path}': {error[1]}")
        if feedback is not None:
            feedback.pushInfo(f"The plots layer was copied to {path} for reading.")
        return path
