"""refcert.parallel (issue 14): the same verdicts on a 2-worker Dask LocalCluster as in-process, every item
counted once when a worker dies mid-item, --resume runs only what is missing, and a clear message
without the extra."""
import json
import os

import numpy as np
import pytest

import refcert
from refcert import nn, parallel
from refcert.cli import main

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small conv net and 300 inputs (three chunks of certify's 128), a few mislabelled."""
    folder = tmp_path_factory.mktemp("parallel")
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, rng=rng), nn.ReLU(), nn.Flatten(), nn.Linear(36, 5, rng=rng))
    refcert.save(net, folder / "net.npz")
    x = rng.uniform(0, 1, (300, 1, 7, 7)).astype(np.float32)
    y = net(x).numpy().argmax(-1)
    y[::17] = (y[::17] + 1) % 5
    np.savez(folder / "in.npz", x=x, y=y)
    return folder


def _certify(files, json_path, *extra):
    return main(["certify", "--net", str(files / "net.npz"), "--inputs", str(files / "in.npz"), "--eps", "0.02",
                 "--domain", "box", "--domain", "deeppoly", "--pgd-steps", "5", "--json", str(json_path), *extra])


def _verdicts(path):
    data = json.loads(path.read_text())["domains"]
    return {name: [(e["verdict"], e["counterexample"]) for e in d["inputs"]] for name, d in data.items()}


def test_certify_on_two_workers_gives_the_serial_verdicts(files, tmp_path, capsys):
    assert _certify(files, tmp_path / "serial.json") == 0
    assert _certify(files, tmp_path / "dask.json", "--workers", "2") == 0
    serial, dask = _verdicts(tmp_path / "serial.json"), _verdicts(tmp_path / "dask.json")
    assert serial == dask
    assert any(v == "falsified" for v, _ in serial["box"])  # counterexamples (seeded PGD) compared too
    assert not list(tmp_path.glob("*.parts.jsonl"))  # the stream is removed once the JSON is written


def _die_once(marker, key):
    """A work item that kills its worker process the first time it runs (a crash mid-item), then succeeds."""
    if key == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return key * key


def test_an_item_whose_worker_dies_is_retried_and_counted_once(tmp_path):
    marker = str(tmp_path / "died")
    results = list(parallel.run(_die_once, [(k, k) for k in range(8)], shared=marker, workers=2, what="items"))
    assert os.path.exists(marker)  # the worker did die once
    assert sorted(k for k, _ in results) == list(range(8))  # every item exactly once
    assert dict(results) == {k: k * k for k in range(8)}


def test_resume_certifies_only_the_missing_chunks(files, tmp_path, monkeypatch, capsys):
    from refcert.commands import certify as command
    assert _certify(files, tmp_path / "full.json") == 0
    real, calls = command.certify_span, []

    def interrupted(shared, span):  # the third chunk is interrupted: two are in the parts file
        calls.append(span[0])
        if span[0] == 2:
            raise KeyboardInterrupt
        return real(shared, span)
    monkeypatch.setattr(command, "certify_span", interrupted)
    assert main(["certify", "--net", str(files / "net.npz"), "--inputs", str(files / "in.npz"), "--eps", "0.02",
                 "--domain", "box", "--domain", "deeppoly", "--pgd-steps", "5", "--json",
                 str(tmp_path / "run.json")]) == 130
    assert (tmp_path / "run.json.parts.jsonl").exists() and not (tmp_path / "run.json").exists()
    assert _certify(files, tmp_path / "run.json") == 1  # parts of an interrupted run: refused without --resume
    assert "--resume" in capsys.readouterr().err
    calls.clear()
    monkeypatch.setattr(command, "certify_span", lambda shared, span: calls.append(span[0]) or real(shared, span))
    assert _certify(files, tmp_path / "run.json", "--resume") == 0
    assert calls == [2]
    assert _verdicts(tmp_path / "run.json") == _verdicts(tmp_path / "full.json")


def test_resume_with_other_settings_is_refused(files, tmp_path, monkeypatch, capsys):
    from refcert.commands import certify as command
    monkeypatch.setattr(command, "certify_span", lambda shared, span: (_ for _ in ()).throw(KeyboardInterrupt))
    assert _certify(files, tmp_path / "run.json") == 130
    monkeypatch.undo()
    assert main(["certify", "--net", str(files / "net.npz"), "--inputs", str(files / "in.npz"), "--eps", "0.03",
                 "--domain", "box", "--json", str(tmp_path / "run.json"), "--resume"]) == 1
    assert "other settings" in capsys.readouterr().err


def test_without_dask_workers_name_the_extra(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "distributed", None)
    assert _certify(files, tmp_path / "x.json", "--workers", "2") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refcert[cluster]" in err[0]


def test_fuzz_on_two_workers_classifies_as_serially_and_resumes(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("scipy")
    from refcert.fuzz import runner
    keep = ("case", "class", "answer", "verdict", "quirks", "prop")
    rows = {}
    for name, extra in (("serial", []), ("dask", ["--workers", "2"])):
        main(["fuzz", "--verifier", "refcert", "--cases", "6", "--seed", "3", "--timeout", "10", "--quiet",
              "--out", str(tmp_path / name), *extra])
        rows[name] = [{k: r[k] for k in keep} for r in runner._read_summary(tmp_path / name / "summary.csv")]
    assert rows["serial"] == rows["dask"] and [r["case"] for r in rows["dask"]] == list(range(1, 7))
    summary = tmp_path / "serial" / "summary.csv"
    summary.write_text("\n".join(summary.read_text().splitlines()[:4]) + "\n")  # three cases were done
    real, calls = runner._case_row, []
    monkeypatch.setattr(runner, "_case_row", lambda shared, index: calls.append(index) or real(shared, index))
    main(["fuzz", "--verifier", "refcert", "--cases", "6", "--seed", "3", "--timeout", "10", "--quiet",
          "--out", str(tmp_path / "serial"), "--resume"])
    assert calls == [3, 4, 5]
    assert [{k: r[k] for k in keep} for r in runner._read_summary(summary)] == rows["serial"]


def test_a_running_cluster_by_its_scheduler_address(files, tmp_path, capsys):
    """--scheduler ADDRESS: the same verdicts on a cluster started elsewhere (here a LocalCluster standing in for
    `dask scheduler` + `dask worker`); --workers and --scheduler together are refused."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        assert _certify(files, tmp_path / "remote.json", "--scheduler", cluster.scheduler_address) == 0
        assert _certify(files, tmp_path / "both.json", "--workers", "1", "--scheduler",
                        cluster.scheduler_address) == 1
    assert "not both" in capsys.readouterr().err and not (tmp_path / "both.json.parts.jsonl").exists()
    assert _certify(files, tmp_path / "serial.json") == 0
    assert _verdicts(tmp_path / "remote.json") == _verdicts(tmp_path / "serial.json")
