"""The ONNX operators ``load_onnx`` understands: one function per op_type (see refcert/io/onnx.py).

They build on the importer state of refcert/io/onnx_graph.py (the layer below); onnx.py drives them.

Each function takes the importer, the node, its inputs (NumPy arrays for constants, ``_Value`` for data)
and its attributes, and returns its outputs.  Operators whose inputs are all constants are folded with
NumPy; anything else not listed raises ``OnnxImportError`` naming the node and op_type.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from refcert import nn
from refcert.io.onnx_graph import _tensor, _then, _Value


def _is_data(x):
    return isinstance(x, _Value)


def _axes(node, args, attrs):
    if len(args) > 1 and args[1] is not None:
        return [int(a) for a in np.asarray(args[1]).reshape(-1)]
    return [int(a) for a in attrs.get("axes", [])]


def _reshape_logical(imp, node, v, shape):
    """New ONNX shape (without batch) for data ``v``; the batch axis must stay first and alone.  In a
    graph without a batch axis (``imp.batch`` False) the target is the whole new shape."""
    size, target = int(np.prod(v.logical)), list(shape)
    if not imp.batch:
        shape = [1] + [int(s) for s in shape]   # the same rules, with the implicit sample count in front
    rest = [int(s) for s in shape[1:]]
    rest = [v.logical[i] if s == 0 and i < len(v.logical) else s for i, s in enumerate(rest)]
    if rest.count(-1) > 1:
        imp.fail(node, f"reshape target {target} has several -1 entries")
    if -1 in rest:
        known = int(np.prod([s for s in rest if s != -1]))
        rest[rest.index(-1)] = size // known if known else 0
    if int(np.prod(rest)) != size or (shape[0] not in (-1, 0, 1) and shape[0] * size != int(np.prod(shape))):
        imp.fail(node, f"reshape of features {v.logical} to {target} would mix the batch axis")
    return replace(v, logical=tuple(rest))


def _conv(imp, node, args, attrs):
    x, W = args[0], args[1]
    b = args[2] if len(args) > 2 and args[2] is not None else np.zeros(W.shape[0])
    if not _is_data(x) or _is_data(W) or _is_data(b):
        imp.fail(node, "needs data input and constant weights")
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    k, strides = list(attrs.get("kernel_shape", W.shape[2:])), list(attrs.get("strides", [1, 1]))
    if (attrs.get("group", 1) != 1 or set(attrs.get("dilations", [1, 1])) != {1} or len(k) != 2 or k[0] != k[1]
            or strides[0] != strides[1] or len(set(pads)) != 1 or attrs.get("auto_pad", b"NOTSET") not in ("NOTSET", b"NOTSET")):
        imp.fail(node, f"only square 2-D convolutions with equal strides/pads, group 1, dilation 1 "
                       f"(kernel {k}, strides {strides}, pads {pads})")
    extra = x.pad
    x = imp.materialize(replace(x, pad=0), node)
    if len(x.shape) != 3 or x.shape[0] != W.shape[1]:
        imp.fail(node, f"input of shape {x.shape} does not fit a kernel of shape {W.shape}")
    padding, stride = int(pads[0]) + extra, int(strides[0])
    conv = nn.Conv2d(W.shape[1], W.shape[0], int(k[0]), stride, padding, dtype=imp.dtype)
    conv.params.update(weight=_tensor(W, imp.dtype), bias=_tensor(b, imp.dtype))
    h, w = ((s + 2 * padding - int(k[0])) // stride + 1 for s in x.shape[1:])
    return [_then(x, conv, (W.shape[0], h, w))]


def _pool(imp, node, args, attrs):
    x = imp.materialize(args[0], node)
    if len(x.shape) != 3:
        imp.fail(node, f"pooling needs (C, H, W) features, got {x.shape}")
    if node.op_type == "GlobalAveragePool":
        if x.shape[1] != x.shape[2]:
            imp.fail(node, f"global pooling of a non-square map {x.shape[1:]}")
        k, s, p = x.shape[1], x.shape[1], 0
    else:
        k, strides, pads = list(attrs["kernel_shape"]), list(attrs.get("strides", [1, 1])), list(attrs.get("pads", [0] * 4))
        if (len(k) != 2 or k[0] != k[1] or strides[0] != strides[1] or len(set(pads)) != 1 or attrs.get("ceil_mode", 0)
                or set(attrs.get("dilations", [1, 1])) != {1}):
            imp.fail(node, f"only square pools with equal strides/pads, no ceil_mode (kernel {k}, pads {pads})")
        if node.op_type == "AveragePool" and pads[0] and not attrs.get("count_include_pad", 0):
            imp.fail(node, "padded average pooling with count_include_pad=0 is not supported")
        k, s, p = int(k[0]), int(strides[0]), int(pads[0])
    layer = (nn.MaxPool2d if node.op_type == "MaxPool" else nn.AvgPool2d)(k, s, p)
    h, w = ((n + 2 * p - k) // s + 1 for n in x.shape[1:])
    return [_then(x, layer, (x.shape[0], h, w))]


def _gemm(imp, node, args, attrs):
    A, B = args[0], args[1]
    C = args[2] if len(args) > 2 and args[2] is not None else 0.0
    if not _is_data(A) or _is_data(B) or _is_data(C) or attrs.get("transA", 0):
        imp.fail(node, "supported form: Gemm(data, constant B, constant C) with transA=0")
    if len(A.logical) != 1:
        imp.fail(node, f"data of shape {A.logical} is not flat")
    Bt = B.T if attrs.get("transB", 0) else B
    M = attrs.get("alpha", 1.0) * Bt.T.astype(np.float64)
    bias = attrs.get("beta", 1.0) * np.broadcast_to(np.asarray(C, dtype=np.float64), (1, M.shape[0]))[0]
    return [imp.linear(A, M, bias, (M.shape[0],))]


def _matmul(imp, node, args, attrs):
    a, b = args
    if _is_data(a) and not _is_data(b) and b.ndim == 2:       # x (..., m, n) @ W (n, k)
        lead = int(np.prod(a.logical[:-1]))
        M = np.kron(np.eye(lead), b.T.astype(np.float64))
        out = a.logical[:-1] + (b.shape[1],)
        x = a
    elif _is_data(b) and not _is_data(a) and a.ndim == 2 and len(b.logical) == 2:   # W (k, n) @ x (n, m)
        M = np.kron(a.astype(np.float64), np.eye(b.logical[1]))
        out = (a.shape[0], b.logical[1])
        x = b
    elif _is_data(b) and not _is_data(a) and a.ndim == 2 and len(b.logical) == 1 and not imp.batch:
        M = a.astype(np.float64)                              # W (k, n) @ x (n,): a graph without batch axis
        out = (a.shape[0],)
        x = b
    else:
        imp.fail(node, "supported forms: data @ 2-D constant, 2-D constant @ data of shape (n, m), "
                       "2-D constant @ 1-D data without batch axis")
    if x.logical[-1 if x is a else 0] != (b.shape[0] if x is a else a.shape[1]):
        imp.fail(node, f"shapes {x.logical} and {(b if x is a else a).shape} do not multiply")
    return [imp.linear(x, M, np.zeros(M.shape[0]), out)]


def _elementwise(imp, node, args, attrs):
    a, b = args
    op = node.op_type
    if not _is_data(a) and not _is_data(b):
        return [{"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](a, b)]
    if _is_data(a) and _is_data(b):
        if op != "Add":
            imp.fail(node, f"{op} of two data tensors is not piecewise affine in refcert's vocabulary")
        return [imp.residual(a, b, node)]
    x, c = (a, b) if _is_data(a) else (b, a)
    c = np.asarray(c, dtype=np.float64)
    if c.ndim > len(x.logical) and not imp.batch:
        imp.fail(node, f"a constant of shape {c.shape} would add axes to data {x.logical} that has no batch axis")
    if c.ndim > len(x.logical):                  # a constant with a batch axis of 1
        c = c.reshape(c.shape[c.ndim - len(x.logical):])
    if op == "Add":
        return [imp.affine(x, 1.0, c, node)]
    if op == "Sub":
        return [imp.affine(x, 1.0, -c, node) if x is a else imp.affine(x, -1.0, c, node)]
    if op == "Mul":
        return [imp.affine(x, c, 0.0, node)]
    if x is b or np.any(c == 0):
        imp.fail(node, "only division of data by a non-zero constant is supported")
    return [imp.affine(x, 1.0 / c, 0.0, node, divisor=c)]


def _batchnorm(imp, node, args, attrs):
    x, gamma, beta, mean, var = args[:5]
    a = gamma / np.sqrt(var.astype(np.float64) + attrs.get("epsilon", 1e-5))
    shape = (-1,) + (1,) * (len(x.logical) - 1)
    return [imp.affine(x, a.reshape(shape), (beta - mean * a).reshape(shape), node)]


def _transpose(imp, node, args, attrs):
    x = args[0]
    ndim = x.ndim if not _is_data(x) else len(x.logical) + 1
    perm = [int(p) for p in attrs["perm"]] if "perm" in attrs else list(range(ndim))[::-1]
    if not _is_data(x):
        return [np.transpose(x, perm)]
    if perm[0] != 0 or x.pad:
        imp.fail(node, f"a transpose {perm} that moves the batch axis (or follows a Pad)")
    index = np.arange(int(np.prod(x.logical))).reshape(x.logical) if x.perm is None else x.perm.reshape(x.logical)
    axes = [p - 1 for p in perm[1:]]
    moved = np.transpose(index, axes)
    return [replace(x, logical=moved.shape, perm=moved.reshape(-1))]


def _gather(imp, node, args, attrs):
    """Constants: numpy.take.  Data: a permutation of flat features (axis 1 of a [batch, n] tensor,
    constant indices), which becomes a pending permutation like Transpose's."""
    x, indices, axis = args[0], args[1], attrs.get("axis", 0)
    if not _is_data(x):
        return [np.take(x, indices, axis=axis)]
    index = None if _is_data(indices) else np.asarray(indices).reshape(-1) % max(1, int(np.prod(x.logical)))
    if (axis % (len(x.logical) + 1) != 1 or len(x.logical) != 1 or x.pad or index is None
            or np.asarray(indices).ndim != 1 or not np.array_equal(np.sort(index), np.arange(x.logical[0]))):
        imp.fail(node, "only a Gather of a [batch, n] tensor along axis 1 with constant indices that permute "
                       "all n features is supported")
    perm = index if x.perm is None else x.perm[index]
    return [replace(x, perm=perm)]


def _reshape_like(imp, node, args, attrs):
    x, op = args[0], node.op_type
    if op == "Reshape":
        target = [int(s) for s in np.asarray(args[1]).reshape(-1)]
        if not _is_data(x):
            return [np.reshape(x, [x.shape[i] if s == 0 else s for i, s in enumerate(target)])]
        return [_reshape_logical(imp, node, x, target)]
    if op == "Flatten":
        axis = attrs.get("axis", 1)
        if not _is_data(x):
            return [x.reshape(int(np.prod(x.shape[:axis])), -1)]
        if axis != 1:
            imp.fail(node, f"Flatten(axis={axis}) of data would mix the batch axis")
        return [replace(x, logical=(int(np.prod(x.logical)),))]
    axes = _axes(node, args, attrs)
    if not _is_data(x):
        return [np.squeeze(x, tuple(axes)) if op == "Squeeze" else np.expand_dims(x, tuple(axes))]
    full = (1,) + x.logical
    if op == "Squeeze":
        axes = [a % len(full) for a in axes] or [i for i, s in enumerate(full) if s == 1 and i > 0]
        if 0 in axes or any(full[a] != 1 for a in axes):
            imp.fail(node, f"cannot squeeze axes {axes} of {full}")
        return [replace(x, logical=tuple(s for i, s in enumerate(full) if i not in axes)[1:])]
    shape = list(full)
    for a in sorted(a % (len(full) + len(axes)) for a in axes):
        if a == 0:
            imp.fail(node, "unsqueeze before the batch axis")
        shape.insert(a, 1)
    return [replace(x, logical=tuple(shape[1:]))]


def _pad(imp, node, args, attrs):
    x = args[0]
    pads = [int(p) for p in (np.asarray(args[1]).reshape(-1) if len(args) > 1 else attrs["pads"])]
    value = float(np.asarray(args[2]).reshape(-1)[0]) if len(args) > 2 and args[2] is not None else attrs.get("value", 0.0)
    mode = attrs.get("mode", b"constant")
    if (not _is_data(x) or mode not in (b"constant", "constant") or value != 0.0 or len(pads) != 8
            or pads[:2] != [0, 0] or pads[4:6] != [0, 0] or len(set(pads[2:4] + pads[6:8])) != 1):
        imp.fail(node, f"only symmetric zero padding of H and W is supported (pads {pads}, mode {mode})")
    x = imp.materialize(x, node)
    return [replace(x, pad=x.pad + pads[2])]


def _constant(imp, node, args, attrs):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            return [np.asarray(attrs[key])]
    imp.fail(node, f"unsupported constant attributes {sorted(attrs)}")


def _shape(imp, node, args, attrs):
    x = args[0]
    return [np.asarray(((1,) if imp.batch else ()) + x.logical if _is_data(x) else x.shape, dtype=np.int64)]


def _activation(imp, node, args, attrs):
    layer = {"Relu": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh}[node.op_type]()
    x = args[0]
    if not _is_data(x):
        imp.fail(node, "an activation of a constant")
    if x.pad:
        x = imp.materialize(x, node)
    return [_Value(x, layer, x.shape, x.logical, x.perm)]


OPS = {
    "Conv": _conv, "MaxPool": _pool, "AveragePool": _pool, "GlobalAveragePool": _pool,
    "Gemm": _gemm, "MatMul": _matmul, "Add": _elementwise, "Sub": _elementwise, "Mul": _elementwise,
    "Div": _elementwise, "BatchNormalization": _batchnorm, "Transpose": _transpose,
    "Reshape": _reshape_like, "Flatten": _reshape_like, "Squeeze": _reshape_like, "Unsqueeze": _reshape_like,
    "Pad": _pad, "Constant": _constant, "Shape": _shape,
    "Identity": lambda imp, node, args, attrs: [args[0]],
    "Relu": _activation, "Sigmoid": _activation, "Tanh": _activation,
    "Gather": _gather,
    "Concat": lambda imp, node, args, attrs: [np.concatenate([np.atleast_1d(a) for a in args], axis=attrs["axis"])],
    "Cast": lambda imp, node, args, attrs: [np.asarray(args[0], dtype=_CAST.get(attrs.get("to"), np.float64))],
}
_CAST = {1: np.float32, 6: np.int32, 7: np.int64, 9: np.bool_, 11: np.float64}
_CONSTANT_ONLY = ("Concat", "Cast")
# Operators that read axis positions (batch first) or need 2-D/4-D data: refused on data of a graph whose
# input has no batch axis (elementwise maps, activations, MatMul, Reshape and Shape work there).
_NEEDS_BATCH_AXIS = ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Gemm", "BatchNormalization",
                     "Transpose", "Gather", "Flatten", "Squeeze", "Unsqueeze", "Pad")


def apply(imp, node, args, attrs):
    """Outputs of ``node`` given its inputs; a clear error for what refcert cannot represent."""
    if node.op_type not in OPS:
        imp.fail(node, f"unsupported operator; supported: {', '.join(sorted(OPS))}")
    if node.op_type in _CONSTANT_ONLY and any(_is_data(a) for a in args):
        imp.fail(node, "supported only on constants (shape computations)")
    if not imp.batch and node.op_type in _NEEDS_BATCH_AXIS and any(_is_data(a) for a in args):
        imp.fail(node, "supported only in graphs whose input has a batch axis; this one's input is 1-D [N]")
    return OPS[node.op_type](imp, node, args, attrs)
