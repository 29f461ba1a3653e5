"""ONNX import and export: real benchmark networks in, any refcert network out.

``load_onnx(path)`` walks the graph from its one input in topological order.  Every data tensor is a
``_Value``: a chain of refcert layers back to the input, its shape in refcert's layout (``shape``) and in
the ONNX graph (``logical``; both without the batch axis, same C-order data), plus two *pending* changes
not yet turned into layers: a feature permutation (from Transpose) and a zero padding (from Pad).
Constant tensors are plain NumPy arrays and are folded.  How the quirks of real files are handled:

* Gemm / MatMul (weight on either side, e.g. ``W @ x`` on a [1,784,1] input) become one Linear on the
  flattened features (``kron`` for matrix products over extra axes); a pending permutation is folded
  into its columns, so NHWC flattening (Transpose + Reshape + Gemm, as in ERAN nets) costs nothing.
* Add/Sub/Mul/Div by constants and BatchNormalization are elementwise affine maps ``a*x + b``: folded
  into the preceding Linear/Conv when possible, else a Normalize (per channel, a > 0) or a diagonal
  1x1 Conv / Linear.  Division by a data tensor is refused.
* A Transpose of the *input* that must be materialised (e.g. NHWC input, then Transpose, then Conv)
  reorders the input instead: the network then expects the transposed layout and records it in
  ``net.input_permutation`` (use ``to_refcert_input``).
* Add of two data tensors becomes ``nn.Residual`` (branches from their last common tensor).
The returned ``nn.Sequential`` records ``onnx_input_shape`` (as in the file), ``input_shape`` (what
``net`` takes, without batch), ``onnx_output_shape`` and ``input_permutation`` (None or a flat index).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from refcert import nn
from refcert.autodiff import Tensor
from refcert.io.npz import atomic_write


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


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ImportError("ONNX support needs the 'onnx' package: pip install 'refcert[onnx]'") from None
    return onnx, numpy_helper


def _then(v: _Value, layer: nn.Module, shape: tuple, logical=None) -> _Value:
    return _Value(v, layer, tuple(shape), tuple(shape if logical is None else logical), v.perm, 0)


def _tensor(array, dtype) -> Tensor:
    return Tensor(np.asarray(array, dtype=dtype), requires_grad=True)


class _Importer:
    def __init__(self, path, dtype):
        self.path, self.dtype = path, dtype
        self.input_permutation = None

    def fail(self, node, message):
        raise OnnxImportError(f"{self.path}: node {node.name or '(unnamed)'!r} ({node.op_type}): {message}")

    # -- layout -------------------------------------------------------------------------------
    def materialize(self, v: _Value, node) -> _Value:
        """A value whose refcert layout is its ONNX layout (perm and pad applied)."""
        if v.pad:
            self.fail(node, "a Pad is only supported directly before a Conv")
        if v.perm is not None:
            if v.prev is None and v.layer is None:      # the input itself: reorder it instead
                self.input_permutation = v.perm
                return _Value(None, None, v.logical, v.logical)
            if len(v.logical) == 1:                      # flat: a permutation matrix
                P = np.zeros((v.perm.size, v.perm.size))
                P[np.arange(v.perm.size), v.perm] = 1.0
                return self.linear(replace(v, perm=None), P, np.zeros(v.perm.size), v.logical)
            self.fail(node, f"cannot materialise a transposed tensor of shape {v.logical} here")
        if v.shape == v.logical:
            return v
        if len(v.logical) == 1:
            return _then(v, nn.Flatten(), v.logical)
        self.fail(node, f"cannot reshape features {v.shape} to {v.logical} (refcert has no reshape layer)")

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

    def affine(self, v: _Value, a, b, node) -> _Value:
        """Elementwise x*a + b with constants a, b broadcastable to v's ONNX shape."""
        try:
            a = np.broadcast_to(np.asarray(a, dtype=np.float64), (1,) + v.logical)[0]
            b = np.broadcast_to(np.asarray(b, dtype=np.float64), (1,) + v.logical)[0]
        except ValueError:
            self.fail(node, f"constant does not broadcast to the data shape {v.logical}")
        layer = v.layer
        if v.perm is None and not v.pad and isinstance(layer, nn.Linear) and v.shape == (a.size,):
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
        if isinstance(layer, nn.Conv2d) and v.layer is layer and len(v.shape) == 3:
            W, bias = layer.params["weight"].numpy().astype(np.float64), layer.params["bias"]
            bias = np.zeros(W.shape[0]) if bias is None else bias.numpy()
            new = nn.Conv2d(W.shape[1], W.shape[0], W.shape[2], layer.params["stride"], layer.params["padding"],
                            dtype=self.dtype)
            new.params.update(weight=_tensor(a_c[:, None, None, None] * W, self.dtype),
                              bias=_tensor(a_c * bias + b_c, self.dtype))
            return replace(v, layer=new)
        if np.all(a_c > 0) and isinstance(layer, nn.Normalize) and v.layer is layer \
                and layer.params["mean"].shape[0] == a_c.size:   # a((x - m)/s) + b = (x - (m - b s/a)) / (s/a)
            m, sd = (layer.params[k].numpy().astype(np.float64) for k in ("mean", "std"))
            return replace(v, layer=nn.Normalize(mean=m - b_c * sd / a_c, std=sd / a_c, dtype=self.dtype))
        if np.all(a_c > 0):
            return _then(v, nn.Normalize(mean=-b_c / a_c, std=1.0 / a_c, dtype=self.dtype), v.shape)
        if len(v.shape) == 1:
            return self.linear(v, np.diag(a_c), b_c, v.logical)
        if len(v.shape) != 3:
            self.fail(node, f"a sign-changing scale on features of shape {v.shape}")
        conv = nn.Conv2d(a_c.size, a_c.size, 1, dtype=self.dtype)
        conv.params.update(weight=_tensor(np.diag(a_c)[:, :, None, None], self.dtype), bias=_tensor(b_c, self.dtype))
        return _then(v, conv, v.shape)

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


def load_onnx(path, dtype: str = "float32") -> nn.Sequential:
    """Read an ONNX file as an ``nn.Sequential`` (see the module docstring for what is supported)."""
    onnx, numpy_helper = _onnx()
    from refcert.io import onnx_ops
    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise OnnxImportError(f"{path}: no such file") from None
    except Exception as err:  # protobuf's DecodeError and friends
        raise OnnxImportError(f"{path}: not a readable ONNX model ({err})") from err
    graph = model.graph
    env = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in env]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise OnnxImportError(f"{path}: expected one data input and one output, got {len(inputs)} and {len(graph.output)}")
    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) < 2:
        raise OnnxImportError(f"{path}: input {inputs[0].name!r} has shape {dims}; the first axis must be the batch")
    importer = _Importer(path, dtype)
    env[inputs[0].name] = _Value(None, None, tuple(dims[1:]), tuple(dims[1:]))
    for node in graph.node:
        args = [env[name] if name else None for name in node.input]
        results = onnx_ops.apply(importer, node, args, {a.name: _attribute(onnx, numpy_helper, a) for a in node.attribute})
        for name, value in zip(node.output, results):
            env[name] = value
    out = env[graph.output[0].name]
    if not isinstance(out, _Value):
        raise OnnxImportError(f"{path}: the output does not depend on the input")
    final = importer.materialize(out, graph.node[-1]) if out.perm is not None or out.pad else out
    if len(final.logical) == 1 and final.shape != final.logical:
        final = _then(final, nn.Flatten(), final.logical)
    net = nn.Sequential(*_layers(final))
    root = final
    while root.prev is not None:
        root = root.prev
    net.onnx_input_shape, net.input_shape = tuple(dims), root.shape
    net.onnx_output_shape, net.input_permutation = (1,) + out.logical, importer.input_permutation
    try:  # the precision the file is executed in (onnxruntime): what verify's guarantee covers by default
        net.onnx_dtype = str(onnx.helper.tensor_dtype_to_np_dtype(inputs[0].type.tensor_type.elem_type))
    except Exception:  # an undeclared element type
        net.onnx_dtype = "float32"
    return net


def _attribute(onnx, numpy_helper, attribute):
    value = onnx.helper.get_attribute_value(attribute)
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


def to_refcert_input(net, x):
    """An input batch laid out as the ONNX file expects, rearranged for ``net`` (undoes input Transposes)."""
    x = np.asarray(x)
    flat = x.reshape(x.shape[0], -1)
    if getattr(net, "input_permutation", None) is not None:
        flat = flat[:, net.input_permutation]
    return flat.reshape((x.shape[0],) + tuple(net.input_shape))


def export_onnx(net: nn.Module, path, input_shape, dtype: str = "float32") -> None:
    """Write ``net`` as an ONNX model (opset 13, dynamic batch) atomically.

    ``input_shape`` is an input batch's shape, batch axis first, e.g. (1, 1, 28, 28); the batch is dynamic.
    ``dtype`` 'float32' (what onnxruntime's CPU kernels implement) or 'float64' (exact round trips).
    """
    onnx, _ = _onnx()
    from refcert.io import onnx_export
    if dtype not in ("float32", "float64"):
        raise ValueError(f"export dtype must be 'float32' or 'float64', got {dtype!r}")
    if len(input_shape) < 2:
        raise ValueError(f"input_shape must start with the batch axis, e.g. (1, 784); got {tuple(input_shape)}")
    model = onnx_export.build(net, tuple(int(s) for s in input_shape), np.dtype(dtype).type)
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    atomic_write(path, lambda stream: stream.write(data))
