"""plotmetrics: lidR's plot_metrics against points selected and measured independently."""

from __future__ import annotations

import laspy
import numpy as np
import pytest

from tests.conftest import shared_file
from tests.processing.lidar.test_canopy_metrics import _independent_metrics


def _layer(path, geometries, crs="EPSG:26910", fields=None):
    """A GeoPackage of plots written with geopandas (plot_id plus optional fields)."""
    import geopandas as gpd

    data = {"plot_id": list(range(1, len(geometries) + 1))}
    data.update(fields or {})
    gpd.GeoDataFrame(data, geometry=geometries, crs=crs).to_file(path, driver="GPKG")
    return str(path)


def _run(cloud, plots, out, **params):
    import processing

    args = {"INPUT": str(cloud), "PLOTS": plots, "RADIUS": 11.28, "NORMALIZE": 2, "OUTPUT": str(out)}
    args.update(params)
    return processing.run("forestcarbon:plotmetrics", args)


def _features(path):
    from qgis.core import QgsVectorLayer

    layer = QgsVectorLayer(str(path), "plots")
    assert layer.isValid()
    rows = [{f.name(): feature[f.name()] for f in layer.fields()} for feature in layer.getFeatures()]
    del layer
    return rows


def test_mixedconifer_plots_equal_independent_selection(tmp_path, forestcarbon_provider):
    from shapely.geometry import Point, Polygon

    cloud = shared_file("lidar", "MixedConifer.laz")
    las = laspy.read(cloud)
    x, y, z = np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)
    first = np.asarray(las.return_number) == 1
    cx, cy = (x.min() + x.max()) / 2, (y.min() + y.max()) / 2
    centres = [(cx, cy), (cx - 40, cy + 25), (cx + 33.3, cy - 41.7)]
    square = Polygon([(cx + 10, cy + 10), (cx + 40, cy + 10), (cx + 40, cy + 35), (cx + 10, cy + 35)])
    crs = las.header.parse_crs().to_wkt()
    plots = _layer(tmp_path / "plots.gpkg", [Point(c) for c in centres], crs=crs)
    out = tmp_path / "metrics.gpkg"
    _run(cloud, plots, out)
    rows = _features(out)
    assert [r["plot_id"] for r in rows] == [1, 2, 3]
    for row, (px, py) in zip(rows, centres):
        inside = (x - px) ** 2 + (y - py) ** 2 <= 11.28 ** 2
        expected = _independent_metrics(z[inside])
        assert row["n"] == inside.sum() > 100
        for name, value in expected.items():
            assert row[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
        assert row["cover"] == pytest.approx(100 * np.mean(z[inside & first] > 2), rel=1e-9)
        assert row["pulse_density"] == pytest.approx((inside & first).sum() / (np.pi * 11.28 ** 2), rel=1e-9)
    polygons = _layer(tmp_path / "square.gpkg", [square], crs=crs)
    rows = _features(_run(cloud, polygons, tmp_path / "square_metrics.gpkg")["OUTPUT"])
    inside = (x >= cx + 10) & (x <= cx + 40) & (y >= cy + 10) & (y <= cy + 35)
    assert rows[0]["n"] == inside.sum()
    assert rows[0]["zq95"] == pytest.approx(np.percentile(z[inside], 95), rel=1e-6)
    assert rows[0]["point_density"] == pytest.approx(inside.sum() / (30 * 25), rel=1e-9)


def test_plots_across_tiles_equal_the_merged_file(tmp_path, forestcarbon_provider, bcts_catalog):
    from shapely.geometry import Point

    folder, tiles, merged = bcts_catalog
    bounds = [laspy.open(t).header for t in tiles]
    edges_x = sorted({round(h.maxs[0], 2) for h in bounds})[:-1]
    edges_y = sorted({round(h.maxs[1], 2) for h in bounds})[:-1]
    crs = bounds[0].parse_crs().to_wkt()
    # centres on tile edges and on the corner shared by four tiles
    centres = [(edges_x[0], (bounds[0].mins[1] + bounds[0].maxs[1]) / 2), (edges_x[0], edges_y[0])]
    plots = _layer(tmp_path / "edge.gpkg", [Point(c) for c in centres], crs=crs)
    a = _features(_run(folder, plots, tmp_path / "catalog.gpkg", RADIUS=15)["OUTPUT"])
    b = _features(_run(merged, plots, tmp_path / "merged.gpkg", RADIUS=15)["OUTPUT"])
    assert a == b
    assert all(r["n"] > 0 for r in a)


def test_bad_and_awkward_input(tmp_path, forestcarbon_provider):
    from qgis.core import QgsProcessingException
    from shapely.geometry import Point

    cloud = shared_file("lidar", "MixedConifer.laz")
    las = laspy.open(cloud)
    header = las.header
    cx, cy = (header.mins[0] + header.maxs[0]) / 2, (header.mins[1] + header.maxs[1]) / 2
    crs = header.parse_crs()
    # plots given in WGS 84: reprojected; one plot far outside the cloud: n = 0, empty metrics
    import pyproj

    to_wgs = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    inside_ll = to_wgs.transform(cx, cy)
    outside_ll = to_wgs.transform(cx + 5000, cy)
    plots = _layer(tmp_path / "ll.gpkg", [Point(inside_ll), Point(outside_ll)], crs="EPSG:4326")
    rows = _features(_run(cloud, plots, tmp_path / "ll_metrics.gpkg")["OUTPUT"])
    direct = _features(_run(cloud, _layer(tmp_path / "utm.gpkg", [Point(cx, cy)], crs=crs.to_wkt()),
                            tmp_path / "utm_metrics.gpkg")["OUTPUT"])
    assert rows[0]["n"] == direct[0]["n"] and rows[0]["zmean"] == pytest.approx(direct[0]["zmean"], rel=1e-6)
    assert rows[1]["n"] == 0 and rows[1]["zmax"] is None or str(rows[1]["zmax"]) == "NULL"
    with pytest.raises(QgsProcessingException, match="radius must be greater than 0"):
        _run(cloud, plots, tmp_path / "zero.gpkg", RADIUS=0)
    assert not (tmp_path / "zero.gpkg").exists()


def test_qgis_process(tmp_path, qgis_config):
    from shapely.geometry import Point

    from scripts import qgis_env

    from tests.conftest import SAMPLE_LAZ

    header = laspy.open(SAMPLE_LAZ).header
    cx, cy = (header.mins[0] + header.maxs[0]) / 2, (header.mins[1] + header.maxs[1]) / 2
    plots = _layer(tmp_path / "p.gpkg", [Point(cx, cy)], crs="EPSG:32633")
    proc, results = qgis_env.run_algorithm("forestcarbon:plotmetrics", {
        "INPUT": SAMPLE_LAZ, "PLOTS": plots, "RADIUS": 10, "OUTPUT": tmp_path / "out.gpkg"}, qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import geopandas as gpd

    table = gpd.read_file(tmp_path / "out.gpkg")
    las = laspy.read(SAMPLE_LAZ)
    inside = (np.asarray(las.x) - cx) ** 2 + (np.asarray(las.y) - cy) ** 2 <= 100
    assert int(table["n"][0]) == inside.sum() > 0
