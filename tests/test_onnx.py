"""ONNX import/export: benchmark networks and hand-built quirky graphs agree with onnxruntime."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refcert
from refcert import nn
from refcert.io.onnx import OnnxImportError, to_refcert_input
from tests.conftest import shared_file
from tests.strategies import networks

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SHARED = ["dnnv__convSmallRELU__Point.onnx", "dnnv__mnist_relu_3_50.onnx", "vnncomp2021__cifar_base_kw.onnx",
          "vnncomp2021__mnist-net_256x2.onnx", "vnncomp2021__resnet_2b.onnx"]


def _session(model_or_path):
    data = model_or_path if isinstance(model_or_path, (str, bytes)) else model_or_path.SerializeToString()
    return ort.InferenceSession(str(data) if isinstance(data, str) else data, providers=["CPUExecutionProvider"])


def _max_difference(net, session, inputs):
    """Largest |net(x) - onnxruntime(x)| over the inputs, each laid out as the ONNX file expects."""
    name = session.get_inputs()[0].name
    worst = 0.0
    for x in inputs:
        expected = session.run(None, {name: x})[0]
        got = net(to_refcert_input(net, x)).numpy()
        assert got.size == expected.size
        worst = max(worst, float(np.abs(got.reshape(expected.shape) - expected).max()))
    return worst


@pytest.mark.parametrize("name", SHARED)
def test_shared_network_matches_onnxruntime(name):
    path = shared_file(f"networks/{name}")
    net = refcert.load_onnx(path)
    rng = np.random.default_rng(0)
    inputs = rng.uniform(0, 1, (100,) + net.onnx_input_shape).astype(np.float32)
    assert _max_difference(net, _session(str(path)), inputs) <= 1e-5


def test_resnet_becomes_residual_layers():
    net = refcert.load_onnx(shared_file("networks/vnncomp2021__resnet_2b.onnx"))
    assert sum(isinstance(layer, refcert.nn.Residual) for layer in net.layers) == 2


def _model(nodes, input_shape, output_shape, initializers, opset=13):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
                              [numpy_helper.from_array(np.asarray(v, dtype=np.float32 if v.dtype.kind == "f" else v.dtype), k)
                               for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _quirks(rng):
    """name -> (model, input shape): the patterns of real benchmark files, one per graph."""
    r = lambda *s: rng.normal(size=s)  # noqa: E731
    node = helper.make_node
    return {
        "matmul_weight_first_784x1": (_model(
            [node("MatMul", ["W", "x"], ["h"]), node("Add", ["h", "b"], ["a"]), node("Relu", ["a"], ["r"]),
             node("Flatten", ["r"], ["f"]), node("Gemm", ["f", "V", "c"], ["y"], transB=1, alpha=0.5, beta=2.0)],
            [1, 6, 1], [1, 3], {"W": r(5, 6), "b": r(5, 1), "V": r(3, 5), "c": r(3)}), (1, 6, 1)),
        "nhwc_transpose_conv_bn_norm": (_model(
            [node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]), node("Sub", ["t", "m"], ["s"]),
             node("Div", ["s", "sd"], ["n"]), node("Conv", ["n", "K"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("BatchNormalization", ["c", "g", "be", "mu", "var"], ["bn"]), node("Relu", ["bn"], ["y"])],
            [1, 5, 5, 2], [1, 3, 5, 5],
            {"m": r(2, 1, 1), "sd": np.abs(r(2, 1, 1)) + 0.5, "K": r(3, 2, 3, 3), "g": r(3), "be": r(3),
             "mu": r(3), "var": np.abs(r(3)) + 0.1}), (1, 5, 5, 2)),
        "pad_conv_pools_tanh": (_model(
            [node("Pad", ["x", "p"], ["pd"]), node("Conv", ["pd", "K", "kb"], ["c"], kernel_shape=[3, 3], strides=[1, 1]),
             node("Mul", ["c", "neg"], ["mc"]), node("Tanh", ["mc"], ["th"]), node("MaxPool", ["th"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
             node("AveragePool", ["mp"], ["ap"], kernel_shape=[2, 2], strides=[1, 1]), node("Sigmoid", ["ap"], ["sg"]),
             node("GlobalAveragePool", ["sg"], ["ga"]), node("Squeeze", ["ga", "ax"], ["sq"]), node("Unsqueeze", ["sq", "ax1"], ["us"]),
             node("Squeeze", ["us", "ax1"], ["y"])],
            [1, 2, 6, 6], [1, 3],
            {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), "K": r(3, 2, 3, 3), "kb": r(3),
             "neg": -np.abs(r(3, 1, 1)), "ax": np.array([2, 3], dtype=np.int64), "ax1": np.array([2], dtype=np.int64)}),
            (1, 2, 6, 6)),
        "shape_gather_reshape_residual": (_model(
            [node("Shape", ["x"], ["sh"]), node("Gather", ["sh", "zero"], ["b0"], axis=0),
             node("Unsqueeze", ["b0", "ax0"], ["b1"]), node("Concat", ["b1", "minus"], ["target"], axis=0),
             node("Reshape", ["x", "target"], ["f"]), node("MatMul", ["f", "W"], ["h"]), node("Relu", ["h"], ["r"]),
             node("Gemm", ["r", "V"], ["g"]), node("Add", ["g", "r"], ["s"]), node("Identity", ["s"], ["y"])],
            [1, 2, 3], [1, 4],
            {"zero": np.array(0, dtype=np.int64), "ax0": np.array([0], dtype=np.int64),
             "minus": np.array([-1], dtype=np.int64), "W": r(6, 4), "V": r(4, 4)}), (1, 2, 3)),
    }


@pytest.mark.parametrize("name", ["matmul_weight_first_784x1", "nhwc_transpose_conv_bn_norm",
                                  "pad_conv_pools_tanh", "shape_gather_reshape_residual"])
def test_quirky_graphs_match_onnxruntime(name, tmp_path):
    rng = np.random.default_rng(1)
    model, shape = _quirks(rng)[name]
    onnx.checker.check_model(model)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    net = refcert.load_onnx(path)
    inputs = rng.uniform(0, 1, (20,) + shape).astype(np.float32)
    assert _max_difference(net, _session(model), inputs) <= 1e-5
    if name == "nhwc_transpose_conv_bn_norm":   # the file's NHWC input, a Permute to NCHW, BN its own layer
        assert net.input_shape == (5, 5, 2)
        assert [layer.op for layer in net.layers] == ["permute", "normalize", "conv2d", "batchnorm", "relu"]
        assert net.layers[0].params["shape"] == (2, 5, 5)


def test_unsupported_operator_names_node(tmp_path):
    node = helper.make_node("Softmax", ["x"], ["y"], name="the_softmax")
    path = tmp_path / "s.onnx"
    path.write_bytes(_model([node], [1, 3], [1, 3], {}).SerializeToString())
    with pytest.raises(OnnxImportError, match="the_softmax.*Softmax"):
        refcert.load_onnx(path)
    path.write_bytes(b"not a model")
    with pytest.raises(OnnxImportError, match="s.onnx"):
        refcert.load_onnx(path)


@settings(max_examples=10)
@given(networks(), st.integers(0, 2**31))
def test_export_runs_in_onnxruntime_and_round_trips(tmp_path_factory, drawn, seed):
    net, shape = drawn
    folder = tmp_path_factory.mktemp("export")
    refcert.export_onnx(net, folder / "f32.onnx", input_shape=(1,) + shape)            # onnxruntime: float32
    refcert.export_onnx(net, folder / "f64.onnx", input_shape=(1,) + shape, dtype="float64")  # exact round trip
    x = np.random.default_rng(seed).uniform(-1, 1, (5,) + shape)
    expected = net(x).numpy()
    session = _session(str(folder / "f32.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]   # dynamic batch of 5
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    again = refcert.load_onnx(folder / "f64.onnx", dtype="float64")
    np.testing.assert_allclose(again(x).numpy(), expected, rtol=1e-10, atol=1e-12)


def test_permute_layers_export_and_import_exactly(tmp_path):
    """nn.Permute goes out as a Transpose (whole axes) or a Gather of the features, onnxruntime agrees, and
    load_onnx reads both back; a Gather that is not a permutation of the features is refused by name."""
    rng = np.random.default_rng(7)
    net = nn.Sequential(nn.Permute.transpose((5, 5, 2), (2, 0, 1)), nn.Conv2d(2, 3, 3, rng=rng), nn.ReLU(),
                        nn.Permute(rng.permutation(27), (3, 3, 3), (3, 3, 3)), nn.Conv2d(3, 2, 2, rng=rng), nn.Flatten(),
                        nn.Linear(8, 3, rng=rng))
    path = tmp_path / "p.onnx"
    refcert.export_onnx(net, path, input_shape=(1, 5, 5, 2))
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops[0] == "Transpose" and "Gather" in ops
    x = rng.uniform(0, 1, (4, 5, 5, 2)).astype(np.float32)
    session = _session(onnx.load(str(path)))
    ours = net(x).numpy()
    assert np.abs(session.run(None, {session.get_inputs()[0].name: x})[0] - ours).max() <= 1e-5
    loaded = refcert.load_onnx(path)
    assert loaded.input_shape == (5, 5, 2) and [layer.op for layer in loaded.layers].count("permute") == 2
    assert np.abs(loaded(x).numpy() - ours).max() <= 1e-5
    nodes = [helper.make_node("Gather", ["x", "i"], ["y"], axis=1, name="g")]
    bad = tmp_path / "g.onnx"
    bad.write_bytes(_model(nodes, [1, 3], [1, 2], {"i": np.array([0, 2], dtype=np.int64)}).SerializeToString())
    with pytest.raises(OnnxImportError, match="'g' \\(Gather\\).*permute all n features"):
        refcert.load_onnx(bad)


@pytest.mark.parametrize("index, shape, in_shape, message", [
    ([0, 0, 1], (3,), (3,), "permutation"), ([0, 1, 2], (2, 2), (3,), "shape"), ([0, 1, 2], (3,), (4,), "in_shape"),
    ([[0, 1]], (2,), (2,), "1-D integer"), ([0.0, 1.0], (2,), (2,), "1-D integer")])
def test_permute_refuses_what_is_not_a_rearrangement(index, shape, in_shape, message):
    with pytest.raises(ValueError, match=message):
        nn.Permute(index, shape, in_shape)


@pytest.mark.parametrize("domain", [None, "box", "deepzono", "deeppoly", "approxline"])
def test_permute_refuses_features_of_another_shape(domain):
    """An NHWC net (Permute from (H, W, C)) given NCHW images of the same size says so instead of
    rearranging the wrong features; as does an input of another size."""
    from refcert import domains
    net = nn.Sequential(nn.Permute.transpose((3, 3, 2), (2, 0, 1)), nn.Flatten(), nn.Linear(18, 2))
    for x in (np.zeros((1, 2, 3, 3)), np.zeros((1, 3, 3, 1))):
        element = x if domain is None else domains.get(domain).linf_ball(x, 0.1)
        with pytest.raises(ValueError, match=r"Permute takes features of shape \(3, 3, 2\)"):
            net(element)


def test_a_net_ending_in_a_permutation_has_a_class_count():
    """An ONNX file whose logits are reordered by a Gather loads as [..., Linear, Permute]; training and
    segment certification read the number of classes through the Permute (and a Flatten)."""
    from refcert import spec
    net = nn.Sequential(nn.Linear(4, 3), nn.Permute([2, 0, 1], (3,), (3,)), nn.Flatten())
    assert spec.output_size(net) == 3


def test_constant_mul_and_add_after_a_gemm_keep_their_own_rounding(tmp_path):
    """Gemm with bias 2^24, then Mul and Add (refcert's batch-norm export): onnxruntime rounds x + 2^24 to a
    multiple of 2, so folding the Mul/Add into the Gemm in float64 gives another float function, and verify
    answered 'unsat' where onnxruntime violates the property (adversarial review, issue 16).  The import now
    matches onnxruntime and verify finds the counterexample."""
    from refcert import nn
    from refcert.io.vnnlib import read_vnnlib
    from refcert.verify import verify
    linear = nn.Linear(1, 1, dtype="float32")
    linear.params["weight"].value[...] = 1.0
    linear.params["bias"].value[...] = 2.0 ** 24
    norm = nn.BatchNorm(1, dtype="float32")
    norm.params["running_var"].value[...] = 1.0 - 1e-5
    norm.params["running_mean"].value[...] = 2.0 ** 24
    refcert.export_onnx(nn.Sequential(linear, norm), tmp_path / "m.onnx", input_shape=(1, 1))
    net = refcert.load_onnx(tmp_path / "m.onnx")
    x = np.array([[0.0], [0.6], [1.2], [1.9]], np.float32)
    session = _session(str(tmp_path / "m.onnx"))
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert np.array_equal(net(x).numpy(), expected)  # 2.0 at 1.2, not 1.2
    (tmp_path / "p.vnnlib").write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 0.0))\n"
                                       "(assert (<= X_0 1.9))\n(assert (>= Y_0 1.95))\n")
    assert verify(net, read_vnnlib(tmp_path / "p.vnnlib"), timeout=20).status == "sat"
