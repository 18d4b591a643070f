"""Layer styles of resources/styles/ applied to Forest Carbon outputs."""

from __future__ import annotations

from ..paths import RESOURCES_DIR

#: the style of each OUTPUT_KIND tag (stats.read_output_info)
STYLE_OF_KIND = {"prediction": "prediction", "lower": "prediction", "upper": "prediction", "std": "uncertainty",
                 "value_by_alpha": "value_by_alpha"}


def apply_style(layer, name: str, rescale: bool = True) -> bool:
    """Load ``resources/styles/<name>.qml`` onto a raster layer and stretch its ramp to the layer's
    2-98% cumulative range (the stops keep their relative places). Returns whether it loaded."""
    from processing_provider.base import rescale_ramp

    _message, ok = layer.loadNamedStyle(str(RESOURCES_DIR / "styles" / f"{name}.qml"))
    if ok and rescale:
        rescale_ramp(layer)
    layer.triggerRepaint()
    return ok


def style_by_kind(layer, kind: str | None) -> bool:
    """Style an output by its OUTPUT_KIND; other rasters keep QGIS's default style."""
    name = STYLE_OF_KIND.get(kind or "")
    return apply_style(layer, name) if name else False
