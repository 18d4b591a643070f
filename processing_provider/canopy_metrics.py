"""forestcarbon:canopymetrics — Canopy metrics on a grid (lidR's pixel_metrics with stdmetrics_z)."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
)

from forest_carbon_plugin.core.lidar.normalize import NORMALIZE_MODES
from forest_carbon_plugin.core.lidar.catalog import Extent
from forest_carbon_plugin.core.lidar.pixel_metrics import MetricsSettings, canopy_metrics
from forest_carbon_plugin.core.parallel.pool import default_workers

from .base import FeedbackProgress, ForestCarbonAlgorithm, StyleLoader
from .compat import NumberType
from .execution import add_execution_parameters, execution
from .inputs import point_cloud_source


class CanopyMetricsAlgorithm(ForestCarbonAlgorithm):
    INPUT = "INPUT"
    RESOLUTION = "RESOLUTION"
    HEIGHT_BREAK = "HEIGHT_BREAK"
    MIN_POINTS = "MIN_POINTS"
    INTENSITY = "INTENSITY"
    NORMALIZE = "NORMALIZE"
    MAX_WORKERS = "MAX_WORKERS"
    CRS = "CRS"
    EXTENT = "EXTENT"
    OUTPUT = "OUTPUT"

    _name = "canopymetrics"
    _display = "Canopy metrics (grid)"
    _group = "LiDAR"
    _group_id = "lidar"
    requirements = ("laspy", "lazrs")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Computes LiDAR canopy metrics on a raster grid from a LAS/LAZ file or a folder of tiles "
            "(a catalog), as lidR's pixel_metrics(las, ~stdmetrics_z(Z), res) does, with one band per "
            "metric named after it:\n"
            "zmax, zmean, zsd, zskew, zkurt (Pearson, not excess), zentropy, pzabovezmean, pzabove2, "
            "zq5…zq95 (R type-7 quantiles), zpcum1…zpcum9 (lidR 4.3.2 definitions); then cover = % of "
            "first returns above HEIGHT_BREAK (FUSION's definition), n (points), point_density and "
            "pulse_density (per m²); with INTENSITY, lidR's stdmetrics_i (itot, imax, imean, isd, iskew, "
            "ikurt, ipground, ipcumzq10…90).\n\n"
            "Heights in m above ground. RESOLUTION in CRS units (m); the grid is snapped to multiples "
            "of it, so separate runs mosaic exactly. Cells with fewer than MIN_POINTS points are "
            "nodata. NORMALIZE: auto subtracts the ground (a TIN of the ground returns, as "
            "forestcarbon:normalizeheight) when Z are elevations and uses Z as it is when it already is height "
            "above ground; always subtracts it; never uses Z as it is. Normalizing needs ground returns "
            "(forestcarbon:classifyground).\n\n"
            "Catalogs: each tile is read once; cells across tile edges get the points of every tile, "
            "so a catalog gives the same grid as one merged file. MAX_WORKERS bounds the cores used: "
            "that many tiles are read in parallel worker processes, each decoding on one core.\n\n"
            "References: Roussel et al. (2020) lidR, Remote Sensing of Environment 251:112061; "
            "McGaughey (2021) FUSION/LDV manual (cover)."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_cloud_input()
        self.add_resolution(20.0)
        self.addParameter(QgsProcessingParameterNumber(
            self.HEIGHT_BREAK, self.tr("Height break for cover and pzabove (m)"),
            NumberType.Double, defaultValue=2.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_POINTS, self.tr("Minimum points per cell"), NumberType.Integer,
            defaultValue=4, minValue=1))
        self.addParameter(QgsProcessingParameterBoolean(self.INTENSITY, self.tr("Intensity metrics"),
                                                        defaultValue=False))
        self.addParameter(QgsProcessingParameterEnum(
            self.NORMALIZE, self.tr("Height normalization"), options=["auto", "always", "never"], defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.MAX_WORKERS, self.tr("Worker processes"), NumberType.Integer,
            defaultValue=default_workers(), minValue=1, maxValue=64))
        self.add_crs_and_extent(extent=True)
        add_execution_parameters(self)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Canopy metrics")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        source = point_cloud_source(self, parameters, context)
        res = self.parameterAsDouble(parameters, self.RESOLUTION, context)
        if not res > 0:
            raise QgsProcessingException(f"The resolution (RESOLUTION) must be positive (got {res} m).")
        crs = self.crs_wkt(parameters, context, self.CRS)
        extent, extent_crs = self.extent_of(parameters, context, self.EXTENT)
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        settings = MetricsSettings(
            res_m=res,
            height_break_m=self.parameterAsDouble(parameters, self.HEIGHT_BREAK, context),
            min_points=self.parameterAsInt(parameters, self.MIN_POINTS, context),
            intensity=self.parameterAsBool(parameters, self.INTENSITY, context),
            normalize=NORMALIZE_MODES[self.parameterAsEnum(parameters, self.NORMALIZE, context)])
        max_workers = self.parameterAsInt(parameters, self.MAX_WORKERS, context)
        record = {"RESOLUTION": res, "HEIGHT_BREAK": settings.height_break_m, "MIN_POINTS": settings.min_points,
                  "INTENSITY": settings.intensity, "NORMALIZE": settings.normalize, "MAX_WORKERS": max_workers,
                  "INPUT": source}
        with execution(self, parameters, context, feedback):
            result = self.call_core(canopy_metrics, source, output, settings, crs=crs,
                                    extent=Extent(extent, extent_crs) if extent else None, max_workers=max_workers,
                                    progress=FeedbackProgress(feedback), parameters=record)
        feedback.pushInfo(f"{result.points:,} points; {result.grid.ncols} × {result.grid.nrows} cells of "
                          f"{res:g} m, {result.cells_with_data:,} with data; {len(result.bands)} bands.")
        StyleLoader.attach(context, output, "canopy_metrics")
        return {self.OUTPUT: output}
