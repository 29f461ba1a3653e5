"""Files, float behaviour and verdict classes of the fp family (``fp_family``; issue 11, item 5).

* ``onnx_model``: Gemm (transB=1) + Relu layers, batch 1, float32 or float64 tensors.
* ``float_check``: does onnxruntime, executing the file in its dtype, violate the property at some float
  input of the real box?  Every float of the box when there are at most GRID_LIMIT ('exhaustive'; 'empty'
  when the box holds none), else the region vertices, the exact witness and the violating polygon's
  vertices rounded down and up (one more ulp each way), the box's end floats, and SAMPLES random floats
  ('sampled': a 'holds' is then a search result, not a proof).  Outputs are compared with the
  thresholds exactly (``Fraction`` of the float output).
* ``classify`` (classes in ``CLASSES``): a verdict against the real answer R and the float behaviour F.
    correct                 unsat with R unsat and F holds; sat whose point is in the real box and violates
                            in real arithmetic (exact checks on the decimals the verifier wrote)
    unsound                 unsat with R sat (the detail says whether onnxruntime violates too)
    fp-divergent            unsat with R unsat but onnxruntime violating at a float input of the box; or sat
                            whose point fails the real check but, rounded to the file's dtype, lies in the
                            box and makes onnxruntime violate (right for the float execution only)
    inexact-counterexample  sat, R sat, the point fails the exact check but passes the loose one of the
                            default family (TOL_X, TOL_Y: e.g. Marabou prints six decimals)
    bad-counterexample      any other sat: no point, outside the box, or not violating (R unsat or sat)
    incomplete / crash      as in ``runner``
"""
from __future__ import annotations

import itertools
import json
import os
import re
from fractions import Fraction

import numpy as np

from refcert.fuzz import cases as fc
from refcert.fuzz import rational as r
from refcert.io.npz import atomic_write

CLASSES = ("correct", "unsound", "fp-divergent", "inexact-counterexample", "bad-counterexample", "incomplete",
           "crash")
GRID_LIMIT = 4096
SAMPLES = 256


def onnx_model(layers, dtype) -> bytes:
    """The serialized ONNX model (opset 13) of Gemm/Relu layers, input [1, n] and output [1, m]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    nodes, inits, x = [], [], "input"
    for i, (W, b) in enumerate(layers):
        inits += [numpy_helper.from_array(np.asarray(W, dtype), f"W{i}"),
                  numpy_helper.from_array(np.asarray(b, dtype), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [f"gemm{i}"], name=f"gemm{i}", transB=1))
        x = f"gemm{i}"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
    n_in, n_out = layers[0][0].shape[1], layers[-1][0].shape[0]
    graph = helper.make_graph(nodes, "refcert_fuzz_fp", [helper.make_tensor_value_info("input", elem, [1, n_in])],
                              [helper.make_tensor_value_info(x, elem, [1, n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="refcert-fuzz-fp")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run_onnxruntime(model: bytes, points, dtype):
    """Outputs (len(points), m) of the model at each point, in its dtype."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return [session.run(None, {"input": np.asarray(p, dtype=dtype).reshape(1, -1)})[0].reshape(-1) for p in points]


def violates(C, d, y):
    """Every row C y <= d, exactly (y floats or Fractions)."""
    y = [Fraction(float(v)) if not isinstance(v, Fraction) else v for v in y]
    return all(sum((c * v for c, v in zip(row, y)), Fraction(0)) <= bound for row, bound in zip(C, d))


def margin(C, d, y):
    """max over rows of (C y − d): <= 0 iff violated (a Fraction)."""
    return max(sum((c * v for c, v in zip(row, y)), Fraction(0)) - bound for row, bound in zip(C, d))


def _inside(case, x):
    return all(lo <= Fraction(float(v)) <= hi for v, lo, hi in zip(x, case.lower, case.upper))


def _candidates(case, extra, rng):
    """Float points of the box: near the given real points (each coordinate rounded down and up, ±1 ulp
    more), the end floats of the box and random samples."""
    dt, per_point = case.dtype, []
    for p in extra:
        options = []
        for v in p:
            down = r.float_floor(v, dt)
            options.append([np.nextafter(down, dt(-np.inf)), down, np.nextafter(down, dt(np.inf)),
                            np.nextafter(np.nextafter(down, dt(np.inf)), dt(np.inf))])
        per_point += [tuple(c) for c in itertools.product(*options)]
    ends = [(r.float_ceil(lo, dt), r.float_floor(hi, dt)) for lo, hi in zip(case.lower, case.upper)]
    per_point += [tuple(c) for c in itertools.product(*ends)]
    lo = np.array([float(v) for v in case.lower])
    hi = np.array([float(v) for v in case.upper])
    per_point += [tuple(v) for v in (lo + rng.random((SAMPLES, len(lo))) * (hi - lo)).astype(dt)]
    return sorted({p for p in per_point if _inside(case, p)})


def float_check(case, extra):
    """(x or None, method, points): a float input of the box where onnxruntime violates (module docstring)."""
    dt = case.dtype
    grids = [r.float_grid(lo, hi, dt, GRID_LIMIT) for lo, hi in zip(case.lower, case.upper)]
    if all(g is not None for g in grids) and np.prod([len(g) for g in grids]) <= GRID_LIMIT:
        points, method = list(itertools.product(*grids)), "exhaustive"
        if not points:
            return None, "empty", 0
    else:
        points = _candidates(case, extra, np.random.default_rng([case.spec.seed, 4]))
        method = "sampled"
    for x, y in zip(points, run_onnxruntime(case.onnx, points, dt)):
        if violates(case.C, case.d, y):
            return np.asarray(x, dtype=dt), method, len(points)
    return None, method, len(points)


def float_label(case):
    if case.float_method == "empty":
        return "no float in box"
    label = "violates" if case.float_x is not None else "holds"
    return label + (" (sampled)" if case.float_method == "sampled" else "")


# ---- verdicts
def claimed_point(outcome, result_path, n):
    """The counterexample as the exact decimals the verifier wrote (the result file), else its floats."""
    if outcome.x is None or np.size(outcome.x) != n:
        return None
    try:
        with open(result_path, encoding="utf-8") as stream:
            pairs = dict(re.findall(r"\(\s*X_(\d+)\s+([^\s()]+)\s*\)", stream.read()))
        x = tuple(Fraction(pairs[str(i)]) for i in range(n))
        if all(float(v) == float(w) for v, w in zip(x, np.ravel(outcome.x))):   # not a stale file
            return x
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        pass
    return tuple(Fraction(float(v)) for v in np.ravel(outcome.x)) if np.all(np.isfinite(outcome.x)) else None


def _show(x):
    return "(" + ", ".join(f"{float(v):.17g}" for v in x) + ")"


def _float_note(case):
    if case.float_x is not None:
        return f"onnxruntime {case.spec.dtype} also violates at {_show(case.float_x)}"
    if case.float_method == "empty":
        return f"the box holds no {case.spec.dtype} input"
    how = "every float of the box" if case.float_method == "exhaustive" else "every float input tried"
    return f"onnxruntime {case.spec.dtype} satisfies the property at {how} ({case.float_points})"


def check_point(case, x):
    """'' if x (Fractions) is in the real box and violates in real arithmetic, else why not."""
    outside = max(max(lo - v, v - hi) for v, lo, hi in zip(x, case.lower, case.upper))
    if outside > 0:
        return f"outside the real box by {float(outside):.3g}"
    value = margin(case.C, case.d, r.forward(r.to_fractions(case.layers), x))
    return "" if value <= 0 else f"does not violate in real arithmetic (worst row exceeds d by {float(value):.3g})"


def _float_point_ok(case, x):
    xf = np.array([case.dtype(float(v)) for v in x])
    return _inside(case, xf) and violates(case.C, case.d, run_onnxruntime(case.onnx, [xf], case.dtype)[0])


def _loose_ok(case, x):
    lo, hi = (np.array([float(v) for v in b]) for b in (case.lower, case.upper))
    xs = np.array([float(v) for v in x])
    if np.any(np.maximum(lo - xs, xs - hi) > fc.TOL_X * (1 + np.maximum(abs(lo), abs(hi)))):
        return False
    clipped = [min(max(v, a), b) for v, a, b in zip(x, case.lower, case.upper)]
    tol = fc.TOL_Y * (1 + max(abs(float(v)) for v in case.d))
    return float(margin(case.C, case.d, r.forward(r.to_fractions(case.layers), clipped))) <= tol


def classify(case, outcome, result_path=""):
    """(class, detail) of a verifier's outcome on an fp case (module docstring)."""
    done = fc.unfinished(outcome)
    if done is not None:
        return done
    if outcome.status == "unsat":
        if case.answer == "sat":
            return "unsound", f"says unsat; real witness {_show(case.witness)}; " + _float_note(case)
        if case.float_x is not None:
            return "fp-divergent", "unsat holds for the real network; " + _float_note(case)
        return "correct", ""
    x = claimed_point(outcome, result_path, len(case.lower))
    if x is None:
        return "bad-counterexample", "sat without a (finite) counterexample"
    problem = check_point(case, x)
    if not problem:
        return "correct", ""
    where = f"point {_show(x)} {problem}"
    if _float_point_ok(case, x):
        return "fp-divergent", f"{where}, but onnxruntime {case.spec.dtype} violates there (real answer {case.answer})"
    if case.answer == "sat" and _loose_ok(case, x):
        return "inexact-counterexample", f"{where}; within the print tolerance, and the real answer is sat"
    return "bad-counterexample", f"{where}; real answer {case.answer}; " + _float_note(case)


# ---- files and summary
def vnnlib_text(case):
    lines = [f"; refcert fuzz fp case: {case.spec}", "; constants are exact decimals; real semantics in answer.json"]
    lines += [f"(declare-const X_{i} Real)" for i in range(len(case.lower))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(case.spec.n_outputs)]
    for i, (lo, hi) in enumerate(case.box_text):
        lines += [f"(assert (>= X_{i} {lo}))", f"(assert (<= X_{i} {hi}))"]
    lines += [f"(assert {atom})" for atom in case.atoms]
    return "\n".join(lines) + "\n"


def _exact(v):
    return r.exact_decimal(v) or f"{v.numerator}/{v.denominator}"


def write_case(case, directory):
    """net.onnx, prop.vnnlib, answer.json under ``directory`` (created); returns the file paths."""
    os.makedirs(directory, exist_ok=True)
    paths = {k: os.path.join(directory, k) for k in ("net.onnx", "prop.vnnlib", "answer.json")}
    atomic_write(paths["net.onnx"], lambda s: s.write(case.onnx))
    text = vnnlib_text(case)
    atomic_write(paths["prop.vnnlib"], lambda s: s.write(text.encode()))
    info = {"answer": case.answer, "semantics": "real inputs of the real box, real arithmetic, stored weights",
            "depth": _exact(case.depth),
            "witness": None if case.witness is None else [_exact(v) for v in case.witness],
            "float": {"label": float_label(case), "method": case.float_method, "points": case.float_points,
                      "x": None if case.float_x is None else [float(v) for v in case.float_x]},
            "spec": vars(case.spec)}
    data = (json.dumps(info, indent=1) + "\n").encode()
    atomic_write(paths["answer.json"], lambda s: s.write(data))
    return paths


def describe(case):
    """Summary columns of a case (after case, class, answer, verdict, seconds)."""
    return {"quirks": case.spec.quirk + ("-f64" if case.spec.dtype == "float64" else ""), "prop": case.spec.prop,
            "float": float_label(case), "divergent": "yes" if case.divergent else "no",
            "gap": case.spec.gap, "depth": f"{float(case.depth):.3g}", "input_shape": str(case.spec.n_inputs)}


def extra_summary(rows):
    """Per construction: cases, real sat, float violates, real and float disagree, and the verdict classes."""
    lines = ["| construction | cases | real sat | float violates | real ≠ float | " + " | ".join(CLASSES) + " |",
             "|" + "---|" * (5 + len(CLASSES))]
    for label in sorted({row["quirks"] for row in rows}):
        rs = [row for row in rows if row["quirks"] == label]
        counts = [len(rs), sum(x["answer"] == "sat" for x in rs), sum(x["float"].startswith("violates") for x in rs),
                  sum(x["divergent"] == "yes" for x in rs)] + [sum(x["class"] == c for x in rs) for c in CLASSES]
        lines.append(f"| {label} | " + " | ".join(map(str, counts)) + " |")
    unsound = [abs(float(x["depth"])) for x in rows if x["class"] == "unsound"]
    buckets = [sum(v >= 1e-3 for v in unsound), sum(1e-7 <= v < 1e-3 for v in unsound), sum(v < 1e-7 for v in unsound)]
    lines += ["", "unsound by depth of the real violation: >= 1e-3: {}, 1e-7..1e-3: {}, < 1e-7 (ties included): {}"
              .format(*buckets)]
    return "\n".join(lines)
