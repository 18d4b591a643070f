"""forestcarbon:sarfeatures: speckle filters, dB, VH/VV ratio, block-wise = whole image."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from forest_carbon_plugin.core.errors import Cancelled, ForestCarbonError
from forest_carbon_plugin.core.outputs import PROVENANCE_KEY
from forest_carbon_plugin.core.imagery.sar import (
    BANDS,
    GammaMAP,
    NoFilter,
    RefinedLee,
    gamma_map,
    refined_lee,
    sar_features,
    to_db,
)

L = 4.4  # Sentinel-1 IW GRDH
FILTER = {"refined_lee": RefinedLee, "gamma_map": GammaMAP, "none": lambda window, looks: NoFilter()}
CRS = "EPSG:32610"


def _write(path, array, crs=CRS, res=10.0, nodata=float("nan")):
    array = np.asarray(array, dtype=np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[1], height=array.shape[0], count=1,
                       dtype="float32", crs=crs, transform=from_origin(500000, 5000000, res, res),
                       nodata=nodata) as dst:
        dst.write(array, 1)
    return path


class _Meta:
    def __init__(self, src):
        self.descriptions, self.dtypes, self.nodata = src.descriptions, src.dtypes, src.nodata


def _read(path):
    with rasterio.open(path) as src:
        return src.read().astype(np.float64), _Meta(src)


def _speckle(shape, seed, looks=L):
    return np.random.default_rng(seed).gamma(looks, 1.0 / looks, shape)


def _enl(values):
    return float(values.mean() ** 2 / values.var())


class Recorder:
    def __init__(self, cancel_after=None):
        self.percents, self.messages, self.cancel_after = [], [], cancel_after

    def set_progress(self, percent):
        self.percents.append(percent)

    def is_canceled(self):
        return self.cancel_after is not None and len(self.percents) >= self.cancel_after

    def info(self, message):
        self.messages.append(message)

    def warning(self, message):
        self.messages.append(message)


# -- 1. hand-computed pixels ------------------------------------------------------------------------
def test_gamma_map_centre_pixel_by_hand():
    values = [[1.0, 2.6, 1.5], [0.6, 1.6, 2.9], [1.0, 0.5, 1.4]]
    flat = [v for row in values for v in row]
    n = len(flat)
    m = sum(flat) / n
    var = sum((v - m) ** 2 for v in flat) / n
    ci = math.sqrt(var) / m
    cu = 1 / math.sqrt(L)
    cmax = math.sqrt(2) * cu
    assert cu < ci < cmax  # the MAP branch
    alpha = (1 + cu ** 2) / (ci ** 2 - cu ** 2)
    b = alpha - L - 1
    centre = values[1][1]
    expected = (b * m + math.sqrt(b * b * m * m + 4 * alpha * L * m * centre)) / (2 * alpha)
    got = gamma_map(np.array(values), window=3, looks=L)[1, 1]
    assert got == pytest.approx(expected, rel=1e-12)
    # homogeneous (Ci ≤ Cu): the local mean; very heterogeneous (Ci ≥ Cmax): the pixel itself
    calm = np.array([[1.0, 1.1, 0.9], [1.0, 1.2, 1.0], [0.95, 1.05, 1.0]])
    assert gamma_map(calm, 3, L)[1, 1] == pytest.approx(calm.mean(), rel=1e-12)
    wild = np.array([[1.0, 9.0, 0.1], [0.2, 5.0, 0.1], [7.0, 0.1, 0.3]])
    assert gamma_map(wild, 3, L)[1, 1] == pytest.approx(5.0, rel=1e-12)


def test_refined_lee_mmse_by_hand():
    # a homogeneous field with one bright centre pixel: every gradient is 0, and every
    # directional 7×7 window (half or triangle, 28 pixels) holds 27 background pixels + the centre
    image = np.ones((7, 7))
    image[3, 3] = 6.0
    pixels = [1.0] * 27 + [6.0]
    m = sum(pixels) / 28
    var_z = sum((p - m) ** 2 for p in pixels) / 28
    sigma_v2 = 1 / L
    b = (var_z - m * m * sigma_v2) / (var_z * (1 + sigma_v2))
    assert 0 < b < 1
    expected = m + b * (6.0 - m)
    assert refined_lee(image, 7, L)[3, 3] == pytest.approx(expected, rel=1e-12)
    # a uniform image stays uniform, edges of the raster included (var = 0 → b = 0 → the mean)
    flat = np.full((12, 15), 0.037)
    np.testing.assert_allclose(refined_lee(flat, 7, L), 0.037, rtol=1e-12)
    np.testing.assert_allclose(gamma_map(flat, 7, L), 0.037, rtol=1e-12)
    # missing pixels stay missing and do not spread
    holed = flat.copy()
    holed[5, 6] = np.nan
    out = refined_lee(holed, 7, L)
    assert np.isnan(out[5, 6]) and np.isfinite(np.delete(out.ravel(), 5 * 15 + 6)).all()


def test_db_and_ratio_bands(tmp_path):
    vv = np.array([[0.1, 0.01, 1.0, 0.05], [0.2, np.nan, 0.0, 0.3], [0.1, 0.1, -1.0, 0.4]])
    vh = np.array([[0.01, 0.001, 0.1, 0.005], [0.02, 0.01, 0.01, np.nan], [0.03, 0.02, 0.01, 0.04]])
    np.testing.assert_allclose(to_db([0.1, 1.0, 0.001, 2.0]), [-10.0, 0.0, -30.0, 3.0102999566], rtol=1e-9)
    assert np.isnan(to_db([0.0, -1.0, np.nan])).all()
    out = sar_features(_write(tmp_path / "vv.tif", vv), _write(tmp_path / "vh.tif", vh), tmp_path / "f.tif",
                       filter=NoFilter())
    data, src = _read(out)
    assert src.descriptions == BANDS and src.dtypes == ("float32",) * 3 and math.isnan(src.nodata)
    for i, j in np.ndindex(vv.shape):
        a, b = vv[i, j], vh[i, j]
        if not (a > 0 and b > 0):  # NaN, 0 or negative in either input: no-data in the ratio
            assert math.isnan(data[2, i, j])
            continue
        assert data[0, i, j] == pytest.approx(10 * math.log10(a), abs=1e-5)
        assert data[1, i, j] == pytest.approx(10 * math.log10(b), abs=1e-5)
        assert data[2, i, j] == pytest.approx(10 * math.log10(b) - 10 * math.log10(a), abs=1e-5)
    assert np.isnan(data[0, 1, 1]) and np.isnan(data[0, 1, 2]) and np.isnan(data[0, 2, 2])
    assert np.isfinite(data[1, 1, 1]) and np.isnan(data[1, 1, 3])


# -- 2. statistics on simulated speckle -------------------------------------------------------------
@pytest.mark.parametrize("name, function", [("refined Lee", refined_lee), ("Gamma-MAP", gamma_map)])
def test_speckle_reduction_keeps_the_mean(name, function):
    """7×7 on pure speckle (L = 4.4): ENL at least 4× the input's (measured: refined Lee 18×,
    Gamma-MAP 29×; a boxcar gives 49×), mean within 2 % (measured: −0.7 %, −1.4 %)."""
    truth = 0.05
    image = truth * _speckle((300, 300), seed=11)
    inner = (slice(10, -10), slice(10, -10))
    enl_in = _enl(image[inner])
    out = function(image, 7, L)[inner]
    enl_out = _enl(out)
    bias = out.mean() / truth - 1
    assert enl_in == pytest.approx(L, rel=0.05)
    assert enl_out >= 4 * enl_in, f"{name}: ENL {enl_in:.2f} → {enl_out:.1f} ({enl_out / enl_in:.1f}×)"
    assert abs(bias) < 0.02, f"{name}: mean bias {100 * bias:+.2f} %"


def test_refined_lee_keeps_edges_sharper_than_a_boxcar():
    from scipy import ndimage

    truth = np.full((200, 200), 0.01)
    truth[:, 100:] = 0.1  # a 10 dB step between columns 99 and 100
    image = truth * _speckle(truth.shape, seed=3)
    rows = slice(10, -10)

    def profile(filtered):
        # mean dB across the rows, scaled 0 (dark side) → 1 (bright side)
        return (10 * np.log10(filtered[rows]).mean(axis=0) + 20) / 10

    def width(p):  # columns between 10 % and 90 % of the step
        return int(((p[80:120] > 0.1) & (p[80:120] < 0.9)).sum())

    lee = profile(refined_lee(image, 7, L))
    box = profile(ndimage.uniform_filter(image, 7, mode="nearest"))
    lee_err = np.abs(lee[94:106] - (np.arange(94, 106) >= 100)).mean()
    box_err = np.abs(box[94:106] - (np.arange(94, 106) >= 100)).mean()
    widths = f"10-90 % edge width: refined Lee {width(lee)}, boxcar {width(box)} columns"
    assert width(lee) <= 1 < 5 <= width(box), widths
    errors = f"mean |error| within ±6 px of the edge: Lee {lee_err:.3f}, boxcar {box_err:.3f} (of the step)"
    assert lee_err < box_err / 3, errors


# -- 3. block-wise equals the whole image ------------------------------------------------------------
@pytest.mark.parametrize("filter_name, window", [("refined_lee", 7), ("gamma_map", 7), ("refined_lee", 5),
                                                 ("gamma_map", 9), ("none", 7)])
def test_blocks_equal_whole_image(tmp_path, filter_name, window):
    rng = np.random.default_rng(7)
    shape = (203, 170)  # 4 × 3 blocks of 64, ragged at the right and bottom
    scene = np.exp(rng.normal(0, 0.8, (shape[0] // 10 + 1, shape[1] // 10 + 1)))
    scene = np.kron(scene, np.ones((10, 10)))[:shape[0], :shape[1]]
    vv = 0.1 * scene * _speckle(shape, 1)
    vh = 0.02 * scene * _speckle(shape, 2)
    vv[60:70, 62:68] = np.nan  # holes across a block edge
    vv[5, 5] = 0.0
    vh[130, 100] = -0.5
    vh[128:129, :] = 9999.0  # declared no-data
    vv, vh = (x.astype(np.float32).astype(np.float64) for x in (vv, vh))  # as stored
    out = sar_features(_write(tmp_path / "vv.tif", vv), _write(tmp_path / "vh.tif", vh, nodata=9999.0),
                       tmp_path / "out.tif", filter=FILTER[filter_name](window, L), max_workers=2,
                       block_size=64)
    data, _ = _read(out)

    def whole(x):
        x = np.where(np.isfinite(x) & (x > 0) & (x != 9999.0), x, np.nan)
        return {"refined_lee": refined_lee, "gamma_map": gamma_map,
                "none": lambda a, w, n: a}[filter_name](x, window, L)

    expected_vv, expected_vh = to_db(whole(vv)), to_db(whole(vh))
    expected = np.stack([expected_vv, expected_vh, expected_vh - expected_vv]).astype(np.float32)
    assert np.array_equal(np.isnan(data), np.isnan(expected))
    np.testing.assert_allclose(data, expected, rtol=0, atol=1e-6, equal_nan=True)
    # every window sum is a fixed-order sum of shifted slices: the results are even bit for bit equal
    assert np.array_equal(data, expected, equal_nan=True)
    assert np.isnan(data[1:, 128]).all() and np.isnan(data[0, 5, 5]) and np.isnan(data[1, 130, 100])
    assert np.isfinite(data[0, 128]).all()  # VV there is valid


def test_progress_and_cancel(tmp_path):
    vv = _write(tmp_path / "vv.tif", 0.1 * _speckle((100, 100), 1))
    vh = _write(tmp_path / "vh.tif", 0.02 * _speckle((100, 100), 2))
    progress = Recorder()
    sar_features(vv, vh, tmp_path / "ok.tif", block_size=32, max_workers=2, progress=progress)
    assert progress.percents[-1] == pytest.approx(100) and len(progress.percents) == 16
    with rasterio.open(tmp_path / "ok.tif") as src:
        record = json.loads(src.tags()[PROVENANCE_KEY])
        assert record["algorithm"] == "forestcarbon:sarfeatures"
        assert record["parameters"]["filter"] == "refined_lee"
        assert src.tags()["LOOKS"] == "4.4" and src.tags()["FILTER"] == "refined_lee"
    with pytest.raises(Cancelled):
        sar_features(vv, vh, tmp_path / "cancelled.tif", block_size=32, max_workers=2,
                     progress=Recorder(cancel_after=3))
    assert not list(tmp_path.glob("*cancelled*"))


# -- 4. the simulated scene ---------------------------------------------------------------------------
def test_filtering_improves_correlation_with_agb(imagery_scene, tmp_path):
    """Speckle hides the AGB signal of the water-cloud backscatter; filtering recovers part of it.

    The 10 m AGB truth varies from pixel to pixel (single crowns) and a 7×7 filter also smooths
    that real variation, so the gain is moderate: Pearson ρ(dB, AGB) on forest pixels rises by
    about 0.03-0.06 (0.74 → 0.80 with refined Lee on the seed-5 scene).
    """
    from scipy.stats import pearsonr, spearmanr

    folder, manifest = imagery_scene
    files = manifest["sentinel1"]["files"]
    vv, vh = folder / files["VV"], folder / files["VH"]
    looks = float(manifest["sentinel1"]["looks"])
    with rasterio.open(folder / manifest["truth"]["agb_10m"]) as src:
        agb = src.read(1, masked=True).filled(np.nan).astype(np.float64)
    pearson, spearman = {}, {}
    for name in ("none", "refined_lee", "gamma_map"):
        out = sar_features(vv, vh, tmp_path / f"{name}.tif", filter=FILTER[name](7, looks))
        data, _ = _read(out)
        assert data.shape[1:] == agb.shape
        forest = np.isfinite(agb) & (agb > 10) & np.isfinite(data).all(axis=0)
        assert forest.sum() > 1000
        pearson[name] = [pearsonr(data[b][forest], agb[forest])[0] for b in (0, 1)]
        spearman[name] = [spearmanr(data[b][forest], agb[forest]).correlation for b in (0, 1)]
    text = "; ".join(f"{k}: Pearson VV {pearson[k][0]:.3f} VH {pearson[k][1]:.3f}, "
                     f"Spearman VV {spearman[k][0]:.3f} VH {spearman[k][1]:.3f}" for k in pearson)
    for name in ("refined_lee", "gamma_map"):
        for band in (0, 1):
            assert pearson[name][band] > pearson["none"][band] + 0.015, f"ρ with AGB (forest): {text}"
            assert spearman[name][band] >= spearman["none"][band] - 0.005, text
    gain = np.mean(pearson["refined_lee"]) - np.mean(pearson["none"])
    assert gain > 0.04, f"refined Lee Pearson gain {gain:.3f}: {text}"


# -- 5. bad input ------------------------------------------------------------------------------------
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path):
    vv = _write(tmp_path / "vv.tif", 0.1 * _speckle((40, 50), 1))
    vh = _write(tmp_path / "vh.tif", 0.02 * _speckle((40, 50), 2))
    other_size = _write(tmp_path / "vh_small.tif", 0.02 * _speckle((40, 45), 2))
    other_crs = _write(tmp_path / "vh_crs.tif", 0.02 * _speckle((40, 50), 2), crs="EPSG:32611")
    other_res = _write(tmp_path / "vh_res.tif", 0.02 * _speckle((40, 50), 2), res=20.0)
    text = tmp_path / "notes.tif"
    text.write_text("not a raster\n")
    cases = [
        ((vv, other_size), {}, ["not on the same grid", "50 × 40 vs 45 × 40"]),
        ((vv, other_crs), {}, ["not on the same grid", "EPSG:32610 vs EPSG:32611"]),
        ((vv, other_res), {}, ["not on the same grid"]),
        ((vv, vh), {"filter": RefinedLee(window=6)}, ["WINDOW", "odd"]),
        ((vv, vh), {"filter": RefinedLee(window=1)}, ["WINDOW", "3 or more"]),
        ((vv, vh), {"filter": RefinedLee(looks=0)}, ["LOOKS", "greater than 0"]),
        ((vv, vh), {"filter": "median"}, ["Unknown speckle filter", "refined_lee"]),
        ((text, vh), {}, ["INPUT_VV", "notes.tif", "cannot be read as a raster"]),
        ((vv, tmp_path / "missing.tif"), {}, ["INPUT_VH", "missing.tif"]),
    ]
    for (a, b), kwargs, words in cases:
        with pytest.raises(ForestCarbonError) as excinfo:
            sar_features(a, b, tmp_path / "out.tif", **kwargs)
        for word in words:
            assert word in str(excinfo.value), (kwargs, str(excinfo.value))
    assert not list(tmp_path.glob("*out*"))
    with pytest.raises(ForestCarbonError, match="WINDOW"):
        refined_lee(np.ones((9, 9)), 4, L)


# -- 6. Processing and qgis_process -----------------------------------------------------------------
def test_processing_run(tmp_path, forestcarbon_provider):
    import processing
    from qgis.core import QgsApplication, QgsProcessingException

    alg = QgsApplication.processingRegistry().algorithmById("forestcarbon:sarfeatures")
    assert alg.group() == "Imagery" and alg.groupId() == "imagery"
    assert "Lee 1981" in alg.shortHelpString() and "Lopes" in alg.shortHelpString()
    definitions = {p.name(): p for p in alg.parameterDefinitions()}
    assert {"INPUT_VV", "INPUT_VH", "FILTER", "WINDOW", "LOOKS", "OUTPUT"} <= set(definitions)
    assert definitions["FILTER"].defaultValue() == 0 and definitions["WINDOW"].defaultValue() == 7
    assert definitions["LOOKS"].defaultValue() == pytest.approx(4.4)

    vv_arr, vh_arr = 0.1 * _speckle((60, 70), 1), 0.02 * _speckle((60, 70), 2)
    vv, vh = _write(tmp_path / "vv.tif", vv_arr), _write(tmp_path / "vh.tif", vh_arr)
    out = tmp_path / "features.tif"
    result = processing.run("forestcarbon:sarfeatures", {"INPUT_VV": str(vv), "INPUT_VH": str(vh),
                                                         "FILTER": 1, "WINDOW": 5, "OUTPUT": str(out)})
    assert result["OUTPUT"] == str(out)
    data, src = _read(out)
    assert src.descriptions == BANDS
    np.testing.assert_allclose(data[0], to_db(gamma_map(vv_arr.astype(np.float32), 5, 4.4)), atol=1e-5)

    with pytest.raises(QgsProcessingException) as excinfo:
        processing.run("forestcarbon:sarfeatures", {"INPUT_VV": str(vv), "INPUT_VH": str(vh), "WINDOW": 8,
                                                    "OUTPUT": str(tmp_path / "bad.tif")})
    assert "WINDOW" in str(excinfo.value) and "odd" in str(excinfo.value)
    assert not list(tmp_path.glob("*bad*"))


def test_qgis_process_runs_sarfeatures(qgis_config, tmp_path):
    from scripts import qgis_env

    vv = _write(tmp_path / "vv.tif", 0.1 * _speckle((50, 40), 1))
    vh = _write(tmp_path / "vh.tif", 0.02 * _speckle((50, 40), 2))
    out = tmp_path / "features.tif"
    proc, results = qgis_env.run_algorithm("forestcarbon:sarfeatures", {
        "INPUT_VV": vv, "INPUT_VH": vh, "FILTER": 0, "WINDOW": 7, "LOOKS": 4.4, "OUTPUT": out}, qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results["OUTPUT"] == str(out)
    with rasterio.open(out) as src:
        assert src.count == 3 and src.descriptions == BANDS
    bad = tmp_path / "other.tif"
    _write(bad, 0.02 * _speckle((50, 41), 2))
    proc, _ = qgis_env.run_algorithm("forestcarbon:sarfeatures", {
        "INPUT_VV": vv, "INPUT_VH": bad, "OUTPUT": tmp_path / "bad.tif"}, qgis_config)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "not on the same grid" in text and "Traceback" not in text
    assert not (tmp_path / "bad.tif").exists()
