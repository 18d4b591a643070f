"""Describe an ONNX model: its inputs, outputs, metadata and where it can run.

Reads the graph through an ONNX Runtime session on the CPU (no inference) and the
model's ``metadata_props`` (``custom_metadata_map``), where model cards are stored as
JSON (our own key, and the keys of the Deepness plugin's model metadata: ``model_type``,
``standardization_mean``/``_std``, ``reg_output_scaling``…; see the Deepness documentation, "Model
metadata").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..dependencies import require
from ..errors import ForestCarbonError
from .card import read_card


@dataclass
class TensorInfo:
    name: str
    shape: list  # ints, or strings for symbolic dimensions
    type: str


@dataclass
class ModelInfo:
    path: str
    producer: str
    graph_name: str
    domain: str
    description: str
    version: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    metadata: dict[str, object]  # values JSON-decoded where they are JSON
    available_providers: list[str]
    # what the model card (sidecar, model_card metadata or Deepness keys) says the prediction is
    target: str = ""
    unit: str = ""
    card_source: str = ""
    output_scale: float = 1.0  # the card's multiplier of the model output (Deepness's reg_output_scaling)

    def to_dict(self) -> dict:
        return asdict(self)


def describe_model(path) -> ModelInfo:
    """What an ONNX file declares, read through an ONNX Runtime session on the CPU (no inference).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.onnx`` file.

    Returns
    -------
    ModelInfo
        Producer, graph name, inputs and outputs (name, shape, type), metadata, the providers available here and,
        when a card can be read, its target, unit, source and output scaling.
    """
    ort = require("onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise ForestCarbonError(f"'{path}' is not a file: choose an .onnx model file.")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ForestCarbonError(
            f"'{path.name}' is not a valid ONNX model ({type(exc).__name__}: {str(exc)[:300]}). "
            "Export the model again (torch.onnx.export, skl2onnx) and check it with onnx.checker."
        ) from exc
    meta = session.get_modelmeta()
    metadata = {}
    for key, value in (meta.custom_metadata_map or {}).items():
        try:
            metadata[key] = json.loads(value)
        except (TypeError, ValueError):
            metadata[key] = value

    def tensors(items):
        return [TensorInfo(t.name, [d if isinstance(d, int) else str(d) for d in (t.shape or [])], t.type)
                for t in items]

    info = ModelInfo(
        path=str(path), producer=meta.producer_name or "", graph_name=meta.graph_name or "",
        domain=meta.domain or "", description=meta.description or "", version=int(meta.version or 0),
        inputs=tensors(session.get_inputs()), outputs=tensors(session.get_outputs()),
        metadata=metadata, available_providers=list(ort.get_available_providers()),
    )
    try:
        card = read_card(path)
    except ForestCarbonError:  # a graph predictraster cannot run is still described
        return info
    info.target, info.unit, info.card_source, info.output_scale = card.target, card.unit, card.source, \
        card.output_scale
    return info
