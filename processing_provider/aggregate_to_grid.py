"""forestcarbon:aggregatetogrid — Aggregate a fine raster to a coarse grid (exact area weights)."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from forest_carbon_plugin.core.raster.aggregate import aggregate_to_grid, parse_statistics
from forest_carbon_plugin.core.errors import ForestCarbonError

from .base import FeedbackProgress, ForestCarbonAlgorithm
from .compat import NumberType


class AggregateToGridAlgorithm(ForestCarbonAlgorithm):
    INPUT = "INPUT"
    REFERENCE_GRID = "REFERENCE_GRID"
    RESOLUTION = "RESOLUTION"
    STATISTICS = "STATISTICS"
    OUTPUT = "OUTPUT"

    _name = "aggregatetogrid"
    _display = "Aggregate raster to grid"
    _group = "Models"
    _group_id = "models"
    requirements = ("rasterio",)

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Aggregates a fine raster (band 1, e.g. a 1 m canopy height model) onto a coarse grid (e.g. the "
            "30 m grid of a feature stack) with exact pixel-area weights: a fine pixel straddling a coarse "
            "edge counts in each cell in proportion to the area it shares with it.\n\n"
            "The target grid is REFERENCE_GRID's (a raster in the same CRS), or a grid of RESOLUTION (m) "
            "snapped to multiples of it over the input. Rasters in another CRS: warp the input to the target "
            "CRS at its own resolution first (Raster ▸ Projections ▸ Warp).\n\n"
            "STATISTICS, comma-separated: mean (area-weighted), std (area-weighted, population), min and max "
            "(of the pixels touching the cell), sum (values × overlapping share of each fine pixel), pNN "
            "(area-weighted percentile: the smallest value whose cumulative area share reaches NN %, e.g. p95) "
            "and coverNN (area share of the valid pixels above NN, e.g. cover2 = canopy cover above 2 m).\n\n"
            "Output: a float32 Cloud-Optimized GeoTIFF, one band per statistic (named after it) and a last "
            "band valid_fraction (share of each cell covered by valid fine pixels). Cells without valid "
            "pixels are NaN (nodata) in the statistics and 0 in valid_fraction."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Fine raster")))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.REFERENCE_GRID, self.tr("Reference grid (its grid is the output's)"), optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.RESOLUTION, self.tr("Resolution (m), when no reference grid is given"),
            NumberType.Double, optional=True, minValue=0.0))
        self.addParameter(QgsProcessingParameterString(self.STATISTICS, self.tr("Statistics"), defaultValue="mean"))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Aggregated raster")))

    def checkParameterValues(self, parameters, context):  # noqa: N802
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        try:
            parse_statistics(self.parameterAsString(parameters, self.STATISTICS, context))
        except ForestCarbonError as exc:
            return False, str(exc)
        return True, ""

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(self.tr("INPUT is not a raster that QGIS can open."))
        source = layer.source()
        reference = None
        if parameters.get(self.REFERENCE_GRID):
            ref_layer = self.parameterAsRasterLayer(parameters, self.REFERENCE_GRID, context)
            if ref_layer is None:
                raise QgsProcessingException(self.tr("REFERENCE_GRID is not a raster that QGIS can open."))
            reference = ref_layer.source()
        resolution = None
        if parameters.get(self.RESOLUTION) not in (None, ""):
            resolution = self.parameterAsDouble(parameters, self.RESOLUTION, context)
        statistics = self.parameterAsString(parameters, self.STATISTICS, context) or "mean"
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        record = {"INPUT": source, "REFERENCE_GRID": reference, "RESOLUTION": resolution, "STATISTICS": statistics}
        self.call_core(aggregate_to_grid, source, output, statistics=statistics, reference_grid=reference,
                       resolution_m=resolution, progress=FeedbackProgress(feedback), parameters=record)
        return {self.OUTPUT: output}
