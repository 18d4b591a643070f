"""forestcarbon:harmonizescene — HLS-grade harmonization of one Landsat or Sentinel-2 scene."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterCrs,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from forest_carbon_plugin.core.imagery.harmonize import TargetGrid, harmonize_scene
from forest_carbon_plugin.core.imagery.masks import DEFAULT_MASK, MASK_CLASSES

from .base import FeedbackProgress, ForestCarbonAlgorithm, RgbStyler
from .inputs import FileOrFolderParameter
from .compat import NumberType
from .execution import add_execution_parameters, execution


class HarmonizeSceneAlgorithm(ForestCarbonAlgorithm):
    INPUT = "INPUT"
    TARGET_CRS = "TARGET_CRS"
    TARGET_RESOLUTION = "TARGET_RESOLUTION"
    REFERENCE_GRID = "REFERENCE_GRID"
    MASK = "MASK"
    MASK_DILATION = "MASK_DILATION"
    BRDF = "BRDF"
    BANDPASS = "BANDPASS"
    MAX_WORKERS = "MAX_WORKERS"
    OUTPUT = "OUTPUT"

    _name = "harmonizescene"
    _display = "Harmonize scene (HLS v2.0)"
    _group = "Imagery"
    _group_id = "imagery"
    requirements = ("rasterio", "scipy")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Harmonizes one Landsat 4-9 or Sentinel-2 scene as NASA's Harmonized Landsat Sentinel-2 (HLS v2.0) "
            "does, on your grid.\n\n"
            "INPUT: a Landsat Collection-2 product folder or its MTL (.txt, .json or .xml; Level-2 surface "
            "reflectance, or Level-1 → top-of-atmosphere reflectance, older MTLs included), or a Sentinel-2 "
            "L2A/L1C .SAFE folder, its MTD_MSIL2A.xml/MTD_MSIL1C.xml, or a folder of band files with MTD_TL.xml.\n"
            "Steps: 1. digital numbers → reflectance with the product's scale and offset (Landsat C2 L2: "
            "×2.75e-5 − 0.2; Sentinel-2: (DN + BOA_ADD_OFFSET)/QUANTIFICATION_VALUE from the metadata; Level-1: "
            "TOA with the sun elevation, TM/ETM+ radiance with Chander et al. 2009's solar irradiances); "
            "2. MASK classes from QA_PIXEL bits, SCL classes or Fmask, dilated by MASK_DILATION output pixels; "
            "3. BRDF: c-factor to a nadir view at HLS v2.0's NBAR solar zenith (Roy et al. 2016, RSE 176:255-271), "
            "from per-pixel angles where the product has them; 4. BANDPASS: Sentinel-2A/2B/2C bands adjusted to "
            "Landsat-8 OLI with HLS v2.0's coefficients (Claverie et al. 2018, RSE 219:145-161), after BRDF; B08 "
            "and red-edge bands untouched; 5. resampling to the target grid (area average when coarsening, "
            "bilinear otherwise).\n\n"
            "The grid is REFERENCE_GRID's when given, else the scene in TARGET_CRS (default: the scene's) at "
            "TARGET_RESOLUTION (m, default 30) with edges on multiples of the resolution. Output: float32 "
            "Cloud-Optimized GeoTIFF of reflectance (0-1), bands named coastal, blue, green, red, nir, swir1, "
            "swir2 (+ re1, re2, re3, nir_broad for Sentinel-2), no-data where masked, and provenance tags. Fill is no-data "
            "in every band: DN 0 of Landsat Level-1 and Level-2 and of Sentinel-2 L1C/L2A bands (tested on the DN, "
            "before any offset), the band files' own no-data value, and QA fill. ESPA folders have no angles to "
            "harmonize with: composite them as they are (Composite scenes)."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(FileOrFolderParameter(self.INPUT, self.tr("Product folder or metadata file"),
                                                extensions=("txt", "json", "xml")))
        self.addParameter(QgsProcessingParameterCrs(self.TARGET_CRS, self.tr("Target CRS (default: the scene's)"),
                                                    optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.TARGET_RESOLUTION, self.tr("Target resolution (m)"), NumberType.Double,
            defaultValue=30.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.REFERENCE_GRID, self.tr("Reference grid (its CRS, extent and resolution win)"), optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.MASK, self.tr("Mask"), options=[c.replace("_", " ") for c in MASK_CLASSES], allowMultiple=True,
            defaultValue=[MASK_CLASSES.index(c) for c in DEFAULT_MASK], optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.MASK_DILATION, self.tr("Mask dilation (output pixels)"), NumberType.Integer,
            defaultValue=0, minValue=0))
        self.addParameter(QgsProcessingParameterBoolean(self.BRDF, self.tr("BRDF normalization (c-factor)"),
                                                        defaultValue=True))
        self.addParameter(QgsProcessingParameterBoolean(self.BANDPASS, self.tr("Bandpass adjustment to OLI"),
                                                        defaultValue=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.MAX_WORKERS, self.tr("Worker threads (0 = all cores)"), NumberType.Integer,
            defaultValue=0, minValue=0))
        add_execution_parameters(self)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Harmonized reflectance")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        source = self.parameterAsFile(parameters, self.INPUT, context)
        crs = self.parameterAsCrs(parameters, self.TARGET_CRS, context)
        reference = self.parameterAsRasterLayer(parameters, self.REFERENCE_GRID, context)
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        with execution(self, parameters, context, feedback):
            result = self._harmonize(parameters, context, feedback, source, crs, reference, output)
        feedback.pushInfo(self.tr(f"{result.product.sensor} {result.product.platform} {result.product.level}, "
                                  f"bands {', '.join(result.bands)}; {100 * result.valid_fraction:.1f}% of pixels valid"
                                  + (f"; NBAR solar zenith {result.nbar_sza_deg:.2f}°" if result.nbar_sza_deg else "")))
        RgbStyler.attach(context, output)
        return {self.OUTPUT: output}

    def _harmonize(self, parameters, context, feedback, source, crs, reference, output):
        resolution = self.parameterAsDouble(parameters, self.TARGET_RESOLUTION, context)
        if reference is None and not resolution > 0:
            raise QgsProcessingException(f"TARGET_RESOLUTION must be greater than 0 (got {resolution}).")
        dilation = self.parameterAsInt(parameters, self.MASK_DILATION, context)
        if dilation < 0:
            raise QgsProcessingException(f"MASK_DILATION must be 0 or more pixels (got {dilation}).")
        return self.call_core(
            harmonize_scene, source, output,
            TargetGrid(crs=crs.toWkt() if crs.isValid() else None, resolution_m=resolution,
                       reference=reference.source() if reference is not None else None),
            mask_classes=[MASK_CLASSES[i] for i in self.parameterAsEnums(parameters, self.MASK, context)],
            mask_dilation=dilation,
            brdf=self.parameterAsBoolean(parameters, self.BRDF, context),
            bandpass=self.parameterAsBoolean(parameters, self.BANDPASS, context),
            max_workers=self.parameterAsInt(parameters, self.MAX_WORKERS, context) or None,
            progress=FeedbackProgress(feedback))
