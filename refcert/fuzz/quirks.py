"""ONNX writer for the layouts real benchmark files use (the "quirks" a verifier's parser must survive).

``onnx_bytes(net, input_shape, quirks)`` writes ``net`` (a refcert ``Sequential``, float32 weights) as
an opset-13 ONNX model with batch 1.  Quirks (names as in ``QUIRKS``):

* ``matmul_first``  flat input declared as [1, N, 1]; every Linear is ``MatMul(W, x)`` + ``Add(b[:, None])``
                    (ERAN-style); the output stays [1, out, 1] (VNN-LIB's Y_j are its flat entries).
* ``nhwc``          image input declared as [1, H, W, C] followed by ``Transpose(perm=[0, 3, 1, 2])``.
* ``reshape``       ``Reshape(x, [1, n])`` instead of ``Flatten``.
* ``sub_div``       the network starts with a Normalize, written as ``Sub`` then ``Div`` by constants.
* ``final_relu``    the network ends with a ReLU (a plain layer; the writer needs nothing special).
Without quirks the layout is the one ``refcert.io.onnx.export_onnx`` writes (Gemm with transB=1).
The X_i of a property are the flat entries of the *declared* input: ``to_onnx_order`` maps refcert's
NCHW flat order to it.
"""
from __future__ import annotations

import numpy as np

from refcert import nn
from refcert.io.onnx_export import _Builder

QUIRKS = ("matmul_first", "nhwc", "reshape", "sub_div", "final_relu")
OPSET = 13


def to_onnx_order(x, input_shape, quirks):
    """Flat inputs (..., n) in refcert order -> the order of the declared ONNX input (NHWC if quirked)."""
    x = np.asarray(x)
    if "nhwc" not in quirks:
        return x
    C, H, W = input_shape
    return x.reshape(x.shape[:-1] + (C, H, W)).swapaxes(-3, -2).swapaxes(-2, -1).reshape(x.shape)


def to_refcert_order(x, input_shape, quirks):
    """Inverse of ``to_onnx_order``."""
    x = np.asarray(x)
    if "nhwc" not in quirks:
        return x
    C, H, W = input_shape
    return x.reshape(x.shape[:-1] + (H, W, C)).swapaxes(-1, -2).swapaxes(-2, -3).reshape(x.shape)


def declared_input_shape(input_shape, quirks):
    """The ONNX input shape, batch included."""
    if "nhwc" in quirks:
        C, H, W = input_shape
        return (1, H, W, C)
    if "matmul_first" in quirks:
        return (1, int(np.prod(input_shape)), 1)
    return (1,) + tuple(input_shape)


class _Writer(_Builder):
    """``refcert.io.onnx_export``'s graph builder (float32), with the quirky forms of Linear and Flatten."""

    def __init__(self, quirks):
        import onnx
        from onnx import numpy_helper
        super().__init__(onnx, numpy_helper, np.float32)
        self.quirks = quirks

    def emit(self, module, x, shape):
        op = getattr(module, "op", None)
        if op == "linear" and "matmul_first" in self.quirks:
            p = module.params
            out_shape = (p["weight"].shape[0],)
            y = self.node("MatMul", [self.const(p["weight"].numpy().astype(np.float32), "W"), x])
            return self.node("Add", [y, self.const(p["bias"].numpy().astype(np.float32).reshape(-1, 1), "b")]), out_shape
        if op == "flatten" and "reshape" in self.quirks:
            n = int(np.prod(shape))
            return self.node("Reshape", [x, self.const(np.array([1, n], dtype=np.int64), "shape")]), (n,)
        return super().emit(module, x, shape)


def onnx_bytes(net: nn.Module, input_shape: tuple, quirks: tuple) -> bytes:
    """The serialized ONNX model of ``net`` for one input of refcert shape ``input_shape`` (no batch)."""
    import onnx
    from onnx import TensorProto, helper
    unknown = set(quirks) - set(QUIRKS)
    if unknown:
        raise ValueError(f"unknown ONNX quirks {sorted(unknown)}; known: {QUIRKS}")
    if "matmul_first" in quirks and len(input_shape) != 1:
        raise ValueError(f"quirk matmul_first needs a flat input, got shape {input_shape}")
    if "nhwc" in quirks and len(input_shape) != 3:
        raise ValueError(f"quirk nhwc needs an image input (C, H, W), got shape {input_shape}")
    writer = _Writer(tuple(quirks))
    declared = declared_input_shape(input_shape, quirks)
    x = "input"
    if "nhwc" in quirks:
        x = writer.node("Transpose", [x], perm=[0, 3, 1, 2])
    out, out_shape = writer.emit(net, x, tuple(input_shape))
    out_declared = (1, out_shape[0], 1) if "matmul_first" in quirks else (1,) + tuple(out_shape)
    graph = helper.make_graph(
        writer.nodes, "refcert_fuzz", [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(declared))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(out_declared))], writer.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="refcert-fuzz")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run_onnxruntime(model: bytes, x_onnx_flat, input_shape, quirks):
    """Outputs (batch, m) of the ONNX model on float32 inputs given flat in ONNX order (batch, n)."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    declared = declared_input_shape(input_shape, quirks)
    rows = [session.run(None, {"input": np.asarray(x, dtype=np.float32).reshape(declared)})[0].reshape(-1)
            for x in np.atleast_2d(x_onnx_flat)]
    return np.stack(rows)
