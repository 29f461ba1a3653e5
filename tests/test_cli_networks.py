"""Networks in the CLI (issue 12): ``--net`` takes an .npz, an .onnx or a shipped name (``refcert.weights``),
told apart by content; ``refcert weights`` lists the shipped ones; bad options and a missing ``onnx``
package give one-line errors; certify accepts and lists only the domains that certify an L∞ ball."""
import json
import sys

import numpy as np
import pytest

import refcert
from refcert import cli, nn, weights
from refcert.certify import ball_domains
from refcert.io import read_network
from refcert.io.vnnlib import write_vnnlib


def _error(argv, capsys):
    """(exit code, stderr lines) of a CLI run."""
    code = cli.main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def _verdicts(path):
    report = json.loads(path.read_text())
    return {name: [e["verdict"] for e in result["inputs"]] for name, result in report["domains"].items()}


@pytest.fixture
def files(tmp_path):
    """A small conv net on 1x28x28 images as .npz and (if onnx is installed) .onnx, 6 images with labels."""
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.Normalize([0.1307], [0.3081]), nn.Conv2d(1, 4, 3, stride=2, rng=rng), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 13 * 13, 10, rng=rng))
    refcert.save(net, tmp_path / "net.npz")
    x = rng.uniform(0, 1, (6, 1, 28, 28)).astype(np.float32)
    y = net(x).numpy().argmax(-1)
    y[0] = (y[0] + 1) % 10  # one wrong label: falsified
    np.savez(tmp_path / "in.npz", x=x, y=y)
    try:
        refcert.export_onnx(net, tmp_path / "net.onnx", input_shape=(1, 1, 28, 28))
    except ModuleNotFoundError:
        pass
    return tmp_path


def _certify(net, files, out, *extra):
    return cli.main(["certify", "--net", str(net), "--inputs", str(files / "in.npz"), "--eps", "0.02",
                     "--domain", "box", "--domain", "deepzono", "--pgd-steps", "5", "--json", str(out), *extra])


# --- reading networks -------------------------------------------------------------------------------------

def test_certify_on_onnx_gives_the_npz_verdicts(files, capsys):
    """Problem 1: `certify --net model.onnx` answered with numpy's pickle message."""
    pytest.importorskip("onnx")
    assert _certify(files / "net.npz", files, files / "npz.json") == 0
    assert _certify(files / "net.onnx", files, files / "onnx.json") == 0
    assert _verdicts(files / "npz.json") == _verdicts(files / "onnx.json")
    assert "falsified" in _verdicts(files / "onnx.json")["box"]


def test_network_files_are_told_apart_by_content(files):
    pytest.importorskip("onnx")
    (files / "model.bin").write_bytes((files / "net.onnx").read_bytes())   # ONNX without the extension
    (files / "saved.data").write_bytes((files / "net.npz").read_bytes())   # .npz without the extension
    x = np.random.default_rng(1).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)
    expected = refcert.load(files / "net.npz")(x).numpy()
    for name in ("model.bin", "saved.data", "net.onnx"):
        net = read_network(files / name)
        assert nn.parameter_dtype(net) == "float32"
        np.testing.assert_allclose(net(x).numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("content, message", [
    (b"label,pixels\n1,2,3\n", "not a network file"), (b"", "the file is empty"),
    (None, "no architecture record"), ("missing", "no such network file, nor the name of a shipped network"),
])
def test_bad_network_files_give_one_line_errors(files, capsys, content, message):
    path = files / "bad.npz"
    if content is None:
        np.savez(path, x=np.zeros(3))  # a data .npz, not a model
    elif content != "missing":
        path.write_bytes(content)
    code, err = _error(["certify", "--net", str(path), "--inputs", str(files / "in.npz"), "--eps", "0.1"], capsys)
    assert code == 1 and len(err) == 1 and message in err[0] and str(path) in err[0], err
    if content == "missing":
        assert all(name in err[0] for name in weights.names())


def test_certify_a_shipped_network_by_name(capsys):
    name = "convsmall_mnist_diffai_box_0.1"
    assert cli.main(["certify", "--net", name, "--inputs", "mnist-mini:test", "--n", "4", "--eps", "0.1",
                     "--domain", "box", "--no-attack"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("box")]
    assert rows and rows[0][1] == "4"


def test_verify_takes_npz_networks(tmp_path, capsys):
    """`refcert verify` on an .npz: a flat net reads the VNN-LIB inputs as they are, a conv net as (C, s, s)."""
    rng = np.random.default_rng(5)
    flat = nn.Sequential(nn.Linear(4, 16, rng=rng), nn.ReLU(), nn.Linear(16, 3, rng=rng))
    conv = nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3, rng=rng))
    for name, net, size in (("flat", flat, 4), ("conv", conv, 25)):
        refcert.save(net, tmp_path / f"{name}.npz")
        x0 = np.full(size, 0.2)
        y0 = net(x0.reshape((1, 1, 5, 5) if name == "conv" else (1, 4)).astype(np.float32)).numpy()[0]
        C = np.array([[1.0, -1.0, 0.0]])
        write_vnnlib(tmp_path / f"{name}.vnnlib", [(x0 - 0.01, x0 + 0.01, [(C, C @ y0 + 0.5)])])  # violated at x0
        assert cli.main(["verify", str(tmp_path / f"{name}.npz"), str(tmp_path / f"{name}.vnnlib")]) == 0
        assert capsys.readouterr().out.splitlines()[0] == "sat"
    write_vnnlib(tmp_path / "odd.vnnlib", [(np.zeros(24), np.ones(24), [(np.ones((1, 3)), np.zeros(1))])])
    code, err = _error(["verify", str(tmp_path / "conv.npz"), str(tmp_path / "odd.vnnlib")], capsys)
    assert code == 1 and len(err) == 1 and "cannot tell which input shape" in err[0] and "export_onnx" in err[0]


def test_certify_path_takes_an_onnx_classifier(tmp_path, capsys):
    pytest.importorskip("onnx")
    from tests.test_generative import _saved
    p = _saved(tmp_path)
    refcert.export_onnx(refcert.load(p["net"]), tmp_path / "net.onnx", input_shape=(1, 1, 2, 3), dtype="float64")
    reports = []
    for classifier in (p["net"], str(tmp_path / "net.onnx")):
        out = tmp_path / "paths.json"
        assert cli.main(["certify-path", "--encoder", p["enc"], "--decoder", p["dec"], "--classifier", classifier,
                         "--inputs", p["inputs"], "--pairs", "2", "--flip-pairs", "1", "--domain", "box",
                         "--json", str(out)]) == 0
        reports.append([path["domains"]["box"]["verdict"] for path in json.loads(out.read_text())["paths"]])
    assert reports[0] == reports[1]


# --- shipped weights ---------------------------------------------------------------------------------------

def test_weights_module_finds_the_shipped_networks():
    names = weights.names()
    assert "convsmall_mnist_diffai_box_0.1" in names
    manifest = json.loads((weights.FOLDER / "manifest.json").read_text())
    assert sorted(names) == sorted(file[:-4] for file in manifest)
    for name in names:
        assert weights.path(name).is_file() and weights.info(name) == manifest[f"{name}.npz"]
    x, _ = refcert.datasets.load("mnist-mini", "test")
    assert weights.load(names[0])(x[:2]).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown shipped network 'nosuch'.*convsmall_mnist_diffai_box_0.1"):
        weights.path("nosuch")


def test_weights_command_lists_and_locates(capsys):
    assert cli.main(["weights"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in weights.names()) and "clean" in out and "deeppoly" in out
    name = weights.names()[0]
    assert cli.main(["weights", "--path", name]) == 0
    assert capsys.readouterr().out.strip() == str(weights.path(name))
    assert cli.main(["weights", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in entries] == weights.names() and all("results" in e for e in entries)
    code, err = _error(["weights", "--path", "nosuch"], capsys)
    assert code == 1 and len(err) == 1 and name in err[0]


# --- options ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("domain, message", [("nosuch", "unknown domain 'nosuch'"),
                                             ("point", "cannot bound a box or L∞ ball"),
                                             ("exactline", "cannot bound a box or L∞ ball")])
def test_domain_errors_list_exactly_what_certify_accepts(files, capsys, domain, message):
    """Problem 3: the list named `point` and `exactline`, which certify refuses."""
    code, err = _error(["certify", "--net", str(files / "net.npz"), "--inputs", str(files / "in.npz"),
                        "--eps", "0.1", "--domain", domain], capsys)
    assert code == 1 and len(err) == 1 and message in err[0]
    listed = err[0].split("choose from ", 1)[1].split(", ")
    assert listed == ball_domains() and "point" not in listed and "exactline" not in listed
    code, err = _error(["verify", str(files / "net.npz"), str(files / "no.vnnlib"), "--domain", domain], capsys)
    assert code == 1 and len(err) == 1 and message in err[0]  # verify: the same list, before reading files
    assert err[0].split("choose from ", 1)[1].split(", ") == ball_domains()


@pytest.mark.parametrize("option, value, message", [
    ("--pgd-steps", "-5", "--pgd-steps must be >= 1"), ("--pgd-steps", "0", "--pgd-steps must be >= 1"),
    ("--batch-size", "0", "--batch-size must be >= 1"), ("--n", "0", "--n must be >= 1"),
    ("--eps", "nan", "--eps must be a finite number >= 0"), ("--eps", "inf", "--eps must be a finite number"),
    ("--eps", "-0.1", "--eps must be a finite number >= 0"),
])
def test_bad_numbers_are_refused_before_any_work(files, capsys, option, value, message):
    """Problem 4: `--pgd-steps -5` was accepted (with --no-attack, or when nothing was left to attack)."""
    args = ["certify", "--net", str(files / "net.npz"), "--inputs", str(files / "in.npz"), "--eps", "0.0",
            "--no-attack", option, value]
    code, err = _error(args, capsys)
    assert code == 1 and len(err) == 1 and message in err[0], err


# --- a missing onnx package ----------------------------------------------------------------------------

def test_missing_onnx_is_one_line_naming_the_extra(files, capsys, monkeypatch):
    """Problem 2: load_onnx's ImportError escaped the CLI as a traceback."""
    pytest.importorskip("onnx")
    write_vnnlib(files / "p.vnnlib", [(np.zeros(784), np.ones(784), [(np.eye(10)[:1], np.zeros(1))])])
    monkeypatch.setitem(sys.modules, "onnx", None)
    for argv in (["verify", str(files / "net.onnx"), str(files / "p.vnnlib")],
                 ["certify", "--net", str(files / "net.onnx"), "--inputs", str(files / "in.npz"), "--eps", "0.1"]):
        code, err = _error(argv, capsys)
        assert code == 1 and len(err) == 1 and "refcert[onnx]" in err[0], err
    with pytest.raises(ModuleNotFoundError, match=r"refcert\[onnx\]"):
        refcert.load_onnx(files / "net.onnx")


# --- NHWC files ---------------------------------------------------------------------------------------

def _nhwc_pair(tmp_path):
    """The same net as an NHWC file (Transpose to NCHW, then Conv) and as an NCHW file (no Transpose)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(3)
    consts = {"K": rng.normal(size=(3, 2, 3, 3)), "V": rng.normal(size=(4, 108)), "c": rng.normal(size=4)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()]
    body = [helper.make_node("Conv", ["t", "K"], ["h"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
            helper.make_node("Gemm", ["f", "V", "c"], ["y"], transB=1)]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]
    for name, shape, nodes in (("nhwc", [1, 6, 6, 2], [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2])]),
                               ("nchw", [1, 2, 6, 6], [helper.make_node("Identity", ["x"], ["t"])])):
        graph = helper.make_graph(nodes + body, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                                  out, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        onnx.checker.check_model(model)
        (tmp_path / f"{name}.onnx").write_bytes(model.SerializeToString())
    return tmp_path / "nhwc.onnx", tmp_path / "nchw.onnx"


def test_certify_reads_nchw_images_into_an_nhwc_file(tmp_path, capsys):
    """Images (N, C, H, W) go to an NHWC file transposed; verdicts are those of the same net in NCHW, and
    counterexamples come back in the inputs' layout (inside the ball around x)."""
    nhwc, nchw = _nhwc_pair(tmp_path)
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (8, 2, 6, 6)).astype(np.float32)
    y = refcert.load_onnx(nchw)(x).numpy().argmax(-1)
    y[:2] = (y[:2] + 1) % 4
    np.savez(tmp_path / "in.npz", x=x, y=y)
    refcert.save(refcert.load_onnx(nhwc), tmp_path / "nhwc_saved.npz")  # the .npz keeps the NHWC Permute
    for net in (nchw, nhwc, tmp_path / "nhwc_saved.npz"):
        assert cli.main(["certify", "--net", str(net), "--inputs", str(tmp_path / "in.npz"), "--eps", "0.05",
                         "--domain", "box", "--pgd-steps", "5", "--json", str(tmp_path / f"{net.stem}.json")]) == 0
    assert _verdicts(tmp_path / "nchw.json") == _verdicts(tmp_path / "nhwc.json") == \
        _verdicts(tmp_path / "nhwc_saved.json")
    entries = json.loads((tmp_path / "nhwc.json").read_text())["domains"]["box"]["inputs"]
    found = [(e["index"], np.array(e["counterexample"])) for e in entries if e["counterexample"] is not None]
    assert found
    for i, point in found:
        assert np.abs(point - x[i].reshape(-1)).max() <= 0.05 + 1e-6


def test_nhwc_file_net_takes_the_files_layout(tmp_path):
    """Problem 6: net(x) for x in the file's own layout equals onnxruntime's output on x (the input
    Transpose is an nn.Permute layer, which survives refcert.save / refcert.load)."""
    ort = pytest.importorskip("onnxruntime")
    nhwc, _ = _nhwc_pair(tmp_path)
    net = refcert.load_onnx(nhwc)
    x = np.random.default_rng(5).uniform(0, 1, (3, 6, 6, 2)).astype(np.float32)
    session = ort.InferenceSession(str(nhwc), providers=["CPUExecutionProvider"])
    expected = np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])  # batch 1 file
    np.testing.assert_allclose(net(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert net.input_shape == (6, 6, 2) and net.layers[0].op == "permute"
    refcert.save(net, tmp_path / "nhwc.npz")
    np.testing.assert_array_equal(refcert.load(tmp_path / "nhwc.npz")(x).numpy(), net(x).numpy())


def test_a_net_outside_float32s_normal_range_names_the_cli_option(files, tmp_path, capsys):
    """Weights below float32's smallest normal number (ERAN's convSmall has some): the error tells a CLI
    user the option to use, and the option works."""
    net = refcert.load(files / "net.npz")
    weight = net.layers[1].params["weight"]  # the Conv2d's
    weight.value = weight.value.copy()
    weight.value[0, 0, 0, 0] = np.float32(1e-40)
    refcert.save(net, tmp_path / "tiny.npz")
    args = ["certify", "--net", str(tmp_path / "tiny.npz"), "--inputs", str(files / "in.npz"), "--eps", "0.01",
            "--domain", "box", "--no-attack"]
    code, err = _error(args, capsys)
    assert code == 1 and len(err) == 1 and "smallest normal" in err[0] and "--execution float64" in err[0]
    assert cli.main(args + ["--execution", "float64"]) == 0
