"""Acceptance 5: forestcarbon:lidarinfo on real LAS/LAZ files, checked against laspy read
independently, and clean errors (no traceback, no output) for bad inputs."""

from __future__ import annotations

import json
import shutil

import laspy
import numpy as np
import pytest
from qgis.core import QgsProcessingException, QgsProcessingFeedback, QgsVectorLayer
from shapely.geometry import MultiPoint

from tests.conftest import SAMPLE_LAZ, SHARED_DATA, shared_file

REAL_FILES = ["MixedConifer.laz", "Topography.laz", "florida_pyfor.laz", "autzen_trim.laz",
              "simple.las", "simple.laz", "simple.copc.laz", "fullwave.laz", "1_4_w_evlr.laz",
              "las14_prf6.laz", "example.laz"]


#: files whose horizontal CRS unit is a foot (read off their WKT): densities are per m² all the same
FOOT_BASED = {"1_4_w_evlr.laz": 1200 / 3937,  # NAD83(HARN) / New Mexico Central (ftUS): US survey foot
              "autzen_trim.laz": 0.3048}       # UNIT["foot", 0.3048]


def _run(inputs, tmp_path, feedback=None):
    import processing

    params = {"INPUT": str(inputs), "OUTPUT_HTML": str(tmp_path / "info.html"),
              "OUTPUT_JSON": str(tmp_path / "info.json"),
              "OUTPUT_FOOTPRINTS": str(tmp_path / "footprints.gpkg")}
    result = processing.run("forestcarbon:lidarinfo", params, feedback=feedback)
    return result, json.loads((tmp_path / "info.json").read_text())


def _reference(path):
    """What the file holds, read whole with laspy and counted with numpy (not our code)."""
    las = laspy.read(path)
    try:
        crs = las.header.parse_crs()
        epsg = crs.to_epsg() if crs is not None else None
    except Exception:  # PROJ rejects the WKT: no EPSG to report
        epsg = None
    classes, class_n = np.unique(np.asarray(las.classification), return_counts=True)
    returns, return_n = np.unique(np.asarray(las.return_number), return_counts=True)
    xy = np.column_stack([las.x, las.y])
    return {
        "point_count": len(las.points),
        "epsg": epsg,
        "classes": {str(int(c)): int(n) for c, n in zip(classes, class_n)},
        "returns": {str(int(r)): int(n) for r, n in zip(returns, return_n)},
        "hull_area": MultiPoint(xy).convex_hull.area,  # shapely: a second method
        "version": str(las.header.version),
        "point_format": las.header.point_format.id,
    }


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_match_laspy(name, tmp_path, forestcarbon_provider):
    path = shared_file("lidar", name)
    result, doc = _run(path, tmp_path)
    ref = _reference(path)
    (info,) = doc["files"]
    assert info["point_count"] == ref["point_count"] == result["POINT_COUNT"]
    assert info["crs_epsg"] == ref["epsg"]
    assert info["classification_counts"] == ref["classes"]
    assert info["return_number_counts"] == ref["returns"]
    assert info["version"] == ref["version"]
    assert info["point_format"] == ref["point_format"]
    assert doc["provenance"]["algorithm"] == "forestcarbon:lidarinfo"
    assert doc["provenance"]["plugin_version"]
    metres_per_unit = FOOT_BASED.get(name, 1.0)
    assert info["hull_area_m2"] == pytest.approx(ref["hull_area"] * metres_per_unit ** 2, rel=1e-6, abs=1e-6)
    # footprints: one polygon with the same counts, readable by QGIS
    layer = QgsVectorLayer(str(tmp_path / "footprints.gpkg"), "fp", "ogr")
    assert layer.isValid() and layer.featureCount() == 1
    feature = next(layer.getFeatures())
    assert feature["n_points"] == ref["point_count"]
    assert json.loads(feature["classes"]) == ref["classes"]
    assert (tmp_path / "info.html").read_text().count("<tr>") == 2


def test_known_values_from_sources(tmp_path, forestcarbon_provider):
    """Figures published with the files (shared/data/SOURCES.md)."""
    _, doc = _run(shared_file("lidar", "MixedConifer.laz"), tmp_path)
    info = doc["files"][0]
    assert info["point_count"] == 37_657 and info["crs_epsg"] == 26912
    assert set(info["classification_counts"]) == {"1", "2", "11"}
    assert info["normalized"] is True  # "already height-normalized (Z 0–32.07 m)"
    # 90 m × 90 m stand: density close to 37,657 / 8,100 m²
    assert info["point_density_per_m2"] == pytest.approx(37_657 / 8_100, rel=0.03)

    _, doc = _run(shared_file("lidar", "Topography.laz"), tmp_path)
    info = doc["files"][0]
    assert info["point_count"] == 73_403 and info["crs_epsg"] == 2949
    assert info["normalized"] is False  # "not normalized (Z 789–830 m)"
    assert max(int(r) for r in info["return_number_counts"]) == 6  # "up to 6 returns"

    _, doc = _run(shared_file("lidar", "las14_prf6.laz"), tmp_path)
    assert "not understood by PROJ" in doc["files"][0]["crs_note"]


def test_catalog_folder(tmp_path, forestcarbon_provider):
    folder = shared_file("lidar", "bcts")
    result, doc = _run(folder, tmp_path)
    files = sorted(folder.glob("*.laz"))
    expected = {f.name: laspy.open(f).header.point_count for f in files}
    assert result["FILE_COUNT"] == 4
    assert {f["path"].split("/")[-1]: f["point_count"] for f in doc["files"]} == expected
    assert doc["summary"]["point_count"] == sum(expected.values()) == 2_834_350  # SOURCES.md: 2.83 M
    assert doc["summary"]["crs_epsg"] == [3005]
    # "12–15 pts/m²"
    for f in doc["files"]:
        assert 11.5 <= f["point_density_per_m2"] <= 15.5
    layer = QgsVectorLayer(str(tmp_path / "footprints.gpkg"), "fp", "ogr")
    assert layer.featureCount() == 4
    assert layer.crs().authid() == "EPSG:3005"


def test_bundled_sample(tmp_path, forestcarbon_provider):
    result, doc = _run(SAMPLE_LAZ, tmp_path)
    ref = _reference(SAMPLE_LAZ)
    assert result["POINT_COUNT"] == ref["point_count"]
    assert doc["files"][0]["classification_counts"] == ref["classes"]
    assert doc["files"][0]["crs_epsg"] == 32633
    assert doc["files"][0]["normalized"] is False  # elevations around 420 m


def _assert_no_outputs(tmp_path):
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(("info", "footprints", ".info"))]
    assert leftovers == []


def _assert_clean_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "Traceback" not in message
    for fragment in fragments:
        assert fragment in message


def test_truncated_laz(tmp_path, forestcarbon_provider):
    source = SAMPLE_LAZ.read_bytes()
    bad = tmp_path / "input" / "truncated.laz"
    bad.parent.mkdir()
    bad.write_bytes(source[: len(source) // 2])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(QgsProcessingException) as excinfo:
        _run(bad, out)
    _assert_clean_error(excinfo, "truncated.laz")
    _assert_no_outputs(out)


def test_text_file_renamed_laz(tmp_path, forestcarbon_provider):
    bad = tmp_path / "input" / "notes.laz"
    bad.parent.mkdir()
    bad.write_text("plot 1, 23.4 m\nplot 2, 18.1 m\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(QgsProcessingException) as excinfo:
        _run(bad, out)
    _assert_clean_error(excinfo, "notes.laz", "not a readable LAS/LAZ file")
    _assert_no_outputs(out)


def test_empty_folder(tmp_path, forestcarbon_provider):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(QgsProcessingException) as excinfo:
        _run(empty, out)
    _assert_clean_error(excinfo, "holds no .las or .laz file")
    _assert_no_outputs(out)


def test_catalog_with_one_bad_tile_writes_nothing(tmp_path, forestcarbon_provider):
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    shutil.copy(SAMPLE_LAZ, tiles / "a_good.laz")
    data = SAMPLE_LAZ.read_bytes()
    (tiles / "b_bad.laz").write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(QgsProcessingException) as excinfo:
        _run(tiles, out)
    _assert_clean_error(excinfo, "b_bad.laz")
    _assert_no_outputs(out)


def test_cancel_leaves_nothing(tmp_path, forestcarbon_provider):
    feedback = QgsProcessingFeedback()
    feedback.cancel()
    with pytest.raises(QgsProcessingException) as excinfo:
        _run(SAMPLE_LAZ, tmp_path, feedback)
    _assert_clean_error(excinfo, "Cancelled")
    _assert_no_outputs(tmp_path)


def test_shared_folder_hint():
    # keeps the skip message honest: the folder the tests read is the one SOURCES.md describes
    if SHARED_DATA.exists():
        assert (SHARED_DATA / "SOURCES.md").is_file()
