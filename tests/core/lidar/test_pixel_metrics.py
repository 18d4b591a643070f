"""lidar.pixel_metrics.compute_metrics: lidR's pixel_metrics(las, .stdmetrics_z, res) over a catalog,
against lidR's own values on MixedConifer.laz and against numpy per cell on a two-tile catalog (a catalog
must give the values of the same points merged into one file)."""

import csv

import numpy as np
import pytest

from forest_carbon_plugin.core.lidar.catalog import open_catalog, read_tile
from forest_carbon_plugin.core.lidar.metrics import STDMETRICS_Z, metric_names
from forest_carbon_plugin.core.lidar.pixel_metrics import compute_metrics
from forest_carbon_plugin.core.progress import NullProgress
from forest_carbon_plugin.core.raster.grid import Grid

from ...conftest import shared_file
from .clouds import LIDR_REFERENCE, random_cloud, write_las


def _metrics(source, res, normalize="never"):
    catalog = open_catalog(source)
    grid = Grid.covering(*catalog.bounds, res)
    bands = metric_names()
    values = compute_metrics(catalog, grid, bands, 2.0, False, normalize, 1, NullProgress())
    return grid, {name: values[k].reshape(grid.shape) for k, name in enumerate(bands)}


@pytest.mark.shared
def test_equals_lidr_on_mixedconifer():
    grid, ours = _metrics(shared_file("lidar", "MixedConifer.laz"), 20.0)
    rows = list(csv.DictReader((LIDR_REFERENCE / "MixedConifer_stdmetrics_z_20m.csv").open()))
    assert len(rows) == 25
    for row in rows:  # x, y: the cell centre
        r, c = grid.rows([float(row["y"])])[0], grid.cols([float(row["x"])])[0]
        for name in STDMETRICS_Z:
            if row[name] == "NA":
                assert np.isnan(ours[name][r, c]), (row["x"], row["y"], name)
            else:
                assert ours[name][r, c] == pytest.approx(float(row[name]), rel=1e-6, abs=1e-9), (row["x"], name)
    for row in csv.DictReader((LIDR_REFERENCE / "MixedConifer_cover_first_gt2m_20m.csv").open()):
        r, c = grid.rows([float(row["y"])])[0], grid.cols([float(row["x"])])[0]
        assert ours["cover"][r, c] == pytest.approx(100 * float(row["cover_gt2"]), rel=1e-6)


def test_a_two_tile_catalog_against_numpy_per_cell(tmp_path):
    """Tiles of 40 m cut by 15 m cells: cells straddling the tile edge gather points from both."""
    folder = tmp_path / "tiles"
    folder.mkdir()
    west = random_cloud(3000, seed=40)
    east = random_cloud(2500, seed=41, x0=500_040.0)
    rn = np.random.default_rng(42).integers(1, 3, 5500)
    write_las(folder / "west.laz", *west, return_number=rn[:3000])
    write_las(folder / "east.laz", *east, return_number=rn[3000:])
    grid, ours = _metrics(folder, 15.0)
    x, y, z = (np.concatenate([a, b]) for a, b in zip(west, east))
    row = np.minimum(np.floor((grid.ymax - y) / 15.0).astype(int), grid.nrows - 1)
    col = np.minimum(np.floor((x - grid.xmin) / 15.0).astype(int), grid.ncols - 1)
    checked = 0
    for r in range(grid.nrows):
        for c in range(grid.ncols):
            mine = (row == r) & (col == c)
            if not mine.any():
                assert np.isnan(ours["n"][r, c])
                continue
            cz, first = z[mine], rn[mine] == 1
            assert ours["n"][r, c] == mine.sum()
            assert ours["zmean"][r, c] == pytest.approx(cz.mean(), rel=1e-12)
            assert ours["zmax"][r, c] == cz.max()
            assert ours["zq95"][r, c] == pytest.approx(np.quantile(cz, 0.95), rel=1e-12)
            assert ours["pzabove2"][r, c] == pytest.approx(100 * np.mean(cz > 2), rel=1e-12)
            assert ours["cover"][r, c] == pytest.approx(100 * np.mean(cz[first] > 2), rel=1e-12)
            assert ours["pulse_density"][r, c] == pytest.approx(first.sum() / 225.0)
            checked += 1
    assert checked == grid.size - np.isnan(ours["n"]).sum() and checked >= 18
    # the same points in one file give the same values, band for band
    write_las(tmp_path / "merged.laz", x, y, z, return_number=rn)
    _, merged = _metrics(tmp_path / "merged.laz", 15.0)
    for name in metric_names():
        np.testing.assert_array_equal(merged[name], ours[name], err_msg=name)


def test_heights_normalized_against_the_ground(tmp_path):
    """A sloping terrain with class-2 ground points: "auto" subtracts the ground TIN (elevations look
    unnormalized), so the heights of the vegetation points come back."""
    rng = np.random.default_rng(43)
    gx, gy = rng.uniform(0, 40, 2000), rng.uniform(0, 40, 2000)
    vx, vy = rng.uniform(1, 39, 1000), rng.uniform(1, 39, 1000)
    height = np.round(rng.uniform(3, 25, 1000), 2)
    ground = lambda x, y: 300.0 + 0.5 * x + 0.25 * y  # noqa: E731 (a plane: the TIN is exact on it)
    x = np.round(np.concatenate([gx, vx]) + 600_000, 2)
    y = np.round(np.concatenate([gy, vy]) + 5_000_000, 2)
    z = np.round(np.concatenate([ground(gx, gy), ground(vx, vy) + height]), 2)
    cls = np.r_[np.full(2000, 2), np.full(1000, 1)]
    path = write_las(tmp_path / "terrain.las", x, y, z, classification=cls)
    grid, ours = _metrics(path, 20.0, normalize="auto")
    heights = np.concatenate([np.zeros(2000), height])
    row = np.minimum(np.floor((grid.ymax - y) / 20.0).astype(int), grid.nrows - 1)
    col = np.minimum(np.floor((x - grid.xmin) / 20.0).astype(int), grid.ncols - 1)
    for r, c in zip(*np.nonzero(np.isfinite(ours["n"]))):
        mine = (row == r) & (col == c)
        assert ours["n"][r, c] == mine.sum()
        # a plane's TIN is exact: heights are off by the 1 cm rounding of the file's coordinates only
        assert ours["zmean"][r, c] == pytest.approx(heights[mine].mean(), abs=0.01)
        assert ours["zmax"][r, c] == pytest.approx(heights[mine].max(), abs=0.02)
    assert np.nansum(ours["n"]) == 3000
    assert read_tile(path)["z"].min() > 299.0  # the file holds elevations: the heights came from the ground
