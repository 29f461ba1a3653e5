"""ONNX graphs whose input has no batch axis (issue 13, item 6): a 1-D input [N] is one sample of N features,
as in VNN-COMP 2021's test_nano / test_tiny (``MatMul(W, x)`` on [N]).  They load, agree with onnxruntime,
and ``refcert verify`` decides properties on them (onnxruntime re-checks a counterexample in the file's shape)."""
import numpy as np
import pytest

from refcert.cli import main
from refcert.io.onnx import OnnxImportError, load_onnx
from refcert.io.vnnlib import read_result

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, input_shape, output_shape, initializers):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
                              [numpy_helper.from_array(np.asarray(v, dtype=np.float32 if np.asarray(v).dtype.kind == "f"
                                                                  else np.asarray(v).dtype), k)
                               for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _tiny(W1, b1, W2, b2):
    """test_tiny's form: y = W2 @ relu(W1 @ x + b1) + b2 on x of shape [n] (no batch axis)."""
    nodes = [helper.make_node("MatMul", ["W1", "x"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["W2", "r"], ["m2"]),
             helper.make_node("Add", ["m2", "b2"], ["y"])]
    return _model(nodes, [W1.shape[1]], [W2.shape[0]], {"W1": W1, "b1": b1, "W2": W2, "b2": b2})


def _nano(W):
    """test_nano's form: y = relu(x @ W) on x of shape [n]."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    return _model(nodes, [W.shape[0]], [W.shape[1]], {"W": W})


def _reshaping(W):
    """x [6] -> Reshape [2, 3] -> @ W (3, 4) -> Relu -> Reshape [-1] -> Sigmoid: [8]."""
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["a"]), helper.make_node("MatMul", ["a", "W"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]), helper.make_node("Reshape", ["c", "s2"], ["d"]),
             helper.make_node("Sigmoid", ["d"], ["y"])]
    return _model(nodes, [6], [8], {"W": W, "s1": np.array([2, 3], dtype=np.int64), "s2": np.array([-1], dtype=np.int64)})


def _save(tmp_path, model, name="net.onnx"):
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _agrees(path, n_in, n_out, rng):
    net = load_onnx(path, dtype="float64")
    assert net.input_shape == (n_in,) and net.onnx_input_shape == (n_in,) and net.onnx_output_shape == (n_out,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in rng.uniform(-2, 2, (20, n_in)).astype(np.float32):
        expected = session.run(None, {"x": x})[0]           # the file's own shape: [n_in] in, [n_out] out
        assert expected.shape == (n_out,)
        got = net(x.astype(np.float64)[None]).numpy()        # refcert: one sample of n_in features
        assert got.shape == (1, n_out)
        np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["tiny", "nano", "reshape"])
def test_one_axis_input_matches_onnxruntime(tmp_path, form):
    rng = np.random.default_rng({"tiny": 1, "nano": 2, "reshape": 3}[form])
    if form == "tiny":
        model, n_in, n_out = _tiny(rng.normal(size=(5, 3)), rng.normal(size=5), rng.normal(size=(2, 5)),
                                   rng.normal(size=2)), 3, 2
    elif form == "nano":
        model, n_in, n_out = _nano(rng.normal(size=(4, 3))), 4, 3
    else:
        model, n_in, n_out = _reshaping(rng.normal(size=(3, 4))), 6, 8
    _agrees(_save(tmp_path, model), n_in, n_out, rng)


def test_test_tiny_shape_one_by_one(tmp_path):
    """The shared file's exact form: [1] in, 1x1 weights, [1] out (an N=1 axis is not taken for a batch)."""
    model = _tiny(np.array([[2.0]]), np.array([-0.5]), np.array([[-1.5]]), np.array([0.25]))
    _agrees(_save(tmp_path, model), 1, 1, np.random.default_rng(4))


@pytest.mark.parametrize("case", ["flatten", "symbolic", "broadcast"])
def test_what_needs_a_batch_axis_is_refused_clearly(tmp_path, case):
    if case == "flatten":  # Flatten(axis=1) of a 1-D tensor reads axis positions: refused, naming the node
        model = _model([helper.make_node("Flatten", ["x"], ["y"], name="fl")], [4], [1, 4], {})
        words = ["'fl'", "Flatten", "batch axis"]
    elif case == "symbolic":  # one axis of unknown length: a batch of scalars or one sample? refused
        model = _model([helper.make_node("Relu", ["x"], ["y"])], ["n"], ["n"], {})
        words = ["expected a batch axis"]
    else:  # a constant that adds an axis would make the output 2-D: refused rather than misread
        model = _model([helper.make_node("Add", ["x", "c"], ["y"], name="add")], [3], [1, 3],
                       {"c": np.ones((1, 3))})
        words = ["'add'", "no batch axis"]
    with pytest.raises(OnnxImportError) as err:
        load_onnx(_save(tmp_path, model))
    assert all(word in str(err.value) for word in words), str(err.value)


def _property(path, bound, sense):
    """X in [-1, 1]^2, unsafe set Y_0 `sense` bound."""
    lines = ["(declare-const X_0 Real)", "(declare-const X_1 Real)", "(declare-const Y_0 Real)",
             "(declare-const Y_1 Real)"]
    lines += [f"(assert ({op} X_{i} {v}))" for i in range(2) for op, v in ((">=", -1), ("<=", 1))]
    lines.append(f"(assert ({sense} Y_0 {bound}))")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("bound, sense, answer", [(2.5, ">=", "sat"), (3.5, ">=", "unsat"), (-0.1, "<=", "unsat")])
def test_cli_verify_on_one_axis_net(tmp_path, capsys, bound, sense, answer):
    """y0 = relu(x0 + 0.5) + relu(x1 + 0.5) takes values [0, 3] on [-1, 1]^2: Y_0 >= 2.5 is reachable
    (x near (1, 1)), Y_0 >= 3.5 and Y_0 <= -0.1 are not."""
    model = _tiny(np.eye(2), np.full(2, 0.5), np.array([[1.0, 1.0], [1.0, -1.0]]), np.zeros(2))
    net_path = _save(tmp_path, model)
    prop = _property(tmp_path / "prop.vnnlib", bound, sense)
    result = tmp_path / "result.txt"
    code = main(["verify", str(net_path), str(prop), "--timeout", "60", "--result", str(result)])
    out = capsys.readouterr().out.split()
    assert code == 0 and out[0] == answer
    status, x, y = read_result(result)
    assert status == answer
    if answer == "sat":  # the VNN-COMP check: the file itself, fed the file's shape [2], violates at x
        assert np.all(np.abs(x) <= 1)
        session = ort.InferenceSession(str(net_path), providers=["CPUExecutionProvider"])
        y_ort = session.run(None, {"x": x.astype(np.float32)})[0]
        assert y_ort.shape == (2,) and y_ort[0] >= bound
        np.testing.assert_allclose(y, y_ort, rtol=1e-6, atol=1e-6)
