"""forestcarbon:validatepredictions — accuracy, interval coverage, calibration and residual semivariogram."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from forest_carbon_plugin.core.models.validate import Uncertainty, validate_predictions

from .base import FeedbackProgress, ForestCarbonAlgorithm
from .compat import LayerType, NumberType


class ValidatePredictionsAlgorithm(ForestCarbonAlgorithm):
    PREDICTION = "PREDICTION"
    STD = "STD"
    LOWER = "LOWER"
    UPPER = "UPPER"
    COVERAGE = "COVERAGE"
    REFERENCE = "REFERENCE"
    REFERENCE_FIELD = "REFERENCE_FIELD"
    STRATA = "STRATA"
    STRATA_FIELD = "STRATA_FIELD"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    OUTPUT_JSON = "OUTPUT_JSON"

    _name = "validatepredictions"
    _display = "Validate predictions"
    _group = "Models"
    _group_id = "models"
    requirements = ("rasterio", "scipy", "matplotlib")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Compares a prediction raster (canopy height, biomass...) and its uncertainty with independent "
            "references, and writes an HTML report with PNG figures and a JSON of every number beside it "
            "(same name, .json; figures named <report>_<figure>.png).\n\n"
            "REFERENCE: a raster, or a point or polygon layer with a numeric REFERENCE_FIELD. A raster on another "
            "grid is read onto the prediction's grid: averaged (area-weighted) when it is finer, the cell each "
            "prediction pixel lies in when it is coarser. Points take the prediction pixel they fall in; polygons "
            "the area-weighted mean of the prediction over the polygon (weights = the share of each pixel inside "
            "it; STD, LOWER and UPPER are averaged the same way, i.e. errors taken as fully correlated inside a "
            "polygon).\n"
            "Metrics: n, RMSE, MAE, bias = mean(prediction − reference), R² = 1 − SSres/SStot, relative RMSE = "
            "RMSE / mean reference (%), over every valid pair (exact streaming sums), overall and per stratum "
            "(STRATA: a class raster, or a polygon layer with STRATA_FIELD).\n"
            "Intervals: from STD, Gaussian central intervals prediction ± z·σ at 0.5, 0.68, 0.8, 0.9 and 0.95; "
            "from LOWER and UPPER (both needed), the interval at COVERAGE, and other levels by rescaling its "
            "half-width around the midpoint by z(level)/z(COVERAGE) (a symmetric Gaussian assumption). Without "
            "either, interval metrics are skipped. Calibration (Lang et al. 2023): pixels binned by predicted σ, "
            "observed RMSE against mean σ per bin with the 1:1 line, and coverage against nominal level.\n"
            "Residual semivariogram: empirical, binned by distance, on up to 3000 randomly sampled pairs, fitted "
            "with an exponential model (nugget, partial sill, practical range = distance reaching 95% of the "
            "sill). Plots and calibration use a deterministic random sample of up to 200,000 pairs.\n"
            "Figures need matplotlib."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.PREDICTION, self.tr("Prediction raster")))
        self.addParameter(QgsProcessingParameterRasterLayer(self.STD, self.tr("Standard deviation raster"),
                                                            optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(self.LOWER, self.tr("Lower bound raster"), optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(self.UPPER, self.tr("Upper bound raster"), optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.COVERAGE, self.tr("Nominal coverage of LOWER/UPPER"),
                                                       NumberType.Double, defaultValue=0.9,
                                                       minValue=0.01, maxValue=0.999))
        self.addParameter(QgsProcessingParameterMapLayer(self.REFERENCE,
                                                         self.tr("Reference (raster, points or polygons)")))
        self.addParameter(QgsProcessingParameterString(self.REFERENCE_FIELD,
                                                       self.tr("Reference field (vector references)"),
                                                       optional=True))
        self.addParameter(QgsProcessingParameterMapLayer(self.STRATA, self.tr("Strata (class raster or polygons)"),
                                                         optional=True))
        self.addParameter(QgsProcessingParameterString(self.STRATA_FIELD, self.tr("Strata field (polygon strata)"),
                                                       optional=True))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_REPORT, self.tr("Validation report"),
                                                                fileFilter="HTML files (*.html)"))
        self.addOutput(QgsProcessingOutputFile(self.OUTPUT_JSON, self.tr("Validation numbers (JSON)")))
        for name, label in (("N", "Number of pairs"), ("RMSE", "RMSE"), ("BIAS", "Bias (prediction − reference)"),
                            ("R2", "R²"), ("OBSERVED_COVERAGE", "Observed coverage at COVERAGE")):
            self.addOutput(QgsProcessingOutputNumber(name, self.tr(label)))

    def _source(self, parameters, name, context, raster_only=False):
        if raster_only:
            layer = self.parameterAsRasterLayer(parameters, name, context)
        else:
            layer = self.parameterAsLayer(parameters, name, context)
        if layer is None:
            if parameters.get(name):
                raise QgsProcessingException(self.tr(f"{name}: '{parameters.get(name)}' cannot be loaded as a layer."))
            return None
        if not raster_only and layer.type() not in (LayerType.Raster, LayerType.Vector):
            raise QgsProcessingException(self.tr(f"{name} must be a raster or a vector layer."))
        return layer.source()

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        prediction = self._source(parameters, self.PREDICTION, context, raster_only=True)
        std = self._source(parameters, self.STD, context, raster_only=True)
        lower = self._source(parameters, self.LOWER, context, raster_only=True)
        upper = self._source(parameters, self.UPPER, context, raster_only=True)
        reference = self._source(parameters, self.REFERENCE, context)
        strata = self._source(parameters, self.STRATA, context)
        coverage = self.parameterAsDouble(parameters, self.COVERAGE, context)
        reference_field = self.parameterAsString(parameters, self.REFERENCE_FIELD, context).strip() or None
        strata_field = self.parameterAsString(parameters, self.STRATA_FIELD, context).strip() or None
        out_html = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context)
        record = {"PREDICTION": prediction, "STD": std, "LOWER": lower, "UPPER": upper, "COVERAGE": coverage,
                  "REFERENCE": reference, "REFERENCE_FIELD": reference_field, "STRATA": strata,
                  "STRATA_FIELD": strata_field}
        doc = self.call_core(validate_predictions, prediction, reference, out_html,
                             uncertainty=Uncertainty(std=std, lower=lower, upper=upper, coverage=coverage),
                             reference_field=reference_field, strata=strata, strata_field=strata_field,
                             progress=FeedbackProgress(feedback), parameters=record)
        m = doc["metrics"]
        feedback.pushInfo(f"n = {m['n']}, RMSE = {m['rmse']:.4g}, bias = {m['bias']:.4g}, "
                          f"R² = {m['r2'] if m['r2'] is None else format(m['r2'], '.4g')}")
        for note in doc["notes"]:
            feedback.pushInfo(note)
        observed = None
        if doc["intervals"]:
            for iv in doc["intervals"]:
                if iv["source"] == doc["interval_source"] and abs(iv["level"] - coverage) < 1e-9:
                    observed = iv["coverage"]
        return {self.OUTPUT_REPORT: out_html, self.OUTPUT_JSON: doc["outputs"]["json"], "N": m["n"],
                "RMSE": m["rmse"], "BIAS": m["bias"], "R2": m["r2"], "OBSERVED_COVERAGE": observed}
