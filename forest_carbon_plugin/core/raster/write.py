"""Raster output in one place: GeoTIFF with CRS, nodata, band descriptions and provenance,
written atomically (see :mod:`.outputs`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..outputs import atomic_output, gdal_tags


def write_raster(path, data, transform, crs, nodata=None, descriptions=None, tags=None,
                 provenance=None, band_tags=None, compress="deflate") -> Path:
    """Write ``data`` (bands, rows, cols) or (rows, cols) as a tiled, compressed GeoTIFF."""
    import rasterio

    array = np.asarray(data)
    if array.ndim == 2:
        array = array[None]
    count, height, width = array.shape
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": count, "dtype": array.dtype.name,
        "crs": crs, "transform": transform, "nodata": nodata, "compress": compress,
    }
    if width >= 256 and height >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    if array.dtype.kind == "f":
        profile["predictor"] = 3 if compress == "deflate" else 1
    elif compress == "deflate":
        profile["predictor"] = 2
    with atomic_output(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(array)
            for i, text in enumerate(descriptions or [], start=1):
                dst.set_band_description(i, text)
            all_tags = gdal_tags(tags, provenance)
            if all_tags:
                dst.update_tags(**all_tags)
            for i, btags in enumerate(band_tags or [], start=1):
                if btags:
                    dst.update_tags(i, **btags)
    return Path(path)


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over non-overlapping ``factor``×``factor`` blocks (shape must divide)."""
    rows, cols = array.shape[-2:]
    shaped = array.reshape(*array.shape[:-2], rows // factor, factor, cols // factor, factor)
    return shaped.mean(axis=(-3, -1))
