"""Small LiDAR catalogs made from the sample stand (80 m x 80 m, with ground), for worker and cancel tests."""

from __future__ import annotations

from pathlib import Path

import laspy
import numpy as np

from tests.conftest import SAMPLE_LAZ

XMID, YMID = 500040.0, 5600040.0  # the stand's centre


def quarters(source):
    """The stand cut into 4 tiles of 40 m."""
    las = laspy.read(source)
    x, y = np.asarray(las.x), np.asarray(las.y)
    for name, keep in (("sw", (x < XMID) & (y < YMID)), ("se", (x >= XMID) & (y < YMID)),
                       ("nw", (x < XMID) & (y >= YMID)), ("ne", (x >= XMID) & (y >= YMID))):
        tile = laspy.LasData(las.header)
        tile.points = las.points[keep]
        yield name, tile


def mosaic(source, n: int = 4):
    """``n`` x ``n`` copies of the stand side by side (tiles of 80 m)."""
    for i in range(n):
        for j in range(n):
            tile = laspy.read(source)
            tile.x = np.asarray(tile.x) + 80.0 * i
            tile.y = np.asarray(tile.y) + 80.0 * j
            yield f"{i}_{j}", tile


def write_catalogs(root: Path, layout) -> tuple:
    """Folders of tiles laid out by ``layout`` (:func:`quarters`, :func:`mosaic`): the stand's elevations, and
    its heights above ground (normalized once, then tiled)."""
    from forest_carbon_plugin.core.lidar.normalize import normalize_height

    normalize_height(SAMPLE_LAZ, root / "heights.laz")
    folders = []
    for kind, source in (("elevations", SAMPLE_LAZ), ("heights", root / "heights.laz")):
        folder = root / kind
        folder.mkdir()
        for name, tile in layout(source):
            tile.write(folder / f"tile_{name}.laz")
        folders.append(folder)
    return tuple(folders)
