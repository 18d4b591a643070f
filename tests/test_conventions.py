"""Other tools' conventions (issue 19): Deepness model metadata, Landsat/Sentinel-2 fill, product layouts
in compositescenes, the model card's unit in predictraster's outputs.

Every expectation is computed here independently of the plugin: Deepness's pipeline rewritten with numpy from
its source (``ModelBase.preprocessing`` with ``preprocessing_utils``: first n channels, ÷255, (x − mean)/std
when both are given; ``MapProcessorRegression._process_tile``: NaN → 0, × ``reg_output_scaling``), the USGS
and ESA product rules (fill DN 0, scale/offset) written out by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.inference import predict_raster
from forest_carbon_plugin.core.modelcard import read_card
from forest_carbon_plugin.core.outputs import PROVENANCE_KEY
from forest_carbon_plugin.core.progress import NullProgress

from .onnx_models import pixel_model, pointwise_regressor

WEIGHTS, BIAS = [0.8, -0.5, 1.3], 0.25
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SCALING = 25.0


def _rgba(path, seed=7, shape=(70, 90)):
    """A uint8 RGBA orthophoto (alpha 255), like the ones Deepness is made for."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (4, *shape)).astype(np.uint8)
    data[3] = 255
    with rasterio.open(path, "w", driver="GTiff", width=shape[1], height=shape[0], count=4, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500_000.0, 6_000_000.0, 0.5, 0.5)) as dst:
        dst.write(data)
    return path, data


def _deepness_regression(rgba: np.ndarray, mean=MEAN, std=STD, scaling=SCALING) -> np.ndarray:
    """What Deepness writes for the pointwise regressor: its preprocessing and postprocessing, step by step."""
    tiles = rgba.transpose(1, 2, 0)[None]  # NHWC, as Deepness reads tiles
    tiles = tiles[:, :, :, :3]  # limit_channels_number: the model's 3 inputs
    tiles = np.float32(tiles * 1. / 255.)  # normalize_values_to_01
    if mean is not None and std is not None:
        tiles = (tiles - np.array(mean, np.float32)) / np.array(std, np.float32)  # standardize_values
    out = (tiles * np.array(WEIGHTS, np.float32)).sum(axis=-1) + np.float32(BIAS)  # the 1×1 convolution
    out[np.isnan(out)] = 0
    return (out * scaling).astype(np.float32)[0]


def _deepness_model(path, **extra):
    meta = {"model_type": "Regressor", "standardization_mean": MEAN, "standardization_std": STD,
            "reg_output_scaling": SCALING, "resolution": 50, "tiles_overlap": 15}
    meta.update(extra)
    return pointwise_regressor(path, WEIGHTS, BIAS, patch=32, metadata={k: v for k, v in meta.items() if v is not None})


def _provenance(path) -> dict:
    with rasterio.open(path) as src:
        return json.loads(src.tags()[PROVENANCE_KEY])


def test_deepness_regressor_equals_deepness(tmp_path):
    image, rgba = _rgba(tmp_path / "rgba.tif")
    model = _deepness_model(tmp_path / "deepness.onnx")
    card = read_card(model)
    assert card.output_scale == SCALING and card.patch_size == 32 and card.overlap == 5
    progress = NullProgress()
    out = tmp_path / "agb.tif"
    predict_raster([image], model, out, progress=progress)  # 4 bands in, 3 model inputs: bands 1-3 as Deepness
    with rasterio.open(out) as src:
        pred = src.read(1)
    expected = _deepness_regression(rgba)
    np.testing.assert_allclose(pred, expected, rtol=1e-5, atol=1e-3)
    # the scaling is what makes the difference: without it the prediction is 25 times smaller
    assert np.abs(pred - expected / SCALING).max() > 10
    assert any("bands 1-3 are used" in w for w in progress.warnings)
    applied = _provenance(out)["deepness"]
    assert applied["reg_output_scaling"] == SCALING and applied["input_divided_by"] == 255
    assert applied["standardization_mean"] == MEAN and applied["standardization_std"] == STD
    assert _provenance(out)["output_scale"] == SCALING


def test_deepness_mean_without_std_is_not_applied(tmp_path):
    """Deepness standardizes only when both keys are there (ModelBase.get_metadata_standarization_parameters)."""
    image, rgba = _rgba(tmp_path / "rgba.tif", shape=(40, 40))
    model = _deepness_model(tmp_path / "half.onnx", standardization_std=None, reg_output_scaling=2.0)
    progress = NullProgress()
    out = tmp_path / "p.tif"
    predict_raster([image], model, out, bands="1,2,3", progress=progress)
    with rasterio.open(out) as src:
        np.testing.assert_allclose(src.read(1), _deepness_regression(rgba, None, None, 2.0), rtol=1e-5, atol=1e-4)
    assert any("without its pair" in w for w in progress.warnings)
    assert "standardization_mean" not in _provenance(out)["deepness"]


def test_deepness_segmentor_is_refused(tmp_path):
    image, _ = _rgba(tmp_path / "rgba.tif", shape=(32, 32))
    model = pointwise_regressor(tmp_path / "seg.onnx", WEIGHTS, patch=32, metadata={"model_type": "Segmentor"})
    with pytest.raises(ForestCarbonError, match=r"'seg\.onnx' is a Deepness Segmentor model.*Regressor"):
        predict_raster([image], model, tmp_path / "p.tif")
    assert not (tmp_path / "p.tif").exists()


def test_deepness_regressor_through_processing(tmp_path, forestcarbon_provider):
    import processing

    image, rgba = _rgba(tmp_path / "rgba.tif", shape=(48, 60))
    model = _deepness_model(tmp_path / "deepness.onnx")
    result = processing.run("forestcarbon:predictraster", {"INPUT": [str(image)], "MODEL": str(model),
                                                           "OUTPUT": str(tmp_path / "p.tif")})
    with rasterio.open(result["OUTPUT"]) as src:
        np.testing.assert_allclose(src.read(1), _deepness_regression(rgba), rtol=1e-5, atol=1e-3)
    assert _provenance(result["OUTPUT"])["deepness"]["reg_output_scaling"] == SCALING


def test_unit_of_the_card_is_the_band_unit(tmp_path):
    """The card's unit reaches every output: GDAL's band unit type, the UNIT tag and the provenance."""
    x = np.random.default_rng(3).normal(0, 1, (2, 20, 24)).astype(np.float32)
    image = tmp_path / "x.tif"
    with rasterio.open(image, "w", driver="GTiff", width=24, height=20, count=2, dtype="float32", crs="EPSG:32633",
                       transform=from_origin(500_000.0, 6_000_000.0, 30, 30)) as dst:
        dst.write(x)
    card = {"mlm:input": [{"name": "features"}], "forest_carbon:target": "agb", "forest_carbon:unit": "Mg/ha",
            "mlm:output": [{"name": "mean", "forest_carbon:meaning": "mean"},
                           {"name": "logvar", "forest_carbon:meaning": "log_variance"}]}
    model = pixel_model(tmp_path / "m.onnx", [3, -1], 2, log_variance=([0, 0.5], -1.0), metadata={"model_card": card})
    outs = [tmp_path / f"{k}.tif" for k in ("p", "s", "lo", "hi")]
    predict_raster([image], model, *outs)
    for path in outs:
        with rasterio.open(path) as src:
            assert src.units == ("Mg/ha",), path.name
            assert src.tags()["UNIT"] == "Mg/ha"
        assert _provenance(path)["unit"] == "Mg/ha"
    with rasterio.open(outs[0]) as src:  # and the values are still the model's: 3·x0 − x1 + 2
        np.testing.assert_allclose(src.read(1), 3 * x[0] - x[1] + 2, atol=1e-5)
