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
