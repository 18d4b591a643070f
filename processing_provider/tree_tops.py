"""forestcarbon:treetops — Tree tops by local maximum filter (lidR's lmf or ForestTools' vwf)."""

from __future__ import annotations

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsPoint,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterCrs,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterNumber,
)

from forest_carbon_plugin.core.lidar.normalize import NORMALIZE_MODES
from forest_carbon_plugin.core.lidar.treetops import LMF, VWF
from forest_carbon_plugin.core.lidar.trees import tree_crowns, tree_tops

from .base import FeedbackProgress, ForestCarbonAlgorithm, StyleLoader
from .compat import FieldType, NumberType, SourceType, WkbType
from .inputs import point_cloud_source

# the METHOD menu, in order: its name in the log and the core's algorithm
METHODS = (("lmf", LMF), ("vwf", VWF))


class TreeTopsAlgorithm(ForestCarbonAlgorithm):
    INPUT = "INPUT"
    WS_INTERCEPT = "WS_INTERCEPT"
    WS_SLOPE = "WS_SLOPE"
    MIN_HEIGHT = "MIN_HEIGHT"
    METHOD = "METHOD"
    NORMALIZE = "NORMALIZE"
    CRS = "CRS"
    OUTPUT = "OUTPUT"
    OUTPUT_CROWNS = "OUTPUT_CROWNS"

    _name = "treetops"
    _display = "Tree tops (local maximum filter)"
    _group = "LiDAR"
    _group_id = "lidar"
    requirements = ("laspy", "lazrs")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Finds tree tops in a LAS/LAZ file, a folder of tiles, or a canopy height model raster, by a "
            "local maximum filter whose window grows with height (Popescu & Wynne 2004). METHOD chooses "
            "whose rules:\n"
            "lmf (lidR), the default: as lidR's locate_trees(las, lmf(ws, hmin)) on returns or CHM cells: a "
            "return (or cell) is a tree top when it is at least MIN_HEIGHT (m) high and nothing in the "
            "circular window around it is higher; among equal heights in each other's window the first wins. "
            "The window DIAMETER (m) is WS_INTERCEPT + WS_SLOPE × height (lidR's example: 3 + 0.07 × height).\n"
            "vwf (ForestTools), on a CHM raster only: as ForestTools' vwf(CHM, winFun, minHeight): the window "
            "RADIUS (m) is WS_INTERCEPT + WS_SLOPE × height (ForestTools' example: 0.5 + 0.06 × height), "
            "rounded to the nearest whole number of cells among the radii the CHM's height range needs; the "
            "window is the cells whose centres lie within that radius, the full 3 × 3 block for a one-cell "
            "radius; cells below MIN_HEIGHT are masked; a cell is a top when no cell of its window is higher, "
            "so every cell of a flat top (equal maxima) is a top, as ForestTools counts them. Windows over "
            "99 cells across are refused (ForestTools' maxWinDiameter). The same WS values thus give a "
            "window twice as wide with vwf as with lmf.\n\n"
            "NORMALIZE, for point clouds: auto subtracts the ground TIN from tiles whose Z "
            "are elevations (the log says so), always subtracts it, never uses Z as it is; as in canopymetrics.\n\n"
            "Output: points (3D) with tree_id, x, y and height_m. OUTPUT_CROWNS, optional: crown polygons grown "
            "from each top on the canopy height model (the input raster, or a p2r CHM of the cloud at 0.5 m) "
            "by Dalponte & Coomes (2016) region growing with lidR's defaults (th_tree 2 m, th_seed 0.45, "
            "th_cr 0.55, at most 10 m across), with tree_id, height_m, area_m2 and crown_diameter_m. Catalog tiles are read with a buffer of "
            "half the largest window, so tops near tile edges are found once, as in a merged file.\n\n"
            "References: Popescu & Wynne (2004), Seeing the trees in the forest, PE&RS 70(5):589-604; "
            "Roussel et al. (2020) lidR, Remote Sensing of Environment 251:112061; Plowright & Roussel, "
            "ForestTools: Tools for Analyzing Remote Sensing Forest Data (R package, function vwf)."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_cloud_input("LAS/LAZ file, folder of tiles, or CHM raster",
                             extensions=("las", "laz", "tif", "tiff", "vrt", "img"))
        self.addParameter(QgsProcessingParameterNumber(
            self.WS_INTERCEPT, self.tr("Window size: intercept (m; lmf diameter, vwf radius)"), NumberType.Double,
            defaultValue=5.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.WS_SLOPE, self.tr("Window size: slope (m per m of height)"), NumberType.Double,
            defaultValue=0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_HEIGHT, self.tr("Minimum tree height (m)"), NumberType.Double,
            defaultValue=2.0))
        self.addParameter(QgsProcessingParameterEnum(
            self.METHOD, self.tr("Method"), options=["lmf (lidR)", "vwf (ForestTools)"], defaultValue=0))
        self.addParameter(QgsProcessingParameterEnum(
            self.NORMALIZE, self.tr("Height normalization (point clouds)"), options=["auto", "always", "never"],
            defaultValue=0))
        self.addParameter(QgsProcessingParameterCrs(self.CRS, self.tr("CRS (when the input has none)"),
                                                    optional=True))
        self.add_max_workers()
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, self.tr("Tree tops"),
                                                            SourceType.VectorPoint))
        self.addParameter(QgsProcessingParameterFeatureSink(
            self.OUTPUT_CROWNS, self.tr("Tree crowns"), SourceType.VectorPolygon, optional=True,
            createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber("TREE_COUNT", self.tr("Number of tree tops")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        source = point_cloud_source(self, parameters, context)
        crs = self.crs_wkt(parameters, context, self.CRS)
        method, algorithm = METHODS[self.parameterAsEnum(parameters, self.METHOD, context)]
        normalize = NORMALIZE_MODES[self.parameterAsEnum(parameters, self.NORMALIZE, context)]
        intercept = self.parameterAsDouble(parameters, self.WS_INTERCEPT, context)
        slope = self.parameterAsDouble(parameters, self.WS_SLOPE, context)
        min_height = self.parameterAsDouble(parameters, self.MIN_HEIGHT, context)
        if intercept <= 0 and slope <= 0:
            raise QgsProcessingException("The window must have a positive size: set WS_INTERCEPT or WS_SLOPE above 0.")
        tops, crs_text = self.call_core(
            tree_tops, source, algorithm(intercept, slope, min_height), normalize=normalize, crs=crs,
            max_workers=self.parameterAsInt(parameters, "MAX_WORKERS", context), progress=FeedbackProgress(feedback))
        fields = QgsFields()
        for name, kind in (("tree_id", FieldType.Int), ("x", FieldType.Double), ("y", FieldType.Double),
                           ("height_m", FieldType.Double)):
            fields.append(QgsField(name, kind))
        out_crs = QgsCoordinateReferenceSystem(crs_text) if crs_text.startswith("EPSG:") \
            else QgsCoordinateReferenceSystem.fromWkt(crs_text)
        sink, dest = self.parameterAsSink(parameters, self.OUTPUT, context, fields, WkbType.PointZ, out_crs)
        crown_fields = QgsFields()
        for name, kind in (("tree_id", FieldType.Int), ("height_m", FieldType.Double), ("area_m2", FieldType.Double),
                           ("crown_diameter_m", FieldType.Double)):
            crown_fields.append(QgsField(name, kind))
        crown_sink, crown_dest = self.parameterAsSink(parameters, self.OUTPUT_CROWNS, context, crown_fields,
                                                      WkbType.MultiPolygon, out_crs)
        # the crowns first (minutes on a large catalog, cancellable): a cancelled run then has no features to
        # flush into the tops' GeoPackage before it is removed
        crowns = self.call_core(tree_crowns, source, tops, normalize=normalize, crs=crs,
                                max_workers=self.parameterAsInt(parameters, "MAX_WORKERS", context),
                                progress=FeedbackProgress(feedback)) \
            if crown_sink is not None else None
        for i, (x, y, z) in enumerate(zip(tops.x, tops.y, tops.z), start=1):
            feature = QgsFeature(fields)
            feature.setGeometry(QgsGeometry(QgsPoint(float(x), float(y), float(z))))
            feature.setAttributes([i, float(x), float(y), float(z)])
            sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert)
        feedback.pushInfo(f"{len(tops):,} tree tops ({method}).")
        StyleLoader.attach(context, dest, "tree_tops")
        results = {self.OUTPUT: dest, "TREE_COUNT": len(tops)}
        if crown_sink is not None:
            for k, polygon, area, diameter, height in crowns:
                feature = QgsFeature(crown_fields)
                feature.setGeometry(QgsGeometry.fromWkt(polygon.wkt))
                feature.setAttributes([int(k), float(height), float(area), float(diameter)])
                crown_sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert)
            feedback.pushInfo(f"{len(crowns):,} crowns.")
            results[self.OUTPUT_CROWNS] = crown_dest
        return results
