"""Spellings of Qt and QGIS names that differ between the QGIS versions the plugin runs on.

QGIS 3.22 (Qt5) is the oldest version we support; 3.30 and 3.36 moved many enums into ``Qgis``
(``QgsWkbTypes.Type`` -> ``Qgis.WkbType``, ``QgsProcessing.SourceType`` ->
``Qgis.ProcessingSourceType``, ...) and keep the old names only as deprecated aliases; QGIS 4 (Qt6,
PyQt6) accepts only fully scoped enums, has no ``QVariant.Type`` and moved ``QAction`` to QtGui.
Code elsewhere takes these names from here, so it reads the same on every version and uses the
form the running QGIS documents as current (no deprecation warning from 3.44). Everything is
decided once, at import, by asking the running QGIS what it has (not by comparing version
numbers, except where a constructor overload cannot be probed). ``tests/test_qt6_ready.py`` keeps
the Qt5-only and moved spellings out of every other module.
"""

from __future__ import annotations

import qgis.core
from qgis.core import Qgis
from qgis.PyQt.QtCore import QMetaType, QVariant

try:  # Qt6 moved QAction to QtGui (QGIS 4's qgis.PyQt.QtWidgets keeps an alias, Qt6's own docs say QtGui)
    from qgis.PyQt.QtGui import QAction
except ImportError:  # every Qt5 build (3.22 and 3.44 alike): QtWidgets only
    from qgis.PyQt.QtWidgets import QAction

__all__ = ["QAction", "SourceType", "NumberType", "FileBehavior", "FieldDataType", "ParameterFlag",
           "WkbType", "GeometryType", "LayerType", "LayerFilter", "ShaderInterpolation", "PropertyType",
           "RangeLimit", "FieldType", "QGIS_VERSION_INT"]

QGIS_VERSION_INT = Qgis.QGIS_VERSION_INT


def _first(*candidates: str):
    """The first of the dotted names (``"Qgis.WkbType.Point"``, in ``qgis.core``) the running QGIS has."""
    for dotted in candidates:
        value = qgis.core
        for name in dotted.split("."):
            value = getattr(value, name, None)
            if value is None:
                break
        if value is not None:
            return value
    raise AttributeError(f"this QGIS ({Qgis.QGIS_VERSION}) has none of {', '.join(candidates)}")


class SourceType:
    """Layer types of Processing parameters: ``Qgis.ProcessingSourceType`` (3.36+)."""
    MapLayer = _first("Qgis.ProcessingSourceType.MapLayer", "QgsProcessing.SourceType.TypeMapLayer")
    Vector = _first("Qgis.ProcessingSourceType.Vector", "QgsProcessing.SourceType.TypeVector")
    VectorPoint = _first("Qgis.ProcessingSourceType.VectorPoint",
                         "QgsProcessing.SourceType.TypeVectorPoint")
    VectorPolygon = _first("Qgis.ProcessingSourceType.VectorPolygon",
                           "QgsProcessing.SourceType.TypeVectorPolygon")
    Raster = _first("Qgis.ProcessingSourceType.Raster", "QgsProcessing.SourceType.TypeRaster")
    File = _first("Qgis.ProcessingSourceType.File", "QgsProcessing.SourceType.TypeFile")


class NumberType:
    """``Qgis.ProcessingNumberParameterType`` (3.36+)."""
    Integer = _first("Qgis.ProcessingNumberParameterType.Integer",
                     "QgsProcessingParameterNumber.Type.Integer")
    Double = _first("Qgis.ProcessingNumberParameterType.Double",
                    "QgsProcessingParameterNumber.Type.Double")


class FileBehavior:
    """``Qgis.ProcessingFileParameterBehavior`` (3.36+)."""
    File = _first("Qgis.ProcessingFileParameterBehavior.File", "QgsProcessingParameterFile.Behavior.File")
    Folder = _first("Qgis.ProcessingFileParameterBehavior.Folder",
                    "QgsProcessingParameterFile.Behavior.Folder")


class FieldDataType:
    """``Qgis.ProcessingFieldParameterDataType`` (3.36+)."""
    Numeric = _first("Qgis.ProcessingFieldParameterDataType.Numeric",
                     "QgsProcessingParameterField.DataType.Numeric")


class ParameterFlag:
    """``Qgis.ProcessingParameterFlag`` (3.36+)."""
    Advanced = _first("Qgis.ProcessingParameterFlag.Advanced",
                      "QgsProcessingParameterDefinition.Flag.FlagAdvanced")
    Optional = _first("Qgis.ProcessingParameterFlag.Optional",
                      "QgsProcessingParameterDefinition.Flag.FlagOptional")


class WkbType:
    """``Qgis.WkbType`` (3.30+)."""
    NoGeometry = _first("Qgis.WkbType.NoGeometry", "QgsWkbTypes.Type.NoGeometry")
    Point = _first("Qgis.WkbType.Point", "QgsWkbTypes.Type.Point")
    PointZ = _first("Qgis.WkbType.PointZ", "QgsWkbTypes.Type.PointZ")
    Polygon = _first("Qgis.WkbType.Polygon", "QgsWkbTypes.Type.Polygon")
    MultiPolygon = _first("Qgis.WkbType.MultiPolygon", "QgsWkbTypes.Type.MultiPolygon")


class GeometryType:
    """``Qgis.GeometryType`` (3.30+)."""
    Point = _first("Qgis.GeometryType.Point", "QgsWkbTypes.GeometryType.PointGeometry")
    Polygon = _first("Qgis.GeometryType.Polygon", "QgsWkbTypes.GeometryType.PolygonGeometry")


class LayerType:
    """What ``QgsMapLayer.type()`` returns: ``Qgis.LayerType`` (3.30+)."""
    Vector = _first("Qgis.LayerType.Vector", "QgsMapLayerType.VectorLayer")
    Raster = _first("Qgis.LayerType.Raster", "QgsMapLayerType.RasterLayer")


class LayerFilter:
    """Filters of layer combo boxes: ``Qgis.LayerFilter`` (3.34+)."""
    RasterLayer = _first("Qgis.LayerFilter.RasterLayer", "QgsMapLayerProxyModel.Filter.RasterLayer")
    PolygonLayer = _first("Qgis.LayerFilter.PolygonLayer", "QgsMapLayerProxyModel.Filter.PolygonLayer")


class ShaderInterpolation:
    """``Qgis.ShaderInterpolationMethod`` (3.30+; ``Interpolated`` became ``Linear``)."""
    Linear = _first("Qgis.ShaderInterpolationMethod.Linear", "QgsColorRampShader.Type.Interpolated")


class PropertyType:
    """What ``QgsProperty.propertyType()`` returns: ``Qgis.PropertyType`` (3.36+)."""
    Static = _first("Qgis.PropertyType.Static", "QgsProperty.Type.StaticProperty")


class RangeLimit:
    """Min/max estimates of raster renderers: ``Qgis.RasterRangeLimit`` (3.42+)."""
    CumulativeCut = _first("Qgis.RasterRangeLimit.CumulativeCut",
                           "QgsRasterMinMaxOrigin.Limits.CumulativeCut")


# QgsField takes a QMetaType.Type from QGIS 3.38; before, only a QVariant.Type (which PyQt6 lacks).
# The overload cannot be probed without constructing a field, so this one is decided by version.
_METATYPE_FIELDS = QGIS_VERSION_INT >= 33800


class FieldType:
    """Field types for ``QgsField(name, type)``: ``QMetaType.Type`` where QgsField takes it (3.38+)."""
    Int = QMetaType.Type.Int if _METATYPE_FIELDS else QVariant.Type.Int
    LongLong = QMetaType.Type.LongLong if _METATYPE_FIELDS else QVariant.Type.LongLong
    Double = QMetaType.Type.Double if _METATYPE_FIELDS else QVariant.Type.Double
    String = QMetaType.Type.QString if _METATYPE_FIELDS else QVariant.Type.String
    DateTime = QMetaType.Type.QDateTime if _METATYPE_FIELDS else QVariant.Type.DateTime
