"""Certify that a whole segment x(t) = x_from + t (x_to − x_from), t ∈ [0, 1], keeps one class.

REFERENCES.md, "Line specifications".  ``exactline`` (Sotoudeh & Thakur, NeurIPS'19) is exact for
piecewise-linear nets: it proves or refutes and gives the exact fraction of the path per class.
``approxline`` (Mirman et al., PLDI'21) keeps at most ``budget`` parts (sound intervals for the
fractions).  ``deepzono`` (the segment is a zonotope with one generator) and ``box`` (the segment's
bounding box) are there for comparison.  Verified iff the lower bound of every y_label − y_j over the
segment is > 0; falsified only by a point of the segment that a fresh forward pass misclassifies.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from refcert import autodiff as ad
from refcert import backends, domains, fp, interpret, nn, spec
from refcert.autodiff import Tensor, no_grad
from refcert.domains import line, line_certify

SEGMENT_DOMAINS = ("exactline", "approxline", "deepzono", "box")
#: evenly spaced t checked concretely when looking for a counterexample (besides the line pieces)
PROBES = 33
#: most line pieces of another class that are re-checked by a forward pass
WITNESS_TRIES = 32


@dataclass
class SegmentResult:
    domain: str
    label: int
    verdict: str                          # 'verified' | 'falsified' | 'unknown'
    margin: float                         # certified lower bound of min_j y_label − y_j over the segment
    fractions_lower: np.ndarray | None    # (n,) per class; exact (== upper) for exactline; None for box/deepzono
    fractions_upper: np.ndarray | None
    counterexample: np.ndarray | None     # (*shape) a point of the segment with another class
    t_counterexample: float | None
    parts: int | None                     # number of output parts (line domains)
    seconds: float


def _input(x, name: str) -> np.ndarray:
    x = np.asarray(backends.to_numpy(ad.as_tensor(x).value), dtype=float)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"certify_segment: {name} must be finite")
    return x


def _element(domain: str, x_from: np.ndarray, x_to: np.ndarray, budget):
    """The segment as an element of ``domain``; inputs (1, *shape)."""
    if domain in ("exactline", "approxline"):
        return line.segment(x_from, x_to, domain=domain, budget=budget)
    if budget is not None:
        raise ValueError(f"budget applies to approxline only, not {domain!r}")
    if domain == "box":
        return domains.get("box").from_bounds(np.minimum(x_from, x_to), np.maximum(x_from, x_to))
    center, generator = (x_from + x_to) / 2, (x_to - x_from) / 2
    with no_grad():  # the rounding of centre and generator, as a box term (proofs/floating_point.md §6)
        beta = fp.radius(Tensor(np.abs(x_from) + np.abs(x_to)), 1, execution=None)
    beta = np.zeros_like(center) if beta is None else beta.numpy()
    if domain not in domains.names():
        raise ValueError(f"certify_segment: domain {domain!r} is not available (have {domains.names()})")
    from refcert.domains import zonotope
    if not isinstance(domains.get(domain).from_bounds(x_from, x_from), zonotope.Zonotope):
        raise ValueError(f"certify_segment: {domain!r} cannot hold a segment exactly; use exactline, "
                         "approxline, box or a zonotope domain")
    # center (1, *shape), one generator (1, 1, *shape), no box term
    return zonotope.Zonotope(center=Tensor(center), generators=Tensor(generator[:, None]),
                             box_radius=Tensor(beta), domain=domain)


def _layers(net) -> list:
    return list(net.layers) if isinstance(net, nn.Sequential) else [net]


def certify_segment(net, x_from, x_to, label: int, domain: str = "exactline",
                    budget: int | None = None) -> SegmentResult:
    """Verdict for the segment x_from → x_to (each (*input_shape), no batch axis) and class ``label``."""
    if domain not in SEGMENT_DOMAINS:
        raise ValueError(f"certify_segment: unknown domain {domain!r}; choose one of {SEGMENT_DOMAINS}")
    a, b = _input(x_from, "x_from")[None], _input(x_to, "x_to")[None]
    if a.shape != b.shape:
        raise ValueError(f"certify_segment: x_from {a.shape[1:]} and x_to {b.shape[1:]} differ in shape")
    nn.check_finite(net)
    dtype = spec._float_dtype(net)
    if np.array_equal(a.astype(dtype), a) and np.array_equal(b.astype(dtype), b):  # else keep float64: the
        a, b = a.astype(dtype), b.astype(dtype)                                  # segment is the one given
    n = spec.output_size(net)
    if not 0 <= int(label) < n:
        raise ValueError(f"certify_segment: label {label} outside 0..{n - 1}")
    start = time.perf_counter()
    execution = fp.policy().execution or nn.parameter_dtype(net)
    nn.check_range(net, execution)
    with no_grad(), fp.use(execution=execution):
        element = _element(domain, a, b, budget)
        out = interpret.run(_layers(net), element)
        margin, lows, highs, parts = _margin(net, element, out, domain, label, n)
        verdict, witness, t_witness = "verified" if margin > 0 else "unknown", None, None
        if verdict != "verified":
            t_witness = _find_counterexample(net, a[0], b[0], label, out if domain in ("exactline", "approxline")
                                             else None)
            if t_witness is not None:
                verdict, witness = "falsified", a[0] + t_witness * (b[0] - a[0])
    return SegmentResult(domain, int(label), verdict, margin, lows, highs, witness, t_witness, parts,
                         time.perf_counter() - start)


def _margin(net, element, out, domain: str, label: int, n: int):
    """(min_j sound lower bound of y_label − y_j, fraction lows, fraction highs, part count).  The bound
    comes from ``spec.margin_bounds`` (for line domains: confirmed piece by piece in a sound domain)."""
    margin = float("inf") if n == 1 else float(np.min(spec.margin_bounds(net, element, [label], n).numpy()))
    if math.isnan(margin):
        margin = -math.inf
    if domain not in ("exactline", "approxline"):
        return margin, None, None, None
    lows, highs = line_certify.class_fractions(out)
    return margin, lows[0], highs[0], out.items[0].is_box.size


def _predicts(net, x: np.ndarray) -> np.ndarray:
    return np.argmax(net(Tensor(x)).numpy(), axis=-1)


def _find_counterexample(net, a: np.ndarray, b: np.ndarray, label: int, out) -> float | None:
    """A t such that the real point x(t) of the segment is misclassified (``_surely_wrong``), or None.
    Candidates: line pieces of another class, then evenly spaced t, each pre-screened by a forward pass."""
    candidates = list(np.linspace(0.0, 1.0, PROBES))
    if out is not None:
        pieces = line_certify.class_pieces(out.items[0])
        other = np.nonzero(pieces.cls != label)[0]
        other = other[np.argsort(pieces.t_lo[other] - pieces.t_hi[other], kind="stable")][:WITNESS_TRIES]
        candidates = list((pieces.t_lo[other] + pieces.t_hi[other]) / 2) + candidates
    t = np.asarray(candidates)
    points = a[None] + t.reshape((-1,) + (1,) * a.ndim) * (b - a)[None]
    for k in np.nonzero(_predicts(net, points) != label)[0]:
        if _surely_wrong(net, a, b, float(t[k]), label):
            return float(t[k])
    return None


def _surely_wrong(net, a: np.ndarray, b: np.ndarray, t: float, label: int) -> bool:
    """Is the real point a + t·(b − a) misclassified (or tied) by the real network?  A sound Box bound (real
    arithmetic) of y_label − y_j over a float box enclosing the point (its rounding error bounded by fp)
    is ≤ 0 for some j."""
    with no_grad():
        x = a + t * (b - a)
        size = np.abs(a) + abs(t) * (np.abs(a) + np.abs(b))
        error = fp.radius(Tensor(size[None]), 3, execution=None)
        error = np.zeros_like(size[None]) if error is None else error.numpy()
        lower, upper = fp.widen(Tensor(x[None] - error), Tensor(x[None] + error))
        element = domains.get("box").from_bounds(lower, upper)
        with fp.use(execution="exact"):  # the point is real: refute (a), the real network's margin
            bound = spec.margin_element(net, element, [label]).bounds()[1].numpy()
    return bool((bound <= 0).any())
