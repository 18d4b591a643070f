"""A LAS/LAZ catalog: one file or a folder of tiles, read as one point cloud.

Like lidR's ``readLAScatalog``: the headers are read up front (bounds, counts, CRS), points
are read tile by tile in chunks, so memory follows the tile, not the catalog. LAS 1.0-1.4,
point formats 0-10, LAZ and COPC (read as plain LAZ) through laspy + lazrs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..dependencies import require
from ..errors import ForestCarbonError
from ..raster.grid import Grid
from .info import las_files

CHUNK_POINTS = 2_000_000


@dataclass(frozen=True)
class Tile:
    path: str
    minx: float
    miny: float
    maxx: float
    maxy: float
    point_count: int
    crs_wkt: str | None
    epsg: int | None

    @property
    def bounds(self):
        return self.minx, self.miny, self.maxx, self.maxy


@dataclass
class Catalog:
    tiles: list
    crs_wkt: str | None
    epsg: int | None
    warnings: list = field(default_factory=list)

    @property
    def bounds(self):
        return (min(t.minx for t in self.tiles), min(t.miny for t in self.tiles),
                max(t.maxx for t in self.tiles), max(t.maxy for t in self.tiles))

    @property
    def point_count(self) -> int:
        return sum(t.point_count for t in self.tiles)

    @property
    def crs(self) -> str | None:
        """A CRS string rasterio and QGIS accept."""
        if self.epsg:
            return f"EPSG:{self.epsg}"
        return self.crs_wkt


def open_catalog(source, crs: str | None = None) -> Catalog:
    """Read the headers of ``source`` (a file, a .vpc or a folder of tiles), as lidR's ``readLAScatalog``.

    Parameters
    ----------
    source : str or Path
        A LAS/LAZ file, a QGIS virtual point cloud (.vpc) or a folder of LAS/LAZ tiles.
    crs : str, optional
        ``"EPSG:xxxx"`` or WKT; overrides the files' CRS. Without it, files without a CRS are an
        error, because every output must be georeferenced.

    Returns
    -------
    Catalog
        The tiles (path, bounds, point count, CRS) and the warnings met (mixed CRSs, …).
    """
    files = las_files(source)
    modules = ("laspy", "lazrs") if any(f.suffix.lower() == ".laz" for f in files) else ("laspy",)
    laspy = require(*modules)
    laspy = laspy[0] if isinstance(laspy, tuple) else laspy
    tiles = []
    for f in files:
        try:
            with laspy.open(f) as reader:
                h = reader.header
                wkt, epsg = None, None
                if crs is None:
                    try:
                        parsed = h.parse_crs()
                    except Exception as exc:
                        raise ForestCarbonError(
                            f"'{f.name}' has a CRS that PROJ does not understand ({str(exc).splitlines()[0][:100]}). "
                            "Set the CRS parameter to the file's CRS (e.g. EPSG:26910).") from exc
                    if parsed is not None:
                        wkt, epsg = parsed.to_wkt(), parsed.to_epsg()
                tiles.append(Tile(str(f), float(h.mins[0]), float(h.mins[1]), float(h.maxs[0]), float(h.maxs[1]),
                                  int(h.point_count), wkt, epsg))
        except ForestCarbonError:
            raise
        except Exception as exc:
            raise ForestCarbonError(
                f"'{f.name}' is not a readable LAS/LAZ file ({type(exc).__name__}: {exc}). "
                "Check that it is a complete LAS or LAZ file.") from exc
    tiles = [t for t in tiles if t.point_count > 0]
    if not tiles:
        raise ForestCarbonError(f"'{source}' holds no points: every file is empty.")
    if crs is not None:
        import pyproj

        try:
            parsed = pyproj.CRS.from_user_input(crs)
        except Exception as exc:
            raise ForestCarbonError(f"The CRS '{crs}' is not understood: give it as EPSG:xxxx or WKT.") from exc
        return Catalog(tiles, parsed.to_wkt(), parsed.to_epsg())
    missing = [Path(t.path).name for t in tiles if t.crs_wkt is None]
    if missing:
        raise ForestCarbonError(
            f"No CRS in {', '.join(missing[:5])}{'…' if len(missing) > 5 else ''}: set the CRS parameter "
            "(e.g. EPSG:26910) so that the outputs are georeferenced.")
    epsgs = {t.epsg for t in tiles}
    wkts = {t.crs_wkt for t in tiles}
    if len(epsgs) > 1 or (None in epsgs and len(wkts) > 1):
        raise ForestCarbonError(
            f"The tiles are in different CRSs ({sorted(map(str, epsgs))}): reproject them to one CRS first.")
    return Catalog(tiles, tiles[0].crs_wkt, tiles[0].epsg)


def read_tile(path, fields=("x", "y", "z"), chunk_points: int = CHUNK_POINTS, threads: bool = True) -> dict:
    """All points of one file as numpy arrays, read in chunks into arrays allocated once.

    Parameters
    ----------
    path : str or Path
        A LAS/LAZ file.
    fields : sequence of str
        Attributes to read: ``x``, ``y``, ``z`` (scaled, float64), ``Z`` (the raw integers) and any
        laspy dimension (``return_number``, ``classification``, ``intensity``…).
    chunk_points : int
        Points decoded at a time.
    threads : bool
        lazrs decompresses LAZ on every core by default; worker processes that already run one per
        core pass False to decode single-threaded and not oversubscribe the cores.

    Returns
    -------
    dict
        Field name → array of the file's points (no concatenation copies).
    """
    laspy = require("laspy", "lazrs")[0] if str(path).lower().endswith(".laz") else require("laspy")
    out: dict = {}
    backend = None if threads else laspy.LazBackend.Lazrs
    try:
        with laspy.open(path, laz_backend=backend) as reader:
            expected = int(reader.header.point_count)
            seen = 0
            for chunk in reader.chunk_iterator(chunk_points):
                n = len(chunk)
                if n == 0:
                    break
                if seen + n > expected:
                    raise ValueError(f"more points than the header's {expected:,}")
                for f in fields:
                    values = np.asarray(getattr(chunk, f))
                    if f not in out:
                        out[f] = np.empty(expected, dtype=values.dtype)
                    out[f][seen:seen + n] = values
                seen += n
    except ForestCarbonError:
        raise
    except Exception as exc:
        raise ForestCarbonError(
            f"'{Path(path).name}' is truncated or corrupt: it could not be read ({type(exc).__name__}: {exc}). "
            "Re-download or re-export the file.") from exc
    if seen != expected:
        raise ForestCarbonError(
            f"'{Path(path).name}' is truncated or corrupt: its header announces {expected:,} points but "
            f"only {seen:,} could be read. Re-download or re-export the file.")
    return {f: out.get(f, np.empty(0)) for f in fields}


def restrict(catalog: Catalog, extent, extent_crs: str | None = None):
    """The catalog's tiles that overlap ``extent``, and the overlap.

    Parameters
    ----------
    catalog : Catalog
        The tiles.
    extent : tuple or None
        (xmin, ymin, xmax, ymax); None keeps the whole catalog.
    extent_crs : str, optional
        The extent's CRS; transformed to the catalog's first when it differs.

    Returns
    -------
    catalog : Catalog
        The tiles that overlap the extent.
    bounds : tuple
        (xmin, ymin, xmax, ymax) of the overlap, in the catalog's CRS.

    Raises
    ------
    ForestCarbonError
        When the cloud lies outside the extent.
    """
    if extent is None:
        return catalog, catalog.bounds
    x0, y0, x1, y1 = (float(v) for v in extent)
    if extent_crs:
        import pyproj

        src, dst = pyproj.CRS.from_user_input(extent_crs), pyproj.CRS.from_user_input(catalog.crs)
        if not src.equals(dst):
            x0, y0, x1, y1 = pyproj.Transformer.from_crs(src, dst, always_xy=True).transform_bounds(x0, y0, x1, y1)
    cx0, cy0, cx1, cy1 = catalog.bounds
    ix0, iy0, ix1, iy1 = max(x0, cx0), max(y0, cy0), min(x1, cx1), min(y1, cy1)
    if ix0 >= ix1 or iy0 >= iy1:
        raise ForestCarbonError(
            f"The point cloud ({cx0:.1f}, {cy0:.1f}) – ({cx1:.1f}, {cy1:.1f}) lies outside the requested extent "
            f"({x0:.1f}, {y0:.1f}) – ({x1:.1f}, {y1:.1f}) in its CRS: choose an extent that overlaps it.")
    tiles = [t for t in catalog.tiles if t.minx <= ix1 and t.maxx >= ix0 and t.miny <= iy1 and t.maxy >= iy0]
    return Catalog(tiles, catalog.crs_wkt, catalog.epsg, catalog.warnings), (ix0, iy0, ix1, iy1)


@dataclass(frozen=True)
class Extent:
    """An area to process: ``bounds`` (xmin, ymin, xmax, ymax) in ``crs`` (WKT or "EPSG:n"; None: the data's own)."""

    bounds: tuple
    crs: str | None = None


def open_extent(source, crs: str | None = None, extent: Extent | None = None):
    """The catalog of ``source`` and its tiles that overlap ``extent``.

    Parameters
    ----------
    source : str or Path
        A LAS/LAZ file, a .vpc or a folder of tiles.
    crs : str, optional
        The CRS to assume when the files have none.
    extent : Extent, optional
        The area wanted; None: the whole cloud.

    Returns
    -------
    full : Catalog
        Every tile (its bounds are the data's, which a cell's points must fall in).
    catalog : Catalog
        The tiles that overlap the extent.
    bounds : tuple
        The overlap of the cloud and the extent, in the cloud's CRS.
    """
    full = open_catalog(source, crs)
    if extent is None:
        return full, full, full.bounds
    catalog, bounds = restrict(full, extent.bounds, extent.crs)
    return full, catalog, bounds


def buffered_points(catalog: Catalog, i: int, buffer: float, fields):
    """Points of tile ``i`` and of the other tiles within ``buffer`` of it (lidR's chunk buffer).

    Parameters
    ----------
    catalog : Catalog
        The tiles, as :func:`open_catalog` reads them.
    i : int
        Index of the tile whose points are wanted.
    buffer : float
        Width (map units) of the band around it from which neighbours' points are added.
    fields : sequence of str
        Attributes to read (see :func:`read_tile`).

    Returns
    -------
    points : dict
        Field name → array: tile ``i``'s points first, then its neighbours' within the buffer.
    mine : ndarray of bool
        Which of the points belong to tile ``i``.
    """
    tile = catalog.tiles[i]
    own = read_tile(tile.path, fields)
    parts = [own]
    x0, y0, x1, y1 = tile.minx - buffer, tile.miny - buffer, tile.maxx + buffer, tile.maxy + buffer
    for j, other in enumerate(catalog.tiles):
        if j == i or other.maxx < x0 or other.minx > x1 or other.maxy < y0 or other.miny > y1:
            continue
        pts = read_tile(other.path, fields)
        near = (pts["x"] >= x0) & (pts["x"] <= x1) & (pts["y"] >= y0) & (pts["y"] <= y1)
        parts.append({k: v[near] for k, v in pts.items()})
    merged = {k: np.concatenate([p[k] for p in parts]) for k in fields}
    mine = np.zeros(len(merged["x"]), dtype=bool)
    mine[: len(own["x"])] = True
    return merged, mine


def cell_owner(catalog: Catalog, grid: Grid) -> np.ndarray:
    """Which tile owns each cell: the first tile whose bounds hold the cell centre.

    Parameters
    ----------
    catalog : Catalog
        The tiles, in the order that breaks ties.
    grid : Grid
        The raster whose cells are shared out.

    Returns
    -------
    ndarray of int32
        Tile index per cell, shaped like the grid; a cell whose centre is in no tile goes to the nearest tile.
    """
    owner = np.full(grid.shape, -1, dtype=np.int32)
    cx, cy = grid.centres()
    for i, t in reversed(list(enumerate(catalog.tiles))):
        inside = (cx >= t.minx) & (cx <= t.maxx) & (cy >= t.miny) & (cy <= t.maxy)
        owner[inside] = i
    # cells whose centre falls in no tile (the grid's outer half-cells): nearest tile by bounds
    missing = owner < 0
    if missing.any():
        centres = np.column_stack([cx[missing], cy[missing]])
        dist = np.stack([np.hypot(np.clip(centres[:, 0], t.minx, t.maxx) - centres[:, 0],
                                  np.clip(centres[:, 1], t.miny, t.maxy) - centres[:, 1]) for t in catalog.tiles])
        owner[missing] = np.argmin(dist, axis=0)
    return owner


def read_las(path):
    """The whole file as a ``laspy.LasData`` (every attribute), for algorithms that rewrite it.

    Parameters
    ----------
    path : str or Path
        A LAS/LAZ file.

    Returns
    -------
    laspy.LasData
    """
    laspy = require("laspy", "lazrs")[0] if str(path).lower().endswith(".laz") else require("laspy")
    try:
        return laspy.read(path)
    except Exception as exc:
        raise ForestCarbonError(f"'{Path(path).name}' is truncated or corrupt ({type(exc).__name__}: {exc}).") from exc


class LasWriter:
    """Writes the tiles of a catalog, one after the other, into one LAS/LAZ file.

    The first tile's header (copied, with ``z_offset`` when given) is the file's; every tile is
    re-expressed with its scales and offsets, and must have the same point format.
    """

    def __init__(self, laspy, path, z_offset: float | None = None):
        self.laspy = laspy
        self.path = Path(path)
        self.z_offset = z_offset
        self.header = None
        self._writer = None

    def __enter__(self):
        return self

    def write(self, las) -> None:
        if self._writer is None:
            self.header = copy.deepcopy(las.header)
            if self.z_offset is not None:
                self.header.offsets = np.array([self.header.offsets[0], self.header.offsets[1], self.z_offset])
            self.header.generating_software = "forest_carbon_plugin"
            self._writer = self.laspy.open(self.path, mode="w", header=self.header,
                                           do_compress=self.path.suffix.lower() == ".laz")
        if las.point_format != self.header.point_format:
            raise ForestCarbonError("The tiles have different point formats or extra dimensions: "
                                    "process them one by one, or convert them to one format first.")
        self._writer.write_points(self._rescaled(las))

    def _rescaled(self, las):
        """The points of ``las`` expressed with the file's scales and offsets."""
        h = self.header
        if np.allclose(las.header.scales, h.scales) and np.allclose(las.header.offsets, h.offsets):
            return las.points
        record = self.laspy.ScaleAwarePointRecord.zeros(len(las.points), header=h)
        for name in las.point_format.dimension_names:
            if name not in ("X", "Y", "Z"):
                record[name] = las.points[name]
        record.x, record.y, record.z = las.x, las.y, las.z
        return record

    def __exit__(self, *exc):
        if self._writer is not None:
            self._writer.close()
        return False
