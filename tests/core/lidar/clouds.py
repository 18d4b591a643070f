"""Small point clouds written with laspy, and the lidR reference outputs of ../shared/notes/lidr_reference/."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...conftest import SHARED_DATA

#: lidR 4.3.2's outputs on its bundled MixedConifer.laz (rasterize_canopy, pixel_metrics, locate_trees)
LIDR_REFERENCE = SHARED_DATA.parent / "notes" / "lidr_reference"
EPSG = 32633


def write_las(path: Path, x, y, z, return_number=None, classification=None, epsg: int | None = EPSG) -> Path:
    """A LAS 1.4 file (point format 6, 1 cm scale) of the given points; every point a first return of one
    unless ``return_number`` says otherwise."""
    import laspy

    header = laspy.LasHeader(point_format=6, version="1.4")
    header.scales = np.array([0.01, 0.01, 0.01])
    header.offsets = np.array([np.floor(np.min(x)), np.floor(np.min(y)), 0.0])
    if epsg is not None:
        from pyproj import CRS

        header.add_crs(CRS.from_epsg(epsg))
    las = laspy.LasData(header)
    las.x, las.y, las.z = np.asarray(x, float), np.asarray(y, float), np.asarray(z, float)
    n = len(las.x)
    rn = np.ones(n, dtype=np.uint8) if return_number is None else np.asarray(return_number, dtype=np.uint8)
    las.return_number = rn
    las.number_of_returns = np.maximum(rn, 1)
    if classification is not None:
        las.classification = np.asarray(classification, dtype=np.uint8)
    las.write(str(path))
    return path


def quantized(values, scale: float = 0.01) -> np.ndarray:
    """What a LAS file with ``scale`` stores of ``values`` (coordinates are integers times the scale)."""
    return np.round(np.asarray(values, float) / scale) * scale


def random_cloud(n: int, seed: int, x0=500_000.0, y0=4_200_000.0, size=40.0, zmax=30.0):
    """``n`` points uniformly in a ``size`` m square at (x0, y0), heights in [0, zmax), rounded to the 1 cm
    a LAS file keeps, so that the arrays equal what is read back."""
    rng = np.random.default_rng(seed)
    x = quantized(x0 + rng.uniform(0, size, n))
    y = quantized(y0 + rng.uniform(0, size, n))
    z = quantized(rng.uniform(0, zmax, n))
    return x, y, z
