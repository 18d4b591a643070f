"""What a Forest Carbon raster says about itself: the tags ``predictraster`` writes on each output (kind,
unit, coverage, model) and, from its provenance record, the paths of the sibling outputs of the same run.

Read by the styles (the unit of the legend, the style of each kind) and by the uncertainty explorer.
QGIS-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .core.outputs import PROVENANCE_KEY


@dataclass
class OutputInfo:
    """What a Forest Carbon raster says about itself (empty fields for any other raster)."""

    path: str
    kind: str | None = None  #: prediction, std, lower or upper
    unit: str = ""
    coverage: float | None = None  #: of the lower/upper interval
    model_id: str | None = None
    model: str | None = None  #: the model file or card the run used
    target: str | None = None
    execution_provider: str | None = None
    algorithm: str | None = None
    siblings: dict = field(default_factory=dict)  #: kind -> path of the run's outputs that exist


def read_output_info(path) -> OutputInfo:
    """Read the GDAL tags and provenance of a raster.

    Parameters
    ----------
    path : str or os.PathLike
        A raster file (any raster: one not written by Forest Carbon gives empty fields).

    Returns
    -------
    OutputInfo
        Kind, unit, interval coverage, model and the paths of the run's other outputs that exist.
    """
    import rasterio  # here: the plugin loads (and says what is missing) without it

    info = OutputInfo(str(path))
    with rasterio.open(path) as src:
        tags = src.tags()
        band_tags = src.tags(1) if src.count else {}
        band_unit = (src.units[0] if src.count and src.units else None) or ""
    try:
        record = json.loads(tags.get(PROVENANCE_KEY) or "{}")
    except ValueError:
        record = {}
    info.kind = tags.get("OUTPUT_KIND") or None
    # predictraster writes the model card's unit as the band's unit type and as tags; older outputs have
    # only the provenance record (which also keeps the model card's unit)
    card = record.get("model_card") if isinstance(record.get("model_card"), dict) else {}
    info.unit = (band_unit or band_tags.get("unit") or band_tags.get("UNIT") or tags.get("unit") or tags.get("UNIT")
                 or record.get("unit") or card.get("unit") or card.get("forest_carbon:unit") or "")
    info.model_id = tags.get("MODEL_ID") or record.get("model_id")
    info.model = record.get("model")
    info.target = record.get("target")
    info.execution_provider = tags.get("EXECUTION_PROVIDER") or record.get("execution_provider")
    info.algorithm = record.get("algorithm")
    coverage = tags.get("COVERAGE") or (record.get("parameters") or {}).get("coverage")
    info.coverage = float(coverage) if coverage not in (None, "") else None
    for kind, sibling in (record.get("outputs") or {}).items():
        if sibling and Path(sibling).is_file():
            info.siblings[kind] = str(sibling)
    return info
