"""Run folders of ``refcert train`` (refcert.runs): one writer per folder, no silent reuse, orphan
cleanup, a stated resume, a resumable Ctrl-C, LF-only metrics and checked settings."""
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import refcert
import refcert.train
from refcert import datasets, models
from refcert.cli import build_parser
from refcert.cli import main as cli
from refcert.train import TrainConfig, train

TINY = ["train", "--model", "convtiny", "--data", "mnist-mini", "--limit", "64", "--batch-size", "32", "--quiet"]


@pytest.fixture(scope="module")
def data():
    x, y = datasets.load("mnist-mini", "train")
    return x[:64], y[:64]


def weights(path):
    return {k: v.numpy() for k, v in refcert.load(path).named_parameters().items()}


def epochs_in(folder):
    with open(folder / "metrics.csv") as stream:
        return [int(line.split(",")[0]) for line in stream.read().splitlines()[1:]]


def python(script, *args, **kwargs):
    """Start a Python process running ``script`` (it can import refcert) with ``args`` as sys.argv[1:]."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], text=True, **kwargs)


def dead_pid() -> int:
    process = python("pass")
    process.wait()
    return process.pid


def test_a_second_writer_is_refused_while_another_process_holds_the_folder(tmp_path, capsys):
    holder = python("""
        import sys
        from refcert import runs
        with runs.lock(sys.argv[1], "refcert train --out held"):
            print("held", flush=True)
            sys.stdin.read()
        """, tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(tmp_path) in err and f"pid {holder.pid}" in err
        assert "refcert train --out held" in err and "started" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # the refused run wrote nothing
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert not (tmp_path / ".lock").exists()  # released by its holder
    assert cli(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0


def test_a_run_started_while_another_trains_in_the_folder_is_refused(data, tmp_path):
    """Issue 12, problem 1: the second run used to succeed and interleave its epochs with the first's."""
    from refcert.runs import RunInUse
    refused = []

    def second_run(row):
        if row["epoch"] == 1:
            with pytest.raises(RunInUse, match=f"in use by pid {os.getpid()}") as err:
                train(models.get("convtiny", seed=3), *data, TrainConfig(epochs=2, batch_size=32), out=tmp_path,
                      progress=False)
            refused.append(err)
    train(models.get("convtiny"), *data, TrainConfig(epochs=2, batch_size=32), out=tmp_path, progress=False,
          callback=second_run)
    assert refused and epochs_in(tmp_path) == [1, 2]


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    pid = dead_pid()
    (tmp_path / ".lock").write_text(json.dumps({"pid": pid, "hostname": socket.gethostname(),
                                                "command": "refcert train", "started": "earlier"}))
    assert cli(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    assert "stale lock" in capsys.readouterr().err
    assert not (tmp_path / ".lock").exists() and epochs_in(tmp_path) == [1]


@pytest.mark.skipif(not hasattr(os, "waitid") or not os.path.exists("/proc/self/stat"), reason="Linux only")
def test_a_lock_of_a_killed_process_not_yet_reaped_is_stale(tmp_path):
    from refcert import runs
    process = python("import time; time.sleep(60)")
    try:
        process.kill()
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped: os.kill(pid, 0) finds it
        (tmp_path / ".lock").write_text(json.dumps({"pid": process.pid, "hostname": socket.gethostname()}))
        notes = []
        with runs.lock(tmp_path, log=notes.append) as stale:
            assert stale["pid"] == process.pid and f"pid {process.pid}" in notes[0]
    finally:
        process.wait()


def test_a_lock_is_released_on_ctrl_c_and_kept_when_not_ours(tmp_path):
    from refcert import runs
    with pytest.raises(KeyboardInterrupt), runs.lock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        raise KeyboardInterrupt
    assert not (tmp_path / ".lock").exists()
    with runs.lock(tmp_path):  # someone removed ours and took the folder: theirs stays
        (tmp_path / ".lock").write_text(json.dumps({"pid": os.getppid(), "hostname": socket.gethostname()}))
    assert (tmp_path / ".lock").exists()


def test_a_finished_run_is_reused_only_with_resume_or_overwrite(tmp_path, capsys):
    """Issue 12, problem 2: a rerun without --resume used to overwrite the finished run silently."""
    assert cli(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    before = (tmp_path / "model.npz").read_bytes()
    capsys.readouterr()
    assert cli(TINY + ["--epochs", "1", "--seed", "4", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert all(word in err for word in ("checkpoint.npz", "metrics.csv", "model.npz", "--resume", "--overwrite"))
    assert (tmp_path / "model.npz").read_bytes() == before
    assert cli(TINY + ["--epochs", "1", "--out", str(tmp_path), "--resume", "--overwrite"]) == 1
    assert "--resume" in capsys.readouterr().err
    assert not (tmp_path / ".lock").exists()


def test_overwrite_starts_again_and_removes_only_the_run_files(tmp_path):
    assert cli(TINY + ["--epochs", "2", "--out", str(tmp_path)]) == 0
    (tmp_path / "notes.txt").write_text("mine")
    assert cli(TINY + ["--epochs", "1", "--seed", "4", "--out", str(tmp_path), "--overwrite"]) == 0
    assert epochs_in(tmp_path) == [1] and (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz", "metrics.csv", "model.npz", "notes.txt"]


def test_resume_states_what_it_found_and_removes_orphans(tmp_path, capsys):
    assert cli(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    (tmp_path / ".tmp-abcd1234checkpoint.npz").write_bytes(b"PK half a zip")
    capsys.readouterr()
    assert cli(TINY + ["--epochs", "2", "--out", str(tmp_path), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"resuming {tmp_path} from epoch 1 of 2" in err and ".tmp-abcd1234checkpoint.npz" in err
    assert not (tmp_path / ".tmp-abcd1234checkpoint.npz").exists() and epochs_in(tmp_path) == [1, 2]
    assert cli(TINY + ["--epochs", "2", "--out", str(tmp_path), "--resume"]) == 0  # nothing left to do
    assert "already holds all 2 epochs" in capsys.readouterr().err and epochs_in(tmp_path) == [1, 2]


def test_resume_after_a_sigkill_during_the_first_save_says_it_starts_again(tmp_path, capsys):
    """Issue 12, problem 4: a SIGKILL while the checkpoint is written leaves a .tmp-* file and a lock;
    --resume removes both and says that it starts from epoch 0."""
    killed = python("""
        import os, signal, sys
        import numpy as np
        real = np.savez
        def dying(stream, **arrays):
            if "meta" in arrays:  # the checkpoint: half written, then SIGKILL
                stream.write(b"PK half a zip")
                stream.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            real(stream, **arrays)
        np.savez = dying
        from refcert.cli import main
        main(sys.argv[1:])
        """, *TINY, "--epochs", "2", "--out", tmp_path)
    assert killed.wait(timeout=120) == -signal.SIGKILL
    orphans = [p.name for p in tmp_path.glob(".tmp-*")]
    assert len(orphans) == 1 and not (tmp_path / "checkpoint.npz").exists()
    assert cli(TINY + ["--epochs", "2", "--out", str(tmp_path), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"no checkpoint in {tmp_path}: starting from epoch 0" in err and orphans[0] in err
    assert "stale lock" in err and f"pid {killed.pid}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz", "metrics.csv", "model.npz"]
    assert epochs_in(tmp_path) == [1, 2]


def test_zero_epochs_is_refused_and_writes_nothing(tmp_path, capsys):
    """Issue 12, problem 3: --epochs 0 used to print 'model in OUT/model.npz' and write nothing."""
    assert cli(TINY + ["--epochs", "0", "--out", str(tmp_path / "run")]) == 1
    out, err = capsys.readouterr()
    assert "model in" not in out and "--epochs" in err and ">= 1" in err
    assert not (tmp_path / "run").exists()


def test_metrics_csv_has_only_lf_line_endings(tmp_path):
    """Issue 12, problem 6: rows appended by csv.DictWriter ended in CRLF, a rewritten file in LF."""
    assert cli(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    assert b"\r" not in (tmp_path / "metrics.csv").read_bytes()
    assert cli(TINY + ["--epochs", "2", "--out", str(tmp_path), "--resume"]) == 0
    text = (tmp_path / "metrics.csv").read_bytes()
    assert b"\r" not in text and text.count(b"\n") == 3


class Interrupt:
    """Raise KeyboardInterrupt at the ``at``-th call of ``real`` (as Ctrl-C would)."""

    def __init__(self, real, at, when=lambda *a, **k: True):
        self.real, self.at, self.when, self.calls = real, at, when, 0

    def __call__(self, *args, **kwargs):
        if self.when(*args, **kwargs):
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt
        return self.real(*args, **kwargs)


@pytest.mark.parametrize("where", ["batch", "model save", "checkpoint save"])
def test_ctrl_c_prints_the_resume_command_which_ends_like_an_uninterrupted_run(tmp_path, capsys, monkeypatch,
                                                                               where):
    """Issue 12, problem 5: Ctrl-C printed a traceback and no hint; now: exit 130, the lock released,
    nothing half-written, and the printed command continues to the weights of an uninterrupted run."""
    settings = ["--epochs", "3", "--method", "pgd", "--pgd-steps", "2", "--lr-step", "2", "--seed", "2"]
    assert cli(TINY + settings + ["--out", str(tmp_path / "whole")]) == 0
    if where == "batch":  # the 2nd batch of epoch 2
        monkeypatch.setattr(refcert.train, "batch_loss", Interrupt(refcert.train.batch_loss, 4))
    else:  # the save after epoch 2: model.npz, or checkpoint.npz after model.npz was written
        key = "meta" if where == "checkpoint save" else "__architecture__"
        monkeypatch.setattr(np, "savez", Interrupt(np.savez, 2, lambda stream, **arrays: key in arrays))
    out = tmp_path / "my run"
    capsys.readouterr()
    assert cli(TINY + settings + ["--out", str(out), "--overwrite"]) == 130
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    command = [line for line in err.splitlines() if line.startswith("refcert train ")]
    assert len(command) == 1, err
    argv = shlex.split(command[0])
    assert argv[:2] == ["refcert", "train"] and "--resume" in argv and "--overwrite" not in argv
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "metrics.csv", "model.npz"]
    assert cli(argv[1:]) == 0
    assert "resuming" in capsys.readouterr().err
    expected, got = weights(tmp_path / "whole" / "model.npz"), weights(out / "model.npz")
    assert all(np.array_equal(expected[k], got[k]) for k in expected)
    assert epochs_in(out) == [1, 2, 3]


@pytest.mark.parametrize("setting,value", [
    ("pgd_steps", 0), ("pgd_steps", -5), ("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("lr", math.nan),
    ("lr", math.inf), ("eps", -0.1), ("eps", math.inf), ("kappa", 1.5), ("kappa", -0.1), ("ramp_epochs", -1.0),
    ("clip_grad", -1.0), ("lr_step", -1), ("lr_gamma", 0.0), ("lr_gamma", math.nan)])
def test_every_numeric_setting_is_checked(setting, value):
    option = "--" + setting.replace("_", "-")
    with pytest.raises(ValueError, match=f"{setting} \\({option}\\)"):
        TrainConfig(**{setting: value}).check()


def test_negative_pgd_steps_fail_on_the_command_line(tmp_path, capsys):
    """Issue 12, problem 7: --pgd-steps -5 used to be accepted."""
    assert cli(TINY + ["--method", "pgd", "--pgd-steps", "-5", "--out", str(tmp_path / "run")]) == 1
    assert "--pgd-steps" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_the_default_domain_is_practical_on_a_cpu():
    """Issue 12, problem 8: the default DiffAI domain was hswitch (about 35 minutes an epoch on a CPU)."""
    assert TrainConfig().domain == "box"
    parser = build_parser("train")
    assert parser.parse_args(["train"]).domain == "box"
    train_parser = next(a for a in parser._actions if a.dest == "command").choices["train"]
    help_text = " ".join(train_parser.format_help().split())
    assert "default box" in help_text and "hswitch" in help_text
