"""Build the graphical models (.model3) of resources/models/ with the modeler API.

    python scripts/make_models.py            # (re)writes resources/models/*.model3

``area_based_approach.model3`` — the area-based approach in one model (issue 12): a LAS/LAZ file or a
folder of tiles (catalog) and field plots → ``plotmetrics`` → ``trainmodel`` (the plot fields as features,
the plot measurement as target) → ``canopymetrics`` on the wall-to-wall grid → ``predictraster`` with the
standard deviation and the lower/upper bounds of the interval. Run it from the Processing toolbox (Models),
or ``qgis_process run resources/models/area_based_approach.model3 -- cloud=… plots=… target_field=…``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "resources" / "models"
ABA = "area_based_approach"


def area_based_approach():
    """The area-based approach as a ``QgsProcessingModelAlgorithm``."""
    from qgis.core import (
        QgsProcessing,
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource as Source,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterEnum,
        QgsProcessingParameterFeatureSource,
        QgsProcessingParameterField,
        QgsProcessingParameterFile,
        QgsProcessingParameterNumber,
        QgsProcessingParameterString,
    )

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
                                   QgsProcessingParameterFile.Folder),
        QgsProcessingParameterFeatureSource("plots", "Field plots",
                                            [QgsProcessing.TypeVectorPoint, QgsProcessing.TypeVectorPolygon]),
        QgsProcessingParameterField("target_field", "Plot measurement field", parentLayerParameterName="plots",
                                    type=QgsProcessingParameterField.Numeric),
        QgsProcessingParameterNumber("radius", "Plot radius for point plots (m)", QgsProcessingParameterNumber.Double,
                                     defaultValue=11.28, minValue=0.0),
        QgsProcessingParameterString("feature_fields", "Feature fields (comma-separated; empty = all metrics)",
                                     defaultValue="", optional=True),
        QgsProcessingParameterNumber("resolution", "Map resolution (m)", QgsProcessingParameterNumber.Double,
                                     defaultValue=20.0, minValue=0.0),
        QgsProcessingParameterEnum("model_type", "Model type",
                                   options=["Quantile gradient boosting", "Random forest (mean + residual variance)"],
                                   defaultValue=0),
        QgsProcessingParameterNumber("coverage", "Interval coverage", QgsProcessingParameterNumber.Double,
                                     defaultValue=0.9, minValue=0.5, maxValue=0.995),
    ]
    for param in params:
        model.addModelParameter(param, QgsProcessingModelParameter(param.name()))

    def output(child, name, child_output, label):
        out = QgsProcessingModelOutput(name, label)
        out.setChildOutputName(child_output)
        out.setChildId(child.childId())
        return out

    plots = QgsProcessingModelChildAlgorithm("forestcarbon:plotmetrics")
    plots.setChildId("plotmetrics")
    plots.setDescription("Plot metrics")
    plots.addParameterSources("INPUT", [Source.fromModelParameter("cloud")])
    plots.addParameterSources("PLOTS", [Source.fromModelParameter("plots")])
    plots.addParameterSources("RADIUS", [Source.fromModelParameter("radius")])
    plots.setModelOutputs({"plot_metrics": output(plots, "plot_metrics", "OUTPUT", "Plot metrics")})

    train = QgsProcessingModelChildAlgorithm("forestcarbon:trainmodel")
    train.setChildId("trainmodel")
    train.setDescription("Train model on the plots")
    train.addParameterSources("FEATURES", [Source.fromChildOutput("plotmetrics", "OUTPUT")])
    train.addParameterSources("TARGET_FIELD", [Source.fromModelParameter("target_field")])
    train.addParameterSources("FEATURE_FIELDS", [Source.fromModelParameter("feature_fields")])
    train.addParameterSources("MODEL_TYPE", [Source.fromModelParameter("model_type")])
    train.addParameterSources("COVERAGE", [Source.fromModelParameter("coverage")])
    train.setModelOutputs({"model": output(train, "model", "OUTPUT_MODEL", "Model (ONNX)"),
                           "report": output(train, "report", "OUTPUT_REPORT", "Training report")})

    grid = QgsProcessingModelChildAlgorithm("forestcarbon:canopymetrics")
    grid.setChildId("canopymetrics")
    grid.setDescription("Canopy metrics (grid)")
    grid.addParameterSources("INPUT", [Source.fromModelParameter("cloud")])
    grid.addParameterSources("RESOLUTION", [Source.fromModelParameter("resolution")])
    # one process: canopymetrics' spawned workers fail to import numpy inside qgis_process (reported in issue 12)
    grid.addParameterSources("MAX_WORKERS", [Source.fromStaticValue(1)])
    grid.setModelOutputs({"metrics": output(grid, "metrics", "OUTPUT", "Canopy metrics")})

    predict = QgsProcessingModelChildAlgorithm("forestcarbon:predictraster")
    predict.setChildId("predictraster")
    predict.setDescription("Predict the map")
    predict.addParameterSources("INPUT", [Source.fromChildOutput("canopymetrics", "OUTPUT")])
    predict.addParameterSources("MODEL", [Source.fromChildOutput("trainmodel", "OUTPUT_MODEL")])
    predict.addParameterSources("COVERAGE", [Source.fromModelParameter("coverage")])
    predict.setModelOutputs({name: output(predict, name, child_output, label) for name, child_output, label in (
        ("prediction", "OUTPUT", "Prediction"), ("std", "OUTPUT_STD", "Standard deviation"),
        ("lower", "OUTPUT_LOWER", "Lower bound"), ("upper", "OUTPUT_UPPER", "Upper bound"))})
    predict.setDependencies([])

    x = 120.0
    for i, child in enumerate((plots, train, grid, predict)):
        from qgis.PyQt.QtCore import QPointF

        child.setPosition(QPointF(x + 220 * i, 200 + 80 * (i % 2)))
        model.addChildAlgorithm(child)
    return model


def write_models(folder=MODELS_DIR) -> list:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ABA}.model3"
    if not area_based_approach().toFile(str(path)):
        raise RuntimeError(f"Could not write {path}")
    return [path]


def main() -> int:
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    try:
        for path in write_models():
            print(path)
    finally:
        app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
