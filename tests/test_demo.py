"""refcert demo: the table, progress with a time estimate, finite validation accuracy, the generative-path
models with a certify-path command that runs, and a folder reused only with --overwrite (issue 12)."""
import contextlib
import csv
import io
import math
import re
import shlex
import shutil
import sys
import types

import pytest

from refcert import datasets, models, runs
from refcert.cli import main as cli
from refcert.commands.demo import QUICK, Clock, _openblas_thread_setters, duration, one_blas_thread, plot


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``refcert demo --quick`` run (matplotlib hidden: the plot is optional) shared by the tests."""
    folder = tmp_path_factory.mktemp("demo")
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.setitem(sys.modules, "matplotlib", None)
        code = cli(["demo", "--quick", "--out", str(folder)])
    return types.SimpleNamespace(code=code, out=out.getvalue(), err=err.getvalue(), folder=folder)


def test_demo_quick_prints_the_table(quick):
    assert quick.code == 0, quick.err
    assert "plot skipped: matplotlib is not installed" in quick.out
    assert not (quick.folder / "certified_vs_eps.png").exists()
    for method in ("standard", "pgd", "diffai"):
        assert any(line.startswith(method) and line.count("%") >= 3 for line in quick.out.splitlines())
    with open(quick.folder / "results.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["training"] for r in rows] == ["standard", "pgd", "diffai"]
    assert all(0 <= float(r["box"]) <= float(r["clean"]) <= 1 for r in rows)  # verified implies correct
    assert (quick.folder / "diffai" / "model.npz").exists()
    assert not (quick.folder / ".lock").exists()


def test_demo_reports_every_epoch_and_stage_with_the_time_left_on_stderr(quick):
    """Issue 12: the demo printed 4 lines in 9 minutes; now each epoch and stage says how long is left."""
    lines = quick.err.splitlines()
    for method in ("standard", "pgd", "diffai"):
        epoch = [line for line in lines if line.startswith(f"{method}: epoch 1/{QUICK.epochs},")]
        assert len(epoch) == 1 and re.search(r", [\d.]+ s, about .+ left in the demo$", epoch[0]), lines
        assert any(line.startswith(f"{method}: evaluated on {QUICK.test_images} test images") for line in lines)
    assert any(line.startswith("path models:") for line in lines)
    assert "left in the demo" not in quick.out  # progress on stderr, the table on stdout
    assert "total time" in quick.out


def test_clock_estimates_from_the_stages_done_so_far():
    clock = Clock([("a1", "a", 1.0), ("a2", "a", 1.0), ("b", "b", 10.0)], stream=io.StringIO())
    clock.took["a1"] = 2.0          # twice the reference: the other a twice, b (no b done yet) twice too
    assert clock.left() == pytest.approx(2.0 + 20.0)
    clock.took["b"] = 5.0           # b took half its reference: its kind now knows better
    assert clock.left() == pytest.approx(2.0)
    assert [duration(s) for s in (0.04, 0.4, 14.2, 70, 3600)] == ["0.04 s", "0.4 s", "14 s", "1 min 10 s", "1 h"]


def test_demo_metrics_have_a_finite_validation_accuracy(quick):
    """Issue 12: val_accuracy was nan in every row (no validation set was passed to train)."""
    for method in ("standard", "pgd", "diffai"):
        with open(quick.folder / method / "metrics.csv") as stream:
            rows = list(csv.DictReader(stream))
        assert len(rows) == QUICK.epochs
        assert all(math.isfinite(float(r["val_accuracy"])) and 0 <= float(r["val_accuracy"]) <= 1 for r in rows)


def test_demo_saves_path_models_and_its_certify_path_command_runs(quick, capsys):
    """Issue 12: certify-path needed models only a bench script's docstring said how to make."""
    for name in ("encoder", "decoder", "classifier"):
        assert (quick.folder / "path" / f"{name}.npz").exists()
    commands = [line.strip() for line in quick.out.splitlines() if line.strip().startswith("refcert certify-path")]
    assert len(commands) == 1
    argv = shlex.split(commands[0])[1:]
    assert "--encoder" in argv and "--inputs" in argv and argv[argv.index("--inputs") + 1] == "mnist-mini:test"
    assert cli(argv) == 0
    table = capsys.readouterr().out.splitlines()
    certified = {line.split()[0]: int(line.split()[2]) for line in table if line.split()[:1] == ["exactline"]}
    assert certified.get("exactline", 0) >= 1  # it certifies something


def test_a_second_demo_into_the_same_folder_needs_overwrite(quick, tmp_path, capsys):
    folder = tmp_path / "out"
    shutil.copytree(quick.folder, folder)
    before = (folder / "results.csv").read_bytes()
    (folder / "results.csv").write_bytes(b"training,clean\nmine,1\n")
    assert cli(["demo", "--quick", "--out", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(folder) in err and "results.csv" in err and "--overwrite" in err
    assert (folder / "results.csv").read_bytes() == b"training,clean\nmine,1\n"  # refused: nothing touched
    assert not (folder / ".lock").exists()
    assert cli(["demo", "--quick", "--out", str(folder), "--overwrite"]) == 0
    assert (folder / "results.csv").read_bytes() == before  # the same seed: the same results
    assert not (folder / ".lock").exists()


def test_a_demo_is_refused_while_another_process_holds_the_folder(tmp_path, capsys):
    with runs.lock(tmp_path, what="refcert demo --out elsewhere"):
        assert cli(["demo", "--quick", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "in use" in err and "refcert demo --out elsewhere" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_demo_runs_openblas_on_one_thread_unless_the_environment_says_otherwise(monkeypatch):
    """Threaded OpenBLAS on a busy 2-core machine made the demo several times slower (issue 12: 526 s)."""
    setters = _openblas_thread_setters()
    if not setters:
        pytest.skip("no OpenBLAS library found in this process")
    started = [get() for _, get in setters]
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    try:
        for set_threads, _ in setters:
            set_threads(2)
        with one_blas_thread():
            assert [get() for _, get in setters] == [1] * len(setters)
        assert [get() for _, get in setters] == [2] * len(setters)
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")  # the user's choice stands
        with one_blas_thread():
            assert [get() for _, get in setters] == [2] * len(setters)
    finally:
        for (set_threads, _), count in zip(setters, started):
            set_threads(count)


def test_demo_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    x, y = datasets.load("mnist-mini", "test")
    net = models.get("convtiny")
    rows = {"standard": {"box": 0.0, "deepzono": 0.1}}
    assert plot(tmp_path / "p.png", {"standard": net}, rows, ["box", "deepzono"], x[:5], y[:5], QUICK)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
