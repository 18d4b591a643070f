"""forestcarbon:carbonstock and core.carbon: exact pixel weights, equal-area areas, the Monte Carlo interval
against its analytic bounds, coverage on a simulated scene, conversions, bad input, and the QGIS entry points."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
from affine import Affine

from forest_carbon_plugin.core.carbon.polygons import equal_area_ha
from forest_carbon_plugin.core.carbon.random_field import correlated_field
from forest_carbon_plugin.core.carbon.stock import (
    OUTPUT_FIELDS,
    Allometry,
    BiomassMap,
    CarbonFactors,
    MonteCarlo,
    carbon_stock,
)
from forest_carbon_plugin.core.carbon.tables import CO2_PER_C
from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.raster.coverage import polygon_coverage

UTM = "EPSG:32633"
X0, Y0 = 500_000.0, 5_600_500.0  # top-left of the test rasters (10 m pixels)
FACTOR = 0.47 * 44 / 12  # CO2e per Mg of biomass with the default carbon fraction


def _write_raster(path, data, transform=Affine(10, 0, X0, 0, -10, Y0), crs=UTM, nodata=-9999.0):
    import rasterio

    data = np.asarray(data, dtype="float32")
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype="float32", crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data, 1)
    return str(path)


def _write_polygons(path, geoms, crs=UTM, names=None):
    import geopandas as gpd

    names = names or [f"p{i}" for i in range(len(geoms))]
    gpd.GeoDataFrame({"name": names, "geometry": list(geoms)}, crs=crs).to_file(path, driver="GPKG")
    return str(path)


def _shapes():
    from shapely.geometry import Polygon

    triangle = Polygon([(X0 + 13.7, Y0 - 377.7), (X0 + 377.1, Y0 - 339.1), (X0 + 201.3, Y0 - 68.3)])
    holed = Polygon([(X0 + 55.5, Y0 - 55.5), (X0 + 305.5, Y0 - 55.5), (X0 + 305.5, Y0 - 305.5), (X0 + 55.5, Y0 - 305.5)],
                    [[(X0 + 120.2, Y0 - 120.2), (X0 + 240.9, Y0 - 120.2), (X0 + 240.9, Y0 - 240.9),
                      (X0 + 120.2, Y0 - 240.9)]])
    return triangle, holed


def _geod_area_ha(geom, crs):
    """Independent reference: vertices to WGS 84 lon/lat, then Geod.polygon_area_perimeter on each ring."""
    from pyproj import Geod, Transformer

    t = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    geod = Geod(ellps="WGS84")

    def ring_area(ring):
        lon, lat = t.transform(*np.asarray(ring.coords).T)
        return abs(geod.polygon_area_perimeter(lon, lat)[0])

    return (ring_area(geom.exterior) - sum(ring_area(h) for h in geom.interiors)) / 10_000


# -- 1. hand-checked geometry ---------------------------------------------------------------------

def test_pixel_weights_are_exact_intersection_areas():
    from shapely.geometry import box

    from forest_carbon_plugin.core.raster.grid import Grid

    grid = Grid(UTM, Affine(10, 0, X0, 0, -10, Y0), 50, 50)
    for shape in _shapes():
        r0, c0, frac = polygon_coverage(shape, grid)
        assert frac.sum() * 100 == pytest.approx(shape.area, rel=1e-9)
        # brute force over every pixel of the window
        for r in range(frac.shape[0]):
            for c in range(frac.shape[1]):
                x, y = X0 + 10 * (c0 + c), Y0 - 10 * (r0 + r)
                assert frac[r, c] == pytest.approx(box(x, y - 10, x + 10, y).intersection(shape).area / 100, abs=1e-9)
        assert 0 < frac.min() or (frac == 0).any()  # boundary pixels are fractional, not 0/1
        assert ((frac > 0) & (frac < 1)).sum() > 10


def test_constant_raster_gives_area_times_value_projected_and_geographic(tmp_path):
    from pyproj import Transformer
    from shapely.ops import transform

    agb = _write_raster(tmp_path / "agb.tif", np.full((50, 50), 150.0))
    shapes = _shapes()
    areas = [_geod_area_ha(s, UTM) for s in shapes]
    for s, a in zip(shapes, areas):
        assert equal_area_ha(s, UTM) == pytest.approx(a, rel=1e-6)
    doc = carbon_stock(list(shapes), BiomassMap(agb=agb), projects_crs=UTM, factors=CarbonFactors(root_shoot=0.0))
    for rec, a in zip(doc["records"], areas):
        assert rec["area_ha"] == pytest.approx(a, rel=1e-6)
        assert rec["agb_total_mg"] == pytest.approx(150.0 * a, rel=1e-6)
        assert rec["agb_mean_mg_ha"] == pytest.approx(150.0, rel=1e-9)

    # the same polygons as an EPSG:4326 GeoPackage over the UTM raster: reprojected, with a message
    to_ll = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    ll = [transform(to_ll.transform, s) for s in shapes]
    gpkg = _write_polygons(tmp_path / "ll.gpkg", ll, crs="EPSG:4326")
    doc = carbon_stock(gpkg, BiomassMap(agb=agb), factors=CarbonFactors(root_shoot=0.0))
    assert any("reprojected" in n for n in doc["notes"])
    for rec, a in zip(doc["records"], areas):
        assert rec["area_ha"] == pytest.approx(a, rel=1e-6)
        assert rec["agb_total_mg"] == pytest.approx(150.0 * a, rel=1e-6)

    # a geographic raster (0.0001° cells) under the same 4326 polygons: cell areas from the ellipsoid
    lon0, lat0 = to_ll.transform(X0 - 50, Y0 + 50)
    ll_raster = _write_raster(tmp_path / "ll.tif", np.full((60, 80), 150.0),
                              transform=Affine(0.0001, 0, lon0, 0, -0.0001, lat0), crs="EPSG:4326")
    doc = carbon_stock(gpkg, BiomassMap(agb=ll_raster), factors=CarbonFactors(root_shoot=0.0))
    for rec, a in zip(doc["records"], areas):
        # straight lon/lat edges vs geodesic edges differ by ~1e-5 of the area for ~400 m edges
        assert rec["agb_total_mg"] == pytest.approx(150.0 * a, rel=1e-4)


def test_gradient_raster_is_area_weighted(tmp_path):
    from shapely.geometry import box

    cols = np.tile(np.arange(50, dtype=float), (50, 1))
    agb = _write_raster(tmp_path / "grad.tif", 10 + cols)
    tri, _ = _shapes()
    doc = carbon_stock([tri], BiomassMap(agb=agb), projects_crs=UTM, factors=CarbonFactors(root_shoot=0.0))
    # by hand: Σ value × (pixel ∩ polygon area), scaled from the UTM plane to the ellipsoid
    total = 0.0
    for r in range(50):
        for c in range(50):
            x, y = X0 + 10 * c, Y0 - 10 * r
            total += (10 + c) * box(x, y - 10, x + 10, y).intersection(tri).area / 10_000
    total *= _geod_area_ha(tri, UTM) / (tri.area / 10_000)
    assert doc["records"][0]["agb_total_mg"] == pytest.approx(total, rel=1e-9)


# -- 2. Monte Carlo against the analytic bounds ----------------------------------------------------

def test_mc_interval_between_independent_and_correlated_bounds(tmp_path):
    from shapely.geometry import box

    rng = np.random.default_rng(3)
    sigma = rng.uniform(20, 60, (20, 20))
    agb = _write_raster(tmp_path / "agb.tif", np.full((20, 20), 200.0))
    std = _write_raster(tmp_path / "std.tif", sigma)
    poly = box(X0, Y0 - 200, X0 + 200, Y0)  # exactly the 20 × 20 pixels: w = 1
    k = _geod_area_ha(poly, UTM) / 4.0  # ellipsoid / UTM-plane area
    z = NormalDist().inv_cdf(0.95)
    a = 0.01 * k
    independent = z * math.sqrt(np.sum((sigma * a) ** 2)) * FACTOR
    correlated = z * np.sum(sigma * a) * FACTOR
    half = {}
    for rng_m, n in ((0.0, 40_000), (1e7, 40_000), (100.0, 20_000)):
        doc = carbon_stock([poly], BiomassMap(agb=agb, std=std), projects_crs=UTM, factors=CarbonFactors(root_shoot=0.0),
                           monte_carlo=MonteCarlo(correlation_range_m=rng_m, draws=n, seed=11))
        rec, det = doc["records"][0], doc["details"][0]
        half[rng_m] = det["halfwidth_mc_t"]
        assert det["halfwidth_independent_t"] == pytest.approx(independent, rel=1e-9)
        assert det["halfwidth_correlated_t"] == pytest.approx(correlated, rel=1e-9)
        assert rec["co2e_ci_high_t"] - rec["co2e_ci_low_t"] == pytest.approx(2 * half[rng_m])
        # the MC matches the exact Gaussian value for its range (uᵀΣu)
        assert half[rng_m] == pytest.approx(det["halfwidth_gaussian_t"], rel=0.03)
    assert half[0.0] == pytest.approx(independent, rel=0.03)
    assert half[1e7] == pytest.approx(correlated, rel=0.03)
    assert independent * 1.1 < half[100.0] < correlated * 0.9
    print(f"\nhalf-widths (t CO2e): independent bound {independent:.2f}, MC {half[0.0]:.2f}; range 100 m MC "
          f"{half[100.0]:.2f}; fully correlated bound {correlated:.2f}, MC (range 1e7 m) {half[1e7]:.2f}")


def test_correlated_field_has_the_exponential_correlation():
    f = correlated_field((30, 30), 10.0, 300.0, n=3000, seed=1)
    assert f.shape == (3000, 30, 30)
    assert f.var() == pytest.approx(1.0, abs=0.05)
    for d in (1, 3, 6):
        rho = np.mean(f[:, 10, 10] * f[:, 10, 10 + d])
        assert rho == pytest.approx(math.exp(-3 * 10 * d / 300.0), abs=0.05)
    again = correlated_field((30, 30), 10.0, 300.0, n=3000, seed=1)
    np.testing.assert_array_equal(f, again)  # seeded


def test_results_are_reproducible_with_seed(tmp_path):
    agb = _write_raster(tmp_path / "agb.tif", np.full((50, 50), 100.0))
    std = _write_raster(tmp_path / "std.tif", np.full((50, 50), 30.0))
    shapes = list(_shapes())
    runs = [carbon_stock(shapes, BiomassMap(agb=agb, std=std), projects_crs=UTM, factors=CarbonFactors(root_shoot=0.2),
                         monte_carlo=MonteCarlo(correlation_range_m=80, draws=300, seed=s))["records"] for s in (4, 4, 5)]
    assert runs[0] == runs[1]
    assert runs[0][0]["co2e_ci_low_t"] != runs[2][0]["co2e_ci_low_t"]


# -- 3. coverage on a simulated scene ----------------------------------------------------------------

def scene_truth(imagery_scene):
    """The simulator's true 30 m AGB of ``imagery_scene``: (array, transform, CRS wkt, pixel-centre offsets (n, 2))."""
    import rasterio

    folder, manifest = imagery_scene
    with rasterio.open(folder / manifest["truth"]["agb_30m"]) as src:
        truth = src.read(1).astype(float)
        transform, crs = src.transform, src.crs.to_wkt()
    yy, xx = np.mgrid[0:truth.shape[0], 0:truth.shape[1]] * 30.0
    return truth, transform, crs, np.column_stack([xx.ravel(), yy.ravel()])


def test_interval_covers_true_project_totals_on_simulated_scene(imagery_scene, tmp_path):
    """Noisy AGB = truth (30 m) + Gaussian noise (σ = 40 Mg/ha, exponential correlation, practical range 150 m,
    exact Cholesky draws, independent of the code under test). Nominal coverage 90%; over 10 seeds × the scene's
    projects we require ≥ 80% (the interval also has to absorb the gap between the pixel total and the tree-list
    total: trees are assigned to pixels by stem position)."""
    folder, manifest = imagery_scene
    truth, transform, crs, pts = scene_truth(imagery_scene)
    d = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
    sigma, corr_range = 40.0, 150.0
    chol = np.linalg.cholesky(np.exp(-3 * d / corr_range) + 1e-10 * np.eye(len(pts)))
    std = _write_raster(tmp_path / "std.tif", np.full(truth.shape, sigma), transform, crs)
    projects = manifest["truth"]["projects"]
    hits, cases = 0, 0
    for seed in range(10):
        noise = (chol @ np.random.default_rng(100 + seed).standard_normal(len(pts))).reshape(truth.shape) * sigma
        agb = _write_raster(tmp_path / f"agb_{seed}.tif", truth + noise, transform, crs)
        doc = carbon_stock(str(folder / manifest["projects"]), BiomassMap(agb=agb, std=std), factors=CarbonFactors(root_shoot=0.0),
                           monte_carlo=MonteCarlo(correlation_range_m=corr_range, draws=1000, seed=seed))
        for rec, true in zip(doc["records"], projects):
            low, high = rec["co2e_ci_low_t"] / FACTOR, rec["co2e_ci_high_t"] / FACTOR
            cases += 1
            hits += low <= true["agb_mg"] <= high
    print(f"\ncoverage of the 90% interval: {hits}/{cases}")
    assert cases >= 20
    assert hits / cases >= 0.8


# -- 4. conversions -----------------------------------------------------------------------------------

def test_conversions_by_hand(tmp_path):
    from shapely.geometry import box

    agb = _write_raster(tmp_path / "agb.tif", np.full((20, 20), 120.0))
    poly = box(X0, Y0 - 100, X0 + 100, Y0)
    area = _geod_area_ha(poly, UTM)
    rec = carbon_stock([poly], BiomassMap(agb=agb), projects_crs=UTM, factors=CarbonFactors(root_shoot=0.25))["records"][0]
    assert rec["agb_total_mg"] == pytest.approx(120 * area, rel=1e-9)
    assert rec["biomass_total_mg"] == pytest.approx(120 * area * 1.25, rel=1e-9)
    assert rec["carbon_total_t"] == pytest.approx(120 * area * 1.25 * 0.47, rel=1e-9)
    assert rec["co2e_total_t"] == pytest.approx(120 * area * 1.25 * 0.47 * 44 / 12, rel=1e-9)
    assert CO2_PER_C == 44 / 12
    # IPCC ecozone defaults by mean AGB class: temperate conifer 50-150 → 0.29; < 50 → 0.40
    rec = carbon_stock([poly], BiomassMap(agb=agb), projects_crs=UTM, factors=CarbonFactors(ecozone="temperate_conifer"))["records"][0]
    assert rec["biomass_total_mg"] == pytest.approx(120 * area * 1.29, rel=1e-9)
    low = _write_raster(tmp_path / "low.tif", np.full((20, 20), 40.0))
    rec = carbon_stock([poly], BiomassMap(agb=low), projects_crs=UTM,
                       factors=CarbonFactors(ecozone="temperate_conifer", carbon_fraction=0.5))["records"][0]
    assert rec["carbon_total_t"] == pytest.approx(40 * area * 1.40 * 0.5, rel=1e-9)


def test_height_allometry_and_parameter_draws(tmp_path):
    from shapely.geometry import box

    height = _write_raster(tmp_path / "h.tif", np.full((20, 20), 16.0))
    zero = _write_raster(tmp_path / "zero.tif", np.zeros((20, 20)))
    poly = box(X0, Y0 - 100, X0 + 100, Y0)
    area = _geod_area_ha(poly, UTM)
    doc = carbon_stock([poly], BiomassMap(height=height, allometry=Allometry(model="custom", a=2.0, b=1.5, a_se=0.1),
                                          std=zero),
                       projects_crs=UTM, factors=CarbonFactors(root_shoot=0.0), monte_carlo=MonteCarlo(draws=20_000, seed=2))
    rec = doc["records"][0]
    assert rec["agb_mean_mg_ha"] == pytest.approx(2.0 * 16 ** 1.5, rel=1e-9)  # 128 Mg/ha
    assert rec["agb_total_mg"] == pytest.approx(128 * area, rel=1e-9)
    # only a is uncertain: half-width = z · SE(a) · Σ w H^b
    expected = NormalDist().inv_cdf(0.95) * 0.1 * 16 ** 1.5 * area * FACTOR
    assert doc["details"][0]["halfwidth_mc_t"] == pytest.approx(expected, rel=0.03)
    # the deduction rule: max(0, U − allowed), creditable = total × (1 − deduction/100)
    u = rec["uncertainty_pct"]
    assert u == pytest.approx(100 * expected / rec["co2e_total_t"], rel=0.03)
    assert rec["deduction_pct"] == pytest.approx(max(0.0, u - 10.0))
    assert rec["co2e_creditable_t"] == pytest.approx(rec["co2e_total_t"] * (1 - rec["deduction_pct"] / 100))


# -- 5. bad input -------------------------------------------------------------------------------------

def test_bad_inputs(tmp_path):
    from shapely.geometry import box

    data = np.full((20, 20), 100.0)
    data[0, :5] = -50.0
    agb = _write_raster(tmp_path / "agb.tif", data)
    inside = box(X0, Y0 - 100, X0 + 100, Y0)
    outside = box(X0 + 5000, Y0 - 100, X0 + 5100, Y0)
    html = tmp_path / "r.html"
    doc = carbon_stock([inside, outside], BiomassMap(agb=agb), html, projects_crs=UTM, factors=CarbonFactors(root_shoot=0.0))
    area = _geod_area_ha(inside, UTM)
    rec, out = doc["records"]
    # negative biomass is set to 0, with a warning
    assert rec["agb_total_mg"] == pytest.approx((95 * 100.0) / 100 * area, rel=1e-9)
    assert any("negative AGB" in w for w in doc["warnings"])
    # outside the raster: its area only
    assert out["area_ha"] > 0 and all(out[f] is None for f in OUTPUT_FIELDS if f != "area_ha")
    assert any("outside the raster" in w for w in doc["warnings"])
    # no uncertainty input: no interval, no deduction, and the log says why
    assert all(rec[f] is None for f in ("co2e_ci_low_t", "co2e_ci_high_t", "uncertainty_pct", "deduction_pct",
                                        "co2e_creditable_t"))
    assert any("interval" in w and "NULL" in w for w in doc["warnings"])
    report = json.loads(html.with_suffix(".json").read_text())
    assert report["records"][0]["agb_total_mg"] == pytest.approx(rec["agb_total_mg"])
    assert (tmp_path / "r_map.png").exists() and html.exists()

    bad = tmp_path / "bad.html"
    # the core's errors name its arguments (biomass.upper, correlation_range_m); the adapter's, the parameters
    for biomass, monte_carlo, message in (
            (BiomassMap(agb=agb, lower=agb), MonteCarlo(), "biomass.upper"),
            (BiomassMap(agb=agb), MonteCarlo(correlation_range_m=-5.0), "correlation_range_m"),
            (BiomassMap(agb=agb, height=agb), MonteCarlo(), "not both"),
            (BiomassMap(agb=agb, std=_write_raster(tmp_path / "neg.tif", -data)), MonteCarlo(), "negative")):
        with pytest.raises(ForestCarbonError, match=message):
            carbon_stock([inside], biomass, bad, projects_crs=UTM, factors=CarbonFactors(root_shoot=0.0),
                         monte_carlo=monte_carlo)
        assert not bad.exists() and not bad.with_suffix(".json").exists()


# -- 6. QGIS: processing.run, qgis_process, a .model3 after predictraster ------------------------------

def scene_files(tmp_path):
    """(AGB raster, σ raster, GeoPackage of three projects, the third outside the rasters) written in ``tmp_path``;
    test_scripting uses them too."""
    from shapely.geometry import box

    rng = np.random.default_rng(0)
    agb = _write_raster(tmp_path / "agb.tif", rng.uniform(80, 120, (50, 50)))
    std = _write_raster(tmp_path / "std.tif", np.full((50, 50), 25.0))
    tri, holed = _shapes()
    gpkg = _write_polygons(tmp_path / "projects.gpkg", [tri, holed, box(X0 + 9000, Y0 - 100, X0 + 9100, Y0)])
    return agb, std, gpkg


def _read_layer(path):
    import geopandas as gpd

    return gpd.read_file(path)


def test_processing_run(tmp_path, forestcarbon_provider):
    import processing
    from qgis.core import QgsApplication

    alg = QgsApplication.processingRegistry().algorithmById("forestcarbon:carbonstock")
    assert alg.group() == "Carbon" and alg.groupId() == "carbon"
    help_text = alg.shortHelpString()
    assert "UNVERIFIED" not in help_text and "[V3]" not in help_text  # sources cited by table and page instead
    assert "Table 4.3, p. 4.48" in help_text and "Table 4.4, p. 4.49" in help_text and "“Validation report of the map”" in help_text  # labels, not ids (issue 19 item 14)
    agb, std, gpkg = scene_files(tmp_path)
    out = tmp_path / "carbon.gpkg"
    result = processing.run("forestcarbon:carbonstock", {
        "AGB": agb, "AGB_STD": std, "PROJECTS": gpkg, "ROOT_SHOOT": 0.2, "CORRELATION_RANGE": 50,
        "SIMULATIONS": 500, "SEED": 3, "OUTPUT": str(out), "OUTPUT_REPORT": str(tmp_path / "carbon.html")})
    frame = _read_layer(out)
    assert list(frame.columns[:2]) == ["name", *OUTPUT_FIELDS][:2]
    assert set(OUTPUT_FIELDS) <= set(frame.columns)
    core = carbon_stock(gpkg, BiomassMap(agb=agb, std=std), factors=CarbonFactors(root_shoot=0.2),
                        monte_carlo=MonteCarlo(correlation_range_m=50, draws=500, seed=3))
    for i, rec in enumerate(core["records"][:2]):
        for name in OUTPUT_FIELDS:
            assert frame[name][i] == pytest.approx(rec[name], rel=1e-9)
        assert rec["co2e_ci_low_t"] < rec["co2e_total_t"] < rec["co2e_ci_high_t"]
    assert frame["co2e_total_t"].isna()[2]  # outside: NULL
    assert result["OUTPUT_JSON"].endswith("carbon.json")
    doc = json.loads((tmp_path / "carbon.json").read_text())
    assert doc["settings"]["simulations"] == 500
    assert "map" in (tmp_path / "carbon.html").read_text()


def test_the_output_layer_carries_the_runs_error_model(tmp_path, forestcarbon_provider):
    """The carbonstock GeoPackage holds the run's provenance in its metadata (gpkg_metadata), so that the
    uncertainty dock finds the run's error model without reading JSON files beside the layer."""
    import processing
    from osgeo import ogr

    from forest_carbon_plugin.core.carbon.variogram import recorded_error_model
    from forest_carbon_plugin.core.outputs import PROVENANCE_KEY

    agb, std, gpkg = scene_files(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "reports").mkdir()
    out = tmp_path / "out" / "carbon.gpkg"  # the report's JSON lies in another folder: only the metadata tells
    processing.run("forestcarbon:carbonstock", {
        "AGB": agb, "AGB_STD": std, "PROJECTS": gpkg, "ROOT_SHOOT": 0.2, "CORRELATION_RANGE": 75, "SIMULATIONS": 200,
        "SEED": 7, "OUTPUT": str(out), "OUTPUT_REPORT": str(tmp_path / "reports" / "carbon.html")})
    ds = ogr.Open(str(out))
    record = json.loads(ds.GetLayer(0).GetMetadataItem(PROVENANCE_KEY))
    ds = None
    assert record["algorithm"] == "carbonstock" and record["plugin_version"]
    assert record["parameters"]["CORRELATION_RANGE"] == 75 and record["settings"]["correlation_range_m"] == 75
    model = recorded_error_model(str(out))
    assert (model["range_m"], model["seed"], model["simulations"], model["root_shoot"]) == (75.0, 7, 200, 0.2)
    assert "metadata" in model["source"]
    assert len(_read_layer(out)) == 3  # the layer reads as before


def test_processing_run_without_uncertainty_and_errors(tmp_path, forestcarbon_provider):
    import processing
    from qgis.core import QgsProcessingException

    agb, std, gpkg = scene_files(tmp_path)
    out = tmp_path / "c.gpkg"
    processing.run("forestcarbon:carbonstock", {"AGB": agb, "PROJECTS": gpkg, "ECOZONE": 10, "OUTPUT": str(out),
                                                "OUTPUT_REPORT": str(tmp_path / "c.html")})
    frame = _read_layer(out)
    assert frame["co2e_total_t"].notna()[0] and frame["co2e_ci_low_t"].isna().all()
    assert frame["deduction_pct"].isna().all()
    # VALIDATION_REPORT (the .html; its .json beside it) with CORRELATION_RANGE empty: the range is fitted to it
    from forest_carbon_plugin.core.models.accuracy import semivariogram
    from forest_carbon_plugin.core.carbon.variogram import resolve_correlation_range

    rng = np.random.default_rng(4)
    x, y = rng.uniform(0, 2000, (2, 150))
    residual = np.sin(x / 300.0) * 30 + np.cos(y / 250.0) * 30 + rng.normal(0, 10, 150)
    (tmp_path / "validation.json").write_text(json.dumps({"semivariogram": semivariogram(x, y, residual)}))
    (tmp_path / "validation.html").write_text("<html></html>")
    fitted = processing.run("forestcarbon:carbonstock", {
        "AGB": agb, "AGB_STD": std, "PROJECTS": gpkg, "VALIDATION_REPORT": str(tmp_path / "validation.html"),
        "SIMULATIONS": 200, "OUTPUT": str(tmp_path / "fitted.gpkg"), "OUTPUT_REPORT": str(tmp_path / "fitted.html")})
    settings = json.loads(Path(fitted["OUTPUT_JSON"]).read_text())["settings"]
    expected = resolve_correlation_range(None, tmp_path / "validation.json")
    assert settings["correlation_source"] == "validation_report" == expected["source"]
    assert settings["correlation_range_m"] == expected["range_m"] > 0
    # nothing but the required inputs runs: R = 0 and fully correlated errors, both said in the JSON and the log
    bare = processing.run("forestcarbon:carbonstock", {"AGB": agb, "AGB_STD": std, "PROJECTS": gpkg,
                                                       "OUTPUT": str(tmp_path / "bare.gpkg"),
                                                       "OUTPUT_REPORT": str(tmp_path / "bare.html")})
    settings = json.loads(Path(bare["OUTPUT_JSON"]).read_text())["settings"]
    assert settings["root_shoot"] == 0.0 and settings["correlation_range_m"] is None
    assert settings["simulations"] == 10_000
    assert _read_layer(tmp_path / "bare.gpkg")["co2e_ci_low_t"].notna()[0]
    bad_out = tmp_path / "bad.gpkg"
    with pytest.raises(QgsProcessingException, match="VALIDATION_REPORT"):
        processing.run("forestcarbon:carbonstock", {"AGB": agb, "PROJECTS": gpkg, "OUTPUT": str(bad_out),
                                                    "VALIDATION_REPORT": str(tmp_path / "missing.html"),
                                                    "OUTPUT_REPORT": str(tmp_path / "bad.html")})
    assert not bad_out.exists() and not (tmp_path / "bad.html").exists()


def test_qgis_process_and_model_after_predictraster(tmp_path, qgis_config, qgis_processing):
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource as Source,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
        QgsProcessingParameterNumber,
        QgsProcessingParameterRasterLayer,
        QgsProcessingParameterVectorLayer,
    )

    from processing_provider.compat import NumberType
    from scripts import qgis_env
    from tests.onnx_models import pixel_model

    agb, std, gpkg = scene_files(tmp_path)
    proc, results = qgis_env.run_algorithm("forestcarbon:carbonstock", {
        "AGB": agb, "AGB_STD": std, "PROJECTS": gpkg, "ROOT_SHOOT": 0.2, "SIMULATIONS": 200,
        "OUTPUT": tmp_path / "qp.gpkg", "OUTPUT_REPORT": tmp_path / "qp.html"}, qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    frame = _read_layer(tmp_path / "qp.gpkg")
    assert frame["co2e_total_t"][0] > 0 and frame["co2e_ci_high_t"][0] > frame["co2e_total_t"][0]

    # features → predictraster (mean, log-variance) → carbonstock, as a graphical model run by qgis_process
    data = np.random.default_rng(1).uniform(0, 1, (3, 50, 50)).astype("float32")
    import rasterio

    features = tmp_path / "features.tif"
    with rasterio.open(features, "w", driver="GTiff", width=50, height=50, count=3, dtype="float32", crs=UTM,
                       transform=Affine(10, 0, X0, 0, -10, Y0)) as dst:
        dst.write(data)
    card = {"mlm:input": [{"name": "features"}],
            "mlm:output": [{"name": "mean", "forest_carbon:meaning": "mean"},
                           {"name": "logvar", "forest_carbon:meaning": "log_variance"}]}
    model_file = pixel_model(tmp_path / "agb.onnx", [50.0, 30.0, 20.0], 60.0,
                             log_variance=([0.0, 0.0, 0.0], math.log(20.0 ** 2)), metadata={"model_card": card})
    graph = QgsProcessingModelAlgorithm("carbon chain", "forest")
    graph.addModelParameter(QgsProcessingParameterRasterLayer("features", "Features"),
                            QgsProcessingModelParameter("features"))
    graph.addModelParameter(QgsProcessingParameterFile("model", "Model"), QgsProcessingModelParameter("model"))
    graph.addModelParameter(QgsProcessingParameterVectorLayer("projects", "Projects"),
                            QgsProcessingModelParameter("projects"))
    predict = QgsProcessingModelChildAlgorithm("forestcarbon:predictraster")
    predict.setChildId("predict")
    predict.addParameterSources("INPUT", [Source.fromModelParameter("features")])
    predict.addParameterSources("MODEL", [Source.fromModelParameter("model")])
    outs = {}
    for name, child_out in (("agb", "OUTPUT"), ("agb_std", "OUTPUT_STD")):
        o = QgsProcessingModelOutput(name, name)
        o.setChildOutputName(child_out)
        o.setChildId("predict")
        outs[name] = o
    predict.setModelOutputs(outs)
    graph.addChildAlgorithm(predict)
    carbon = QgsProcessingModelChildAlgorithm("forestcarbon:carbonstock")
    carbon.setChildId("carbon")
    carbon.addParameterSources("AGB", [Source.fromChildOutput("predict", "OUTPUT")])
    carbon.addParameterSources("AGB_STD", [Source.fromChildOutput("predict", "OUTPUT_STD")])
    carbon.addParameterSources("PROJECTS", [Source.fromModelParameter("projects")])
    carbon.addParameterSources("ROOT_SHOOT", [Source.fromStaticValue(0.2)])
    carbon.addParameterSources("SIMULATIONS", [Source.fromStaticValue(200)])
    # an optional model parameter left empty, as the demo leaves it: the child must see "not set", never 0
    graph.addModelParameter(QgsProcessingParameterNumber("correlation_range", "Range", NumberType.Double,
                                                         optional=True),
                            QgsProcessingModelParameter("correlation_range"))
    carbon.addParameterSources("CORRELATION_RANGE", [Source.fromModelParameter("correlation_range")])
    c_outs = {}
    for name, child_out in (("carbon", "OUTPUT"), ("report", "OUTPUT_REPORT")):
        o = QgsProcessingModelOutput(name, name)
        o.setChildOutputName(child_out)
        o.setChildId("carbon")
        c_outs[name] = o
    carbon.setModelOutputs(c_outs)
    carbon.setDependencies([])
    graph.addChildAlgorithm(carbon)
    model3 = tmp_path / "carbon.model3"
    from scripts.make_models import child_id_output_names  # childId:output names on QGIS >= 3.26 too

    assert child_id_output_names(graph).toFile(str(model3))
    target = tmp_path / "model_carbon.gpkg"
    proc = qgis_env.run(["run", str(model3), "--", f"features={features}", f"model={model_file}",
                         f"projects={gpkg}", "correlation_range=", f"predict:agb={tmp_path / 'pred.tif'}",
                         f"predict:agb_std={tmp_path / 'pred_std.tif'}", f"carbon:carbon={target}",
                         f"carbon:report={tmp_path / 'model.html'}"], qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    frame = _read_layer(target)
    expected = carbon_stock(gpkg, BiomassMap(agb=str(tmp_path / "pred.tif"), std=str(tmp_path / "pred_std.tif")),
                            factors=CarbonFactors(root_shoot=0.2), monte_carlo=MonteCarlo(draws=200))["records"]
    settings = json.loads((tmp_path / "model.json").read_text())["settings"]
    assert settings["correlation_source"] == "conservative (not set)" and settings["correlation_range_m"] is None
    for i in range(2):
        assert frame["co2e_total_t"][i] == pytest.approx(expected[i]["co2e_total_t"], rel=1e-6)
        assert frame["co2e_ci_low_t"][i] == pytest.approx(expected[i]["co2e_ci_low_t"], rel=1e-6)
        assert frame["agb_mean_mg_ha"][i] > 60  # the model's mean is 60 + 100 × U(0, 1) on average
