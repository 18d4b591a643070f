"""A LAS/LAZ catalog: one file or a folder of tiles, read as one point cloud.

Like lidR's ``readLAScatalog``: the headers are read up front (bounds, counts, CRS), points
are read tile by tile in chunks, so memory follows the tile, not the catalog. LAS 1.0-1.4,
point formats 0-10, LAZ and COPC (read as plain LAZ) through laspy + lazrs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dependencies import require
from .errors import ForestCarbonError
from .lasinfo import las_files

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
    """Read the headers of ``source`` (a file or a folder of tiles).

    ``crs`` (``"EPSG:xxxx"`` or WKT) overrides the files' CRS; without it, files without a
    CRS are an error, because every output must be georeferenced.
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
    """All points of one file as numpy arrays (float64 coordinates), read in chunks into
    arrays allocated once (no concatenation copies).

    ``threads``: lazrs decompresses LAZ on every core by default; worker processes that already
    run one per core pass False to decode single-threaded and not oversubscribe the cores.
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
    """The catalog's tiles that overlap ``extent`` (xmin, ymin, xmax, ymax), and the overlap.

    ``extent_crs``, when given and different from the catalog's, is transformed first.
    Raises when the cloud lies outside the extent.
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
