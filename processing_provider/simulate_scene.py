"""forestcarbon:simulatescene — Simulate a forest scene with ground truth."""

from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
)

from forest_carbon_plugin.simulate import SceneConfig, simulate_scene

from .base import FeedbackProgress, ForestCarbonAlgorithm
from .compat import NumberType


class SimulateSceneAlgorithm(ForestCarbonAlgorithm):
    SIZE = "SIZE"
    SEED = "SEED"
    PULSE_DENSITY = "PULSE_DENSITY"
    PLOT_RADIUS = "PLOT_RADIUS"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"

    _name = "simulatescene"
    _display = "Simulate a forest scene"
    _group = "Simulation"
    _group_id = "simulation"
    requirements = ("laspy", "lazrs")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Simulates a square forest scene (UTM 33N) whose true answers are known, for testing "
            "workflows and training: terrain, stands of several forest types and ages with non-forest "
            "(grass, bare soil, water) and deforested patches, and individual trees with heights, "
            "crowns, stem diameter and above-ground biomass (Jucker et al. 2017 allometry).\n\n"
            "Observations, in the formats the real products use: airborne LiDAR tiles (LAS 1.4 "
            "point format 6, LAZ, up to 5 returns per pulse), a Sentinel-2 L2A-like product, a "
            "Landsat 8 Collection-2 Level-2-like product (with QA_PIXEL and MTL), Sentinel-1-like "
            "gamma0 VV/VH, a NAIP-like 1 m image, field plots and project polygons.\n\n"
            "Ground truth in truth/: DTM and canopy height (1 m), canopy cover and AGB (Mg/ha) on "
            "the 10 m and 30 m grids, the tree list and the stands; scene.json lists every file "
            "and the true carbon of each project.\n\n"
            "SIZE is the side in metres (rounded up to a multiple of 60 m so all grids align); "
            "PULSE_DENSITY is in pulses per m². PLOT_RADIUS is the radius of the circular field plots in "
            "metres (12.62 m = 500 m²; 16.93 m = 900 m², the area of a 30 m cell: an area-based model's "
            "intervals are calibrated at the support of its plots). The same SEED always gives the same bytes. "
            "OUTPUT_FOLDER must be new or empty. See the README section 'The scene simulator' "
            "for the model's assumptions."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterNumber(
            self.SIZE, self.tr("Scene size (m)"), NumberType.Double,
            defaultValue=500.0, minValue=30.0, maxValue=20000.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.SEED, self.tr("Random seed"), NumberType.Integer, defaultValue=7,
            minValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.PULSE_DENSITY, self.tr("LiDAR pulse density (pulses/m²)"), NumberType.Double,
            defaultValue=10.0, minValue=0.1, maxValue=100.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.PLOT_RADIUS, self.tr("Field plot radius (m)"), NumberType.Double,
            defaultValue=SceneConfig.plot_radius_m, minValue=1.0, maxValue=60.0))
        self.addParameter(QgsProcessingParameterFolderDestination(
            self.OUTPUT_FOLDER, self.tr("Output folder")))
        self.addOutput(QgsProcessingOutputFile("MANIFEST", self.tr("Scene manifest (scene.json)")))
        self.addOutput(QgsProcessingOutputNumber("TREE_COUNT", self.tr("Number of trees")))
        self.addOutput(QgsProcessingOutputNumber("POINT_COUNT", self.tr("Number of LiDAR points")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        folder = self.parameterAsFileOutput(parameters, self.OUTPUT_FOLDER, context)
        config = SceneConfig(
            size_m=self.parameterAsDouble(parameters, self.SIZE, context),
            seed=self.parameterAsInt(parameters, self.SEED, context),
            pulse_density=self.parameterAsDouble(parameters, self.PULSE_DENSITY, context),
            plot_radius_m=self.parameterAsDouble(parameters, self.PLOT_RADIUS, context),
        )
        manifest = self.call_core(simulate_scene, folder, config, FeedbackProgress(feedback))
        truth = manifest["truth"]
        for project in truth["projects"]:
            feedback.pushInfo(f"{project['project']}: {project['area_ha']:.1f} ha, true AGB "
                              f"{project['agb_mg']:.0f} Mg, {project['co2e_t']:.0f} t CO2e")
        return {self.OUTPUT_FOLDER: folder, "MANIFEST": str(Path(folder) / "scene.json"),
                "TREE_COUNT": truth["tree_count"], "POINT_COUNT": manifest["lidar"]["points"]}
