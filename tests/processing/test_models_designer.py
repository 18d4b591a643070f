"""Issue 19 item 11: the graphical models open valid in the Model Designer, laid out left to right.

``resources/models/*.model3`` are built by ``scripts/make_models.py``. QGIS 3.22's designer draws a child red,
and *Run* asks about an invalid model, when a mandatory parameter of a child has no source, even one with a
default (``QgsProcessingModelAlgorithm.validateChildAlgorithm``); 3.26+ accepts a default there. The checks:
every input parameter of every child has a source and ``validateChildAlgorithm`` finds no issue; the model
checks its own parameter values (and refuses a missing input); the boxes the designer draws (centre = position,
size) do not overlap, stay on its 4000 × 4000 canvas, and x grows along every link. Then the real designer dialog
(``processing.modeler.ModelerDialog``) opens each file in a QGIS under Xvfb (a child process), its screenshot is
kept in build/artifacts/, and each child's fill colour is compared with the one the same dialog gives a child
that lacks a mandatory parameter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "build" / "artifacts"
MODELS = {name: ROOT / "resources" / "models" / f"{name}.model3"
          for name in ("area_based_approach", "forest_carbon_chain")}
CANVAS = 4000.0  # processing.modeler.ModelerDialog.CANVAS_SIZE: the scene the designer can scroll over
MIN_GAP = 10.0  # px between boxes: a child draws its "In"/"Out" toggles just outside its box


def _load(path):
    from qgis.core import QgsProcessingModelAlgorithm

    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(path)), path
    return model


def _boxes(model) -> dict:
    """(kind, name) → (left, top, right, bottom) of every box the designer draws, from positions and sizes."""
    def box(component):
        p, s = component.position(), component.size()
        return (p.x() - s.width() / 2, p.y() - s.height() / 2, p.x() + s.width() / 2, p.y() + s.height() / 2)

    boxes = {("input", n): box(c) for n, c in model.parameterComponents().items()}
    for cid, child in model.childAlgorithms().items():
        boxes[("child", cid)] = box(child)
        boxes.update({("output", f"{cid}:{n}"): box(o) for n, o in child.modelOutputs().items()})
    return boxes


def _overlaps(boxes: dict, gap: float) -> list:
    items = sorted(boxes.items())
    return [(a, b) for i, (a, ra) in enumerate(items) for b, rb in items[i + 1:]
            if ra[0] < rb[2] + gap and rb[0] < ra[2] + gap and ra[1] < rb[3] + gap and rb[1] < ra[3] + gap]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_child_parameter_is_set_and_valid(name, forestcarbon_provider):
    model = _load(MODELS[name])
    assert model.childAlgorithms()
    for cid, child in model.childAlgorithms().items():
        alg = child.algorithm()
        assert alg is not None, f"{cid}: {child.algorithmId()} is not available"
        ok, issues = model.validateChildAlgorithm(cid)
        assert ok and not issues, f"{cid}: {issues} (rebuild: .venv/bin/python scripts/make_models.py)"
        # stricter than 3.26+'s validation: every input parameter of ours, advanced and optional ones too, has a
        # source (QGIS's own algorithms gain parameters with defaults in later versions, e.g. mergevectorlayers'
        # ADD_SOURCE_FIELDS in 3.44, which a model written on 3.22 cannot name and validation accepts unset)
        if child.algorithmId().startswith("forestcarbon:"):
            unset = [d.name() for d in alg.parameterDefinitions()
                     if not d.isDestination() and not child.parameterSources().get(d.name())]
            assert not unset, f"{cid}: no source for {unset} (rebuild: .venv/bin/python scripts/make_models.py)"
    ok, issues = model.validate()
    assert ok, issues


@pytest.mark.parametrize("name", sorted(MODELS))
def test_stored_model_is_what_make_models_builds(name, forestcarbon_provider):
    """Each child's parameter sources in the file equal a fresh build's: a parameter an algorithm gained, or a
    default it changed, since the file was written shows here."""
    from scripts import make_models

    stored, built = _load(MODELS[name]), make_models.MODELS[name]()

    def sources(model, names_of=None):
        return {cid: {p: [s.toVariant() for s in srcs] for p, srcs in child.parameterSources().items()
                      if names_of is None or cid not in names_of or p in names_of[cid]}
                for cid, child in model.childAlgorithms().items()}

    # QGIS's own algorithms: the parameters the file names (a newer QGIS may declare more, see above)
    natives = {cid: set(child.parameterSources()) for cid, child in stored.childAlgorithms().items()
               if not child.algorithmId().startswith("forestcarbon:")}
    assert sources(stored) == sources(built, natives)
    assert _boxes(stored) == _boxes(built)


def test_build_refuses_a_child_left_invalid(forestcarbon_provider):
    """make_models refuses to write a model the designer would flag (a static value the parameter refuses)."""
    from qgis.core import QgsProcessingModelAlgorithm

    from scripts import make_models

    model = QgsProcessingModelAlgorithm("broken", "Forest Carbon")
    child = make_models._child("forestcarbon:sarfeatures", "sar", "SAR", {}, {"WINDOW": "not a number"})
    with pytest.raises(RuntimeError, match="invalid in the Model Designer") as raised:
        make_models.finish(model, [child])
    lines = str(raised.value).splitlines()
    assert "  sar: Parameter INPUT_VV is mandatory" in lines and "  sar: Parameter INPUT_VH is mandatory" in lines
    assert "  sar: Value for WINDOW is not acceptable for this parameter" in lines


@pytest.mark.parametrize("name", sorted(MODELS))
def test_layout_left_to_right_without_overlap(name, forestcarbon_provider):
    model = _load(MODELS[name])
    boxes = _boxes(model)
    assert not _overlaps(boxes, MIN_GAP)
    assert min(b[0] for b in boxes.values()) > 0 and min(b[1] for b in boxes.values()) > 0
    assert max(b[2] for b in boxes.values()) < CANVAS and max(b[3] for b in boxes.values()) < CANVAS
    x = {key: (b[0] + b[2]) / 2 for key, b in boxes.items()}
    params = set(model.parameterComponents())
    edges = 0
    for cid, child in model.childAlgorithms().items():
        for srcs in child.parameterSources().values():
            for s in srcs:
                if s.outputChildId():
                    assert x[("child", s.outputChildId())] < x[("child", cid)], (s.outputChildId(), cid)
                    edges += 1
                elif s.parameterName() in params:
                    assert x[("input", s.parameterName())] < x[("child", cid)], (s.parameterName(), cid)
                    edges += 1
        for out in child.modelOutputs():
            assert x[("child", cid)] < x[("output", f"{cid}:{out}")]
            edges += 1
    assert edges >= 2 * len(model.childAlgorithms())
    # the model's inputs form the first column, every child lies right of all of them
    first_child = min(b[0] for (kind, _), b in boxes.items() if kind == "child")
    assert max(b[2] for (kind, _), b in boxes.items() if kind == "input") < first_child


def test_overlap_check_sees_an_overlap():
    boxes = {("child", "a"): (0, 0, 200, 30), ("child", "b"): (150, 35, 350, 65), ("child", "c"): (400, 0, 600, 30)}
    assert _overlaps(boxes, MIN_GAP) == [(("child", "a"), ("child", "b"))]
    assert _overlaps(boxes, 0) == []


def _tiny_inputs(folder: Path) -> dict:
    """Small real files for the model inputs: a GeoTIFF, point and polygon GeoPackages, folders."""
    import geopandas as gpd
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from shapely.geometry import Point, box

    crs = "EPSG:32633"
    raster = folder / "vv.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=4, height=4, count=1, dtype="float32", crs=crs,
                       transform=from_origin(500000, 6000000, 30, 30)) as dst:
        dst.write(np.full((1, 4, 4), 0.05, "float32"))
    plots = folder / "plots.gpkg"
    gpd.GeoDataFrame({"agb_mg_ha": [100.0, 50.0]}, geometry=[Point(500030, 5999970), Point(500060, 5999940)],
                     crs=crs).to_file(plots, driver="GPKG")
    projects = folder / "projects.gpkg"
    gpd.GeoDataFrame({"project": ["A"]}, geometry=[box(500000, 5999880, 500120, 6000000)], crs=crs).to_file(
        projects, driver="GPKG")
    for sub in ("lidar", "s2.SAFE", "landsat"):
        (folder / sub).mkdir()
    return {"cloud": str(folder / "lidar"), "sentinel2": str(folder / "s2.SAFE"), "landsat": str(folder / "landsat"),
            "s1_vv": str(raster), "s1_vh": str(raster), "plots": str(plots), "validation_plots": str(plots),
            "projects": str(projects)}


def test_models_accept_their_inputs(tmp_path, forestcarbon_provider):
    from qgis.core import QgsProcessingContext

    from scripts.demo import SETTINGS, chain_outputs

    inputs = _tiny_inputs(tmp_path)
    outputs = chain_outputs(tmp_path / "out")
    context = QgsProcessingContext()
    chain = _load(MODELS["forest_carbon_chain"])
    ok, message = chain.checkParameterValues({**inputs, **SETTINGS, **outputs}, context)
    assert ok, message
    missing = {k: v for k, v in inputs.items() if k != "projects"}
    ok, message = chain.checkParameterValues({**missing, **SETTINGS, **outputs}, context)
    assert not ok and "projects" in message, message
    aba = _load(MODELS["area_based_approach"])
    temporary = {d.name(): "TEMPORARY_OUTPUT" for d in aba.destinationParameterDefinitions()}
    assert len(temporary) == 8  # plot metrics, model + report, grid metrics, prediction + std + bounds
    ok, message = aba.checkParameterValues({"cloud": inputs["cloud"], "plots": inputs["plots"],
                                            "target_field": "agb_mg_ha", **temporary}, context)
    assert ok, message


def test_models_open_valid_in_the_model_designer(tmp_path, qgis_app):
    """The real designer dialog under Xvfb: screenshots in build/artifacts/, every child drawn as valid."""
    if shutil.which("xvfb-run") is None:
        pytest.skip("xvfb-run is absent (Debian package xvfb)")
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "DISPLAY")}
    env["QT_QPA_PLATFORM"] = "xcb"
    proc = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1400x900x24", sys.executable, "-m",
                           "tests.processing.test_models_designer", str(tmp_path)] + [str(p) for p in MODELS.values()],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "designer.json").read_text())
    assert report["platform"] == "xcb"
    invalid_fill = report["invalid_fill"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, path in MODELS.items():
        seen = report["models"][name]
        for png in (f"{name}_designer.png", f"{name}_scene.png"):
            assert (tmp_path / png).stat().st_size > 20_000
            shutil.copy(tmp_path / png, ARTIFACTS / png)
        assert seen["validate"] == [True, []], seen["validate"]
        expected = sorted(_load_ids(path))
        assert sorted(seen["fill"]) == expected
        if invalid_fill is not None:  # the colour of an invalid child, where this QGIS lets Python read it
            red = {cid: colour for cid, colour in seen["fill"].items() if colour == invalid_fill}
            assert not red, f"{name}: drawn invalid: {red}"
        boxes = {tuple(k.split("|", 1)): tuple(v) for k, v in seen["boxes"].items()}
        assert len(boxes) == seen["components"] and not _overlaps(boxes, MIN_GAP)


def _load_ids(path) -> list:
    import xml.etree.ElementTree as ET

    # the child ids straight from the file (the dialog's view of them is what is checked)
    root = ET.parse(path).getroot()
    children = next(o for o in root.iter("Option") if o.get("name") == "children")
    return [o.get("name") for o in children if o.tag == "Option"]


# ----------------------------------------------------------------------------- child process under Xvfb

def _designer(out: Path, paths: list) -> None:
    """Open each model in processing's ModelerDialog; write screenshots and designer.json."""
    import time

    from qgis.core import QgsApplication, QgsProcessingModelAlgorithm
    from qgis.gui import (QgsModelChildAlgorithmGraphicItem, QgsModelComponentGraphicItem,
                          QgsModelOutputGraphicItem, QgsModelParameterGraphicItem)
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtGui import QImage, QPainter

    app = QgsApplication([], True)
    app.initQgis()
    sys.path.append("/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing

    Processing.initialize()
    from processing.modeler.ModelerDialog import ModelerDialog

    from processing_provider.provider import ForestCarbonProvider

    provider = ForestCarbonProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    normal = QgsModelComponentGraphicItem.State.Normal

    def fill(item):
        # fillColor is protected in C++; sip exposes it on the Python item classes processing's scene makes
        try:
            return item.fillColor(normal).name()
        except (AttributeError, TypeError):
            return None

    def close(dialog):
        dialog.setDirty(False)  # no "unsaved changes" question to block the run
        dialog.close()

    def settle(dialog):
        dialog.resize(1366, 768)
        dialog.show()
        for _ in range(30):
            app.processEvents()
            time.sleep(0.01)

    def items(dialog, kind):
        return [i for i in dialog.view().scene().items() if isinstance(i, kind)]

    # the colour this dialog fills a child with when a mandatory parameter has no source
    broken = QgsProcessingModelAlgorithm("broken", "test")
    from qgis.core import QgsProcessingModelChildAlgorithm

    child = QgsProcessingModelChildAlgorithm("forestcarbon:sarfeatures")
    child.setChildId("sar")
    broken.addChildAlgorithm(child)
    dialog = ModelerDialog.create()
    dialog.setModel(broken)
    settle(dialog)
    (invalid,) = items(dialog, QgsModelChildAlgorithmGraphicItem)
    report = {"platform": app.platformName(), "invalid_fill": fill(invalid), "models": {}}
    close(dialog)

    for path in map(Path, paths):
        dialog = ModelerDialog.create()
        dialog.loadModel(str(path))
        settle(dialog)
        scene = dialog.view().scene()
        dialog.view().fitInView(scene.itemsBoundingRect(), Qt.AspectRatioMode.KeepAspectRatio)
        app.processEvents()
        name = path.stem
        dialog.grab().save(str(out / f"{name}_designer.png"))
        bounds = scene.itemsBoundingRect()
        image = QImage(int(bounds.width()) + 20, int(bounds.height()) + 20, QImage.Format.Format_ARGB32)
        image.fill(Qt.GlobalColor.white)
        painter = QPainter(image)
        scene.render(painter, source=bounds.adjusted(-10, -10, 10, 10))
        painter.end()
        image.save(str(out / f"{name}_scene.png"))
        ok, issues = dialog.model().validate()
        boxes, components = {}, 0
        for kind, cls in (("input", QgsModelParameterGraphicItem), ("child", QgsModelChildAlgorithmGraphicItem),
                          ("output", QgsModelOutputGraphicItem)):
            for item in items(dialog, cls):
                components += 1
                rect = item.mapRectToScene(item.itemRect())
                boxes[f"{kind}|{item.component().description()}|{id(item)}"] = [
                    rect.left(), rect.top(), rect.right(), rect.bottom()]
        report["models"][name] = {
            "validate": [ok, issues], "boxes": boxes, "components": components,
            "fill": {i.component().childId(): fill(i) for i in items(dialog, QgsModelChildAlgorithmGraphicItem)}}
        close(dialog)
    (out / "designer.json").write_text(json.dumps(report, indent=1))
    QgsApplication.processingRegistry().removeProvider(provider)


if __name__ == "__main__":  # python -m tests.processing.test_models_designer OUT_DIR MODEL3...
    _designer(Path(sys.argv[1]), sys.argv[2:])
    os._exit(0)  # skip Qt's teardown of the dialogs (a crash at exit would hide the report)
