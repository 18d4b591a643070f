"""The exact share of each pixel covered by a polygon.

Pixels away from the polygon's boundary are 0 or 1 by rasterization (GDAL's rule: a pixel whose centre
is inside); pixels whose square the boundary crosses (the boundary's ``all_touched`` rasterization,
grown by one pixel so that a line along a pixel edge still marks both sides) get their exact
intersection area, from shapely. Shares sum to the polygon's area over the pixel area to rounding, which
is what area-weighted totals (carbon stocks, validation against polygons, training on polygons) need.

shapely is imported when a coverage is computed, through :func:`..dependencies.require`, so that a
missing package is a message naming what to install.
"""

from __future__ import annotations

import math

import numpy as np

from ..dependencies import require
from ..errors import ForestCarbonError

__all__ = ["pixel_coverage", "polygon_coverage"]


def pixel_coverage(polygon, transform, shape) -> np.ndarray:
    """The share (0–1) of each pixel of a grid inside a polygon.

    Parameters
    ----------
    polygon : shapely Polygon or MultiPolygon
        In the grid's CRS.
    transform : affine.Affine
        The grid's (north-up) affine transform.
    shape : (int, int)
        (rows, cols) of the grid.

    Returns
    -------
    numpy.ndarray
        float64 shares, shaped ``shape``.
    """
    require("shapely")
    from rasterio.features import rasterize
    from scipy.ndimage import binary_dilation
    from shapely.geometry import box, mapping
    from shapely.prepared import prep

    inside = rasterize([(mapping(polygon), 1)], out_shape=shape, transform=transform, fill=0, all_touched=False,
                       dtype="uint8").astype(bool)
    edge = rasterize([(mapping(polygon.boundary), 1)], out_shape=shape, transform=transform, fill=0,
                     all_touched=True, dtype="uint8").astype(bool)
    edge = binary_dilation(edge)
    frac = (inside & ~edge).astype(np.float64)
    pixel_area = abs(transform.a * transform.e)
    prepared = prep(polygon)
    for r, c in zip(*np.nonzero(edge)):
        x0, y0 = transform * (c, r)
        x1, y1 = transform * (c + 1, r + 1)
        cell = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        if not prepared.intersects(cell):
            frac[r, c] = 0.0
        elif prepared.contains(cell):
            frac[r, c] = 1.0
        else:
            frac[r, c] = cell.intersection(polygon).area / pixel_area
    return np.clip(frac, 0.0, 1.0)


def polygon_coverage(polygon, grid):
    """The pixel shares of a polygon over the window of a grid that holds its bounds.

    Parameters
    ----------
    polygon : shapely Polygon or MultiPolygon
        In the grid's CRS.
    grid : Grid
        A north-up grid (:class:`.grid.Grid`).

    Returns
    -------
    tuple or None
        ``(row0, col0, shares)``: the window's first row and column in the grid and the shares
        (:func:`pixel_coverage`) over it; None when the polygon misses the grid.
    """
    t = grid.transform
    if t.b != 0 or t.d != 0:
        raise ForestCarbonError("The raster is rotated; warp it to a north-up grid first (gdalwarp).")
    xmin, ymin, xmax, ymax = polygon.bounds
    inv = ~t
    cols, rows = zip(inv * (xmin, ymin), inv * (xmax, ymax))
    c0, c1 = max(0, int(math.floor(min(cols)))), min(grid.width, int(math.ceil(max(cols))))
    r0, r1 = max(0, int(math.floor(min(rows)))), min(grid.height, int(math.ceil(max(rows))))
    if c1 <= c0 or r1 <= r0:
        return None
    from rasterio.windows import Window

    window_transform = grid.window_transform(Window(c0, r0, c1 - c0, r1 - r0))
    return r0, c0, pixel_coverage(polygon, window_transform, (r1 - r0, c1 - c0))
