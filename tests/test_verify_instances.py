"""``refcert verify --instances`` (issue 13, item 5): a VNN-COMP instance list run in one go, one CSV row per
instance (answer, seconds, counterexample file, expected / wrong), errors as rows, paths relative to the CSV
(or to CSV folder/benchmark/), a per-instance time limit."""
import csv

import numpy as np
import pytest

import refcert
from refcert import nn
from refcert.cli import main
from refcert.io.vnnlib import read_result, write_vnnlib

pytest.importorskip("onnx")


def _rows(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def problems(tmp_path):
    """nets/net.onnx (4 -> 16 -> 3, ReLU) with props/sat.vnnlib (violated near x = 0.2) and
    props/unsat.vnnlib (C y <= d - 100 cannot hold: the domains prove it); (folder, net, outputs at 0.2, C)."""
    net = nn.Sequential(nn.Linear(4, 16, rng=np.random.default_rng(5)), nn.ReLU(),
                        nn.Linear(16, 3, rng=np.random.default_rng(6)))
    (tmp_path / "nets").mkdir()
    (tmp_path / "props").mkdir()
    refcert.export_onnx(net, tmp_path / "nets" / "net.onnx", input_shape=(1, 4))
    lower, upper = np.full(4, -0.5), np.full(4, 0.5)
    y0 = net.astype("float64")(np.full((1, 4), 0.2)).numpy()[0]
    C = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    write_vnnlib(tmp_path / "props" / "sat.vnnlib", [(lower, upper, [(C, C @ y0 + 0.05)])])
    write_vnnlib(tmp_path / "props" / "unsat.vnnlib", [(lower, upper, [(C, C @ y0 - 100.0)])])
    return tmp_path


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err


def test_rows_answers_counterexample_and_errors(problems, capsys):
    listing = _write_csv(problems / "instances.csv", ["onnx", "vnnlib", "timeout", "expected"], [
        ["nets/net.onnx", "props/sat.vnnlib", "60", "sat"],
        ["nets/net.onnx", "props/unsat.vnnlib", "60", "unsat"],
        ["nets/missing.onnx", "props/unsat.vnnlib", "60", "unsat"],
        ["nets/net.onnx", "props/missing.vnnlib", "60", "unsat"],
    ])
    out = problems / "results" / "results.csv"
    code, lines, err = _run(["verify", "--instances", str(listing), "--out", str(out)], capsys)
    assert code == 0 and err == ""
    rows = _rows(out)
    assert [r["answer"] for r in rows] == ["sat", "unsat", "error", "error"]
    assert [r["onnx"] for r in rows] == ["nets/net.onnx"] * 2 + ["nets/missing.onnx", "nets/net.onnx"]
    assert [r["wrong"] for r in rows] == ["0"] * 4 and [r["expected"] for r in rows] == ["sat", "unsat", "unsat", "unsat"]
    assert "missing.onnx" in rows[2]["message"] and "missing.vnnlib" in rows[3]["message"]
    assert all(float(r["seconds"]) >= 0 for r in rows) and rows[0]["timeout"] == "60"
    assert "benchmark" not in rows[0]
    # the counterexample: a VNN-COMP result file beside --out, named relative to its folder
    assert rows[0]["counterexample"] == "results_ce/1.txt" and all(r["counterexample"] == "" for r in rows[1:])
    status, x, y = read_result(out.parent / rows[0]["counterexample"])
    assert status == "sat" and x.shape == (4,) and np.all(np.abs(x) <= 0.5) and y.shape == (3,)
    assert len(lines) == 5 and lines[0].startswith("[1/4]") and " sat " in lines[0]
    assert lines[-1].startswith("summary: 4 instance(s): 2 solved, 0 wrong, 2 unknown (0 timeout, 2 error)")


def test_a_wrong_answer_is_flagged_and_fails_the_run(problems, capsys):
    """An expected answer that contradicts the verdict (as a bug in refcert would) is counted and exits 1."""
    listing = _write_csv(problems / "instances.csv", ["onnx", "vnnlib", "timeout", "expected"], [
        ["nets/net.onnx", "props/sat.vnnlib", "60", "holds"],        # VNN-COMP's word for unsat
        ["nets/net.onnx", "props/unsat.vnnlib", "60", "violated"],   # and for sat
        ["nets/net.onnx", "props/unsat.vnnlib", "60", "unsat"],
    ])
    out = problems / "results.csv"
    code, lines, _ = _run(["verify", "--instances", str(listing), "--out", str(out)], capsys)
    rows = _rows(out)
    assert [r["wrong"] for r in rows] == ["1", "1", "0"] and code == 1
    assert "WRONG" in lines[0] and "WRONG" in lines[1] and "WRONG" not in lines[2]
    assert "1 solved, 2 wrong, 0 unknown" in lines[-1]


def test_benchmark_column_timeout_scale_and_per_instance_limit(problems, capsys):
    """With a benchmark column the paths are relative to CSV folder/benchmark/; timeout_s is accepted; the
    limit is timeout x --timeout-scale, and a zero limit gives 'timeout' for that instance only."""
    bench = problems / "suite"
    bench.mkdir()
    (problems / "nets").rename(bench / "nets")
    (problems / "props").rename(bench / "props")
    listing = _write_csv(problems / "instances.csv", ["benchmark", "onnx", "vnnlib", "timeout_s"], [
        ["suite", "nets/net.onnx", "props/unsat.vnnlib", "0"],
        ["suite", "nets/net.onnx", "props/unsat.vnnlib", "40"],
    ])
    out = problems / "r.csv"
    code, lines, _ = _run(["verify", "--instances", str(listing), "--out", str(out), "--timeout-scale", "0.5"],
                          capsys)
    rows = _rows(out)
    assert code == 0 and [r["answer"] for r in rows] == ["timeout", "unsat"]
    assert [r["timeout"] for r in rows] == ["0", "20"] and [r["benchmark"] for r in rows] == ["suite"] * 2
    assert "expected" not in rows[0] and "wrong" not in rows[0]
    assert lines[0].startswith("[1/2] suite/nets/net.onnx")
    assert "1 solved, 0 wrong, 1 unknown (1 timeout, 0 error)" in lines[-1]


def test_headerless_vnncomp_listing_without_out(problems, capsys):
    """VNN-COMP's own instances.csv has no header: onnx,vnnlib,timeout; without --out only lines are printed."""
    listing = _write_csv(problems / "instances.csv", None, [["nets/net.onnx", "props/unsat.vnnlib", "30"]])
    code, lines, _ = _run(["verify", "--instances", str(listing)], capsys)
    assert code == 0 and len(lines) == 2 and "unsat" in lines[0] and "1 solved" in lines[1]
    assert not (problems / "results_ce").exists()


def test_rows_are_written_after_each_instance(problems, capsys, monkeypatch):
    """A run killed during instance 2 keeps instance 1's row (the file is rewritten after each instance)."""
    from refcert.commands import verify as command
    listing = _write_csv(problems / "instances.csv", ["onnx", "vnnlib", "timeout"], [
        ["nets/net.onnx", "props/unsat.vnnlib", "60"], ["nets/net.onnx", "props/sat.vnnlib", "60"]])
    real, calls = command.verify_instance, []

    def interrupted(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(command, "verify_instance", interrupted)
    out = problems / "results.csv"
    assert main(["verify", "--instances", str(listing), "--out", str(out)]) == 130
    assert [r["answer"] for r in _rows(out)] == ["unsat"]


@pytest.mark.parametrize("argv, words", [
    (["NET", "P.vnnlib", "--instances", "L.csv"], ["not both"]),
    (["--instances", "L.csv", "--result", "r.txt"], ["--result"]),
    (["NET", "P.vnnlib", "--out", "o.csv"], ["--out needs --instances"]),
    (["--instances", "missing.csv"], ["missing.csv", "no such file"]),
    (["--instances", "L.csv", "--timeout-scale", "0"], ["--timeout-scale"]),
])
def test_option_errors(tmp_path, capsys, argv, words):
    _write_csv(tmp_path / "L.csv", ["onnx", "vnnlib", "timeout"], [["a.onnx", "b.vnnlib", "1"]])
    argv = [str(tmp_path / a) if a in ("L.csv", "missing.csv") else a for a in argv]
    code, _, err = _run(["verify"] + argv, capsys)
    assert code == 1 and all(word in err for word in words), err


def test_positionals_still_required_without_instances(capsys):
    code, _, err = _run(["verify", "net.onnx"], capsys)
    assert code == 2 and "PROP.vnnlib" in err


def test_two_workers_and_resume_give_the_serial_rows(problems, capsys, monkeypatch):
    """--workers 2 (a Dask LocalCluster) writes the rows a serial run writes; --resume after a run that
    ended early runs only the missing instances (issue 14)."""
    pytest.importorskip("distributed")
    from refcert.commands import verify as command
    listing = _write_csv(problems / "instances.csv", ["onnx", "vnnlib", "timeout", "expected"], [
        ["nets/net.onnx", "props/sat.vnnlib", "60", "sat"], ["nets/net.onnx", "props/unsat.vnnlib", "60", "unsat"],
        ["nets/net.onnx", "props/unsat.vnnlib", "60", "unsat"], ["nets/net.onnx", "props/sat.vnnlib", "60", "sat"]])
    keep = ("number", "onnx", "vnnlib", "answer", "counterexample", "expected", "wrong")
    rows = {}
    for name, extra in (("serial", []), ("dask", ["--workers", "2"])):
        out = problems / name / "results.csv"
        assert _run(["verify", "--instances", str(listing), "--out", str(out), *extra], capsys)[0] == 0
        rows[name] = [{k: r[k] for k in keep} for r in _rows(out)]
    assert rows["serial"] == rows["dask"] and [r["number"] for r in rows["dask"]] == ["1", "2", "3", "4"]
    out = problems / "serial" / "results.csv"
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:3]) + "\n")           # as if the run had stopped after two instances
    real, calls = command._instance_row, []
    monkeypatch.setattr(command, "_instance_row", lambda shared, item: calls.append(item[0]) or real(shared, item))
    assert _run(["verify", "--instances", str(listing), "--out", str(out), "--resume"], capsys)[0] == 0
    assert calls == [3, 4]
    assert [{k: r[k] for k in keep} for r in _rows(out)] == rows["serial"]
