"""forestcarbon:spectralindices — NDVI, EVI, NBR, NDMI, SAVI, GNDVI, NDRE, MSAVI of a raster."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from forest_carbon_plugin.core.imagery.indices import DEFAULT_INDICES, INDICES, spectral_indices

from .base import FeedbackProgress, ForestCarbonAlgorithm
from .compat import NumberType


class SpectralIndicesAlgorithm(ForestCarbonAlgorithm):
    INPUT = "INPUT"
    INDICES = "INDICES"
    BAND_MAP = "BAND_MAP"
    SCALE = "SCALE"
    MAX_WORKERS = "MAX_WORKERS"
    OUTPUT = "OUTPUT"

    _name = "spectralindices"
    _display = "Spectral indices"
    _group = "Imagery"
    _group_id = "imagery"
    requirements = ("rasterio",)

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Computes spectral indices of a multiband raster, one output band per index.\n\n"
            f"INDICES: a comma-separated list of {', '.join(INDICES)}.\n"
            "NDVI (nir − red)/(nir + red) (Rouse et al. 1974); EVI 2.5 (nir − red)/(nir + 6 red − 7.5 blue + 1) "
            "(Huete et al. 2002, RSE 83:195-213); NBR (nir − swir2)/(nir + swir2) (Key & Benson 2006); NDMI "
            "(nir − swir1)/(nir + swir1) (Gao 1996's NDWI; Wilson & Sader 2002); SAVI 1.5 (nir − red)/(nir + red "
            "+ 0.5) (Huete 1988, RSE 25:295-309); GNDVI (nir − green)/(nir + green) (Gitelson et al. 1996); NDRE "
            "(nir − re1)/(nir + re1); MSAVI (2 nir + 1 − √((2 nir + 1)² − 8 (nir − red)))/2 (Qi et al. 1994, "
            "RSE 48:119-126).\n\n"
            "Bands are found by their descriptions (case-insensitive): coastal, blue, green, red, nir, swir1, swir2, "
            "nir_broad, re1, re2, re3 (the names harmonizescene writes), or Sentinel-2's B01…B12 and B8A. NIR is "
            "nir (narrow, Sentinel-2 B8A) when present, else nir_broad (B08). BAND_MAP, e.g. 'red=3,nir=8' "
            "(1-based band numbers), names the bands when the descriptions do not.\n\n"
            "SCALE: reflectance = value × SCALE; 0 (default) uses the raster's own scale and offset (1 and 0 when "
            "unset). The normalized differences do not depend on it, but EVI, SAVI and MSAVI need reflectance "
            "between 0 and 1: asking for them on scaled integers without a SCALE is an error.\n\n"
            "Output: float32 Cloud-Optimized GeoTIFF, one band per index described by its name, unitless; no-data "
            "(NaN) where an input band is no-data or the index is undefined (zero denominator). Read and written "
            "in blocks on all cores (MAX_WORKERS threads when set)."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Multiband raster")))
        self.addParameter(QgsProcessingParameterString(self.INDICES, self.tr("Indices (comma-separated)"),
                                                       defaultValue=DEFAULT_INDICES))
        self.addParameter(QgsProcessingParameterString(
            self.BAND_MAP, self.tr("Band map, e.g. red=3,nir=8 (when descriptions do not name the bands)"),
            optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.SCALE, self.tr("Reflectance scale factor (0 = the raster's own)"), NumberType.Double,
            defaultValue=0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.MAX_WORKERS, self.tr("Worker threads (0 = all cores)"), NumberType.Integer,
            defaultValue=0, minValue=0, optional=True))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Spectral indices")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            from qgis.core import QgsProcessingException

            raise QgsProcessingException(self.tr("INPUT is not a readable raster layer."))
        source = layer.source()
        indices = self.parameterAsString(parameters, self.INDICES, context)
        band_map = self.parameterAsString(parameters, self.BAND_MAP, context)
        scale = self.parameterAsDouble(parameters, self.SCALE, context)
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        result = self.call_core(spectral_indices, source, output, indices=indices, band_map=band_map or None,
                                scale=scale or None, progress=FeedbackProgress(feedback),
                                max_workers=self.parameterAsInt(parameters, self.MAX_WORKERS, context) or None)
        used = "; ".join(f"{idx}: " + ", ".join(f"{role}=band {b}" for role, b in roles.items())
                         for idx, roles in result["bands_used"].items())
        feedback.pushInfo(self.tr(f"Wrote {', '.join(result['indices'])} ({used})."))
        return {self.OUTPUT: output}
