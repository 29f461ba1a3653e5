"""Which class each part of a segment gets: exact fractions (ExactLine), sound intervals (ApproxLine).

For t uniform on [0, 1] (REFERENCES.md, "Line specifications"; ExactLine, NeurIPS'19, Sec. 5; ApproxLine,
PLDI'21, Sec. 4.3).  On a segment piece every logit is affine in t, so the differences y_c − y_j change
sign only at their crossings; cutting the piece there leaves sub-pieces on which the order of the
logits, hence the argmax, is constant (read at the midpoint).  A box counts for c in the upper bound if
c could be the argmax (u_c ≥ max_{j≠c} l_j), in the lower bound only if it certainly is (l_c > max_{j≠c} u_j).
Ties follow ``np.argmax`` (the first maximal class).  Proof: proofs/approxline.md, "Class fractions".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refcert import backends
from refcert.domains.line import LineElement, Parts, subdivide


@dataclass(frozen=True)
class ClassPieces:
    """Sub-pieces of one item's segments with a constant argmax: t ∈ [t_lo, t_hi] gets class ``cls``."""
    t_lo: np.ndarray
    t_hi: np.ndarray
    cls: np.ndarray


def _numpy(parts: Parts):
    start = np.asarray(backends.to_numpy(parts.start.value)).reshape(parts.is_box.size, -1)
    end = np.asarray(backends.to_numpy(parts.end.value)).reshape(parts.is_box.size, -1)
    return start, end


def class_pieces(parts: Parts) -> ClassPieces:
    """Cut every segment part of an output item (M, n) at all crossings of y_c − y_j (exact)."""
    start, end = _numpy(parts)
    seg = np.nonzero(~parts.is_box)[0]
    A, B = start[seg], end[seg]
    D0 = A[:, :, None] - A[:, None, :]
    D1 = B[:, :, None] - B[:, None, :]
    cross = ((D0 < 0) & (D1 > 0)) | ((D0 > 0) & (D1 < 0))
    m = np.nonzero(cross)[0]
    s = D0[cross] / (D0[cross] - D1[cross])
    index, s_lo, s_hi = subdivide(seg.size, m, s)
    mid = ((s_lo + s_hi) / 2)[:, None]
    cls = np.argmax((1 - mid) * A[index] + mid * B[index], axis=1) if index.size else np.zeros(0, int)
    t0, t1 = parts.t[seg[index]], parts.t[seg[index] + 1]
    return ClassPieces(t0 + s_lo * (t1 - t0), np.where(s_hi == 1.0, t1, t0 + s_hi * (t1 - t0)), cls)


def box_classes(parts: Parts):
    """For the box parts of an output item: (mass (B,), possible (B, n), certain (B, n)) argmax flags."""
    start, end = _numpy(parts)
    box = parts.is_box
    lower, upper = np.minimum(start, end)[box], np.maximum(start, end)[box]
    n = lower.shape[1]
    possible = np.ones(lower.shape, bool)
    certain = np.ones(lower.shape, bool)
    for c in range(n):
        others = np.arange(n) != c
        if n > 1:
            possible[:, c] = upper[:, c] >= lower[:, others].max(axis=1)
            certain[:, c] = lower[:, c] > upper[:, others].max(axis=1)
    return parts.mass[box], possible, certain


def class_fractions(element: LineElement):
    """(lower, upper) NumPy (batch, n): for each item and class c, bounds on the fraction of t ∈ [0, 1]
    whose output has argmax c.  Exact (lower == upper) when the item has no boxes (ExactLine)."""
    if not isinstance(element, LineElement):
        raise TypeError(f"class_fractions needs an exactline/approxline element, got {type(element).__name__}")
    lows, highs = [], []
    for parts in element.items:
        n = int(np.prod(parts.start.shape[1:]))
        pieces = class_pieces(parts)
        exact = np.bincount(pieces.cls, weights=pieces.t_hi - pieces.t_lo, minlength=n)
        mass, possible, certain = box_classes(parts)
        lows.append(exact + mass @ certain)
        highs.append(np.minimum(exact + mass @ possible, 1.0))
    return np.stack(lows), np.stack(highs)


# --- sound verdicts (proofs/floating_point.md §6) -------------------------------------------------
@dataclass(frozen=True)
class Confirmed:
    """Sound bounds per batch item of a line element's output: min/max over the item's parts of a sound
    domain's bounds on each part's input piece.  ``bounds()`` (batch, *out shape)."""
    lower: object
    upper: object
    domain: str = "confirmed"

    def bounds(self):
        return self.lower, self.upper


def _pieces(source, grids):
    """A zonotope batch: for item b and part m, the input piece x(t) = a + t·(b − a), t ∈ [t_m, t_{m+1}]:
    centre a + t_c·d, one generator t_r·d (fp.mid_rad of the t interval), and in β the rounding error of
    forming them (2γ·(|a| + (|t_c| + t_r)|d|)).  Returns (zonotope, item index of each part)."""
    from refcert import autodiff as ad
    from refcert import fp
    from refcert.autodiff import Tensor
    from refcert.domains.zonotope import Zonotope
    _, x_from, x_to = source
    a, b = (np.asarray(backends.to_numpy(t.value)) for t in (x_from, x_to))
    item = np.concatenate([np.full(len(g) - 1, k) for k, g in enumerate(grids)])
    lo = np.concatenate([g[:-1] for g in grids]).astype(a.dtype)
    hi = np.concatenate([g[1:] for g in grids]).astype(a.dtype)
    with ad.no_grad():
        t_mid, t_rad = fp.mid_rad(Tensor(lo), Tensor(hi))
        t_mid, t_rad = t_mid.numpy(), t_rad.numpy()
        shape = (-1,) + (1,) * (a.ndim - 1)
        d = b - a
        start, step = a[item], d[item]
        center = start + t_mid.reshape(shape) * step
        generator = t_rad.reshape(shape) * step
        size = np.abs(start) + (np.abs(t_mid).reshape(shape) + t_rad.reshape(shape)) * np.abs(step)
        error = fp.radius(Tensor(size), 3, execution=None)
        beta = error.numpy() + fp.radius(Tensor(np.abs(a) + np.abs(b)), 1, execution=None).numpy()[item]
    z = Zonotope(Tensor(center), Tensor(generator[:, None]), Tensor(beta), "deepzono")
    return z, item


def replay(trail: tuple, element, item=None):
    """Run the recorded layers on ``element`` of another domain, each under the execution precision it was
    recorded with; ``item`` maps the element's batch to the line element's (per-input weights follow it)."""
    from refcert import domains, fp
    from refcert.autodiff import Tensor
    table = domains.domain_of(element).transformers
    for step in trail:
        if step[0] == "residual":
            branch_a, branch_b = replay(step[1], element, item), replay(step[2], element, item)
            element = table["add"](branch_a, branch_b, origin=element)
            continue
        op, params, execution = step
        if op == "linear" and params["weight"].ndim == 3 and item is not None:  # a specification C
            rows = backends.current().asarray(item)
            params = {"weight": Tensor(backends.current().xp.take(params["weight"].value, rows, axis=0)),
                      "bias": None if params["bias"] is None else
                      Tensor(backends.current().xp.take(params["bias"].value, rows, axis=0))}
        with fp.use(execution=execution):
            element = table[op](element, **params)
    return element


def confirm(out: LineElement) -> Confirmed:
    """Sound bounds of the line element ``out``: its input pieces pushed through its ``trail`` by a sound
    domain.  A segment source: every part's input piece (from ``out``'s grids) as a zonotope, bounded by
    DeepZono — on a piece of ExactLine's partition a ReLU net is affine, so this is (nearly) exact — and
    intersected with Box on the piece's bounding box; a box source: Box on the box, which is what
    ApproxLine computes on a box."""
    from refcert import autodiff as ad
    from refcert import domains
    from refcert.autodiff import Tensor
    xp = backends.current().xp
    kind = out.source[0] if out.source else None
    if kind == "box":
        box = domains.get("box").from_bounds(out.source[1], out.source[2])
        return Confirmed(*replay(out.trail, box).bounds())
    if kind != "segment":
        raise ValueError("a line element without a source cannot be bounded soundly; build it with "
                         "refcert.domains.line.segment or from_bounds")
    z, item = _pieces(out.source, [p.t for p in out.items])
    with ad.no_grad():
        low, high = replay(out.trail, z, item).bounds()
        box_low, box_high = replay(out.trail, domains.get("box").from_bounds(*z.bounds()), item).bounds()
        low, high = ad.maximum(low, box_low), ad.minimum(high, box_high)  # both sound: never looser than Box
        lows, highs = [], []
        for k in range(len(out.items)):
            rows = backends.current().asarray(np.nonzero(item == k)[0])
            lows.append(xp.min(xp.take(low.value, rows, axis=0), axis=0))
            highs.append(xp.max(xp.take(high.value, rows, axis=0), axis=0))
        return Confirmed(Tensor(xp.stack(lows, axis=0)), Tensor(xp.stack(highs, axis=0)))
