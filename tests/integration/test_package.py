"""Acceptance 2: the zip from `make package` installs into a QGIS profile and runs in qgis_process."""

from __future__ import annotations

import json
import zipfile

import laspy
import numpy as np
import pytest

from scripts import qgis_env

from tests.conftest import SAMPLE_LAZ, SHARED_DATA


def test_zip_layout(plugin_zip):
    from scripts.package import version

    assert plugin_zip.name == f"forest_carbon_plugin-{version()}.zip"
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert {n.split("/")[0] for n in names} == {"forest_carbon_plugin"}
    for required in ("metadata.txt", "__init__.py", "LICENSE", "processing_provider/provider.py",
                     "processing_provider/lidar_info.py", "resources/icons/icon.png",
                     "resources/sample_data/sample_stand.laz", "core/lidar/info.py"):
        assert f"forest_carbon_plugin/{required}" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/tests/" in n]


def test_qgis_process_lists_provider(qgis_config):
    proc = qgis_env.run(["list"], qgis_config)
    assert proc.returncode == 0, proc.stderr
    assert "Forest Carbon" in proc.stdout
    assert "forestcarbon:lidarinfo" in proc.stdout
    assert "forestcarbon:modelinfo" in proc.stdout
    help_proc = qgis_env.run(["help", "forestcarbon:lidarinfo"], qgis_config)
    assert "OUTPUT_FOOTPRINTS" in help_proc.stdout and "ASPRS" in help_proc.stdout


@pytest.mark.parametrize("source", ["sample", "MixedConifer.laz", "bcts"])
def test_qgis_process_runs_lidarinfo(qgis_config, tmp_path, source):
    path = SAMPLE_LAZ if source == "sample" else SHARED_DATA / "lidar" / source
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data not beside the checkout)")
    outputs = {"OUTPUT_HTML": tmp_path / "r.html", "OUTPUT_JSON": tmp_path / "r.json",
               "OUTPUT_FOOTPRINTS": tmp_path / "fp.gpkg"}
    proc, results = qgis_env.run_algorithm("forestcarbon:lidarinfo", {"INPUT": path, **outputs}, qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for key, out in outputs.items():
        assert out.is_file() and out.stat().st_size > 0
        assert results[key] == str(out)
    files = sorted(path.glob("*.laz")) if path.is_dir() else [path]
    expected = sum(laspy.open(f).header.point_count for f in files)
    document = json.loads(outputs["OUTPUT_JSON"].read_text())
    assert document["summary"]["point_count"] == expected == results["POINT_COUNT"]


def test_qgis_process_runs_canopymetrics(qgis_config, tmp_path):
    out = tmp_path / "metrics.tif"
    proc, results = qgis_env.run_algorithm("forestcarbon:canopymetrics", {
        "INPUT": SAMPLE_LAZ, "RESOLUTION": 10, "NORMALIZE": 2, "MAX_WORKERS": 2, "OUTPUT": out}, qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results["OUTPUT"] == str(out)
    import rasterio

    with rasterio.open(out) as src:
        assert src.count == 40 and src.descriptions[0] == "zmax"
        n = src.read(src.descriptions.index("n") + 1)
    assert n[np.isfinite(n)].sum() == laspy.open(SAMPLE_LAZ).header.point_count


def test_qgis_process_runs_chm_and_treetops(qgis_config, tmp_path):
    chm = tmp_path / "chm.tif"
    proc, results = qgis_env.run_algorithm("forestcarbon:canopyheightmodel", {
        "INPUT": SAMPLE_LAZ, "RESOLUTION": 1, "METHOD": 1, "OUTPUT": chm}, qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert chm.is_file() and results["OUTPUT"] == str(chm)
    tops = tmp_path / "tops.gpkg"
    proc, results = qgis_env.run_algorithm("forestcarbon:treetops", {"INPUT": chm, "OUTPUT": tops}, qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results["TREE_COUNT"] > 50 and tops.is_file()


def test_qgis_process_runs_ground_and_normalize(qgis_config, tmp_path):
    ground, norm, dtm = tmp_path / "g.laz", tmp_path / "n.laz", tmp_path / "dtm.tif"
    proc, results = qgis_env.run_algorithm("forestcarbon:classifyground", {"INPUT": SAMPLE_LAZ, "OUTPUT": ground},
                                           qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc, results = qgis_env.run_algorithm("forestcarbon:normalizeheight", {
        "INPUT": ground, "OUTPUT": norm, "OUTPUT_DTM": dtm, "DTM_RESOLUTION": 2}, qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results["OUTPUT"] == str(norm) and results["OUTPUT_DTM"] == str(dtm)
    heights = laspy.read(norm)
    assert abs(float(heights.z.min())) < 2 and float(heights.z.max()) < 40


def test_qgis_process_bad_input_is_a_clean_error(qgis_config, tmp_path):
    bad = tmp_path / "not_a_cloud.laz"
    bad.write_text("this is a text file\n")
    proc, _ = qgis_env.run_algorithm("forestcarbon:lidarinfo", {
        "INPUT": bad, "OUTPUT_JSON": tmp_path / "r.json", "OUTPUT_HTML": tmp_path / "r.html",
        "OUTPUT_FOOTPRINTS": tmp_path / "fp.gpkg"}, qgis_config)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "not_a_cloud.laz" in text and "not a readable LAS/LAZ file" in text
    assert "Traceback" not in text
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "fp.gpkg").exists()


def test_graphical_model_runs_in_qgis_process(qgis_config, tmp_path, qgis_processing):
    """A .model3 built with the modeler API, whose child is lidarinfo, runs in qgis_process."""
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
    )

    model = QgsProcessingModelAlgorithm("describe_tiles", "forest")
    model.addModelParameter(QgsProcessingParameterFile("tiles", "Tiles"), QgsProcessingModelParameter("tiles"))
    child = QgsProcessingModelChildAlgorithm("forestcarbon:lidarinfo")
    child.setChildId("info")
    child.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("tiles")])
    output = QgsProcessingModelOutput("report", "Report")
    output.setChildOutputName("OUTPUT_JSON")
    output.setChildId("info")
    child.setModelOutputs({"report": output})
    model.addChildAlgorithm(child)
    path = tmp_path / "describe.model3"
    from scripts.make_models import child_id_output_names  # childId:output names on QGIS >= 3.26 too

    assert child_id_output_names(model).toFile(str(path))
    proc = qgis_env.run(["run", str(path), "--", f"tiles={SAMPLE_LAZ}",
                         f"info:report={tmp_path / 'model_report.json'}"], qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((tmp_path / "model_report.json").read_text())
    assert doc["summary"]["point_count"] == laspy.open(SAMPLE_LAZ).header.point_count


def test_qgis_process_runs_catalog_tiles_in_workers(qgis_config, tmp_path):
    """Worker processes spawned from qgis_process (MAX_WORKERS 2 on a 4-tile catalog)."""
    folder = SHARED_DATA / "lidar" / "bcts"
    if not folder.exists():
        pytest.skip(f"{folder} is absent (../shared/data not beside the checkout)")
    out = tmp_path / "chm.tif"
    proc, _ = qgis_env.run_algorithm("forestcarbon:canopyheightmodel", {
        "INPUT": folder, "RESOLUTION": 2, "MAX_WORKERS": 2, "OUTPUT": out}, qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import rasterio

    with rasterio.open(out) as src:
        assert src.width > 100 and np.isfinite(src.read(1)).mean() > 0.9
