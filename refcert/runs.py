"""Run folders: the rules that keep a training run's files (model.npz, checkpoint.npz, metrics.csv) whole.

- One writer per folder.  ``lock(folder)`` creates ``FOLDER/.lock`` exclusively (``O_CREAT | O_EXCL``)
  holding the writer's pid, host, command, command line and start time, and removes it when the body ends, by error
  or Ctrl-C too (only if the file is still its own).  A second writer gets ``RunInUse`` naming the
  first.  A lock whose process is dead (SIGKILL, power cut) is stale: it is taken over, with a note.
  A lock from another host cannot be checked and counts as held.
- No silent reuse.  A folder that holds a run's files is continued only with resume (``--resume``) or
  started again only with overwrite (``--overwrite``), which deletes those files and no others
  (``check_reuse``); asking for both is an error.
- Orphans.  ``refcert.io.npz.atomic_write`` writes ``.tmp-XXXXXXXX<name>`` beside its target, then
  renames it; a process killed in between leaves that file behind.  ``remove_orphans`` deletes them;
  it is safe only under the lock, when no writer can be in the middle of a save.
- A resume says what it found ("resuming OUT from epoch K of N", "no checkpoint in OUT: starting from
  epoch 0"; ``refcert.train.train``), so a run never starts again from scratch unannounced.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shlex
import socket
import sys
import time

RUN_FILES = ("model.npz", "checkpoint.npz", "metrics.csv")
LOCK = ".lock"
ORPHAN = re.compile(r"\.tmp-[a-z0-9_]{8}")  # tempfile.mkstemp(prefix=".tmp-"): 8 random characters follow


class RunInUse(RuntimeError):
    """Another live process holds the folder's lock."""


class RunExists(FileExistsError):
    """The folder holds a previous run's files and neither resume nor overwrite was asked for."""


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _read(path: pathlib.Path) -> tuple[str | None, dict | None]:
    """(text, record) of a lock file: text None if it is gone, record None if it is not a lock record."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    try:
        record = json.loads(text)
    except ValueError:
        return text, None
    return text, record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def _alive(record: dict) -> bool:
    """Whether the lock's process may still run (True whenever that cannot be checked)."""
    if record.get("hostname") != socket.gethostname() or os.name == "nt" or record["pid"] <= 0:
        return True  # another machine; on Windows os.kill(pid, 0) would terminate the process
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # Linux: a killed process its parent has not yet reaped (a zombie) is dead too
        with open(f"/proc/{record['pid']}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _describe(record: dict) -> str:
    return (f"pid {record['pid']} on {record.get('hostname')} ({record.get('command')}, started "
            f"{record.get('started')}, command line: {record.get('argv')})")


@contextlib.contextmanager
def lock(folder, what: str = "refcert train", log=to_stderr):
    """Hold ``FOLDER/.lock`` (creating the folder) while the body runs: one writer per folder.

    ``what`` is the command recorded for others to see.  Yields the record of the dead process whose
    stale lock was taken over (also reported through ``log``), or None.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    mine = {"pid": os.getpid(), "hostname": socket.gethostname(), "command": what,
            "argv": shlex.join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    stale = None
    while True:
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            text, record = _read(path)
            if text is None:
                continue  # released meanwhile: try again
            if record is None:
                raise RunInUse(f"{folder} is in use: its lock {path} is being written or is damaged "
                               f"(if no run uses the folder, delete that file)") from None
            if _alive(record):
                raise RunInUse(f"{folder} is in use by {_describe(record)}; wait for it to end or use another "
                               f"folder (if that process is gone, delete {path})") from None
            stale = record
            if _read(path)[0] == text:  # remove the stale lock unless another process took it over first
                path.unlink(missing_ok=True)
            continue
        try:
            with os.fdopen(handle, "w") as stream:
                json.dump(mine, stream)
        except BaseException:  # Ctrl-C or a full disk: leave no empty lock behind
            path.unlink()
            raise
        break
    if stale is not None:
        log(f"{folder}: took over the stale lock of {_describe(stale)}, which is no longer running")
    try:
        yield stale
    finally:
        if _read(path)[1] == mine:
            path.unlink()


def remove_orphans(folder) -> list[str]:
    """Delete the temporary files of saves killed midway (``.tmp-*``) in ``folder``; returns their names.

    Only safe while holding the folder's lock."""
    folder = pathlib.Path(folder)
    names = sorted(p.name for p in folder.iterdir() if ORPHAN.match(p.name) and p.is_file())
    for name in names:
        (folder / name).unlink()
    return names


def remove_run_files(folder, files=RUN_FILES) -> list[str]:
    """Delete the run files (only those) present in ``folder``; returns their names."""
    found = [name for name in files if (pathlib.Path(folder) / name).exists()]
    for name in found:
        (pathlib.Path(folder) / name).unlink()
    return found


def check_reuse(folder, resume: bool = False, overwrite: bool = False, files=RUN_FILES) -> list[str]:
    """The reuse rule: a folder holding run ``files`` needs ``resume`` or ``overwrite``.

    Overwrite deletes those files; returns the names it deleted.  Raises ``RunExists`` (or ValueError
    for both flags) with the options spelled out.
    """
    if resume and overwrite:
        raise ValueError("--resume continues the run in the folder and --overwrite starts it again: give one")
    found = [name for name in files if (pathlib.Path(folder) / name).exists()]
    if found and not resume and not overwrite:
        raise RunExists(f"{folder} already holds a run ({', '.join(found)}): add --resume to continue it, or "
                        f"--overwrite to start again (deleting those files)")
    return remove_run_files(folder, files) if overwrite else []
