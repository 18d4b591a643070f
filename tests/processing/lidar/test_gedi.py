"""importgedi: the real rGEDI L2A/L2B subsets against independent h5py reads, filters, bad
input, and through QGIS."""

from __future__ import annotations

import datetime as dt
import zipfile

import h5py
import numpy as np
import pytest

from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.lidar.catalog import Extent
from forest_carbon_plugin.core.lidar.gedi import POWER_BEAMS, read_gedi, to_datetime

from tests.conftest import shared_file

L2A = "GEDI02_A_2019108080338_O01964_T05337_02_001_01_sub.zip"
L2B = "GEDI02_B_2019108080338_O01964_T05337_02_001_01_sub.zip"


@pytest.fixture(scope="module")
def zips():
    return shared_file("gedi", L2A), shared_file("gedi", L2B)


def _independent(zip_path, tmp_path, names):
    """Datasets ``names`` (paths inside each BEAM group) of every beam, read with zipfile + h5py."""
    with zipfile.ZipFile(zip_path) as archive:
        (member,) = [m for m in archive.namelist() if m.endswith(".h5")]
        archive.extract(member, tmp_path)
    out = {n: [] for n in names}
    out["beam"] = []
    with h5py.File(tmp_path / member, "r") as h5:
        for beam in sorted(k for k in h5 if k.startswith("BEAM")):
            for n in names:
                out[n].append(h5[beam][n][()])
            out["beam"].append(np.full(h5[beam]["shot_number"].shape[0], beam))
    return {k: np.concatenate(v) for k, v in out.items()}


def test_l2a_shots_and_rh98(zips, tmp_path):
    ref = _independent(zips[0], tmp_path, ["shot_number", "rh", "lat_lowestmode", "lon_lowestmode",
                                           "elev_lowestmode", "delta_time"])
    shots = read_gedi(zips[0], quality=False)
    assert len(shots) == len(ref["shot_number"]) == 301
    assert shots.counts["shots_read"] == 301 and shots.counts["l2a_files"] == 1
    order = np.argsort(shots["shot_number"])
    ref_order = np.argsort(ref["shot_number"])
    np.testing.assert_array_equal(shots["shot_number"][order], ref["shot_number"][ref_order].astype(np.int64))
    np.testing.assert_array_equal(shots["rh98"][order], ref["rh"][ref_order, 98])
    np.testing.assert_array_equal(shots["rh50"][order], ref["rh"][ref_order, 50])
    np.testing.assert_array_equal(shots["lat"][order], ref["lat_lowestmode"][ref_order])
    np.testing.assert_array_equal(shots["lon"][order], ref["lon_lowestmode"][ref_order])
    np.testing.assert_array_equal(shots["elev_lowestmode"][order], ref["elev_lowestmode"][ref_order])
    np.testing.assert_array_equal(shots["beam"][order], ref["beam"][ref_order])
    assert len(set(shots["beam"])) == 7
    assert np.isnan(shots["cover"]).all() and (shots["l2b_quality_flag"] == -1).all()
    # delta_time counts seconds from 2018-01-01T00:00:00Z; the granule starts 2019-108 (18 April) 08:03:38
    k = order[0]
    expected = dt.datetime(2018, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=float(shots["delta_time"][k]))
    assert abs((to_datetime(shots["time_utc"][k]) - expected).total_seconds()) < 1e-3
    assert to_datetime(shots["time_utc"][k]).date() == dt.date(2019, 4, 18)


def test_l2b_join_by_shot_number(zips, tmp_path):
    ref = _independent(zips[1], tmp_path, ["shot_number", "cover", "pai"])
    by_shot = {int(s): (c, p) for s, c, p in zip(ref["shot_number"], ref["cover"], ref["pai"])}
    # given in reverse order: the join does not depend on file order
    shots = read_gedi([zips[1], zips[0]], quality=False)
    assert len(shots) == 301 and shots.counts["l2b_joined"] == 301
    cover = np.array([by_shot[int(s)][0] for s in shots["shot_number"]])
    pai = np.array([by_shot[int(s)][1] for s in shots["shot_number"]])
    np.testing.assert_array_equal(shots["cover"], cover)
    np.testing.assert_array_equal(shots["pai"], pai)
    assert np.isfinite(shots["rh98"]).all()


def test_l2b_alone_gives_cover_points(zips):
    shots = read_gedi(zips[1])
    assert len(shots) == 301 and np.isnan(shots["rh98"]).all()
    assert np.isfinite(shots["cover"]).all() and (shots["quality_flag"] == -1).all()


def test_quality_beam_and_extent_filters(zips, tmp_path):
    ref = _independent(zips[0], tmp_path, ["shot_number", "quality_flag", "degrade_flag", "sensitivity",
                                           "lat_lowestmode", "lon_lowestmode"])
    good = (ref["quality_flag"] == 1) & (ref["degrade_flag"] == 0)
    # every shot of the subset passes the usual 0.9: a stricter threshold makes the filter bite
    assert read_gedi(zips[0]).counts["shots_kept"] == int((good & (ref["sensitivity"] >= 0.9)).sum()) == 301
    strict = good & (ref["sensitivity"] >= 0.95)
    shots = read_gedi(zips, min_sensitivity=0.95)
    assert 0 < len(shots) == int(strict.sum()) < 301
    assert set(shots["shot_number"]) == set(ref["shot_number"][strict].astype(np.int64))
    # beams
    power = read_gedi(zips, quality=False, beams="power")
    assert len(power) == int(np.isin(ref["beam"], POWER_BEAMS).sum()) == 188
    assert set(power["beam_type"]) == {"power"}
    two = read_gedi(zips, quality=False, beams="BEAM0101, 1011")
    assert len(two) == int(np.isin(ref["beam"], ["BEAM0101", "BEAM1011"]).sum()) == 89
    assert len(read_gedi(zips, quality=False, beams="coverage")) == 301 - 188
    # extent (lon/lat, and the same box in UTM 23S)
    lon, lat = ref["lon_lowestmode"], ref["lat_lowestmode"]
    box = (float(np.quantile(lon, 0.2)), float(np.quantile(lat, 0.3)), float(np.quantile(lon, 0.8)),
           float(np.quantile(lat, 0.9)))
    inside = (lon >= box[0]) & (lon <= box[2]) & (lat >= box[1]) & (lat <= box[3])
    shots = read_gedi(zips, quality=False, extent=Extent(box))
    assert 0 < len(shots) == int(inside.sum()) < 301
    from rasterio.warp import transform_bounds

    utm = transform_bounds("EPSG:4326", "EPSG:32723", *box)
    assert len(read_gedi(zips, quality=False, extent=Extent(utm, "EPSG:32723"))) >= inside.sum()


def test_folder_input(zips, tmp_path):
    import shutil

    for z in zips:
        shutil.copy(z, tmp_path)
    shots = read_gedi(tmp_path)
    assert len(shots) == 301 and np.isfinite(shots["pai"]).all()


def test_bad_input(tmp_path):
    l1b = tmp_path / "GEDI01_B_2019108080338_O01964_T05337_02_001_01.h5"
    with h5py.File(l1b, "w") as h5:
        h5.create_group("METADATA/DatasetIdentification").attrs["shortName"] = np.array(["GEDI_L1B"], dtype=object)
        h5.create_dataset("BEAM0101/shot_number", data=np.arange(3, dtype=np.uint64))
    with pytest.raises(ForestCarbonError, match="GEDI_L1B file.*L2A"):
        read_gedi(l1b)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5.create_dataset("x", data=np.arange(3))
    with pytest.raises(ForestCarbonError, match="not a GEDI L2A or L2B file"):
        read_gedi(other)
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(ForestCarbonError, match="not an HDF5 file"):
        read_gedi(text)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w"):
        pass
    with pytest.raises(ForestCarbonError, match="holds no HDF5"):
        read_gedi(empty)
    with pytest.raises(ForestCarbonError, match="does not exist"):
        read_gedi(tmp_path / "missing.h5")
    with pytest.raises(ForestCarbonError, match="Unknown GEDI beam"):
        read_gedi(text, beams="BEAM9999")


# -- QGIS ----------------------------------------------------------------------------------------------

def test_processing_run(zips, tmp_path, forestcarbon_provider):
    import processing

    target = tmp_path / "gedi.gpkg"
    result = processing.run("forestcarbon:importgedi", {
        "INPUT": [str(z) for z in zips], "QUALITY": True, "MIN_SENSITIVITY": 0.95, "BEAMS": "power",
        "OUTPUT": str(target)})
    import geopandas as gpd

    frame = gpd.read_file(target)
    expected = read_gedi(zips, min_sensitivity=0.95, beams="power")
    assert result["SHOT_COUNT"] == len(frame) == len(expected) > 0
    assert frame.crs.to_epsg() == 4326
    for name in ("rh50", "rh75", "rh90", "rh95", "rh98", "rh100", "cover", "pai", "time_utc", "beam",
                 "sensitivity", "quality_flag", "degrade_flag", "elev_lowestmode", "shot_number"):
        assert name in frame.columns, name
    frame = frame.sort_values("shot_number")
    order = np.argsort(expected["shot_number"])
    np.testing.assert_array_equal(frame["shot_number"].to_numpy(), expected["shot_number"][order])
    np.testing.assert_allclose(frame["rh98"].to_numpy(), expected["rh98"][order])
    np.testing.assert_allclose(frame.geometry.x.to_numpy(), expected["lon"][order])
    assert str(frame["time_utc"].iloc[0])[:10] == "2019-04-18"


def test_processing_run_bad_input(tmp_path, forestcarbon_provider):
    import processing
    from qgis.core import QgsProcessingException

    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w"):
        pass
    target = tmp_path / "bad.gpkg"
    with pytest.raises(QgsProcessingException, match="holds no HDF5"):
        processing.run("forestcarbon:importgedi", {"INPUT": [str(empty)], "OUTPUT": str(target)})
    assert not target.exists()


def test_qgis_process(zips, qgis_config, tmp_path):
    from scripts import qgis_env

    target = tmp_path / "qp.gpkg"
    proc, results = qgis_env.run_algorithm("forestcarbon:importgedi", {
        "INPUT": list(zips), "BEAMS": "BEAM0101,BEAM1011", "OUTPUT": target}, qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert int(results["SHOT_COUNT"]) == 89
    import geopandas as gpd

    frame = gpd.read_file(target)
    assert len(frame) == 89 and np.isfinite(frame["cover"]).all()
