"""Model cards: what a model expects and what its outputs mean (docs/model-card.md).

One :class:`ModelCard` is read from whichever of these the model has, in this order:

1. a sidecar card (``.json``) following the STAC Machine Learning Model extension
   (``mlm:input``, ``mlm:output``, model assets), with this plugin's ``forest_carbon:``
   fields for output meanings, calibration and nodata; it may list several ``.onnx`` members
   (a deep ensemble);
2. the ONNX ``metadata_props`` key ``model_card``: the same document as JSON;
3. Deepness's keys (``model_type``, ``standardization_mean``/``_std``, ``resolution`` in cm/px,
   ``tiles_size``/``tile_size``, ``tiles_overlap`` in %, ``reg_output_scaling``): inputs divided
   by 255, then standardized when both mean and std are given, and a Regressor's output
   multiplied by ``reg_output_scaling``, as Deepness does (its ``ModelBase.preprocessing`` and
   ``MapProcessorRegression._process_tile``; keys documented in Deepness's "Adding metadata to
   ONNX model");
4. nothing: the graph alone (inputs used as they are, the first output is the prediction).

The graph decides the kind of model: a rank-2 input ``[N, F]`` is per-pixel (features in the
last axis, e.g. tree ensembles exported by skl2onnx); a rank-4 input ``[N, C, H, W]`` is a patch
model (convolutional). The card is checked against the graph: band counts, output names.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..dependencies import require
from ..errors import ForestCarbonError

CARD_KEY = "model_card"
MEANINGS = ("mean", "variance", "log_variance", "std")


@dataclass
class OutputSpec:
    name: str  # graph output name
    meaning: str  # mean | variance | log_variance | std | quantile:<q>
    channel: int = 0  # channel of a multi-channel output tensor

    @property
    def quantile(self) -> float | None:
        """q of a 'quantile:q' output with 0 < q < 1; None otherwise (the card check names it)."""
        if not str(self.meaning).startswith("quantile:"):
            return None
        try:
            q = float(str(self.meaning).split(":", 1)[1])
        except ValueError:
            return None
        return q if 0 < q < 1 else None


@dataclass
class ModelCard:
    members: list  # Paths of the .onnx files (several: a deep ensemble)
    kind: str  # "pixel" or "patch"
    input_name: str
    n_inputs: int  # features (pixel) or channels (patch)
    bands: list | None = None  # input band names, in order
    scale: np.ndarray | None = None  # x' = (x·scale + offset − mean)/std, per band
    offset: np.ndarray | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    nodata: float | None = None
    patch_size: int | None = None
    overlap: int | None = None
    outputs: list = field(default_factory=list)  # OutputSpec
    target: str = "prediction"
    unit: str = ""
    resolution_m: float | None = None
    conformal_factor: float | None = None
    coverage: float | None = None
    source: str = "graph"  # which kind of card was read
    deepness: bool = False
    model_id: str = ""
    extra: dict = field(default_factory=dict)
    output_scale: float = 1.0  # prediction = model output × output_scale (Deepness's reg_output_scaling)

    def preprocess(self, x: np.ndarray, axis: int) -> np.ndarray:
        """Scale/offset, then standardization, per band along ``axis`` (float32)."""
        x = x.astype(np.float32, copy=False)
        shape = [1] * x.ndim
        shape[axis] = -1
        if self.scale is not None:
            x = x * self.scale.reshape(shape).astype(np.float32)
        if self.offset is not None:
            x = x + self.offset.reshape(shape).astype(np.float32)
        if self.mean is not None:
            x = x - self.mean.reshape(shape).astype(np.float32)
        if self.std is not None:
            x = x / self.std.reshape(shape).astype(np.float32)
        return x

    def postprocess(self, value: np.ndarray, meaning: str) -> np.ndarray:
        """A model output in the units of the prediction: ``output_scale`` s multiplies a mean or a quantile,
        the standard deviation by |s|, the variance by s² (log-variance + 2·ln|s|)."""
        s = self.output_scale
        if s == 1.0:
            return value
        if meaning == "variance":
            return value * (s * s)
        if meaning == "log_variance":
            return value + 2.0 * math.log(abs(s))
        if meaning == "std":
            return value * abs(s)
        return value * s


def file_digest(paths) -> str:
    """A short content digest of the model files, the model's id in provenance.

    Parameters
    ----------
    paths : sequence of os.PathLike

    Returns
    -------
    str
        ``"sha256:"`` and the first 16 hex digits of the SHA-256 of the files' bytes, in order.
    """
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()[:16]


def check_model(path: Path) -> None:
    """Check an ONNX file with ``onnx.checker`` (never unpickles anything).

    Parameters
    ----------
    path : pathlib.Path
        The ``.onnx`` file; external data must sit in its folder.

    Returns
    -------
    None
        Raises :class:`ForestCarbonError` naming what is wrong.
    """
    onnx = require("onnx")
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types
        raise ForestCarbonError(f"'{path.name}' is not a valid ONNX model: {str(exc).splitlines()[0][:300]}. "
                                "Export it again and check it with onnx.checker.") from exc
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            target = (path.parent / location).resolve()
            if path.parent.resolve() not in target.parents or not target.is_file():
                raise ForestCarbonError(f"'{path.name}' keeps weights in '{location}', which is not a file beside "
                                        "the model: external data must sit in the model's folder.")


def read_card(model_path) -> ModelCard:
    """The model card of an ``.onnx`` file or of a card ``.json`` (see the module doc).

    Parameters
    ----------
    model_path : str or os.PathLike
        An ``.onnx`` file (card from a ``<model>.json`` beside it, from its ``model_card`` metadata, or from
        Deepness metadata) or a card ``.json`` naming one or more members (STAC MLM ``assets``).

    Returns
    -------
    ModelCard
        Members, input kind (``pixel`` [N, F] or ``patch`` [N, C, H, W]), bands, output meanings, scaling,
        conformal factor, target and unit, checked against the graph.
    """
    ort = require("onnxruntime")
    path = Path(model_path)
    if not path.is_file():
        raise ForestCarbonError(f"'{path}' is not a file: choose an .onnx model or its model card (.json).")
    document, members = None, [path]
    if path.suffix.lower() == ".json":
        document = _read_card_json(path)
        members = _card_part(_members, path, document, path)
    elif path.with_suffix(".json").is_file():
        document = _read_card_json(path.with_suffix(".json"))
    for member in members:
        check_model(member)
    try:
        session = ort.InferenceSession(str(members[0]), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise ForestCarbonError(f"ONNX Runtime cannot load '{members[0].name}': {str(exc)[:300]}") from exc
    metadata = dict(session.get_modelmeta().custom_metadata_map or {})
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ForestCarbonError(f"'{members[0].name}' has {len(inputs)} inputs: the plugin runs models with "
                                "one input tensor (features or image channels).")
    shape = inputs[0].shape
    if len(shape) == 2:
        kind, n_inputs = "pixel", shape[1]
    elif len(shape) == 4:
        kind, n_inputs = "patch", shape[1]
    else:
        raise ForestCarbonError(f"'{members[0].name}' takes a rank-{len(shape)} input {shape}: expected [N, F] "
                                "(per-pixel features) or [N, C, H, W] (image patches).")
    if not isinstance(n_inputs, int):
        n_inputs = None
    graph_outputs = [o.name for o in session.get_outputs()]
    card = ModelCard(members=members, kind=kind, input_name=inputs[0].name, n_inputs=n_inputs,
                     model_id=file_digest(members))
    if kind == "patch" and isinstance(shape[2], int) and isinstance(shape[3], int):
        card.patch_size = int(shape[2])
        if shape[2] != shape[3]:
            raise ForestCarbonError(f"'{members[0].name}' wants {shape[2]}×{shape[3]} patches: only square "
                                    "patches are supported.")
    if document is None and CARD_KEY in metadata:
        try:
            document = json.loads(metadata[CARD_KEY])
        except ValueError as exc:
            raise ForestCarbonError(f"The '{CARD_KEY}' metadata of '{members[0].name}' is not JSON ({exc}).") \
                from exc
    if document is not None:
        sidecar = path.with_suffix(".json")
        _card_part(_apply_card, sidecar if sidecar.is_file() else path, card, document)
        card.source = "card" if path.suffix.lower() == ".json" or path.with_suffix(".json").is_file() else "metadata"
    elif "model_type" in metadata:
        _card_part(_apply_deepness, path, card, metadata, layout=_DEEPNESS_LAYOUT)
    if not card.outputs:
        card.outputs = [OutputSpec(graph_outputs[0], "mean")]
    _check_against_graph(card, graph_outputs, members[0].name)
    return card


def _read_card_json(path: Path) -> dict:
    """A card or sidecar file as a JSON object, or a message saying what is wrong with it."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ForestCarbonError(f"The model card '{path.name}' is not valid JSON ({exc}): fix it, or move it away "
                                "to use the model's own metadata.") from exc
    except OSError as exc:
        raise ForestCarbonError(f"Cannot read the model card '{path.name}' ({exc}).") from exc
    if not isinstance(document, dict):
        raise ForestCarbonError(f"The model card '{path.name}' holds a JSON {type(document).__name__}, not an "
                                "object: a card is a STAC item with 'assets', 'mlm:input' and 'mlm:output'.")
    return document


_STAC_LAYOUT = ("follow the STAC Machine Learning Model layout ('assets' with an 'mlm:model' href, 'mlm:input' "
                "bands and value_scaling, 'mlm:output' with 'name' and 'forest_carbon:meaning')")
_DEEPNESS_LAYOUT = ("give Deepness's metadata keys their documented values (standardization_mean/std: JSON lists "
                    "of numbers; resolution, tiles_size, tiles_overlap, reg_output_scaling: numbers)")


def _card_part(function, where: Path, *args, layout: str = _STAC_LAYOUT):
    """Run a part of the card reading; a field of the wrong type or shape becomes a message."""
    try:
        return function(*args)
    except ForestCarbonError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ForestCarbonError(f"The model card '{where.name}' is malformed ({detail}): {layout}.") from exc


def _members(document: dict, card_path: Path) -> list:
    hrefs = []
    for key, asset in (document.get("assets") or {}).items():
        roles = asset.get("roles") or []
        if "mlm:model" in roles or str(asset.get("href", "")).endswith(".onnx"):
            if not isinstance(asset.get("href"), str) or not asset["href"].strip():
                raise ForestCarbonError(f"The model card '{card_path.name}' has a model asset '{key}' without an "
                                        "href: set its href to the .onnx file's name (beside the card).")
            hrefs.append(asset["href"])
    hrefs += [m for m in document.get("forest_carbon:members", []) if m not in hrefs]
    if not hrefs:
        raise ForestCarbonError(f"The model card '{card_path.name}' names no model file: add an asset with role "
                                "'mlm:model' whose href is the .onnx file.")
    members = []
    for href in hrefs:
        if not isinstance(href, str) or not href.strip():
            raise ForestCarbonError(f"The model card '{card_path.name}' lists a member {href!r} that is not a file "
                                    "name: list the .onnx files beside the card.")
        member = (card_path.parent / href).resolve()
        if card_path.parent.resolve() not in member.parents:
            raise ForestCarbonError(f"The model card points outside its folder ('{href}'): keep the .onnx files "
                                    "beside the card.")
        if not member.is_file():
            raise ForestCarbonError(f"The model card names '{href}', which is not beside it.")
        members.append(member)
    return members


def _apply_card(card: ModelCard, doc: dict) -> None:
    inputs = doc.get("mlm:input") or []
    spec = inputs[0] if inputs else {}
    bands = spec.get("bands") or doc.get("forest_carbon:bands")
    if bands:
        card.bands = [b["name"] if isinstance(b, dict) else str(b) for b in bands]
    n = len(card.bands) if card.bands else card.n_inputs
    scaling = spec.get("value_scaling") or []
    if scaling:
        card.scale = np.array([float(s.get("scale", 1.0)) for s in scaling])
        card.offset = np.array([float(s.get("offset", 0.0)) for s in scaling])
    stats = spec.get("statistics") or []
    if stats and spec.get("norm_type", "z-score") in ("z-score", None):
        card.mean = np.array([float(s.get("mean", 0.0)) for s in stats])
        card.std = np.array([float(s.get("stddev", 1.0)) for s in stats])
    for name in ("scale", "offset", "mean", "std"):
        value = getattr(card, name)
        if value is not None and n is not None and value.size == 1 and n > 1:
            setattr(card, name, np.repeat(value, n))
    if spec.get("nodata") is not None or doc.get("forest_carbon:nodata") is not None:
        card.nodata = float(spec.get("nodata", doc.get("forest_carbon:nodata")))
    input_shape = (spec.get("input") or {}).get("shape") or []
    if card.kind == "patch" and len(input_shape) == 4 and isinstance(input_shape[-1], int) and input_shape[-1] > 0:
        card.patch_size = card.patch_size or int(input_shape[-1])
    overlap = doc.get("forest_carbon:overlap")
    card.overlap = None if overlap is None else int(overlap)
    outputs = []
    for out in doc.get("mlm:output") or []:
        meaning = out.get("forest_carbon:meaning", "mean")
        outputs.append(OutputSpec(out["name"], meaning, int(out.get("forest_carbon:channel", 0))))
    card.outputs = outputs
    card.target = doc.get("forest_carbon:target", card.target)
    card.unit = doc.get("forest_carbon:unit", "")
    resolution = doc.get("forest_carbon:resolution_m") or doc.get("gsd")
    card.resolution_m = None if resolution is None else float(resolution)
    calibration = doc.get("forest_carbon:calibration") or {}
    factor, coverage = calibration.get("conformal_factor"), calibration.get("coverage")
    card.conformal_factor = None if factor is None else float(factor)
    card.coverage = None if coverage is None else float(coverage)
    card.extra = {k: v for k, v in doc.items() if k.startswith("forest_carbon:training")}
    if not isinstance(card.extra.get("forest_carbon:training", {}), dict):
        raise ValueError("'forest_carbon:training' is not an object")


#: Deepness's model types (``model_type``); only a Regressor gives one value per pixel
DEEPNESS_REGRESSOR = "Regressor"


def _apply_deepness(card: ModelCard, metadata: dict) -> None:
    def value(key, default=None):
        raw = metadata.get(key)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    card.deepness = True
    card.source = "deepness"
    model_type = str(value("model_type")).capitalize()  # Deepness reads it so ("regressor" works there too)
    applied = {"model_type": model_type, "input_divided_by": 255}
    notes = []
    card.scale = np.full(card.n_inputs or 3, 1 / 255.0)  # Deepness divides every input by 255 first
    mean, std = (None if v is None else np.atleast_1d(np.asarray(v, dtype=float))  # garbage is a message
                 for v in (value("standardization_mean"), value("standardization_std")))
    if mean is not None and std is not None:  # Deepness standardizes only when both are given
        card.mean, card.std = mean, std
        applied.update(standardization_mean=card.mean.tolist(), standardization_std=card.std.tolist())
    elif mean is not None or std is not None:
        given = "standardization_mean" if mean is not None else "standardization_std"
        notes.append(f"The model's Deepness metadata gives {given} without its pair: Deepness then does not "
                     "standardize the inputs, and neither does this run.")
    resolution_cm = value("resolution")
    if resolution_cm:
        card.resolution_m = float(resolution_cm) / 100.0
    tile = value("tiles_size", value("tile_size"))
    if tile and not card.patch_size:
        card.patch_size = int(tile)
    overlap_pct = value("tiles_overlap")
    if overlap_pct and card.patch_size:
        card.overlap = int(round(card.patch_size * float(overlap_pct) / 100))
    scaling = value("reg_output_scaling")
    if scaling is not None and model_type == DEEPNESS_REGRESSOR:
        factor = float(scaling)
        if not math.isfinite(factor) or factor == 0:
            raise ValueError(f"reg_output_scaling is {scaling!r}, not a finite number other than 0")
        card.output_scale = factor
        applied["reg_output_scaling"] = factor
    card.extra = {"deepness_model_type": model_type, "deepness_applied": applied, "deepness_notes": notes}
    for key in ("reg_output_scaling",):
        if key in metadata:
            card.extra[key] = value(key)


def _check_against_graph(card: ModelCard, graph_outputs: list, name: str) -> None:
    for spec in card.outputs:
        if spec.name not in graph_outputs:
            raise ForestCarbonError(f"The model card names output '{spec.name}', but '{name}' has outputs "
                                    f"{', '.join(graph_outputs)}: the card does not describe this graph.")
        if spec.meaning not in MEANINGS and spec.quantile is None:
            raise ForestCarbonError(f"Output '{spec.name}' has meaning '{spec.meaning}': use mean, variance, "
                                    "log_variance, std or quantile:<q>.")
    if card.bands and card.n_inputs and len(card.bands) != card.n_inputs:
        raise ForestCarbonError(f"The model card lists {len(card.bands)} bands ({', '.join(card.bands)}) but "
                                f"'{name}' takes {card.n_inputs} inputs: the card does not describe this graph.")
    for attr in ("scale", "offset", "mean", "std"):
        value = getattr(card, attr)
        if value is not None and card.n_inputs and value.size not in (1, card.n_inputs):
            raise ForestCarbonError(f"The model's {attr} has {value.size} values for {card.n_inputs} inputs.")
        if value is not None and card.n_inputs and value.size == 1:
            setattr(card, attr, np.repeat(value, card.n_inputs))
    if card.std is not None and np.any(card.std == 0):
        raise ForestCarbonError("The model card's standard deviations include 0: check its statistics.")
