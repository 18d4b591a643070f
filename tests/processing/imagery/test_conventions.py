"""Other tools' conventions (issue 19): Deepness model metadata, Landsat/Sentinel-2 fill, product layouts
in compositescenes, the model card's unit in predictraster's outputs.

Every expectation is computed here independently of the plugin: Deepness's pipeline rewritten with numpy from
its source (``ModelBase.preprocessing`` with ``preprocessing_utils``: first n channels, ÷255, (x − mean)/std
when both are given; ``MapProcessorRegression._process_tile``: NaN → 0, × ``reg_output_scaling``), the USGS
and ESA product rules (fill DN 0, scale/offset) written out by hand.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from forest_carbon_plugin.core.imagery.composite import Median, composite_scenes
from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.imagery.harmonize import TargetGrid, harmonize_scene
from forest_carbon_plugin.core.models.predict import predict_raster
from forest_carbon_plugin.core.models.card import read_card
from forest_carbon_plugin.core.outputs import PROVENANCE_KEY
from forest_carbon_plugin.core.progress import NullProgress

from tests.conftest import shared_file
from tests.onnx_models import pixel_model, pointwise_regressor

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


# -- fill: DN 0 of Landsat Level-1/Level-2 and Sentinel-2 is no-data in every band ------------------------------

# USGS Collection-2 Level-2 surface reflectance (Landsat 8-9 C2 L2 Science Product Guide): SR = DN·2.75e-5 − 0.2
C2_MULT, C2_ADD = 2.75e-5, -0.2


def _edit_band(path, change, nodata="keep"):
    """Rewrite a band file in place: ``change(dn) -> dn``; ``nodata=None`` removes the file's no-data tag."""
    # the simulator writes COGs, as USGS does; GDAL >= 3.8 refuses to update one unless told the layout may break
    with rasterio.open(path, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as dst:
        dst.write(change(dst.read(1)), 1)
        if nodata is None:
            dst.nodata = None


def _corner(shape, size):
    """A triangle in the upper-left corner, as the slanted edge of a scene footprint."""
    rows, cols = np.indices(shape)
    return rows + cols < size


def _read_all(path):
    with rasterio.open(path) as src:
        return list(src.descriptions), src.read()


def test_landsat_level1_fill_is_nodata_though_the_file_says_255(tmp_path):
    """RStoolbox tags its TM Level-1 bands with no-data 255, yet DN 0 is the Level-1 fill: both are no-data in
    every output band; every other pixel is the hand-computed TOA reflectance (ρ = π·L·d²/(ESUN·cos θs))."""
    source = shared_file("imagery", "landsat5_tm_amazon")
    folder = tmp_path / "tm"
    shutil.copytree(source, folder)
    bands = sorted(folder.glob("*_B[1-57].TIF"))
    with rasterio.open(bands[0]) as src:
        fill = _corner(src.shape, 80)
        assert src.nodata == 255
    for path in bands:
        _edit_band(path, lambda dn: np.where(fill, 0, dn).astype(dn.dtype))
    out = tmp_path / "toa.tif"
    harmonize_scene(folder, out, TargetGrid(reference=bands[0]), brdf=False)
    names, data = _read_all(out)
    assert np.isnan(data[:, fill]).all()  # fill: no-data in all six bands
    doy = 227  # 14 Aug 1988
    d = 1 - 0.01672 * math.cos(math.radians(0.9856 * (doy - 4)))
    cos_sz = math.cos(math.radians(90 - 49.75588889))  # SUN_ELEVATION of the MTL
    stack = np.stack([rasterio.open(p).read(1) for p in bands])
    valid = ~fill & (stack != 255).all(axis=0)
    for number, (m, a, esun) in {3: (1.044, -2.21398, 1536), 4: (0.876, -2.38602, 1031)}.items():
        with rasterio.open(folder / f"LT52240631988227CUB02_B{number}.TIF") as src:
            q = src.read(1).astype(float)
        got = data[names.index({3: "red", 4: "nir"}[number])]
        np.testing.assert_allclose(got[valid], (math.pi * (m * q + a) * d ** 2 / (esun * cos_sz))[valid], rtol=3e-4)
        assert np.isnan(got[~valid]).all()


def test_landsat_c2_level2_fill_without_a_nodata_tag(imagery_scene, tmp_path):
    """A Collection-2 Level-2 band whose file carries no no-data tag: DN 0 (fill) is still no-data, in every
    band, where QA_PIXEL says nothing; elsewhere SR = DN·2.75e-5 − 0.2."""
    scene, manifest = imagery_scene
    folder = tmp_path / "l2"
    shutil.copytree(scene / manifest["landsat"]["product"], folder)
    red_path = next(folder.glob("*_SR_B4.TIF"))
    with rasterio.open(red_path) as src:
        fill = _corner(src.shape, 8)
    for path in folder.glob("*_SR_B?.TIF"):
        _edit_band(path, lambda dn: np.where(fill, 0, dn).astype(dn.dtype), nodata=None)
    qa = rasterio.open(next(folder.glob("*_QA_PIXEL.TIF"))).read(1).astype(int)
    out = tmp_path / "sr.tif"
    harmonize_scene(folder, out, TargetGrid(reference=red_path), brdf=False)
    names, data = _read_all(out)
    assert np.isnan(data[:, fill]).all()
    clear = ~fill & ((qa & 0b11111) == 0)  # QA_PIXEL bits 0-4: fill, dilated cloud, cirrus, cloud, shadow
    assert np.isfinite(data[:, clear]).all()
    dn = rasterio.open(red_path).read(1).astype(float)
    np.testing.assert_allclose(data[names.index("red")][clear], (dn * C2_MULT + C2_ADD)[clear], atol=1e-6)


def test_sentinel2_fill_is_checked_before_the_offset(imagery_scene, tmp_path):
    """Sentinel-2 L2A (baseline ≥ 04.00, BOA_ADD_OFFSET −1000): DN 0 is NODATA, not (0 − 1000)/10000 = −0.1, even
    where the band files carry no no-data tag and SCL calls the pixel vegetation."""
    from forest_carbon_plugin.simulate.optical import S2_BOA_ADD_OFFSET, S2_QUANTIFICATION

    scene, manifest = imagery_scene
    folder = tmp_path / Path(manifest["sentinel2"]["product"]).name
    shutil.copytree(scene / manifest["sentinel2"]["product"], folder)
    b11 = next(folder.rglob("*_B11_20m.tif"))
    with rasterio.open(b11) as src:
        fill20 = _corner(src.shape, 10)
    for path in folder.rglob("*_B*_*m.tif"):
        res = int(path.stem.rsplit("_", 1)[1][:-1])
        factor = 20 / res  # the same ground area at 10, 20 and 60 m

        def change(dn, factor=factor):  # every pixel that touches the 20 m triangle
            rows, cols = np.indices(dn.shape)
            return np.where(np.floor(rows / factor) + np.floor(cols / factor) < 10, 0, dn).astype(dn.dtype)

        _edit_band(path, change, nodata=None)
    scl_path = next(folder.rglob("*_SCL_20m.tif"))
    _edit_band(scl_path, lambda scl: np.where(fill20, 4, scl).astype(scl.dtype))
    out = tmp_path / "s2.tif"
    harmonize_scene(folder, out, TargetGrid(reference=b11), brdf=False, bandpass=False)
    names, data = _read_all(out)
    assert np.isnan(data[:, fill20]).all()
    scl = rasterio.open(scl_path).read(1)
    dn = rasterio.open(b11).read(1).astype(float)
    swir1 = data[names.index("swir1")]
    clear = ~_corner(fill20.shape, 18) & np.isin(scl, (4, 5))  # past the 60 m fill's edge, vegetation or soil
    assert clear.sum() > 100
    np.testing.assert_allclose(swir1[clear], ((dn + S2_BOA_ADD_OFFSET) / S2_QUANTIFICATION)[clear], atol=1e-6)
    assert np.nanmin(data) > -0.05  # no −0.1 from a fill pixel


# -- compositescenes reads the product layouts harmonizescene reads ---------------------------------------

def test_composite_of_collection2_level2_folders(imagery_scene, tmp_path):
    """Two C2 L2 folders (the second 200 DN brighter) and a fully clouded one: the median is the mean of the two
    clear observations in USGS's scaling, QA_PIXEL's cloud/shadow/fill pixels are out, the clouded scene adds
    nothing (valid_count 2 at most)."""
    scene, manifest = imagery_scene
    product = scene / manifest["landsat"]["product"]
    a, b, cloudy = (tmp_path / k / product.name for k in ("a", "b", "cloudy"))
    for folder in (a, b, cloudy):
        shutil.copytree(product, folder)
    for path in b.glob("*_SR_B?.TIF"):
        _edit_band(path, lambda dn: (dn + 200).astype(dn.dtype))
    _edit_band(next(cloudy.glob("*_QA_PIXEL.TIF")), lambda qa: np.full_like(qa, 1 << 3))  # cloud bit everywhere
    out = tmp_path / "median.tif"
    composite_scenes([str(a), str(cloudy), str(b)], out, Median())
    names, data = _read_all(out)
    assert names[-1] == "valid_count" and {"red", "nir"} <= set(names)
    qa = rasterio.open(next(a.glob("*_QA_PIXEL.TIF"))).read(1).astype(int)
    clear = (qa & 0b111111) == 0  # fill, dilated cloud, cirrus, cloud, shadow, snow
    assert 0 < clear.mean() < 1
    np.testing.assert_array_equal(data[-1], np.where(clear, 2, 0))
    for name, number in (("red", 4), ("nir", 5)):
        dn_a = rasterio.open(next(a.glob(f"*_SR_B{number}.TIF"))).read(1).astype(float)
        dn_b = rasterio.open(next(b.glob(f"*_SR_B{number}.TIF"))).read(1).astype(float)
        expected = np.median(np.stack([dn_a, dn_b]) * C2_MULT + C2_ADD, axis=0)
        got = data[names.index(name)]
        np.testing.assert_allclose(got[clear], expected[clear], atol=1e-6)
        assert np.isnan(got[~clear]).all()
    red = data[names.index("red")][clear]
    assert 0 < np.median(red) < 0.2  # reflectance, not DN·1e-4 as an ESPA folder would be read


def test_composite_refuses_a_folder_it_cannot_read(tmp_path, forestcarbon_provider):
    import processing
    from qgis.core import QgsProcessingException

    odd = tmp_path / "downloads"
    odd.mkdir()
    (odd / "B4.tif").write_bytes(b"not a raster")
    with pytest.raises(QgsProcessingException, match=r"'.*downloads' is not a product layout the plugin reads.*"
                                                     r"Landsat.*Sentinel-2.*ESPA"):
        processing.run("forestcarbon:compositescenes", {"INPUTS": [str(odd)], "OUTPUT": str(tmp_path / "c.tif")})
    assert not (tmp_path / "c.tif").exists()


def test_composite_reads_sentinel2_and_landsat_level1_products(imagery_scene, tmp_path):
    """A Sentinel-2 L2A .SAFE: (DN + BOA_ADD_OFFSET)/QUANTIFICATION on its 10 m grid, SCL 0/3/8/9/10/11 out; a
    Landsat-5 TM Level-1 folder: TOA π·L·d²/(ESUN·cos θs) as harmonizescene computes it, fill and no-data out."""
    from forest_carbon_plugin.simulate.optical import S2_BOA_ADD_OFFSET, S2_QUANTIFICATION

    scene, manifest = imagery_scene
    safe = scene / manifest["sentinel2"]["product"]
    out = tmp_path / "s2.tif"
    composite_scenes([str(safe)], out, Median())
    names, data = _read_all(out)
    b04 = rasterio.open(next(safe.rglob("*_B04_10m.tif"))).read(1).astype(float)
    scl = rasterio.open(next(safe.rglob("*_SCL_20m.tif"))).read(1)
    scl10 = np.kron(scl, np.ones((2, 2), scl.dtype))[:b04.shape[0], :b04.shape[1]]  # nearest onto 10 m
    clear = ~np.isin(scl10, (0, 3, 8, 9, 10, 11))
    assert data.shape[1:] == b04.shape and 0 < clear.mean() < 1
    red = data[names.index("red")]
    np.testing.assert_allclose(red[clear], ((b04 + S2_BOA_ADD_OFFSET) / S2_QUANTIFICATION)[clear], atol=1e-6)
    assert np.isnan(red[~clear]).all()

    folder = shared_file("imagery", "landsat5_tm_amazon")
    out = tmp_path / "l1.tif"
    progress = NullProgress()
    composite_scenes([str(folder)], out, Median(), progress=progress)
    assert any("has no QA layer" in w for w in progress.warnings)
    names, data = _read_all(out)
    assert names == ["blue", "green", "red", "nir", "swir1", "swir2", "valid_count"]
    dn = np.stack([rasterio.open(p).read(1).astype(float) for p in sorted(folder.glob("*_B[1-57].TIF"))])
    valid = ((dn != 0) & (dn != 255)).all(axis=0)  # Level-1 fill and the files' own no-data
    doy, elevation = 227, 49.75588889  # 14 Aug 1988 and SUN_ELEVATION, from the MTL
    d = 1 - 0.01672 * math.cos(math.radians(0.9856 * (doy - 4)))
    expected = math.pi * (1.044 * dn[2] - 2.21398) * d ** 2 / (1536 * math.cos(math.radians(90 - elevation)))
    np.testing.assert_allclose(data[2][valid], expected[valid], rtol=3e-4)  # red: band 3's gain, bias and ESUN
    assert np.isnan(data[:6, ~valid]).all() and (data[6][~valid] == 0).all() and (data[6][valid] == 1).all()
