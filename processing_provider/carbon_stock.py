"""forestcarbon:carbonstock — carbon stock of project areas with a Monte Carlo confidence interval."""

from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
)

from forest_carbon_plugin.core.carbon.polygons import NOT_POLYGONAL, polygonal
from forest_carbon_plugin.core.carbon.stock import (
    DEFAULT_SIMULATIONS,
    OUTPUT_FIELDS,
    Allometry,
    BiomassMap,
    CarbonFactors,
    Deduction,
    MonteCarlo,
    carbon_stock,
    errors_off_the_map,
)
from forest_carbon_plugin.core.carbon.tables import (
    ALLOMETRIES,
    CARBON_FRACTION_CITATION,
    DEDUCTION_CITATION,
    ECOZONE_CITATION,
    ECOZONES,
)
from forest_carbon_plugin.core.carbon.variogram import HOW_TO_CHOOSE, MIN_PAIRS, record_error_model, report_json
from forest_carbon_plugin.core.errors import ForestCarbonError

from .base import FeedbackProgress, ForestCarbonAlgorithm
from .compat import FieldType, FileBehavior, NumberType, SourceType

ALLOMETRY_KEYS = list(ALLOMETRIES)
ECOZONE_KEYS = [None, *ECOZONES]


class CarbonStockAlgorithm(ForestCarbonAlgorithm):
    AGB = "AGB"
    AGB_STD = "AGB_STD"
    AGB_LOWER = "AGB_LOWER"
    AGB_UPPER = "AGB_UPPER"
    COVERAGE = "COVERAGE"
    HEIGHT = "HEIGHT"
    ALLOMETRY = "ALLOMETRY"
    ALLOMETRY_A = "ALLOMETRY_A"
    ALLOMETRY_B = "ALLOMETRY_B"
    ALLOMETRY_A_SE = "ALLOMETRY_A_SE"
    ALLOMETRY_B_SE = "ALLOMETRY_B_SE"
    ALLOMETRY_BA = "ALLOMETRY_BA"
    ALLOMETRY_WD = "ALLOMETRY_WD"
    PROJECTS = "PROJECTS"
    ROOT_SHOOT = "ROOT_SHOOT"
    ECOZONE = "ECOZONE"
    CARBON_FRACTION = "CARBON_FRACTION"
    CONFIDENCE = "CONFIDENCE"
    CORRELATION_RANGE = "CORRELATION_RANGE"
    VALIDATION_REPORT = "VALIDATION_REPORT"
    SIMULATIONS = "SIMULATIONS"
    SEED = "SEED"
    ALLOWED_UNCERTAINTY = "ALLOWED_UNCERTAINTY"
    OUTPUT = "OUTPUT"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    OUTPUT_JSON = "OUTPUT_JSON"

    _name = "carbonstock"
    _display = "Project carbon stock"
    _group = "Carbon"
    _group_id = "carbon"
    requirements = ("rasterio", "scipy", "matplotlib", "shapely", "pyproj")

    def shortHelpString(self) -> str:  # noqa: N802
        allometries = "; ".join(f"{i}: {a.label} — {a.citation}" for i, a in enumerate(ALLOMETRIES.values()))
        return self.tr(
            "Carbon stock of each polygon of PROJECTS (any polygon layer) with a Monte Carlo confidence interval and "
            "the uncertainty deduction of carbon standards. Writes the polygons with the input's fields plus area_ha, "
            "agb_mean_mg_ha, agb_total_mg, biomass_total_mg (with roots), carbon_total_t, co2e_total_t, co2e_ci_low_t, "
            "co2e_ci_high_t, uncertainty_pct, deduction_pct, co2e_creditable_t; an HTML report (map, histograms of "
            "the simulated totals) with a JSON of every number beside it.\n\n"
            "Biomass: AGB, a raster in Mg/ha; or HEIGHT (canopy height, m) with ALLOMETRY AGB = a·H^b. Allometries: "
            f"{allometries}. Every coefficient can be overridden with the custom entry.\n"
            "Areas: area_ha is the ellipsoidal area (pyproj Geod) whatever the CRS. Each pixel counts with the exact "
            "share of its area inside the polygon (not by centroid); totals cover the part of the polygon with valid "
            "pixels only (a warning gives the share when it is below 100%; no extrapolation). Polygons in another CRS "
            "are reprojected to the raster's, with a message. An invalid (e.g. self-intersecting) polygon is repaired "
            "with make_valid, which keeps every lobe, and the log and report give its area after the repair and as "
            "drawn; one that make_valid turns into no area is left NULL with a warning. Negative AGB (or height) "
            "pixels count as 0 in the totals, with a warning giving how much this adds; simulated totals below 0 "
            "are censored at 0, so no stock or bound is ever negative.\n"
            "Conversions: biomass = AGB·(1 + R), R = ROOT_SHOOT, or when it is empty the IPCC default of ECOZONE at "
            f"the polygon's mean AGB ({ECOZONE_CITATION}); with neither, R = 0 (above-ground carbon only, which "
            "understates the stock) and a warning says so. carbon = biomass·CARBON_FRACTION (default "
            f"{CARBON_FRACTION_CITATION}); CO2e = carbon·44/12.\n"
            "Uncertainty: per-pixel Gaussian errors with σ from AGB_STD (Mg/ha), or σ = (AGB_UPPER − AGB_LOWER) / "
            "(2·z(COVERAGE)); in HEIGHT mode these describe the AGB derived from the heights (e.g. the allometry's "
            "residual error). Errors are spatially correlated as exp(−3d/range), range = the practical range: "
            "CORRELATION_RANGE when set (0 = independent pixels, with a warning: it makes the interval of a total far "
            "too narrow when errors are spatially correlated); when it is empty and VALIDATION_REPORT (a "
            "validatepredictions report of this map, .html or its .json) is given, the range is fitted to that "
            "report's empirical residual semivariogram: distance classes merged to at least "
            f"{MIN_PAIRS} pairs each, an exponential model fitted by weighted least squares (Cressie 1985), its "
            "practical range used and the nugget, sill and pairs written to the log (the nugget is not credited as "
            "independent error: at the plots it mixes plot measurement and co-location error with map error); a "
            "semivariogram flat from its first class shows no range, which does not rule out a stand-scale error, so "
            "the errors are then taken as fully correlated; with neither range nor report, the errors are "
            "taken as FULLY CORRELATED inside each polygon, the widest interval any range gives (a warning says so). "
            f"{HOW_TO_CHOOSE} SIMULATIONS realizations of the error field (circulant-embedding FFT on the "
            "polygon's window; windows over 128 pixels a side are simulated on coarser cells rescaled to the exact "
            "variance), plus independent normal draws of the allometry's a and b with ALLOMETRY_A_SE and "
            "ALLOMETRY_B_SE, give the CONFIDENCE interval (percentiles); SEED makes it reproducible. The report "
            "also gives the two analytic bounds of the half-width (independent pixels z·√Σ(wσa)², fully correlated "
            "z·Σwσa). Without AGB_STD or AGB_LOWER/AGB_UPPER the interval, uncertainty, deduction and creditable "
            "fields are NULL and the log says why. The uncertainty of R and of CARBON_FRACTION is not included.\n"
            f"Deduction: {DEDUCTION_CITATION}"
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        Num = QgsProcessingParameterNumber
        self.addParameter(QgsProcessingParameterRasterLayer(self.AGB, self.tr("Above-ground biomass raster (Mg/ha)"),
                                                            optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(self.AGB_STD, self.tr("AGB standard deviation raster"),
                                                            optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(self.AGB_LOWER, self.tr("AGB lower bound raster"),
                                                            optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(self.AGB_UPPER, self.tr("AGB upper bound raster"),
                                                            optional=True))
        self.addParameter(Num(self.COVERAGE, self.tr("Nominal coverage of AGB_LOWER/AGB_UPPER"), NumberType.Double,
                              defaultValue=0.9, minValue=0.01, maxValue=0.999))
        self.addParameter(QgsProcessingParameterRasterLayer(self.HEIGHT, self.tr("Canopy height raster (instead of AGB)"),
                                                            optional=True))
        self.addParameter(QgsProcessingParameterEnum(self.ALLOMETRY, self.tr("Height allometry"),
                                                     options=[a.label for a in ALLOMETRIES.values()], defaultValue=0))
        for name, label in ((self.ALLOMETRY_A, "Allometry a (custom)"), (self.ALLOMETRY_B, "Allometry b (custom)")):
            self.addParameter(Num(name, self.tr(label), NumberType.Double, optional=True))
        for name, label in ((self.ALLOMETRY_A_SE, "Standard error of a"), (self.ALLOMETRY_B_SE, "Standard error of b")):
            self.addParameter(Num(name, self.tr(label), NumberType.Double, defaultValue=0.0, minValue=0.0))
        self.addParameter(Num(self.ALLOMETRY_BA, self.tr("Basal area (m²/ha; Asner & Mascaro)"), NumberType.Double,
                              optional=True, minValue=0.0))
        self.addParameter(Num(self.ALLOMETRY_WD, self.tr("Wood density (g/cm³; Asner & Mascaro)"), NumberType.Double,
                              optional=True, minValue=0.0))
        self.addParameter(QgsProcessingParameterFeatureSource(self.PROJECTS, self.tr("Project polygons"),
                                                              [SourceType.VectorPolygon]))
        self.addParameter(Num(self.ROOT_SHOOT, self.tr("Root-to-shoot ratio (empty: ECOZONE default)"), NumberType.Double,
                              optional=True, minValue=0.0))
        self.addParameter(QgsProcessingParameterEnum(
            self.ECOZONE, self.tr("Ecological zone for the IPCC root-to-shoot default"),
            options=["(none: use ROOT_SHOOT)"] + [label for label, _ in ECOZONES.values()], defaultValue=0))
        self.addParameter(Num(self.CARBON_FRACTION, self.tr("Carbon fraction of dry biomass"), NumberType.Double,
                              defaultValue=0.47, minValue=0.01, maxValue=1.0))
        self.addParameter(Num(self.CONFIDENCE, self.tr("Confidence level"), NumberType.Double, defaultValue=0.9,
                              minValue=0.5, maxValue=0.999))
        self.addParameter(Num(self.CORRELATION_RANGE,
                              self.tr("Error correlation range (m; empty: from the validation report, else fully "
                                      "correlated; 0 = independent)"),
                              NumberType.Double, optional=True, minValue=0.0))
        self.addParameter(QgsProcessingParameterFile(
            self.VALIDATION_REPORT, self.tr("Validation report of the map (validatepredictions), for the range"),
            FileBehavior.File, fileFilter="Validation report (*.html *.json)", optional=True))
        self.addParameter(Num(self.SIMULATIONS, self.tr("Monte Carlo simulations"), NumberType.Integer,
                              defaultValue=DEFAULT_SIMULATIONS, minValue=10, maxValue=1_000_000))
        self.addParameter(Num(self.SEED, self.tr("Random seed"), NumberType.Integer, defaultValue=0, minValue=0))
        self.addParameter(Num(self.ALLOWED_UNCERTAINTY, self.tr("Allowed uncertainty (%) before a deduction"),
                              NumberType.Double, defaultValue=10.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, self.tr("Project carbon"),
                                                            SourceType.VectorPolygon))
        # optional so that a script may name only OUTPUT; the dialog still writes it by default
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_REPORT, self.tr("Carbon report"),
                                                                fileFilter="HTML files (*.html)", optional=True,
                                                                createByDefault=True))
        self.addOutput(QgsProcessingOutputFile(self.OUTPUT_JSON, self.tr("Carbon numbers (JSON)")))

    def _raster(self, parameters, name, context):
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            if parameters.get(name):
                raise QgsProcessingException(self.tr(f"{name}: '{parameters.get(name)}' cannot be loaded as a raster."))
            return None
        return layer.source()

    def _optional_number(self, parameters, name, context):
        value = parameters.get(name)
        # a model hands an unset optional number on as a NULL QVariant, which parameterAsDouble reads as 0
        if value is None or value == "" or (hasattr(value, "isNull") and value.isNull()):
            return None
        return self.parameterAsDouble(parameters, name, context)

    def _values(self, parameters, context) -> dict:
        """The parameters' values by id, as the core takes them (an unset optional number is None)."""
        ecozone = self.parameterAsEnum(parameters, self.ECOZONE, context)
        values = {name: self._raster(parameters, name, context)
                  for name in (self.AGB, self.AGB_STD, self.AGB_LOWER, self.AGB_UPPER, self.HEIGHT)}
        values.update({name: self._optional_number(parameters, name, context)
                       for name in (self.ALLOMETRY_A, self.ALLOMETRY_B, self.ALLOMETRY_BA, self.ALLOMETRY_WD,
                                    self.ROOT_SHOOT, self.CORRELATION_RANGE)})
        values.update({name: self.parameterAsDouble(parameters, name, context)
                       for name in (self.COVERAGE, self.ALLOMETRY_A_SE, self.ALLOMETRY_B_SE, self.CARBON_FRACTION,
                                    self.CONFIDENCE, self.ALLOWED_UNCERTAINTY)})
        values.update({
            self.ALLOMETRY: ALLOMETRY_KEYS[self.parameterAsEnum(parameters, self.ALLOMETRY, context)],
            self.ECOZONE: ECOZONE_KEYS[ecozone] if 0 <= ecozone < len(ECOZONE_KEYS) else None,
            self.VALIDATION_REPORT: self.parameterAsFile(parameters, self.VALIDATION_REPORT, context) or None,
            self.SIMULATIONS: self.parameterAsInt(parameters, self.SIMULATIONS, context),
            self.SEED: self.parameterAsInt(parameters, self.SEED, context),
        })
        self._check_inputs(values)
        return values

    def _check_inputs(self, v: dict) -> None:
        """The mistakes of a dialog's user, told in the parameters' names (the core names its own arguments)."""
        if (v[self.AGB] is None) == (v[self.HEIGHT] is None):
            raise QgsProcessingException(self.tr("Give either AGB (a biomass raster, Mg/ha) or HEIGHT with ALLOMETRY, "
                                                 "not both and not neither."))
        if (v[self.AGB_LOWER] is None) != (v[self.AGB_UPPER] is None):
            raise QgsProcessingException(self.tr("AGB_LOWER and AGB_UPPER go together: give both (with COVERAGE), or "
                                                 "AGB_STD."))
        if v[self.AGB_STD] is not None and v[self.AGB_LOWER] is not None:
            raise QgsProcessingException(self.tr("Give AGB_STD or AGB_LOWER/AGB_UPPER, not both."))
        model = ALLOMETRIES[v[self.ALLOMETRY]]
        if v[self.HEIGHT] is not None and not model.needs and (v[self.ALLOMETRY_A] is None or v[self.ALLOMETRY_B] is None):
            raise QgsProcessingException(self.tr("The custom allometry AGB = a·H^b needs ALLOMETRY_A and ALLOMETRY_B."))
        if v[self.HEIGHT] is not None and model.needs and (v[self.ALLOMETRY_BA] is None or v[self.ALLOMETRY_WD] is None):
            raise QgsProcessingException(self.tr(f"{model.label} needs ALLOMETRY_BA (basal area, m²/ha) and "
                                                 "ALLOMETRY_WD (wood density, g/cm³)."))
        if v[self.VALIDATION_REPORT]:
            try:
                report_json(v[self.VALIDATION_REPORT], self.VALIDATION_REPORT)
            except ForestCarbonError as exc:
                raise QgsProcessingException(str(exc)) from exc

    def _settings(self, v: dict) -> dict:
        """The core's settings (``carbon_stock`` keyword arguments) from the parameters' values."""
        allometry = Allometry(model=v[self.ALLOMETRY], a=v[self.ALLOMETRY_A], b=v[self.ALLOMETRY_B],
                              a_se=v[self.ALLOMETRY_A_SE], b_se=v[self.ALLOMETRY_B_SE],
                              basal_area_m2_ha=v[self.ALLOMETRY_BA], wood_density_g_cm3=v[self.ALLOMETRY_WD])
        return {
            "biomass": BiomassMap(agb=v[self.AGB], std=v[self.AGB_STD], lower=v[self.AGB_LOWER],
                                  upper=v[self.AGB_UPPER], coverage=v[self.COVERAGE], height=v[self.HEIGHT],
                                  allometry=allometry),
            "factors": CarbonFactors(carbon_fraction=v[self.CARBON_FRACTION], root_shoot=v[self.ROOT_SHOOT],
                                     ecozone=v[self.ECOZONE]),
            "monte_carlo": MonteCarlo(draws=v[self.SIMULATIONS], correlation_range_m=v[self.CORRELATION_RANGE],
                                      validation_report=v[self.VALIDATION_REPORT], confidence=v[self.CONFIDENCE],
                                      seed=v[self.SEED]),
            "deduction": Deduction(allowed_uncertainty_pct=v[self.ALLOWED_UNCERTAINTY]),
        }

    def _read_projects(self, source, feedback):
        """The features of PROJECTS and their geometries as shapely (None where empty)."""
        from shapely import wkb

        features, geoms = [], []
        for feature in source.getFeatures():
            if feedback.isCanceled():
                break
            features.append(feature)
            g = feature.geometry()
            geoms.append(None if g is None or g.isEmpty() else wkb.loads(bytes(g.asWkb())))
        if not geoms and not feedback.isCanceled():
            raise QgsProcessingException(self.tr("PROJECTS has no features: give a polygon layer with one polygon per "
                                                 "project area."))
        if geoms and all(polygonal(g) in (None, NOT_POLYGONAL) for g in geoms):
            raise QgsProcessingException(self.tr(
                f"PROJECTS holds no polygon ({len(geoms)} features without a polygon geometry: points, lines or "
                "empty): give a polygon layer with one polygon per project area."))
        return features, geoms

    def _check_overlap(self, biomass: BiomassMap) -> None:
        """The uncertainty rasters must cover the map, told in the parameters' names."""
        names = {"std": self.AGB_STD, "lower": self.AGB_LOWER, "upper": self.AGB_UPPER}
        off = errors_off_the_map(biomass)
        if off:
            raise QgsProcessingException(self.tr(
                f"{names[off[0]]} ('{Path(getattr(biomass, off[0])).name}') does not overlap "
                f"'{Path(biomass.raster).name}': the uncertainty rasters must cover the map they describe. Give the "
                "ones predictraster wrote with it."))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        values = self._values(parameters, context)
        source = self.parameterAsSource(parameters, self.PROJECTS, context)
        if source is None:
            raise QgsProcessingException(self.tr("PROJECTS cannot be loaded as a polygon layer."))
        crs = source.sourceCrs()
        features, geoms = self._read_projects(source, feedback)
        out_html = (self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context)
                    or QgsProcessingUtils.generateTempFilename("carbon_report.html"))  # OUTPUT_JSON lies beside it
        record = dict(values)
        record[self.PROJECTS] = parameters.get(self.PROJECTS)
        # the uncertainty dock finds this run's error model (range, seed) through the output it wrote
        record[self.OUTPUT] = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        settings = self._settings(values)
        self.call_core(self._check_overlap, settings["biomass"])
        doc = self.call_core(carbon_stock, geoms, out_html=out_html,
                             projects_crs=crs.toWkt() if crs.isValid() else None,
                             progress=FeedbackProgress(feedback), parameters=record, **settings)
        if feedback.isCanceled():
            return {}
        dest_id = self._write_output(parameters, context, source, features, doc)
        # written once the sink has closed the file (postProcessAlgorithm)
        self._provenance = (record[self.OUTPUT], doc)
        self._log_totals(doc, feedback)
        return {self.OUTPUT: dest_id, self.OUTPUT_REPORT: out_html, self.OUTPUT_JSON: doc["outputs"]["json"]}

    def _write_output(self, parameters, context, source, features, doc):
        crs = source.sourceCrs()
        fields = QgsFields(source.fields())
        existing = {f.name().lower() for f in fields}
        clash = [n for n in OUTPUT_FIELDS if n in existing]
        if clash:
            raise QgsProcessingException(self.tr(
                f"PROJECTS already has the field(s) {', '.join(clash)}; rename them, or drop the results of an earlier "
                "run, before computing again."))
        for name in OUTPUT_FIELDS:
            fields.append(QgsField(name, FieldType.Double))
        sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT, context, fields, source.wkbType(),
                                             crs if crs.isValid() else QgsCoordinateReferenceSystem())
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        for feature, rec in zip(features, doc["records"]):
            out = QgsFeature(fields)
            out.setGeometry(feature.geometry())
            out.setAttributes(list(feature.attributes()) + [None if rec[name] is None else float(rec[name])
                                                          for name in OUTPUT_FIELDS])
            if not sink.addFeature(out, QgsFeatureSink.Flag.FastInsert):
                raise QgsProcessingException(self.writeFeatureError(sink, parameters, self.OUTPUT))
        return dest_id

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802
        output, doc = getattr(self, "_provenance", (None, None))
        if output and not record_error_model(output, doc):
            feedback.pushInfo(self.tr("The output's format keeps no metadata: the run's error model is in the JSON "
                                      "beside the report only."))
        return {}

    @staticmethod
    def _log_totals(doc, feedback):
        for rec, det in zip(doc["records"], doc["details"]):
            if rec["co2e_total_t"] is not None:
                iv = ("" if rec["co2e_ci_low_t"] is None else
                      f", {100 * doc['settings']['confidence']:.0f}% CI [{rec['co2e_ci_low_t']:.6g}, "
                      f"{rec['co2e_ci_high_t']:.6g}], U = {rec['uncertainty_pct']:.3g}%, deduction "
                      f"{rec['deduction_pct']:.3g}%")
                feedback.pushInfo(f"Feature {det['feature']}: {rec['area_ha']:.4g} ha, CO2e {rec['co2e_total_t']:.6g} t{iv}")
