"""carbonstock's defaults (issue 19, items 5-7): the error-correlation range fitted from a validation report or,
with none, fully correlated errors; make_valid repairs; negative totals censored; the dock's recorded range.
Core-level tests (no QGIS): every number against a hand computation or a second method written here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from affine import Affine

from forest_carbon_plugin.core.carbon.stock import BiomassMap, CarbonFactors, MonteCarlo, carbon_stock
from forest_carbon_plugin.core.carbon.tables import CO2_PER_C, DEFAULT_CARBON_FRACTION
from forest_carbon_plugin.core.models.accuracy import semivariogram
from forest_carbon_plugin.core.carbon.variogram import (
    MIN_PAIRS,
    merge_lag_classes,
    recorded_error_model,
    resolve_correlation_range,
)

UTM = "EPSG:32633"
X0, Y0 = 500000.0, 6000000.0
FACTOR = DEFAULT_CARBON_FRACTION * CO2_PER_C
Z90 = 1.6448536269514722


def _raster(path, data, transform=Affine(10, 0, X0, 0, -10, Y0), crs=UTM):
    import rasterio

    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype="float64", crs=crs, transform=transform, nodata=-9999.0) as dst:
        dst.write(np.asarray(data, dtype="float64"), 1)
    return str(path)


def _report(path, x, y, residual):
    """A validatepredictions-style JSON holding the residual semivariogram (the part carbonstock reads)."""
    vario = semivariogram(x, y, residual, n_lags=15)
    path.write_text(json.dumps({"semivariogram": vario,
                                "provenance": {"parameters": {"PREDICTION": str(path.parent / "agb.tif")}}}))
    return path


def _exponential_field(points, practical_range, rng):
    d = np.hypot(points[:, None, 0] - points[None, :, 0], points[:, None, 1] - points[None, :, 1])
    chol = np.linalg.cholesky(np.exp(-3.0 * d / practical_range) + 1e-9 * np.eye(len(points)))
    return chol @ rng.standard_normal(len(points))


def test_merge_lag_classes_by_hand():
    lag, gamma, pairs = merge_lag_classes([10, 20, 30, 40, 50], [1.0, 2.0, 3.0, 4.0, 5.0], [10, 25, 40, 5, 3],
                                          min_pairs=30)
    # 10+25 = 35 pairs: lag (100+500)/35, γ (10+50)/35; 40 pairs; the short tail (8) joins the class before it
    assert pairs.tolist() == [35, 48]
    assert lag[0] == pytest.approx(600 / 35) and gamma[0] == pytest.approx(60 / 35)
    assert lag[1] == pytest.approx((1200 + 200 + 150) / 48) and gamma[1] == pytest.approx((120 + 20 + 15) / 48)


def test_the_range_fitted_from_a_report_recovers_the_simulated_range(tmp_path):
    """400 residuals drawn with an exact exponential covariance (Cholesky, practical range 300 m) on a 2 km square:
    the fitted practical range lies within a factor 1.6 of 300 m; the log gives nugget, sill and pairs."""
    rng = np.random.default_rng(7)
    pts = rng.uniform(0, 2000, (400, 2))
    res = 40.0 * _exponential_field(pts, 300.0, rng)
    report = _report(tmp_path / "validation_report.json", pts[:, 0], pts[:, 1], res)
    notes = []
    got = resolve_correlation_range(None, tmp_path / "validation_report.html", note=notes.append, warn=notes.append)
    assert got["source"] == "validation_report"
    assert 300 / 1.6 < got["range_m"] < 300 * 1.6
    fit = got["variogram"]
    assert min(fit["pairs"]) >= MIN_PAIRS and fit["n_points"] == 400
    assert "nugget" in notes[0] and "sill" in notes[0] and f"{fit['n_pairs']} pairs" in notes[0]
    # an explicit range wins over the report, and 0 is allowed with a warning
    warnings = []
    assert resolve_correlation_range(0.0, report, warn=warnings.append)["range_m"] == 0.0
    assert "independent" in warnings[0]
    # not a report: a clear error
    bad = tmp_path / "other.json"
    bad.write_text("{}")
    from forest_carbon_plugin.core.errors import ForestCarbonError

    with pytest.raises(ForestCarbonError, match="not a validatepredictions report"):
        resolve_correlation_range(None, bad)


def test_a_flat_semivariogram_keeps_the_fully_correlated_bound(tmp_path):
    """Independent residuals (no range for the plots to see): the report shows no range, and no range is taken
    from it (the old rule, the shortest class distance, gave the demo's seed 5 a 155 m range and an interval
    that missed a project's true total); the warning says why."""
    rng = np.random.default_rng(5)
    pts = rng.uniform(0, 2000, (200, 2))
    _report(tmp_path / "validation_report.json", pts[:, 0], pts[:, 1], 40.0 * rng.standard_normal(200))
    warnings = []
    got = resolve_correlation_range(None, tmp_path / "validation_report.json", warn=warnings.append)
    fit = got["variogram"]
    assert fit["nugget_ratio"] > 0.9 or fit["practical_range"] < fit["lag"][0]
    assert got["range_m"] == math.inf and got["source"].startswith("conservative")
    assert "show no range" in warnings[0] and "FULLY CORRELATED" in warnings[0]


def test_defaults_give_the_fully_correlated_bound_and_zero_the_independent_one(tmp_path):
    """Nothing but the required inputs: the run succeeds, R = 0 and the errors are fully correlated, so the
    half-width is z·Σ(w·a·σ) (hand computation: 100 whole 10 m pixels of σ 30 Mg/ha = 0.01 ha each); with
    CORRELATION_RANGE 0 it is z·√Σ(w·a·σ)² — both within Monte Carlo noise (10,000 draws: ~1.5 %)."""
    from shapely.geometry import box

    agb = _raster(tmp_path / "agb.tif", np.full((20, 20), 200.0))
    std = _raster(tmp_path / "std.tif", np.full((20, 20), 30.0))
    poly = box(X0 + 50, Y0 - 150, X0 + 150, Y0 - 50)  # 10 × 10 pixels
    doc = carbon_stock([poly], BiomassMap(agb=agb, std=std), projects_crs=UTM, monte_carlo=MonteCarlo(seed=1))
    rec, det = doc["records"][0], doc["details"][0]
    u = 100 * 0.01 * 30.0  # Σ w·a·σ in Mg (planar; the ellipsoid's scale is in det)
    scale = rec["area_ha"] / 1.0
    assert doc["settings"]["simulations"] == 10_000
    assert doc["settings"]["correlation_range_m"] is None and "fully" in doc["settings"]["correlation_model"]
    assert doc["settings"]["root_shoot"] == 0.0
    assert any("FULLY CORRELATED" in w for w in doc["warnings"]) and any("ABOVE-GROUND" in w for w in doc["warnings"])
    assert det["halfwidth_mc_t"] == pytest.approx(Z90 * u * scale * FACTOR, rel=0.03)
    assert det["halfwidth_mc_t"] == pytest.approx(det["halfwidth_correlated_t"], rel=0.03)
    doc0 = carbon_stock([poly], BiomassMap(agb=agb, std=std), projects_crs=UTM,
                        monte_carlo=MonteCarlo(seed=1, correlation_range_m=0.0))
    assert doc0["details"][0]["halfwidth_mc_t"] == pytest.approx(Z90 * math.sqrt(100) * 0.3 * scale * FACTOR,
                                                                 rel=0.03)
    assert any("independent" in w for w in doc0["warnings"])


def test_a_bowtie_keeps_both_lobes_and_reports_its_area(tmp_path):
    from shapely.geometry import Polygon

    agb = _raster(tmp_path / "agb.tif", np.full((40, 40), 100.0))
    # two triangles (base 100 m, height 50 m: 0.25 ha each) meeting at (X0+100, Y0-100); buffer(0) kept one
    bowtie = Polygon([(X0 + 50, Y0 - 50), (X0 + 150, Y0 - 150), (X0 + 150, Y0 - 50), (X0 + 50, Y0 - 150)])
    assert not bowtie.is_valid
    doc = carbon_stock([bowtie], BiomassMap(agb=agb), projects_crs=UTM, factors=CarbonFactors(root_shoot=0.0))
    rec, repair = doc["records"][0], doc["details"][0]["repair"]
    k = 0.9996 ** -2  # UTM's central scale: the ellipsoidal area of 1 planar ha, ±1e-3 at this easting
    assert rec["area_ha"] == pytest.approx(0.5 * k, rel=2e-3)
    assert bowtie.buffer(0).area == pytest.approx(2500.0)  # what the earlier repair kept: one lobe
    assert rec["agb_total_mg"] == pytest.approx(100.0 * rec["area_ha"], rel=1e-6)
    assert repair["area_repaired_ha"] == rec["area_ha"] and repair["area_as_drawn_ha"] == pytest.approx(0, abs=1e-3)
    assert any("make_valid" in w and "after repair" in w for w in doc["warnings"])


def test_negative_predictions_never_give_a_negative_stock_or_bound(tmp_path):
    """Negative AGB pixels count as 0 in the total and simulated totals below 0 are censored: a polygon of
    -20 Mg/ha with σ 50 has total 0 and a 90 % interval [0, q95] where q95 = z·Σu (fully correlated, by hand)."""
    from shapely.geometry import box

    agb = _raster(tmp_path / "agb.tif", np.full((20, 20), -20.0))
    std = _raster(tmp_path / "std.tif", np.full((20, 20), 50.0))
    poly = box(X0 + 50, Y0 - 150, X0 + 150, Y0 - 50)
    doc = carbon_stock([poly], BiomassMap(agb=agb, std=std), projects_crs=UTM, factors=CarbonFactors(root_shoot=0.0),
                       monte_carlo=MonteCarlo(seed=2))
    rec = doc["records"][0]
    assert rec["co2e_total_t"] == 0.0 and rec["co2e_ci_low_t"] == 0.0
    assert rec["co2e_ci_high_t"] == pytest.approx(Z90 * 100 * 0.01 * 50.0 * rec["area_ha"] * FACTOR, rel=0.04)
    assert doc["details"][0]["negative_draws"] > 0 and any("censored at 0" in w for w in doc["warnings"])


def test_the_dock_finds_the_error_model_of_the_carbonstock_run(tmp_path):
    """The range the dock starts from: the carbonstock JSON written for the output layer, else the fit of the
    prediction's validation report found beside it (the same function carbonstock uses)."""
    from shapely.geometry import box

    agb = _raster(tmp_path / "agb.tif", np.full((20, 20), 150.0))
    out = tmp_path / "project_carbon.gpkg"
    assert recorded_error_model(out, agb) is None
    rng = np.random.default_rng(3)
    pts = rng.uniform(0, 2000, (120, 2))
    _report(tmp_path / "validation_report.json", pts[:, 0], pts[:, 1], 30 * _exponential_field(pts, 400.0, rng))
    from_report = recorded_error_model(out, agb)
    assert from_report["range_m"] == resolve_correlation_range(None, tmp_path / "validation_report.json")["range_m"]
    carbon_stock([box(X0, Y0 - 100, X0 + 100, Y0)], BiomassMap(agb=agb), tmp_path / "carbon_report.html",
                 projects_crs=UTM, factors=CarbonFactors(root_shoot=0.0),
                 monte_carlo=MonteCarlo(correlation_range_m=250.0, seed=9, draws=500), parameters={"OUTPUT": str(out)})
    recorded = recorded_error_model(str(out) + "|layername=project_carbon", agb)
    assert (recorded["range_m"], recorded["seed"], recorded["simulations"]) == (250.0, 9, 500)


def test_intervals_from_a_validation_report_cover_the_true_totals(imagery_scene, tmp_path):
    """The acceptance property at test size: AGB = truth + correlated noise (exact Cholesky, practical range
    150 m, σ 40 Mg/ha); 40 'validation plots' at random pixels give the residuals of the report; carbonstock with
    its defaults plus VALIDATION_REPORT must cover the true project totals at ≥ 80 % over 6 seeds × projects
    (nominal 90 %)."""
    from tests.processing.carbon.test_carbon import scene_truth

    folder, manifest = imagery_scene
    truth, transform, crs, pts = scene_truth(imagery_scene)
    rows, cols = truth.shape
    std = _raster(tmp_path / "std.tif", np.full(truth.shape, 40.0), transform, crs)
    projects = manifest["truth"]["projects"]
    hits = cases = 0
    for seed in range(6):
        rng = np.random.default_rng(200 + seed)
        noise = 40.0 * _exponential_field(pts, 150.0, rng).reshape(truth.shape)
        agb = _raster(tmp_path / f"agb_{seed}.tif", truth + noise, transform, crs)
        plots = rng.choice(rows * cols, 40, replace=False)
        report = _report(tmp_path / f"validation_{seed}.json", pts[plots, 0], pts[plots, 1], noise.ravel()[plots])
        doc = carbon_stock(str(folder / manifest["projects"]), BiomassMap(agb=agb, std=std),
                           monte_carlo=MonteCarlo(validation_report=report, draws=2000, seed=seed))
        assert doc["settings"]["correlation_source"] != "parameter"
        for rec, true in zip(doc["records"], projects):
            cases += 1
            hits += rec["co2e_ci_low_t"] / FACTOR <= true["agb_mg"] <= rec["co2e_ci_high_t"] / FACTOR
    print(f"\ncoverage with the report's range: {hits}/{cases}")
    assert cases >= 12 and hits / cases >= 0.8
