"""predictraster: ONNX Runtime on real .onnx files built here, against direct runs and numpy."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import rasterio
from rasterio.transform import from_origin
from scipy.stats import norm

from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.models.predict import PredictSettings, predict_raster
from forest_carbon_plugin.core.models.card import read_card
from forest_carbon_plugin.core.progress import NullProgress

from tests.conftest import shared_file
from tests.onnx_models import affine_model, conv_model, pixel_model, tree_model


def _write(path, data, res=10.0, nodata=None, descriptions=None, x0=500_000.0, y0=6_000_000.0):
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype="float32", crs="EPSG:32633", transform=from_origin(x0, y0, res, res),
                       nodata=nodata) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return path


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1), src


@pytest.fixture
def features(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(0.2, 0.1, (3, 70, 90)).astype(np.float32)
    return _write(tmp_path / "features.tif", data, descriptions=["red", "nir", "swir1"]), data


def _card(mean=None, std=None, bands=None, outputs=None, **extra):
    spec = {"name": "features"}
    if bands:
        spec["bands"] = bands
    if mean is not None:
        spec["norm_type"] = "z-score"
        spec["statistics"] = [{"mean": m, "stddev": s} for m, s in zip(mean, std)]
    doc = {"mlm:input": [spec], "mlm:output": outputs or []}
    doc.update(extra)
    return doc


# -- equality with direct onnxruntime runs ------------------------------------------------------

def test_pixel_model_with_card_preprocessing_equals_onnxruntime(tmp_path, features):
    path, data = features
    mean, std = [0.2, 0.25, 0.15], [0.1, 0.2, 0.05]
    card = _card(mean, std, bands=["nir", "red", "swir1"],  # model order differs from the file's
                 outputs=[{"name": "mean", "forest_carbon:meaning": "mean"},
                          {"name": "logvar", "forest_carbon:meaning": "log_variance"}])
    model = pixel_model(tmp_path / "lin.onnx", [1.5, -2.0, 0.7], 3.0, log_variance=([0.2, 0.1, -0.3], -1.0),
                        metadata={"model_card": card})
    outs = {k: tmp_path / f"{k}.tif" for k in ("p", "s", "lo", "hi")}
    result = predict_raster([path], model, outs["p"], outs["s"], outs["lo"], outs["hi"],
                            settings=PredictSettings(coverage=0.8))
    stacked = data[[1, 0, 2]].reshape(3, -1).T
    x = ((stacked - np.array(mean, np.float32)) / np.array(std, np.float32)).astype(np.float32)
    expected_mean, expected_logvar = ort.InferenceSession(str(model)).run(None, {"features": x})
    pred, src = _read(outs["p"])
    np.testing.assert_allclose(pred.ravel(), expected_mean[:, 0], atol=1e-5)
    sigma = np.exp(expected_logvar[:, 0] / 2)
    np.testing.assert_allclose(_read(outs["s"])[0].ravel(), sigma, rtol=1e-5)
    z = norm.ppf(0.9)
    np.testing.assert_allclose(_read(outs["lo"])[0].ravel(), expected_mean[:, 0] - z * sigma, atol=1e-4)
    np.testing.assert_allclose(_read(outs["hi"])[0].ravel(), expected_mean[:, 0] + z * sigma, atol=1e-4)
    with rasterio.open(path) as a, rasterio.open(outs["p"]) as b:
        assert (b.crs, b.transform, b.width, b.height) == (a.crs, a.transform, a.width, a.height)
        tags = b.tags()
    record = json.loads(tags["FOREST_CARBON_PROVENANCE"])
    assert record["model_id"] == result.card.model_id and record["execution_provider"] == "CPUExecutionProvider"
    assert tags["OUTPUT_KIND"] == "prediction"


def test_tree_ensemble_equals_onnxruntime_and_numpy(tmp_path, features):
    path, data = features
    model, numpy_predict = tree_model(tmp_path / "trees.onnx", n_features=3, n_trees=15, depth=4, seed=2)
    out = tmp_path / "trees.tif"
    predict_raster([path], model, out,
                   settings=PredictSettings(tile_size=16, batch_size=500))  # many strips and batches
    x = data.reshape(3, -1).T.copy()
    direct = ort.InferenceSession(str(model)).run(None, {"features": x})[0][:, 0]
    pred = _read(out)[0].ravel()
    np.testing.assert_allclose(pred, direct, atol=1e-5)
    np.testing.assert_allclose(pred, numpy_predict(x), atol=1e-4)


@pytest.mark.parametrize("shape, tile, overlap", [((300, 410), 64, 16), ((300, 410), 100, 32),
                                                  ((257, 129), 128, 48), ((90, 60), 128, 32)])
def test_patch_model_tiles_without_seams(tmp_path, shape, tile, overlap):
    """Fully convolutional CNN (receptive-field radius 3 ≤ overlap/4): tiled = whole image."""
    rng = np.random.default_rng(1)
    data = rng.normal(0, 1, (3, *shape)).astype(np.float32)
    path = _write(tmp_path / "img.tif", data)
    model, _ = conv_model(tmp_path / "cnn.onnx", seed=3)
    out = tmp_path / "pred.tif"
    predict_raster([path], model, out, settings=PredictSettings(tile_size=tile, overlap=overlap, batch_size=3))
    whole = ort.InferenceSession(str(model)).run(None, {"x": data[None]})[0][0, 0]
    pred = _read(out)[0]
    border = 4  # receptive-field radius 3, plus one
    np.testing.assert_allclose(pred[border:-border, border:-border], whole[border:-border, border:-border], atol=1e-4)


def test_outputs_are_cogs_equal_to_the_gdal_path(tmp_path, monkeypatch):
    """The COGs written as the rows come (core.cog) pass GDAL's validator and hold the same pixels as the
    GDAL path (staged GeoTIFF + COG driver); an ensemble on a raster with nodata, std and bounds too."""
    from forest_carbon_plugin.core.raster import cog
    from forest_carbon_plugin.core.models import predict as inference

    if not cog.available("zstd"):
        pytest.skip("the zstandard package is not installed")
    validator = pytest.importorskip("osgeo_utils.samples.validate_cloud_optimized_geotiff")
    rng = np.random.default_rng(7)
    data = rng.normal(0, 1, (3, 700, 1100)).astype(np.float32)
    data[:, 100:180, 300:420] = np.nan
    path = _write(tmp_path / "img.tif", data)
    for seed in range(2):
        conv_model(tmp_path / f"m{seed}.onnx", seed=seed, outputs=("mean", "logvar"))
    card = tmp_path / "ensemble.json"
    card.write_text(json.dumps(_card(outputs=[{"name": "mean", "forest_carbon:meaning": "mean"},
                                              {"name": "logvar", "forest_carbon:meaning": "log_variance"}],
                                     assets={f"m{i}": {"href": f"m{i}.onnx", "roles": ["mlm:model"]}
                                             for i in range(2)})))
    runs = {}
    for way in ("streamed", "gdal"):
        if way == "gdal":
            monkeypatch.setattr(inference.cog, "available", lambda compress: False)
        folder = tmp_path / way
        runs[way] = predict_raster([path], card, folder / "pred.tif", out_std=folder / "std.tif",
                                   out_upper=folder / "upper.tif",
                                   settings=PredictSettings(tile_size=128, overlap=32, batch_size=3)).outputs
    for kind, streamed in runs["streamed"].items():
        errors, _, _ = validator.validate(str(streamed), full_check=True)
        assert errors == [], (kind, errors)
        with rasterio.open(streamed) as a, rasterio.open(runs["gdal"][kind]) as b:
            assert a.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and a.overviews(1) == b.overviews(1) == [2, 4]
            assert (a.crs, a.transform, a.shape, a.descriptions) == (b.crs, b.transform, b.shape, b.descriptions)
            assert {k: v for k, v in a.tags().items() if k != "FOREST_CARBON_PROVENANCE"} == \
                {k: v for k, v in b.tags().items() if k != "FOREST_CARBON_PROVENANCE"}
            np.testing.assert_array_equal(a.read(1), b.read(1))
            assert np.isnan(a.read(1)[120, 350])
            # overviews: GDAL's COG driver averages the same way on these sizes (2 × 2 cells, NaN ignored)
            np.testing.assert_allclose(a.read(1, out_shape=(350, 550)), b.read(1, out_shape=(350, 550)),
                                       rtol=1e-5, atol=1e-6, equal_nan=True)


def test_ensemble_statistics_equal_numpy(tmp_path, features):
    path, data = features
    folder = tmp_path / "ensemble"
    folder.mkdir()
    members = []
    for seed in range(3):
        conv_model(folder / f"m{seed}.onnx", seed=seed, outputs=("mean", "logvar"))
        members.append(folder / f"m{seed}.onnx")
    card = _card(outputs=[{"name": "mean", "forest_carbon:meaning": "mean"},
                          {"name": "logvar", "forest_carbon:meaning": "log_variance"}],
                 assets={f"m{i}": {"href": f"m{i}.onnx", "roles": ["mlm:model"]} for i in range(3)},
                 **{"forest_carbon:target": "agb", "forest_carbon:unit": "Mg/ha"})
    (folder / "ensemble.json").write_text(json.dumps(card))
    p, s = tmp_path / "p.tif", tmp_path / "s.tif"
    predict_raster([path], folder / "ensemble.json", p, s, settings=PredictSettings(tile_size=64, overlap=16))
    runs = [ort.InferenceSession(str(m)).run(None, {"x": data[None]}) for m in members]
    means = np.stack([r[0][0, 0] for r in runs])
    aleatoric = np.stack([np.exp(r[1][0, 0]) for r in runs]).mean(axis=0)
    inner = (slice(4, -4), slice(4, -4))
    np.testing.assert_allclose(_read(p)[0][inner], means.mean(axis=0)[inner], atol=1e-4)
    np.testing.assert_allclose(_read(s)[0][inner], np.sqrt(aleatoric + means.var(axis=0))[inner], rtol=1e-4)
    with rasterio.open(p) as src:
        assert src.descriptions == ("agb",) and src.tags()["UNIT"] == "Mg/ha"


def test_quantile_model_and_conformal_factor(tmp_path, features):
    path, data = features
    from onnx import TensorProto, helper

    # quantiles of a Gaussian with mean x0 and σ = 0.5: q = x0 + 0.5·Φ⁻¹(q)
    nodes, outs, inits = [], [], []
    from onnx import numpy_helper

    for name, q in (("q05", 0.05), ("q50", 0.5), ("q95", 0.95)):
        inits.append(numpy_helper.from_array(np.array([0.5 * norm.ppf(q)], np.float32), f"c_{name}"))
        nodes.append(helper.make_node("Add", ["x0", f"c_{name}"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 1]))
    inits += [numpy_helper.from_array(np.array([0], np.int64), "i0")]
    nodes.insert(0, helper.make_node("Gather", ["features", "i0"], ["x0"], axis=1))
    graph = helper.make_graph(nodes, "quantiles", [helper.make_tensor_value_info("features", TensorProto.FLOAT,
                                                                                 ["N", 3])], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    from tests.onnx_models import _save

    card = _card(outputs=[{"name": n, "forest_carbon:meaning": f"quantile:{q}"}
                          for n, q in (("q05", 0.05), ("q50", 0.5), ("q95", 0.95))],
                 **{"forest_carbon:calibration": {"conformal_factor": 1.5, "coverage": 0.9}})
    _save(model, tmp_path / "q.onnx", {"model_card": card})
    outs_ = {k: tmp_path / f"{k}.tif" for k in ("p", "s", "lo", "hi")}
    predict_raster([path], tmp_path / "q.onnx", outs_["p"], outs_["s"], outs_["lo"], outs_["hi"])
    x0 = data[0]
    half = 0.5 * norm.ppf(0.95) * 1.5  # conformal factor scales the half-width
    np.testing.assert_allclose(_read(outs_["p"])[0], x0, atol=1e-6)
    np.testing.assert_allclose(_read(outs_["lo"])[0], x0 - half, atol=1e-5)
    np.testing.assert_allclose(_read(outs_["hi"])[0], x0 + half, atol=1e-5)
    np.testing.assert_allclose(_read(outs_["s"])[0], 0.5 * 1.5, atol=1e-5)  # Gaussian-equivalent σ
    with pytest.raises(ForestCarbonError, match="set COVERAGE to 0.9"):
        predict_raster([path], tmp_path / "q.onnx", tmp_path / "x.tif", out_lower=tmp_path / "y.tif",
                       settings=PredictSettings(coverage=0.8))


def test_gaussian_interval_covers_its_nominal_share(tmp_path):
    """Truth = μ(x) + N(0, σ(x)²); the model outputs the true μ and log σ²: the 90% interval
    covers 88-92% of 40,000 pixels."""
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 1, (2, 200, 200)).astype(np.float32)
    mu = 3 * x[0] - x[1] + 2
    log_var = 1.2 * x[1] - 2.0
    truth = mu + rng.normal(0, 1, mu.shape) * np.exp(log_var / 2)
    path = _write(tmp_path / "x.tif", x)
    card = _card(outputs=[{"name": "mean", "forest_carbon:meaning": "mean"},
                          {"name": "logvar", "forest_carbon:meaning": "log_variance"}])
    model = pixel_model(tmp_path / "m.onnx", [3, -1], 2, log_variance=([0, 1.2], -2.0), metadata={"model_card": card})
    lo, hi = tmp_path / "lo.tif", tmp_path / "hi.tif"
    predict_raster([path], model, tmp_path / "p.tif", out_lower=lo, out_upper=hi,
                   settings=PredictSettings(coverage=0.9))
    covered = (truth >= _read(lo)[0]) & (truth <= _read(hi)[0])
    assert 0.88 <= covered.mean() <= 0.92, covered.mean()


def test_nodata_and_nan_propagate_and_inputs_are_warped(tmp_path):
    rng = np.random.default_rng(4)
    a = rng.normal(0, 1, (2, 40, 50)).astype(np.float32)
    a[0, 5, 7] = -9999.0
    a[1, 20, 30] = np.nan
    first = _write(tmp_path / "a.tif", a, res=10, nodata=-9999, descriptions=["b1", "b2"])
    b = rng.normal(0, 1, (1, 20, 25)).astype(np.float32)  # 20 m: warped (bilinear) onto the 10 m grid
    second = _write(tmp_path / "b.tif", b, res=20)
    model = pixel_model(tmp_path / "lin.onnx", [1.0, 1.0, 0.0], 0.0)  # ignores the warped band's values
    out = tmp_path / "p.tif"
    predict_raster([first, second], model, out)
    pred = _read(out)[0]
    assert np.isnan(pred[5, 7]) and np.isnan(pred[20, 30])
    ok = np.ones_like(pred, bool)
    ok[5, 7] = ok[20, 30] = False
    np.testing.assert_allclose(pred[ok], (a[0] + a[1])[ok], atol=1e-5)
    picked = tmp_path / "picked.tif"
    model2 = pixel_model(tmp_path / "one.onnx", [2.0], 0.0)
    predict_raster([first, second], model2, picked, bands="2")
    np.testing.assert_allclose(_read(picked)[0][ok], 2 * a[1][ok], atol=1e-5)


def test_deepness_metadata_runs_the_deepness_way(tmp_path):
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (3, 64, 80)).astype(np.float32)
    path = _write(tmp_path / "rgb.tif", rgb)
    meta = {"model_type": "Regressor", "standardization_mean": [0.4, 0.5, 0.6],
            "standardization_std": [0.2, 0.25, 0.3], "resolution": 1000, "tiles_size": 32, "tiles_overlap": 25}
    model = affine_model(tmp_path / "deep.onnx", scale=1.0, offset=0.0, bands=3, metadata=meta)
    card = read_card(model)
    assert card.deepness and card.patch_size == 32 and card.overlap == 8 and card.resolution_m == 10
    out = tmp_path / "out.tif"
    progress = NullProgress()
    predict_raster([path], model, out, progress=progress)
    expected = (rgb[0] / 255.0 - 0.4) / 0.2  # channel 0 of the identity-affine model, float32
    np.testing.assert_allclose(_read(out)[0], expected, atol=1e-5)
    assert not any("made for" in w for w in progress.warnings)  # 10 m model on 10 m pixels


def test_real_deepness_regression_model(tmp_path):
    model = shared_file("holdout", "onnx", "dummy_regression_model.onnx")
    image = shared_file("holdout", "onnx", "dummy_fotomap_small.tif")
    card = read_card(model)
    out = tmp_path / "reg.tif"
    progress = NullProgress()
    result = predict_raster([image], model, out, bands="1,2,3", progress=progress)
    assert card.deepness and card.kind == "patch"
    pred, src = _read(out)
    with rasterio.open(image) as img:
        assert (src.width, src.height, src.transform) == (img.width, img.height, img.transform)
    assert np.isfinite(pred).mean() > 0.5 and pred.dtype == np.float32
    assert result.tiles >= 1


# -- devices ------------------------------------------------------------------------------------

def test_cuda_request_without_cuda_falls_back_or_fails(tmp_path, features):
    path, _ = features
    model = pixel_model(tmp_path / "lin.onnx", [1, 1, 1], 0.0)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: the fallback cannot be seen here")
    progress = NullProgress()
    result = predict_raster([path], model, tmp_path / "p.tif",
                            settings=PredictSettings(device="cuda"), progress=progress)
    assert result.provider == "CPUExecutionProvider"
    assert any("CUDAExecutionProvider is not available" in w and "CPU instead" in w for w in progress.warnings)
    with pytest.raises(ForestCarbonError, match="REQUIRE_GPU"):
        predict_raster([path], model, tmp_path / "q.tif", settings=PredictSettings(device="cuda", require_gpu=True))
    assert not (tmp_path / "q.tif").exists()


# -- bad input ----------------------------------------------------------------------------------

def test_bad_inputs_are_clear_errors(tmp_path, features):
    path, _ = features
    target = tmp_path / "out.tif"
    fake = tmp_path / "fake.onnx"
    fake.write_text("not a model")
    with pytest.raises(ForestCarbonError, match="not a valid ONNX model"):
        predict_raster([path], fake, target)
    four = pixel_model(tmp_path / "four.onnx", [1, 1, 1, 1], 0.0,
                       metadata={"model_card": _card(bands=["blue", "green", "red", "nir"])})
    with pytest.raises(ForestCarbonError, match=r"needs the bands blue, green, red, nir; the inputs lack blue, "
                                                r"green \(they have red, nir, swir1\)"):
        predict_raster([path], four, target)
    unnamed = _write(tmp_path / "unnamed.tif", np.zeros((3, 4, 4)))
    with pytest.raises(ForestCarbonError, match=r"takes 4 bands \(blue, green, red, nir\) but 3 were given"):
        predict_raster([unnamed], four, target)
    wrong = pixel_model(tmp_path / "wrong.onnx", [1, 1, 1], 0.0,
                        metadata={"model_card": _card(outputs=[{"name": "agb", "forest_carbon:meaning": "mean"}])})
    with pytest.raises(ForestCarbonError, match="names output 'agb'.*does not describe this graph"):
        predict_raster([path], wrong, target)
    ok = pixel_model(tmp_path / "ok.onnx", [1, 1, 1], 0.0)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ForestCarbonError, match="Cannot write"):
        predict_raster([path], ok, blocker / "out.tif")
    with pytest.raises(ForestCarbonError, match="BANDS"):
        predict_raster([path], ok, target, bands="1,2,7")
    assert not target.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_external_data_must_sit_beside_the_model(tmp_path):
    import onnx

    folder = tmp_path / "model"
    folder.mkdir()
    conv_model(folder / "cnn.onnx", seed=1)
    m = onnx.load(str(folder / "cnn.onnx"))
    onnx.save_model(m, str(folder / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=1024)
    assert read_card(folder / "ext.onnx").kind == "patch"  # beside it: fine
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(folder / "ext.onnx", moved / "ext.onnx")
    with pytest.raises(ForestCarbonError):
        read_card(moved / "ext.onnx")  # the weights file is missing beside it


# -- QGIS ---------------------------------------------------------------------------------------

def test_processing_run_styles_and_provider(tmp_path, features, forestcarbon_provider):
    import processing
    from qgis.core import QgsRasterLayer

    path, _ = features
    card = _card(outputs=[{"name": "mean", "forest_carbon:meaning": "mean"},
                          {"name": "logvar", "forest_carbon:meaning": "log_variance"}])
    model = pixel_model(tmp_path / "m.onnx", [1, 2, 3], 0.5, log_variance=([0, 0, 0], -2.0),
                        metadata={"model_card": card})
    result = processing.run("forestcarbon:predictraster", {
        "INPUT": [str(path)], "MODEL": str(model), "OUTPUT": str(tmp_path / "p.tif"),
        "OUTPUT_STD": str(tmp_path / "s.tif"), "OUTPUT_LOWER": str(tmp_path / "lo.tif"),
        "OUTPUT_UPPER": str(tmp_path / "hi.tif")})
    assert result["EXECUTION_PROVIDER"] == "CPUExecutionProvider"
    for key in ("OUTPUT", "OUTPUT_STD", "OUTPUT_LOWER", "OUTPUT_UPPER"):
        assert QgsRasterLayer(result[key], key).isValid()
    from forest_carbon_plugin.paths import RESOURCES_DIR
    from processing_provider.base import StyleLoader

    layer = QgsRasterLayer(result["OUTPUT"], "p")
    StyleLoader(RESOURCES_DIR / "styles" / "prediction.qml", rescale=True).postProcessLayer(layer, None, None)
    renderer = layer.renderer()
    assert renderer.type() == "singlebandpseudocolor"
    vmin, vmax = layer.dataProvider().cumulativeCut(1, 0.02, 0.98)
    assert renderer.classificationMin() == pytest.approx(vmin) and renderer.classificationMax() == pytest.approx(vmax)


def test_processing_run_bad_model_is_a_processing_exception(tmp_path, features, forestcarbon_provider):
    import processing
    from qgis.core import QgsProcessingException

    path, _ = features
    fake = tmp_path / "fake.onnx"
    fake.write_text("no")
    with pytest.raises(QgsProcessingException, match="not a valid ONNX model"):
        processing.run("forestcarbon:predictraster", {"INPUT": [str(path)], "MODEL": str(fake),
                                                     "OUTPUT": str(tmp_path / "p.tif")})
    assert not (tmp_path / "p.tif").exists()


def test_qgis_process_and_graphical_model(tmp_path, features, qgis_config, qgis_processing):
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource as Source,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
        QgsProcessingParameterRasterLayer,
    )

    from scripts import qgis_env

    path, data = features
    model_file = pixel_model(tmp_path / "m.onnx", [1, 2, 3], 0.5)
    proc, results = qgis_env.run_algorithm("forestcarbon:predictraster", {
        "INPUT": [path], "MODEL": model_file, "DEVICE": 2, "OUTPUT": tmp_path / "qp.tif"}, qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CPU instead" in proc.stdout + proc.stderr  # CUDA asked for, not there: the fallback is logged
    expected = data[0] + 2 * data[1] + 3 * data[2] + 0.5
    np.testing.assert_allclose(_read(tmp_path / "qp.tif")[0], expected, atol=1e-5)

    graph = QgsProcessingModelAlgorithm("predict", "forest")
    graph.addModelParameter(QgsProcessingParameterRasterLayer("features", "Features"),
                            QgsProcessingModelParameter("features"))
    graph.addModelParameter(QgsProcessingParameterFile("model", "Model"), QgsProcessingModelParameter("model"))
    child = QgsProcessingModelChildAlgorithm("forestcarbon:predictraster")
    child.setChildId("predict")
    child.addParameterSources("INPUT", [Source.fromModelParameter("features")])
    child.addParameterSources("MODEL", [Source.fromModelParameter("model")])
    output = QgsProcessingModelOutput("prediction", "Prediction")
    output.setChildOutputName("OUTPUT")
    output.setChildId("predict")
    child.setModelOutputs({"prediction": output})
    graph.addChildAlgorithm(child)
    model3 = tmp_path / "predict.model3"
    from scripts.make_models import child_id_output_names  # childId:output names on QGIS >= 3.26 too

    assert child_id_output_names(graph).toFile(str(model3))
    target = tmp_path / "model_out.tif"
    proc = qgis_env.run(["run", str(model3), "--", f"features={path}", f"model={model_file}",
                         f"predict:prediction={target}"], qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    np.testing.assert_allclose(_read(target)[0], expected, atol=1e-5)


@pytest.mark.parametrize("compress, interleave, tiled", [("deflate", "pixel", True), ("lzw", "band", False),
                                                         (None, "band", True), (None, "pixel", False)])
def test_strip_reads_equal_the_written_pixels(tmp_path, compress, interleave, tiled):
    """predictraster's reader (all bands of a file in one call, GTIFF_DIRECT_IO on uncompressed files) gives
    the pixels written, and the nodata mask, for compressed and plain, tiled and striped, either interleave."""
    from rasterio.windows import Window

    from forest_carbon_plugin.core.raster.grid import Grid
    from forest_carbon_plugin.core.raster.read import Readers

    rng = np.random.default_rng(0)
    data = rng.integers(-100, 3000, (4, 700, 900)).astype("int16")
    data[:, 10:50, 20:80] = -9999
    profile = dict(driver="GTiff", width=900, height=700, count=4, dtype="int16", crs="EPSG:32633",
                   transform=from_origin(0, 7000, 10, 10), nodata=-9999, interleave=interleave, tiled=tiled)
    if tiled:
        profile.update(blockxsize=256, blockysize=256)
    if compress:
        profile["compress"] = compress
    path = tmp_path / "bands.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    with rasterio.open(path) as src:
        readers = Readers(Grid.of(src), direct_io=True)
    out = np.empty((3, 300, 900), np.float32)
    try:
        invalid = readers.read_into(path, Window(0, 5, 900, 300), [2, 3, 4], out, None, -9999)
    finally:
        readers.close()
    expected = data[1:4, 5:305].astype(np.float32)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(invalid, (expected == -9999).any(axis=0))
