"""Raster grids snapped to multiples of the resolution, with lidR's cell-membership rules.

A grid is (xmin, ymax, res, ncols, nrows) in the CRS units; rows count down from the top.
Its edges are multiples of ``res``, so grids made by separate runs mosaic exactly.

Cell membership follows lidR's ``pixel_metrics``/``rasterize_canopy`` (shared/notes/
lidar_metrics.md §3.1): ``col = floor((x − xmin)/res)``, ``row = floor((ymax − y)/res)``;
a point on a north-south cell line belongs to the cell to its east, a point on an east-west
line to the cell to its south; points on the grid's east or south edge go to the last
column or row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ForestCarbonError

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
    """Refuse a grid of ``width`` × ``height`` (CRS units) at ``res`` with more than ``limit`` cells,
    naming its size and the finest resolution that fits, before anything is allocated."""
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


@dataclass(frozen=True)
class Grid:
    xmin: float
    ymax: float
    res: float
    ncols: int
    nrows: int

    @classmethod
    def covering(cls, xmin: float, ymin: float, xmax: float, ymax: float, res: float) -> "Grid":
        """The grid of cells of side ``res`` aligned to multiples of ``res`` covering the box."""
        check_grid_size(xmax - xmin, ymax - ymin, res)
        gx0 = math.floor(xmin / res) * res
        gy1 = math.ceil(ymax / res) * res
        gx1 = math.ceil(xmax / res) * res
        gy0 = math.floor(ymin / res) * res
        ncols = max(1, int(round((gx1 - gx0) / res)))
        nrows = max(1, int(round((gy1 - gy0) / res)))
        return cls(gx0, gy1, res, ncols, nrows)

    @property
    def xmax(self) -> float:
        return self.xmin + self.ncols * self.res

    @property
    def ymin(self) -> float:
        return self.ymax - self.nrows * self.res

    @property
    def shape(self) -> tuple:
        return self.nrows, self.ncols

    @property
    def size(self) -> int:
        return self.nrows * self.ncols

    @property
    def transform(self):
        from affine import Affine

        return Affine(self.res, 0.0, self.xmin, 0.0, -self.res, self.ymax)

    def cols(self, x) -> np.ndarray:
        c = np.floor((np.asarray(x, dtype=np.float64) - self.xmin) / self.res).astype(np.int64)
        return np.clip(c, 0, self.ncols - 1)

    def rows(self, y) -> np.ndarray:
        r = np.floor((self.ymax - np.asarray(y, dtype=np.float64)) / self.res).astype(np.int64)
        return np.clip(r, 0, self.nrows - 1)

    def cell_index(self, x, y) -> np.ndarray:
        """Row-major cell index of each point (points outside are clipped to the edge cells)."""
        return self.rows(y) * self.ncols + self.cols(x)

    def centres(self):
        """(x, y) of the cell centres, each shaped like the grid."""
        xs = self.xmin + (np.arange(self.ncols) + 0.5) * self.res
        ys = self.ymax - (np.arange(self.nrows) + 0.5) * self.res
        return np.meshgrid(xs, ys)

    def contains(self, x, y) -> np.ndarray:
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


@dataclass(frozen=True)
class RasterGrid:
    """A north-up raster grid: CRS (anything rasterio's ``CRS`` takes), transform, size."""

    crs: object
    transform: object  # affine.Affine
    width: int
    height: int

    @property
    def res(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        t = self.transform
        return t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f

    @classmethod
    def of(cls, dataset) -> "RasterGrid":
        return cls(dataset.crs, dataset.transform, dataset.width, dataset.height)

    @classmethod
    def from_bounds(cls, crs, bounds, res_m: float, snap: bool = True) -> "RasterGrid":
        """The grid of cell size ``res_m`` covering ``bounds``; edges snapped to multiples of
        ``res_m`` so that separate runs line up (as HLS's and every tiling scheme's do)."""
        from affine import Affine

        if not res_m > 0:
            raise ForestCarbonError(f"The resolution must be greater than 0 (got {res_m}).")
        xmin, ymin, xmax, ymax = bounds
        check_grid_size(xmax - xmin, ymax - ymin, res_m, MAX_STREAMED_CELLS, bytes_per_cell=4)
        if snap:
            xmin, ymin = math.floor(xmin / res_m + 1e-9) * res_m, math.floor(ymin / res_m + 1e-9) * res_m
            xmax, ymax = math.ceil(xmax / res_m - 1e-9) * res_m, math.ceil(ymax / res_m - 1e-9) * res_m
        width = max(1, int(round((xmax - xmin) / res_m)))
        height = max(1, int(round((ymax - ymin) / res_m)))
        return cls(crs, Affine(res_m, 0, xmin, 0, -res_m, ymax), width, height)

    def windows(self, block_size: int = DEFAULT_BLOCK):
        """Windows of ``block_size`` (aligned with the output tiles), row by row."""
        from rasterio.windows import Window

        for row in range(0, self.height, block_size):
            for col in range(0, self.width, block_size):
                yield Window(col, row, min(block_size, self.width - col), min(block_size, self.height - row))

    def window_transform(self, window):
        from rasterio.windows import transform

        return transform(window, self.transform)
