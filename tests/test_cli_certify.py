"""`refcert certify` end to end (ERAN CSV and .npz inputs, table, JSON) and the ERAN CSV reader."""
import json

import numpy as np
import pytest

import refcert
from refcert import cli, nn
from refcert.certify import VERDICTS, ball_domains
from refcert.datasets.eran import EranFormatError, read_eran_csv
from tests.conftest import shared_file

SET_DOMAINS = ball_domains()
needs_domains = pytest.mark.skipif(not SET_DOMAINS, reason="no set domain registered yet")


def _write_csv(path, labels, pixels):
    path.write_text("".join(f"{t}," + ",".join(str(int(v)) for v in row) + "\n" for t, row in zip(labels, pixels)))
    return path


@pytest.fixture
def files(tmp_path):
    """A small MNIST-shaped net, 6 images as ERAN CSV and as .npz (the same images)."""
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.Normalize([0.1307], [0.3081]), nn.Flatten(), nn.Linear(784, 20, rng=rng), nn.ReLU(),
                        nn.Linear(20, 10, rng=rng))
    refcert.save(net, tmp_path / "net.npz")
    pixels = rng.integers(0, 256, (6, 784))
    labels = net(pixels.reshape(6, 1, 28, 28).astype(np.float32) / 255).numpy().argmax(-1)
    labels[0] = (labels[0] + 1) % 10  # one wrong label: must come out 'falsified'
    _write_csv(tmp_path / "in.csv", labels, pixels)
    np.savez(tmp_path / "in.npz", x=pixels.reshape(6, 1, 28, 28).astype(np.float32) / 255, y=labels)
    return tmp_path


@needs_domains
@pytest.mark.parametrize("inputs", ["in.csv", "in.npz"])
def test_cli_prints_table_and_writes_json(files, inputs, capsys):
    args = ["certify", "--net", str(files / "net.npz"), "--inputs", str(files / inputs), "--eps", "0.01",
            "--json", str(files / "out.json"), "--batch-size", "4", "--pgd-steps", "5"]
    for name in SET_DOMAINS:
        args += ["--domain", name]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in SET_DOMAINS]
    assert [row[0] for row in rows] == SET_DOMAINS and all(row[1] == "6" for row in rows)
    report = json.loads((files / "out.json").read_text())
    assert report["eps"] == 0.01 and list(report["domains"]) == SET_DOMAINS
    for name, result in report["domains"].items():
        entries = result["inputs"]
        assert len(entries) == 6 and all(e["verdict"] in VERDICTS for e in entries)
        assert entries[0]["verdict"] == "falsified" and entries[0]["predicted"] != entries[0]["label"]
        fractions = sum(result["summary"][v] for v in VERDICTS)
        assert fractions == pytest.approx(1.0)
        for e in entries:
            assert (e["counterexample"] is None) == (e["verdict"] != "falsified")
            if e["counterexample"] is not None:
                assert len(e["counterexample"]) == 784


def _main_error(args, capsys):
    code = cli.main(["certify"] + args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.mark.parametrize("case, message", [
    ("missing-net", "no such network file"), ("missing-inputs", "no such inputs file"),
    ("npz-without-y", "missing array"), ("wrong-shape", "expects 784 features"), ("negative-eps", "eps"),
    ("bad-label", "0..9"), ("unknown-domain", "unknown domain"), ("ragged-csv", "line 2"),
])
def test_cli_bad_inputs_give_one_line_errors(files, case, message, capsys):
    net, inputs, eps, domain = str(files / "net.npz"), str(files / "in.npz"), "0.1", (SET_DOMAINS or ["point"])[0]
    if case == "missing-net":
        net = str(files / "absent.npz")
    elif case == "missing-inputs":
        inputs = str(files / "absent.npz")
    elif case == "npz-without-y":
        np.savez(files / "x.npz", x=np.zeros((2, 1, 28, 28)))
        inputs = str(files / "x.npz")
    elif case == "wrong-shape":
        np.savez(files / "x.npz", x=np.zeros((2, 5)), y=np.zeros(2, int))
        inputs = str(files / "x.npz")
    elif case == "negative-eps":
        eps = "-0.5"
    elif case == "bad-label":
        np.savez(files / "x.npz", x=np.zeros((2, 1, 28, 28)), y=np.array([3, 12]))
        inputs = str(files / "x.npz")
    elif case == "unknown-domain":
        domain = "nonexistent"
    elif case == "ragged-csv":
        (files / "r.csv").write_text("1," + ",".join(["0"] * 784) + "\n2,0,0\n")
        inputs = str(files / "r.csv")
    code, line = _main_error(["--net", net, "--inputs", inputs, "--eps", eps, "--domain", domain], capsys)
    assert code == 1
    assert line.startswith("refcert certify: error:") and message in line


def test_eran_reader_on_shared_mnist():
    x, y = read_eran_csv(shared_file("datasets/eran/mnist_test.csv"))
    assert x.shape == (len(y), 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    assert set(y.tolist()) <= set(range(10)) and len(set(y.tolist())) == 10
    assert y[0] == 7  # the first MNIST test image is a 7


def test_eran_reader_cifar_layout_is_hwc(tmp_path):
    """Pixel (h, w, c) of a row stored H, W, C must land at x[c, h, w]."""
    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 256, (2, 32, 32, 3))
    x, y = read_eran_csv(_write_csv(tmp_path / "c.csv", [3, 9], hwc.reshape(2, -1)))
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [3, 9]
    np.testing.assert_allclose(x * 255, hwc.transpose(0, 3, 1, 2), atol=1e-4)
    x, _ = read_eran_csv(_write_csv(tmp_path / "s.csv", [0], [np.arange(12)]), shape=(3, 2, 2))
    np.testing.assert_allclose(x[0, :, 0, 0] * 255, [0, 1, 2], atol=1e-4)


@pytest.mark.parametrize("text, message", [
    ("1," + ",".join(["0"] * 784) + "\n2,0,0\n", "line 2: 2 pixels, but line 1 has 784"),
    ("1," + ",".join(["0"] * 783) + ",256\n", "line 1, field 785: pixel '256' is outside 0..255"),
    ("\n" + "1," + ",".join(["0"] * 783) + ",-1\n", "line 2, field 785"),
    ("-1," + ",".join(["0"] * 784) + "\n", "line 1: label must be an integer"),
    ("2.5," + ",".join(["0"] * 784) + "\n", "line 1: label must be an integer"),
    ("1," + ",".join(["0"] * 783) + ",x\n", "line 1: not a number: 'x'"),
    ("1,0,0,0\n", "neither MNIST"), ("", "no images"),
])
def test_eran_reader_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(EranFormatError) as info:
        read_eran_csv(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_cli_reads_a_dataset_split_by_name(files, capsys):
    """--inputs mnist-mini:test reads the shipped split (the same images refcert.datasets.load gives)."""
    args = ["certify", "--net", str(files / "net.npz"), "--inputs", "mnist-mini:test", "--n", "5", "--eps", "0.0",
            "--domain", "box", "--no-attack", "--json", str(files / "out.json")]
    assert cli.main(args) == 0
    _, y = refcert.datasets.load("mnist-mini", "test")
    report = json.loads((files / "out.json").read_text())
    rows = report["domains"]["box"]["inputs"]
    assert [row["label"] for row in rows] == y[:5].tolist()
    assert cli.main(args[:4] + ["nonexistent:test"] + args[5:]) == 1
    assert "nonexistent:test" in capsys.readouterr().err
