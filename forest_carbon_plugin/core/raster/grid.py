"""The raster grid: one type for the LiDAR rasters and the block-processed imagery, one snapping rule.

A :class:`Grid` is a north-up grid (CRS, affine transform, width, height); rows count down from the
top. Grids made from a box (:meth:`Grid.covering`, :meth:`Grid.from_bounds`) have their edges on
multiples of the resolution, the rule of lidR's ``raster_layout`` (``round_any(xmin, res, floor)``,
``round_any(xmax, res, ceiling)``; Roussel et al. 2020, lidR, Remote Sensing of Environment 251:
112061), so grids made by separate runs, tiles or sensors mosaic exactly. A bound within 1e-9 cell of
a multiple counts as on it, so that floating-point noise in a header's bounds adds no row or column.

Cell membership follows lidR's ``pixel_metrics``/``rasterize_canopy``: ``col = floor((x − xmin)/res)``,
``row = floor((ymax − y)/res)``; a point on a north-south cell line belongs to the cell to its east, a
point on an east-west line to the cell to its south; points on the grid's east or south edge go to the
last column or row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ForestCarbonError

__all__ = ["DEFAULT_BLOCK", "MAX_MEMORY_CELLS", "MAX_STREAMED_CELLS", "Grid", "check_grid_size", "snap_bounds",
           "crs_name"]

#: Side of the square blocks rasters are computed and tiled in (pixels).
DEFAULT_BLOCK = 512
#: Rasters the LiDAR chain holds in memory (a float64 array per layer, several at once): past this
#: many cells they would not fit in a workstation's memory, so the run is refused before allocating.
MAX_MEMORY_CELLS = 400_000_000
#: Rasters written block by block: bounded by GeoTIFF's tile index and by what a run can finish.
MAX_STREAMED_CELLS = 20_000_000_000


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that is at least ``value``."""
    exponent = math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if step * 10.0 ** exponent >= value * (1 - 1e-12):
            return step * 10.0 ** exponent
    return 10.0 ** (exponent + 1)


def check_grid_size(width: float, height: float, res: float, limit: int = MAX_MEMORY_CELLS,
                    bytes_per_cell: int = 8) -> None:
    """Refuse a grid too large to make, before anything is allocated.

    Parameters
    ----------
    width, height : float
        The extent in CRS units.
    res : float
        Cell side in CRS units; must be finite and greater than 0.
    limit : int
        The most cells allowed (:data:`MAX_MEMORY_CELLS` or :data:`MAX_STREAMED_CELLS`).
    bytes_per_cell : int
        Size of a cell of one layer, for the message.

    Raises
    ------
    ForestCarbonError
        Past ``limit`` cells, naming the grid's size and the finest resolution that fits.
    """
    if not (res > 0 and math.isfinite(res)):
        raise ForestCarbonError(f"The resolution must be a number greater than 0 (got {res}).")
    ncols, nrows = max(1.0, width / res), max(1.0, height / res)
    cells = ncols * nrows
    if cells <= limit:
        return
    fits = _nice_ceiling(res * math.sqrt(cells / limit))
    size = cells * bytes_per_cell / 2 ** 30
    raise ForestCarbonError(
        f"A raster of {ncols:,.0f} × {nrows:,.0f} cells at a resolution of {res:g} would be too large "
        f"({cells:.3g} cells, about {size:,.0f} GiB per layer; the limit is {limit:,} cells). Use a resolution "
        f"of at least {fits:g} (in the CRS units, usually metres), or a smaller extent.")


def snap_bounds(bounds, res: float) -> tuple[float, float, float, float]:
    """A box grown to multiples of ``res`` (lidR's ``raster_layout`` rule, 1e-9-cell tolerance).

    Parameters
    ----------
    bounds : tuple of float
        (xmin, ymin, xmax, ymax) in CRS units.
    res : float
        Cell side in CRS units.

    Returns
    -------
    tuple of float
        The snapped (xmin, ymin, xmax, ymax).
    """
    xmin, ymin, xmax, ymax = bounds
    return (math.floor(xmin / res + 1e-9) * res, math.floor(ymin / res + 1e-9) * res,
            math.ceil(xmax / res - 1e-9) * res, math.ceil(ymax / res - 1e-9) * res)


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid.

    Parameters
    ----------
    crs : object
        Anything rasterio's ``CRS`` takes; None where the CRS is implied (a LiDAR catalog's).
    transform : affine.Affine
        Pixel to CRS coordinates; cells are ``transform.a`` wide and ``-transform.e`` high.
    width, height : int
        Columns and rows (also named ``ncols``, ``nrows``).
    """

    crs: object
    transform: object  # affine.Affine
    width: int
    height: int

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_origin(cls, xmin: float, ymax: float, res: float, ncols: int, nrows: int, crs=None) -> "Grid":
        """The grid of ``ncols`` × ``nrows`` square cells of side ``res`` from its north-west corner."""
        from affine import Affine

        return cls(crs, Affine(res, 0.0, xmin, 0.0, -res, ymax), int(ncols), int(nrows))

    @classmethod
    def covering(cls, xmin: float, ymin: float, xmax: float, ymax: float, res: float, crs=None) -> "Grid":
        """The snapped grid of cells of side ``res`` covering a box, held in memory (LiDAR rasters).

        Refused, naming a resolution that fits, past :data:`MAX_MEMORY_CELLS` cells.
        """
        check_grid_size(xmax - xmin, ymax - ymin, res)
        return cls._snapped(crs, (xmin, ymin, xmax, ymax), res)

    @classmethod
    def from_bounds(cls, crs, bounds, res_m: float, snap: bool = True) -> "Grid":
        """The grid of cells of side ``res_m`` covering ``bounds``, written block by block.

        With ``snap`` its edges are on multiples of ``res_m`` (the module's rule); refused past
        :data:`MAX_STREAMED_CELLS` cells.
        """
        if not res_m > 0:
            raise ForestCarbonError(f"The resolution must be greater than 0 (got {res_m}).")
        xmin, ymin, xmax, ymax = bounds
        check_grid_size(xmax - xmin, ymax - ymin, res_m, MAX_STREAMED_CELLS, bytes_per_cell=4)
        if snap:
            return cls._snapped(crs, bounds, res_m)
        width = max(1, int(round((xmax - xmin) / res_m)))
        height = max(1, int(round((ymax - ymin) / res_m)))
        return cls.from_origin(xmin, ymax, res_m, width, height, crs)

    @classmethod
    def _snapped(cls, crs, bounds, res: float) -> "Grid":
        xmin, ymin, xmax, ymax = snap_bounds(bounds, res)
        ncols = max(1, int(round((xmax - xmin) / res)))
        nrows = max(1, int(round((ymax - ymin) / res)))
        return cls.from_origin(xmin, ymax, res, ncols, nrows, crs)

    @classmethod
    def of(cls, dataset) -> "Grid":
        """The grid of an open rasterio dataset."""
        return cls(dataset.crs, dataset.transform, dataset.width, dataset.height)

    # ------------------------------------------------------------------ geometry

    @property
    def res(self) -> float:
        """The cell width in CRS units (the cell side: grids built here have square cells)."""
        return abs(self.transform.a)

    @property
    def res_xy(self) -> tuple[float, float]:
        """Cell width and height in CRS units (they differ only in some rasters read from files)."""
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def ncols(self) -> int:
        return self.width

    @property
    def nrows(self) -> int:
        return self.height

    @property
    def xmin(self) -> float:
        return self.transform.c

    @property
    def ymax(self) -> float:
        return self.transform.f

    @property
    def xmax(self) -> float:
        return self.transform.c + self.transform.a * self.width

    @property
    def ymin(self) -> float:
        return self.transform.f + self.transform.e * self.height

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return self.xmin, self.ymin, self.xmax, self.ymax

    @property
    def shape(self) -> tuple:
        return self.height, self.width

    @property
    def size(self) -> int:
        return self.height * self.width

    # ------------------------------------------------------------------ points to cells (lidR's rules)

    def cols(self, x) -> np.ndarray:
        """Column of each x: ``floor((x − xmin) / res)``, clipped to the grid (the east edge is the last)."""
        c = np.floor((np.asarray(x, dtype=np.float64) - self.xmin) / self.res_xy[0]).astype(np.int64)
        return np.clip(c, 0, self.width - 1)

    def rows(self, y) -> np.ndarray:
        """Row of each y: ``floor((ymax − y) / res)``, clipped to the grid (the south edge is the last)."""
        r = np.floor((self.ymax - np.asarray(y, dtype=np.float64)) / self.res_xy[1]).astype(np.int64)
        return np.clip(r, 0, self.height - 1)

    def cell_index(self, x, y) -> np.ndarray:
        """Row-major cell index of each point (points outside are clipped to the edge cells)."""
        return self.rows(y) * self.width + self.cols(x)

    def centres(self):
        """(x, y) of the cell centres, each shaped like the grid."""
        xres, yres = self.res_xy
        xs = self.xmin + (np.arange(self.width) + 0.5) * xres
        ys = self.ymax - (np.arange(self.height) + 0.5) * yres
        return np.meshgrid(xs, ys)

    def contains(self, x, y) -> np.ndarray:
        """Points inside the grid or on its edges."""
        x = np.asarray(x)
        y = np.asarray(y)
        return (x >= self.xmin) & (x <= self.xmax) & (y >= self.ymin) & (y <= self.ymax)

    def holds(self, x, y, data_bounds) -> np.ndarray:
        """Points that belong to the grid's cells when the grid may cut the data.

        Where the grid edge cuts the data (a requested extent), edges are half-open as in the
        full lattice: a point on the cut line belongs to the cell east or south of it, outside.
        On the data's own east/south edge lidR's rule keeps the points in the last column/row.
        """
        x = np.asarray(x)
        y = np.asarray(y)
        dx0, dy0, dx1, dy1 = data_bounds
        east = x < self.xmax if self.xmax < dx1 else x <= self.xmax
        south = y > self.ymin if self.ymin > dy0 else y >= self.ymin
        return (x >= self.xmin) & east & south & (y <= self.ymax)

    # ------------------------------------------------------------------ blocks

    def windows(self, block_size: int = DEFAULT_BLOCK):
        """Windows of ``block_size`` (aligned with the output tiles), row by row."""
        from rasterio.windows import Window

        for row in range(0, self.height, block_size):
            for col in range(0, self.width, block_size):
                yield Window(col, row, min(block_size, self.width - col), min(block_size, self.height - row))

    def window_transform(self, window):
        """The affine transform of a window of the grid."""
        from rasterio.windows import transform

        return transform(window, self.transform)


def crs_name(crs) -> str:
    """A short name of a CRS for messages and provenance.

    Parameters
    ----------
    crs : object
        Anything rasterio's ``CRS`` takes, or None.

    Returns
    -------
    str
        ``"EPSG:<code>"`` where the CRS has one, else its PROJ string or WKT cut to 60 characters;
        ``"no CRS"`` for None.
    """
    if crs is None:
        return "no CRS"
    try:
        from rasterio.crs import CRS

        crs = CRS.from_user_input(crs)
        epsg = crs.to_epsg()
        return f"EPSG:{epsg}" if epsg else (crs.to_string() or crs.to_wkt())[:60]
    except Exception:  # noqa: BLE001 - a CRS rasterio cannot parse is still named
        return str(crs)[:60]
