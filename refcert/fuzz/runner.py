"""Run a verifier on fuzz cases, classify its answers, shrink failures, summarise.

Classes (``classify``):
  correct             the verdict agrees with the known answer, or a ``sat`` whose counterexample checks
  unsound             ``unsat`` on a case whose answer is ``sat`` (the oracle holds a validated witness)
  bad-counterexample  ``sat`` whose point is outside the box (by more than TOL_X), does not violate the
                      property when re-evaluated (float32 onnxruntime on the file AND float64 refcert net,
                      slack TOL_Y (1 + max|d|)), or is missing: a violation claim must come with its proof
  incomplete          ``unknown`` or ``timeout`` reported by the verifier
  crash               nonzero exit, unparsable output, or the process ran past timeout + GRACE
  unjudged            ``unsat`` on a case without a known answer (sigmoid nets, optimum within tau)
A claimed ``sat`` on an unsat case always fails the counterexample check (cases.py: tau = 2 TOL_Y ...).

Case families (``Family``, ``family(name)``): ``NET`` (the default: ``cases`` and the classes above) and
'fp' (floating-point quirks: ``fp_family`` / ``fp_check``, exact real answers, classes in ``fp_check``).
"""
from __future__ import annotations

import csv
import json
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from refcert import parallel
from refcert.fuzz import cases as fc
from refcert.fuzz import quirks as q
from refcert.io.npz import atomic_write
from refcert.io.vnnlib import write_vnnlib

CLASSES = ("correct", "unsound", "bad-counterexample", "incomplete", "crash", "unjudged")
FAILURES = ("unsound", "bad-counterexample", "crash")


def check_counterexample(case, x):
    """'' if x (flat, ONNX order) is in the box and violates the property, else why not."""
    if x is None:
        return "sat without a counterexample"
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size != case.lower.size:
        return f"counterexample has {x.size} inputs, the network {case.lower.size}"
    x = q.to_refcert_order(x, case.spec.input_shape, case.spec.quirks)
    slack = fc.TOL_X * (1 + np.maximum(np.abs(case.lower), np.abs(case.upper)))
    outside = np.maximum(case.lower - x, x - case.upper)
    if not np.all(np.isfinite(x)) or np.any(outside > slack):
        i = int(np.argmax(outside))
        return f"X_{i} = {x[i]!r} is outside [{case.lower[i]!r}, {case.upper[i]!r}]"
    x = np.clip(x, case.lower, case.upper)
    tol = fc.TOL_Y * (1 + max(float(np.abs(d).max()) for _, d in case.disjuncts))
    for float32_onnx in (True, False):
        v = fc.violation(case, x, float32_onnx)
        if v > tol:
            where = "float32 onnxruntime" if float32_onnx else "float64 refcert net"
            return f"the point does not violate the property ({where}: worst row exceeds d by {v:.3g})"
    return ""


def classify(case, outcome):
    """(class, detail) of a verifier's outcome on a case (module docstring)."""
    done = fc.unfinished(outcome)
    if done is not None:
        return done
    if outcome.status == "unsat":
        if case.answer == "sat":
            return "unsound", "says unsat; witness " + np.array2string(case.witness, precision=6, separator=",")
        return ("correct", "") if case.answer == "unsat" else ("unjudged", "no known answer")
    problem = check_counterexample(case, outcome.x)
    if problem:
        return "bad-counterexample", problem
    return "correct", ("" if case.answer != "unsat" else "counterexample checks but the oracle said unsat")


def write_case(case, directory):
    """net.onnx, prop.vnnlib, answer.json under ``directory`` (created); returns the file paths."""
    os.makedirs(directory, exist_ok=True)
    paths = {k: os.path.join(directory, k) for k in ("net.onnx", "prop.vnnlib", "answer.json")}
    atomic_write(paths["net.onnx"], lambda s: s.write(case.onnx))
    write_vnnlib(paths["prop.vnnlib"], case.vnnlib_disjuncts(), comment=f"refcert fuzz case: {case.spec}")
    witness = None if case.witness is None else q.to_onnx_order(case.witness, case.spec.input_shape,
                                                                 case.spec.quirks).tolist()
    info = {"answer": case.answer, "witness_onnx_order": witness, "spec": {k: v for k, v in vars(case.spec).items()}}
    text = json.dumps(info, indent=1, default=list) + "\n"
    atomic_write(paths["answer.json"], lambda s: s.write(text.encode()))
    return paths


@dataclass(frozen=True)
class Family:
    """What the runner needs of a family of cases."""
    name: str
    classes: tuple                 # verdict classes, in table order
    shrink_classes: tuple          # classes worth shrinking
    make_case: Callable            # (seed, index) -> case
    build: Callable                # spec -> case
    shrink_candidates: Callable    # spec -> smaller specs
    write_case: Callable           # (case, directory) -> {'net.onnx': path, 'prop.vnnlib': path, ...}
    classify: Callable             # (case, outcome, result path) -> (class, detail)
    describe: Callable             # case -> summary columns
    margin: Callable               # case -> how clearly its witness violates (kept >= 1/4 when shrinking unsound)
    extra_summary: Callable | None = None


def _net_margin(c):
    return -fc.violation(c, c.witness, True) if c.witness is not None else 0.0


def _label(case):
    return "+".join(case.spec.quirks) or "plain"


NET = Family("net", CLASSES, FAILURES, fc.make_case, fc.build, fc.shrink_candidates,
             lambda case, directory: write_case(case, directory), lambda case, outcome, _: classify(case, outcome),
             lambda case: {"quirks": _label(case), "prop": case.spec.prop, "activation": case.spec.activation,
                           "input_shape": "x".join(map(str, case.spec.input_shape))}, _net_margin)


def _fp_family():
    from refcert.fuzz import fp_check, fp_family
    return Family("fp", fp_check.CLASSES, ("unsound", "bad-counterexample", "fp-divergent"), fp_family.make_case,
                  fp_family.build, fp_family.shrink_candidates, fp_check.write_case, fp_check.classify,
                  fp_check.describe, lambda case: 0.0, fp_check.extra_summary)


def family(name: str) -> Family:
    """'net' (the default family) or 'fp' (floating-point quirks)."""
    if name == "net":
        return NET
    if name == "fp":
        return _fp_family()
    raise ValueError(f"unknown fuzz family {name!r}; known: net, fp")


def run_case(case, directory, adapter, timeout, fam=NET):
    """Write the case, run the verifier, keep its stdout/stderr/result; (class, detail, outcome)."""
    paths = fam.write_case(case, directory)
    result = os.path.join(directory, "result.txt")
    outcome = adapter.run(paths["net.onnx"], paths["prop.vnnlib"], result, timeout)
    for name, text in (("stdout.txt", outcome.stdout), ("stderr.txt", outcome.stderr)):
        atomic_write(os.path.join(directory, name), lambda s, t=text: s.write(t.encode()))
    cls, detail = fam.classify(case, outcome, result)
    return cls, detail, outcome


def shrink(case, cls, adapter, timeout, directory, max_runs=30, max_seconds=45.0, fam=NET):
    """Greedy: accept a smaller candidate (``fam.shrink_candidates``) failing with the same class; repeat.

    Stops after ``max_runs`` verifier runs or ``max_seconds``.  For ``unsound`` the candidate's witness
    must also violate by at least 1/4 of the original margin (``fam.margin``)."""
    floor = 0.25 * fam.margin(case) if cls == "unsound" else -np.inf
    runs, deadline = 0, time.monotonic() + max_seconds
    improved = True
    while improved and runs < max_runs and time.monotonic() < deadline:
        improved = False
        for spec in fam.shrink_candidates(case.spec):
            try:
                candidate = fam.build(spec)
            except (ValueError, RuntimeError):
                continue
            if candidate.size() > case.size() or (cls == "unsound" and fam.margin(candidate) < floor):
                continue
            runs += 1
            got, _, _ = run_case(candidate, os.path.join(directory, "try"), adapter, timeout, fam)
            if got == cls:
                case, improved = candidate, True
                break
            if runs >= max_runs or time.monotonic() > deadline:
                break
    run_case(case, directory, adapter, timeout, fam)
    return case


def campaign(adapter, n_cases, seed, out, timeout, do_shrink=True, log=print, fam=NET, workers=None,
             scheduler=None, resume=False):
    """Run ``n_cases`` cases of family ``fam``; write DIR/case-NNNN/, DIR/summary.csv; return the rows (dicts).

    Cases are independent work items (``refcert.parallel``: in this process, or on a Dask cluster with
    ``workers``/``scheduler``; a case's files are written by the process that runs it, so a cluster on
    several machines needs DIR on a shared file system).  summary.csv is rewritten (atomically) after every
    finished case; ``resume`` keeps its rows and runs only the missing cases.  Case k is made from
    (seed, k) alone, so where and in which order cases run does not change them."""
    parallel.check(workers, scheduler)
    os.makedirs(out, exist_ok=True)
    summary = os.path.join(out, "summary.csv")
    rows = {r["case"]: r for r in _read_summary(summary)} if resume else {}
    if resume and rows:
        log(f"resuming: {len(rows)} case(s) already in {summary}")
    distributed = workers is not None or scheduler is not None
    items = [(index + 1, index) for index in range(n_cases)]
    for number, row in parallel.run(_case_row, items, shared=(adapter, seed, out, timeout, do_shrink, fam),
                                    workers=workers, scheduler=scheduler, done=rows, progress=distributed,
                                    what="cases"):
        rows[number] = row
        text = _csv([rows[k] for k in sorted(rows)])
        atomic_write(summary, lambda s: s.write(text.encode()))
        log(f"case {number:4d}/{n_cases}  {row['class']:18s} answer={row['answer']:7s} verdict={row['verdict']:7s} "
            f"{row['seconds']:6.2f}s  {row['quirks']} {row['prop']} {row['detail'][:80]}")
    return [rows[k] for k in sorted(rows)]


def _case_row(shared, index):
    """One work item: case ``index`` made, run, classified (and shrunk); its summary row."""
    adapter, seed, out, timeout, do_shrink, fam = shared
    case = fam.make_case(seed, index)
    directory = os.path.join(out, f"case-{index + 1:04d}")
    cls, detail, outcome = run_case(case, directory, adapter, timeout, fam)
    row = {"case": index + 1, "class": cls, "answer": case.answer, "verdict": outcome.status,
           "seconds": round(outcome.seconds, 3), **fam.describe(case),
           "detail": detail.replace("\n", " ")[:300], "shrunk": ""}
    if cls in fam.shrink_classes and do_shrink:
        small = shrink(case, cls, adapter, timeout, os.path.join(directory, "shrunk"), fam=fam)
        row["shrunk"] = f"{small.spec}"
    return row


def _read_summary(path) -> list:
    """The rows of an earlier summary.csv (case as int, seconds as float), [] when there is none."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    for row in rows:
        row["case"], row["seconds"] = int(row["case"]), float(row["seconds"])
    return rows


def _csv(rows):
    import io
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["case"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def summary_table(rows, name, classes=CLASSES):
    """A Markdown table: cases, each class, median time; then failures/crashes by quirk label."""
    counts = {c: sum(r["class"] == c for r in rows) for c in classes}
    median = statistics.median(r["seconds"] for r in rows) if rows else float("nan")
    short = {"bad-counterexample": "bad cex", "inexact-counterexample": "inexact cex"}
    head = "| verifier | cases | " + " | ".join(short.get(c, c) for c in classes) + " | median s |"
    lines = [head, "|" + "---|" * (len(classes) + 3),
             f"| {name} | {len(rows)} | " + " | ".join(str(counts[c]) for c in classes) + f" | {median:.2f} |"]
    labels = sorted({(r["quirks"], r["prop"]) for r in rows})
    by = [(lab, [r for r in rows if (r["quirks"], r["prop"]) == lab]) for lab in labels]
    by = [(lab, rs) for lab, rs in by if any(r["class"] not in ("correct",) for r in rs)]
    if by:
        lines += ["", "| quirks | property | cases | " + " | ".join(classes) + " |", "|" + "---|" * (3 + len(classes))]
        lines += [f"| {lab[0]} | {lab[1]} | {len(rs)} | " + " | ".join(str(sum(r['class'] == c for r in rs))
                                                                  for c in classes) + " |" for lab, rs in by]
    return "\n".join(lines)
