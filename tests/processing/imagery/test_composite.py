"""forestcarbon:compositescenes, core.composite and core.espa."""

from __future__ import annotations

import datetime as dt
import itertools

import numpy as np
import pytest
import rasterio
from affine import Affine

from forest_carbon_plugin.core.imagery.composite import (
    MaxNDVI,
    Median,
    Medoid,
    composite_scenes,
    max_ndvi_composite,
    median_composite,
    medoid_composite,
)
from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.imagery.espa import read_espa_scene

from tests.conftest import shared_file

T0 = Affine(10, 0, 300000, 0, -10, 5000000)
NAMES = ("red", "nir", "swir1")
METHOD = {"median": Median(), "medoid": Medoid(), "max_ndvi": MaxNDVI()}


def _write(path, bands: dict, dtype="float32", nodata=float("nan"), transform=T0, scales=None):
    names = list(bands)
    data = np.stack([np.asarray(bands[n]) for n in names]).astype(dtype)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=len(names),
                       dtype=dtype, crs="EPSG:32630", transform=transform, nodata=nodata) as dst:
        dst.write(data)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
        if scales:
            dst.scales = scales
    return str(path)


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), list(src.descriptions), src.nodata


# ------------------------------------------------------------------ brute-force references

def _medoid_reference(obs: list[np.ndarray]):
    """The observation (bands,) minimising the sum of Euclidean distances to the others."""
    sums = [sum(float(np.sqrt(np.sum((a - b) ** 2))) for b in obs) for a in obs]
    return obs[int(np.argmin(sums))], sums


def _per_pixel(stack, valid, method):
    """(bands, rows, cols) by looping over pixels; stack (scenes, bands, rows, cols) float64."""
    s, b, rows, cols = stack.shape
    out = np.full((b, rows, cols), np.nan)
    for r, c in itertools.product(range(rows), range(cols)):
        obs = [stack[i, :, r, c] for i in range(s) if valid[i, r, c]]
        if not obs:
            continue
        if method == "median":
            out[:, r, c] = np.median(np.array(obs), axis=0)
        elif method == "medoid":
            out[:, r, c] = _medoid_reference(obs)[0]
        else:
            ndvi = [(o[1] - o[0]) / (o[1] + o[0]) for o in obs]
            out[:, r, c] = obs[int(np.argmax(ndvi))]
    return out


# ------------------------------------------------------------------ synthetic scenes, hand-known answers

@pytest.fixture
def synthetic(tmp_path):
    """Four 2 × 3 scenes: NaN no-data, an fmask band, another band order and an extra band, a
    scaled uint16 scene without no-data shifted one pixel east (its column 0 is outside)."""
    rng = np.random.default_rng(11)
    vals = rng.uniform(0.02, 0.5, size=(4, 3, 2, 3))  # scene, band (red, nir, swir1), row, col
    valid = np.ones((4, 2, 3), dtype=bool)
    s0 = {n: vals[0, k].copy() for k, n in enumerate(NAMES)}
    s0["nir"][0, 0] = np.nan  # one band no-data -> the observation is invalid
    valid[0, 0, 0] = False
    fmask = np.array([[0, 4, 2], [1, 255, 3]])  # clear, cloud, shadow / water, fill, snow
    valid[1] &= np.isin(fmask, (0, 1))
    s1 = {"nir": vals[1, 1], "fmask": fmask, "red": vals[1, 0], "blue": np.full((2, 3), 0.03), "swir1": vals[1, 2]}
    s2 = {n: vals[2, k].copy() for k, n in enumerate(NAMES)}
    for k in range(3):
        s2[NAMES[k]][1, 2] = np.nan
    valid[2, 1, 2] = False
    # scene 3: uint16 × 1e-4, no no-data value, one pixel east: output column c is its column c - 1
    dn = np.round(vals[3] * 10000).astype(np.uint16)
    vals[3] = dn * 1e-4
    vals[3][:, :, 1:] = vals[3][:, :, :2].copy()
    valid[3, :, 0] = False
    s3 = {n: dn[k] for k, n in enumerate(NAMES)}
    paths = [_write(tmp_path / "s0.tif", s0), _write(tmp_path / "s1.tif", s1),
             _write(tmp_path / "s2.tif", s2),
             _write(tmp_path / "s3.tif", s3, dtype="uint16", nodata=None, scales=(1e-4,) * 3,
                    transform=T0 * Affine.translation(1, 0))]
    stack = vals.astype(np.float32).astype(np.float64)
    return paths, stack, valid


def test_valid_count_and_masking(synthetic, tmp_path):
    paths, stack, valid = synthetic
    out = tmp_path / "median.tif"
    summary = composite_scenes(paths, out, Median(), max_workers=2)
    data, names, nodata = _read(out)
    assert names == ["red", "nir", "swir1", "valid_count"] and np.isnan(nodata)
    assert summary["bands"] == ["red", "nir", "swir1"] and summary["scenes"] == 4
    # by hand: s0 all but (0,0); s1 (0,0) clear and (1,0) water; s2 all but (1,2); s3 columns 1, 2
    hand = np.array([[0 + 1 + 1 + 0, 1 + 0 + 1 + 1, 1 + 0 + 1 + 1],
                     [1 + 1 + 1 + 0, 1 + 0 + 1 + 1, 1 + 0 + 0 + 1]])
    np.testing.assert_array_equal(data[3], hand)
    np.testing.assert_array_equal(data[3], valid.sum(axis=0))
    np.testing.assert_allclose(data[:3], _per_pixel(stack, valid, "median"), rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["medoid", "max_ndvi"])
def test_medoid_and_max_ndvi_by_brute_force(synthetic, tmp_path, method):
    paths, stack, valid = synthetic
    out = tmp_path / f"{method}.tif"
    composite_scenes(paths, out, METHOD[method])
    data, _, _ = _read(out)
    np.testing.assert_allclose(data[:3], _per_pixel(stack, valid, method), rtol=0, atol=1e-6)


def test_no_valid_observation_is_nodata_with_zero_count(tmp_path):
    a = _write(tmp_path / "a.tif", {"red": [[0.1, np.nan]], "nir": [[0.3, 0.3]]})
    b = _write(tmp_path / "b.tif", {"red": [[0.2, 0.1]], "nir": [[0.4, 0.3]], "fmask": [[0, 4]]})
    for method in ("median", "medoid", "max_ndvi"):
        composite_scenes([a, b], tmp_path / f"{method}.tif", METHOD[method])
        data, _, _ = _read(tmp_path / f"{method}.tif")
        assert np.isnan(data[:2, 0, 1]).all() and data[2, 0, 1] == 0 and data[2, 0, 0] == 2
    assert _read(tmp_path / "max_ndvi.tif")[0][:2, 0, 0] == pytest.approx([0.1, 0.3])  # NDVI .5 > .333


def test_array_functions_on_a_stack():
    # one pixel, three observations on a line: the medoid is the middle one
    stack = np.array([[0.0, 0.0], [1.0, 1.0], [3.0, 3.0], [np.nan, 0.0]])[:, :, None, None]
    assert medoid_composite(stack)[:, 0, 0] == pytest.approx([1, 1])
    assert median_composite(stack)[:, 0, 0] == pytest.approx([1, 1])
    ndvi_stack = np.array([[0.1, 0.2], [0.1, 0.5], [0.3, 0.4]])[:, :, None, None]  # red, nir
    assert max_ndvi_composite(ndvi_stack, 0, 1)[:, 0, 0] == pytest.approx([0.1, 0.5])


# ------------------------------------------------------------------ the real Landsat time series

def _landsat(year=None):
    root = shared_file("imagery", "landsat_timeseries")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    return [f for f in folders if year is None or read_espa_scene(f).date.year == year]


def _landsat_stack(folders):
    """(scenes, 3, rows, cols) reflectance with NaN where invalid, read file by file with rasterio."""
    stack, valid = [], []
    for f in folders:
        sid = f.name
        bands = []
        for b in ("b3", "b4", "b5"):
            with rasterio.open(f / f"{sid}_{b}.tif") as src:
                bands.append(src.read(1).astype(np.float64))
        with rasterio.open(f / f"{sid}_fmask.tif") as src:
            fmask = src.read(1)
        ok = ((fmask == 0) | (fmask == 1)) & np.all([b != -9999 for b in bands], axis=0)
        valid.append(ok)
        stack.append(np.where(ok, np.array(bands), np.nan) * 1e-4)
    return np.array(stack), np.array(valid)


def test_espa_reader():
    folder = _landsat()[0]
    scene = read_espa_scene(folder)
    assert scene.scene_id == "LE70350322008118EDC00" and scene.sensor == "TM/ETM+"
    assert scene.date == dt.date(2008, 4, 27)  # 2008, day 118
    assert [(b.path.name[-7:], b.name, b.scale, b.nodata) for b in scene.bands] == [
        ("_b3.tif", "red", 1e-4, -9999), ("_b4.tif", "nir", 1e-4, -9999), ("_b5.tif", "swir1", 1e-4, -9999)]
    assert scene.mask.name == "fmask" and scene.mask.nodata == 255


def test_landsat_2010_median_and_max_ndvi(tmp_path):
    folders = _landsat(2010)
    assert len(folders) == 18
    stack, valid = _landsat_stack(folders)
    out = tmp_path / "median.tif"
    composite_scenes(folders, out, Median())
    data, names, _ = _read(out)
    assert names == ["red", "nir", "swir1", "valid_count"]
    np.testing.assert_array_equal(data[3], valid.sum(axis=0))
    assert 0 < data[3].min() and data[3].max() <= 18  # measured: 6 to 12 valid dates per pixel
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmedian(stack, axis=0)
    np.testing.assert_allclose(data[:3], expected, rtol=0, atol=1e-6)
    composite_scenes(folders, tmp_path / "maxndvi.tif", MaxNDVI())
    picked = _read(tmp_path / "maxndvi.tif")[0]
    with np.errstate(all="ignore"):
        ndvi = (stack[:, 1] - stack[:, 0]) / (stack[:, 1] + stack[:, 0])
    best = np.nanargmax(ndvi, axis=0)
    expected = np.take_along_axis(stack, best[None, None], axis=0)[0]
    np.testing.assert_allclose(picked[:3], expected, rtol=0, atol=1e-6)


def test_landsat_medoid_against_pairwise_distances(tmp_path):
    folders = _landsat(2011)
    stack, valid = _landsat_stack(folders)
    out = tmp_path / "medoid.tif"
    composite_scenes(folders, out, Medoid())
    data = _read(out)[0]
    # full (scenes × scenes) distance matrix per pixel
    diff = np.nan_to_num(stack[:, None] - stack[None, :])
    dist = np.sqrt((diff ** 2).sum(axis=2))  # (s, s, rows, cols)
    pair_ok = valid[:, None] & valid[None, :]
    sums = np.where(valid, np.where(pair_ok, dist, 0).sum(axis=1), np.inf)
    # the output equals a valid observation whose distance sum is the minimum
    match = np.all(np.abs(stack - data[None, :3]) < 1e-6, axis=1) & valid  # (s, rows, cols)
    has = valid.any(axis=0)
    assert match.any(axis=0)[has].all()
    chosen = np.where(match, sums, np.inf).min(axis=0)
    np.testing.assert_allclose(chosen[has], sums.min(axis=0)[has], rtol=1e-9)
    np.testing.assert_array_equal(data[3], valid.sum(axis=0))


# ------------------------------------------------------------------ errors

def test_bad_inputs(tmp_path):
    a = _write(tmp_path / "a.tif", {"red": [[0.1]], "nir": [[0.3]]})
    b = _write(tmp_path / "b.tif", {"swir1": [[0.1]], "swir2": [[0.3]]})
    c = _write(tmp_path / "c.tif", {"swir1": [[0.1]], "red": [[0.3]]})
    out = tmp_path / "x.tif"
    with pytest.raises(ForestCarbonError, match="no band in common"):
        composite_scenes([a, b], out)
    with pytest.raises(ForestCarbonError, match="max-NDVI composite needs bands described 'red' and 'nir'"):
        composite_scenes([a, c], out, MaxNDVI())
    with pytest.raises(ForestCarbonError, match="not a readable raster"):
        composite_scenes([a, str(tmp_path / "missing.tif")], out)
    with pytest.raises(ForestCarbonError, match=r"is not a product layout the plugin reads: give a Landsat .*MTL.*"
                                                r"Sentinel-2 .*ESPA"):
        composite_scenes([a, str(tmp_path)], out)
    assert not out.exists()


# ------------------------------------------------------------------ QGIS

def test_processing_run(tmp_path, forestcarbon_provider, synthetic):
    import processing
    from qgis.core import QgsRasterLayer

    paths, stack, valid = synthetic
    folders = [str(f) for f in _landsat(2012)[:3]]
    out = tmp_path / "q.tif"
    result = processing.run("forestcarbon:compositescenes", {"INPUTS": folders, "METHOD": 1, "OUTPUT": str(out)})
    assert result["OUTPUT"] == str(out)
    assert _read(out)[1] == ["red", "nir", "swir1", "valid_count"]
    # raster layers (as the dialog gives them) and paths
    layers = [QgsRasterLayer(p, f"s{i}") for i, p in enumerate(paths)]
    result = processing.run("forestcarbon:compositescenes", {"INPUTS": layers[:2] + paths[2:], "METHOD": 2,
                                                             "OUTPUT": str(tmp_path / "l.tif")})
    np.testing.assert_allclose(_read(result["OUTPUT"])[0][:3], _per_pixel(stack, valid, "max_ndvi"), atol=1e-6)
    alg = forestcarbon_provider.algorithm("compositescenes")
    assert alg.group() == "Imagery" and alg.groupId() == "imagery"


def test_processing_run_bad_input(tmp_path, forestcarbon_provider):
    # a test of its own: a traceback that keeps QgsRasterLayer objects alive until QGIS exits
    # crashes the interpreter at exit
    import processing
    from qgis.core import QgsProcessingException

    good = _write(tmp_path / "good.tif", {"red": [[0.1]], "nir": [[0.3]]})
    bad = _write(tmp_path / "bad.tif", {"coastal": [[0.1]]})
    with pytest.raises(QgsProcessingException, match="no band in common"):
        processing.run("forestcarbon:compositescenes", {"INPUTS": [good, bad], "OUTPUT": str(tmp_path / "b.tif")})
    assert not (tmp_path / "b.tif").exists()


def test_qgis_process(qgis_config, tmp_path):
    from scripts import qgis_env

    folders = _landsat(2013)
    out = tmp_path / "qp.tif"
    proc, results = qgis_env.run_algorithm("forestcarbon:compositescenes", {
        "INPUTS": folders, "METHOD": 0, "OUTPUT": out}, qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results["OUTPUT"] == str(out)
    _, valid = _landsat_stack(folders)
    np.testing.assert_array_equal(_read(out)[0][3], valid.sum(axis=0))
    proc, _ = qgis_env.run_algorithm("forestcarbon:compositescenes", {
        "INPUTS": folders, "METHOD": 5, "OUTPUT": tmp_path / "bad.tif"}, qgis_config)
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
