"""forestcarbon:lidarinfo — Describe LAS/LAZ files."""

from __future__ import annotations

import json
from pathlib import Path

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFileDestination,
    QgsRectangle,
)

from forest_carbon_plugin.core.lidar import info as lasinfo
from forest_carbon_plugin.core.outputs import provenance, write_json, write_text

from .base import FeedbackProgress, ForestCarbonAlgorithm
from .compat import FieldType, SourceType, WkbType
from .inputs import point_cloud_source


class LidarInfoAlgorithm(ForestCarbonAlgorithm):
    INPUT = "INPUT"
    OUTPUT_HTML = "OUTPUT_HTML"
    OUTPUT_JSON = "OUTPUT_JSON"
    OUTPUT_FOOTPRINTS = "OUTPUT_FOOTPRINTS"

    _name = "lidarinfo"
    _display = "Describe LAS/LAZ files"
    _group = "LiDAR"
    _group_id = "lidar"
    requirements = ("laspy", "lazrs")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Describes one LAS/LAZ file (COPC included), every LAS/LAZ file of a folder (a tile catalog) "
            "or of a QGIS virtual point cloud (.vpc), or a point-cloud layer's file, before "
            "anything is computed from it: LAS version, point data format, point count, bounds, CRS "
            "(from the WKT or GeoTIFF-key VLRs, with its EPSG code), counts per ASPRS class and per "
            "return number, point and pulse (first-return) density per m² of the convex hull of the "
            "points, and whether heights look normalized (heights above ground rather than "
            "elevations).\n\n"
            "Outputs: an HTML report, the same as JSON (with provenance), and a polygon layer of the "
            "tile footprints (header bounding boxes) carrying those values as fields; each is written only "
            "when given (a script may ask for one of them, or none for the counts alone).\n\n"
            "Points are read in chunks of one million, so any file size fits in memory. A truncated "
            "or corrupt file stops the run with its name. For a folder, type or paste its path, or pick it "
            "with the … button where the dialog offers one.\n\n"
            "Reference: ASPRS LAS Specification 1.4 R15 (2019)."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_cloud_input()
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_HTML, self.tr("Report (HTML)"), fileFilter="HTML files (*.html)", optional=True,
            createByDefault=True))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_JSON, self.tr("Report (JSON)"), fileFilter="JSON files (*.json)", optional=True,
            createByDefault=True))
        self.addParameter(QgsProcessingParameterFeatureSink(
            self.OUTPUT_FOOTPRINTS, self.tr("Tile footprints"), SourceType.VectorPolygon, optional=True,
            createByDefault=True))
        self.addOutput(QgsProcessingOutputNumber("POINT_COUNT", self.tr("Total point count")))
        self.addOutput(QgsProcessingOutputNumber("FILE_COUNT", self.tr("Number of files")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        source = point_cloud_source(self, parameters, context)
        if not source:
            raise QgsProcessingException(self.tr("Choose a LAS/LAZ file or a folder of tiles as INPUT."))
        html_path = self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context)
        json_path = self.parameterAsFileOutput(parameters, self.OUTPUT_JSON, context)

        infos = self.call_core(lasinfo.describe_catalog, source, FeedbackProgress(feedback))
        record = provenance("forestcarbon:lidarinfo", {"INPUT": source}, inputs=[i.path for i in infos])

        results = {"POINT_COUNT": sum(i.point_count for i in infos), "FILE_COUNT": len(infos)}
        if json_path:
            write_json(json_path, lasinfo.report_document(infos, record))
            results[self.OUTPUT_JSON] = json_path
        if html_path:
            write_text(html_path, lasinfo.report_html(infos, record))
            results[self.OUTPUT_HTML] = html_path

        # The sink is created only now, after every file was read: a bad tile leaves no layer.
        fields = _footprint_fields()
        crs = _qgis_crs(infos[0])
        sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT_FOOTPRINTS, context, fields,
                                             WkbType.Polygon, crs)
        if sink is not None:
            for info in infos:
                feature = QgsFeature(fields)
                feature.setGeometry(QgsGeometry.fromRect(
                    QgsRectangle(info.min_x, info.min_y, info.max_x, info.max_y)))
                feature.setAttributes([
                    Path(info.path).name, info.version, info.point_format, info.point_count,
                    info.min_x, info.min_y, info.min_z, info.max_x, info.max_y, info.max_z,
                    info.crs_epsg, info.crs_name or "",
                    json.dumps(info.to_dict()["classification_counts"]),
                    json.dumps(info.to_dict()["return_number_counts"]),
                    info.point_density_per_m2, info.pulse_density_per_m2,
                    {True: "yes", False: "no", None: "unknown"}[info.normalized],
                ])
                sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert)
            results[self.OUTPUT_FOOTPRINTS] = dest_id
        feedback.pushInfo(f"{len(infos)} file(s), {results['POINT_COUNT']:,} points.")
        return results


def _footprint_fields() -> QgsFields:
    fields = QgsFields()
    for name, kind in (("file", FieldType.String), ("las_ver", FieldType.String),
                       ("pt_format", FieldType.Int), ("n_points", FieldType.LongLong),
                       ("min_x", FieldType.Double), ("min_y", FieldType.Double), ("min_z", FieldType.Double),
                       ("max_x", FieldType.Double), ("max_y", FieldType.Double), ("max_z", FieldType.Double),
                       ("epsg", FieldType.Int), ("crs_name", FieldType.String),
                       ("classes", FieldType.String), ("returns", FieldType.String),
                       ("density", FieldType.Double), ("pulse_dens", FieldType.Double),
                       ("normalized", FieldType.String)):
        fields.append(QgsField(name, kind))
    return fields


def _qgis_crs(info) -> QgsCoordinateReferenceSystem:
    if info.crs_epsg:
        return QgsCoordinateReferenceSystem(f"EPSG:{info.crs_epsg}")
    if info.crs_wkt:
        crs = QgsCoordinateReferenceSystem.fromWkt(info.crs_wkt)
        if crs.isValid():
            return crs
    return QgsCoordinateReferenceSystem()
