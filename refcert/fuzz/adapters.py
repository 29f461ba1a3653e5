"""Verifier adapters: run one verifier on (net.onnx, prop.vnnlib) and return what it said.

* ``CommandAdapter(template)``: any command line with the placeholders ``{onnx} {vnnlib} {result}
  {timeout}`` (split with shlex, substituted per argument); the verifier writes a VNN-COMP result file
  (``sat`` + ((X_i v) ... (Y_j v)), ``unsat``, ``unknown``, ``timeout``), read by ``read_result``.
* ``marabou``: ``Marabou NET PROP --timeout T --verbosity 0``; Marabou 2.0.0 prints ``sat`` / ``unsat``
  / ``TIMEOUT`` (or ``unknown``) on a line of its own, and for ``sat`` the counterexample as
  ``Input assignment:`` then ``\tx0 = -0.000000`` lines and ``Output:`` then ``\ty0 = ...`` lines, six
  decimals (hence the runner's TOL_X); it exits 1 with ``Caught a InputParserError`` on files it
  cannot read.  The adapter writes what it parsed as a VNN-COMP result file beside the case.
* ``refcert``: ``python -m refcert.cli verify NET PROP --timeout T --result R`` (``refcert verify``).
A nonzero exit, a process past timeout + GRACE seconds, or an unreadable result is status ``error``.
"""
from __future__ import annotations

import math
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from refcert.io.vnnlib import VnnlibError, read_result, write_result

GRACE = 10.0   # seconds a process may run past the verifier's own timeout before it is killed


@dataclass
class Outcome:
    status: str              # 'sat' | 'unsat' | 'unknown' | 'timeout' | 'error'
    x: np.ndarray | None     # counterexample, flat in the ONNX input order
    y: np.ndarray | None
    seconds: float
    stdout: str
    stderr: str
    message: str = ""        # why the status is 'error'


def _execute(argv, timeout):
    """(returncode or None on time-out, stdout, stderr, seconds)."""
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + GRACE)
        return done.returncode, done.stdout, done.stderr, time.perf_counter() - start
    except subprocess.TimeoutExpired as err:
        text = (lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or ""))
        return None, text(err.stdout), text(err.stderr), time.perf_counter() - start
    except OSError as err:
        return -1, "", f"cannot start {argv[0]!r}: {err}", time.perf_counter() - start


def _failure(code, stdout, stderr, seconds, timeout):
    if code is None:
        return Outcome("error", None, None, seconds, stdout, stderr, f"process ran past {timeout + GRACE:g} s")
    if code != 0:
        last = (stderr.strip() or stdout.strip()).splitlines()[-1:] or [""]
        return Outcome("error", None, None, seconds, stdout, stderr, f"exit code {code}: {last[0][:200]}")
    return None


class CommandAdapter:
    """A verifier given as a command template writing a VNN-COMP result file."""

    def __init__(self, template: str):
        self.template = template
        self.argv = shlex.split(template)
        if not self.argv or "{result}" not in template:
            raise ValueError(f"verifier command {template!r} must contain {{result}} (and usually {{onnx}} {{vnnlib}})")
        self.name = self.argv[0]

    def run(self, onnx, vnnlib, result, timeout: float) -> Outcome:
        values = {"onnx": str(onnx), "vnnlib": str(vnnlib), "result": str(result), "timeout": f"{timeout:g}"}
        try:
            argv = [part.format(**values) for part in self.argv]
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"verifier command {self.template!r}: bad placeholder ({err}); "
                             f"use {{onnx}} {{vnnlib}} {{result}} {{timeout}}") from None
        code, stdout, stderr, seconds = _execute(argv, timeout)
        failed = _failure(code, stdout, stderr, seconds, timeout)
        if failed:
            return failed
        try:
            status, x, y = read_result(result)
        except VnnlibError as err:
            return Outcome("error", None, None, seconds, stdout, stderr, f"unreadable result: {err}")
        return Outcome(status, x, y, seconds, stdout, stderr)


_MARABOU_STATUS = {"sat": "sat", "unsat": "unsat", "timeout": "timeout", "unknown": "unknown"}


def parse_marabou(stdout: str):
    """(status, x, y) from Marabou 2.0's standard output; status None when no verdict line is found."""
    status = next((_MARABOU_STATUS[line.strip().lower()] for line in stdout.splitlines()
                   if line.strip().lower() in _MARABOU_STATUS), None)
    if status != "sat":
        return status, None, None
    values = {"x": {}, "y": {}}
    for kind, index, value in re.findall(r"^\s*([xy])(\d+)\s*=\s*(\S+)\s*$", stdout, flags=re.MULTILINE):
        values[kind][int(index)] = float(value)
    arrays = [np.array([v[i] for i in range(len(v))]) if sorted(v) == list(range(len(v))) and v else None
              for v in (values["x"], values["y"])]
    return status, arrays[0], arrays[1]


class MarabouAdapter:
    name = "marabou"

    def __init__(self, executable: str = "Marabou"):
        self.executable = executable

    def run(self, onnx, vnnlib, result, timeout: float) -> Outcome:
        argv = [self.executable, str(onnx), str(vnnlib), "--timeout", str(max(1, math.ceil(timeout))), "--verbosity", "0"]
        code, stdout, stderr, seconds = _execute(argv, timeout)
        failed = _failure(code, stdout, stderr, seconds, timeout)
        if failed:
            return failed
        status, x, y = parse_marabou(stdout)
        if status is None:
            return Outcome("error", None, None, seconds, stdout, stderr, "no sat/unsat/timeout line in the output")
        if status == "sat" and (x is None or y is None):   # no result file: the claim has no counterexample
            return Outcome("sat", None, None, seconds, stdout, stderr)
        write_result(result, status, x, y)
        return Outcome(status, x, y, seconds, stdout, stderr)


def refcert_adapter() -> CommandAdapter:
    template = shlex.join([sys.executable, "-m", "refcert.cli", "verify"]) + " {onnx} {vnnlib} --timeout {timeout} --result {result}"
    adapter = CommandAdapter(template)
    adapter.name = "refcert"
    return adapter


def get(verifier: str):
    """'marabou', 'refcert', or a command template with {onnx} {vnnlib} {result} {timeout}."""
    if verifier == "marabou":
        if shutil.which("Marabou") is None:
            raise RuntimeError("--verifier marabou needs the Marabou executable on PATH; maraboupy installs it: "
                               "pip install 'refcert[fuzz]'")
        return MarabouAdapter()
    if verifier == "refcert":
        return refcert_adapter()
    return CommandAdapter(verifier)
