"""``refcert verify``: never unsat on a violated property, sat only with a checked point, complete mode
agrees with the exact MILP, the CLI writes VNN-COMP result files, timeouts and mismatches are reported."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from refcert import nn
from refcert.autodiff import no_grad
from refcert.cli import main
from refcert.exact import ExactUndecided, exact_bounds, find_violation
from refcert.io.vnnlib import read_result, read_vnnlib, write_vnnlib
from refcert.verify import verify
from tests.conftest import shared_file
from tests.strategies import input_boxes, networks

QUICK = {"domains": ("box", "deeppoly"), "attack_steps": 20, "restarts": 3}


def _outputs(net, x):
    with no_grad():
        y = net(np.asarray(x, dtype=np.float64)).numpy()
    return y.reshape(y.shape[0], -1)


def _assert_counterexample(net, outcome, lower, upper, C, d):
    """The reported point lies in the box (VNN-LIB order) and violates on a fresh float64 pass."""
    assert outcome.x is not None and outcome.y is not None
    assert np.all(outcome.x >= lower) and np.all(outcome.x <= upper), "counterexample outside the box"
    x = outcome.x
    y = _outputs(net, x.reshape((1,) + tuple(getattr(net, "input_shape", x.shape))))[0]
    assert np.all(C @ y <= d), f"reported point does not violate: C y - d = {C @ y - d}"
    assert np.allclose(outcome.y, y, rtol=1e-4, atol=1e-4)


@settings(max_examples=25)
@given(networks(max_depth=3), st.data(), st.integers(1, 3), st.booleans())
def test_violated_property_is_never_unsat(drawn, data, rows, permuted):
    """The property is built from a concrete point's output, so a counterexample exists."""
    net, shape = drawn
    lower, upper = (a[0].reshape(-1) for a in data.draw(input_boxes(shape, max_batch=1)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    if permuted:  # the file's input order differs from the layers' (as after an NHWC ONNX input)
        net = nn.Sequential(nn.Permute(rng.permutation(lower.size), shape, shape), *net.layers)
    x0 = lower + (upper - lower) * rng.uniform(size=lower.shape)
    y0 = _outputs(net, x0.reshape((1,) + shape))[0]
    C = rng.normal(size=(rows, y0.size))
    d = C @ y0 + data.draw(st.sampled_from([0.0, 1e-3, 0.5]))
    outcome = verify(net, [(lower, upper, [(C, d)])], input_shape=shape, **QUICK)
    assert outcome.status in ("sat", "unknown"), outcome
    if outcome.status == "sat":
        net.input_shape = shape
        _assert_counterexample(net, outcome, lower, upper, C, d)


@settings(max_examples=15)
@given(networks(image=False, activations=("relu",), max_depth=3), st.data(),
       st.sampled_from([-0.3, -0.02, 0.02, 0.3]))
def test_complete_mode_agrees_with_find_violation(drawn, data, offset):
    """complete=True says sat exactly when the MILP finds a violation, unsat exactly when it proves none."""
    net, shape = drawn
    lower, upper = data.draw(input_boxes(shape, max_batch=1))
    lo, hi, _, _ = exact_bounds(net, lower, upper)
    lo, hi = lo.reshape(-1), hi.reshape(-1)
    j = data.draw(st.integers(0, lo.size - 1))
    sign = data.draw(st.sampled_from([1.0, -1.0]))  # unsafe: y_j <= d  or  -y_j <= d
    C = np.zeros((1, lo.size))
    C[0, j] = sign
    extreme = lo[j] if sign > 0 else -hi[j]
    d = np.array([extreme + offset * (hi[j] - lo[j] + 1e-2)])
    try:
        expected = find_violation(net, lower, upper, C, d)
    except ExactUndecided:
        assume(False)
    outcome = verify(net, [(lower[0], upper[0], [(C, d)])], complete=True, **QUICK)
    assert outcome.status == ("unsat" if expected is None else "sat"), outcome
    assert (offset > 0) == (expected is not None)
    if outcome.status == "sat":
        _assert_counterexample(net, outcome, lower[0], upper[0], C, d)


def test_property_that_holds_by_construction_is_unsat():
    """Unsafe set: some y_j above its exact maximum plus a margin, or below its exact minimum minus one."""
    net = nn.Sequential(nn.Linear(3, 8, rng=np.random.default_rng(1), dtype="float64"), nn.ReLU(),
                        nn.Linear(8, 8, rng=np.random.default_rng(2), dtype="float64"), nn.ReLU(),
                        nn.Linear(8, 2, rng=np.random.default_rng(3), dtype="float64"))
    lower, upper = -np.ones((1, 3)), np.ones((1, 3))
    lo, hi, _, _ = exact_bounds(net, lower, upper)
    specs = [(-np.eye(2)[[j]], -np.array([hi[0, j] + 1e-3])) for j in range(2)]
    specs += [(np.eye(2)[[j]], np.array([lo[0, j] - 1e-3])) for j in range(2)]
    disjuncts = [(lower[0], upper[0], specs)]
    assert verify(net, disjuncts, complete=True).status == "unsat"
    assert verify(net, disjuncts).status in ("unsat", "unknown")
    degenerate = [(np.zeros(3), np.zeros(3), specs)]  # a single point: the domains are exact there
    assert verify(net, degenerate).status == "unsat"
    empty = [(np.ones(3), np.zeros(3), [(np.eye(2)[[0]], np.array([1e9]))])]
    assert verify(net, empty).proved_by == {"empty box": 1}


def test_violation_only_by_float64_rounding_is_not_sat():
    """y = x + 0.1 on the point box x = 0 with unsafe set y <= 0.1: violated in float64 (equality) but
    not by the float32 net (float32(0.1) > 0.1), which is what a VNN-COMP checker runs."""
    net = nn.Sequential(nn.Linear(1, 1, dtype="float64"))
    net.layers[0].params["weight"].value[...] = 1.0
    net.layers[0].params["bias"].value[...] = 0.1
    disjuncts = [(np.zeros(1), np.zeros(1), [(np.ones((1, 1)), np.array([0.1]))])]
    for complete in (False, True):
        assert verify(net, disjuncts, complete=complete, execution="float32").status == "unknown"
    assert verify(net, disjuncts, execution="float64").status == "sat"  # the float64 execution does violate


def test_tiny_timeout_gives_timeout_not_a_verdict():
    net = nn.Sequential(nn.Linear(4, 32, rng=np.random.default_rng(0), dtype="float64"), nn.ReLU(),
                        nn.Linear(32, 2, rng=np.random.default_rng(1), dtype="float64"))
    y_centre = _outputs(net, np.zeros((1, 4)))[0]
    C, d = np.array([[1.0, 0.0]]), np.array([y_centre[0] - 1e-6])  # the centre does not violate
    assert verify(net, [(-np.ones(4), np.ones(4), [(C, d)])], timeout=0.0).status == "timeout"


def _small_problem(tmp_path, violated: bool):
    from refcert.io.onnx import export_onnx
    net = nn.Sequential(nn.Linear(4, 16, rng=np.random.default_rng(5)), nn.ReLU(),
                        nn.Linear(16, 3, rng=np.random.default_rng(6)))
    export_onnx(net, tmp_path / "net.onnx", input_shape=(1, 4))
    lower, upper = np.full(4, -0.5), np.full(4, 0.5)
    y0 = _outputs(net.astype("float64"), np.full((1, 4), 0.2))[0]
    C = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    d = C @ y0 + (0.05 if violated else -100.0)
    write_vnnlib(tmp_path / "prop.vnnlib", [(lower, upper, [(C, d)])])
    return lower, upper, C, d


@pytest.mark.parametrize("violated", [True, False])
def test_cli_writes_a_result_that_reads_back(tmp_path, capsys, violated):
    ort = pytest.importorskip("onnxruntime")
    lower, upper, C, d = _small_problem(tmp_path, violated)
    result = tmp_path / "out.txt"
    code = main(["verify", str(tmp_path / "net.onnx"), str(tmp_path / "prop.vnnlib"), "--complete",
                 "--result", str(result), "--timeout", "60"])
    assert code == 0
    status, x, y = read_result(result)
    assert status == ("sat" if violated else "unsat")
    assert capsys.readouterr().out.splitlines()[0] == status
    if violated:  # the VNN-COMP check: inside the box, onnxruntime (float32) output violates, y matches
        assert np.all(x >= lower) and np.all(x <= upper)
        session = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
        y_ort = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)[None]})[0][0]
        assert np.all(C @ y_ort.astype(np.float64) <= d)
        assert np.allclose(y, y_ort, rtol=1e-5, atol=1e-5)


def test_cli_reports_mismatched_counts(tmp_path, capsys):
    _small_problem(tmp_path, True)
    write_vnnlib(tmp_path / "wide.vnnlib", [(np.zeros(5), np.ones(5), [(np.ones((1, 3)), np.zeros(1))])])
    assert main(["verify", str(tmp_path / "net.onnx"), str(tmp_path / "wide.vnnlib")]) == 1
    err = capsys.readouterr().err
    assert "5 inputs" in err and "takes 4" in err and "wide.vnnlib" in err and "net.onnx" in err
    write_vnnlib(tmp_path / "outs.vnnlib", [(np.zeros(4), np.ones(4), [(np.ones((1, 7)), np.zeros(1))])])
    assert main(["verify", str(tmp_path / "net.onnx"), str(tmp_path / "outs.vnnlib")]) == 1
    err = capsys.readouterr().err
    assert "7 outputs" in err and "has 3" in err
    assert main(["verify", str(tmp_path / "net.onnx"), str(tmp_path / "missing.vnnlib")]) == 1


def test_shared_vnncomp_property(tmp_path):
    """mnistfc prop_0 (eps 0.03) on mnist-net_256x2 is unsat (VNN-COMP 2021): never sat here.  A sat
    variant (on a wider box, a margin some corner reaches but the centre does not) gives a point that
    passes onnxruntime's float32 check."""
    ort = pytest.importorskip("onnxruntime")
    prop = shared_file("networks/vnncomp2021__mnistfc_prop_0_0.03.vnnlib")
    onnx_path = shared_file("networks/vnncomp2021__mnist-net_256x2.onnx")
    from refcert.io.onnx import load_onnx
    net = load_onnx(onnx_path, dtype="float64")
    disjuncts = read_vnnlib(prop)
    outcome = verify(net, disjuncts, domains=("deeppoly",), timeout=20, attack_steps=10, restarts=2)
    assert outcome.status in ("unknown", "unsat", "timeout") and outcome.proved_by.get("deeppoly", 0) >= 1
    lower, upper, _ = disjuncts[0]
    lower, upper = np.clip((lower + upper) / 2 - 0.1, 0, 1), np.clip((lower + upper) / 2 + 0.1, 0, 1)
    corners = np.where(np.random.default_rng(0).integers(0, 2, (64,) + lower.shape) == 1, upper, lower)
    margins = _outputs(net, corners.reshape((-1,) + net.input_shape))
    margins = margins[:, 8:9] - margins  # (corners, 10): y_8 - y_j
    centre = _outputs(net, ((lower + upper) / 2).reshape((1,) + net.input_shape))[0]
    drop = (centre[8] - centre) - margins.min(axis=0)
    drop[8] = -np.inf
    j = int(np.argmax(drop))  # the class j whose margin y_8 - y_j some corner lowers most
    assert drop[j] > 0
    C = (np.eye(10)[8] - np.eye(10)[j])[None]  # unsafe: y_8 - y_j <= halfway between centre and corner
    d = np.array([margins[:, j].min() + drop[j] / 2])
    write_vnnlib(tmp_path / "wide.vnnlib", [(lower, upper, [(C, d)])])
    result = tmp_path / "wide.txt"
    assert main(["verify", str(onnx_path), str(tmp_path / "wide.vnnlib"), "--domain", "box",
                 "--timeout", "30", "--result", str(result)]) == 0
    status, x, y = read_result(result)
    assert status == "sat"
    assert np.all(x >= lower) and np.all(x <= upper)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    y_ort = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32).reshape(net.onnx_input_shape)})[0]
    assert np.all(C @ y_ort.reshape(-1).astype(np.float64) <= d)
