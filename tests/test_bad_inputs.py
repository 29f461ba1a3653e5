"""Bad inputs get one clear line (issue 12): non-finite VNN-LIB constants name the file, line, constant and
variable; the ERAN CSV error says what a CLI user can do; a missing optional dependency of fuzz/approx is
named with its extra (no traceback); bad numeric options of verify/fuzz/approx are refused."""
import sys

import numpy as np
import pytest

from refcert.cli import main
from refcert.datasets.eran import EranFormatError, read_eran_csv
from refcert.io.vnnlib import VnnlibError, read_vnnlib

HEADER = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"


def _property(tmp_path, x_upper="1", y_bound="0"):
    path = tmp_path / "p.vnnlib"
    path.write_text(HEADER + f"(assert (>= X_0 0))\n(assert (<= X_0 {x_upper}))\n(assert (>= Y_0 {y_bound}))\n")
    return path


@pytest.mark.parametrize("constant, kind", [("nan", "NaN (not a number)"), ("NaN", "NaN (not a number)"),
                                            ("inf", "infinite"), ("-inf", "infinite"),
                                            ("1e999", "beyond the float64 range")])
@pytest.mark.parametrize("where", ["input", "output"])
def test_non_finite_constants_name_file_line_constant_and_variable(tmp_path, constant, kind, where):
    path = _property(tmp_path, **({"x_upper": constant} if where == "input" else {"y_bound": constant}))
    with pytest.raises(VnnlibError) as info:
        read_vnnlib(path)
    line, variable = ("4", "X_0") if where == "input" else ("5", "Y_0")
    message = str(info.value)
    assert f"{path}:{line}:" in message and repr(constant) in message and kind in message, message
    assert f"bound of {variable}" in message and "lack" not in message


def test_products_beyond_float64_and_missing_bounds_are_named(tmp_path):
    path = _property(tmp_path, x_upper="(* 1e300 1e300)")
    with pytest.raises(VnnlibError, match=r"p.vnnlib:4:.*X_0.*float64 range"):
        read_vnnlib(path)
    path.write_text(HEADER + "(assert (>= X_0 0))\n(assert (>= Y_0 0))\n")
    with pytest.raises(VnnlibError, match="X_0 lacks an upper bound"):
        read_vnnlib(path)


def _onnx_net(tmp_path):
    pytest.importorskip("onnx")
    from refcert import nn
    from refcert.io.onnx import export_onnx
    net = nn.Sequential(nn.Linear(1, 4, rng=np.random.default_rng(0)), nn.ReLU(),
                        nn.Linear(4, 1, rng=np.random.default_rng(1)))
    export_onnx(net, tmp_path / "net.onnx", input_shape=(1, 1))
    return str(tmp_path / "net.onnx")


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_cli_verify_refuses_a_nan_property_in_one_line(tmp_path, capsys):
    net = _onnx_net(tmp_path)
    prop = _property(tmp_path, y_bound="nan")
    assert main(["verify", net, str(prop)]) == 1
    _one_line_error(capsys, "p.vnnlib:5:", "'nan'", "NaN (not a number)", "Y_0")


def test_eran_csv_error_says_what_a_cli_user_can_do(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("1,0,0,0\n")
    with pytest.raises(EranFormatError) as info:
        read_eran_csv(path)
    message = str(info.value)
    assert "784" in message and "3072" in message and ".npz" in message and "x (N, C, H, W)" in message
    assert not message.endswith("pass shape=(C, H, W)")
    x, _ = read_eran_csv(path, shape=(3, 1, 1))  # the library still reads other sizes
    assert x.shape == (1, 3, 1, 1)


FUZZ = ["fuzz", "--verifier", "refcert", "--cases", "1", "--no-shrink", "--quiet", "--out"]


@pytest.mark.parametrize("family, missing, extra", [("net", ["scipy", "scipy.optimize"], "refcert[exact]"),
                                                    ("net", ["onnx"], "refcert[onnx]"),
                                                    ("fp", ["onnxruntime"], "refcert[onnx]")])
def test_fuzz_names_a_missing_dependency(tmp_path, capsys, monkeypatch, family, missing, extra):
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)
    assert main(FUZZ + [str(tmp_path / "out"), "--family", family]) == 1
    _one_line_error(capsys, f"'{missing[0]}'", extra)
    assert not (tmp_path / "out").exists()  # refused before any case


def test_fuzz_marabou_without_its_binary(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    argv = ["fuzz", "--verifier", "marabou", "--cases", "1", "--no-shrink", "--quiet", "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    _one_line_error(capsys, "Marabou executable", "refcert[fuzz]")


APPROX = ["approx", "--fn", "abs(x0 - 0.5)", "--lower", "0", "--upper", "1", "--delta", "0.2", "--lipschitz", "1"]


def test_approx_plot_without_matplotlib_fails_before_building(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "net.npz"
    assert main(APPROX + ["--out", str(out), "--plot", str(tmp_path / "p.png")]) == 1
    _one_line_error(capsys, "'matplotlib'", "refcert[plot]")
    assert not out.exists()


@pytest.mark.parametrize("argv, needle", [
    (FUZZ[:4] + ["-3", "--out", "o"], "--cases"), (FUZZ + ["o", "--timeout", "nan"], "--timeout"),
    (FUZZ + ["o", "--timeout", "-1"], "--timeout"), (FUZZ + ["o", "--timeout", "inf"], "--timeout"),
    (FUZZ + ["o", "--seed", "-1"], "--seed"),
    (["verify", "n.onnx", "p.vnnlib", "--timeout", "nan"], "--timeout"),
    (["verify", "n.onnx", "p.vnnlib", "--seed", "-2"], "--seed"),
    (APPROX[:-4] + ["--delta", "nan", "--lipschitz", "1", "--out", "n.npz"], "delta"),
    (APPROX[:-2] + ["--lipschitz", "-1", "--out", "n.npz"], "lipschitz"),
    (APPROX + ["--out", "n.npz", "--max-neurons", "-5"], "--max-neurons"),
    (APPROX + ["--out", "n.npz", "--max-mib", "nan"], "--max-mib"),
])
def test_bad_numeric_options_are_refused(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    _one_line_error(capsys, needle)
    assert not (tmp_path / "o").exists() and not (tmp_path / "n.npz").exists()
