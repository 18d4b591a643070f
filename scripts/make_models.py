"""Build the graphical models (.model3) of resources/models/ with the modeler API.

    python scripts/make_models.py            # (re)writes resources/models/*.model3
    python scripts/make_models.py forest_carbon_chain   # only that one

``area_based_approach.model3`` — the area-based approach in one model (issue 12): a LAS/LAZ file or a
folder of tiles (catalog) and field plots → ``plotmetrics`` → ``trainmodel`` (the plot fields as features,
the plot measurement as target) → ``canopymetrics`` on the wall-to-wall grid → ``predictraster`` with the
standard deviation and the lower/upper bounds of the interval. Run it from the Processing toolbox (Models),
or ``qgis_process run resources/models/area_based_approach.model3 -- cloud=… plots=… target_field=…``.

``forest_carbon_chain.model3`` — the main job (issue 11), from raw files to project carbon: the LiDAR catalog is
normalized (``normalizeheight``), gives a canopy height model (``canopyheightmodel``) and grid metrics
(``canopymetrics``); the CHM is aggregated onto the 30 m imagery grid (``aggregatetogrid``: mean, p95, std, cover2);
Sentinel-2 and Landsat are harmonized (``harmonizescene``, Landsat onto the Sentinel-2 grid), composited
(``compositescenes``) and turned into indices (``spectralindices``); Sentinel-1 gives radar features
(``sarfeatures``). ``trainmodel`` learns the plots' AGB from all of these layers (conformal intervals, spatial CV),
Grid cells whose CHM has no canopy above 2 m join the plots as zero-AGB samples (every ``zero_every``-th such
cell: plots are laid out in forest, and a model that never sees open land predicts biomass there).
``predictraster`` maps AGB with its standard deviation and 90 % bounds, ``validatepredictions`` checks the map
against independent validation plots, and ``carbonstock`` sums it over the project polygons with a Monte Carlo
interval. ``make demo`` runs it with ``qgis_process``.

Every input parameter of every child gets a source, its algorithm's default where the model sets none (read from
the registered algorithms at build time, so rebuild after an algorithm gains a parameter), and the build stops when
``validateChildAlgorithm`` or ``validate`` finds an issue: QGIS 3.22's Model Designer draws a child with a mandatory
parameter unset in red and *Run* calls the model invalid. Components are laid out left to right by dependency depth
(``lay_out``). ``tests/processing/test_models_designer.py`` checks the files.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script, scripts/ is on the path but processing_provider's folder is not
    sys.path.insert(0, str(ROOT))
MODELS_DIR = ROOT / "resources" / "models"
ABA = "area_based_approach"
CHAIN = "forest_carbon_chain"


def area_based_approach():
    """The area-based approach as a ``QgsProcessingModelAlgorithm``."""
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildParameterSource as Source,
        QgsProcessingModelParameter,
        QgsProcessingParameterEnum,
        QgsProcessingParameterFeatureSource,
        QgsProcessingParameterField,
        QgsProcessingParameterFile,
        QgsProcessingParameterNumber,
        QgsProcessingParameterString,
    )

    from processing_provider.compat import FieldDataType, FileBehavior, NumberType, SourceType

    model = QgsProcessingModelAlgorithm("Area-based approach (plots → wall-to-wall map)", "Forest Carbon")
    model.setHelpContent({
        "ALG_DESC": "The area-based approach of LiDAR forest inventory: the canopy metrics of each field plot "
                    "(Plot metrics) are the features of a model of the plot measurement (Train model, with "
                    "cross-validation on plots and conformal intervals), applied to the same metrics on a grid "
                    "(Canopy metrics) by Predict raster, which picks the grid's bands by name.",
        "cloud": "A folder of LAS/LAZ tiles (a catalog), or the path of one LAS/LAZ file typed in.",
        "plots": "Plot centres (points; RADIUS applies) or plot outlines (polygons) with the measurement field.",
        "target_field": "The plot measurement to map (e.g. AGB in Mg/ha).",
        "feature_fields": "Comma-separated metric names to use as features; empty: every metric but n.",
        "resolution": "Cell size of the map (m): about the plot's area (a 11.28 m radius is 400 m² = 20 m × 20 m).",
    })
    params = [
        # a folder parameter (QGIS 3.22's file parameter takes files or folders, never both; a folder's value is
        # not checked further, so a path to one LAS/LAZ file can be typed or passed to qgis_process as well)
        QgsProcessingParameterFile("cloud", "Folder of LAS/LAZ tiles (or a LAS/LAZ file)",
                                   FileBehavior.Folder),
        QgsProcessingParameterFeatureSource("plots", "Field plots",
                                            [SourceType.VectorPoint, SourceType.VectorPolygon]),
        QgsProcessingParameterField("target_field", "Plot measurement field", parentLayerParameterName="plots",
                                    type=FieldDataType.Numeric),
        QgsProcessingParameterNumber("radius", "Plot radius for point plots (m)", NumberType.Double,
                                     defaultValue=11.28, minValue=0.0),
        QgsProcessingParameterString("feature_fields", "Feature fields (comma-separated; empty = all metrics)",
                                     defaultValue="", optional=True),
        QgsProcessingParameterNumber("resolution", "Map resolution (m)", NumberType.Double,
                                     defaultValue=20.0, minValue=0.0),
        QgsProcessingParameterEnum("model_type", "Model type",
                                   options=["Quantile gradient boosting", "Random forest (mean + residual variance)"],
                                   defaultValue=0),
        QgsProcessingParameterNumber("coverage", "Interval coverage", NumberType.Double,
                                     defaultValue=0.9, minValue=0.5, maxValue=0.995),
    ]
    for param in params:
        model.addModelParameter(param, QgsProcessingModelParameter(param.name()))

    P, C = Source.fromModelParameter, Source.fromChildOutput
    children = [
        _child("forestcarbon:plotmetrics", "plotmetrics", "Plot metrics",
               {"INPUT": P("cloud"), "PLOTS": P("plots"), "RADIUS": P("radius")},
               outputs=[("plot_metrics", "OUTPUT", "Plot metrics")]),
        _child("forestcarbon:trainmodel", "trainmodel", "Train model on the plots",
               {"FEATURES": C("plotmetrics", "OUTPUT"), "TARGET_FIELD": P("target_field"),
                "FEATURE_FIELDS": P("feature_fields"), "MODEL_TYPE": P("model_type"), "COVERAGE": P("coverage")},
               outputs=[("model", "OUTPUT_MODEL", "Model (ONNX)"), ("report", "OUTPUT_REPORT", "Training report")]),
        _child("forestcarbon:canopymetrics", "canopymetrics", "Canopy metrics (grid)",
               {"INPUT": P("cloud"), "RESOLUTION": P("resolution")},
               outputs=[("metrics", "OUTPUT", "Canopy metrics")]),
        _child("forestcarbon:predictraster", "predictraster", "Predict the map",
               {"INPUT": C("canopymetrics", "OUTPUT"), "MODEL": C("trainmodel", "OUTPUT_MODEL"),
                "COVERAGE": P("coverage")},
               outputs=[("prediction", "OUTPUT", "Prediction"), ("std", "OUTPUT_STD", "Standard deviation"),
                        ("lower", "OUTPUT_LOWER", "Lower bound"), ("upper", "OUTPUT_UPPER", "Upper bound")]),
    ]
    return finish(model, children)


def child_id_output_names(model):
    """The model with its outputs named ``childId:output`` (e.g. ``predictraster:agb``) on every QGIS.

    QGIS >= 3.26 gives a model made in code its "Version2" behaviour, which names the outputs (and their
    destination parameters) after their descriptions ("AGB (Mg/ha)" → ``AGB_Mgha``); files without that
    key, and every model on 3.22, keep ``childId:output``. Setting "Version1" through the variant (no
    setter in the API) keeps the names the demo, the tests and the users' scripts pass; 3.22 ignores the key."""
    variant = model.toVariant()
    variant["internal_version"] = "Version1"
    if not model.loadVariant(variant):
        raise RuntimeError(f"Could not reload the model {model.name()}")
    return model


#: values a model file names itself where the definition's default depends on the machine that builds it: worker
#: processes default to min(4, cores); a shared .model3 keeps 2 (the demo's machine), which the designer can raise
MACHINE_DEPENDENT = {"MAX_WORKERS": 2}
#: the designer's grid: gaps (px) between columns, between rows, and the indent of a child's outputs below it
GAP_X, GAP_Y, OUTPUT_INDENT = 50.0, 24.0, 40.0
MARGIN = 60.0


def finish(model, children):
    """Add the children with every parameter set, lay the model out, name its outputs, and refuse to write a model
    the designer would show invalid."""
    for child in children:
        complete_parameters(child)
        model.addChildAlgorithm(child)
    lay_out(model)
    model = child_id_output_names(model)
    check_valid(model)
    return model


def complete_parameters(child) -> None:
    """Give every input parameter of the child's algorithm a source: its definition's default where the model sets
    none. QGIS 3.22's designer draws a child red, and Run says "Model is invalid", when a mandatory parameter has
    no source even if it has a default; reading the definitions here gives parameters added to an algorithm later
    their defaults at the next build (advanced ones too)."""
    from qgis.core import QgsApplication, QgsProcessingModelChildParameterSource as Source

    from processing_provider.compat import ParameterFlag

    alg = QgsApplication.processingRegistry().algorithmById(child.algorithmId())
    if alg is None:
        raise RuntimeError(f"{child.algorithmId()} is not available: register the Forest Carbon provider and "
                           "QGIS's native algorithms before building the models")
    given = child.parameterSources()
    for definition in alg.parameterDefinitions():
        name = definition.name()
        if definition.isDestination() or name in given:
            continue
        value = definition.defaultValue()
        if value is None and not definition.flags() & ParameterFlag.Optional:
            continue  # a required input without a default: check_valid names it
        if name in MACHINE_DEPENDENT and value:  # 0 means "all cores" and travels as it is
            value = MACHINE_DEPENDENT[name]
        child.addParameterSources(name, [Source.fromStaticValue(value)])


def check_valid(model) -> None:
    """Raise when the designer would flag the model: a child with a mandatory parameter unset, a static value its
    definition refuses, a missing algorithm or child (``QgsProcessingModelAlgorithm.validate``)."""
    import re

    problems = []
    for child_id in sorted(model.childAlgorithms()):
        ok, issues = model.validateChildAlgorithm(child_id)
        problems += [f"{child_id}: {re.sub('<[^>]+>', '', issue)}" for issue in issues]
    ok, issues = model.validate()
    if problems or not ok:
        listed = "\n  ".join(problems or [re.sub("<[^>]+>", "", i) for i in issues])
        raise RuntimeError(f"The model {model.name()} would be invalid in the Model Designer:\n  {listed}")


def child_dependencies(child) -> set:
    """Ids of the children whose outputs feed this child."""
    return {source.outputChildId() for sources in child.parameterSources().values() for source in sources
            if source.outputChildId()} | {dep.childId for dep in child.dependencies()}


def component_rects(model) -> dict:
    """Every component the designer draws as a box: (kind, name) → (left, top, right, bottom). A component's
    position is the centre of its box (QgsModelComponentGraphicItem)."""
    def rect(component):
        pos, size = component.position(), component.size()
        return (pos.x() - size.width() / 2, pos.y() - size.height() / 2,
                pos.x() + size.width() / 2, pos.y() + size.height() / 2)

    rects = {("input", name): rect(c) for name, c in model.parameterComponents().items()}
    for child_id, child in model.childAlgorithms().items():
        rects[("child", child_id)] = rect(child)
        for name, output in child.modelOutputs().items():
            rects[("output", f"{child_id}:{name}")] = rect(output)
    return rects


def lay_out(model) -> None:
    """Left to right in the order of the chain: the model's inputs in column 0, each child in the column of its
    dependency depth (1 + the deepest child feeding it), its outputs stacked just below it and indented to the
    right; rows within a column spaced by the components' sizes, ordered by (and where there is room, level with)
    the mean height of what feeds them, so that links cross little."""
    from qgis.PyQt.QtCore import QPointF

    children = model.childAlgorithms()
    deps = {cid: child_dependencies(child) for cid, child in children.items()}
    depth = {}

    def depth_of(cid, seen=()):
        if cid not in depth:
            if cid in seen:
                raise RuntimeError(f"the model's children depend on each other in a cycle through {cid}")
            depth[cid] = 1 + max((depth_of(d, seen + (cid,)) for d in deps[cid]), default=0)
        return depth[cid]

    order = list(children)  # insertion order of the build: the chain as written
    columns = {}
    for cid in order:
        columns.setdefault(depth_of(cid), []).append(cid)

    params = model.parameterComponents()
    param_order = [d.name() for d in model.parameterDefinitions() if d.name() in params]
    centre_y = {}
    width = max((params[n].size().width() for n in param_order), default=0.0)
    x, y = MARGIN + width / 2, MARGIN
    for name in param_order:
        comp = params[name]
        h = comp.size().height()
        comp.setPosition(QPointF(x, y + h / 2))
        centre_y[("input", name)] = y + h / 2
        y += h + GAP_Y
    model.setParameterComponents(params)
    right = MARGIN + width

    def feeders_y(cid):
        # the children feeding it, else the model inputs it reads (the settings many children share, at the
        # bottom of column 0, would pull every child down)
        ys = [centre_y[("child", d)] for d in deps[cid]]
        ys = ys or [centre_y[("input", s.parameterName())] for sources in children[cid].parameterSources().values()
                    for s in sources if s.parameterName() in params]
        return sum(ys) / len(ys) if ys else 0.0

    for col in sorted(columns):
        ids = sorted(columns[col], key=lambda c: (feeders_y(c), order.index(c)))
        col_width = max(max([children[c].size().width()]
                            + [OUTPUT_INDENT + o.size().width() for o in children[c].modelOutputs().values()])
                        for c in ids)
        left = right + GAP_X
        y = MARGIN
        for cid in ids:
            child = children[cid]
            w, h = child.size().width(), child.size().height()
            y = max(y, feeders_y(cid) - h / 2)  # level with what feeds it where the column has room
            cx = left + w / 2
            child.setPosition(QPointF(cx, y + h / 2))
            centre_y[("child", cid)] = y + h / 2
            y += h + GAP_Y
            outputs = child.modelOutputs()
            for out in outputs.values():
                ow, oh = out.size().width(), out.size().height()
                out.setPosition(QPointF(left + OUTPUT_INDENT + ow / 2, y + oh / 2))
                y += oh + GAP_Y
            child.setModelOutputs(outputs)
            y += GAP_Y  # a little air between one child's block and the next
        right = left + col_width
    model.setChildAlgorithms(children)


def _child(algorithm, child_id, description, sources, static=None, outputs=()):
    """A model child: its parameters from ``sources`` (model parameters or other children's outputs, one or a
    list each) and ``static`` values; ``outputs`` [(model output name, child output, label)] are model outputs."""
    from qgis.core import QgsProcessingModelChildAlgorithm, QgsProcessingModelChildParameterSource as Source

    alg = QgsProcessingModelChildAlgorithm(algorithm)
    alg.setChildId(child_id)
    alg.setDescription(description)
    for name, source in sources.items():
        alg.addParameterSources(name, source if isinstance(source, list) else [source])
    for name, value in (static or {}).items():
        alg.addParameterSources(name, [Source.fromStaticValue(value)])
    alg.setModelOutputs({name: _output(alg, name, out, label) for name, out, label in outputs})
    return alg


def _output(child, name, child_output, label):
    from qgis.core import QgsProcessingModelOutput

    out = QgsProcessingModelOutput(name, label)
    out.setChildOutputName(child_output)
    out.setChildId(child.childId())
    return out


#: the chain's children and their model outputs: child id → [(model output name, child output, label)]
CHAIN_OUTPUTS = {
    "canopyheightmodel": [("chm", "OUTPUT", "Canopy height model (LiDAR)")],
    "canopymetrics": [("metrics", "OUTPUT", "Canopy metrics (LiDAR grid)")],
    "aggregatetogrid": [("chm_grid", "OUTPUT", "Canopy height on the imagery grid")],
    "harmonize_s2": [("sentinel2", "OUTPUT", "Harmonized Sentinel-2")],
    "harmonize_landsat": [("landsat", "OUTPUT", "Harmonized Landsat")],
    "compositescenes": [("composite", "OUTPUT", "Composite")],
    "spectralindices": [("indices", "OUTPUT", "Spectral indices")],
    "sarfeatures": [("sar", "OUTPUT", "SAR features")],
    "mergeplots": [("training_samples", "OUTPUT", "Training samples (plots + zero-AGB pixels)")],
    "trainmodel": [("model", "OUTPUT_MODEL", "AGB model (ONNX)"), ("report", "OUTPUT_REPORT", "Training report")],
    "predictraster": [("agb", "OUTPUT", "AGB (Mg/ha)"), ("std", "OUTPUT_STD", "AGB standard deviation"),
                      ("lower", "OUTPUT_LOWER", "AGB lower bound"), ("upper", "OUTPUT_UPPER", "AGB upper bound")],
    "validatepredictions": [("report", "OUTPUT_REPORT", "Validation report")],
    "carbonstock": [("carbon", "OUTPUT", "Project carbon"), ("report", "OUTPUT_REPORT", "Carbon report")],
}


def forest_carbon_chain():
    """The main job, raw LiDAR + imagery + plots → AGB map with uncertainty → project carbon, as a model."""
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildParameterSource as Source,
        QgsProcessingModelParameter,
        QgsProcessingParameterEnum,
        QgsProcessingParameterFeatureSource,
        QgsProcessingParameterField,
        QgsProcessingParameterFile,
        QgsProcessingParameterNumber,
        QgsProcessingParameterRasterLayer,
        QgsProcessingParameterVectorLayer,
    )
    from processing_provider.compat import FieldDataType, FileBehavior, NumberType, SourceType

    Num = QgsProcessingParameterNumber
    model = QgsProcessingModelAlgorithm("Forest carbon chain (LiDAR + imagery + plots → project carbon)",
                                        "Forest Carbon")
    model.setHelpContent({
        "ALG_DESC": "The main job of Forest Carbon in one model. LiDAR: Normalize heights → Canopy height model "
                    "and Canopy metrics; the CHM is aggregated onto the imagery grid (mean, p95, std, cover2). "
                    "Imagery: Sentinel-2 and Landsat are harmonized (HLS v2.0) onto one grid, composited (median) "
                    "and turned into spectral indices; Sentinel-1 gives filtered backscatter. Grid cells without "
                    "canopy above 2 m (every zero_every-th) join the plots as zero-AGB samples. Train model learns the "
                    "plots' measurement (AGB, Mg/ha) from every layer (spatial CV, conformal intervals); Predict "
                    "raster maps it with its standard deviation and bounds; Validate predictions compares the map "
                    "with independent validation plots; Carbon stock totals the map over the project polygons with "
                    "a Monte Carlo interval (spatially correlated pixel errors, CORRELATION_RANGE).",
        "cloud": "A folder of LAS/LAZ tiles (a catalog), or the path of one LAS/LAZ file typed in.",
        "sentinel2": "A Sentinel-2 L2A/L1C product folder (.SAFE).",
        "landsat": "A Landsat Collection 2 scene folder (with its MTL).",
        "s1_vv": "Sentinel-1 gamma0 VV (linear power).",
        "s1_vh": "Sentinel-1 gamma0 VH (linear power).",
        "plots": "Training plots (points) with the measurement field.",
        "validation_plots": "Independent validation plots (points) with the same field, not used in training.",
        "target_field": "The plot measurement to map: AGB in Mg/ha (carbonstock reads the map as AGB).",
        "projects": "Project polygons.",
        "resolution": "Cell size (m) of the imagery grid, the LiDAR metrics and the map: about the plots' area.",
        "chm_resolution": "Cell size (m) of the canopy height model.",
        "coverage": "Nominal coverage of the pixel intervals and confidence level of the project intervals.",
        "correlation_range": "Practical range (m) of the spatial correlation of the map's errors, for the project "
                             "intervals. Empty (the default): Carbon stock fits it to the validation report's "
                             "residual semivariogram. 0 = independent pixel errors, which understates the "
                             "uncertainty of a total.",
        "root_shoot": "Root-to-shoot ratio (0: above-ground carbon only).",
        "model_type": "Random forest (default): σ from a forest of the out-of-bag squared residuals, conformally "
                      "calibrated, the size of the map's errors, which Carbon stock sums. The quantile model's "
                      "Gaussian-equivalent σ (from its interval) overstated the errors about fourfold in the demo.",
        "zero_every": "Field plots are usually laid out in forest, so the model rarely sees land without trees and "
                      "predicts biomass there. Every n-th cell of the imagery grid whose LiDAR CHM has no pixel above "
                      "2 m (cover2 = 0) joins the training plots with AGB 0 (n ≈ grid cells per field plot samples "
                      "open land as densely as the plots sample the forest). 0: plots only.",
    })
    params = [
        QgsProcessingParameterFile("cloud", "LiDAR: folder of LAS/LAZ tiles (or a LAS/LAZ file)",
                                   FileBehavior.Folder),
        QgsProcessingParameterFile("sentinel2", "Sentinel-2 product folder (.SAFE)", FileBehavior.Folder),
        QgsProcessingParameterFile("landsat", "Landsat scene folder", FileBehavior.Folder),
        QgsProcessingParameterRasterLayer("s1_vv", "Sentinel-1 gamma0 VV (linear)"),
        QgsProcessingParameterRasterLayer("s1_vh", "Sentinel-1 gamma0 VH (linear)"),
        QgsProcessingParameterFeatureSource("plots", "Training plots", [SourceType.VectorPoint]),
        QgsProcessingParameterField("target_field", "Plot measurement field (AGB, Mg/ha)",
                                    defaultValue="agb_mg_ha", parentLayerParameterName="plots",
                                    type=FieldDataType.Numeric),
        QgsProcessingParameterVectorLayer("validation_plots", "Validation plots", [SourceType.VectorPoint]),
        QgsProcessingParameterFeatureSource("projects", "Project polygons", [SourceType.VectorPolygon]),
        Num("resolution", "Map resolution (m)", NumberType.Double, defaultValue=30.0, minValue=0.0),
        Num("chm_resolution", "CHM resolution (m)", NumberType.Double, defaultValue=1.0, minValue=0.0),
        QgsProcessingParameterEnum("model_type", "Model type",
                                   options=["Quantile gradient boosting", "Random forest (mean + residual variance)"],
                                   defaultValue=1),
        Num("folds", "Cross-validation folds", NumberType.Integer, defaultValue=5, minValue=2, maxValue=50),
        Num("coverage", "Interval coverage / confidence level", NumberType.Double, defaultValue=0.9, minValue=0.5,
            maxValue=0.995),
        Num("zero_every", "Zero-AGB samples: every n-th grid cell without canopy (0 = none)", NumberType.Integer,
            defaultValue=30, minValue=0),
        Num("correlation_range", "Error correlation range (m; empty: fitted from the validation report)",
            NumberType.Double, optional=True, minValue=0.0),
        Num("root_shoot", "Root-to-shoot ratio", NumberType.Double, defaultValue=0.0, minValue=0.0),
        Num("simulations", "Monte Carlo simulations", NumberType.Integer, defaultValue=10000, minValue=10),
        Num("seed", "Random seed", NumberType.Integer, defaultValue=0, minValue=0),
    ]
    for param in params:
        model.addModelParameter(param, QgsProcessingModelParameter(param.name()))

    def child(algorithm, child_id, description, sources, static=None):
        return _child(algorithm, child_id, description, sources, static, CHAIN_OUTPUTS.get(child_id, ()))

    P, C = Source.fromModelParameter, Source.fromChildOutput
    children = [
        child("forestcarbon:normalizeheight", "normalizeheight", "Normalize heights",
              {"INPUT": P("cloud")}),
        child("forestcarbon:canopyheightmodel", "canopyheightmodel", "Canopy height model",
              {"INPUT": C("normalizeheight", "OUTPUT"), "RESOLUTION": P("chm_resolution")},
              {"METHOD": 0}),
        child("forestcarbon:canopymetrics", "canopymetrics", "Canopy metrics (grid)",
              {"INPUT": C("normalizeheight", "OUTPUT"), "RESOLUTION": P("resolution")},
              {"NORMALIZE": 2}),
        child("forestcarbon:harmonizescene", "harmonize_s2", "Harmonize Sentinel-2",
              {"INPUT": P("sentinel2"), "TARGET_RESOLUTION": P("resolution")}),
        child("forestcarbon:harmonizescene", "harmonize_landsat", "Harmonize Landsat (onto the Sentinel-2 grid)",
              {"INPUT": P("landsat"), "REFERENCE_GRID": C("harmonize_s2", "OUTPUT"),
               "TARGET_RESOLUTION": P("resolution")}),
        child("forestcarbon:compositescenes", "compositescenes", "Composite scenes (median)",
              {"INPUTS": [C("harmonize_s2", "OUTPUT"), C("harmonize_landsat", "OUTPUT")]}, {"METHOD": 0}),
        child("forestcarbon:spectralindices", "spectralindices", "Spectral indices",
              {"INPUT": C("compositescenes", "OUTPUT")}),
        child("forestcarbon:sarfeatures", "sarfeatures", "SAR features",
              {"INPUT_VV": P("s1_vv"), "INPUT_VH": P("s1_vh")}),
        child("forestcarbon:aggregatetogrid", "aggregatetogrid", "Aggregate the CHM to the imagery grid",
              {"INPUT": C("canopyheightmodel", "OUTPUT"), "REFERENCE_GRID": C("compositescenes", "OUTPUT")},
              {"STATISTICS": "mean,p95,std,cover2"}),
    ]
    E = Source.fromExpression
    children += [
        # zero-AGB samples where the LiDAR sees no canopy: cover2 (band 4 of the aggregated CHM) = 0, every n-th cell
        child("native:pixelstopoints", "pixelstopoints", "Grid cells as points (LiDAR cover above 2 m)",
              {"INPUT_RASTER": C("aggregatetogrid", "OUTPUT")}, {"RASTER_BAND": 4, "FIELD_NAME": "cover2"}),
        child("native:extractbyexpression", "zerocells", "Every n-th cell without canopy",
              {"INPUT": C("pixelstopoints", "OUTPUT"),
               # evaluated once by the model into the filter, e.g. "cover2" = 0 AND $id % 30 = 0
               "EXPRESSION": E("if(@zero_every > 0, '\"cover2\" = 0 AND $id % ' || to_string(@zero_every) || ' = 0', "
                               "'false')")}),
        child("native:renametablefield", "zeroplots", "Zero-AGB samples (cover2 = 0 as the plot field)",
              {"INPUT": C("zerocells", "OUTPUT"), "NEW_NAME": P("target_field")}, {"FIELD": "cover2"}),
        child("native:mergevectorlayers", "mergeplots", "Training plots + zero-AGB samples",
              {"LAYERS": [P("plots"), C("zeroplots", "OUTPUT")]}),
    ]
    # canopymetrics stays a product, not a feature: its zskew/zkurt are NaN where every return has one height
    # (bare ground, water, grass), and a NaN feature would leave the AGB map empty there
    features = [C("compositescenes", "OUTPUT"), C("spectralindices", "OUTPUT"), C("sarfeatures", "OUTPUT"),
                C("aggregatetogrid", "OUTPUT")]
    children += [
        child("forestcarbon:trainmodel", "trainmodel", "Train the AGB model on the plots",
              {"FEATURES": features, "TARGET": C("mergeplots", "OUTPUT"), "TARGET_FIELD": P("target_field"),
               "MODEL_TYPE": P("model_type"), "FOLDS": P("folds"), "COVERAGE": P("coverage"), "SEED": P("seed")}),
        child("forestcarbon:predictraster", "predictraster", "Predict AGB with uncertainty",
              {"INPUT": features, "MODEL": C("trainmodel", "OUTPUT_MODEL"), "COVERAGE": P("coverage")}),
        child("forestcarbon:validatepredictions", "validatepredictions", "Validate against the validation plots",
              {"PREDICTION": C("predictraster", "OUTPUT"), "STD": C("predictraster", "OUTPUT_STD"),
               "LOWER": C("predictraster", "OUTPUT_LOWER"), "UPPER": C("predictraster", "OUTPUT_UPPER"),
               "COVERAGE": P("coverage"), "REFERENCE": P("validation_plots"),
               "REFERENCE_FIELD": P("target_field")}),
        child("forestcarbon:carbonstock", "carbonstock", "Carbon stock of the projects",
              {"AGB": C("predictraster", "OUTPUT"), "AGB_STD": C("predictraster", "OUTPUT_STD"),
               "PROJECTS": P("projects"), "ROOT_SHOOT": P("root_shoot"), "CONFIDENCE": P("coverage"),
               "CORRELATION_RANGE": P("correlation_range"),
               "VALIDATION_REPORT": C("validatepredictions", "OUTPUT_REPORT"),
               "SIMULATIONS": P("simulations"), "SEED": P("seed")}),
    ]
    return finish(model, children)


MODELS = {ABA: area_based_approach, CHAIN: forest_carbon_chain}


def write_models(folder=MODELS_DIR, names=None) -> list:
    """Write the models named (all by default). Qt writes XML attributes in a per-process random order, so a
    rewrite changes the bytes of an unchanged model: name the one you changed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names or MODELS:
        build = MODELS[name]
        path = folder / f"{name}.model3"
        if not build().toFile(str(path)):
            raise RuntimeError(f"Could not write {path}")
        paths.append(path)
    return paths


def main() -> int:
    from qgis.core import QgsApplication

    from scripts.demo import start_qgis

    app, provider = start_qgis()  # the algorithms' definitions give the children's defaults
    try:
        for path in write_models(names=sys.argv[1:] or None):
            print(path)
    finally:
        QgsApplication.processingRegistry().removeProvider(provider)
        app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
