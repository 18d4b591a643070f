"""forestcarbon:compositescenes — median, medoid or max-NDVI composite of a time series of scenes."""

from __future__ import annotations

import os

from qgis.core import (
    QgsMapLayer,
    QgsProcessingException,
    QgsProcessingParameterEnum,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingUtils,
)

from forest_carbon_plugin.core.imagery.composite import MaxNDVI, Median, Medoid, composite_scenes

from .base import FeedbackProgress, ForestCarbonAlgorithm, RgbStyler
from .compat import NumberType, ParameterFlag, SourceType


class RastersOrFoldersParameter(QgsProcessingParameterMultipleLayers):
    """Several raster layers, where a folder path (an ESPA scene) is accepted as well.

    QGIS 3.22's raster multiple-layer parameter rejects values that are not layers; this one
    also takes existing folders given as paths (processing.run, qgis_process, batch and model
    inputs). The dialog's layer list offers raster layers and files as usual.
    """

    def __init__(self, name, description, optional=False):
        super().__init__(name, description, SourceType.Raster, optional=optional)

    def clone(self):
        return RastersOrFoldersParameter(self.name(), self.description(),
                                         bool(self.flags() & ParameterFlag.Optional))

    def checkValueIsAcceptable(self, value, context=None):  # noqa: N802
        values = value if isinstance(value, (list, tuple)) else [value]
        if values and all(isinstance(v, str) and os.path.isdir(v) for v in values):
            return True
        if any(isinstance(v, str) and os.path.isdir(v) for v in values):
            others = [v for v in values if not (isinstance(v, str) and os.path.isdir(v))]
            return all(self._acceptable_one(v, context) for v in others)
        return super().checkValueIsAcceptable(value, context) if context is not None \
            else super().checkValueIsAcceptable(value)

    def _acceptable_one(self, v, context):
        return super().checkValueIsAcceptable([v], context) if context is not None \
            else super().checkValueIsAcceptable([v])


class CompositeScenesAlgorithm(ForestCarbonAlgorithm):
    INPUTS = "INPUTS"
    METHOD = "METHOD"
    MAX_WORKERS = "MAX_WORKERS"
    OUTPUT = "OUTPUT"

    #: the METHOD menu's entries, as the core's methods
    METHODS = (Median(), Medoid(), MaxNDVI())

    _name = "compositescenes"
    _display = "Composite scenes (median, medoid, max-NDVI)"
    _group = "Imagery"
    _group_id = "imagery"
    requirements = ("rasterio",)

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Per-pixel temporal composite of harmonized scenes (e.g. outputs of Harmonize scene), with a last band "
            "valid_count counting the valid observations of each pixel.\n\n"
            "INPUTS: rasters whose bands are described with the plugin's names (red, nir, swir1, …), or products "
            "as delivered, in every layout Harmonize scene reads, given as paths (processing.run, qgis_process): "
            "Landsat Level-1 and Collection-2 Level-2 folders with their MTL (the MTL's scaling: SR = DN·2.75e-5 − "
            "0.2; QA_PIXEL), Sentinel-2 L1C/L2A folders ((DN + offset)/QUANTIFICATION_VALUE; SCL), and USGS ESPA "
            "scene folders (<scene>_b3.tif …, <scene>_fmask.tif; TM/ETM+ or OLI band numbering, reflectance × "
            "10000). A folder in none of these layouts is refused. Bands are matched across scenes by their "
            "descriptions or common names; the output holds the bands common to all scenes, in the first scene's "
            "order, as reflectance. Scenes on another grid are read onto the first scene's grid with nearest "
            "neighbour.\n\n"
            "An observation is invalid where any of its bands is no-data, fill (DN 0 in Landsat and Sentinel-2 "
            "products) or NaN, or where its QA says cloud, cloud shadow, cirrus or snow: CFmask classes 2 cloud "
            "shadow, 3 snow, 4 cloud or 255 fill of a band described fmask (0 clear land and 1 water are kept), "
            "QA_PIXEL's fill, cloud, dilated cloud, cirrus, shadow and snow bits, SCL classes 0, 3, 8, 9, 10, 11. "
            "QA bands are not composited.\n\n"
            "METHOD median: per band median of the valid observations. Medoid (Flood 2013, Remote Sensing "
            "5:6481-6500): the valid observation with the smallest sum of Euclidean distances to all the others, "
            "so that all bands come from one date. Max-NDVI: the valid observation with the highest NDVI "
            "(needs red and nir or nir_broad). Ties go to the earliest input.\n\n"
            "Output: float32 Cloud-Optimized GeoTIFF with provenance; composite bands are no-data (NaN) where "
            "valid_count is 0, and valid_count holds 0 there. Read and written in blocks sized to the number of "
            "scenes, on all cores."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(RastersOrFoldersParameter(self.INPUTS, self.tr("Scenes (rasters or product folders)")))
        self.addParameter(QgsProcessingParameterEnum(self.METHOD, self.tr("Method"),
                                                     options=["median", "medoid", "max-NDVI"], defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.MAX_WORKERS, self.tr("Worker threads (0 = all cores)"), NumberType.Integer,
            defaultValue=0, minValue=0, optional=True))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Composite")))

    def _sources(self, parameters, context) -> list[str]:
        value = parameters.get(self.INPUTS)
        values = value if isinstance(value, (list, tuple)) else ([] if value in (None, "") else [value])
        sources = []
        for item in values:
            if isinstance(item, QgsMapLayer):
                sources.append(item.source())
            elif isinstance(item, str) and os.path.isdir(item):
                sources.append(item)
            else:
                text = str(item)
                layer = QgsProcessingUtils.mapLayerFromString(text, context)
                sources.append(layer.source() if layer is not None else text)
        if not sources:
            raise QgsProcessingException(self.tr("INPUTS is empty: give at least one raster or scene folder."))
        return sources

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        sources = self._sources(parameters, context)
        method = self.METHODS[self.parameterAsEnum(parameters, self.METHOD, context)]
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        result = self.call_core(composite_scenes, sources, output, method=method,
                                progress=FeedbackProgress(feedback),
                                max_workers=self.parameterAsInt(parameters, self.MAX_WORKERS, context) or None)
        feedback.pushInfo(self.tr(f"{method.name} composite of {result['scenes']} scenes; bands "
                                  f"{', '.join(result['bands'])} + valid_count."))
        RgbStyler.attach(context, output)
        return {self.OUTPUT: output}
