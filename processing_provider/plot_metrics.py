"""forestcarbon:plotmetrics — canopy metrics inside field plots (lidR's plot_metrics)."""

from __future__ import annotations

import numpy as np
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCsException,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessingException,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterNumber,
)

from forest_carbon_plugin.core.lidar.normalize import NORMALIZE_MODES
from forest_carbon_plugin.core.lidar.catalog import open_catalog
from forest_carbon_plugin.core.lidar.plot_metrics import AREA_FIELD, Plot, plot_metrics

from .base import FeedbackProgress, ForestCarbonAlgorithm
from .compat import FieldType, GeometryType, NumberType, SourceType
from .inputs import point_cloud_source


class PlotMetricsAlgorithm(ForestCarbonAlgorithm):
    INPUT = "INPUT"
    PLOTS = "PLOTS"
    RADIUS = "RADIUS"
    HEIGHT_BREAK = "HEIGHT_BREAK"
    NORMALIZE = "NORMALIZE"
    CRS = "CRS"
    OUTPUT = "OUTPUT"

    _name = "plotmetrics"
    _display = "Plot metrics (field plots)"
    _group = "LiDAR"
    _group_id = "lidar"
    requirements = ("laspy", "lazrs")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Computes, for each field plot, the canopy metrics of the LiDAR points inside it, as lidR's "
            "plot_metrics(las, ~stdmetrics_z(Z), plots) — the plot-level half of the area-based approach.\n\n"
            "PLOTS: plot centres (points; a return is inside when its distance to the centre is ≤ RADIUS m, as "
            "lidR's clip_circle) or plot outlines (polygons; returns on the outline count as inside). Plots in "
            "another CRS are reprojected to the cloud's. INPUT: one LAS/LAZ file or a folder of tiles; a plot "
            "that straddles tiles gathers its points from all of them.\n\n"
            "Output: the plots with their own fields plus one field per metric, named exactly as the bands of "
            "'Canopy metrics (grid)': lidR's stdmetrics_z (zmax, zmean, zsd, zskew, zkurt, zentropy, "
            "pzabovezmean, pzabove2, zq5…zq95, zpcum1…zpcum9), cover (% of first returns above HEIGHT_BREAK m, "
            "FUSION), n, point_density and pulse_density (per m² of plot). Plots without points get n = 0 and "
            "empty metrics, with a warning; plot_area_m2 is the plot's area (π·RADIUS² or the outline's), which "
            "trainmodel keeps in the model card so that predictraster can warn when the map's cells have "
            "another area than the plots. NORMALIZE as in 'Canopy metrics (grid)'."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_cloud_input()
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.PLOTS, self.tr("Plots (centres or outlines)"),
            [SourceType.VectorPoint, SourceType.VectorPolygon]))
        self.addParameter(QgsProcessingParameterNumber(
            self.RADIUS, self.tr("Plot radius for point plots (m)"), NumberType.Double,
            defaultValue=11.28, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.HEIGHT_BREAK, self.tr("Height break for cover (m)"), NumberType.Double,
            defaultValue=2.0))
        self.addParameter(QgsProcessingParameterEnum(self.NORMALIZE, self.tr("Normalize heights"),
                                                     options=["auto", "always", "never"], defaultValue=0))
        self.add_crs_and_extent(extent=False)
        self.add_max_workers()
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, self.tr("Plot metrics")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        source = point_cloud_source(self, parameters, context)
        plots = self.parameterAsSource(parameters, self.PLOTS, context)
        if plots is None:
            raise QgsProcessingException(self.tr("PLOTS is not a readable vector layer."))
        radius = self.parameterAsDouble(parameters, self.RADIUS, context)
        crs_wkt = self.crs_wkt(parameters, context)
        catalog = self.call_core(open_catalog, source, crs_wkt)
        cloud_crs = QgsCoordinateReferenceSystem(catalog.crs)
        transform = None
        if plots.sourceCrs().isValid() and plots.sourceCrs() != cloud_crs:
            transform = QgsCoordinateTransform(plots.sourceCrs(), cloud_crs, context.transformContext())
            feedback.pushInfo(self.tr(f"Plots reprojected from {plots.sourceCrs().authid()} to {cloud_crs.authid()}."))
        features = list(plots.getFeatures())
        shapes = []
        for feature in features:
            geometry = feature.geometry()
            if geometry.isNull() or geometry.isEmpty():
                shapes.append(None)
                continue
            if transform is not None:
                try:
                    geometry.transform(transform)
                except QgsCsException as exc:
                    raise QgsProcessingException(self.tr(
                        f"Plot {feature.id()} cannot be reprojected from {plots.sourceCrs().authid() or 'its CRS'} "
                        f"to the cloud's {cloud_crs.authid() or 'CRS'} ({str(exc).splitlines()[-1]}): its coordinates "
                        "do not fit the plot layer's CRS. Set the layer's correct CRS (Layer Properties ▸ Source) "
                        "and run again.")) from exc
            if geometry.type() == GeometryType.Point:
                if not radius > 0:
                    raise QgsProcessingException(f"The plot radius must be greater than 0 m (got {radius}): set "
                                                 "RADIUS for point plots.")
                point = geometry.asPoint() if not geometry.isMultipart() else geometry.asMultiPoint()[0]
                shapes.append(Plot(centre=(point.x(), point.y()), radius_m=radius))
            elif geometry.type() != GeometryType.Polygon:
                raise QgsProcessingException(self.tr(
                    f"Plot {feature.id()} is neither a point nor a polygon ({geometry.asWkt(1)[:60]}…): PLOTS "
                    "must hold plot centres (points) or plot outlines (polygons)."))
            else:
                parts = geometry.asMultiPolygon() if geometry.isMultipart() else [geometry.asPolygon()]
                shapes.append(Plot(polygons=[[np.array([(p.x(), p.y()) for p in ring]) for ring in part]
                                             for part in parts]))
        result = self.call_core(
            plot_metrics, source, shapes,
            height_break=self.parameterAsDouble(parameters, self.HEIGHT_BREAK, context),
            normalize=NORMALIZE_MODES[self.parameterAsEnum(parameters, self.NORMALIZE, context)], crs=crs_wkt,
            progress=FeedbackProgress(feedback), max_workers=self.parameterAsInt(parameters, "MAX_WORKERS", context))
        fields = QgsFields(plots.fields())
        taken = {f.name().lower() for f in fields}
        for name in result.names:
            if name.lower() in taken:
                raise QgsProcessingException(self.tr(f"The plot layer already has a field '{name}': rename it, "
                                                     "the metric fields use that name."))
            fields.append(QgsField(name, FieldType.Double))
        # the plot's area travels with the metrics: trainmodel writes it in the model card, and predictraster
        # warns when the cells it maps differ from the support the intervals were calibrated on
        add_area = AREA_FIELD not in taken
        if add_area:
            fields.append(QgsField(AREA_FIELD, FieldType.Double))
        sink, dest = self.parameterAsSink(parameters, self.OUTPUT, context, fields, plots.wkbType(), plots.sourceCrs())
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        for feature, shape, values in zip(features, shapes, result.values):
            out = QgsFeature(fields)
            out.setGeometry(feature.geometry())
            extra = [None if not np.isfinite(v) else float(v) for v in values]
            if add_area:
                extra.append(float(shape.area_m2) if shape is not None else None)
            out.setAttributes(list(feature.attributes()) + extra)
            sink.addFeature(out, QgsFeatureSink.Flag.FastInsert)
        return {self.OUTPUT: dest}
