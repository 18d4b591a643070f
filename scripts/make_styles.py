"""Make the QGIS layer styles of resources/styles/ with PyQGIS (run with /usr/bin/python3).

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 scripts/make_styles.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: for processing_provider

from qgis.core import (
    QgsApplication,
    QgsColorRampShader,
    QgsMarkerSymbol,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
    QgsSingleSymbolRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

from processing_provider.compat import ShaderInterpolation

OUT = Path(__file__).resolve().parent.parent / "resources" / "styles"


def ramp(stops):
    shader = QgsColorRampShader()
    shader.setColorRampType(ShaderInterpolation.Linear)
    shader.setColorRampItemList([QgsColorRampShader.ColorRampItem(v, QColor(c), f"{v:g}") for v, c in stops])
    raster_shader = QgsRasterShader()
    raster_shader.setRasterShaderFunction(shader)
    return raster_shader


# canopy height, 0-40 m: bare ground light, tall canopy dark green (perceptually ordered)
HEIGHT = [(0, "#f7fcf5"), (5, "#c7e9c0"), (10, "#74c476"), (20, "#31a354"), (30, "#006d2c"), (40, "#00441b")]


# predictions: viridis (perceptually uniform, colour-blind safe); uncertainty: light → dark red
# (more uncertain reads as "hotter"). Ranges are placeholders: the plugin rescales the ramp to the
# layer's 2-98% cumulative range when it loads an output.
PREDICTION = [(0.0, "#440154"), (0.25, "#3b528b"), (0.5, "#21918c"), (0.75, "#5ec962"), (1.0, "#fde725")]
UNCERTAINTY = [(0.0, "#fff5eb"), (0.25, "#fdd0a2"), (0.5, "#fd8d3c"), (0.75, "#d94801"), (1.0, "#7f2704")]


def raster_style(name, band, stops):
    layer = QgsRasterLayer("NotAFile", "x", "gdal")  # an invalid layer still saves a style
    renderer = QgsSingleBandPseudoColorRenderer(None, band, ramp(stops))
    renderer.setClassificationMin(stops[0][0])
    renderer.setClassificationMax(stops[-1][0])
    layer.setRenderer(renderer)
    layer.saveNamedStyle(str(OUT / f"{name}.qml"))


def main():
    app = QgsApplication([], False)
    app.initQgis()
    OUT.mkdir(parents=True, exist_ok=True)
    raster_style("canopy_height", 1, HEIGHT)
    raster_style("canopy_metrics", 1, HEIGHT)  # band 1 = zmax
    raster_style("prediction", 1, PREDICTION)
    raster_style("uncertainty", 1, UNCERTAINTY)
    tops = QgsVectorLayer("PointZ?crs=EPSG:4326&field=height_m:double", "tops", "memory")
    symbol = QgsMarkerSymbol.createSimple({"name": "triangle", "color": "#006d2c", "outline_color": "#ffffff",
                                           "size": "2.2"})
    tops.setRenderer(QgsSingleSymbolRenderer(symbol))
    tops.saveNamedStyle(str(OUT / "tree_tops.qml"))
    app.exitQgis()


if __name__ == "__main__":
    main()
