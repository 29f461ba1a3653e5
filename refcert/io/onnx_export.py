"""Build an ONNX model (opset 13, dynamic batch) from a refcert network; used by ``export_onnx``.

One ONNX node (or two, for Normalize: Sub then Div) per refcert layer; a Residual runs both branches
from the same tensor and joins them with Add.  A Permute is a Transpose when it moves whole axes (then a
Reshape if its shape differs), else Flatten, Gather of the features and Reshape.  Shapes are tracked by
running each layer on zeros.
"""
from __future__ import annotations

import itertools

import numpy as np

from refcert import nn

OPSET = 13


class _Builder:
    def __init__(self, onnx, numpy_helper, dtype):
        self.onnx, self.numpy_helper, self.dtype = onnx, numpy_helper, dtype
        self.nodes, self.initializers, self.count = [], [], 0

    def name(self, stem):
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, array, stem):
        name = self.name(stem)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, **attrs):
        out = self.name(op.lower())
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def permute(self, x, shape, index, out_shape):
        """Nodes for nn.Permute: a Transpose of the feature axes when ``index`` is one, else a Gather."""
        grid = np.arange(index.size).reshape(shape)
        axes = next((a for a in itertools.permutations(range(len(shape)))
                     if np.array_equal(np.transpose(grid, a).reshape(-1), index)), None)
        if axes is not None:
            x = self.node("Transpose", [x], perm=[0] + [a + 1 for a in axes])
            moved = tuple(shape[a] for a in axes)
        else:
            indices = self.const(index.astype(np.int64), "index")
            x = self.node("Gather", [self.node("Flatten", [x], axis=1), indices], axis=1)
            moved = (index.size,)
        if moved == tuple(out_shape):
            return x
        return self.node("Reshape", [x, self.const(np.array((-1,) + tuple(out_shape), dtype=np.int64), "shape")])

    def emit(self, module, x, shape):
        """Nodes computing ``module`` on tensor ``x`` of shape ``shape`` (without batch); (name, shape)."""
        if isinstance(module, nn.Sequential):
            for layer in module.layers:
                x, shape = self.emit(layer, x, shape)
            return x, shape
        if isinstance(module, nn.Residual):
            a, shape_a = self.emit(module.block, x, shape)
            b, _ = self.emit(module.shortcut, x, shape)
            return self.node("Add", [a, b]), shape_a
        p, op = module.params, module.op
        out_shape = tuple(module(np.zeros((1,) + shape, dtype=self.dtype)).shape[1:])
        as_array = (lambda t: t.numpy().astype(self.dtype))
        if op == "linear":
            inputs = [x, self.const(as_array(p["weight"]), "W")]
            if p["bias"] is not None:
                inputs.append(self.const(as_array(p["bias"]), "b"))
            return self.node("Gemm", inputs, transB=1), out_shape
        if op == "conv2d":
            inputs = [x, self.const(as_array(p["weight"]), "W")]
            if p["bias"] is not None:
                inputs.append(self.const(as_array(p["bias"]), "b"))
            k = p["weight"].shape[2]
            return self.node("Conv", inputs, kernel_shape=[k, k], strides=[p["stride"]] * 2,
                             pads=[p["padding"]] * 4), out_shape
        if op == "normalize":
            channels = p["mean"].shape[0]
            const_shape = (channels,) + (1,) * (len(shape) - 1) if channels > 1 else (1,)
            mean = self.const(as_array(p["mean"]).reshape(const_shape), "mean")
            std = self.const(as_array(p["std"]).reshape(const_shape), "std")
            return self.node("Div", [self.node("Sub", [x, mean]), std]), out_shape
        if op == "batchnorm":  # evaluation mode: x·scale + shift per channel
            nn.check_evaluation_mode(module)
            q = module.arguments(None)
            channels = q["scale"].shape[0]
            const_shape = (channels,) + (1,) * (len(shape) - 1) if channels > 1 else (1,)
            scale = self.const(as_array(q["scale"]).reshape(const_shape), "scale")
            shift = self.const(as_array(q["shift"]).reshape(const_shape), "shift")
            return self.node("Add", [self.node("Mul", [x, scale]), shift]), out_shape
        if op in ("relu", "sigmoid", "tanh"):
            return self.node({"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}[op], [x]), out_shape
        if op == "flatten":
            return self.node("Flatten", [x], axis=1), out_shape
        if op == "permute":
            return self.permute(x, shape, p["index"], out_shape), out_shape
        if op in ("avg_pool2d", "max_pool2d"):
            k, s, pad = p["kernel_size"], p["stride"], p["padding"]
            extra = {"count_include_pad": 1} if op == "avg_pool2d" else {}
            return self.node("AveragePool" if op == "avg_pool2d" else "MaxPool", [x], kernel_shape=[k, k],
                             strides=[s, s], pads=[pad] * 4, **extra), out_shape
        raise ValueError(f"cannot export layer {type(module).__name__} (op {op!r}) to ONNX")


def build(net: nn.Module, input_shape: tuple, dtype=np.float32):
    """The ONNX ModelProto of ``net`` for inputs (batch, *input_shape)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = tuple(input_shape[1:])   # the first axis is the batch (exported as dynamic)
    builder = _Builder(onnx, numpy_helper, dtype)
    try:
        out, out_shape = builder.emit(net, "input", shape)
    except (ValueError, TypeError) as err:
        raise ValueError(f"cannot export the network for input shape {shape}: {err}") from err
    if out == "input":
        out = builder.node("Identity", ["input"])
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    graph = helper.make_graph(
        builder.nodes, "refcert", [helper.make_tensor_value_info("input", elem, ["batch", *shape])],
        [helper.make_tensor_value_info(out, elem, ["batch", *out_shape])], builder.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="refcert")
