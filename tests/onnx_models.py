"""Small, real ONNX graphs built with the onnx package for tests (nothing downloaded)."""

from __future__ import annotations

import json

import numpy as np


def affine_model(path, scale=2.0, offset=1.0, bands=3, metadata=None):
    """y = scale * x + offset over an (N, bands, H, W) float32 tensor; returns the path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", bands, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", bands, "H", "W"])
    nodes = [helper.make_node("Mul", ["x", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "offset"], ["y"])]
    inits = [numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale"),
             numpy_helper.from_array(np.array(offset, dtype=np.float32), "offset")]
    graph = helper.make_graph(nodes, "affine", [x], [y], inits)
    model = helper.make_model(graph, producer_name="forest-carbon-tests",
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime >= 1.10
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _save(model, path, metadata=None):
    import onnx

    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def conv_model(path, channels=3, hidden=32, seed=0, outputs=("mean",), metadata=None, patch=None):
    """A small fully convolutional network (3×3 convolutions, ReLU, padding 1): channels → hidden →
    hidden → one map per output. Returns (path, weights) so tests can rebuild it with numpy."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    shapes = [(hidden, channels), (hidden, hidden), (len(outputs), hidden)]
    weights = [(rng.normal(0, 0.3 / np.sqrt(c_in), (c_out, c_in, 3, 3)).astype(np.float32),
                rng.normal(0, 0.1, c_out).astype(np.float32)) for c_out, c_in in shapes]
    size = [patch, patch] if patch else ["H", "W"]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, *size])
    nodes, inits, current = [], [], "x"
    for i, (w, b) in enumerate(weights):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [current, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1],
                                      kernel_shape=[3, 3]))
        current = f"c{i}"
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
    outs = []
    for k, name in enumerate(outputs):
        nodes.append(helper.make_node("Slice", [current, f"s{k}", f"e{k}", "axis1"], [name]))
        inits += [numpy_helper.from_array(np.array([k], np.int64), f"s{k}"),
                  numpy_helper.from_array(np.array([k + 1], np.int64), f"e{k}")]
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 1, *size]))
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    graph = helper.make_graph(nodes, "cnn", [x], outs, inits)
    model = helper.make_model(graph, producer_name="forest-carbon-tests", opset_imports=[helper.make_opsetid("", 13)])
    return _save(model, path, metadata), weights


def pixel_model(path, coefficients, intercept=0.0, log_variance=None, metadata=None):
    """A per-pixel linear model [N, F] → mean [N, 1] (and log-variance [N, 1] if given as (coef, b))."""
    from onnx import TensorProto, helper, numpy_helper

    f = len(coefficients)
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", f])
    inits = [numpy_helper.from_array(np.asarray(coefficients, np.float32).reshape(f, 1), "w"),
             numpy_helper.from_array(np.array([intercept], np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["features", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["mean"])]
    outs = [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N", 1])]
    if log_variance is not None:
        coef, b = log_variance
        inits += [numpy_helper.from_array(np.asarray(coef, np.float32).reshape(f, 1), "wv"),
                  numpy_helper.from_array(np.array([b], np.float32), "bv")]
        nodes += [helper.make_node("MatMul", ["features", "wv"], ["xv"]), helper.make_node("Add", ["xv", "bv"], ["logvar"])]
        outs.append(helper.make_tensor_value_info("logvar", TensorProto.FLOAT, ["N", 1]))
    graph = helper.make_graph(nodes, "linear", [x], outs, inits)
    model = helper.make_model(graph, producer_name="forest-carbon-tests", opset_imports=[helper.make_opsetid("", 13)])
    return _save(model, path, metadata)


def tree_model(path, n_features=3, n_trees=20, depth=4, seed=0, metadata=None):
    """A random regression forest as an ai.onnx.ml TreeEnsembleRegressor ([N, F] → [N, 1]).
    Returns (path, predict) where predict(X) evaluates the same trees with numpy."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    trees = []
    attrs = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes",
                             "nodes_truenodeids", "nodes_falsenodeids", "target_treeids", "target_nodeids",
                             "target_ids", "target_weights")}
    for t in range(n_trees):
        nodes = []  # (feature, threshold) for internal nodes in breadth-first order, then leaves
        n_internal = 2 ** depth - 1
        for i in range(2 ** (depth + 1) - 1):
            if i < n_internal:
                feat, thr = int(rng.integers(n_features)), float(rng.uniform(0, 1))
                nodes.append((feat, thr))
                attrs["nodes_treeids"].append(t); attrs["nodes_nodeids"].append(i)
                attrs["nodes_featureids"].append(feat); attrs["nodes_values"].append(thr)
                attrs["nodes_modes"].append("BRANCH_LEQ")
                attrs["nodes_truenodeids"].append(2 * i + 1); attrs["nodes_falsenodeids"].append(2 * i + 2)
            else:
                value = float(rng.normal(10, 3))
                nodes.append(value)
                attrs["nodes_treeids"].append(t); attrs["nodes_nodeids"].append(i)
                attrs["nodes_featureids"].append(0); attrs["nodes_values"].append(0.0)
                attrs["nodes_modes"].append("LEAF")
                attrs["nodes_truenodeids"].append(0); attrs["nodes_falsenodeids"].append(0)
                attrs["target_treeids"].append(t); attrs["target_nodeids"].append(i)
                attrs["target_ids"].append(0); attrs["target_weights"].append(value / n_trees)
        trees.append((nodes, n_internal))
    node = helper.make_node("TreeEnsembleRegressor", ["features"], ["variable"], domain="ai.onnx.ml",
                            n_targets=1, aggregate_function="SUM", **attrs)
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_features])
    y = helper.make_tensor_value_info("variable", TensorProto.FLOAT, ["N", 1])
    graph = helper.make_graph([node], "forest", [x], [y])
    model = helper.make_model(graph, producer_name="forest-carbon-tests",
                              opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 3)])
    _save(model, path, metadata)

    def predict(features):
        features = np.asarray(features, np.float32)
        out = np.zeros(len(features))
        for nodes, n_internal in trees:
            idx = np.zeros(len(features), dtype=int)
            for _ in range(depth):
                feat = np.array([nodes[i][0] for i in idx])
                thr = np.array([nodes[i][1] for i in idx], dtype=np.float32)
                go_left = features[np.arange(len(features)), feat] <= thr
                idx = np.where(go_left, 2 * idx + 1, 2 * idx + 2)
            out += np.array([nodes[i] for i in idx]) / n_trees
        return out

    return path, predict


def pointwise_regressor(path, weights, bias=0.0, patch=None, metadata=None):
    """A Deepness-style regressor: one output channel y = Σ_c weights[c]·x_c + bias per pixel (a 1×1
    convolution) over an (N, C, H, W) float32 tensor, fixed H = W = ``patch`` when given."""
    from onnx import TensorProto, helper, numpy_helper

    c = len(weights)
    size = [patch, patch] if patch else ["H", "W"]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1 if patch else "N", c, *size])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1 if patch else "N", 1, *size])
    inits = [numpy_helper.from_array(np.asarray(weights, np.float32).reshape(1, c, 1, 1), "w"),
             numpy_helper.from_array(np.array([bias], np.float32), "b")]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["output"], kernel_shape=[1, 1])]
    graph = helper.make_graph(nodes, "pointwise", [x], [y], inits)
    model = helper.make_model(graph, producer_name="forest-carbon-tests", opset_imports=[helper.make_opsetid("", 13)])
    return _save(model, path, metadata)
