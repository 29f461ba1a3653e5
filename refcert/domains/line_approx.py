"""ApproxLine (Mirman, Gehr, Vechev, "Robustness certification of generative models", PLDI'21, Sec. 4).

The element is ``line_element.LineElement`` with domain 'approxline': ordered parts, each an exact
segment or a box, each with its mass.  Everything piecewise-linear is shared with ExactLine
(``line.py``); this file holds the relaxation that keeps at most ``budget`` parts (which ExactLine's
splitting transformers end with), the residual ``add`` of two part lists, the sigmoid/tanh transformers
(boxes, monotone) and ``from_bounds`` (one box: Box semantics).  Layer: above ``line_element``, below
``line``, which builds the 'approxline' table from these and registers it.  Proof: proofs/approxline.md.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from refcert import autodiff as ad
from refcert import backends
from refcert.autodiff import Tensor
from refcert.domains.line_element import LineElement, Parts, _lerp, _map


def relax(element: LineElement) -> LineElement:
    """Merge neighbouring parts into bounding boxes until each item has at most ``budget`` parts.

    Greedy rounds (our choice; the paper leaves the heuristic open): each round merges the disjoint
    neighbour pairs whose joint bounding box has the smallest total width Σ(u − l), as many as needed.
    Sound: each point of a merged run lies in the run's bounding box; masses add up."""
    if element.budget is None:
        return element
    items = tuple(_relax_parts(p, element.budget) for p in element.items)
    return dataclasses.replace(element, items=items)


def _relax_parts(parts: Parts, budget: int) -> Parts:
    M = parts.is_box.shape[0]
    if M <= budget:
        return parts
    backend = backends.current()
    start = np.asarray(backend.to_numpy(parts.start.value))
    end = np.asarray(backend.to_numpy(parts.end.value))
    shape = start.shape[1:]
    lo = np.minimum(start, end).reshape(M, -1)
    hi = np.maximum(start, end).reshape(M, -1)
    first = np.arange(M)             # first original part of each group
    size = np.ones(M, int)
    while first.size > budget:
        G, need = first.size, first.size - budget
        cost = (np.maximum(hi[:-1], hi[1:]) - np.minimum(lo[:-1], lo[1:])).sum(axis=1)
        taken = np.zeros(G, bool)
        merge = np.zeros(G - 1, bool)
        for k in np.argsort(cost, kind="stable"):
            if need == 0:
                break
            if not taken[k] and not taken[k + 1]:
                taken[k] = taken[k + 1] = merge[k] = True
                need -= 1
        keep = np.concatenate([[True], ~merge])     # group g starts a new group unless merged into g − 1
        starts = np.nonzero(keep)[0]
        lo, hi = np.minimum.reduceat(lo, starts, axis=0), np.maximum.reduceat(hi, starts, axis=0)
        size = np.add.reduceat(size, starts)
        first = first[starts]
    is_box = (size > 1) | parts.is_box[first]
    box = is_box.reshape((-1,) + (1,) * len(shape))
    new_start = np.where(box, lo.reshape((-1,) + shape), start[first])
    new_end = np.where(box, hi.reshape((-1,) + shape), end[first])
    t = np.concatenate([parts.t[first], [parts.t[-1]]])
    return Parts(t, Tensor(backend.asarray(new_start)), Tensor(backend.asarray(new_end)), is_box)


def _bbox(parts: Parts, lo: float, hi: float, first: int, last: int):
    """Bounding box (lower, upper) (*shape) of the item restricted to t ∈ [lo, hi] (parts first..last)."""
    xp = backends.current().xp
    index = np.arange(first, last + 1)
    t0, t1 = parts.t[index], parts.t[index + 1]
    width = np.where(t1 > t0, t1 - t0, 1.0)
    s_lo = np.where(parts.is_box[index], 0.0, np.clip((lo - t0) / width, 0.0, 1.0))
    s_hi = np.where(parts.is_box[index], 1.0, np.clip((hi - t0) / width, 0.0, 1.0))
    p = _lerp(parts.start, parts.end, index, s_lo)
    q = _lerp(parts.start, parts.end, index, s_hi)
    return xp.min(xp.minimum(p, q), axis=0), xp.max(xp.maximum(p, q), axis=0)


def _add_parts(a: Parts, b: Parts) -> Parts:
    """a + b on the common refinement of both grids; a block covered by a box in either is a box."""
    t = np.union1d(a.t, b.t)
    inside = np.zeros(t.shape, bool)
    for X in (a, b):
        m = np.clip(np.searchsorted(X.t, t, side="right") - 1, 0, X.is_box.size - 1)
        inside |= X.is_box[m] & (t > X.t[m]) & (t < X.t[m + 1])
    t = t[~inside]
    lo, hi = t[:-1], t[1:]
    rows, simple = [], np.ones(lo.size, bool)
    for X in (a, b):
        first = np.clip(np.searchsorted(X.t, lo, side="right") - 1, 0, X.is_box.size - 1)
        last = np.clip(np.searchsorted(X.t, hi, side="left") - 1, first, X.is_box.size - 1)
        simple &= (first == last) & ~X.is_box[first]
        t0, t1 = X.t[first], X.t[first + 1]
        width = np.where(t1 > t0, t1 - t0, 1.0)
        s_lo, s_hi = np.clip((lo - t0) / width, 0, 1), np.clip((hi - t0) / width, 0, 1)
        rows.append((first, last, _lerp(X.start, X.end, first, s_lo), _lerp(X.start, X.end, first, s_hi)))
    (fa, la, pa, qa), (fb, lb, pb, qb) = rows
    start, end = pa + pb, qa + qb
    boxed = np.nonzero(~simple)[0]
    if boxed.size:
        xp = backends.current().xp
        lows, highs = [], []
        for k in boxed:
            la_, ua_ = _bbox(a, lo[k], hi[k], fa[k], la[k])
            lb_, ub_ = _bbox(b, lo[k], hi[k], fb[k], lb[k])
            lows.append(la_ + lb_)
            highs.append(ua_ + ub_)
        index = np.arange(lo.size)
        index[boxed] = lo.size + np.arange(boxed.size)
        backend = backends.current()
        index = backend.asarray(index, dtype=backend.dtype("int64"))
        start = xp.take(xp.concat([start, xp.stack(lows, axis=0)], axis=0), index, axis=0)
        end = xp.take(xp.concat([end, xp.stack(highs, axis=0)], axis=0), index, axis=0)
    return Parts(t, Tensor(start), Tensor(end), ~simple)


def add(a: LineElement, b: LineElement, *, origin=None) -> LineElement:
    """Residual merge: both branches come from the same segment, so both are functions of t; on each
    block of the merged grid the sum of two affine pieces is affine (exact), else box + box (sound)."""
    if not isinstance(b, LineElement) or len(a.items) != len(b.items):
        raise ValueError(f"{a.domain}: add needs two line elements of one batch, got {type(b).__name__}")
    items = tuple(_add_parts(p, q) for p, q in zip(a.items, b.items))
    base = origin.trail if isinstance(origin, LineElement) else ()
    trail = base + (("residual", a.trail[len(base):], b.trail[len(base):]),)
    return relax(dataclasses.replace(a, items=items, trail=trail))


def _monotone(f, op: str):
    """A monotone activation on boxes: segments become their bounding boxes first (sound, not exact)."""
    def transformer(element: LineElement) -> LineElement:
        xp = backends.current().xp

        def item(parts: Parts, b: int) -> Parts:
            lower = Tensor(xp.minimum(parts.start.value, parts.end.value))
            upper = Tensor(xp.maximum(parts.start.value, parts.end.value))
            return Parts(parts.t, f(lower), f(upper), np.ones(parts.is_box.shape, bool))
        return _map(element, item, op, {})
    return transformer


def from_bounds(lower, upper) -> LineElement:
    """Each box as one box part of mass 1 (then ApproxLine computes exactly what Box computes)."""
    lower, upper = ad.as_tensor(lower), ad.as_tensor(upper)
    if lower.shape != upper.shape or lower.ndim < 2:
        raise ValueError(f"approxline from_bounds needs lower, upper of one shape (batch, *shape), "
                         f"got {lower.shape} and {upper.shape}")
    if not bool(np.all(lower.numpy() <= upper.numpy())):
        raise ValueError("approxline from_bounds needs lower <= upper everywhere")
    items = tuple(Parts(np.array([0.0, 1.0]), Tensor(lower.value[b:b + 1, ...]), Tensor(upper.value[b:b + 1, ...]),
                        np.ones(1, bool)) for b in range(lower.shape[0]))
    return LineElement(items, "approxline", None, ("box", lower, upper))


#: ApproxLine's transformers that differ from ExactLine's (``line.APPROXLINE`` is ExactLine's table with these)
OWN_TRANSFORMERS = {"add": add, "sigmoid": _monotone(lambda x: ad.sigmoid(x), "sigmoid"),
                    "tanh": _monotone(lambda x: ad.tanh(x), "tanh")}
