"""harmonizescene: published coefficients, hand-computed pixels, simulated and real products."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil

import numpy as np
import pytest
import rasterio

from forest_carbon_plugin.core.imagery import hls, solar
from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.imagery.harmonize import TargetGrid, harmonize_scene
from forest_carbon_plugin.core.progress import NullProgress
from forest_carbon_plugin.simulate import SceneConfig, simulate_scene

from tests.conftest import shared_file

COMMON = ("coastal", "blue", "green", "red", "nir", "swir1", "swir2")


def _read(path):
    with rasterio.open(path) as src:
        return list(src.descriptions), src.read(), src.tags(), src.transform


def _band(path, name):
    names, data, _, _ = _read(path)
    return data[names.index(name)]


def _block_any(mask, f):
    r, c = mask.shape
    return mask.reshape(r // f, f, c // f, f).any(axis=(1, 3))


def _block_mean(a, f):
    r, c = a.shape
    return a.reshape(r // f, f, c // f, f).mean(axis=(1, 3))


# -- formulas against the notes ------------------------------------------------------------

@pytest.mark.parametrize("lat, l8, s2", [(45, 10.7357, 11.0813), (0, 10.1833, 10.5000)])
def test_overpass_local_times_match_notes(lat, l8, s2):
    assert solar.overpass_local_time_h(lat, "landsat8") == pytest.approx(l8, abs=1e-4)
    assert solar.overpass_local_time_h(lat, "sentinel2") == pytest.approx(s2, abs=1e-4)


def test_nbar_zenith_by_hand_on_an_equinox():
    """At lat 0, lon 0 on 2021-03-20 (declination ≈ 0): zenith = |hour angle|, with the hour
    angle from the local overpass time and the equation of time (≈ −7.5 min that day)."""
    eot_h = -7.5 / 60
    expected = np.mean([abs(15 * (t + eot_h - 12)) for t in (10.18333, 10.5)])
    assert solar.nbar_solar_zenith_deg(0.0, dt.date(2021, 3, 20), 0.0) == pytest.approx(expected, abs=0.3)


def test_sun_position_matches_landsat_metadata():
    """The MTL's sun angles of the real TM and OLI scenes (scene centre, acquisition time)."""
    z, a = solar.sun_position(dt.datetime(1988, 8, 14, 13, 0, 47, tzinfo=dt.timezone.utc), -4.332, -50.073)
    assert 90 - z == pytest.approx(49.756, abs=0.3) and a == pytest.approx(61.967, abs=0.5)
    z, a = solar.sun_position(dt.datetime(2016, 6, 25, 18, 55, 50, tzinfo=dt.timezone.utc), 46.02, -122.35)
    assert 90 - z == pytest.approx(62.582, abs=0.3) and a == pytest.approx(139.326, abs=0.5)


@pytest.mark.parametrize("band", sorted(hls.BRDF_COEFFICIENTS))
def test_c_factor_is_one_at_the_normalization_geometry(band):
    assert hls.c_factor(band, 37.2, 0.0, 0.0, 37.2) == pytest.approx(1.0, abs=1e-12)
    assert hls.c_factor(band, 37.2, 0.0, 123.0, 37.2) == pytest.approx(1.0, abs=1e-12)  # azimuth moot at nadir


# -- simulated products ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def geometry_scene(tmp_path_factory):
    """Same sun, opposite views: Sentinel-2 10° off-nadir on the backscatter side, Landsat 7.5°
    on the forward side, so BRDF and bandpass differences dominate the raw comparison."""
    out = tmp_path_factory.mktemp("geometry") / "scene"
    config = SceneConfig(size_m=600, seed=11, pulse_density=0.5, cloud_fraction=0.05,
                         s2_sun_zenith_deg=38.0, s2_sun_azimuth_deg=150.0, s2_view_zenith_deg=10.0,
                         s2_view_azimuth_deg=150.0, landsat_sun_zenith_deg=38.0, landsat_sun_azimuth_deg=150.0,
                         landsat_view_zenith_deg=7.5, landsat_view_azimuth_deg=330.0)
    manifest = simulate_scene(out, config)
    return out, manifest


def _agreement(manifest, out, tmp_path, resolution_m):
    """Mean absolute S2 − Landsat difference per band over pixels clear in both, after and
    before (reflectance only) harmonization."""
    paths = {}
    for key, sensor, opts in (("s2", "sentinel2", {}), ("l8", "landsat", {}),
                              ("s2_raw", "sentinel2", {"brdf": False, "bandpass": False}),
                              ("l8_raw", "landsat", {"brdf": False, "bandpass": False})):
        paths[key] = tmp_path / f"{key}_{resolution_m}.tif"
        harmonize_scene(out / manifest[sensor]["product"], paths[key],
                        TargetGrid(resolution_m=resolution_m), **opts)
    after, before = {}, {}
    for name in COMMON:
        a, b = _band(paths["s2"], name), _band(paths["l8"], name)
        ra, rb = _band(paths["s2_raw"], name), _band(paths["l8_raw"], name)
        ok = np.isfinite(a) & np.isfinite(b)
        assert ok.sum() >= 30, (name, ok.sum())
        after[name] = float(np.abs(a - b)[ok].mean())
        before[name] = float(np.abs(ra - rb)[ok].mean())
    return after, before


def test_sentinel2_and_landsat_agree_after_harmonization(geometry_scene, tmp_path):
    """On HLS's 30 m grid every band agrees to ≤ 0.01. What is left there is mostly the
    20 m → 30 m resampling of textured canopy (a 30 m pixel is not an average of whole 20 m
    pixels): on a 60 m grid, where every band aggregates exactly, the residual is sensor
    noise and harmonization brings the sensors ≥ 3× closer."""
    out, manifest = geometry_scene
    after30, _ = _agreement(manifest, out, tmp_path, 30)
    for name in COMMON:
        assert after30[name] <= 0.01, (name, after30)
    after60, before60 = _agreement(manifest, out, tmp_path, 60)
    for name in COMMON:
        assert after60[name] <= 0.01 and after60[name] < before60[name] / 1.5, (name, before60, after60)
    print("30 m:", after30, "60 m before:", before60, "60 m after:", after60)
    assert np.mean(list(before60.values())) >= 3 * np.mean(list(after60.values())), (before60, after60)


@pytest.fixture(scope="module")
def harmonized(imagery_scene, tmp_path_factory):
    out, manifest = imagery_scene
    folder = tmp_path_factory.mktemp("harmonized")
    results = {}
    for sensor in ("sentinel2", "landsat"):
        progress = NullProgress()
        path = folder / f"{sensor}.tif"
        result = harmonize_scene(out / manifest[sensor]["product"], path, progress=progress)
        results[sensor] = (path, result, progress)
    return results


def test_hand_computed_sentinel2_pixel(imagery_scene, harmonized):
    """Red at one 30 m pixel: mean of the 3×3 10 m DNs → (DN + BOA_ADD_OFFSET)/QUANTIFICATION
    → × c-factor at the tile angles and the NBAR zenith → × S2A slope + offset."""
    out, manifest = imagery_scene
    path, result, _ = harmonized["sentinel2"]
    s2 = manifest["sentinel2"]
    with rasterio.open(out / s2["files"]["B04"]) as src:
        dn = src.read(1).astype(float)
    names, data, tags, _ = _read(path)
    theta_n = float(tags["NBAR_SOLAR_ZENITH"])
    centre = solar.nbar_solar_zenith_deg(50.5314, dt.date(2023, 7, 15), 15.0)
    assert theta_n == pytest.approx(centre, abs=0.05)
    c = hls.c_factor("red", s2["sun_zenith_deg"], s2["view_zenith_deg"],
                     s2["view_azimuth_deg"] - s2["sun_azimuth_deg"], theta_n)
    red = data[names.index("red")]
    checked = 0
    for r, col in ((3, 4), (10, 12), (17, 5)):
        if not np.isfinite(red[r, col]):
            continue
        rho = (dn[3 * r:3 * r + 3, 3 * col:3 * col + 3].mean() - 1000) / 10000
        assert red[r, col] == pytest.approx(0.9765 * rho * c + 0.0009, abs=2e-6)
        checked += 1
    assert checked >= 2


def test_hand_computed_landsat_pixel_with_angle_bands(imagery_scene, harmonized):
    out, manifest = imagery_scene
    path, result, progress = harmonized["landsat"]
    assert result.product.angle_source == "per-pixel angle bands"
    assert not any("angles" in w for w in progress.warnings)
    ls = manifest["landsat"]
    with rasterio.open(out / ls["files"]["SR_B5"]) as src:
        dn = src.read(1).astype(float)
    nir = _band(path, "nir")
    theta_n = result.nbar_sza_deg
    c = hls.c_factor("nir", ls["sun_zenith_deg"], ls["view_zenith_deg"],
                     ls["view_azimuth_deg"] - ls["sun_azimuth_deg"], theta_n)
    ok = np.isfinite(nir)
    np.testing.assert_allclose(nir[ok], ((dn * 2.75e-5 - 0.2) * c)[ok], atol=2e-6)


def test_masks_match_the_simulated_flags(imagery_scene, harmonized):
    out, manifest = imagery_scene
    with rasterio.open(out / manifest["landsat"]["files"]["QA_PIXEL"]) as src:
        qa = src.read(1).astype(int)
    flagged = ((qa >> 0) & 1) | ((qa >> 1) & 1) | ((qa >> 2) & 1) | ((qa >> 3) & 1) | ((qa >> 4) & 1)
    nir = _band(harmonized["landsat"][0], "nir")
    assert flagged.any()
    np.testing.assert_array_equal(~np.isfinite(nir), flagged.astype(bool))

    with rasterio.open(out / manifest["sentinel2"]["files"]["SCL"]) as src:
        scl = src.read(1)
    bad20 = np.isin(scl, [0, 1, 3, 8, 9, 10])  # default mask: cloud, shadow, cirrus, saturated, fill
    bad30 = _block_any(np.repeat(np.repeat(bad20, 2, axis=0), 2, axis=1), 3)  # any 20 m pixel under a 30 m one
    red = _band(harmonized["sentinel2"][0], "red")
    assert bad30.any() and (~bad30).any()
    np.testing.assert_array_equal(~np.isfinite(red), bad30)


def test_mask_dilation_across_block_edges(imagery_scene, harmonized, tmp_path):
    out, manifest = imagery_scene
    from scipy.ndimage import binary_dilation

    base = ~np.isfinite(_band(harmonized["landsat"][0], "red"))
    dilated_path = tmp_path / "dilated.tif"
    harmonize_scene(out / manifest["landsat"]["product"], dilated_path, mask_dilation=2, block_size=16)
    expected = binary_dilation(base, structure=np.ones((3, 3), bool), iterations=2)
    np.testing.assert_array_equal(~np.isfinite(_band(dilated_path, "red")), expected)


def test_provenance_and_band_names(harmonized):
    path, result, _ = harmonized["sentinel2"]
    names, data, tags, _ = _read(path)
    assert names == list(COMMON) + ["re1", "re2", "re3", "nir_broad"]
    record = json.loads(tags["FOREST_CARBON_PROVENANCE"])
    assert record["algorithm"] == "forestcarbon:harmonizescene"
    assert record["sensor"] == "MSI" and record["platform"] == "S2A" and record["level"] == "SR"
    assert any("bandpass" in s for s in record["steps"]) and "HLS v2.0" in record["coefficients"]
    with rasterio.open(path) as src:
        assert src.dtypes[0] == "float32" and math.isnan(src.nodata)
        assert src.profile["tiled"] and src.overviews(1) == [] or src.width < 512  # small rasters: no overviews
        assert src.tags(1)["SOURCE_BAND"] == "B01"


def test_high_resolution_target_grid_and_reference_grid(imagery_scene, harmonized, tmp_path):
    """A 10 m grid in another CRS, and a REFERENCE_GRID whose grid wins."""
    out, manifest = imagery_scene
    ten = tmp_path / "ten.tif"
    harmonize_scene(out / manifest["sentinel2"]["product"], ten, TargetGrid(resolution_m=10), brdf=False,
                    bandpass=False, mask_classes=())
    with rasterio.open(out / manifest["sentinel2"]["files"]["B04"]) as src:
        dn = src.read(1).astype(float)
    np.testing.assert_allclose(_band(ten, "red"), (dn - 1000) / 10000, atol=1e-6)  # same grid: no resampling
    ref = tmp_path / "ref.tif"
    harmonize_scene(out / manifest["landsat"]["product"], ref, TargetGrid(reference=harmonized["sentinel2"][0]))
    with rasterio.open(ref) as a, rasterio.open(harmonized["sentinel2"][0]) as b:
        assert (a.transform, a.width, a.height, a.crs) == (b.transform, b.width, b.height, b.crs)
    utm32 = tmp_path / "utm32.tif"
    harmonize_scene(out / manifest["landsat"]["product"], utm32, TargetGrid(crs="EPSG:32632", resolution_m=30))
    with rasterio.open(utm32) as src:
        assert src.crs.to_epsg() == 32632 and src.transform.a == 30
        assert src.transform.c % 30 == 0 and src.transform.f % 30 == 0
        red = src.read(src.descriptions.index("red") + 1)
    assert np.isfinite(red).sum() > 0.5 * np.isfinite(_band(harmonized["landsat"][0], "red")).sum()


# -- real products --------------------------------------------------------------------------

def test_landsat5_tm_toa_equals_hand_computation(tmp_path):
    """TOA reflectance of the real TM scene: π·L·d²/(ESUN·cos θs), L = M·Q + A from the MTL,
    ESUN of Chander et al. (2009) Table 11, d from the common approximation
    1 − 0.01672·cos(0.9856·(DOY − 4)), θs = 90° − SUN_ELEVATION."""
    folder = shared_file("imagery", "landsat5_tm_amazon")
    band1 = folder / "LT52240631988227CUB02_B1.TIF"
    out = tmp_path / "tm.tif"
    progress = NullProgress()
    result = harmonize_scene(folder, out, TargetGrid(reference=band1), brdf=False, progress=progress)
    assert result.product.level == "TOA" and result.bands == ["blue", "green", "red", "nir", "swir1", "swir2"]
    doy = dt.date(1988, 8, 14).timetuple().tm_yday
    d = 1 - 0.01672 * math.cos(math.radians(0.9856 * (doy - 4)))
    cos_sz = math.cos(math.radians(90 - 49.75588889))
    gains = {1: (0.671, -2.19134, 1983), 3: (1.044, -2.21398, 1536), 4: (0.876, -2.38602, 1031),
             7: (0.066, -0.21555, 83.44)}
    names, data, tags, _ = _read(out)
    assert json.loads(tags["FOREST_CARBON_PROVENANCE"])["level"] == "TOA"
    for number, (m, a, esun) in gains.items():
        with rasterio.open(folder / f"LT52240631988227CUB02_B{number}.TIF") as src:
            q = src.read(1).astype(float)
            valid = q != src.nodata
        expected = math.pi * (m * q + a) * d ** 2 / (esun * cos_sz)
        got = data[names.index({1: "blue", 3: "red", 4: "nir", 7: "swir2"}[number])]
        np.testing.assert_allclose(got[valid], expected[valid], rtol=3e-4)
        assert np.isnan(got[~valid]).all()


def test_pre_collection_landsat8_json_mtl_gives_toa(tmp_path):
    """Pre-collection MTL in JSON (rio-toa's test scene): ρ = (M·Q + A)/sin(SUN_ELEVATION);
    the band files carry a prefix the MTL does not name; only bands 2-4 are present."""
    folder = shared_file("holdout", "landsat8_l1")
    out = tmp_path / "l8.tif"
    progress = NullProgress()
    harmonize_scene(folder / "LC80460282016177LGN00_MTL.json", out,
                    TargetGrid(reference=folder / "tiny_LC80460282016177LGN00_B3.TIF"), brdf=False, progress=progress)
    assert any("Bands not found" in w and "coastal" in w for w in progress.warnings)
    names, data, _, _ = _read(out)
    assert names == ["blue", "green", "red"]
    dn = {b: rasterio.open(folder / f"tiny_LC80460282016177LGN00_B{b}.TIF").read(1).astype(float) for b in (2, 3, 4)}
    q = dn[3]
    valid = (dn[2] > 0) & (dn[3] > 0) & (dn[4] > 0)  # DN 0 is Level-1 fill: no-data in every band
    expected = (2e-05 * q - 0.1) / math.sin(math.radians(62.58246948))
    np.testing.assert_allclose(data[1][valid], expected[valid], rtol=1e-5, atol=1e-6)
    assert (~valid).sum() > 0.3 * valid.size and np.isnan(data[:, ~valid]).all()


def test_sentinel2_l1c_bands_at_10_20_60_m_on_one_grid(tmp_path):
    folder = shared_file("imagery", "sentinel2_l1c_T33UUU")
    out = tmp_path / "s2l1c.tif"
    progress = NullProgress()
    result = harmonize_scene(folder, out, TargetGrid(resolution_m=20), brdf=False, progress=progress)
    assert result.product.level == "TOA" and result.product.platform == "S2A"
    assert any("QUANTIFICATION_VALUE 10000" in w for w in progress.warnings)
    names, data, _, transform = _read(out)
    assert len(names) == 11 and data.shape[1:] == (384, 768) and transform.a == 20
    img = folder / "IMG_DATA"
    with rasterio.open(img / "T33UUU_20170216T102101_B04.jp2") as src:
        b04 = src.read(1).astype(float)
    with rasterio.open(img / "T33UUU_20170216T102101_B11.jp2") as src:
        b11 = src.read(1).astype(float)
    with rasterio.open(img / "T33UUU_20170216T102101_B8A.jp2") as src:
        fill = src.read(1) == 0  # one NODATA pixel (DN 0) in B8A: no-data in every band
    assert fill.sum() == 1 and np.isnan(data[:, fill]).all()
    # 10 m → 20 m: area average; 20 m → 20 m: the values themselves (×0.9765 + 0.0009 for red: bandpass)
    np.testing.assert_allclose(data[names.index("red")][~fill],
                               (0.9765 * _block_mean(b04, 2) / 10000 + 0.0009)[~fill], atol=1e-6)
    np.testing.assert_allclose(data[names.index("swir1")][~fill], (0.9987 * b11 / 10000 - 0.0011)[~fill], atol=1e-6)
    assert np.isfinite(data[names.index("coastal")]).mean() > 0.99  # 60 m B01 resampled onto the grid


# -- bad input -------------------------------------------------------------------------------

def _landsat_copy(imagery_scene, tmp_path):
    out, manifest = imagery_scene
    copy = tmp_path / "product"
    shutil.copytree(out / manifest["landsat"]["product"], copy)
    return copy, next(copy.glob("*_MTL.txt"))


def test_bad_inputs_are_clear_errors(imagery_scene, tmp_path):
    target = tmp_path / "out.tif"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ForestCarbonError, match="No Landsat MTL or Sentinel-2"):
        harmonize_scene(empty, target)
    copy, mtl = _landsat_copy(imagery_scene, tmp_path)
    garbage = copy / "broken_MTL.json"
    garbage.write_text('{"LANDSAT_METADATA_FILE": {"IMAGE_ATTRIBUTES": ')
    with pytest.raises(ForestCarbonError, match="cannot be parsed"):
        harmonize_scene(garbage, target)
    garbage.unlink()
    mtl.write_text(mtl.read_text().replace('SPACECRAFT_ID = "LANDSAT_8"', 'SPACECRAFT_ID = "LANDSAT_1"'))
    with pytest.raises(ForestCarbonError, match="Unknown or unsupported sensor 'LANDSAT_1'"):
        harmonize_scene(copy, target)
    mtl.write_text(mtl.read_text().replace('"LANDSAT_1"', '"LANDSAT_8"'))
    for tif in copy.glob("*_SR_B*.TIF"):
        tif.unlink()
    with pytest.raises(ForestCarbonError, match="No usable reflective band"):
        harmonize_scene(copy, target)
    with pytest.raises(ForestCarbonError, match="does not exist"):
        harmonize_scene(tmp_path / "nowhere", target)
    assert not target.exists() and not list(tmp_path.glob(".out.*"))


def test_mixed_crs_bands_are_refused(imagery_scene, tmp_path):
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    out, manifest = imagery_scene
    folder = tmp_path / "bands"
    folder.mkdir()
    for band in ("B02", "B03", "B04"):
        shutil.copy(out / manifest["sentinel2"]["files"][band], folder / f"T33UUU_20230715T100031_{band}.tif")
    odd = folder / "T33UUU_20230715T100031_B04.tif"
    with rasterio.open(odd) as src:
        transform, width, height = calculate_default_transform(src.crs, "EPSG:3035", src.width, src.height,
                                                               *src.bounds)
        profile = dict(src.profile, crs="EPSG:3035", transform=transform, width=width, height=height)
        data = src.read(1)
    odd.unlink()
    with rasterio.open(odd, "w", **profile) as dst:
        reproject(data, rasterio.band(dst, 1), src_transform=src.transform, src_crs=src.crs,
                  dst_transform=transform, dst_crs="EPSG:3035", resampling=Resampling.nearest)
    with pytest.raises(ForestCarbonError, match="mix coordinate systems"):
        harmonize_scene(folder, tmp_path / "out.tif", brdf=False)
    assert not (tmp_path / "out.tif").exists()


def test_all_cloud_scene_is_all_nodata_with_a_warning(imagery_scene, tmp_path):
    copy, _ = _landsat_copy(imagery_scene, tmp_path)
    qa_path = next(copy.glob("*_QA_PIXEL.TIF"))
    with rasterio.open(qa_path) as src:
        profile, qa = src.profile, src.read(1)
    qa_path.unlink()
    with rasterio.open(qa_path, "w", **profile) as dst:
        dst.write(np.full_like(qa, (1 << 3) | (3 << 8)), 1)  # every pixel: cloud, high confidence
    progress = NullProgress()
    out = tmp_path / "cloudy.tif"
    result = harmonize_scene(copy, out, progress=progress)
    assert result.valid_fraction == 0
    assert any("all no-data" in w for w in progress.warnings)
    assert np.isnan(_read(out)[1]).all()


def test_cancel_leaves_nothing(imagery_scene, tmp_path):
    out, manifest = imagery_scene

    class CancelAfterFirst(NullProgress):
        calls = 0

        def set_progress(self, percent):
            self.calls += 1

        def is_canceled(self):
            return self.calls >= 1

    target = tmp_path / "cancelled.tif"
    with pytest.raises(ForestCarbonError, match="Cancelled"):
        harmonize_scene(out / manifest["sentinel2"]["product"], target, TargetGrid(resolution_m=10), block_size=16,
                        progress=CancelAfterFirst())
    assert not target.exists() and not list(tmp_path.iterdir())


# -- QGIS ------------------------------------------------------------------------------------

def test_processing_run(imagery_scene, tmp_path, forestcarbon_provider):
    import processing
    from qgis.core import QgsRasterLayer

    from processing_provider.base import RgbStyler

    out, manifest = imagery_scene
    target = tmp_path / "qgis.tif"
    result = processing.run("forestcarbon:harmonizescene", {
        "INPUT": str(out / manifest["landsat"]["product"]), "TARGET_RESOLUTION": 30, "MASK": [0, 1],
        "MASK_DILATION": 1, "OUTPUT": str(target)})
    assert result["OUTPUT"] == str(target)
    layer = QgsRasterLayer(str(target), "h")
    assert layer.isValid() and layer.bandCount() == 7
    RgbStyler().postProcessLayer(layer, None, None)  # what QGIS runs when it loads the output
    renderer = layer.renderer()
    bands = (renderer.redBand(), renderer.greenBand(), renderer.blueBand())
    kind = renderer.type()
    del renderer, layer  # no QGIS object may outlive the application (a crash at exit otherwise)
    assert kind == "multibandcolor"
    assert bands == (4, 3, 2)  # coastal is band 1


def test_processing_run_bad_input(tmp_path, forestcarbon_provider):
    import processing
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="No Landsat MTL or Sentinel-2"):
        processing.run("forestcarbon:harmonizescene", {"INPUT": str(tmp_path), "OUTPUT": str(tmp_path / "x.tif")})
    assert not (tmp_path / "x.tif").exists()


def test_qgis_process(imagery_scene, qgis_config, tmp_path):
    from scripts import qgis_env

    out, manifest = imagery_scene
    target = tmp_path / "qp.tif"
    proc, results = qgis_env.run_algorithm("forestcarbon:harmonizescene", {
        "INPUT": out / manifest["sentinel2"]["product"] / "MTD_MSIL2A.xml", "TARGET_RESOLUTION": 20,
        "OUTPUT": target}, qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with rasterio.open(target) as src:
        assert src.transform.a == 20 and "nir_broad" in src.descriptions
