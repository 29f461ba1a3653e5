"""refcert fuzz: reproducible cases, faithful quirky ONNX files, right answers, and planted verifier bugs
that the runner must catch (unsound, bad counterexample, crash), plus shrinking."""
from __future__ import annotations

import os
import shutil
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest

from refcert.exact import find_violation
from refcert.fuzz import adapters, cases as fc, quirks as q, runner
from refcert.io.onnx import load_onnx, to_refcert_input

pytest.importorskip("onnxruntime")


def _files(case, directory):
    paths = runner.write_case(case, str(directory))
    return {k: open(p, "rb").read() for k, p in paths.items()}


def test_same_seed_same_files_different_seed_different(tmp_path):
    for index in range(3):
        a = _files(fc.make_case(7, index), tmp_path / "a")
        b = _files(fc.make_case(7, index), tmp_path / "b")
        assert a == b
    c = _files(fc.make_case(8, 0), tmp_path / "c")
    assert c["net.onnx"] != _files(fc.make_case(7, 0), tmp_path / "d")["net.onnx"]


def _quirky_specs():
    """Every quirk alone, with and without a residual block, and all compatible quirks together, on
    flat and image inputs (maxpool / sigmoid on some)."""
    specs = []
    for i, (quirks, image) in enumerate([(("sub_div",), False), (("sub_div",), True), (("final_relu",), False),
                                         (("final_relu",), True), (("matmul_first",), False), (("nhwc",), True),
                                         (("reshape",), True), (("final_relu", "matmul_first", "sub_div"), False),
                                         (("final_relu", "nhwc", "reshape", "sub_div"), True)]):
        for residual in (False, True):
            spec = fc.random_spec(100 + image, i)
            shape = ((1, 4, 4) if i % 2 else (2, 5, 5)) if image else (3 + i,)
            specs.append(replace(spec, input_shape=shape, conv_channels=2 if image else 0, quirks=quirks,
                                 residual=residual, maxpool=image and residual, prop="lower",
                                 activation="sigmoid" if i == 3 else "relu"))
    return specs


@pytest.mark.parametrize("spec", _quirky_specs(), ids=lambda s: "+".join(s.quirks) + f"-{len(s.input_shape)}d" + "-res" * s.residual)
def test_quirky_onnx_computes_the_case_net(spec):
    net = fc.build_net(spec)
    model = q.onnx_bytes(net, spec.input_shape, spec.quirks)
    rng = np.random.default_rng(0)
    n = int(np.prod(spec.input_shape))
    x = rng.random((6, n)).astype(np.float32).astype(np.float64)
    expected = fc._outputs(net, x.reshape((-1,) + spec.input_shape))
    x_onnx = q.to_onnx_order(x, spec.input_shape, spec.quirks)
    np.testing.assert_allclose(q.to_refcert_order(x_onnx, spec.input_shape, spec.quirks), x)
    got = q.run_onnxruntime(model, x_onnx, spec.input_shape, spec.quirks)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # refcert's own importer reads the quirky file as the same function
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"fuzz-quirk-{os.getpid()}.onnx")
    with open(path, "wb") as stream:
        stream.write(model)
    try:
        loaded = load_onnx(path, dtype="float64")
    finally:
        os.remove(path)
    x_declared = x_onnx.reshape((-1,) + q.declared_input_shape(spec.input_shape, spec.quirks)[1:])
    y = loaded(to_refcert_input(loaded, x_declared)).numpy().reshape(len(x), -1)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_known_answers_are_right_and_balanced():
    answers = []
    for index in range(10):
        case = fc.make_case(2, index)
        answers.append(case.answer)
        box = (case.lower.reshape((1,) + case.spec.input_shape), case.upper.reshape((1,) + case.spec.input_shape))
        if case.answer == "sat":
            assert np.all(case.witness >= case.lower) and np.all(case.witness <= case.upper)
            assert fc.violation(case, case.witness, False) < 0      # float64 refcert net
            assert fc.violation(case, case.witness, True) < 0       # float32 onnxruntime on the file
            assert runner.check_counterexample(case, q.to_onnx_order(case.witness, case.spec.input_shape,
                                                                     case.spec.quirks)) == ""
        elif case.answer == "unsat":
            assert all(find_violation(case.net, *box, C, d) is None for C, d in case.disjuncts)
    assert answers.count("sat") >= 2 and answers.count("unsat") >= 2


def _script(tmp_path, name, body):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return adapters.CommandAdapter(f"{sys.executable} {path} {{onnx}} {{vnnlib}} {{result}} {{timeout}}")


ALWAYS_UNSAT = """
    import sys
    open(sys.argv[3], "w").write("unsat\\n")
"""

# a plausible bug: a complete verifier (the MILP oracle) that analyses only the inner half of the box
HALF_BOX = """
    import sys
    import numpy as np
    from refcert.exact import find_violation
    from refcert.io.onnx import OnnxImportError, load_onnx, to_refcert_input
    from refcert.io.vnnlib import read_vnnlib, write_result
    net = load_onnx(sys.argv[1], dtype="float64")
    status = "unsat"
    for lower, upper, specs in read_vnnlib(sys.argv[2]):
        mid, half = (lower + upper) / 2, (upper - lower) / 4          # BUG: radius halved
        shape = (1,) + tuple(net.onnx_input_shape[1:])
        lo = to_refcert_input(net, (mid - half).reshape(shape))
        hi = to_refcert_input(net, (mid + half).reshape(shape))
        for C, d in specs:
            x = find_violation(net, lo, hi, C, d)
            if x is not None:
                status = "sat"
    write_result(sys.argv[3], "unknown" if status == "sat" else status)
"""

LOWER_CORNER = """
    import sys
    from refcert.io.vnnlib import read_vnnlib, write_result
    lower, upper, specs = read_vnnlib(sys.argv[2])[0]
    write_result(sys.argv[3], "sat", lower, [0.0] * specs[0][0].shape[1])
"""

CRASH = """
    import sys
    sys.exit("planted crash")
"""


def test_always_unsat_verifier_is_caught_and_shrunk(tmp_path):
    adapter = _script(tmp_path, "always_unsat", ALWAYS_UNSAT)
    rows = runner.campaign(adapter, 6, 1, str(tmp_path / "out"), timeout=5, do_shrink=False, log=lambda _: None)
    assert any(r["class"] == "unsound" for r in rows)
    assert all(r["class"] in ("unsound", "correct", "unjudged") for r in rows)
    assert os.path.isfile(tmp_path / "out" / "summary.csv")
    case = next(fc.make_case(1, r["case"] - 1) for r in rows if r["class"] == "unsound")
    small = runner.shrink(case, "unsound", adapter, 5, str(tmp_path / "shrunk"), max_runs=8)
    assert small.size() <= case.size() and small.answer == "sat"
    assert runner.run_case(small, str(tmp_path / "again"), adapter, 5)[0] == "unsound"


def test_half_box_verifier_is_caught(tmp_path):
    adapter = _script(tmp_path, "half_box", HALF_BOX)
    rows = runner.campaign(adapter, 5, 1, str(tmp_path / "out"), timeout=20, do_shrink=False, log=print)
    assert sum(r["class"] == "unsound" for r in rows) >= 1
    assert not any(r["class"] in ("bad-counterexample", "crash") for r in rows), rows


def test_wrong_counterexample_and_crash_are_classified(tmp_path, monkeypatch):
    rows = runner.campaign(_script(tmp_path, "corner", LOWER_CORNER), 6, 1, str(tmp_path / "a"), timeout=5,
                           do_shrink=False, log=lambda _: None)
    assert any(r["class"] == "bad-counterexample" for r in rows)
    assert not any(r["class"] in ("unsound", "crash") for r in rows)
    rows = runner.campaign(_script(tmp_path, "crash", CRASH), 2, 1, str(tmp_path / "b"), timeout=5,
                           do_shrink=False, log=lambda _: None)
    assert [r["class"] for r in rows] == ["crash", "crash"] and "planted crash" in rows[0]["detail"]
    monkeypatch.setattr(adapters, "GRACE", 0.2)
    slow = _script(tmp_path, "slow", "import time; time.sleep(30)\n")
    assert runner.campaign(slow, 1, 1, str(tmp_path / "c"), timeout=0.5, do_shrink=False,
                           log=lambda _: None)[0]["class"] == "crash"


def test_parse_marabou_output():
    out = "Network: a\nProperty: b\n\nsat\nInput assignment:\n\tx0 = -0.000000\n\tx1 = 0.250000\n\nOutput:\n\ty0 = 1.5\n"
    status, x, y = adapters.parse_marabou(out)
    assert status == "sat" and x.tolist() == [0.0, 0.25] and y.tolist() == [1.5]
    assert adapters.parse_marabou("Network: a\n\nunsat\n")[0] == "unsat"
    assert adapters.parse_marabou("TIMEOUT\n")[0] == "timeout"
    assert adapters.parse_marabou("Caught a MarabouError\n")[0] is None


@pytest.mark.skipif(shutil.which("Marabou") is None, reason="Marabou is not installed")
def test_marabou_parses_every_answer_on_plain_nets(tmp_path):
    adapter = adapters.MarabouAdapter()
    for index in range(8):
        spec = replace(fc.random_spec(5, index), quirks=(), activation="relu", residual=False,
                       prop=("lower", "upper", "robust")[index % 3])
        case = fc.build(spec)
        cls, detail, outcome = runner.run_case(case, str(tmp_path / f"c{index}"), adapter, timeout=10)
        assert cls in ("correct", "incomplete", "unjudged"), (index, cls, detail)
        assert outcome.status in ("sat", "unsat", "unknown", "timeout")


@pytest.mark.skipif("verify" not in __import__("refcert.cli").cli.COMMANDS, reason="refcert verify not registered")
def test_refcert_verify_is_sound_on_a_small_campaign(tmp_path):
    rows = runner.campaign(adapters.refcert_adapter(), 6, 3, str(tmp_path), timeout=20, do_shrink=False,
                           log=lambda _: None)
    assert not any(r["class"] in ("unsound", "bad-counterexample") for r in rows), rows


def test_cli_exit_code_and_bad_template(tmp_path, capsys):
    from refcert.cli import main
    script = tmp_path / "always_unsat.py"
    script.write_text(textwrap.dedent(ALWAYS_UNSAT))
    verifier = f"{sys.executable} {script} {{onnx}} {{vnnlib}} {{result}}"
    assert main(["fuzz", "--verifier", verifier, "--cases", "2", "--seed", "1", "--out", str(tmp_path / "o"),
                 "--no-shrink", "--quiet"]) == 1
    assert "| 2 |" in capsys.readouterr().out
    assert main(["fuzz", "--verifier", "echo {onnx}", "--out", str(tmp_path / "p")]) == 1
    assert "{result}" in capsys.readouterr().err
