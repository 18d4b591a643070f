"""The main job (issue 11): resources/models/forest_carbon_chain.model3 through qgis_process and processing.run.

A small simulated scene (1080 m, 0.5 pulses/m², 38 plots of 900 m²: 25 train, 13 validate) runs through the
whole chain — LiDAR normalize → CHM + canopy metrics → CHM on the imagery grid; Sentinel-2 + Landsat harmonized →
composite → indices; Sentinel-1 features; zero-AGB samples where the CHM has no canopy; train → predict with
uncertainty → validate → carbon stock — and every output of the model must exist and load in QGIS (acceptance 2). ``make demo`` (scripts/demo.py) runs the same
model on a larger scene.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL3 = ROOT / "resources" / "models" / "forest_carbon_chain.model3"
SMALL_SCENE = {"size_m": 1080.0, "seed": 3, "pulse_density": 0.5}
SMALL_SETTINGS = {"folds": 2, "simulations": 300}


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    from scripts import demo

    root = tmp_path_factory.mktemp("chain")
    manifest = demo.simulate(root / "scene", **SMALL_SCENE)
    train, validation = demo.split_plots(root / "scene" / manifest["field_plots"], root / "plots")
    return root, manifest, train, validation


def _model_output_keys():
    from qgis.core import QgsProcessingModelAlgorithm

    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(MODEL3))
    return sorted(f"{child_id}:{name}" for child_id, child in model.childAlgorithms().items()
                  for name in child.modelOutputs())


def _check_outputs(paths: dict, manifest: dict) -> None:
    """Every output exists; rasters and vectors load as valid QGIS layers; the reports have their JSON."""
    from qgis.core import QgsRasterLayer, QgsVectorLayer

    for key, path in paths.items():
        path = Path(path)
        assert path.is_file() and path.stat().st_size > 0, f"{key}: {path} missing"
        if path.suffix == ".tif":
            layer = QgsRasterLayer(str(path), key)
            valid, kind = layer.isValid(), layer.bandCount()
            del layer
            assert valid and kind >= 1, f"{key}: {path} does not load as a raster"
        elif path.suffix == ".gpkg":
            layer = QgsVectorLayer(str(path), key, "ogr")
            valid, count = layer.isValid(), layer.featureCount()
            del layer
            assert valid and count > 0, f"{key}: {path} does not load"
            if key == "carbonstock:carbon":
                assert count == len(manifest["truth"]["projects"])
        elif path.suffix == ".html":
            assert path.with_suffix(".json").is_file(), f"{key}: no JSON beside {path}"
        elif path.suffix == ".onnx":
            from forest_carbon_plugin.core.modelcard import read_card

            assert read_card(path).bands  # a model card with the feature bands
    validation = json.loads(Path(paths["validatepredictions:report"]).with_suffix(".json").read_text())
    assert validation["metrics"]["n"] >= 8 and validation["metrics"]["rmse"] > 0
    carbon = json.loads(Path(paths["carbonstock:report"]).with_suffix(".json").read_text())
    for rec in carbon["records"]:
        assert 0 < rec["co2e_ci_low_t"] <= rec["co2e_total_t"] <= rec["co2e_ci_high_t"]


def test_model3_is_current(forestcarbon_provider):
    """resources/models/forest_carbon_chain.model3 is what scripts/make_models.py builds, and the demo names
    every one of its outputs."""
    from qgis.core import QgsProcessingModelAlgorithm

    from scripts.demo import CHAIN_FILES, SETTINGS
    from scripts.make_models import forest_carbon_chain

    stored = QgsProcessingModelAlgorithm()
    assert stored.fromFile(str(MODEL3))
    built = forest_carbon_chain()
    children = ["aggregatetogrid", "canopyheightmodel", "canopymetrics", "carbonstock", "compositescenes",
                "harmonize_landsat", "harmonize_s2", "mergeplots", "normalizeheight", "pixelstopoints", "predictraster",
                "sarfeatures", "spectralindices", "trainmodel", "validatepredictions", "zerocells", "zeroplots"]
    assert sorted(stored.childAlgorithms()) == sorted(built.childAlgorithms()) == children
    for child_id in children:
        assert stored.childAlgorithm(child_id).algorithmId() == built.childAlgorithm(child_id).algorithmId()
    params = sorted(p.name() for p in stored.parameterDefinitions() if not p.isDestination())
    assert params == sorted(p.name() for p in built.parameterDefinitions() if not p.isDestination())
    outputs = sorted(o.name() for o in stored.outputDefinitions())
    assert outputs == sorted(o.name() for o in built.outputDefinitions()) == _model_output_keys() == sorted(CHAIN_FILES)
    # the demo passes every model parameter (3.22 does not fill a model's defaults)
    inputs = {"cloud", "sentinel2", "landsat", "s1_vv", "s1_vh", "plots", "validation_plots", "projects"}
    assert "mergeplots" in children and "zeroplots" in children
    assert set(params) == inputs | set(SETTINGS)


@pytest.fixture(scope="module")
def qgis_process_chain(small_scene, qgis_config, tmp_path_factory):
    """The model run once by qgis_process: (completed process, outputs)."""
    from scripts import demo

    root, manifest, train, validation = small_scene
    out = tmp_path_factory.mktemp("qgis_process_chain")
    params = demo.chain_parameters(root / "scene", manifest, train, validation, out, **SMALL_SETTINGS)
    proc = demo.run_chain_qgis_process(params, qgis_config, timeout=600)
    return proc, demo.chain_outputs(out)


def test_chain_through_qgis_process(qgis_process_chain, small_scene, qgis_processing):
    proc, outputs = qgis_process_chain
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Model processed OK" in proc.stdout + proc.stderr
    assert sorted(outputs) == _model_output_keys()
    _check_outputs(outputs, small_scene[1])


def test_demo_report_and_project(qgis_process_chain, small_scene, tmp_path, qgis_processing):
    """The demo's report (every map and plot, the accuracy figures of the validation JSON, the truth beside each
    project) and its QGIS project (every layer, relative paths) from the chain's outputs."""
    import re
    import zipfile

    from scripts import demo, demo_report

    proc, outputs = qgis_process_chain
    assert proc.returncode == 0
    _, manifest, train, validation = small_scene
    summary = demo_report.write_report(tmp_path, demo.report_inputs(outputs), manifest,
                                       {**demo.SETTINGS, **SMALL_SETTINGS})
    page = (tmp_path / "report.html").read_text()
    images = re.findall(r"<img src='([^']+)'", page)
    assert len(images) >= 4 + 1 + 4  # 4 maps, the project totals, the validation figures
    for src in images:
        assert (tmp_path / src).is_file() and (tmp_path / src).stat().st_size > 5000, src
    for name in ("chm", "agb", "agb_std", "agb_value_by_alpha", "projects"):
        assert (tmp_path / "maps" / f"{name}.png").is_file()
    doc = json.loads(Path(outputs["validatepredictions:report"]).with_suffix(".json").read_text())
    acc = summary["accuracy"]
    assert (acc["rmse"], acc["r2"], acc["n"]) == (doc["metrics"]["rmse"], doc["metrics"]["r2"], doc["metrics"]["n"])
    assert acc["observed_coverage"] is not None
    lines = "\n".join(demo_report.summary_lines(summary))
    assert f"RMSE {doc['metrics']['rmse']:.1f} Mg/ha" in lines and f"R² {doc['metrics']['r2']:.3f}" in lines
    truth = {p["project"]: p["co2e_t"] for p in manifest["truth"]["projects"]}
    assert [r["project"] for r in summary["projects"]] == list(truth)
    for row in summary["projects"]:
        assert row["true_co2e_t"] == truth[row["project"]] and f"{row['true_co2e_t']:,.0f}" in lines
    assert json.loads((tmp_path / "summary.json").read_text())["accuracy"]["rmse"] == doc["metrics"]["rmse"]

    qgz = demo.build_project(tmp_path / "demo.qgz", outputs, {"training_plots": train, "validation_plots": validation})
    with zipfile.ZipFile(qgz) as archive:
        (qgs,) = [n for n in archive.namelist() if n.endswith(".qgs")]
        text = archive.read(qgs).decode()
    for key in ("predictraster:agb", "predictraster:std", "canopyheightmodel:chm", "carbonstock:carbon"):
        assert Path(outputs[key]).name in text


def test_chain_through_processing_run(small_scene, tmp_path, forestcarbon_provider):
    import processing
    from qgis.core import QgsProcessingModelAlgorithm

    from scripts import demo

    root, manifest, train, validation = small_scene
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(MODEL3))
    params = demo.chain_parameters(root / "scene", manifest, train, validation, tmp_path, **SMALL_SETTINGS)
    results = processing.run(model, params)
    del model
    outputs = demo.chain_outputs(tmp_path)
    for key, path in outputs.items():
        assert Path(results[key]) == Path(path), key
    _check_outputs(outputs, manifest)
