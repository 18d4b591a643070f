"""forestcarbon:normalizeheight — Heights above ground (lidR's normalize_height with tin())."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterRasterDestination,
)

from forest_carbon_plugin.core.lidar.normalize import normalize_height

from .base import FeedbackProgress, ForestCarbonAlgorithm
from .inputs import point_cloud_source


class NormalizeHeightAlgorithm(ForestCarbonAlgorithm):
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"
    OUTPUT_DTM = "OUTPUT_DTM"
    DTM_RESOLUTION = "DTM_RESOLUTION"
    CRS = "CRS"

    _name = "normalizeheight"
    _display = "Normalize heights"
    _group = "LiDAR"
    _group_id = "lidar"
    requirements = ("laspy", "lazrs")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Subtracts the ground under each return, as lidR's normalize_height(las, tin()): the ground "
            "(classes 2 and 9) is a Delaunay triangulation with linear interpolation, and outside its hull "
            "the inverse-distance weighting of the 3 nearest ground returns (power 1, within 50 m). Ground "
            "returns get height 0. The original Z is kept in the extra dimension Zref.\n\n"
            "OUTPUT is one LAS/LAZ file (the tiles of a folder are written into it one after the other). "
            "OUTPUT_DTM, optional, is the terrain model (m) at DTM_RESOLUTION (m) on a grid snapped to "
            "multiples of it. Tiles are processed with a 30 m buffer of their neighbours' ground returns.\n\n"
            "Needs ground returns: classify them first (forestcarbon:classifyground) when the cloud has none."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_cloud_input()
        self.add_las_output("Normalized point cloud")
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT_DTM, self.tr("Terrain model"), optional=True, createByDefault=False))
        self.add_resolution(1.0, self.DTM_RESOLUTION, "Terrain model resolution (m)")
        self.add_crs_and_extent(extent=False)
        self.add_max_workers()

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        source = point_cloud_source(self, parameters, context)
        output = self.las_output(parameters, context)
        dtm = self.parameterAsOutputLayer(parameters, self.OUTPUT_DTM, context) or None
        res = self.parameterAsDouble(parameters, self.DTM_RESOLUTION, context)
        crs = self.crs_wkt(parameters, context, self.CRS)
        if dtm and not res > 0:
            raise QgsProcessingException(f"DTM_RESOLUTION must be positive (got {res}).")
        record = {"INPUT": source, "DTM_RESOLUTION": res}
        result = self.call_core(normalize_height, source, output, dtm, dtm_res_m=res, crs=crs,
                                progress=FeedbackProgress(feedback), parameters=record,
                                max_workers=self.parameterAsInt(parameters, "MAX_WORKERS", context))
        feedback.pushInfo(f"{result['points']:,} points from {result['tiles']} file(s) normalized.")
        outputs = {self.OUTPUT: output}
        if dtm:
            outputs[self.OUTPUT_DTM] = dtm
        return outputs
