"""forestcarbon:importgedi — GEDI L2A/L2B footprints as points (rh metrics, cover, PAI)."""

from __future__ import annotations

import math

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)
from qgis.PyQt.QtCore import QDateTime, Qt

from forest_carbon_plugin.core.lidar.catalog import Extent
from forest_carbon_plugin.core.lidar.gedi import COLUMNS, read_gedi

from .base import FeedbackProgress, ForestCarbonAlgorithm
from .compat import FieldType, NumberType, SourceType, WkbType

_KINDS = {"shot_number": FieldType.LongLong, "beam": FieldType.String, "beam_type": FieldType.String,
          "time_utc": FieldType.DateTime, "quality_flag": FieldType.Int, "degrade_flag": FieldType.Int,
          "l2b_quality_flag": FieldType.Int, "source": FieldType.String}


class ImportGediAlgorithm(ForestCarbonAlgorithm):
    INPUT = "INPUT"
    QUALITY = "QUALITY"
    MIN_SENSITIVITY = "MIN_SENSITIVITY"
    BEAMS = "BEAMS"
    EXTENT = "EXTENT"
    OUTPUT = "OUTPUT"

    _name = "importgedi"
    _display = "Import GEDI footprints (L2A/L2B)"
    _group = "Models"
    _group_id = "models"
    requirements = ("h5py",)

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Reads GEDI L2A (GEDI02_A) and L2B (GEDI02_B) granules — HDF5 files, zips of them, or a folder — "
            "into footprint points (EPSG:4326, at lat/lon_lowestmode).\n\n"
            "Fields: shot_number, beam, beam_type (power/coverage), time_utc (GEDI epoch "
            "2018-01-01T00:00:00Z + delta_time), delta_time, lat, lon, elev_lowestmode, rh50, rh75, rh90, "
            "rh95, rh98, rh100 (m, L2A's rh columns), cover and pai (from L2B, joined by shot_number), "
            "sensitivity, quality_flag, degrade_flag, l2b_quality_flag (−1: no L2B for the shot) and source.\n\n"
            "With L2A files the points are the L2A shots; L2B files alone give points with cover and PAI and no "
            "relative heights. QUALITY keeps shots with quality_flag = 1 (L2B alone: l2b_quality_flag = 1), "
            "degrade_flag = 0 and sensitivity ≥ MIN_SENSITIVITY (0.9 is usual over land); joined cover and PAI "
            "with l2b_quality_flag = 0 become empty.\n"
            "BEAMS: beam names (e.g. BEAM0101,BEAM1011), 'power' or 'coverage'; empty for all. EXTENT keeps the "
            "footprints inside it."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.INPUT, self.tr("GEDI L2A/L2B files (.h5, .zip) or a folder"), SourceType.File))
        self.addParameter(QgsProcessingParameterBoolean(self.QUALITY, self.tr("Quality filter"), defaultValue=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_SENSITIVITY, self.tr("Minimum sensitivity (with the quality filter)"),
            NumberType.Double, defaultValue=0.9, minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterString(self.BEAMS, self.tr("Beams (names, 'power' or 'coverage')"),
                                                       optional=True))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, self.tr("Extent"), optional=True))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, self.tr("GEDI footprints"),
                                                            SourceType.VectorPoint))
        self.addOutput(QgsProcessingOutputNumber("SHOT_COUNT", self.tr("Number of footprints")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.check_requirements()
        paths = [p for p in self.parameterAsFileList(parameters, self.INPUT, context) if p]
        extent, extent_crs = self.extent_of(parameters, context, self.EXTENT)
        shots = self.call_core(
            read_gedi, paths, quality=self.parameterAsBool(parameters, self.QUALITY, context),
            min_sensitivity=self.parameterAsDouble(parameters, self.MIN_SENSITIVITY, context),
            beams=self.parameterAsString(parameters, self.BEAMS, context) or None,
            extent=Extent(extent, extent_crs) if extent else None, progress=FeedbackProgress(feedback))
        fields = QgsFields()
        for name in COLUMNS:
            fields.append(QgsField(name, _KINDS.get(name, FieldType.Double)))
        sink, dest = self.parameterAsSink(parameters, self.OUTPUT, context, fields, WkbType.Point,
                                          QgsCoordinateReferenceSystem("EPSG:4326"))
        cols = shots.columns
        n = len(shots)
        for i in range(n):
            if feedback.isCanceled():
                break
            feature = QgsFeature(fields)
            feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(float(cols["lon"][i]), float(cols["lat"][i]))))
            feature.setAttributes([_value(name, cols[name][i]) for name in COLUMNS])
            sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert)
        feedback.pushInfo(f"{n:,} GEDI footprints.")
        return {self.OUTPUT: dest, "SHOT_COUNT": n}


def _value(name, value):
    if name == "time_utc":
        ms = int(value.astype("datetime64[ms]").astype("int64"))
        return QDateTime.fromMSecsSinceEpoch(ms, Qt.TimeSpec.UTC)
    kind = _KINDS.get(name, FieldType.Double)
    if kind == FieldType.String:
        return str(value)
    if kind in (FieldType.Int, FieldType.LongLong):
        return int(value)
    value = float(value)
    return None if math.isnan(value) else value
