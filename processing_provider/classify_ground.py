"""forestcarbon:classifyground — Ground classification (SMRF or CSF)."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
)

from forest_carbon_plugin.core.lidar.ground import CSF, MAX_WINDOW_M, SMRF, classify_ground

from .base import FeedbackProgress, ForestCarbonAlgorithm
from .compat import NumberType
from .inputs import point_cloud_source

NUMBER = QgsProcessingParameterNumber


class ClassifyGroundAlgorithm(ForestCarbonAlgorithm):
    INPUT = "INPUT"
    METHOD = "METHOD"
    OUTPUT = "OUTPUT"
    CRS = "CRS"
    # SMRF (PDAL's names and defaults) and CSF (RCSF's)
    SMRF_PARAMS = (("CELL", "SMRF cell size (m)", 1.0, "cell_m"), ("SLOPE", "SMRF slope (rise/run)", 0.15, "slope"),
                   ("WINDOW", "SMRF maximum window (m)", 18.0, "window_m"),
                   ("THRESHOLD", "SMRF elevation threshold (m)", 0.5, "threshold_m"),
                   ("SCALAR", "SMRF slope scalar", 1.25, "scalar"))
    CSF_PARAMS = (("CLOTH_RESOLUTION", "CSF cloth resolution (m)", 0.5, "cloth_resolution_m"),
                  ("RIGIDNESS", "CSF rigidness (1-3)", 1, "rigidness"),
                  ("ITERATIONS", "CSF iterations", 500, "iterations"),
                  ("TIME_STEP", "CSF time step", 0.65, "time_step"),
                  ("CLASS_THRESHOLD", "CSF class threshold (m)", 0.5, "class_threshold_m"))

    _name = "classifyground"
    _display = "Classify ground"
    _group = "LiDAR"
    _group_id = "lidar"
    requirements = ("laspy", "lazrs")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Classifies ground returns (class 2) in a cloud that lacks them, keeping every other attribute.\n"
            "METHOD SMRF: the simple morphological filter (Pingel et al. 2013, ISPRS J. Photogramm. Remote "
            "Sens. 77:21-30) with PDAL's defaults: CELL 1 m, SLOPE 0.15, WINDOW 18 m, THRESHOLD 0.5 m, "
            "SCALAR 1.25.\n"
            "METHOD CSF: cloth simulation (Zhang et al. 2016, Remote Sensing 8:501) with RCSF's defaults: "
            "CLOTH_RESOLUTION 0.5 m, RIGIDNESS 1, ITERATIONS 500, TIME_STEP 0.65, CLASS_THRESHOLD 0.5 m. "
            "CSF is weaker on steep slopes; prefer SMRF there.\n"
            "Only last returns can be ground (lidR's default). OUTPUT is one LAS/LAZ file; tiles of a folder "
            "are filtered with a buffer of their neighbours' points."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_cloud_input()
        self.addParameter(QgsProcessingParameterEnum(self.METHOD, self.tr("Method"), options=["SMRF", "CSF"],
                                                     defaultValue=0))
        for name, label, default, _ in self.SMRF_PARAMS + self.CSF_PARAMS:
            kind = NumberType.Integer if isinstance(default, int) else NumberType.Double
            self.addParameter(NUMBER(name, self.tr(label), kind, defaultValue=default, minValue=0))
        self.add_crs_and_extent(extent=False)
        self.add_max_workers()
        self.add_las_output("Classified point cloud")

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        source = point_cloud_source(self, parameters, context)
        output = self.las_output(parameters, context)
        method = ("smrf", "csf")[self.parameterAsEnum(parameters, self.METHOD, context)]
        table, cls = (self.SMRF_PARAMS, SMRF) if method == "smrf" else (self.CSF_PARAMS, CSF)
        values = {}
        for name, _, default, field in table:
            values[field] = (self.parameterAsInt if isinstance(default, int) else self.parameterAsDouble)(
                parameters, name, context)
        self._check(method, values)
        result = self.call_core(classify_ground, source, output, cls(**values), crs=self.crs_wkt(parameters, context),
                                max_workers=self.parameterAsInt(parameters, "MAX_WORKERS", context),
                                progress=FeedbackProgress(feedback))
        feedback.pushInfo(f"{result['ground']:,} of {result['points']:,} points classified as ground.")
        return {self.OUTPUT: output}

    @staticmethod
    def _check(method: str, values: dict) -> None:
        """The core's limits on WINDOW and RIGIDNESS, said with the parameters' names."""
        if method == "smrf" and values["window_m"] > MAX_WINDOW_M:
            raise QgsProcessingException(
                f"WINDOW {values['window_m']:g} m is larger than any object SMRF must remove (the window is the size "
                f"of the largest building or tree crown; 18 m by default, rarely above 50 m): give at most "
                f"{MAX_WINDOW_M:g} m.")
        if method == "csf" and values["rigidness"] not in (1, 2, 3):
            raise QgsProcessingException(f"RIGIDNESS must be 1, 2 or 3 (got {values['rigidness']:g}): 1 for steep "
                                         "slopes, 2 for terraces and gentle slopes, 3 for flat terrain, as in CSF.")
