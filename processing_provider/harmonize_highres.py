"""forestcarbon:harmonizehighres — relative radiometric normalization of high-resolution imagery."""

from __future__ import annotations

from qgis.core import (
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from forest_carbon_plugin.core.imagery.highres import IRMAD, Huber, RankInvariant, TheilSen, harmonize_highres

from .base import FeedbackProgress, ForestCarbonAlgorithm, RgbStyler
from .compat import FieldType, SourceType, WkbType


class HarmonizeHighresAlgorithm(ForestCarbonAlgorithm):
    INPUT = "INPUT"
    REFERENCE = "REFERENCE"
    PIF_METHOD = "PIF_METHOD"
    REGRESSION = "REGRESSION"
    BAND_NAMES = "BAND_NAMES"
    OUTPUT = "OUTPUT"
    OUTPUT_TABLE = "OUTPUT_TABLE"
    #: the PIF_METHOD and REGRESSION menus' entries, as the core's methods
    PIF_METHODS = (IRMAD(), RankInvariant())
    REGRESSIONS = (TheilSen(), Huber())

    _name = "harmonizehighres"
    _display = "Harmonize high-resolution image to a reference"
    _group = "Imagery"
    _group_id = "imagery"
    requirements = ("rasterio", "scipy")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Relative radiometric normalization of a high-resolution image (NAIP, Planet, drone mosaics) to a "
            "harmonized reference (e.g. the output of 'Harmonize scene').\n\n"
            "The image is averaged onto the reference grid; pseudo-invariant pixels are selected by the robust "
            "rank method (pixels whose rank is about the same in both images in every band) or by iteratively "
            "reweighted MAD (Nielsen 2007, IEEE TIP 16:463-478; Canty & Nielsen 2008, RSE 112:1025-1036; no-change "
            "probability > 0.95); per band a robust line reference = gain·image + offset is fitted (Huber's "
            "M-estimator, or Theil–Sen) and applied at the image's native resolution. Aggregated pixels with a "
            "saturated value under them are left out of the fit.\n\n"
            "Bands are matched by their descriptions (red, green, blue, nir, ...); name them in BAND_NAMES "
            "(comma-separated, in band order, e.g. 'red,green,blue,nir' for NAIP) when the file does not. Output: "
            "float32 reflectance at the image's resolution; OUTPUT_TABLE lists band, gain, offset, R² and the "
            "number of pixels used."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("High-resolution image")))
        self.addParameter(QgsProcessingParameterRasterLayer(self.REFERENCE, self.tr("Harmonized reference")))
        self.addParameter(QgsProcessingParameterEnum(self.PIF_METHOD, self.tr("Invariant pixels"),
                                                     options=["IR-MAD", "Robust rank"], defaultValue=1))
        self.addParameter(QgsProcessingParameterEnum(self.REGRESSION, self.tr("Regression"),
                                                     options=["Theil–Sen", "Huber"], defaultValue=1))
        self.addParameter(QgsProcessingParameterString(self.BAND_NAMES, self.tr("Band names of the image"),
                                                       optional=True))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Normalized image")))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT_TABLE, self.tr("Normalization table"),
                                                            SourceType.Vector, optional=True))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        image = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        reference = self.parameterAsRasterLayer(parameters, self.REFERENCE, context)
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        names = self.parameterAsString(parameters, self.BAND_NAMES, context).strip()
        result = self.call_core(
            harmonize_highres, image.source(), reference.source(), output,
            pif_method=self.PIF_METHODS[self.parameterAsEnum(parameters, self.PIF_METHOD, context)],
            regression=self.REGRESSIONS[self.parameterAsEnum(parameters, self.REGRESSION, context)],
            band_names=[n for n in names.split(",")] if names else None,
            progress=FeedbackProgress(feedback))
        results = {self.OUTPUT: output}
        fields = QgsFields()
        fields.append(QgsField("band", FieldType.String))
        for name in ("gain", "offset", "r2"):
            fields.append(QgsField(name, FieldType.Double))
        fields.append(QgsField("pixels_used", FieldType.Int))
        sink, dest = self.parameterAsSink(parameters, self.OUTPUT_TABLE, context, fields, WkbType.NoGeometry)
        if sink is not None:
            for fit in result.fits:
                feature = QgsFeature(fields)
                feature.setAttributes([fit.band, fit.gain, fit.offset, fit.r2, fit.pixels_used])
                sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert)
            results[self.OUTPUT_TABLE] = dest
        RgbStyler.attach(context, output)
        return results
