"""The main job (``make demo``): a simulated scene → the graphical model through ``qgis_process`` → report + project.

1. Package the plugin and install it into a throwaway QGIS profile (``build/demo_qgis``).
2. Simulate a scene with a fixed seed (``forest_carbon_plugin.simulate``): a LiDAR catalog, Sentinel-2 and
   Landsat scenes, Sentinel-1, field plots and project polygons whose true biomass is known. Every third plot
   is set aside for validation; the others train the model.
3. Run ``resources/models/forest_carbon_chain.model3`` with ``qgis_process`` (normalize → CHM, canopy metrics →
   CHM on the imagery grid; harmonize S2 + Landsat → composite → indices; SAR features; grid cells without canopy
   as zero-AGB samples beside the plots → train (ONNX + report) → predict with uncertainty → validate against the
   held-out plots → carbon stock of the projects).
4. In a standalone PyQGIS session: the real sample files where they fit (the bundled ``sample_stand.laz``, and
   ``../shared/data/lidar/MixedConifer.laz`` when present, through normalize/CHM), and the QGIS project
   ``demo_output/forest_carbon_demo.qgz`` with the outputs styled.
5. ``demo_output/report.html``: PNG maps (CHM, prediction, uncertainty, value by alpha), the validation plots,
   the carbon table; and a printed summary per project: t CO2e, its 90 % interval, the simulator's true total.

    .venv/bin/python scripts/demo.py [--size-m 1800] [--seed 11] [--out demo_output]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODEL3 = ROOT / "resources" / "models" / "forest_carbon_chain.model3"

#: the demo scene: 1.8 km × 1.8 km, 1 LiDAR pulse/m², 108 plots (72 train, 36 validate) of 900 m², the area of a
#: 30 m cell, so that intervals calibrated on plots hold for cells (tests/integration/test_aba.py); cloud-free imagery (the
#: simulator flags clouds and their shadows generously: with 3 % cloud cover 3 % of the composite of the two dates
#: was still masked, and a project's total covers only its mapped part). A fixed seed: the same numbers every run.
SCENE = {"size_m": 1800.0, "seed": 11, "pulse_density": 1.0, "plot_radius_m": 16.93, "cloud_fraction": 0.0,
         "tile_m": 500.0}
VALIDATION_EVERY = 3  # every third plot (in plot-id order) is a validation plot, never seen in training

#: the model's parameters as the demo runs them (README, Getting started, says what they rest on).
#: - Random forest: its σ comes from a forest fitted on the out-of-bag squared residuals (conformally calibrated),
#:   so σ has the size of the pixel errors; the quantile model's Gaussian-equivalent σ = (upper − lower)/(2·z) of
#:   its conformally widened, skewed interval overstated the errors about fourfold, and carbonstock sums σ.
#: - zero_every 30: the simulator lays its plots mostly in forest (2-4 of 75 in open land), and without zero-AGB
#:   samples the map gave grassland ~150 Mg/ha; one sample per 30 cells without canopy ≈ the plots' density.
#: - correlation_range empty: carbonstock fits it to the validation report's residual semivariogram (its default
#:   with the report the model hands it); project errors come from stand-scale correlated errors, not pixel noise.
#: - simulations 10,000: carbonstock's default (ART-TREES), about 6-10 s for the three projects.
SETTINGS = {"target_field": "agb_mg_ha", "resolution": 30.0, "chm_resolution": 1.0, "model_type": 1, "folds": 4,
            "zero_every": 30, "coverage": 0.9, "correlation_range": "", "root_shoot": 0.0, "simulations": 10000,
            "seed": 0}

#: model output (``child:name``) → file name under the chain folder
CHAIN_FILES = {
    "canopyheightmodel:chm": "chm.tif",
    "canopymetrics:metrics": "lidar_metrics.tif",
    "aggregatetogrid:chm_grid": "chm_30m.tif",
    "harmonize_s2:sentinel2": "sentinel2_hls.tif",
    "harmonize_landsat:landsat": "landsat_hls.tif",
    "compositescenes:composite": "composite.tif",
    "spectralindices:indices": "indices.tif",
    "sarfeatures:sar": "sar_features.tif",
    "mergeplots:training_samples": "training_samples.gpkg",
    "trainmodel:model": "agb_model.onnx",
    "trainmodel:report": "training_report.html",
    "predictraster:agb": "agb.tif",
    "predictraster:std": "agb_std.tif",
    "predictraster:lower": "agb_lower.tif",
    "predictraster:upper": "agb_upper.tif",
    "validatepredictions:report": "validation_report.html",
    "carbonstock:carbon": "project_carbon.gpkg",
    "carbonstock:report": "carbon_report.html",
}


def simulate(scene_dir, **overrides) -> dict:
    """The demo scene (SCENE, with overrides) in ``scene_dir``; returns its manifest."""
    from forest_carbon_plugin.simulate import SceneConfig, simulate_scene

    config = SceneConfig(**{**SCENE, **overrides})
    return simulate_scene(Path(scene_dir), config)


def split_plots(plots, out_dir, every: int = VALIDATION_EVERY) -> tuple[Path, Path]:
    """Training and validation plots (every ``every``-th plot in id order) as two GeoPackages."""
    import geopandas as gpd

    frame = gpd.read_file(plots).sort_values("plot_id").reset_index(drop=True)
    validation = (frame.index % every) == every - 1
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, valid = out_dir / "plots_training.gpkg", out_dir / "plots_validation.gpkg"
    for path, part, layer in ((train, frame[~validation], "training_plots"),
                              (valid, frame[validation], "validation_plots")):
        path.unlink(missing_ok=True)
        part.to_file(path, layer=layer, driver="GPKG")
    return train, valid


def chain_inputs(scene_dir, manifest: dict, train, validation) -> dict:
    scene_dir = Path(scene_dir)
    return {"cloud": str(scene_dir / "lidar"),
            "sentinel2": str(scene_dir / manifest["sentinel2"]["product"]),
            "landsat": str(scene_dir / manifest["landsat"]["product"]),
            "s1_vv": str(scene_dir / manifest["sentinel1"]["files"]["VV"]),
            "s1_vh": str(scene_dir / manifest["sentinel1"]["files"]["VH"]),
            "plots": str(train), "validation_plots": str(validation),
            "projects": str(scene_dir / manifest["projects"])}


def chain_outputs(out_dir) -> dict:
    return {key: str(Path(out_dir) / name) for key, name in CHAIN_FILES.items()}


def chain_parameters(scene_dir, manifest: dict, train, validation, out_dir, **settings) -> dict:
    """Every parameter of forest_carbon_chain.model3 (QGIS 3.22 does not fill a model's defaults for
    parameters left out of processing.run or qgis_process) and every output path."""
    return {**chain_inputs(scene_dir, manifest, train, validation), **SETTINGS, **settings,
            **chain_outputs(out_dir)}


def report_inputs(outputs: dict) -> dict:
    """The chain's outputs that scripts/demo_report.py reads, under its names."""
    return {"chm": outputs["canopyheightmodel:chm"], "agb": outputs["predictraster:agb"],
            "std": outputs["predictraster:std"], "carbon": outputs["carbonstock:carbon"],
            "validation_report": outputs["validatepredictions:report"],
            "training_report": outputs["trainmodel:report"], "carbon_report": outputs["carbonstock:report"]}


def run_chain_qgis_process(parameters: dict, config_dir, timeout: float = 900):
    """``qgis_process.bin run forest_carbon_chain.model3 -- name=value …``; returns the completed process."""
    from scripts import qgis_env

    args = ["run", str(MODEL3), "--"] + [f"{k}={v}" for k, v in parameters.items()]
    return qgis_env.run(args, config_dir, timeout=timeout)


# ----------------------------------------------------------------------------- PyQGIS: real samples, project

def start_qgis():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    plugins = "/usr/share/qgis/python/plugins"
    if plugins not in sys.path:
        sys.path.append(plugins)
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    from processing_provider.provider import ForestCarbonProvider

    provider = ForestCarbonProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    return app, provider


def real_samples(out_dir) -> list:
    """CHMs of the real sample point clouds that fit the demo: (title, CHM path). Failures are reported, not fatal."""
    import processing

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    stand = ROOT / "resources" / "sample_data" / "sample_stand.laz"
    try:  # the bundled stand: absolute elevations with ground classified → normalize, then a 0.5 m CHM
        norm = processing.run("forestcarbon:normalizeheight", {
            "INPUT": str(stand), "OUTPUT": str(out_dir / "sample_stand_normalized.laz"), "MAX_WORKERS": 1})["OUTPUT"]
        chm = processing.run("forestcarbon:canopyheightmodel", {
            "INPUT": norm, "RESOLUTION": 0.5, "METHOD": 1, "MAX_WORKERS": 1,
            "OUTPUT": str(out_dir / "sample_stand_chm.tif")})["OUTPUT"]
        made.append(("Real sample: resources/sample_data/sample_stand.laz (pit-free CHM, 0.5 m)", chm))
    except Exception as exc:  # noqa: BLE001 - a side product
        print(f"  (sample_stand.laz skipped: {exc})")
    conifer = ROOT.parent / "shared" / "data" / "lidar" / "MixedConifer.laz"
    if conifer.exists():  # lidR's example stand, already normalized
        try:
            chm = processing.run("forestcarbon:canopyheightmodel", {
                "INPUT": str(conifer), "RESOLUTION": 0.5, "METHOD": 1, "MAX_WORKERS": 1,
                "OUTPUT": str(out_dir / "mixed_conifer_chm.tif")})["OUTPUT"]
            made.append(("Real sample: ../shared/data/lidar/MixedConifer.laz (lidR's example, pit-free CHM "
                         "0.5 m)", chm))
        except Exception as exc:  # noqa: BLE001
            print(f"  (MixedConifer.laz skipped: {exc})")
    return made


def build_project(qgz, outputs: dict, vectors: dict, extra_rasters=()) -> Path:
    """A QGIS project with the chain's outputs styled by resources/styles (ramps stretched to each layer)."""
    from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer

    from forest_carbon_plugin.styling import rescale_ramp

    styles = ROOT / "resources" / "styles"
    extra_rasters = list(extra_rasters)
    project = QgsProject.instance()
    project.clear()
    layers = []

    def raster(path, name, style=None, visible=True):
        layer = QgsRasterLayer(str(path), name)
        if not layer.isValid():
            raise RuntimeError(f"{path} does not load as a raster")
        if style:
            layer.loadNamedStyle(str(styles / f"{style}.qml"))
            if style != "canopy_height":
                rescale_ramp(layer)
        project.addMapLayer(layer)
        project.layerTreeRoot().findLayer(layer.id()).setItemVisibilityChecked(visible)
        layers.append(layer)

    def vector(path, name, style=None):
        layer = QgsVectorLayer(str(path), name, "ogr")
        if not layer.isValid():
            raise RuntimeError(f"{path} does not load as a vector layer")
        if style:
            layer.loadNamedStyle(str(styles / f"{style}.qml"))
        project.addMapLayer(layer)
        layers.append(layer)

    # added bottom-up: the last layer is drawn on top
    for title, path in extra_rasters:
        raster(path, title, "canopy_height", visible=False)
    raster(outputs["compositescenes:composite"], "Composite (S2 + Landsat, HLS)", visible=False)
    raster(outputs["canopyheightmodel:chm"], "Canopy height model (LiDAR)", "canopy_height", visible=False)
    raster(outputs["predictraster:std"], "AGB standard deviation (Mg/ha)", "uncertainty", visible=False)
    raster(outputs["predictraster:agb"], "AGB prediction (Mg/ha)", "prediction")
    from qgis.core import (QgsMarkerSymbol, QgsPalLayerSettings, QgsReferencedRectangle, QgsSingleSymbolRenderer,
                           QgsTextBufferSettings, QgsTextFormat, QgsVectorLayerSimpleLabeling)
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtGui import QColor, QFont

    # training and validation plots told apart by shape, fill and colour (legible in grey print and for the
    # colour-blind too): filled orange circles for the plots the model learned from, hollow magenta triangles
    # for the held-out plots it never saw
    vector(vectors["training_plots"], "Training plots (model fitting)")
    layers[-1].setRenderer(QgsSingleSymbolRenderer(QgsMarkerSymbol.createSimple(
        {"name": "circle", "color": "255,127,0,255", "outline_color": "0,0,0,255", "outline_width": "0.3",
         "size": "2.6"})))
    vector(vectors["validation_plots"], "Validation plots (held out)")
    layers[-1].setRenderer(QgsSingleSymbolRenderer(QgsMarkerSymbol.createSimple(
        {"name": "triangle", "color": "0,0,0,0", "outline_color": "230,0,200,255", "outline_width": "0.7",
         "size": "3.6"})))
    carbon = QgsVectorLayer(outputs["carbonstock:carbon"], "Project carbon (t CO2e)", "ogr")
    if not carbon.isValid():
        raise RuntimeError(f"{outputs['carbonstock:carbon']} does not load")
    symbol = carbon.renderer().symbol()
    symbol.setOpacity(1.0)
    symbol.symbolLayer(0).setBrushStyle(Qt.BrushStyle.NoBrush)  # outlines over the map (PyQt6 takes no int here)
    symbol.symbolLayer(0).setStrokeColor(QColor("black"))
    symbol.symbolLayer(0).setStrokeWidth(0.6)
    labels = QgsPalLayerSettings()
    labels.fieldName = "project || '\\n' || format_number(co2e_total_t, 0) || ' t CO2e'"
    labels.isExpression = True
    text = QgsTextFormat()
    text.setFont(QFont(label_font_family()))
    text.setSize(10)
    text.setColor(QColor("black"))
    halo = QgsTextBufferSettings()  # a white halo: labels stay legible over the dark end of the AGB ramp
    halo.setEnabled(True)
    halo.setSize(1.2)
    halo.setColor(QColor("white"))
    text.setBuffer(halo)
    labels.setFormat(text)
    carbon.setLabeling(QgsVectorLayerSimpleLabeling(labels))
    carbon.setLabelsEnabled(True)
    project.addMapLayer(carbon)
    layers.append(carbon)
    project.setCrs(carbon.crs())
    project.setTitle("Forest Carbon demo")
    # QGIS opens a project written without a map canvas at its default view extent: the scene (the chain's layers,
    # not the real samples, which lie elsewhere) with a small margin
    scene = scene_extent(layers[len(extra_rasters):], project)
    project.viewSettings().setDefaultViewExtent(QgsReferencedRectangle(scene, project.crs()))
    pin_transformations(project, layers)
    qgz = Path(qgz)
    qgz.unlink(missing_ok=True)
    ok = project.write(str(qgz))
    layers.clear()
    del carbon
    project.clear()
    if not ok:
        raise RuntimeError(f"Could not write {qgz}")
    return qgz


def label_font_family() -> str:
    """A font family this machine's desktop QGIS has. Without one, labels keep the default of the offscreen platform
    that writes the project ('DejaVu LGC Sans', which Debian does not install), and QGIS desktop warns "Font not
    available on system" as the project loads."""
    from qgis.core import QgsFontUtils

    for family in ("DejaVu Sans", "Sans Serif", "Arial", "Helvetica"):
        if QgsFontUtils.fontFamilyMatchOnSystem(family)[0]:
            return family
    return "Sans Serif"


def pin_transformations(project, layers) -> None:
    """Record in the project the coordinate operation PROJ takes by default from each layer's CRS to the project's.

    A layer in another datum (the real sample MixedConifer.laz is NAD83 / UTM 12N, the scene WGS 84 / UTM 33N)
    otherwise makes QGIS desktop stop on "Multiple operations are possible…" when the project opens."""
    from qgis.core import QgsCoordinateTransform, QgsCoordinateTransformContext, QgsCsException

    context = project.transformContext()
    for layer in layers:
        crs = layer.crs()
        if not crs.isValid() or crs == project.crs() or context.hasTransform(crs, project.crs()):
            continue
        transform = QgsCoordinateTransform(crs, project.crs(), QgsCoordinateTransformContext())
        try:
            transform.transform(layer.extent().center())  # instantiates the operation PROJ picks
        except QgsCsException:
            continue
        proj = transform.instantiatedCoordinateOperationDetails().proj
        if proj:
            context.addCoordinateOperation(crs, project.crs(), proj)
    project.setTransformContext(context)


def scene_extent(layers, project, margin: float = 0.03):
    """The union of the layers' extents in the project's CRS, grown by ``margin`` of its size on every side."""
    from qgis.core import QgsCoordinateTransform, QgsRectangle

    extent = None
    for layer in layers:
        transform = QgsCoordinateTransform(layer.crs(), project.crs(), project.transformContext())
        box = transform.transformBoundingBox(layer.extent())
        extent = QgsRectangle(box) if extent is None else extent
        extent.combineExtentWith(box)
    return extent.buffered(margin * max(extent.width(), extent.height()))


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-m", type=float, default=SCENE["size_m"])
    parser.add_argument("--seed", type=int, default=SCENE["seed"])
    parser.add_argument("--out", default=str(ROOT / "demo_output"))
    args = parser.parse_args(argv)
    from scripts import demo_report, package, qgis_env

    started = time.perf_counter()
    timings = {}

    def lap(name, t0):
        timings[name] = round(time.perf_counter() - t0, 1)
        print(f"  … {name}: {timings[name]:.1f} s", flush=True)

    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()) and not ((out / "summary.json").exists() or (out / "scene").exists()
                                                    or out == ROOT / "demo_output"):
        print(f"demo: {out} is not empty and not a demo output folder; choose another --out", file=sys.stderr)
        return 2
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    print("1/5 Packaging the plugin into a throwaway QGIS profile", flush=True)
    t0 = time.perf_counter()
    zip_path = package.build()
    config_dir = ROOT / "build" / "demo_qgis"
    qgis_env.make_profile(zip_path, config_dir)
    lap("package", t0)

    print(f"2/5 Simulating a {args.size_m:g} m scene (seed {args.seed})", flush=True)
    t0 = time.perf_counter()
    scene = out / "scene"
    manifest = simulate(scene, size_m=args.size_m, seed=args.seed)
    train, validation = split_plots(scene / manifest["field_plots"], out / "plots")
    lap("simulate", t0)

    print(f"3/5 qgis_process run {MODEL3.relative_to(ROOT)} (13 Forest Carbon algorithms, 4 of QGIS)", flush=True)
    t0 = time.perf_counter()
    chain_dir = out / "chain"
    chain_dir.mkdir()
    parameters = chain_parameters(scene, manifest, train, validation, chain_dir)
    proc = run_chain_qgis_process(parameters, config_dir)
    (out / "qgis_process.log").write_text(proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0 or "Model processed OK" not in proc.stdout + proc.stderr:
        print(proc.stdout[-6000:], proc.stderr[-6000:], sep="\n", file=sys.stderr)
        print(f"demo FAILED: qgis_process could not run the model (log: {out / 'qgis_process.log'})", file=sys.stderr)
        return 1
    outputs = chain_outputs(chain_dir)
    missing = [k for k, p in outputs.items() if not Path(p).exists()]
    if missing:
        print(f"demo FAILED: the model did not write {missing}", file=sys.stderr)
        return 1
    lap("model (qgis_process)", t0)

    print("4/5 Real sample files and the QGIS project", flush=True)
    t0 = time.perf_counter()
    app, provider = start_qgis()
    try:
        extra = real_samples(out / "samples")
        qgz = build_project(out / "forest_carbon_demo.qgz", outputs,
                            {"training_plots": train, "validation_plots": validation}, extra)
        lap("samples + project", t0)

        # The report reads rasters with rasterio in this process, so it runs before exitQgis(), which
        # deregisters GDAL's drivers on recent QGIS ("No driver registered" on 3.40+).
        print("5/5 Report", flush=True)
        t0 = time.perf_counter()
        sample_maps = []
        for i, (title, path) in enumerate(extra):
            png = out / "maps" / f"sample_{i + 1}_chm.png"
            (out / "maps").mkdir(exist_ok=True)
            sample_maps.append((title, demo_report.raster_map(path, png, title.split(" (")[0], "height (m)",
                                                              "Greens", vmin=0.0)))
        scene_settings = {**SCENE, "size_m": args.size_m, "seed": args.seed}
        settings = {**SETTINGS, **{f"scene_{k}": v for k, v in scene_settings.items()},
                    "validation_every": VALIDATION_EVERY}
        summary = demo_report.write_report(out, report_inputs(outputs), manifest, settings, sample_maps, timings)
        lap("report", t0)
    finally:
        from qgis.core import QgsApplication

        QgsApplication.processingRegistry().removeProvider(provider)
        app.exitQgis()
    timings["total"] = round(time.perf_counter() - started, 1)
    summary["timings_s"] = timings
    (out / "summary.json").write_text(json.dumps({k: v for k, v in summary.items()}, indent=2, default=str) + "\n")

    print()
    for line in demo_report.summary_lines(summary):
        print(line)
    print(f"\nReport: {summary['report']}\nQGIS project: {qgz}  (open it: qgis {qgz})\n"
          f"Outputs: {chain_dir}\nTotal time: {timings['total']:.0f} s")
    inside = [r.get("inside") for r in summary["projects"]]
    if not all(inside):
        print("Note: a true total lies outside its interval (a 90 % interval misses one time in ten).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
