"""Layer styles of resources/styles/ applied to Forest Carbon outputs, and their legends.

Used by the Processing adapters (styles of the outputs they load) and by the docks alike, so it lives
beside them rather than in either. QGIS is imported in the functions: importing this module needs no QGIS.
"""

from __future__ import annotations

from math import floor, log10
from pathlib import Path

from .core.vector import source_path
from .output_info import read_output_info
from .paths import RESOURCES_DIR

#: the style of each OUTPUT_KIND tag (:func:`.output_info.read_output_info`)
STYLE_OF_KIND = {"prediction": "prediction", "lower": "prediction", "upper": "prediction", "std": "uncertainty",
                 "value_by_alpha": "value_by_alpha"}

#: significant digits of legend labels: a 2-98 % stretch is an estimate, more digits would be noise
LEGEND_DIGITS = 3


def legend_number(value: float, digits: int = LEGEND_DIGITS) -> str:
    """``value`` rounded to ``digits`` significant digits, without an exponent in the usual range
    (0.0123, 1.23, 123, 12,300): what a legend reader compares with other maps."""
    if value == 0 or not abs(value) < 1e15:
        return f"{value:g}"
    decimals = digits - 1 - floor(log10(abs(value)))  # negative from 1,000 on: 12,345.6 → 12,300
    rounded = round(value, decimals)
    if abs(rounded) >= 1e-4 or rounded == 0:
        return f"{rounded:,.{max(0, decimals)}f}"
    return f"{value:.{digits - 1}e}"


def raster_path(layer) -> str | None:
    """The file behind a GDAL raster layer, or None (a WMS, a database, a layer of another kind)."""
    from qgis.core import QgsRasterLayer

    if not isinstance(layer, QgsRasterLayer) or layer.providerType() != "gdal":
        return None
    path = source_path(layer.source())
    return str(path) if path.is_file() else None


def layer_unit(layer) -> str:
    """The unit of a Forest Carbon raster (band metadata, tags or provenance: :func:`.output_info.read_output_info`),
    or '' for any other layer."""
    path = raster_path(layer)
    try:
        return read_output_info(path).unit if path else ""
    except Exception:  # noqa: BLE001 - a file rasterio cannot read has no unit of ours
        return ""


def rescale_ramp(layer, low: float = 0.02, high: float = 0.98, unit: str | None = None) -> bool:
    """Stretch a single-band pseudocolour ramp (stops given on 0-1) to the layer's cumulative
    ``low``-``high`` range, keeping the stops' relative positions; label the stops and the continuous
    legend with :data:`LEGEND_DIGITS` significant digits and ``unit`` (read from the file when None),
    and tell the layer tree, so that the legend shows the new range at once. Returns whether it did."""
    from qgis.core import QgsColorRampLegendNodeSettings, QgsColorRampShader

    renderer = layer.renderer()
    if renderer is None or renderer.type() != "singlebandpseudocolor":
        return False
    # usesBands(): band() is deprecated from 3.38 and its successor inputBand() is not in 3.22
    vmin, vmax = layer.dataProvider().cumulativeCut(renderer.usesBands()[0], low, high)
    if not vmax > vmin:
        vmax = vmin + 1.0
    unit = layer_unit(layer) if unit is None else unit
    suffix = f" {unit}" if unit else ""
    shader = renderer.shader().rasterShaderFunction()
    items = shader.colorRampItemList()
    old_min, old_max = items[0].value, items[-1].value
    span = (old_max - old_min) or 1.0
    values = [vmin + (i.value - old_min) / span * (vmax - vmin) for i in items]
    shader.setColorRampItemList([QgsColorRampShader.ColorRampItem(v, i.color, legend_number(v) + suffix)
                                 for v, i in zip(values, items)])
    shader.setMinimumValue(vmin)
    shader.setMaximumValue(vmax)
    settings = QgsColorRampLegendNodeSettings(shader.legendSettings() or QgsColorRampLegendNodeSettings())
    # explicit labels: QGIS's own would print the raw cut (e.g. 12.3456789) without the unit
    settings.setMinimumLabel(legend_number(vmin) + suffix)
    settings.setMaximumLabel(legend_number(vmax) + suffix)
    shader.setLegendSettings(settings)
    notify_renderer_changed(layer)
    # after notify: a renderer's clone() does not copy the classification range (QGIS 3.22)
    layer.renderer().setClassificationMin(vmin)
    layer.renderer().setClassificationMax(vmax)
    return True


def notify_renderer_changed(layer) -> None:
    """A renderer edited in place changes nothing QGIS listens to: set it again (``rendererChanged``,
    which rebuilds the layer's legend nodes), emit ``styleChanged``, repaint, and refresh the desktop's
    layer tree view when there is one (the legend's symbols are cached there)."""
    layer.setRenderer(layer.renderer().clone())
    layer.emitStyleChanged()
    layer.triggerRepaint()
    try:
        from qgis.utils import iface
    except ImportError:  # pragma: no cover - qgis.utils always exists where qgis.core does
        iface = None
    view = iface.layerTreeView() if iface is not None and hasattr(iface, "layerTreeView") else None
    if view is not None:
        view.refreshLayerSymbology(layer.id())


def apply_style(layer, name: str, rescale: bool = True) -> bool:
    """Load ``resources/styles/<name>.qml`` onto a raster layer and stretch its ramp to the layer's
    2-98% cumulative range (the stops keep their relative places). Returns whether it loaded."""
    _message, ok = layer.loadNamedStyle(str(RESOURCES_DIR / "styles" / f"{name}.qml"))
    if ok and rescale:
        rescale_ramp(layer)
    layer.triggerRepaint()
    return ok


def style_by_kind(layer, kind: str | None) -> bool:
    """Style an output by its OUTPUT_KIND; other rasters keep QGIS's default style."""
    name = STYLE_OF_KIND.get(kind or "")
    return apply_style(layer, name) if name else False
