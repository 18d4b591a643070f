"""Exporting a fitted learner as one ONNX graph with its model card.

The sklearn models are converted with skl2onnx and joined into **one** ONNX graph with input ``features``
(float32 ``[N, F]``) and outputs ``lower``/``median``/``upper`` (``quantile:<q>``) or ``mean``/``variance``;
the model card (docs/model-card.md; the fields of the STAC Machine Learning Model extension, ``mlm:*``) is
stored in the metadata key ``model_card``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..dependencies import require
from ..outputs import atomic_output
from .card import CARD_KEY
from .fit import FittedModel

__all__ = ["build_onnx", "model_card", "export_onnx"]


def _convert(model, n_features: int):
    skl2onnx = require("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType

    return skl2onnx.convert_sklearn(model, initial_types=[("features", FloatTensorType([None, n_features]))],
                                    target_opset={"": 17, "ai.onnx.ml": 3})


def build_onnx(model: FittedModel, n_features: int):
    """One ONNX graph computing what :func:`.fit.predict_intervals` computes.

    Parameters
    ----------
    model : FittedModel
    n_features : int
        Width of the input ``features`` (float32 [N, F]).

    Returns
    -------
    onnx.ModelProto
        Outputs ``lower``/``median``/``upper`` (sorted per sample, so never crossing) or ``mean``/``variance``
        (variance clipped at 0), each [N, 1]; checked with ``onnx.checker``.
    """
    onnx = require("onnx")
    from onnx import TensorProto, compose, helper

    nodes, initializers, raw, opsets = [], [], {}, {}
    ir_version = None
    for name, estimator in model.models.items():
        part = compose.add_prefix(_convert(estimator, n_features), f"{name}_")
        ir_version = max(ir_version or 0, part.ir_version)
        for op in part.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
        nodes.append(helper.make_node("Identity", ["features"], [f"{name}_features"], name=f"{name}_input"))
        nodes.extend(part.graph.node)
        initializers.extend(part.graph.initializer)
        raw[name] = part.graph.output[0].name
    if model.kind == "quantile_gbm":
        # the three quantiles sorted per sample (the rearrangement of inference.quantile_interval, so that any
        # ONNX consumer gets non-crossing quantiles): min, median of three = max(min(a, b), min(max(a, b), c)), max
        a, b, c = raw["lower"], raw["median"], raw["upper"]
        nodes += [helper.make_node("Min", [a, b], ["q_min_ab"], name="q_min_ab"),
                  helper.make_node("Max", [a, b], ["q_max_ab"], name="q_max_ab"),
                  helper.make_node("Min", ["q_min_ab", c], ["lower"], name="no_crossing_lower"),
                  helper.make_node("Min", ["q_max_ab", c], ["q_mid"], name="q_mid"),
                  helper.make_node("Max", ["q_min_ab", "q_mid"], ["median"], name="no_crossing_median"),
                  helper.make_node("Max", ["q_max_ab", c], ["upper"], name="no_crossing_upper")]
        names = ["lower", "median", "upper"]
    else:
        nodes += [helper.make_node("Identity", [raw["mean"]], ["mean"], name="mean_out"),
                  helper.make_node("Relu", [raw["variance"]], ["variance"], name="variance_out")]
        names = ["mean", "variance"]
    graph = helper.make_graph(
        nodes, "forest_carbon_" + model.kind,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 1]) for n in names], initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                                   producer_name="forest_carbon_plugin")
    onnx_model.ir_version = ir_version
    onnx.checker.check_model(onnx_model)
    return onnx_model


def model_card(model: FittedModel, bands, target_name: str, unit: str, resolution_m, factor: float,
               training: dict, href: str) -> dict:
    """The model card (docs/model-card.md) of an exported model.

    Parameters
    ----------
    model : FittedModel
    bands : sequence of str
        Feature names, in the input's order.
    target_name, unit : str
        What the model predicts and its unit.
    resolution_m : float or None
        Pixel size of the training features (None for plots).
    factor : float
        Conformal factor.
    training : dict
        ``forest_carbon:training`` (extent, CRS, date, samples, CV results…).
    href : str
        The ONNX file's name (the card's ``assets.model.href``).

    Returns
    -------
    dict
        STAC MLM fields (``mlm:name``, ``mlm:architecture``, ``mlm:input``, ``mlm:output``…) and ours
        (``forest_carbon:*``).
    """
    if model.kind == "quantile_gbm":
        outputs = [{"name": k, "forest_carbon:meaning": f"quantile:{model.quantiles[k]:.6g}"}
                   for k in ("lower", "median", "upper")]
        architecture = "HistGradientBoostingRegressor (quantile loss) ×3"
    else:
        outputs = [{"name": "mean", "forest_carbon:meaning": "mean"},
                   {"name": "variance", "forest_carbon:meaning": "variance"}]
        architecture = "RandomForestRegressor (mean) + RandomForestRegressor (squared OOB residuals)"
    return {
        "mlm:name": f"{target_name}-{model.kind}",
        "mlm:architecture": architecture,
        "mlm:framework": "scikit-learn",
        "mlm:input": [{
            "name": "features",
            "bands": list(bands),
            "input": {"shape": [-1, len(bands)], "dim_order": ["batch", "bands"], "data_type": "float32"},
        }],
        "mlm:output": outputs,
        "assets": {"model": {"href": href, "roles": ["mlm:model"], "type": "application/octet-stream; application=onnx"}},
        "forest_carbon:target": target_name,
        "forest_carbon:unit": unit,
        "forest_carbon:resolution_m": resolution_m,
        "forest_carbon:calibration": {"conformal_factor": float(factor), "coverage": float(model.coverage),
                                      "method": "conformalized quantile regression (Romano et al. 2019), "
                                                "multiplicative, on spatial-block cross-validation scores"},
        "forest_carbon:training": training,
    }


def export_onnx(model: FittedModel, out_path, card: dict, n_features: int) -> Path:
    """Write the joined graph with ``card`` in its metadata key ``model_card``, atomically.

    Parameters
    ----------
    model : FittedModel
    out_path : str or os.PathLike
        The ``.onnx`` file.
    card : dict
        The model card (:func:`model_card`).
    n_features : int

    Returns
    -------
    pathlib.Path
        ``out_path``.
    """
    onnx = require("onnx")
    from onnx import helper

    onnx_model = build_onnx(model, n_features)
    helper.set_model_props(onnx_model, {CARD_KEY: json.dumps(card, default=str)})
    out_path = Path(out_path)
    with atomic_output(out_path) as tmp:
        onnx.save(onnx_model, str(tmp))
    return out_path
