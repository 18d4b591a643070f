"""The area-based approach (issue 12): field plots → plotmetrics → trainmodel → canopymetrics → predictraster.

Band-name matching of plot-trained models (acceptance 2), the wall-to-wall AGB of a simulated scene against its
truth (acceptance 3), and the chain from processing.run, qgis_process and resources/models/
area_based_approach.model3 (acceptance 5).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

ROOT = Path(__file__).resolve().parents[2]
MODEL3 = ROOT / "resources" / "models" / "area_based_approach.model3"
SCENE_SIZE_M = 1200  # the simulator makes size²/30,000 field plots: 48
SCENE_PULSES = 1.0  # pulses/m²: keeps plotmetrics + canopymetrics of 1.44 km² at ~20 s each
# the standard few-metric ABA model: height percentiles, mean, spread, cover
ABA_FIELDS = "zq95,zq50,zmean,zsd,cover,pzabove2"
# Plots of 900 m², the area of the 30 m cells mapped: the conformal intervals are calibrated at the support
# of the plots, so the plots must have the cells' area (lidR's advice for the ABA). With the simulator's
# default 500 m² plots the 90 % intervals covered 97.8 % of the 30 m truth cells (smaller plots scatter
# more around the model than bigger cells do).
PLOT_RADIUS_M = 16.93


def _register_provider():
    from qgis.core import QgsApplication

    from processing_provider.provider import ForestCarbonProvider

    registry = QgsApplication.processingRegistry()
    if registry.providerById("forestcarbon") is None:
        provider = ForestCarbonProvider()
        assert registry.addProvider(provider)
        return provider
    return None


@pytest.fixture(scope="module")
def aba_products(tmp_path_factory, qgis_processing):
    """A 1200 m simulated scene, its plot metrics and its 30 m canopy metrics (computed once)."""
    import processing
    from qgis.core import QgsApplication

    from forest_carbon_plugin.simulate import SceneConfig, simulate_scene

    root = tmp_path_factory.mktemp("aba")
    scene = root / "scene"
    manifest = simulate_scene(scene, SceneConfig(size_m=SCENE_SIZE_M, seed=5, pulse_density=SCENE_PULSES,
                                                       plot_radius_m=PLOT_RADIUS_M))
    added = _register_provider()
    try:
        plots = processing.run("forestcarbon:plotmetrics", {
            "INPUT": str(scene / "lidar"), "PLOTS": str(scene / "field_plots.gpkg"), "RADIUS": PLOT_RADIUS_M,
            "OUTPUT": str(root / "plots.gpkg")})["OUTPUT"]
        metrics = processing.run("forestcarbon:canopymetrics", {
            "INPUT": str(scene / "lidar"), "RESOLUTION": 30, "OUTPUT": str(root / "metrics.tif")})["OUTPUT"]
    finally:
        if added is not None:
            QgsApplication.processingRegistry().removeProvider(added)
    return {"root": root, "scene": scene, "manifest": manifest, "plots": plots, "metrics": metrics}


def _train(plots, out, fields=ABA_FIELDS, model_type=0, **extra):
    import processing

    params = {"FEATURES": [plots], "TARGET_FIELD": "agb_mg_ha", "FEATURE_FIELDS": fields, "MODEL_TYPE": model_type,
              "OUTPUT_MODEL": str(out / "aba.onnx"), "OUTPUT_REPORT": str(out / "aba_report.html")}
    params.update(extra)
    return processing.run("forestcarbon:trainmodel", params)


def _predict(metrics, model, out, stem="agb", intervals=True):
    import processing

    params = {"INPUT": [str(metrics)], "MODEL": str(model), "COVERAGE": 0.9, "OUTPUT": str(out / f"{stem}.tif")}
    if intervals:
        params.update(OUTPUT_STD=str(out / f"{stem}_std.tif"), OUTPUT_LOWER=str(out / f"{stem}_lower.tif"),
                      OUTPUT_UPPER=str(out / f"{stem}_upper.tif"))
    return processing.run("forestcarbon:predictraster", params)


def _read(path, band=None):
    with rasterio.open(path) as src:
        data = src.read(band, masked=True) if band else src.read(masked=True)
        return data.astype(np.float64), src.transform, list(src.descriptions)


def _against_truth(truth_path, pred, lower, upper):
    """RMSE, bias and interval coverage of a 30 m prediction against the truth cells it covers."""
    truth, t_tr, _ = _read(truth_path, 1)
    p, p_tr, _ = _read(pred, 1)
    lo, _, _ = _read(lower, 1)
    up, _, _ = _read(upper, 1)
    col, row = int(round((p_tr.c - t_tr.c) / 30)), int(round((t_tr.f - p_tr.f) / 30))
    assert p_tr.a == 30 and col >= 0 and row >= 0
    t = truth[row:row + p.shape[0], col:col + p.shape[1]]
    assert t.shape == p.shape
    ok = ~np.ma.getmaskarray(p) & ~np.ma.getmaskarray(t)
    y, yp = t.data[ok], p.data[ok]
    return {"cells": int(ok.sum()), "of": int((~np.ma.getmaskarray(t)).sum()),
            "rmse": float(np.sqrt(np.mean((yp - y) ** 2))), "bias": float(np.mean(yp - y)),
            "mean": float(y.mean()), "coverage": float(np.mean((y >= lo.data[ok]) & (y <= up.data[ok])))}


# ----------------------------------------------------------------------------- acceptance 2: bands by name

def test_plot_model_picks_canopymetrics_bands_by_name(aba_products, tmp_path, forestcarbon_provider):
    from qgis.core import QgsProcessingException

    result = _train(aba_products["plots"], tmp_path)
    card = json.loads((tmp_path / "aba_report.json").read_text())["model_card"]
    assert card["mlm:input"][0]["bands"] == ABA_FIELDS.split(",")
    assert result["N_SAMPLES"] == 48
    metrics = Path(aba_products["metrics"])
    with rasterio.open(metrics) as src:
        names = list(src.descriptions)
        profile = src.profile
        data = src.read()
    order = list(range(len(names)))[::-1]  # every band in reverse order
    profile.update(compress="deflate")
    with rasterio.open(tmp_path / "reversed.tif", "w", **profile) as dst:
        dst.write(data[order])
        dst.descriptions = tuple(names[i] for i in order)
    # the features alone, in training order
    picks = [names.index(f) for f in ABA_FIELDS.split(",")]
    profile.update(count=len(picks))
    with rasterio.open(tmp_path / "training_order.tif", "w", **profile) as dst:
        dst.write(data[picks])
        dst.descriptions = tuple(names[i] for i in picks)
    model = tmp_path / "aba.onnx"
    _predict(tmp_path / "training_order.tif", model, tmp_path, "in_order", intervals=False)
    # (the prediction has its own name: predictraster refuses to overwrite its input)
    _predict(tmp_path / "reversed.tif", model, tmp_path, "from_reversed", intervals=False)
    _predict(metrics, model, tmp_path, "as_made", intervals=False)
    a, _, _ = _read(tmp_path / "in_order.tif", 1)
    b, _, _ = _read(tmp_path / "from_reversed.tif", 1)
    c, _, _ = _read(tmp_path / "as_made.tif", 1)
    assert a.count() > 1000
    np.testing.assert_array_equal(np.ma.getmaskarray(a), np.ma.getmaskarray(b))
    np.testing.assert_array_equal(a.filled(np.nan), b.filled(np.nan))
    np.testing.assert_array_equal(a.filled(np.nan), c.filled(np.nan))
    # a raster without zsd is refused, naming it
    keep = [i for i in range(len(names)) if names[i] != "zsd"]
    profile.update(count=len(keep))
    with rasterio.open(tmp_path / "no_zsd.tif", "w", **profile) as dst:
        dst.write(data[keep])
        dst.descriptions = tuple(names[i] for i in keep)
    with pytest.raises(QgsProcessingException, match="lack zsd"):
        _predict(tmp_path / "no_zsd.tif", model, tmp_path, "refused", intervals=False)


# ----------------------------------------------------------------------------- acceptance 3: the simulated scene

def test_area_based_agb_against_the_simulated_truth(aba_products, tmp_path, forestcarbon_provider):
    scene = aba_products["scene"]
    with open(scene / "truth" / "field_plots_truth.csv") as handle:
        truth_plots = {r["plot_id"]: float(r["true_agb_mg_ha"]) for r in csv.DictReader(handle)}
    from qgis.core import QgsVectorLayer

    layer = QgsVectorLayer(str(aba_products["plots"]), "plots")
    rows = [(f["plot_id"], f["agb_mg_ha"], f["n"]) for f in layer.getFeatures()]
    del layer
    assert len(rows) == len(truth_plots) == 48 and all(n > 100 for _, _, n in rows)
    measured = np.array([m for _, m, _ in rows])
    true = np.array([truth_plots[p] for p, _, _ in rows])
    assert np.corrcoef(measured, true)[0, 1] > 0.98  # the field measurement error (10 %) is small

    result = _train(aba_products["plots"], tmp_path)
    _predict(aba_products["metrics"], tmp_path / "aba.onnx", tmp_path)
    stats = _against_truth(scene / "truth" / "agb_30m.tif", tmp_path / "agb.tif", tmp_path / "agb_lower.tif",
                           tmp_path / "agb_upper.tif")
    print("ABA", stats, {k: v for k, v in result.items() if not k.startswith("OUTPUT")})
    assert stats["cells"] >= 0.95 * stats["of"]  # wall-to-wall
    # measured (seed 5, 48 plots of 900 m²): RMSE 125 Mg/ha against a mean truth of 345 Mg/ha (36 %), bias +4 Mg/ha;
    # the plots' spatial-CV RMSE is 143 Mg/ha (the plot measurements carry a 10 % error the cells do not)
    assert stats["rmse"] < 135
    assert abs(stats["bias"]) < 25
    assert result["N_SAMPLES"] == 48 and result["CONFORMAL_FACTOR"] > 1
    # the target: 90 % intervals cover 85-95 % of the true 30 m cells (measured: 86.9 %; seeds 6 and 8
    # gave 94.6 % and 96.1 %: with 48 plots the conformal factor is itself uncertain). The quantile model alone
    # covered 64.6 % of held-out plots, so the conformal factor, 3.1, does the work.
    assert 0.85 <= stats["coverage"] <= 0.95


# ----------------------------------------------------------------------------- acceptance 5: qgis_process, .model3

def test_model3_is_current(forestcarbon_provider):  # the build reads the children's parameter definitions
    """resources/models/area_based_approach.model3 is what scripts/make_models.py builds."""
    from qgis.core import QgsProcessingModelAlgorithm

    from scripts.make_models import area_based_approach

    stored = QgsProcessingModelAlgorithm()
    assert stored.fromFile(str(MODEL3))
    built = area_based_approach()
    assert sorted(stored.childAlgorithms()) == sorted(built.childAlgorithms()) == \
        ["canopymetrics", "plotmetrics", "predictraster", "trainmodel"]
    assert sorted(p.name() for p in stored.parameterDefinitions()) == \
        sorted(p.name() for p in built.parameterDefinitions())
    assert sorted(o.name() for o in stored.outputDefinitions()) == sorted(o.name() for o in built.outputDefinitions())


def test_qgis_process_trainmodel_and_the_model3(aba_products, tmp_path, qgis_config, qgis_processing):
    from scripts import qgis_env

    # trainmodel with plot features from qgis_process (all metric fields: the default FEATURE_FIELDS)
    proc, results = qgis_env.run_algorithm("forestcarbon:trainmodel", {
        "FEATURES": aba_products["plots"], "TARGET_FIELD": "agb_mg_ha", "MODEL_TYPE": 1,
        "OUTPUT_MODEL": tmp_path / "qp.onnx", "OUTPUT_REPORT": tmp_path / "qp_report.html"}, qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert int(results["N_SAMPLES"]) == 48
    bands = json.loads((tmp_path / "qp_report.json").read_text())["bands"]
    assert "zq95" in bands and "n" not in bands and "agb_mg_ha" not in bands and "cover" in bands

    # the .model3 on a 750 m × 750 m part of the scene (9 of its 25 tiles): plots off it have no points
    cloud = tmp_path / "tiles"
    cloud.mkdir()
    for tile in sorted((aba_products["scene"] / "lidar").glob("*.laz")):
        _, x, y = tile.stem.split("_")
        if int(x) <= 500540 and int(y) >= 5599340:
            (cloud / tile.name).symlink_to(tile)
    assert len(list(cloud.glob("*.laz"))) == 9
    out = {k: tmp_path / f"m_{k}.tif" for k in ("prediction", "std", "lower", "upper")}
    proc = qgis_env.run(["run", str(MODEL3), "--", f"cloud={cloud}",
                         f"plots={aba_products['scene'] / 'field_plots.gpkg'}", "target_field=agb_mg_ha",
                         f"radius={PLOT_RADIUS_M}", f"feature_fields={ABA_FIELDS}", "resolution=30", "model_type=1",
                         f"trainmodel:model={tmp_path / 'm.onnx'}", f"trainmodel:report={tmp_path / 'm_report.html'}",
                         f"plotmetrics:plot_metrics={tmp_path / 'm_plots.gpkg'}",
                         f"canopymetrics:metrics={tmp_path / 'm_metrics.tif'}"]
                        + [f"predictraster:{k}={v}" for k, v in out.items()], qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "were skipped" in proc.stdout + proc.stderr  # the plots off the tiles (n = 0)
    report = json.loads((tmp_path / "m_report.json").read_text())
    assert report["bands"] == ABA_FIELDS.split(",") and 12 <= report["n_samples"] < 48
    pred, tr, _ = _read(out["prediction"], 1)
    lower, _, _ = _read(out["lower"], 1)
    upper, _, _ = _read(out["upper"], 1)
    std, _, _ = _read(out["std"], 1)
    assert min(pred.shape) >= 24 and max(pred.shape) <= 26 and tr.a == 30 and pred.count() > 0.95 * pred.size
    ok = ~np.ma.getmaskarray(pred)
    assert np.all(lower.data[ok] <= pred.data[ok] + 1e-3) and np.all(upper.data[ok] >= pred.data[ok] - 1e-3)
    assert np.all(std.data[ok] >= 0)


# ----------------------------------------------------------------------------- acceptance 4: bad input, support

def test_plots_without_a_target_are_skipped_and_counted(aba_products, tmp_path, forestcarbon_provider):
    """Three plots with a NULL measurement: trained on the other 45, and the log counts the three."""
    from osgeo import ogr

    src = ogr.Open(str(aba_products["plots"]))
    ogr.GetDriverByName("GPKG").CopyDataSource(src, str(tmp_path / "plots_nulls.gpkg"))
    del src
    ds = ogr.Open(str(tmp_path / "plots_nulls.gpkg"), 1)
    layer = ds.GetLayer(0)
    blanked = 0
    for feature in layer:
        if blanked < 3:
            feature.SetFieldNull("agb_mg_ha")
            layer.SetFeature(feature)
            blanked += 1
    del layer, ds
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    class Log(QgsProcessingFeedback):
        lines: list = []

        def pushInfo(self, info):  # noqa: N802
            self.lines.append(info)

        def reportError(self, error, fatalError=False):  # noqa: N802
            self.lines.append(error)

        def pushWarning(self, warning):  # noqa: N802
            self.lines.append(warning)

    import processing

    feedback = Log()
    result = processing.run("forestcarbon:trainmodel", {
        "FEATURES": [str(tmp_path / "plots_nulls.gpkg")], "TARGET_FIELD": "agb_mg_ha", "FEATURE_FIELDS": ABA_FIELDS,
        "OUTPUT_MODEL": str(tmp_path / "n.onnx"), "OUTPUT_REPORT": str(tmp_path / "n_report.html")},
        context=QgsProcessingContext(), feedback=feedback)
    assert result["N_SAMPLES"] == 45
    assert any("3 plot(s) without a value in 'agb_mg_ha' were skipped" in line for line in feedback.lines), \
        feedback.lines
    from forest_carbon_plugin.core.models.card import read_card

    assert read_card(tmp_path / "n.onnx").extra["forest_carbon:training"]["skipped"]["no_target"] == 3


def test_plot_area_travels_to_the_card_and_predictraster_warns_on_other_cells(aba_products, tmp_path,
                                                                             forestcarbon_provider):
    """plotmetrics writes plot_area_m2 (π r²), trainmodel keeps it, predictraster compares it with the cells."""
    import math

    from qgis.core import QgsVectorLayer

    from forest_carbon_plugin.core.models.predict import support_warning
    from forest_carbon_plugin.core.models.card import read_card

    layer = QgsVectorLayer(str(aba_products["plots"]), "plots")
    areas = [f["plot_area_m2"] for f in layer.getFeatures()]
    del layer
    assert len(areas) == 48 and areas == [pytest.approx(math.pi * PLOT_RADIUS_M ** 2)] * 48
    _train(aba_products["plots"], tmp_path)
    card = read_card(tmp_path / "aba.onnx")
    plot_area = card.extra["forest_carbon:training"]["plot_area_m2"]
    assert plot_area == pytest.approx(math.pi * PLOT_RADIUS_M ** 2)  # 900.46 m²
    assert support_warning(plot_area, 30 * 30) is None  # the 30 m cells of the test above
    assert "over-cover" in support_warning(plot_area, 100 * 100) and "30.0 m resolution" in support_warning(
        plot_area, 100 * 100)
    assert "under-cover" in support_warning(plot_area, 10 * 10)
