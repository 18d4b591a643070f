"""harmonizehighres: robust fits by hand, invariant-pixel selection, the simulated NAIP gains."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import rasterio

from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.imagery.harmonize import TargetGrid, harmonize_scene
from forest_carbon_plugin.core.imagery.highres import (
    IRMAD,
    TheilSen,
    harmonize_highres,
    huber,
    irmad,
    rank_invariant,
    theil_sen,
)
from forest_carbon_plugin.core.progress import NullProgress


def test_theil_sen_and_huber_ignore_outliers():
    x = np.arange(20, dtype=float)
    y = 2.0 * x + 1.0
    y[[3, 11, 17]] += [40.0, -35.0, 60.0]  # 15% gross outliers
    slope, intercept = theil_sen(x, y)
    assert (slope, intercept) == pytest.approx((2.0, 1.0), abs=1e-9)  # median of pairwise slopes is exact here
    slope, intercept = huber(x, y)
    assert slope == pytest.approx(2.0, abs=0.05) and intercept == pytest.approx(1.0, abs=0.5)
    ols = np.polyfit(x, y, 1)
    assert abs(ols[0] - 2.0) > 0.15  # what least squares would have done


def test_invariant_selection_separates_changed_pixels():
    rng = np.random.default_rng(3)
    n = 4000
    z = rng.gamma(2.0, 0.05, (n, 1)) * np.array([[1.0, 1.4, 2.0, 3.5]]) + rng.normal(0, 0.01, (n, 4))
    x = 600 * z + 20 + rng.normal(0, 1.0, (n, 4))
    y = z + rng.normal(0, 0.002, (n, 4))
    changed = np.arange(n) < 400
    y[changed] = rng.permutation(y[changed])  # land-cover change: another pixel's spectrum
    probability, rho = irmad(x, y)
    assert np.all(np.diff(rho) >= -1e-12) and rho[-1] > 0.99
    assert probability[changed].mean() < 0.2 * probability[~changed].mean()
    keep = rank_invariant(x, y)
    assert keep[~changed].mean() > 3 * keep[changed].mean()


@pytest.fixture(scope="module")
def reference(imagery_scene, tmp_path_factory):
    """Sentinel-2 harmonized at 20 m: 10 and 20 m bands aggregate exactly onto it."""
    out, manifest = imagery_scene
    path = tmp_path_factory.mktemp("reference") / "s2_20m.tif"
    harmonize_scene(out / manifest["sentinel2"]["product"], path, TargetGrid(resolution_m=20))
    return path


def test_recovers_the_simulated_naip_gains_and_offsets(imagery_scene, reference, tmp_path):
    """NAIP DN = gain·ρ + offset (unknown to the algorithm): the fit reference = g·DN + o must
    give back gain = 1/g and offset = −o/g within 2%."""
    out, manifest = imagery_scene
    naip = out / manifest["naip"]["file"]
    progress = NullProgress()
    table = tmp_path / "fits.csv"
    result = harmonize_highres(naip, reference, tmp_path / "naip.tif", table, progress=progress)
    truth = dict(zip(manifest["naip"]["bands"], zip(manifest["truth"]["naip_gain"], manifest["truth"]["naip_offset"])))
    assert [f.band for f in result.fits] == ["red", "green", "blue", "nir"]  # every band checked below
    for fit in result.fits:
        gain, offset = truth[fit.band]
        assert 1 / fit.gain == pytest.approx(gain, rel=0.02), fit
        assert -fit.offset / fit.gain == pytest.approx(offset, rel=0.02), fit
        assert fit.r2 > 0.99 and fit.pixels_used >= 50
    rows = list(csv.DictReader(table.open()))
    assert [r["band"] for r in rows] == ["red", "green", "blue", "nir"]
    assert float(rows[0]["gain"]) == pytest.approx(result.fits[0].gain)
    # applied at native resolution: one pixel by hand
    with rasterio.open(naip) as src, rasterio.open(tmp_path / "naip.tif") as dst:
        assert dst.res == src.res and dst.descriptions == ("red", "green", "blue", "nir")
        dn = src.read(2, window=((100, 101), (200, 201)))[0, 0]
        got = dst.read(2, window=((100, 101), (200, 201)))[0, 0]
    assert got == pytest.approx(result.fits[1].gain * dn + result.fits[1].offset, rel=1e-6)


def test_irmad_and_theil_sen_options(imagery_scene, reference, tmp_path):
    out, manifest = imagery_scene
    progress = NullProgress()
    result = harmonize_highres(out / manifest["naip"]["file"], reference, tmp_path / "n.tif",
                               pif_method=IRMAD(), regression=TheilSen(), progress=progress)
    truth = manifest["truth"]["naip_gain"]
    assert len(result.fits) == len(truth) == 4  # zip below must not stop short
    for fit, gain in zip(result.fits, truth):
        assert 1 / fit.gain == pytest.approx(gain, rel=0.05), fit


def test_band_names_and_bad_inputs(imagery_scene, reference, tmp_path):
    out, manifest = imagery_scene
    naip = out / manifest["naip"]["file"]
    with rasterio.open(naip) as src:
        profile, data = src.profile, src.read()
    unnamed = tmp_path / "unnamed.tif"
    with rasterio.open(unnamed, "w", **profile) as dst:
        dst.write(data)
    with pytest.raises(ForestCarbonError, match="BAND_NAMES"):
        harmonize_highres(unnamed, reference, tmp_path / "x.tif")
    result = harmonize_highres(unnamed, reference, tmp_path / "named.tif", band_names=["red", "green", "blue", "nir"])
    assert [f.band for f in result.fits] == ["red", "green", "blue", "nir"]
    with pytest.raises(ForestCarbonError, match="names 2 bands"):
        harmonize_highres(unnamed, reference, tmp_path / "x.tif", band_names=["red", "green"])
    far = tmp_path / "far.tif"
    moved = dict(profile, transform=profile["transform"] * profile["transform"].translation(0, 0))
    from affine import Affine

    moved["transform"] = Affine.translation(100_000, 0) * profile["transform"]
    with rasterio.open(far, "w", **moved) as dst:
        dst.write(data)
        for i, name in enumerate(["red", "green", "blue", "nir"], start=1):
            dst.set_band_description(i, name)
    with pytest.raises(ForestCarbonError, match="do not cover the same area"):
        harmonize_highres(far, reference, tmp_path / "x.tif")
    assert not (tmp_path / "x.tif").exists()


def test_processing_run_and_qgis_process(imagery_scene, reference, tmp_path, forestcarbon_provider, qgis_config):
    import processing
    from qgis.core import QgsVectorLayer

    from scripts import qgis_env

    out, manifest = imagery_scene
    naip = out / manifest["naip"]["file"]
    table = tmp_path / "table.csv"
    result = processing.run("forestcarbon:harmonizehighres", {
        "INPUT": str(naip), "REFERENCE": str(reference), "OUTPUT": str(tmp_path / "a.tif"),
        "OUTPUT_TABLE": str(table)})
    layer = QgsVectorLayer(result["OUTPUT_TABLE"], "t")
    assert layer.isValid() and layer.featureCount() == 4
    assert {f.name() for f in layer.fields()} >= {"band", "gain", "offset", "r2", "pixels_used"}
    proc, results = qgis_env.run_algorithm("forestcarbon:harmonizehighres", {
        "INPUT": naip, "REFERENCE": reference, "PIF_METHOD": 0, "REGRESSION": 0, "OUTPUT": tmp_path / "b.tif"},
        qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "b.tif").is_file()
