"""forestcarbon:canopyheightmodel — Canopy height model (lidR's p2r and pit-free)."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
)

from forest_carbon_plugin.core.lidar.canopy import canopy_height_model
from forest_carbon_plugin.core.lidar.catalog import Extent
from forest_carbon_plugin.core.lidar.chm import P2R, PitFree
from forest_carbon_plugin.core.lidar.normalize import NORMALIZE_MODES

from .base import FeedbackProgress, ForestCarbonAlgorithm, StyleLoader
from .compat import NumberType
from .execution import add_execution_parameters, execution
from .inputs import point_cloud_source

# the METHOD menu, in order: its name in the provenance record and the core's algorithm
METHODS = (("p2r", P2R), ("pitfree", PitFree))


class CanopyHeightModelAlgorithm(ForestCarbonAlgorithm):
    INPUT = "INPUT"
    RESOLUTION = "RESOLUTION"
    METHOD = "METHOD"
    SUBCIRCLE = "SUBCIRCLE"
    FILL_EMPTY = "FILL_EMPTY"
    NORMALIZE = "NORMALIZE"
    CRS = "CRS"
    EXTENT = "EXTENT"
    OUTPUT = "OUTPUT"

    _name = "canopyheightmodel"
    _display = "Canopy height model"
    _group = "LiDAR"
    _group_id = "lidar"
    requirements = ("laspy", "lazrs")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Rasterizes the canopy surface of a LAS/LAZ file or a folder of tiles, as lidR's "
            "rasterize_canopy(las, res, algorithm) does.\n\n"
            "METHOD p2r: each cell takes the highest return in it; SUBCIRCLE (m) replaces each return by "
            "8 points on a circle of that radius to thicken sparse data.\n"
            "METHOD pit-free (Khosravipour et al. 2014, PE&RS 80(9):863-872) with lidR's defaults: first "
            "returns, highest per cell, Delaunay layers for heights ≥ 0, 2, 5, 10, 15 m (triangles with an "
            "edge over 1 m dropped above 0 m), cell-wise maximum.\n\n"
            "FILL_EMPTY fills empty cells inside the data by linear interpolation (lidR's na.fill = tin()). "
            "When most cells are empty at RESOLUTION (a sparse cloud), the log says so and suggests the "
            "resolution at which about 90 % of cells get a first return, sqrt(ln 10 / first-return density).\n\n"
            "NORMALIZE, as in canopymetrics: auto subtracts the ground (a TIN of the ground "
            "returns, as forestcarbon:normalizeheight) from tiles whose Z are elevations and keeps Z that already are "
            "heights above ground; always subtracts it; never keeps Z as it is (then the output of a cloud that is "
            "not normalized holds elevations, a surface model). The log says what was done. Normalizing needs "
            "ground returns (forestcarbon:classifyground).\n\n"
            "The grid is snapped to multiples of RESOLUTION (m). Catalog "
            "tiles are processed with a buffer, so results across tile edges match one merged file."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_cloud_input()
        self.add_resolution(0.5)
        self.addParameter(QgsProcessingParameterEnum(self.METHOD, self.tr("Method"), options=["p2r", "pit-free"],
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.SUBCIRCLE, self.tr("Subcircle radius (m)"), NumberType.Double, defaultValue=0.0,
            minValue=0.0))
        self.addParameter(QgsProcessingParameterBoolean(self.FILL_EMPTY, self.tr("Fill empty cells"),
                                                        defaultValue=False))
        self.addParameter(QgsProcessingParameterEnum(
            self.NORMALIZE, self.tr("Height normalization"), options=["auto", "always", "never"], defaultValue=0))
        self.add_crs_and_extent(extent=True)
        self.add_max_workers()
        add_execution_parameters(self)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Canopy height model")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        source = point_cloud_source(self, parameters, context)
        res = self.parameterAsDouble(parameters, self.RESOLUTION, context)
        if not res > 0:
            raise QgsProcessingException(f"The resolution (RESOLUTION) must be positive (got {res} m).")
        crs = self.crs_wkt(parameters, context, self.CRS)
        extent, extent_crs = self.extent_of(parameters, context, self.EXTENT)
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        name, algorithm = METHODS[self.parameterAsEnum(parameters, self.METHOD, context)]
        subcircle = self.parameterAsDouble(parameters, self.SUBCIRCLE, context)
        fill = self.parameterAsBool(parameters, self.FILL_EMPTY, context)
        normalize = NORMALIZE_MODES[self.parameterAsEnum(parameters, self.NORMALIZE, context)]
        record = {"INPUT": source, "RESOLUTION": res, "METHOD": name, "SUBCIRCLE": subcircle, "FILL_EMPTY": fill,
                  "NORMALIZE": normalize}
        with execution(self, parameters, context, feedback):
            grid = self.call_core(canopy_height_model, source, output, res_m=res,
                                  method=algorithm(subcircle_m=subcircle, fill_empty=fill), normalize=normalize,
                                  crs=crs, extent=Extent(extent, extent_crs) if extent else None,
                                  max_workers=self.parameterAsInt(parameters, "MAX_WORKERS", context),
                                  progress=FeedbackProgress(feedback), parameters=record)
        feedback.pushInfo(f"{grid.ncols} × {grid.nrows} cells of {res:g} m ({name}).")
        StyleLoader.attach(context, output, "canopy_height")
        return {self.OUTPUT: output}
