"""The state of ``load_onnx`` while it walks a graph (see refcert/io/onnx.py): data values, layers, layout.

A data tensor is a ``_Value``: a chain of refcert layers back to the input, its shape in refcert's
layout (``shape``) and in the ONNX graph (``logical``; both without the batch axis, same C-order data),
plus a pending feature permutation (from Transpose) and zero padding (from Pad) not yet turned into
layers.  ``_Importer`` turns pending changes and constant elementwise maps into layers; the operators
(refcert/io/onnx_ops.py) build on it.  Needs only NumPy: the ``onnx`` package is imported by onnx.py.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from refcert import nn
from refcert.autodiff import Tensor


class OnnxImportError(ValueError):
    """An ONNX graph refcert cannot represent: names the file, node and operator."""


@dataclass(frozen=True)
class _Value:
    prev: "_Value | None"        # the value this one's layer was applied to (None: the input)
    layer: "nn.Module | None"
    shape: tuple                 # refcert layout, without batch
    logical: tuple               # ONNX shape, without batch (same data in C order, up to `perm`)
    perm: "np.ndarray | None" = None   # logical flat element j lives at refcert flat position perm[j]
    pad: int = 0                 # pending symmetric zero padding of H and W (only a Conv may consume it)


def _then(v: _Value, layer: nn.Module, shape: tuple, logical=None) -> _Value:
    return _Value(v, layer, tuple(shape), tuple(shape if logical is None else logical), v.perm, 0)


def _tensor(array, dtype) -> Tensor:
    return Tensor(np.asarray(array, dtype=dtype), requires_grad=True)


class _Importer:
    def __init__(self, path, dtype):
        self.path, self.dtype = path, dtype
        self.batch = True   # False: the graph's tensors have no batch axis (a 1-D input [N]; ONNX shape = logical)

    def fail(self, node, message):
        raise OnnxImportError(f"{self.path}: node {node.name or '(unnamed)'!r} ({node.op_type}): {message}")

    # -- layout -------------------------------------------------------------------------------
    def materialize(self, v: _Value, node) -> _Value:
        """A value whose refcert layout is its ONNX layout: a pending permutation (or a reshape to more
        than one axis) becomes an ``nn.Permute`` layer, a reshape to one axis an ``nn.Flatten``."""
        if v.pad:
            self.fail(node, "a Pad is only supported directly before a Conv")
        if v.perm is not None and np.array_equal(v.perm, np.arange(v.perm.size)):  # e.g. Transpose(0, 1)
            v = replace(v, perm=None)
        if v.perm is None and v.shape == v.logical:
            return v
        if v.perm is None and len(v.logical) == 1:
            return _then(v, nn.Flatten(), v.logical)
        index = np.arange(int(np.prod(v.logical))) if v.perm is None else v.perm
        return _then(replace(v, perm=None), nn.Permute(index, v.logical, v.shape), v.logical)

    def linear(self, v: _Value, M, b, logical_out) -> _Value:
        """Linear layer M (out, n) on the logical flat features; folds a pending permutation."""
        if v.pad:
            raise OnnxImportError(f"{self.path}: a Pad is only supported directly before a Conv")
        if v.perm is not None:
            folded = np.zeros_like(M)
            folded[:, v.perm] = M
            M = folded
        if len(v.shape) != 1:
            v = _then(replace(v, perm=None), nn.Flatten(), (int(np.prod(v.shape)),))
        layer = nn.Linear(M.shape[1], M.shape[0], dtype=self.dtype)
        layer.params.update(weight=_tensor(M, self.dtype), bias=_tensor(b, self.dtype))
        return _Value(v, layer, (M.shape[0],), tuple(logical_out))

    def affine(self, v: _Value, a, b, node, divisor=None) -> _Value:
        """Elementwise x*a + b with constants a, b broadcastable to v's ONNX shape (``divisor``: the node
        is a division by it, a = 1/divisor).

        The imported layers compute what the file's node computes in floats, so that a verdict's rounding
        bound covers onnxruntime's execution of the file: a node is folded into the layer before it only
        where the folded layer rounds the same way — an Add into a layer without a bias (one sum of the
        same terms), a scaling by powers of two (exact), a division into a Normalize whose std is 1;
        otherwise it becomes its own layer with the node's float semantics: fl(x + b) as Normalize(−b, 1),
        fl(x / c) as Normalize(0, c), fl(x·a) and fl(fl(x·a) + b) as a batchnorm op with that scale and
        shift.  (Folding Mul and Add into a Gemm in float64 had given 'unsat' where onnxruntime violates
        the property: an adversarial review, issue 16.)"""
        try:
            a = np.broadcast_to(np.asarray(a, dtype=np.float64), (1,) + v.logical)[0]
            b = np.broadcast_to(np.asarray(b, dtype=np.float64), (1,) + v.logical)[0]
            if divisor is not None:
                divisor = np.broadcast_to(np.asarray(divisor, dtype=np.float64), (1,) + v.logical)[0]
        except ValueError:
            self.fail(node, f"constant does not broadcast to the data shape {v.logical}")
        layer = v.layer
        shift_only = bool(np.all(a == 1))
        powers_of_two = bool(np.all(b == 0) and np.all(np.isfinite(a)) and np.all(np.abs(np.frexp(a)[0]) == 0.5))

        def foldable(module):   # the folded layer rounds as the two did: a scaling by 2^k, or a first bias
            bias = module.params["bias"]
            return powers_of_two or (shift_only and (bias is None or not np.any(bias.numpy())))
        if v.perm is None and not v.pad and isinstance(layer, nn.Linear) and v.shape == (a.size,) and foldable(layer):
            W, bias = layer.params["weight"].numpy().astype(np.float64), layer.params["bias"].numpy()
            a, b = a.reshape(-1), b.reshape(-1)
            new = nn.Linear(W.shape[1], W.shape[0], dtype=self.dtype)
            new.params.update(weight=_tensor(a[:, None] * W, self.dtype), bias=_tensor(a * bias + b, self.dtype))
            return replace(v, layer=new)
        v = self.materialize(v, node)
        channel_a, channel_b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        per_channel = bool(np.all(channel_a == channel_a[:, :1]) and np.all(channel_b == channel_b[:, :1]))
        if not per_channel and len(v.shape) > 1:
            self.fail(node, f"an elementwise constant that varies inside a channel of shape {v.shape}")
        a_c, b_c = channel_a[:, 0], channel_b[:, 0]
        if isinstance(layer, nn.Conv2d) and v.layer is layer and len(v.shape) == 3 and foldable(layer):
            W, bias = layer.params["weight"].numpy().astype(np.float64), layer.params["bias"]
            bias = np.zeros(W.shape[0]) if bias is None else bias.numpy()
            new = nn.Conv2d(W.shape[1], W.shape[0], W.shape[2], layer.params["stride"], layer.params["padding"],
                            dtype=self.dtype)
            new.params.update(weight=_tensor(a_c[:, None, None, None] * W, self.dtype),
                              bias=_tensor(a_c * bias + b_c, self.dtype))
            return replace(v, layer=new)
        c_c = None if divisor is None else divisor.reshape(divisor.shape[0], -1)[:, 0]
        if c_c is not None and np.all(c_c > 0):
            if isinstance(layer, nn.Normalize) and v.layer is layer and layer.params["mean"].shape[0] == c_c.size \
                    and np.all(layer.params["std"].numpy() == 1):       # fl(fl(x − m)/1/c) = fl(fl(x − m)/c)
                return replace(v, layer=nn.Normalize(mean=layer.params["mean"].numpy(), std=c_c, dtype=self.dtype))
            return _then(v, nn.Normalize(mean=np.zeros_like(c_c), std=c_c, dtype=self.dtype), v.shape)
        if shift_only:                                                   # fl(fl(x + b)/1) = fl(x + b)
            return _then(v, nn.Normalize(mean=-b_c, std=np.ones_like(b_c), dtype=self.dtype), v.shape)
        if len(v.shape) not in (1, 3):
            self.fail(node, f"a per-channel scale on features of shape {v.shape}")
        scaled = nn.BatchNorm(a_c.size, dtype=self.dtype, cast=True)     # fl(fl(x·a) + b): the op's constants
        scaled.params.update(scale=_tensor(a_c, self.dtype), shift=_tensor(b_c, self.dtype))
        return _then(v, scaled, v.shape)

    def residual(self, a: _Value, b: _Value, node) -> _Value:
        """Add of two data tensors: ``nn.Residual`` from their last common value.  Both sides are in the
        same C-order data layout once pending permutations/pads are applied, so a shape that differs only
        in refcert's view (e.g. (n,) for ONNX's (n, 1) of a MatMul on a [1, n, 1] input) needs no layer."""
        a, b = (self.materialize(v, node) if v.perm is not None or v.pad else v for v in (a, b))
        if a.logical != b.logical:
            self.fail(node, f"adds tensors of different shapes {a.logical} and {b.logical}")
        if a.shape != b.shape:   # same data, one side flattened already: flatten the other too
            a, b = (v if len(v.shape) == 1 else _then(v, nn.Flatten(), (int(np.prod(v.shape)),)) for v in (a, b))
        ancestors, walk = [], a
        while walk is not None:
            ancestors.append(walk.layer)
            walk = walk.prev
        branch = b
        while not any(branch.layer is layer for layer in ancestors):
            branch = branch.prev
        return _Value(branch, nn.Residual(nn.Sequential(*_chain(branch, a)), nn.Sequential(*_chain(branch, b))),
                      a.shape, a.logical)


def _chain(start: _Value, end: _Value) -> list:
    """The layers after ``start`` up to ``end``; values are identified by their layer (shape-only
    changes copy a value but keep its layer)."""
    layers = []
    while end.layer is not start.layer:
        layers.append(end.layer)
        end = end.prev
    return layers[::-1]


def _layers(v: _Value) -> list:
    root = v
    while root.prev is not None:
        root = root.prev
    return _chain(root, v)
