"""COGs written as their rows arrive (core.cog), checked against GDAL: its COG validator, its reading of
the file, and the overviews its own COG driver computes from the same pixels."""

import json
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.shutil import copy as gdal_copy
from rasterio.transform import Affine, from_origin

from forest_carbon_plugin.core.raster import cog
from forest_carbon_plugin.core.raster.grid import Grid
from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.outputs import PROVENANCE_KEY

pytestmark = pytest.mark.skipif(not cog.available("zstd"), reason="the zstandard package is not installed")


def validate(path):
    """GDAL's own COG validator (python3-gdal's samples), with the leader/trailer checks."""
    validator = pytest.importorskip("osgeo_utils.samples.validate_cloud_optimized_geotiff")
    errors, warnings, _ = validator.validate(str(path), full_check=True)
    return errors


def image(height, width, seed=0, holes=True):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    data = (100 + 50 * np.sin(x / 37.0) * np.cos(y / 23.0) + rng.normal(0, 3, (height, width))).astype(np.float32)
    if holes:
        data[rng.random((height, width)) < 0.05] = np.nan  # scattered nodata
        data[: height // 5, : width // 4] = np.nan  # and a whole corner (all-NaN tiles and overview cells)
    return data


def stream(path, grid, data, chunks, **options):
    with cog.cog_writer(grid, path, **options) as dst:
        row = 0
        for rows in chunks:
            dst.write(data[None, row:row + rows], window=rasterio.windows.Window(0, row, grid.width, rows))
            row += rows
    return path


def block_nanmean(a, factor):
    """The mean of every ``factor`` × ``factor`` cell, NaN ignored, in float64 (the reference for overviews)."""
    h, w = -(-a.shape[0] // factor), -(-a.shape[1] // factor)
    padded = np.full((h * factor, w * factor), np.nan)
    padded[:a.shape[0], :a.shape[1]] = a
    cells = padded.reshape(h, factor, w, factor).transpose(0, 2, 1, 3).reshape(h, w, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells: NaN, as wanted
        return np.nanmean(cells, axis=2)


@pytest.mark.parametrize("compress", ["zstd", "none"])
def test_streamed_cog_is_a_valid_cog_with_gdals_metadata(tmp_path, compress):
    height, width = 1100, 1300
    data = image(height, width)
    grid = Grid("EPSG:32633", from_origin(500000, 6000000, 10, 10), width, height)
    record = {"algorithm": "forestcarbon:test", "parameters": {"tile": 256}}
    out = stream(tmp_path / "out.tif", grid, data, [300, 1, 299, 256, 244], block=256, compress=compress,
                 descriptions=["agb"], tags={"UNIT": "Mg/ha", "OUTPUT_KIND": "prediction"}, provenance=record)
    assert validate(out) == []
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.tags(ns="IMAGE_STRUCTURE").get("COMPRESSION", "NONE") == compress.upper()
        assert (src.width, src.height, src.count, src.dtypes[0]) == (width, height, 1, "float32")
        assert src.crs == CRS.from_epsg(32633) and src.transform == grid.transform
        assert np.isnan(src.nodata) and src.block_shapes == [(256, 256)]
        assert src.descriptions == ("agb",)
        tags = src.tags()
        assert tags["UNIT"] == "Mg/ha" and tags["OUTPUT_KIND"] == "prediction" and tags["AREA_OR_POINT"] == "Area"
        assert json.loads(tags[PROVENANCE_KEY]) == record
        np.testing.assert_array_equal(src.read(1), data)  # lossless, NaN where NaN
        assert src.overviews(1) == [2, 4, 8]  # GDAL's AUTO: halve until one 256-pixel tile holds it
    # nothing but the output is left beside it (level files, the probe GeoTIFF, its .aux.xml)
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_overviews_are_nan_aware_means_and_match_gdals_cog_driver(tmp_path):
    # odd sizes: partial tiles, odd overview edges; the first level is the NaN-ignoring mean of each 2 × 2 cell
    height, width = 1037, 1221
    data = image(height, width, seed=3)
    grid = Grid("EPSG:32633", from_origin(500000, 6000000, 10, 10), width, height)
    ours = stream(tmp_path / "odd.tif", grid, data, [224] * 4 + [141], block=256)
    with rasterio.open(ours) as a:
        level1 = a.read(1, out_shape=(-(-height // 2), -(-width // 2)))
    np.testing.assert_allclose(level1, block_nanmean(data, 2), rtol=2e-6, equal_nan=True)
    # sizes GDAL halves exactly (on odd sizes it resamples by the size ratio, not 2 × 2 cells): every level
    # equals what GDAL's COG driver makes of the same pixels
    height, width = 1024, 1280
    data = image(height, width, seed=4)
    grid = Grid("EPSG:32633", from_origin(500000, 6000000, 10, 10), width, height)
    ours = stream(tmp_path / "ours.tif", grid, data, [224] * 4 + [128], block=256)
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=width, height=height, count=1, dtype="float32",
                       crs=grid.crs, transform=grid.transform, nodata=float("nan")) as dst:
        dst.write(data[None])
    gdal = tmp_path / "gdal.tif"
    gdal_copy(str(plain), str(gdal), driver="COG", blocksize=256, overview_resampling="AVERAGE")
    with rasterio.open(ours) as a, rasterio.open(gdal) as b:
        assert a.overviews(1) == b.overviews(1) == [2, 4, 8]
        for factor in a.overviews(1):
            shape = (height // factor, width // factor)
            np.testing.assert_allclose(a.read(1, out_shape=shape), b.read(1, out_shape=shape), rtol=1e-5,
                                       equal_nan=True)


def test_bigtiff_layout_and_other_crs(tmp_path):
    # BigTIFF (8-byte offsets) is what a raster over 4 GB gets; forced here on a small one
    height, width = 600, 700
    data = image(height, width, seed=5, holes=False)
    laea = CRS.from_proj4("+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80 +units=m +no_defs")
    grid = Grid(laea, from_origin(4321000, 3210000, 20, 20), width, height)
    out = tmp_path / "big.tif"
    with cog.cog_writer(grid, out, block=256) as dst:
        dst.bigtiff = True
        dst.write(data[None], window=rasterio.windows.Window(0, 0, width, height))
    assert out.read_bytes()[:4] == b"II+\0"
    assert validate(out) == []
    reference = tmp_path / "reference.tif"  # the same CRS written by GDAL itself
    with rasterio.open(reference, "w", driver="GTiff", width=1, height=1, count=1, dtype="float32", crs=laea,
                       transform=grid.transform) as dst:
        pass
    with rasterio.open(out) as src, rasterio.open(reference) as ref:
        assert src.crs == ref.crs and src.transform == grid.transform
        np.testing.assert_array_equal(src.read(1), data)
        # all valid, even factors: each overview is the plain block mean
        np.testing.assert_allclose(src.read(1, out_shape=(150, 175)), block_nanmean(data, 4), rtol=2e-6)


def test_geographic_grid_and_a_single_tile(tmp_path):
    data = image(40, 50, holes=False)
    grid = Grid("EPSG:4326", Affine(0.001, 0, 10.0, 0, -0.001, 50.0), 50, 40)
    out = stream(tmp_path / "small.tif", grid, data, [40])
    assert validate(out) == []
    with rasterio.open(out) as src:
        assert src.crs == CRS.from_epsg(4326) and src.overviews(1) == []
        np.testing.assert_array_equal(src.read(1), data)


def test_rows_out_of_order_and_failures_leave_nothing(tmp_path):
    grid = Grid("EPSG:32633", from_origin(0, 1000, 10, 10), 100, 100)
    data = image(100, 100, holes=False)
    with pytest.raises(ForestCarbonError, match="whole rows in order"):
        with cog.cog_writer(grid, tmp_path / "a.tif", block=64) as dst:
            dst.write(data[None, 50:60], window=rasterio.windows.Window(0, 50, 100, 10))
    with pytest.raises(ForestCarbonError, match="got 60 of 100 rows"):
        with cog.cog_writer(grid, tmp_path / "b.tif", block=64) as dst:
            dst.write(data[None, :60], window=rasterio.windows.Window(0, 0, 100, 60))
    with pytest.raises(KeyboardInterrupt):  # a cancelled run
        with cog.cog_writer(grid, tmp_path / "c.tif", block=64) as dst:
            dst.write(data[None, :70], window=rasterio.windows.Window(0, 0, 100, 70))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_average_2x2_against_a_loop():
    rng = np.random.default_rng(2)
    for shape in [(6, 8), (7, 9), (1, 1), (1, 5), (5, 1)]:
        a = rng.uniform(-5, 5, shape).astype(np.float32)
        a[rng.random(shape) < 0.4] = np.nan
        expected = np.full((-(-shape[0] // 2), -(-shape[1] // 2)), np.nan)
        for i in range(expected.shape[0]):
            for j in range(expected.shape[1]):
                cell = a[2 * i:2 * i + 2, 2 * j:2 * j + 2].astype(np.float64)
                if (~np.isnan(cell)).any():
                    expected[i, j] = cell[~np.isnan(cell)].mean()
        np.testing.assert_allclose(cog.average_2x2(a), expected, rtol=1e-6, atol=1e-6, equal_nan=True)  # float32 sums
