"""lidar.catalog: headers read up front, points tile by tile, an extent restricting the tiles (lidR's
readLAScatalog / clip), checked against laspy's own reading of the same files."""

import numpy as np
import pytest

from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.lidar.catalog import open_catalog, read_tile, restrict

from ...conftest import SAMPLE_LAZ, shared_file
from .clouds import random_cloud, write_las

laspy = pytest.importorskip("laspy")


@pytest.fixture
def two_tiles(tmp_path):
    """Two 40 m tiles side by side (west 500000-500040, east 500040-500080), 1,000 and 1,500 points."""
    folder = tmp_path / "tiles"
    folder.mkdir()
    west = random_cloud(1000, seed=1)
    east = random_cloud(1500, seed=2, x0=500_040.0)
    write_las(folder / "a_west.las", *west)
    write_las(folder / "b_east.laz", *east)
    return folder, west, east


def test_open_catalog_reads_the_headers(two_tiles):
    folder, west, east = two_tiles
    catalog = open_catalog(folder)
    assert len(catalog.tiles) == 2 and catalog.point_count == 2500
    assert catalog.crs == "EPSG:32633"
    x = np.concatenate([west[0], east[0]])
    y = np.concatenate([west[1], east[1]])
    assert catalog.bounds == pytest.approx((x.min(), y.min(), x.max(), y.max()), abs=1e-6)


def test_read_tile_returns_what_laspy_reads(two_tiles):
    folder, _, east = two_tiles
    path = folder / "b_east.laz"
    pts = read_tile(path, ("x", "y", "z", "return_number"), chunk_points=400)  # several chunks
    las = laspy.read(path)
    for name in ("x", "y", "z"):
        assert np.array_equal(pts[name], np.asarray(getattr(las, name)))
    np.testing.assert_allclose(pts["x"], east[0], atol=1e-6)
    np.testing.assert_allclose(pts["z"], east[2], atol=1e-6)
    assert (pts["return_number"] == 1).all()


def test_read_tile_on_the_bundled_sample():
    las = laspy.read(SAMPLE_LAZ)
    pts = read_tile(SAMPLE_LAZ, ("x", "y", "z", "classification"), chunk_points=30_000)
    assert len(pts["x"]) == las.header.point_count == 85_363
    assert np.array_equal(pts["z"], np.asarray(las.z))
    assert np.array_equal(pts["classification"], np.asarray(las.classification))


def test_restrict_keeps_the_tiles_an_extent_overlaps(two_tiles):
    folder, _, _ = two_tiles
    catalog = open_catalog(folder)
    x0, y0, x1, y1 = catalog.bounds
    inner, overlap = restrict(catalog, (500_050.0, 4_200_010.0, 500_060.0, 4_200_020.0))
    assert [t.path.endswith("b_east.laz") for t in inner.tiles] == [True]
    assert overlap == (500_050.0, 4_200_010.0, 500_060.0, 4_200_020.0)
    both, overlap = restrict(catalog, (499_000.0, 4_200_010.0, 500_045.0, 4_300_000.0))
    assert len(both.tiles) == 2 and overlap == (x0, 4_200_010.0, 500_045.0, y1)
    same, overlap = restrict(catalog, None)
    assert same is catalog and overlap == catalog.bounds
    with pytest.raises(ForestCarbonError, match="outside the requested extent"):
        restrict(catalog, (0.0, 0.0, 10.0, 10.0))


def test_restrict_transforms_an_extent_in_another_crs(two_tiles):
    pyproj = pytest.importorskip("pyproj")
    folder, _, _ = two_tiles
    catalog = open_catalog(folder)
    to_wgs84 = pyproj.Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    lon0, lat0 = to_wgs84.transform(500_050.0, 4_200_010.0)
    lon1, lat1 = to_wgs84.transform(500_060.0, 4_200_020.0)
    inner, (ix0, iy0, ix1, iy1) = restrict(catalog, (lon0, lat0, lon1, lat1), "EPSG:4326")
    assert len(inner.tiles) == 1
    assert ix0 == pytest.approx(500_050.0, abs=0.5) and iy1 == pytest.approx(4_200_020.0, abs=0.5)


def test_a_file_without_crs_needs_one(tmp_path):
    path = write_las(tmp_path / "nocrs.las", *random_cloud(10, seed=3), epsg=None)
    with pytest.raises(ForestCarbonError, match="No CRS"):
        open_catalog(path)
    assert open_catalog(path, crs="EPSG:26910").crs == "EPSG:26910"


def test_a_truncated_file_is_named(tmp_path):
    path = write_las(tmp_path / "whole.las", *random_cloud(500, seed=4))
    cut = tmp_path / "cut.las"
    cut.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(ForestCarbonError, match="cut.las' is truncated or corrupt"):
        read_tile(cut)


def test_real_files_of_the_shared_data():
    path = shared_file("lidar", "MixedConifer.laz")
    catalog = open_catalog(path)
    assert catalog.point_count == 37_657 and catalog.epsg == 26912  # lidR's bundled file (its header)
    x0, y0, x1, y1 = catalog.bounds
    assert (x0, x1) == pytest.approx((481_260.0, 481_349.99)) and (y0, y1) == pytest.approx((3_812_921.09, 3_813_010.99))
