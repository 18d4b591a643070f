"""forestcarbon:spectralindices and core.indices."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.imagery.indices import spectral_indices

from tests.conftest import shared_file

ABER = "sen2_20210527_aber_subset"
# the stack's bands: 1 B2, 2 B3, 3 B4, 4 B5, 5 B6, 6 B7, 7 B8, 8 B8A, 9 B11, 10 B12 (× 1000)
ABER_MAP = "blue=1,green=2,red=3,re1=4,re2=5,re3=6,nir_broad=7,nir=8,swir1=9,swir2=10"


def _write(path, bands: dict, dtype="float32", nodata=None, scales=None, transform=Affine(10, 0, 500000, 0, -10, 0)):
    names = list(bands)
    data = np.stack([np.asarray(bands[n]) for n in names]).astype(dtype)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=len(names),
                       dtype=dtype, crs="EPSG:32630", transform=transform, nodata=nodata) as dst:
        dst.write(data)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
        if scales is not None:
            dst.scales = scales
    return path


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), list(src.descriptions), src.nodata


# ------------------------------------------------------------------ rsgislib's references

def test_ndvi_nbr_equal_rsgislib_references(tmp_path):
    stack = shared_file("imagery", "sentinel2_sr_aberystwyth", f"{ABER}.tif")
    out = tmp_path / "idx.tif"
    spectral_indices(stack, out, "NDVI,NBR", band_map=ABER_MAP)
    ours, names, nodata = _read(out)
    assert names == ["NDVI", "NBR"] and np.isnan(nodata)
    with rasterio.open(stack.with_name(f"{ABER}_vldmsk.tif")) as src:
        valid = src.read(1) == 1
    # rsgislib's tests call calc_ndvi(img, 3, 8) and calc_nbr(img, 8, 10): its NIR is band 8, B8A
    # (the plugin's "nir"), with red band 3 (B4) and SWIR2 band 10 (B12). Reproduced bit for bit
    # (measured max |diff| = 0); with band 7 (B8) as NIR NDVI differs by up to 0.57.
    for k, name in enumerate(("ndvi", "nbr")):
        with rasterio.open(stack.with_name(f"{ABER}_{name}_ref.tif")) as src:
            ref = src.read(1, masked=True)
        both = valid & ~np.ma.getmaskarray(ref)
        assert both.sum() == valid.size  # the whole subset is valid
        assert np.max(np.abs(ours[k][both] - ref.data[both])) <= 1e-6


def test_broad_nir_used_without_narrow_nir(tmp_path):
    stack = shared_file("imagery", "sentinel2_sr_aberystwyth", f"{ABER}.tif")
    out = tmp_path / "b8.tif"
    spectral_indices(stack, out, ["ndvi"], band_map="red=3,nir_broad=7")
    with rasterio.open(stack) as src:
        b4, b8 = src.read(3).astype(np.float64), src.read(7).astype(np.float64)
    expected = ((b8 - b4) / (b8 + b4)).astype(np.float32)
    ours, names, _ = _read(out)
    assert names == ["NDVI"]
    np.testing.assert_array_equal(ours[0], expected)


# ------------------------------------------------------------------ hand-computed values

def test_hand_computed_values(tmp_path):
    # pixel (0,0): blue .05 green .08 red .10 nir .40 swir1 .20 swir2 .10
    bands = {"Blue": [[0.05, 0.05, -9]], "green": [[0.08, 0.08, 0.1]], "RED": [[0.10, 0.0, 0.1]],
             "nir": [[0.40, 0.0, 0.4]], "swir1": [[0.20, 0.2, 0.2]], "swir2": [[0.10, 0.1, 0.1]]}
    src = _write(tmp_path / "tiny.tif", bands, nodata=-9)
    out = tmp_path / "out.tif"
    spectral_indices(src, out, "EVI,SAVI,NDMI,MSAVI,NDVI,GNDVI,NBR")
    ours, names, _ = _read(out)
    assert names == ["EVI", "SAVI", "NDMI", "MSAVI", "NDVI", "GNDVI", "NBR"]
    expected = {
        "EVI": 2.5 * 0.3 / (0.4 + 0.6 - 0.375 + 1),  # 0.461538
        "SAVI": 1.5 * 0.3 / (0.4 + 0.1 + 0.5),  # 0.45
        "NDMI": 0.2 / 0.6,
        "MSAVI": (1.8 - np.sqrt(1.8 ** 2 - 8 * 0.3)) / 2,  # 0.441742
        "NDVI": 0.3 / 0.5, "GNDVI": 0.32 / 0.48, "NBR": 0.3 / 0.5,
    }
    for k, name in enumerate(names):
        assert ours[k, 0, 0] == pytest.approx(expected[name], abs=1e-6), name
    # pixel (0,1): nir = red = 0, so NDVI's denominator is 0 -> NaN; NDMI = -1
    assert np.isnan(ours[names.index("NDVI"), 0, 1]) and ours[names.index("NDMI"), 0, 1] == pytest.approx(-1)
    # pixel (0,2): blue is no-data -> EVI NaN, the indices without blue are defined
    assert np.isnan(ours[names.index("EVI"), 0, 2])
    assert ours[names.index("NDVI"), 0, 2] == pytest.approx(0.6)


def test_gdal_scale_and_explicit_scale(tmp_path):
    dn = {"blue": [[500]], "red": [[1000]], "nir": [[4000]], "b8a": [[0]]}
    dn.pop("b8a")
    scaled = _write(tmp_path / "scaled.tif", dn, dtype="int16", nodata=-9999, scales=(1e-4, 1e-4, 1e-4))
    plain = _write(tmp_path / "plain.tif", dn, dtype="int16", nodata=-9999)
    evi = 2.5 * 0.3 / (0.4 + 0.6 - 0.375 + 1)
    spectral_indices(scaled, tmp_path / "a.tif", "EVI")
    spectral_indices(plain, tmp_path / "b.tif", "EVI", scale=1e-4)
    assert _read(tmp_path / "a.tif")[0][0, 0, 0] == pytest.approx(evi, abs=1e-6)
    assert _read(tmp_path / "b.tif")[0][0, 0, 0] == pytest.approx(evi, abs=1e-6)


def test_sentinel2_band_names_and_multiblock_equals_numpy(tmp_path):
    rng = np.random.default_rng(3)
    shape = (700, 1100)  # more than one 512-pixel block each way
    b04, b08, b8a, b11, b12 = (rng.uniform(0.01, 0.6, shape) for _ in range(5))
    b8a[5:9, 600:610] = np.nan  # NaN inputs give NaN
    src = _write(tmp_path / "big.tif", {"B04": b04, "B08": b08, "B8A": b8a, "B11": b11, "B12": b12})
    out = tmp_path / "big_idx.tif"
    spectral_indices(src, out, "NDVI,NDMI,NBR", max_workers=3)
    ours, names, _ = _read(out)
    r, n, s1, s2 = (a.astype(np.float32).astype(np.float64) for a in (b04, b8a, b11, b12))  # nir = B8A
    with np.errstate(invalid="ignore"):
        expected = np.stack([(n - r) / (n + r), (n - s1) / (n + s1), (n - s2) / (n + s2)]).astype(np.float32)
    np.testing.assert_array_equal(ours, expected)
    assert np.isnan(ours[:, 5:9, 600:610]).all() and np.isfinite(ours[:, :5]).all()


# ------------------------------------------------------------------ errors

def test_missing_band_names_index_and_band(tmp_path):
    src = _write(tmp_path / "rn.tif", {"red": [[0.1]], "nir": [[0.4]]})
    out = tmp_path / "x.tif"
    with pytest.raises(ForestCarbonError, match=r"NBR needs the swir2 band.*BAND_MAP"):
        spectral_indices(src, out, "NDVI,NBR")
    with pytest.raises(ForestCarbonError, match=r"not name=number"):
        spectral_indices(src, out, "NDVI", band_map="red:3,nir")
    with pytest.raises(ForestCarbonError, match=r"bands 1 to 2"):
        spectral_indices(src, out, "NDVI", band_map="red=5")
    with pytest.raises(ForestCarbonError, match=r"Unknown index FOO"):
        spectral_indices(src, out, "NDVI,foo")
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_scaled_integers_without_scale_is_an_error(tmp_path):
    stack = shared_file("imagery", "sentinel2_sr_aberystwyth", f"{ABER}.tif")
    out = tmp_path / "evi.tif"
    with pytest.raises(ForestCarbonError, match=r"EVI needs reflectance.*median of 52.*SCALE"):
        spectral_indices(stack, out, "NDVI,EVI", band_map=ABER_MAP)
    assert not out.exists()
    spectral_indices(stack, out, "EVI", band_map=ABER_MAP, scale=0.001)
    with rasterio.open(stack) as src:
        b, r, n = (src.read(i).astype(np.float64) / 1000 for i in (1, 3, 8))
    expected = (2.5 * (n - r) / (n + 6 * r - 7.5 * b + 1)).astype(np.float32)
    np.testing.assert_allclose(_read(out)[0][0], expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ QGIS

def test_processing_run(tmp_path, forestcarbon_provider):
    import processing
    from qgis.core import QgsProcessingException

    stack = shared_file("imagery", "sentinel2_sr_aberystwyth", f"{ABER}.tif")
    out = tmp_path / "q.tif"
    result = processing.run("forestcarbon:spectralindices", {
        "INPUT": str(stack), "INDICES": "NDVI,SAVI", "BAND_MAP": ABER_MAP, "SCALE": 0.001, "OUTPUT": str(out)})
    assert result["OUTPUT"] == str(out)
    ours, names, _ = _read(out)
    assert names == ["NDVI", "SAVI"]
    with rasterio.open(stack.with_name(f"{ABER}_ndvi_ref.tif")) as src:
        assert np.max(np.abs(ours[0] - src.read(1))) <= 1e-6
    alg = forestcarbon_provider.algorithm("spectralindices")
    assert alg.group() == "Imagery" and alg.groupId() == "imagery"
    assert alg.parameterDefinition("INDICES").defaultValue() == "NDVI,EVI,NBR,NDMI,SAVI"
    with pytest.raises(QgsProcessingException, match="NBR needs the swir2 band"):
        processing.run("forestcarbon:spectralindices", {"INPUT": str(stack), "INDICES": "NBR", "BAND_MAP": "red=3,nir=8",
                                                         "OUTPUT": str(tmp_path / "bad.tif")})
    assert not (tmp_path / "bad.tif").exists()


def test_qgis_process(qgis_config, tmp_path):
    from scripts import qgis_env

    stack = shared_file("imagery", "sentinel2_sr_aberystwyth", f"{ABER}.tif")
    out = tmp_path / "qp.tif"
    proc, results = qgis_env.run_algorithm("forestcarbon:spectralindices", {
        "INPUT": stack, "INDICES": "NBR", "BAND_MAP": ABER_MAP, "OUTPUT": out}, qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results["OUTPUT"] == str(out)
    with rasterio.open(stack.with_name(f"{ABER}_nbr_ref.tif")) as src:
        assert np.max(np.abs(_read(out)[0][0] - src.read(1))) <= 1e-6
    proc, _ = qgis_env.run_algorithm("forestcarbon:spectralindices", {
        "INPUT": stack, "INDICES": "EVI", "OUTPUT": tmp_path / "bad.tif"}, qgis_config)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "EVI needs the nir" in text and "Traceback" not in text
