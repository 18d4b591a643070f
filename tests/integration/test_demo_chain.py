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

ROOT = Path(__file__).resolve().parents[2]
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
            from forest_carbon_plugin.core.models.card import read_card

            assert read_card(path).bands  # a model card with the feature bands
    validation = json.loads(Path(paths["validatepredictions:report"]).with_suffix(".json").read_text())
    assert validation["metrics"]["n"] >= 8 and validation["metrics"]["rmse"] > 0
    carbon = json.loads(Path(paths["carbonstock:report"]).with_suffix(".json").read_text())
    for rec in carbon["records"]:
        # a lower bound of 0 is allowed: on this small scene (13 validation plots) the residual semivariogram cannot
        # be fitted, carbonstock takes the errors as fully correlated, and simulated totals below 0 are censored at 0
        assert rec["co2e_total_t"] > 0
        assert 0 <= rec["co2e_ci_low_t"] <= rec["co2e_total_t"] <= rec["co2e_ci_high_t"]


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


def _tiny_chain_outputs(folder: Path) -> tuple[dict, dict, tuple]:
    """What build_project reads, small: 20 × 24 rasters of 30 m, two plot layers, two project polygons; returns
    (outputs, vectors, the scene's bounds from the files themselves)."""
    import geopandas as gpd
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from shapely.geometry import Point, box

    crs, x0, y0, res, rows, cols = "EPSG:32633", 600_000.0, 5_500_000.0, 30.0, 20, 24
    rng = np.random.default_rng(1)
    outputs = {}
    for key, name, bands, scale in (("predictraster:agb", "agb.tif", 1, 300), ("predictraster:std", "std.tif", 1, 60),
                                    ("canopyheightmodel:chm", "chm.tif", 1, 35),
                                    ("compositescenes:composite", "composite.tif", 3, 0.3)):
        path = folder / name
        with rasterio.open(path, "w", driver="GTiff", width=cols, height=rows, count=bands, dtype="float32",
                           crs=crs, transform=from_origin(x0, y0, res, res), nodata=-9999.0) as dst:
            dst.write((rng.random((bands, rows, cols)) * scale).astype("float32"))
        outputs[key] = str(path)
    bounds = (x0, y0 - rows * res, x0 + cols * res, y0)
    carbon = folder / "project_carbon.gpkg"
    gpd.GeoDataFrame({"project": ["Project A", "Project B"], "co2e_total_t": [1234.5, 987.0]},
                     geometry=[box(x0 + 60, y0 - 300, x0 + 300, y0 - 60), box(x0 + 390, y0 - 570, x0 + 690, y0 - 330)],
                     crs=crs).to_file(carbon, driver="GPKG")
    outputs["carbonstock:carbon"] = str(carbon)
    vectors = {}
    for key, offset in (("training_plots", 45.0), ("validation_plots", 75.0)):
        path = folder / f"{key}.gpkg"
        gpd.GeoDataFrame({"agb_mg_ha": [100.0, 150.0, 80.0]},
                         geometry=[Point(x0 + offset + 150 * i, y0 - offset - 120 * i) for i in range(3)],
                         crs=crs).to_file(path, driver="GPKG")
        vectors[key] = path
    return outputs, vectors, bounds


def test_demo_project_opens_on_the_scene_with_haloed_labels_and_distinct_plots(tmp_path, qgis_app):
    """scripts/demo.py's QGIS project (item 12): the default view extent is the scene's (QGIS opens a project without
    canvas settings there), the project labels have a text buffer, and training and validation plots differ in
    marker shape, fill and colour."""
    from qgis.core import QgsFontUtils, QgsProject, QgsSimpleMarkerSymbolLayerBase

    from scripts import demo

    outputs, vectors, (xmin, ymin, xmax, ymax) = _tiny_chain_outputs(tmp_path)
    # a real sample elsewhere in another datum (as MixedConifer.laz, NAD83 / UTM 12N): outside the view, and no
    # "which transformation?" question when QGIS opens the project
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    sample = tmp_path / "sample_chm.tif"
    with rasterio.open(sample, "w", driver="GTiff", width=8, height=8, count=1, dtype="float32", crs="EPSG:26912",
                       transform=from_origin(481_280.0, 3_813_020.0, 0.5, 0.5)) as dst:
        dst.write(np.full((1, 8, 8), 12.0, "float32"))
    qgz = demo.build_project(tmp_path / "demo.qgz", outputs, vectors, [("Real sample", sample)])
    project = QgsProject()
    assert project.read(str(qgz))
    try:
        view = project.viewSettings().defaultViewExtent()
        assert view.crs().authid() == "EPSG:32633" == project.crs().authid()
        size = max(xmax - xmin, ymax - ymin)  # 720 m: the rasters' bounds, wider than plots and projects
        margin = 0.03 * size
        assert view.xMinimum() == pytest.approx(xmin - margin) and view.xMaximum() == pytest.approx(xmax + margin)
        assert view.yMinimum() == pytest.approx(ymin - margin) and view.yMaximum() == pytest.approx(ymax + margin)
        operation = project.transformContext().coordinateOperations()[("EPSG:26912", "EPSG:32633")]
        assert "+proj=pipeline" in operation and "+zone=12" in operation and "+zone=33" in operation

        (carbon,) = project.mapLayersByName("Project carbon (t CO2e)")
        assert carbon.labelsEnabled()
        settings = carbon.labeling().settings()
        text = settings.format()  # held: buffer() is a reference into it
        buffer = text.buffer()
        assert buffer.enabled() and buffer.size() > 0 and buffer.color().name() == "#ffffff"
        # a font this machine has (the offscreen platform's default, 'DejaVu LGC Sans', makes QGIS warn on loading)
        assert text.font().family() != "DejaVu LGC Sans"
        assert QgsFontUtils.fontFamilyMatchOnSystem(text.font().family())[0]

        def marker(name):
            (layer,) = project.mapLayersByName(name)
            symbol = layer.renderer().symbol().symbolLayer(0)
            return (QgsSimpleMarkerSymbolLayerBase.encodeShape(symbol.shape()), symbol.fillColor().alpha(),
                    symbol.color().name(), symbol.strokeColor().name())

        training, validation = marker("Training plots (model fitting)"), marker("Validation plots (held out)")
        assert training[0] == "circle" and validation[0] == "triangle"
        assert training[1] == 255 and validation[1] == 0  # filled vs hollow
        assert training[3] != validation[3]
        names = [layer.name() for layer in project.layerTreeRoot().layerOrder()]
        assert names[:3] == ["Project carbon (t CO2e)", "Validation plots (held out)", "Training plots (model fitting)"]
    finally:
        project.clear()
