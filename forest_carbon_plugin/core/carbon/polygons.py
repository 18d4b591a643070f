"""Project polygons: reading, repair of invalid rings, and areas on the ellipsoid.

Areas are ellipsoidal (pyproj ``Geod``, Karney's algorithm) whatever the CRS, so that a project's area does
not depend on the projection's scale distortion.

References
----------
Karney C.F.F. (2013) Algorithms for geodesics. Journal of Geodesy 87:43-55.
"""

from __future__ import annotations

import numpy as np

from ..dependencies import require
from ..vector import open_vector

__all__ = ["NOT_POLYGONAL", "read_projects", "polygonal", "repair", "equal_area_ha", "cell_area_ha"]

#: what :func:`polygonal` returns for a geometry that holds no polygon (a point, a line)
NOT_POLYGONAL = "not polygonal"


def _shapely():
    return require("shapely.geometry")


def read_projects(projects, projects_crs=None):
    """The project polygons and their CRS.

    Parameters
    ----------
    projects : str, os.PathLike or sequence
        A vector file (OGR; QGIS's ``path|layername=name`` accepted) or a sequence of shapely geometries
        (or GeoJSON-like mappings).
    projects_crs : str or None
        The CRS of a sequence of geometries (any pyproj input); ignored for a file, whose own CRS is used.

    Returns
    -------
    (list, str or None)
        One shapely geometry (None where a feature has none) per feature, in order, and the CRS (WKT or as given).
    """
    sg = _shapely()
    if not (isinstance(projects, (str, bytes)) or hasattr(projects, "__fspath__")):
        geoms = [g if g is None or isinstance(g, sg.base.BaseGeometry) else sg.shape(g) for g in projects]
        return geoms, projects_crs
    from shapely import wkb

    _ds, layer = open_vector(projects, "projects")  # the dataset must outlive the layer
    srs = layer.GetSpatialRef()
    geoms = []
    for feature in layer:
        g = feature.GetGeometryRef()
        geoms.append(None if g is None or g.IsEmpty() else wkb.loads(bytes(g.ExportToIsoWkb())))
    return geoms, srs.ExportToWkt() if srs is not None else None


def polygonal(geom):
    """The polygonal part of a geometry.

    Parameters
    ----------
    geom : shapely geometry or None

    Returns
    -------
    shapely Polygon, MultiPolygon, None or str
        The geometry itself when polygonal, the union of the polygons of a collection, None when empty,
        :data:`NOT_POLYGONAL` when it holds no polygon (a point, a line).
    """
    sg = _shapely()
    if geom is None or geom.is_empty:
        return None
    if isinstance(geom, (sg.Polygon, sg.MultiPolygon)):
        return geom
    if isinstance(geom, sg.GeometryCollection):
        parts = [g for g in geom.geoms if isinstance(g, (sg.Polygon, sg.MultiPolygon))]
        if parts:
            from shapely.ops import unary_union

            return unary_union(parts)
    return NOT_POLYGONAL


def repair(geom):
    """An invalid polygon made valid by ``shapely.make_valid`` (GEOS MakeValid, "linework").

    A self-intersecting ring becomes the polygons it encloses, every lobe kept, unlike ``buffer(0)``, which
    keeps only the lobes of one orientation. Lines and points that MakeValid may return are dropped.

    Parameters
    ----------
    geom : shapely Polygon or MultiPolygon
        An invalid polygon.

    Returns
    -------
    (geometry or None, dict)
        The valid polygonal geometry (None when nothing with an area is left) and ``{"reason": ...}``.
    """
    from shapely.validation import explain_validity, make_valid

    repaired = polygonal(make_valid(geom))
    details = {"reason": explain_validity(geom)}
    if repaired is None or repaired == NOT_POLYGONAL or repaired.area <= 0:
        return None, details
    return repaired, details


def _geod(crs):
    from pyproj import CRS, Geod

    ellipsoid = CRS.from_user_input(crs).ellipsoid
    if ellipsoid is None:
        return Geod(ellps="WGS84")
    return Geod(a=ellipsoid.semi_major_metre, b=ellipsoid.semi_minor_metre)


def equal_area_ha(geometry, crs) -> float:
    """The ellipsoidal area of a polygon.

    Parameters
    ----------
    geometry : shapely Polygon or MultiPolygon
        In ``crs``; x = longitude, y = latitude for a geographic CRS (as GDAL and QGIS give them).
    crs : str or pyproj.CRS

    Returns
    -------
    float
        Area in ha: the vertices are taken to longitude/latitude on the CRS's own datum and the area is computed
        on its ellipsoid (pyproj ``Geod.geometry_area_perimeter``, Karney 2013).
    """
    from pyproj import CRS, Transformer
    from shapely.geometry import MultiPolygon, Polygon
    from shapely.geometry.polygon import orient
    from shapely.ops import transform

    crs = CRS.from_user_input(crs)
    lonlat = geometry
    if not crs.is_geographic:
        lonlat = transform(Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True).transform, geometry)
    # Geod signs each ring by its orientation: exteriors counter-clockwise, holes clockwise
    if isinstance(lonlat, Polygon):
        lonlat = orient(lonlat, 1.0)
    elif isinstance(lonlat, MultiPolygon):
        lonlat = MultiPolygon([orient(p, 1.0) for p in lonlat.geoms])
    area, _ = _geod(crs).geometry_area_perimeter(lonlat)
    return abs(area) / 10_000.0


def cell_area_ha(grid, r0: int, nrows: int) -> np.ndarray:
    """The area of one cell in each row of a window.

    Parameters
    ----------
    grid : Grid
        The raster's grid (``crs``, north-up ``transform``).
    r0, nrows : int
        First row of the window and its number of rows.

    Returns
    -------
    numpy.ndarray
        ``(nrows, 1)`` areas in ha: the planar cell area for a projected CRS, the ellipsoidal area of the
        cell's lon/lat quadrilateral in each row for a geographic one.
    """
    from pyproj import CRS

    crs = CRS.from_user_input(grid.crs)
    t = grid.transform
    if not crs.is_geographic:
        return np.full((nrows, 1), abs(t.a * t.e) / 10_000.0)
    geod = _geod(crs)
    out = np.empty((nrows, 1))
    for i in range(nrows):
        lat_top = t.f + t.e * (r0 + i)
        lat_bot = lat_top + t.e
        area, _ = geod.polygon_area_perimeter([t.c, t.c + t.a, t.c + t.a, t.c], [lat_top, lat_top, lat_bot, lat_bot])
        out[i, 0] = abs(area) / 10_000.0
    return out
