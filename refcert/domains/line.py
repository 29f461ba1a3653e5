"""Line domains for segment specifications: ExactLine and ApproxLine (REFERENCES.md, "Line specifications").

ExactLine (Sotoudeh & Thakur, "Computing linear restrictions of neural networks", NeurIPS'19, Sec. 3)
partitions the input segment x(t) = x_from + t (x_to − x_from), t ∈ [0, 1], into pieces on which a
piecewise-linear network is affine, and keeps every piece's exact image.  ApproxLine (Mirman, Gehr,
Vechev, "Robustness certification of generative models", PLDI'21, Sec. 4) keeps the same list of parts
but may replace runs of neighbouring pieces by their bounding box when there are more than ``budget``.

One element type serves both (ExactLine = ApproxLine with no budget and no boxes).  Per batch item a
``Parts`` holds a grid 0 = t_0 < … < t_M = 1 and, for part m covering [t_m, t_{m+1}] (probability mass
t_{m+1} − t_m under t uniform on [0, 1]), either a segment (``start``/``end`` = images of x(t_m),
x(t_{m+1})) or a box (``start``/``end`` = lower/upper).  Grids are found in NumPy (their size depends
on the data); values live on the active backend.  Floating point: the parts are computed in plain float
arithmetic; under the sound policy, verdicts use ``line_certify.confirm``, which re-bounds every part's
input piece in a sound domain (proofs/floating_point.md §6).  Not differentiable through split points: these
domains certify, they are not meant for DiffAI training.  Proofs: proofs/exactline.md, proofs/approxline.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from refcert import autodiff as ad
from refcert import backends, domains
from refcert.autodiff import Tensor
from refcert.domains import point


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
        sound domain through ``trail`` (``line_certify.confirm``); else ``raw_bounds``."""
        from refcert import fp
        if fp.policy().sound:
            from refcert.domains import line_certify
            return line_certify.confirm(self).bounds()
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


# --- transformers -----------------------------------------------------------------------------------

def _map(element: LineElement, fn, op: str, params: dict) -> LineElement:
    """Apply fn to every item's parts; record the layer in the trail (with the execution precision in force)."""
    from refcert import fp
    items = tuple(fn(p, b) for b, p in enumerate(element.items))
    return dataclasses.replace(element, items=items, trail=element.trail + ((op, params, fp.policy().execution),))


def _affine(element: LineElement, op: str, params: dict) -> LineElement:
    """An affine op: segment endpoints map exactly; a box maps its center exactly and its radius by |L|."""
    def item(parts: Parts, b: int) -> Parts:
        q = dict(params)
        if op == "linear" and q["weight"].ndim == 3:  # per-input specification weight C (batch, out, in)
            q["weight"] = Tensor(q["weight"].value[b, ...])
            q["bias"] = None if q["bias"] is None else Tensor(q["bias"].value[b, ...])
        start = point.TRANSFORMERS[op](parts.start, **q)
        end = point.TRANSFORMERS[op](parts.end, **q)
        if not parts.is_box.any():
            return Parts(parts.t, start, end, parts.is_box)
        xp = backends.current().xp
        center = (start.value + end.value) / 2
        radius = _abs_linear(op, Tensor((parts.end.value - parts.start.value) / 2), q).value
        box = xp.reshape(backends.current().asarray(parts.is_box), (-1,) + (1,) * (start.ndim - 1))
        return Parts(parts.t, Tensor(xp.where(box, center - radius, start.value)),
                     Tensor(xp.where(box, center + radius, end.value)), parts.is_box)
    return _map(element, item, op, params)


def _abs_linear(op: str, r: Tensor, q: dict) -> Tensor:
    """|L| r for the linear part L of an affine op (interval arithmetic radius; r ≥ 0)."""
    if op == "linear":
        return point.linear(r, weight=ad.abs(q["weight"]), bias=None)
    if op == "conv2d":
        return point.conv2d(r, weight=ad.abs(q["weight"]), bias=None, stride=q["stride"], padding=q["padding"])
    if op == "normalize":
        return point.scale_by_std(r, std=ad.abs(q["std"]), feature_ndim=r.ndim - 1)
    return point.TRANSFORMERS[op](r, **q)  # flatten, avg_pool2d: linear with non-negative weights


def linear(x, *, weight, bias):
    return _affine(x, "linear", {"weight": weight, "bias": bias})


def conv2d(x, *, weight, bias, stride, padding):
    return _affine(x, "conv2d", {"weight": weight, "bias": bias, "stride": stride, "padding": padding})


def normalize(x, *, mean, std):
    return _affine(x, "normalize", {"mean": mean, "std": std})


def flatten(x):
    return _affine(x, "flatten", {})


def avg_pool2d(x, *, kernel_size, stride, padding=0):
    return _affine(x, "avg_pool2d", {"kernel_size": kernel_size, "stride": stride, "padding": padding})


def relu(element: LineElement) -> LineElement:
    """ExactLine, Sec. 3: split each segment where a coordinate changes sign, then ReLU the endpoints.

    Sound and exact: between consecutive split points every coordinate keeps its sign, so ReLU is
    affine there; a box goes by interval ReLU (monotone).  Then ApproxLine relaxes to its budget."""
    def item(parts: Parts, b: int) -> Parts:
        m, s = sign_crossings(_flat_numpy(parts.start), _flat_numpy(parts.end))
        parts = split(parts, m, s)
        return Parts(parts.t, ad.relu(parts.start), ad.relu(parts.end), parts.is_box)
    from refcert.domains.line_approx import relax
    return relax(_map(element, item, "relu", {}))


def _windows(x: np.ndarray, kernel_size: int, stride: int, padding: int) -> np.ndarray:
    """(M, C, H, W) -> (M, C·Ho·Wo, k²): the entries of each max-pool window (padding = −inf)."""
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=-np.inf)
    Ho = (x.shape[2] - kernel_size) // stride + 1
    Wo = (x.shape[3] - kernel_size) // stride + 1
    cols = [x[:, :, i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride]
            for i in range(kernel_size) for j in range(kernel_size)]
    return np.stack(cols, axis=-1).reshape(x.shape[0], -1, kernel_size * kernel_size)


#: most refinement rounds for max-pool before refusing (each round splits at argmax changes)
MAXPOOL_ROUNDS = 64


def max_pool2d(element: LineElement, *, kernel_size, stride, padding=0) -> LineElement:
    """ExactLine, Sec. 3 (max-pool): split segments until one window entry is maximal at both ends
    of every piece (then, all entries being affine, it is maximal throughout: max is affine there);
    boxes go by max of lowers and max of uppers (monotone)."""
    def item(parts: Parts, b: int) -> Parts:
        for _ in range(MAXPOOL_ROUNDS):
            seg = ~parts.is_box
            if not seg.any():
                break
            va = _windows(np.asarray(backends.to_numpy(parts.start.value))[seg], kernel_size, stride, padding)
            vb = _windows(np.asarray(backends.to_numpy(parts.end.value))[seg], kernel_size, stride, padding)
            tol = 1e-12 * (1.0 + np.abs(np.nan_to_num(np.concatenate([va, vb]), neginf=0)).max(initial=0.0))
            a, bb = va.argmax(-1), vb.argmax(-1)
            max_a, max_b = va.max(-1), vb.max(-1)
            a_at_b = np.take_along_axis(vb, a[..., None], -1)[..., 0]
            b_at_a = np.take_along_axis(va, bb[..., None], -1)[..., 0]
            kink = (a_at_b < max_b - tol) & (b_at_a < max_a - tol)
            m, j = np.nonzero(kink)
            if m.size == 0:
                break
            d0 = max_a[m, j] - b_at_a[m, j]          # y_a − y_b at the start (> 0)
            d1 = a_at_b[m, j] - max_b[m, j]          # y_a − y_b at the end (< 0)
            parts = split(parts, np.nonzero(seg)[0][m], d0 / (d0 - d1))
        else:
            raise RuntimeError(f"{element.domain}: max_pool2d still has argmax changes after "
                               f"{MAXPOOL_ROUNDS} refinement rounds; refusing rather than returning an unsound piece")
        return Parts(parts.t, point.max_pool2d(parts.start, **params), point.max_pool2d(parts.end, **params),
                     parts.is_box)
    params = {"kernel_size": kernel_size, "stride": stride, "padding": padding}
    from refcert.domains.line_approx import relax
    return relax(_map(element, item, "max_pool2d", params))


def _not_piecewise_linear(op: str):
    def refuse(element, **params):
        raise NotImplementedError(f"exactline cannot run {op}: it is not piecewise linear, so no finite set "
                                  f"of pieces is exact; use domain 'approxline' (sound boxes) instead")
    return refuse


def from_bounds_exact(lower, upper) -> LineElement:
    """Only a degenerate box (lower == upper, a point) is a segment; anything else is refused."""
    lower, upper = ad.as_tensor(lower), ad.as_tensor(upper)
    if lower.shape != upper.shape or not bool(np.all(lower.numpy() == upper.numpy())):
        raise ValueError("line domains hold segments; use refcert.domains.line.segment(x_from, x_to) "
                         "(exactline accepts from_bounds only for lower == upper)")
    return segment(lower, upper)


def _add(a: LineElement, b: LineElement, *, origin=None) -> LineElement:
    from refcert.domains.line_approx import add
    return add(a, b, origin=origin)


EXACTLINE = {
    "linear": linear, "conv2d": conv2d, "normalize": normalize, "flatten": flatten,
    "avg_pool2d": avg_pool2d, "max_pool2d": max_pool2d, "relu": relu,
    "sigmoid": _not_piecewise_linear("sigmoid"), "tanh": _not_piecewise_linear("tanh"), "add": _add,
}
TRANSFORMERS = EXACTLINE
domains.register("exactline", EXACTLINE, from_bounds_exact)

from refcert.domains import line_approx  # noqa: E402,F401  (registers "approxline")
