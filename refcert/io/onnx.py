"""ONNX import and export: real benchmark networks in, any refcert network out.

``load_onnx(path)`` walks the graph from its one input in topological order, one ``onnx_ops`` function
per node.  Every data tensor is a ``_Value`` (``onnx_graph``, the layer both build on): a chain of
refcert layers back to the input, its shape in refcert's layout (``shape``) and in the ONNX graph
(``logical``; both without the batch axis, same C-order data), plus two *pending* changes not yet
turned into layers: a feature permutation (from Transpose, or a Gather that permutes flat features) and
a zero padding (from Pad).
Constant tensors are plain NumPy arrays and are folded.  How the quirks of real files are handled:

* Gemm / MatMul (weight on either side, e.g. ``W @ x`` on a [1,784,1] input) become one Linear on the
  flattened features (``kron`` for matrix products over extra axes); a pending permutation is folded
  into its columns, so NHWC flattening (Transpose + Reshape + Gemm, as in ERAN nets) costs nothing.
* Add/Sub/Mul/Div by constants and BatchNormalization are elementwise affine maps ``a*x + b``, imported
  with the node's own float rounding (``onnx_graph.affine``): folded into the preceding layer only where
  that is exact (an Add into a bias-free Linear/Conv, a power-of-two scale, a division after a Sub),
  else their own layer: Normalize for x + b and x / c (c > 0), the batchnorm op (x·a + b) otherwise.
  BatchNormalization becomes that op with a and b computed in float64 from its inputs; onnxruntime may
  round its own a and b differently, and a division by a negative constant is taken as x·(1/c): neither
  is covered (proofs/floating_point.md §8).  Division by a data tensor is refused.
* A pending permutation that must be materialised (e.g. NHWC input, then Transpose, then Conv) becomes
  an ``nn.Permute`` layer, and so does a Reshape to more than one axis; so the network takes inputs in
  the file's own layout.
* Add of two data tensors becomes ``nn.Residual`` (branches from their last common tensor).
* An input of one fixed axis [N] has no batch axis (VNN-COMP's ``test_nano``/``test_tiny``): it is one
  sample of N features, ``MatMul(W, x)`` / ``MatMul(x, W)`` on it are Linear layers and the output has no
  batch axis either.  Such a graph is read with ONNX shapes equal to the logical ones (``_Importer.batch``
  False); operators whose meaning depends on axis positions (Gemm, Conv, pooling, Transpose, Flatten, ...)
  are refused for it, elementwise maps, activations, MatMul and Reshape are not.
The returned ``nn.Sequential`` records ``onnx_input_shape`` (as in the file), ``input_shape`` (what
``net`` takes, without batch: the file's), ``onnx_output_shape`` and ``onnx_dtype``; for a file without a
batch axis ``onnx_input_shape == input_shape == (N,)``.
"""
from __future__ import annotations

import numpy as np

from refcert import nn
from refcert.io import onnx_ops
from refcert.io.npz import atomic_write
from refcert.io.onnx_graph import OnnxImportError, _Importer, _layers, _then, _Value

__all__ = ["OnnxImportError", "export_onnx", "load_onnx", "to_refcert_input"]


def _onnx():
    """The ``onnx`` package; if it cannot be imported, a ``ModuleNotFoundError`` with ``name='onnx'`` (the
    CLI turns that into one line naming the extra) whose message says how to install it."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as err:
        raise ModuleNotFoundError(f"ONNX support needs the 'onnx' package ({err}): pip install 'refcert[onnx]'",
                                  name="onnx") from None
    return onnx, numpy_helper


def load_onnx(path, dtype: str = "float32") -> nn.Sequential:
    """Read an ONNX file as an ``nn.Sequential`` (see the module docstring for what is supported)."""
    onnx, numpy_helper = _onnx()
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
    declared = list(inputs[0].type.tensor_type.shape.dim)
    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in declared]
    importer = _Importer(path, dtype)
    if len(dims) == 1 and declared[0].HasField("dim_value") and dims[0] >= 1:
        importer.batch = False   # one sample of N features, e.g. MatMul(W, x) on [N] (VNN-COMP's test_tiny)
    elif len(dims) < 2:
        raise OnnxImportError(f"{path}: input {inputs[0].name!r} has shape {dims}; expected a batch axis first, "
                              f"or one axis of fixed length (a single sample)")
    features = tuple(dims[1:]) if importer.batch else tuple(dims)
    env[inputs[0].name] = _Value(None, None, features, features)
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
    net.onnx_output_shape = ((1,) if importer.batch else ()) + out.logical
    try:  # the precision the file is executed in (onnxruntime): what verify's guarantee covers by default
        net.onnx_dtype = str(onnx.helper.tensor_dtype_to_np_dtype(inputs[0].type.tensor_type.elem_type))
    except Exception:  # an undeclared element type
        net.onnx_dtype = "float32"
    return net


def _attribute(onnx, numpy_helper, attribute):
    value = onnx.helper.get_attribute_value(attribute)
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


def to_refcert_input(net, x):
    """An input batch laid out as the ONNX file expects, reshaped to ``net.input_shape`` (the same C-order
    data: a transposed input is a ``Permute`` layer inside the network)."""
    x = np.asarray(x)
    return x.reshape((x.shape[0],) + tuple(net.input_shape))


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
