"""Vector layers read with OGR: QGIS's ``path|layername=…`` sources, numeric fields, features.

QGIS names a layer of a multi-layer file (a GeoPackage) by its source string ``path|layername=name``
(with further ``|option=value`` parts); the core accepts the same strings so that a layer chosen in
QGIS and a path typed in a script mean the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .dependencies import require
from .errors import ForestCarbonError

__all__ = ["VectorSource", "parse_source", "source_path", "open_vector", "numeric_field", "features",
           "geometry_kind", "is_raster", "to_shapely"]


@dataclass(frozen=True)
class VectorSource:
    """A vector file and the layer to read.

    Parameters
    ----------
    path : str
        The file.
    layer : str, optional
        For a multi-layer file, the layer's name (None: the first layer).
    """

    path: str
    layer: str | None = None


def parse_source(source) -> VectorSource:
    """Split a QGIS source string ``path|layername=name|…`` into its file and layer name.

    Parameters
    ----------
    source : str or os.PathLike
        A plain path or a QGIS source string.

    Returns
    -------
    VectorSource
        The path (everything before the first ``|``) and the ``layername`` option, if any.
    """
    path, *options = str(source).split("|")
    layer = None
    for option in options:
        if option.startswith("layername="):
            layer = option.split("=", 1)[1]
    return VectorSource(path, layer)


def source_path(source) -> Path:
    """The file behind a plain path or a QGIS source string.

    Parameters
    ----------
    source : str or os.PathLike
        ``a.gpkg`` or ``a.gpkg|layername=x``.

    Returns
    -------
    Path
        ``a.gpkg``.
    """
    return Path(parse_source(source).path)


def is_raster(path) -> bool:
    """Whether GDAL (through rasterio) opens a file as a raster.

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    bool
        True when rasterio opens it.
    """
    import rasterio

    try:
        with rasterio.open(str(path)):
            return True
    except rasterio.errors.RasterioIOError:
        return False


def open_vector(source, what: str):
    """Open a vector layer with OGR.

    Parameters
    ----------
    source : str or os.PathLike
        A path or ``path|layername=name``.
    what : str
        How the error messages name this input (``"PROJECTS"``, ``"reference"``).

    Returns
    -------
    (osgeo.gdal.Dataset, osgeo.ogr.Layer)
        Keep the dataset alive as long as the layer is used.
    """
    gdal, _ogr = require("osgeo.gdal", "osgeo.ogr")
    gdal.UseExceptions()
    vec = parse_source(source)
    try:
        ds = gdal.OpenEx(vec.path, gdal.OF_VECTOR)
    except RuntimeError:
        ds = None
    if ds is None or ds.GetLayerCount() == 0:
        raise ForestCarbonError(f"{what} '{source}' is neither a raster nor a vector layer that GDAL can open. "
                                "Give a GeoTIFF, or a GeoPackage/shapefile of points or polygons.")
    layer = ds.GetLayerByName(vec.layer) if vec.layer else ds.GetLayer(0)
    if layer is None:
        raise ForestCarbonError(f"{what}: '{vec.path}' has no layer '{vec.layer}'.")
    return ds, layer


def numeric_field(layer, name: str | None, what: str, argument: str) -> str:
    """Check that a field of an OGR layer is numeric.

    Parameters
    ----------
    layer : osgeo.ogr.Layer
        The layer.
    name : str or None
        The field's name.
    what : str
        How messages name the layer.
    argument : str
        The setting that chooses the field (a core argument, or an adapter's parameter label), so that
        the message tells the user what to change.

    Returns
    -------
    str
        ``name``.

    Raises
    ------
    ForestCarbonError
        No name, no such field, or a field that is not integer or real.
    """
    ogr = require("osgeo.ogr")
    defn = layer.GetLayerDefn()
    fields = {defn.GetFieldDefn(i).GetName(): defn.GetFieldDefn(i).GetType() for i in range(defn.GetFieldCount())}
    numeric = [f for f, t in fields.items() if t in (ogr.OFTInteger, ogr.OFTInteger64, ogr.OFTReal)]
    if not name:
        raise ForestCarbonError(f"{what} is a vector layer: set {argument} to its numeric field with the reference "
                                f"values (numeric fields: {', '.join(numeric) or 'none'}).")
    if name not in fields:
        raise ForestCarbonError(f"{what} has no field '{name}'. Fields: {', '.join(fields) or 'none'}.")
    if name not in numeric:
        raise ForestCarbonError(f"The field '{name}' of {what} is not numeric ({ogr.GetFieldTypeName(fields[name])}). "
                                f"Choose a numeric field: {', '.join(numeric) or 'the layer has none'}.")
    return name


def _transform_to(layer, crs_wkt):
    """An OGR transformation from the layer's CRS to ``crs_wkt`` (None if the same or unknown)."""
    osr = require("osgeo.osr")
    source = layer.GetSpatialRef()
    if source is None or not crs_wkt:
        return None
    target = osr.SpatialReference()
    target.ImportFromWkt(crs_wkt)
    for srs in (source, target):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    if source.IsSame(target):
        return None
    return osr.CoordinateTransformation(source, target)


def features(layer, field_name, crs_wkt):
    """The features of ``layer`` with a geometry and a non-null value.

    Parameters
    ----------
    layer : osgeo.ogr.Layer
    field_name : str or None
        The value field; None keeps every feature with a geometry (values None).
    crs_wkt : str or None
        The CRS the geometries are transformed to (None: as stored).

    Returns
    -------
    (list of (osgeo.ogr.Geometry, value), int)
        The features kept and how many were skipped (no geometry, empty, or null value).
    """
    transform = _transform_to(layer, crs_wkt)
    layer.ResetReading()
    out, skipped = [], 0
    for feature in layer:
        geom = feature.GetGeometryRef()
        value = feature.GetField(field_name) if field_name is not None else None
        if geom is None or geom.IsEmpty() or (field_name is not None and value is None):
            skipped += 1
            continue
        geom = geom.Clone()
        if transform is not None:
            geom.Transform(transform)
        out.append((geom, value))
    return out, skipped


def geometry_kind(geom) -> str:
    """What kind of sample an OGR geometry is.

    Parameters
    ----------
    geom : osgeo.ogr.Geometry
        The geometry.

    Returns
    -------
    str
        ``"point"`` or ``"polygon"`` (multi-parts and curved polygons included); else OGR's type name.
    """
    ogr = require("osgeo.ogr")
    flat = ogr.GT_Flatten(geom.GetGeometryType())
    if flat in (ogr.wkbPoint, ogr.wkbMultiPoint):
        return "point"
    if flat in (ogr.wkbPolygon, ogr.wkbMultiPolygon, ogr.wkbCurvePolygon, ogr.wkbMultiSurface):
        return "polygon"
    return ogr.GeometryTypeToName(flat)


def to_shapely(geom):
    """An OGR geometry as a shapely geometry (through WKB, exact).

    Parameters
    ----------
    geom : osgeo.ogr.Geometry
        Any OGR geometry.

    Returns
    -------
    shapely.geometry.base.BaseGeometry
        The same geometry, same coordinates.
    """
    require("shapely")
    from shapely import wkb

    return wkb.loads(bytes(geom.ExportToWkb()))
