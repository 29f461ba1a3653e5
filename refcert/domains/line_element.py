"""The line domains' lowest layer: the element, splitting its parts, and its sound bounds.

For ExactLine and ApproxLine (``line.py`` explains both; REFERENCES.md, "Line specifications").  One
element type serves both (ExactLine = ApproxLine with no budget and no boxes).  Per batch item a
``Parts`` holds a grid 0 = t_0 < … < t_M = 1 and, for part m covering [t_m, t_{m+1}] (probability mass
t_{m+1} − t_m under t uniform on [0, 1]), either a segment (``start``/``end`` = images of x(t_m),
x(t_{m+1})) or a box (``start``/``end`` = lower/upper).  Grids are found in NumPy (their size depends
on the data); values live on the active backend.  Floating point: the parts are computed in plain float
arithmetic; under the sound policy, ``LineElement.bounds`` uses ``confirm``, which re-bounds every part's
input piece in a sound domain (proofs/floating_point.md §6).

Layers (each imports only those below it): this module; ``line_approx`` (relaxation to a budget, the
residual add, ApproxLine's own transformers); ``line`` (ExactLine's transformers, both domains' tables
and their registration); ``line_certify`` (class fractions) sits beside ``line_approx``, on this module.
``line`` and ``line_certify`` re-export the names callers used to import from them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from refcert import autodiff as ad
from refcert import backends, domains, fp
from refcert.autodiff import Tensor


@dataclass(frozen=True)
class Parts:
    """One batch item: grid t (M+1,) NumPy; start, end (M, *shape); is_box (M,) NumPy bool."""
    t: np.ndarray
    start: Tensor
    end: Tensor
    is_box: np.ndarray

    @property
    def mass(self) -> np.ndarray:
        """(M,) probability of each part for t uniform on [0, 1]."""
        return np.diff(self.t)


@dataclass(frozen=True)
class LineElement:
    """A batch of segments, one ``Parts`` per item; ``domain`` is 'exactline' or 'approxline'."""
    items: tuple
    domain: str
    budget: int | None = None
    source: tuple | None = None   # the input set: ('segment', x_from, x_to) or ('box', lower, upper)
    trail: tuple = ()             # the layers run so far: (op, params, execution), ('residual', a, b)

    def bounds(self):
        """(lower, upper) (batch, *shape).  Under the sound policy: every part's input piece re-bounded by a
        sound domain through ``trail`` (``confirm``); else ``raw_bounds``."""
        if fp.policy().sound:
            return confirm(self).bounds()
        return self.raw_bounds()

    def raw_bounds(self):
        """(lower, upper) (batch, *shape): exact min/max over the segment pieces (affine: extremes at
        endpoints) and the boxes' own bounds, in the parts' float arithmetic."""
        xp = backends.current().xp
        lows = [xp.min(xp.minimum(p.start.value, p.end.value), axis=0) for p in self.items]
        highs = [xp.max(xp.maximum(p.start.value, p.end.value), axis=0) for p in self.items]
        return Tensor(xp.stack(lows, axis=0)), Tensor(xp.stack(highs, axis=0))

    @property
    def points(self) -> tuple:
        """ExactLine view: per item the images (M+1, *shape) of the grid points x(t_0), …, x(t_M)."""
        xp = backends.current().xp
        return tuple(Tensor(xp.concat([p.start.value, p.end.value[-1:, ...]], axis=0)) for p in self.items)


def segment(x_from, x_to, domain: str = "exactline", budget: int | None = None) -> LineElement:
    """The segments x_from[b] → x_to[b] as one element; x_from, x_to (batch, *shape).

    ``domain`` 'exactline' (no budget) or 'approxline' (``budget`` = most parts kept, None = unbounded).
    """
    x_from, x_to = ad.as_tensor(x_from), ad.as_tensor(x_to)
    if x_from.shape != x_to.shape or x_from.ndim < 2:
        raise ValueError(f"segment endpoints need one shape (batch, *shape), got {x_from.shape} and {x_to.shape}")
    if domain not in ("exactline", "approxline"):
        raise ValueError(f"segment domain must be 'exactline' or 'approxline', got {domain!r}")
    if domain == "exactline" and budget is not None:
        raise ValueError("exactline keeps every piece; a budget needs domain='approxline'")
    if budget is not None and int(budget) < 1:
        raise ValueError(f"approxline budget must be a positive number of parts, got {budget}")
    if not (bool(np.all(np.isfinite(x_from.numpy()))) and bool(np.all(np.isfinite(x_to.numpy())))):
        raise ValueError("segment endpoints must be finite")
    items = tuple(Parts(np.array([0.0, 1.0]), Tensor(x_from.value[b:b + 1, ...]), Tensor(x_to.value[b:b + 1, ...]),
                        np.zeros(1, bool)) for b in range(x_from.shape[0]))
    return LineElement(items, domain, None if budget is None else int(budget), ("segment", x_from, x_to))


# --- splitting parts at given parameters (exact: every part is affine in t) -------------------------

def _lerp(start, end, index, s):
    """(1 − s) start[index] + s end[index]; s = 0 and s = 1 reproduce the endpoints exactly."""
    backend = backends.current()
    xp = backend.xp
    index = backend.asarray(index, dtype=backend.dtype("int64"))
    s = backend.asarray(s, dtype=start.value.dtype)
    s = xp.reshape(s, (-1,) + (1,) * (start.ndim - 1))
    return (1.0 - s) * xp.take(start.value, index, axis=0) + s * xp.take(end.value, index, axis=0)


def subdivide(count: int, part_index: np.ndarray, s: np.ndarray):
    """Sub-pieces of ``count`` pieces cut at local parameters s (piece part_index[k] at s[k]).

    Returns (index, s_lo, s_hi): sub-piece j is piece index[j] restricted to [s_lo[j], s_hi[j]], in order.
    """
    index = np.concatenate([np.arange(count), part_index])
    s_lo = np.concatenate([np.zeros(count), s])
    order = np.lexsort((s_lo, index))
    index, s_lo = index[order], s_lo[order]
    fresh = np.ones(index.size, bool)
    fresh[1:] = (index[1:] != index[:-1]) | (s_lo[1:] != s_lo[:-1])
    index, s_lo = index[fresh], s_lo[fresh]
    last = np.ones(index.size, bool)
    last[:-1] = index[1:] != index[:-1]
    return index, s_lo, np.where(last, 1.0, np.roll(s_lo, -1))


def split(parts: Parts, part_index: np.ndarray, s: np.ndarray) -> Parts:
    """Cut segment parts at local parameters s ∈ (0, 1) (part_index[k] is cut at s[k]); boxes stay whole."""
    if part_index.size == 0:
        return parts
    keep = ~parts.is_box[part_index] & (s > 0) & (s < 1)
    index, s_lo, s_hi = subdivide(parts.is_box.shape[0], part_index[keep], s[keep])
    t0, t1 = parts.t[index], parts.t[index + 1]
    t = np.concatenate([np.where(s_lo == 0, t0, t0 + s_lo * (t1 - t0)), [parts.t[-1]]])
    t = np.maximum.accumulate(t)  # rounding never reorders the grid
    return Parts(t, Tensor(_lerp(parts.start, parts.end, index, s_lo)),
                 Tensor(_lerp(parts.start, parts.end, index, s_hi)), parts.is_box[index])


def _flat_numpy(x: Tensor) -> np.ndarray:
    return np.asarray(backends.to_numpy(x.value)).reshape(x.shape[0], -1)


def sign_crossings(a: np.ndarray, b: np.ndarray):
    """(part, s): where a coordinate goes strictly from a[m] to b[m] through 0, at s = a / (a − b)."""
    m, j = np.nonzero(((a < 0) & (b > 0)) | ((a > 0) & (b < 0)))
    return m, a[m, j] / (a[m, j] - b[m, j])


# --- running a layer on every item ------------------------------------------------------------------

def _map(element: LineElement, fn, op: str, params: dict) -> LineElement:
    """Apply fn to every item's parts; record the layer in the trail (with the execution precision in force)."""
    items = tuple(fn(p, b) for b, p in enumerate(element.items))
    return dataclasses.replace(element, items=items, trail=element.trail + ((op, params, fp.policy().execution),))


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
    from refcert.domains.zonotope import Zonotope  # here: importing the line domains registers no others
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
