"""forestcarbon:trainmodel: sampling, spatial CV, conformal calibration, ONNX export (issue 7)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling

from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.models.conformal import conformal_factor, conformal_scores
from forest_carbon_plugin.core.models.fit import QuantileGBM, RandomForest, predict_intervals
from forest_carbon_plugin.core.models.folds import cross_validate, random_folds, spatial_folds
from forest_carbon_plugin.core.models.sampling import sample_training_data
from forest_carbon_plugin.core.models.train import TrainSettings, train_model

FAST_GBM = {"n_estimators": 60, "learning_rate": 0.15}
CRS = "EPSG:32633"


def _write(path, data, res=30.0, x0=500_000.0, y0=6_000_000.0, nodata=None, descriptions=None):
    data = np.asarray(data, dtype=np.float32)
    data = data[None] if data.ndim == 2 else data
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype="float32", crs=CRS, transform=Affine(res, 0, x0, 0, -res, y0), nodata=nodata) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or []):
            dst.set_band_description(i + 1, d)
    return path


def _smooth(rng, shape, sigma):
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.normal(size=shape), sigma, mode="wrap")
    return (field - field.mean()) / field.std()


@pytest.fixture
def synthetic(tmp_path):
    """40×40 pixels of 30 m: three smooth feature fields and a target that depends on them."""
    rng = np.random.default_rng(3)
    f = np.stack([_smooth(rng, (40, 40), 3) for _ in range(3)])
    target = 10 + 4 * f[0] + 2 * f[1] ** 2 + rng.normal(0, 0.5, (40, 40))
    feats = _write(tmp_path / "features.tif", f, descriptions=["a", "b", "c"])
    tgt = _write(tmp_path / "target.tif", target, nodata=-9999, descriptions=["height"])
    return feats, tgt, f, target


# ------------------------------------------------------------------ 1 and 3: the simulated scene

@pytest.fixture(scope="module")
def scene_model(tmp_path_factory):
    """A 1200 m scene, harmonized Sentinel-2 at 20 m, labels from its LiDAR (normalized, 2 m p2r CHM averaged to 20 m);
    a quarter of 100 m blocks held out (target set to nodata there), the rest trained on."""
    from forest_carbon_plugin.core.imagery.harmonize import TargetGrid, harmonize_scene
    from forest_carbon_plugin.core.models.predict import PredictSettings, predict_raster
    from forest_carbon_plugin.simulate import SceneConfig, simulate_scene

    root = tmp_path_factory.mktemp("train_scene")
    manifest = simulate_scene(root / "scene", SceneConfig(size_m=1200, seed=5, pulse_density=0.5,
                                                          cloud_fraction=0.05, workers=4))
    features = root / "s2_20m.tif"
    harmonize_scene(root / "scene" / manifest["sentinel2"]["product"], features, TargetGrid(resolution_m=20))
    with rasterio.open(features) as src:
        profile, transform, (h, w) = src.profile, src.transform, src.shape
    with rasterio.open(root / "scene" / manifest["truth"]["chm_1m"]) as src:
        truth = src.read(1, out_shape=(h, w), resampling=Resampling.average)
    # labels from the simulated LiDAR: heights above the ground TIN, a 2 m p2r CHM (empty cells filled),
    # averaged onto the 20 m feature grid — what a user derives; the truth above only judges the result
    from forest_carbon_plugin.core.lidar.canopy import canopy_height_model
    from forest_carbon_plugin.core.lidar.chm import P2R
    from forest_carbon_plugin.core.lidar.normalize import normalize_height

    normalize_height(root / "scene" / "lidar", root / "norm.laz", max_workers=2)
    canopy_height_model(root / "norm.laz", root / "lidar_chm.tif", res_m=2.0, method=P2R(fill_empty=True))
    with rasterio.open(root / "lidar_chm.tif") as src:
        window = src.window(*rasterio.transform.array_bounds(h, w, transform))
        labels = src.read(1, window=window, out_shape=(h, w), resampling=Resampling.average, masked=True)
        labels = labels.filled(np.nan)
    rows, cols = np.mgrid[0:h, 0:w]
    xs, ys = transform * (cols + 0.5, rows + 0.5)
    held_out = (spatial_folds(xs.ravel(), ys.ravel(), 100, 4, seed=0) == 0).reshape(h, w)
    labels = np.where(np.isfinite(labels), labels, -9999)
    train_target = np.where(held_out, -9999, labels)
    test_target = np.where(held_out, labels, -9999)
    for name, data in (("target.tif", train_target), ("test.tif", test_target)):
        _write(root / name, data, res=20, x0=transform.c, y0=transform.f, nodata=-9999,
               descriptions=["canopy_height"])
    doc = train_model([features], root / "target.tif", root / "chm.onnx", root / "chm_report.html",
                      settings=TrainSettings(learner=QuantileGBM(**FAST_GBM), block_size_m=100, folds=5,
                                             coverage=0.9, seed=0, unit="m"))
    outs = {k: root / f"pred_{k}.tif" for k in ("prediction", "std", "lower", "upper")}
    predict_raster([features], root / "chm.onnx", outs["prediction"], out_std=outs["std"], out_lower=outs["lower"],
                   out_upper=outs["upper"], settings=PredictSettings(coverage=0.9))
    maps = {}
    for k, p in outs.items():
        with rasterio.open(p) as src:
            maps[k] = src.read(1)
    return {"root": root, "doc": doc, "truth": truth, "labels": labels, "held_out": held_out, "maps": maps,
            "features": features}


def test_held_out_blocks_rmse_and_calibrated_coverage(scene_model):
    from forest_carbon_plugin.core.models.accuracy import interval_coverage, regression_metrics

    doc, truth, held, maps = scene_model["doc"], scene_model["truth"], scene_model["held_out"], scene_model["maps"]
    labels = scene_model["labels"]
    ok = held & np.isfinite(maps["prediction"]) & (labels != -9999)
    assert ok.sum() > 700  # ≈ 36 blocks of 5×5 pixels, less clouds
    m = regression_metrics(maps["prediction"][ok], truth[ok])  # RMSE against the truth
    calibrated = interval_coverage(labels[ok], maps["lower"][ok], maps["upper"][ok])["coverage"]  # held-out labels
    print(f"\ncoverage of the true CHM: {interval_coverage(truth[ok], maps['lower'][ok], maps['upper'][ok])['coverage']:.3f}")
    # the uncalibrated interval of the same exported model, from the in-memory model
    test = sample_training_data([scene_model["features"]], scene_model["root"] / "test.tif", max_samples=10**6)
    raw = predict_intervals(doc["fitted_model"], test.X)
    uncalibrated = interval_coverage(test.y, raw["lower"], raw["upper"])["coverage"]
    print(f"\nheld-out RMSE {m['rmse']:.3f} m, R² {m['r2']:.3f}; spatial CV RMSE {doc['cv']['spatial']['rmse']:.3f}, "
          f"random CV RMSE {doc['cv']['random']['rmse']:.3f}; factor {doc['conformal_factor']:.4f}; coverage "
          f"calibrated {calibrated:.3f}, uncalibrated {uncalibrated:.3f} (spatial CV uncalibrated "
          f"{doc['cv']['spatial']['coverage_uncalibrated']:.3f})")
    assert m["rmse"] < 3.0 and m["r2"] > 0.85  # measured 2.72 m, R² 0.88 against the truth (mean CHM 13 m)
    assert 0.87 <= calibrated <= 0.93
    # the report states both, and the spatial CV beside random K-fold
    report = json.loads((scene_model["root"] / "chm_report.json").read_text())
    assert report["cv"]["spatial"]["coverage_uncalibrated"] == pytest.approx(doc["cv"]["spatial"]["coverage_uncalibrated"])
    assert {"rmse", "mae", "bias", "r2", "coverage_calibrated"} <= set(report["cv"]["random"])
    html = (scene_model["root"] / "chm_report.html").read_text()
    assert "spatial blocks" in html and "random K-fold" in html
    for name in ("predicted_observed", "coverage", "importance"):
        assert (scene_model["root"] / f"chm_report_{name}.png").stat().st_size > 1000


def test_onnx_reproduces_the_model_and_the_card_round_trips(scene_model):
    from forest_carbon_plugin.core.models.card import read_card

    doc, maps, root = scene_model["doc"], scene_model["maps"], scene_model["root"]
    data = sample_training_data([scene_model["features"]], root / "test.tif", max_samples=10**6)
    inv = ~rasterio.open(scene_model["features"]).transform
    c, r = inv * (data.x, data.yc)
    r, c = np.floor(r).astype(int), np.floor(c).astype(int)
    raw = predict_intervals(doc["fitted_model"], data.X)
    f = doc["conformal_factor"]
    expected = {"prediction": raw["prediction"], "lower": raw["prediction"] - f * (raw["prediction"] - raw["lower"]),
                "upper": raw["prediction"] + f * (raw["upper"] - raw["prediction"])}
    for k, v in expected.items():
        err = np.abs(maps[k][r, c] - v).max()
        print(f"{k}: max |ONNX − sklearn| = {err:.2e}")
        assert err < 1e-4
    card = read_card(root / "chm.onnx")
    assert card.source == "metadata" and card.bands == doc["bands"] and len(card.bands) == 11
    assert [(o.name, o.meaning) for o in card.outputs] == [("lower", "quantile:0.05"), ("median", "quantile:0.5"),
                                                           ("upper", "quantile:0.95")]
    assert card.conformal_factor == pytest.approx(f) and card.coverage == 0.9
    assert card.target == "canopy_height" and card.unit == "m" and card.resolution_m == 20
    training = card.extra["forest_carbon:training"]
    assert training["crs"] == "EPSG:32633" and training["n_samples"] == doc["n_samples"]
    assert training["cv"]["spatial"]["rmse"] == pytest.approx(doc["cv"]["spatial"]["rmse"])
    assert len(training["extent"]) == 4 and training["date"]


def test_forest_ensemble_exports_mean_and_variance(synthetic, tmp_path):
    from forest_carbon_plugin.core.models.predict import PredictSettings, predict_raster
    from forest_carbon_plugin.core.stats import z_score

    feats, tgt, f, target = synthetic
    doc = train_model([feats], tgt, tmp_path / "rf.onnx", tmp_path / "rf_report.html",
                      settings=TrainSettings(learner=RandomForest(n_estimators=20), block_size_m=150, folds=4))
    out = {k: tmp_path / f"{k}.tif" for k in ("p", "s", "l", "u")}
    pred = predict_raster([feats], tmp_path / "rf.onnx", out["p"], out_std=out["s"], out_lower=out["l"],
                          out_upper=out["u"])
    assert [o.meaning for o in pred.card.outputs] == ["mean", "variance"]
    maps = {k: rasterio.open(p).read(1) for k, p in out.items()}
    raw = predict_intervals(doc["fitted_model"], f.reshape(3, -1).T)
    std = np.sqrt(raw["variance"]) * doc["conformal_factor"]
    np.testing.assert_allclose(maps["p"].ravel(), raw["prediction"], atol=1e-4)
    np.testing.assert_allclose(maps["s"].ravel(), std, atol=1e-4)
    np.testing.assert_allclose(maps["u"].ravel(), raw["prediction"] + z_score(0.9) * std, atol=1e-4)


# ------------------------------------------------------------------ 2: leakage of random K-fold

def test_spatial_blocks_expose_what_random_folds_hide():
    rng = np.random.default_rng(1)
    shape = (60, 60)  # 20 m pixels
    g1, g2 = _smooth(rng, shape, 4), _smooth(rng, shape, 4)
    hidden = _smooth(rng, shape, 4)  # spatially smooth part of the target the features cannot explain
    X = np.stack([g1, g2, _smooth(rng, shape, 4)], axis=-1).reshape(-1, 3).astype(np.float32)
    y = (5 * g1 + 3 * g2 + 4 * hidden + rng.normal(0, 0.3, shape)).ravel()
    rows, cols = np.mgrid[0:60, 0:60]
    x, yc = cols.ravel() * 20.0 + 10, -(rows.ravel() * 20.0 + 10)
    forest = RandomForest(n_estimators=30)
    spatial = cross_validate(forest, X, y, spatial_folds(x, yc, 300, 5, 0))
    random = cross_validate(forest, X, y, random_folds(y.size, 5, 0))
    s, r = spatial["metrics"]["rmse"], random["metrics"]["rmse"]
    print(f"\nspatial-block RMSE {s:.3f}, random K-fold RMSE {r:.3f} (ratio {s / r:.2f})")
    assert s > 1.3 * r


# ------------------------------------------------------------------ 4: hand checks

def test_conformal_factor_by_hand():
    m, lo, up = np.zeros(9), np.full(9, -1.0), np.full(9, 2.0)
    y = np.array([-0.5, 1, -2, 4, 0.2, -1.5, 3, 0, 1.9])
    # scores (m − y)/(m − lo) below, (y − m)/(up − m) above: .5 .5 2 2 .1 1.5 1.5 0 .95
    np.testing.assert_allclose(conformal_scores(y, lo, m, up), [0.5, 0.5, 2, 2, 0.1, 1.5, 1.5, 0, 0.95])
    # sorted: 0 .1 .5 .5 .95 1.5 1.5 2 2; ⌈(9 + 1)·0.8⌉ = 8th -> 2; ⌈10·0.5⌉ = 5th -> 0.95; ⌈10·0.6⌉ = 6th -> 1.5
    assert conformal_factor(y, lo, m, up, 0.8) == 2.0
    assert conformal_factor(y, lo, m, up, 0.5) == 0.95
    assert conformal_factor(y, lo, m, up, 0.6) == 1.5
    # CQR's score with each side normalized by its half-width: s = 1 + max((lo − y)/(m − lo), (y − up)/(up − m))
    np.testing.assert_allclose(conformal_scores(y, lo, m, up), 1 + np.maximum((lo - y) / (m - lo), (y - up) / (up - m)))
    # the scaled interval covers exactly the samples with score ≤ f
    f = conformal_factor(y, lo, m, up, 0.6)
    inside = (y >= m - f * (m - lo)) & (y <= m + f * (up - m))
    assert inside.mean() == pytest.approx(7 / 9)
    # known coverage on exchangeable data: the calibrated interval covers ≈ 90% of new samples
    rng = np.random.default_rng(0)
    cal, new = rng.normal(size=2000), rng.normal(size=20000)
    f = conformal_factor(cal, np.full(2000, -1.0), np.zeros(2000), np.ones(2000), 0.9)
    assert f == pytest.approx(1.645, abs=0.08)
    assert np.mean(np.abs(new) <= f) == pytest.approx(0.9, abs=0.015)


def test_folds_keep_whole_blocks_together():
    rows, cols = np.mgrid[0:30, 0:30]
    x, y = 500_000 + cols.ravel() * 20.0 + 10, 6_000_000 - rows.ravel() * 20.0 - 10
    folds = spatial_folds(x, y, 100, 5, seed=2)
    block = (np.floor(x / 100) * 1000 + np.floor(y / 100)).astype(np.int64)
    for b in np.unique(block):
        assert len(np.unique(folds[block == b])) == 1
    assert sorted(np.unique(folds)) == [0, 1, 2, 3, 4]
    counts = np.bincount(np.unique(np.column_stack([block, folds]), axis=0)[:, 1])
    assert counts.max() - counts.min() <= 1  # 36 blocks dealt in turn: 8,7,7,7,7
    assert np.array_equal(folds, spatial_folds(x, y, 100, 5, seed=2))
    assert not np.array_equal(folds, spatial_folds(x, y, 100, 5, seed=3))
    rf = random_folds(103, 5, 0)
    assert np.bincount(rf).tolist() == [21, 21, 21, 20, 20]
    with pytest.raises(ForestCarbonError, match="fewer than the 5 folds"):
        spatial_folds(x, y, 400, 5)


def test_vector_targets_points_and_polygons(tmp_path, synthetic):
    import geopandas as gpd
    from shapely.geometry import Point, box

    feats, _, f, _ = synthetic
    # pixel (row 3, col 4) centre, and a polygon over exactly rows 10-11, cols 20-21
    pts = gpd.GeoDataFrame({"h": [7.5, 8.0]}, geometry=[Point(500_000 + 4.5 * 30, 6_000_000 - 3.5 * 30),
                                                        Point(400_000, 6_000_000)], crs=CRS)
    pts.to_file(tmp_path / "pts.gpkg", driver="GPKG")
    data = sample_training_data([feats], str(tmp_path / "pts.gpkg"), "h")
    assert data.kind == "point" and data.y.tolist() == [7.5]
    np.testing.assert_allclose(data.X[0], f[:, 3, 4], rtol=1e-6)
    polys = gpd.GeoDataFrame({"h": [3.0]}, geometry=[box(500_000 + 600, 6_000_000 - 360, 500_000 + 660,
                                                         6_000_000 - 300)], crs=CRS)
    polys.to_file(tmp_path / "polys.gpkg", driver="GPKG")
    data = sample_training_data([feats], str(tmp_path / "polys.gpkg"), "h")
    np.testing.assert_allclose(data.X[0], f[:, 10:12, 20:22].mean(axis=(1, 2)), rtol=1e-5)


# ------------------------------------------------------------------ 5: bad input

def test_bad_inputs_are_clear_and_write_nothing(tmp_path, synthetic):
    import geopandas as gpd
    from shapely.geometry import Point

    feats, tgt, f, target = synthetic
    model, report = tmp_path / "m.onnx", tmp_path / "r.html"

    def fails(match, target_path, **kw):
        with pytest.raises(ForestCarbonError, match=match):
            train_model([feats], target_path, model, report, **kw)
        assert not model.exists() and not report.exists() and not report.with_suffix(".json").exists()

    far = _write(tmp_path / "far.tif", target, x0=700_000, nodata=-9999)
    fails("do not overlap", far)
    few = np.full((40, 40), -9999.0)
    few[:4, :5] = np.arange(20).reshape(4, 5)
    fails("Only 20 valid training sample", _write(tmp_path / "few.tif", few, nodata=-9999),
          settings=TrainSettings(folds=5))
    fails("constant", _write(tmp_path / "const.tif", np.full((40, 40), 12.0), nodata=-9999))
    rng = np.random.default_rng(0)
    pts = gpd.GeoDataFrame({"name": [f"p{i}" for i in range(60)], "h": rng.normal(size=60)},
                           geometry=[Point(500_000 + rng.uniform(0, 1200), 6_000_000 - rng.uniform(0, 1200))
                                     for _ in range(60)], crs=CRS)
    pts.to_file(tmp_path / "pts.gpkg", driver="GPKG")
    fails("not numeric", str(tmp_path / "pts.gpkg"), target_field="name")
    fails("numeric field", str(tmp_path / "pts.gpkg"))
    with pytest.raises(ForestCarbonError, match="another name"):
        train_model([feats], tgt, tmp_path / "x.onnx", tmp_path / "x.html")


# ------------------------------------------------------------------ 6: Processing, qgis_process, .model3

def test_processing_run(synthetic, tmp_path, forestcarbon_provider):
    import processing
    from qgis.core import QgsApplication

    feats, tgt, _, _ = synthetic
    alg = QgsApplication.processingRegistry().algorithmById("forestcarbon:trainmodel")
    assert alg.group() == "Models" and alg.groupId() == "models"
    result = processing.run("forestcarbon:trainmodel", {
        "FEATURES": [str(feats)], "TARGET": str(tgt), "MODEL_TYPE": 1, "BLOCK_SIZE": 150, "FOLDS": 4,
        "MAX_SAMPLES": 1000, "OUTPUT_MODEL": str(tmp_path / "p.onnx"), "OUTPUT_REPORT": str(tmp_path / "p_report.html")})
    assert result["N_SAMPLES"] == 1000 and result["RMSE_SPATIAL"] > 0 and result["CONFORMAL_FACTOR"] > 0
    assert (tmp_path / "p.onnx").is_file() and (tmp_path / "p_report.html").is_file()
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="constant"):
        processing.run("forestcarbon:trainmodel", {
            "FEATURES": [str(feats)], "TARGET": str(_write(tmp_path / "c.tif", np.ones((40, 40)), nodata=-9999)),
            "OUTPUT_MODEL": str(tmp_path / "c.onnx"), "OUTPUT_REPORT": str(tmp_path / "c_report.html")})


def test_qgis_process_and_model3_chain(synthetic, tmp_path, qgis_config, qgis_processing):
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource as Source,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterRasterLayer,
    )

    from scripts import qgis_env

    feats, tgt, _, _ = synthetic
    proc, results = qgis_env.run_algorithm("forestcarbon:trainmodel", {
        "FEATURES": str(feats), "TARGET": str(tgt), "BLOCK_SIZE": 150, "FOLDS": 4, "MAX_SAMPLES": 800,
        "OUTPUT_MODEL": tmp_path / "qp.onnx", "OUTPUT_REPORT": tmp_path / "qp_report.html"}, qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "qp.onnx").is_file() and (tmp_path / "qp_report.json").is_file() and not (tmp_path / "qp.json").exists()

    graph = QgsProcessingModelAlgorithm("train_predict", "forest")
    graph.addModelParameter(QgsProcessingParameterRasterLayer("features", "Features"),
                            QgsProcessingModelParameter("features"))
    graph.addModelParameter(QgsProcessingParameterRasterLayer("target", "Target"), QgsProcessingModelParameter("target"))
    train = QgsProcessingModelChildAlgorithm("forestcarbon:trainmodel")
    train.setChildId("train")
    train.addParameterSources("FEATURES", [Source.fromModelParameter("features")])
    train.addParameterSources("TARGET", [Source.fromModelParameter("target")])
    for name, value in (("BLOCK_SIZE", 150), ("FOLDS", 4), ("MAX_SAMPLES", 800), ("MODEL_TYPE", 1)):
        train.addParameterSources(name, [Source.fromStaticValue(value)])
    train.addParameterSources("OUTPUT_MODEL", [Source.fromStaticValue(str(tmp_path / "chain.onnx"))])
    train.addParameterSources("OUTPUT_REPORT", [Source.fromStaticValue(str(tmp_path / "chain_report.html"))])
    graph.addChildAlgorithm(train)
    predict = QgsProcessingModelChildAlgorithm("forestcarbon:predictraster")
    predict.setChildId("predict")
    predict.addParameterSources("INPUT", [Source.fromModelParameter("features")])
    predict.addParameterSources("MODEL", [Source.fromChildOutput("train", "OUTPUT_MODEL")])
    output = QgsProcessingModelOutput("prediction", "Prediction")
    output.setChildOutputName("OUTPUT")
    output.setChildId("predict")
    predict.setModelOutputs({"prediction": output})
    graph.addChildAlgorithm(predict)
    model3 = tmp_path / "train_predict.model3"
    from scripts.make_models import child_id_output_names  # childId:output names on QGIS >= 3.26 too

    assert child_id_output_names(graph).toFile(str(model3))
    target = tmp_path / "chain_pred.tif"
    proc = qgis_env.run(["run", str(model3), "--", f"features={feats}", f"target={tgt}",
                         f"predict:prediction={target}"], qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with rasterio.open(target) as src:
        pred = src.read(1)
    assert np.isfinite(pred).all() and (tmp_path / "chain.onnx").is_file()
