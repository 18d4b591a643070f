"""forestcarbon:sarfeatures — Sentinel-1 gamma0 to speckle-filtered dB and the VH/VV ratio."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from forest_carbon_plugin.core.imagery.sar import BANDS, S1_IW_GRDH_LOOKS, GammaMAP, NoFilter, RefinedLee, sar_features

from .base import FeedbackProgress, ForestCarbonAlgorithm
from .compat import NumberType


class SarFeaturesAlgorithm(ForestCarbonAlgorithm):
    INPUT_VV = "INPUT_VV"
    INPUT_VH = "INPUT_VH"
    FILTER = "FILTER"
    WINDOW = "WINDOW"
    LOOKS = "LOOKS"
    OUTPUT = "OUTPUT"

    _name = "sarfeatures"
    _display = "SAR backscatter features (Sentinel-1)"
    _group = "Imagery"
    _group_id = "imagery"
    requirements = ("rasterio",)

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Turns a pair of Sentinel-1 gamma0 rasters (VV and VH, linear power, terrain-corrected, on the "
            "same grid) into a float32 Cloud-Optimized GeoTIFF with three bands, all in dB: VV_dB, VH_dB and "
            "VH_VV_ratio_dB (= VH_dB − VV_dB). Speckle is filtered in the linear domain, then 10·log10 is "
            "taken. No-data is NaN wherever an input is no-data, NaN or ≤ 0; filters use only the valid "
            "pixels of each window.\n\n"
            "FILTER refined Lee (Lee 1981, 'Refined filtering of image noise using local statistics', "
            "Computer Graphics and Image Processing 15:380-389; as in ESA SNAP and the Earth Engine port): "
            "3×3 sub-window means over the 7×7 window find the edge direction among 4, the side of the edge "
            "nearer the centre picks one of 8 directional windows, whose mean and variance give the MMSE "
            "estimate with speckle variance 1/LOOKS. WINDOW 7 is the standard; other odd sizes scale the "
            "sub-windows (3: single pixels; 5: 3×3 overlapping; 9, 11: 5×5).\n"
            "FILTER Gamma-MAP (Lopes, Touzi & Nezry 1990, 'Adaptive speckle filters and scene "
            "heterogeneity', IEEE TGRS 28(6):992-1000): local mean where the scene is homogeneous "
            "(Ci ≤ 1/√L), the pixel kept where it is heterogeneous (Ci ≥ √2/√L), the gamma-distributed "
            "MAP estimate in between.\n"
            "FILTER none: dB conversion only.\n\n"
            "WINDOW: odd size in pixels (3 or more). LOOKS: the equivalent number of looks of the product "
            f"({S1_IW_GRDH_LOOKS} for Sentinel-1 IW GRDH). The raster is processed block by block on all "
            "cores, each block read with a margin of WINDOW//2 pixels, so the result equals filtering the "
            "whole image at once."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT_VV,
                                                            self.tr("Gamma0 VV (linear power)")))
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT_VH,
                                                            self.tr("Gamma0 VH (linear power)")))
        self.addParameter(QgsProcessingParameterEnum(
            self.FILTER, self.tr("Speckle filter"), options=["Refined Lee", "Gamma-MAP", "None"],
            defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.WINDOW, self.tr("Window size (pixels, odd)"), NumberType.Integer,
            defaultValue=7, minValue=3))
        self.addParameter(QgsProcessingParameterNumber(
            self.LOOKS, self.tr("Equivalent number of looks"), NumberType.Double,
            defaultValue=S1_IW_GRDH_LOOKS, minValue=0.0))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT, self.tr("SAR features (" + ", ".join(BANDS) + ")")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        vv = self._raster_path(parameters, self.INPUT_VV, context)
        vh = self._raster_path(parameters, self.INPUT_VH, context)
        speckle = self._speckle_filter(parameters, context)
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        if not output.lower().endswith((".tif", ".tiff")):
            raise QgsProcessingException(self.tr("OUTPUT must be a GeoTIFF (.tif): the result is a "
                                                 "Cloud-Optimized GeoTIFF."))
        self.call_core(sar_features, vv, vh, output, filter=speckle, progress=FeedbackProgress(feedback))
        return {self.OUTPUT: output}

    def _speckle_filter(self, parameters, context):
        """The FILTER menu's entry as the core's filter, with WINDOW and LOOKS (which no filter ignores)."""
        window = self.parameterAsInt(parameters, self.WINDOW, context)
        looks = self.parameterAsDouble(parameters, self.LOOKS, context)
        return (RefinedLee(window, looks), GammaMAP(window, looks),
                NoFilter())[self.parameterAsEnum(parameters, self.FILTER, context)]

    def _raster_path(self, parameters, name, context) -> str:
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(self.tr(f"{name} is not a readable raster layer."))
        return layer.source()
