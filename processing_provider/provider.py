"""The Processing provider ``forestcarbon`` ("Forest Carbon")."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from forest_carbon_plugin import __version__
from forest_carbon_plugin.paths import ICON_SVG

from .canopy_height_model import CanopyHeightModelAlgorithm
from .carbon_stock import CarbonStockAlgorithm
from .classify_ground import ClassifyGroundAlgorithm
from .composite_scenes import CompositeScenesAlgorithm
from .harmonize_highres import HarmonizeHighresAlgorithm
from .harmonize_scene import HarmonizeSceneAlgorithm
from .canopy_metrics import CanopyMetricsAlgorithm
from .lidar_info import LidarInfoAlgorithm
from .model_info import ModelInfoAlgorithm
from .normalize_height import NormalizeHeightAlgorithm
from .plot_metrics import PlotMetricsAlgorithm
from .predict_raster import PredictRasterAlgorithm
from .sar_features import SarFeaturesAlgorithm
from .simulate_scene import SimulateSceneAlgorithm
from .spectral_indices import SpectralIndicesAlgorithm
from .tree_tops import TreeTopsAlgorithm
from .train_model import TrainModelAlgorithm
from .validate_predictions import ValidatePredictionsAlgorithm
from .aggregate_to_grid import AggregateToGridAlgorithm
from .import_gedi import ImportGediAlgorithm

ALGORITHMS = (LidarInfoAlgorithm, ClassifyGroundAlgorithm, NormalizeHeightAlgorithm, CanopyMetricsAlgorithm, CanopyHeightModelAlgorithm, TreeTopsAlgorithm, PlotMetricsAlgorithm,
              ModelInfoAlgorithm, PredictRasterAlgorithm, SimulateSceneAlgorithm, HarmonizeSceneAlgorithm, HarmonizeHighresAlgorithm, SarFeaturesAlgorithm,
              SpectralIndicesAlgorithm, CompositeScenesAlgorithm, ValidatePredictionsAlgorithm,
              TrainModelAlgorithm, CarbonStockAlgorithm, AggregateToGridAlgorithm, ImportGediAlgorithm)


class ForestCarbonProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "forestcarbon"

    def name(self) -> str:
        return "Forest Carbon"

    def longName(self) -> str:  # noqa: N802
        return f"Forest Carbon {__version__}"

    def icon(self):
        return QIcon(str(ICON_SVG))

    def svgIconPath(self) -> str:  # noqa: N802
        return str(ICON_SVG)

    def versionInfo(self) -> str:  # noqa: N802
        return __version__

    def loadAlgorithms(self):  # noqa: N802
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())
