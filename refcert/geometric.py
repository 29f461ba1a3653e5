"""Geometric specifications: rotation, translation, scaling, shearing, contrast and brightness of an image,
with sound interval (a) and linear (b) bounds of every pixel over a box of parameters.

DeepG: Balunović, Baader, Singh, Gehr, Vechev, "Certifying geometric robustness of neural networks",
NeurIPS 2019 (Sec. 3: interpolation and the interval baseline; Sec. 4: linear constraints made sound by a
Lipschitz bound).  Proofs: proofs/geometric.md, cited below by claim.  NumPy only.

Convention (§1, Claim 1).  An image is (C, H, W) float64; pixel (r, c) has its centre at the point (row r, col c).
The transformations act about the centre (cr, cc) = ((H−1)/2, (W−1)/2) in display coordinates
x = col − cc (right), y = row − cr (down).  The coordinate map is T_p = translate ∘ rotate ∘ scale ∘ shear
(shear first):  shear (x, y) ↦ (x + m y, y);  scale (x, y) ↦ (s x, s y), s > 0;  rotate by θ degrees
(x, y) ↦ (x cos θ + y sin θ, −x sin θ + y cos θ), i.e. counter-clockwise as displayed for θ > 0;
translate (x, y) ↦ (x + dx, y + dy): dx moves the content right, dy down.  Output pixel q is the bilinear
interpolation of the input at T_p⁻¹(q), computed as
    a = x_q − dx,  b = y_q − dy,  e = a cos θ − b sin θ,  f = a sin θ + b cos θ,
    col = cc + (e − m f)/s,  row = cr + f/s,
with zero padding: each of the four neighbours outside the image counts as 0 (scipy's map_coordinates with
order=1, mode='grid-constant').  Then each value v becomes α v + β (contrast α, brightness β), not clipped.
Every bound here holds for the real-valued map and for the float64 output of ``transform`` (§7).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

#: parameter names, in the order of every parameter vector; the values that leave the image unchanged
NAMES = ("rotate", "dx", "dy", "scale", "shear", "contrast", "brightness")
IDENTITY = {"rotate": 0.0, "dx": 0.0, "dy": 0.0, "scale": 1.0, "shear": 0.0, "contrast": 1.0, "brightness": 0.0}
FORMS = ("rotate:DEG (θ ∈ [−DEG, DEG] degrees, 0 ≤ DEG ≤ 180)", "translate:D or translate:DX,DY (pixels ≥ 0)",
         "scale:LO,HI (0.01 ≤ LO ≤ HI)", "shear:M (M ≥ 0)", "contrast:LO,HI (LO ≤ HI)",
         "brightness:B (B ≥ 0)")
LIMIT = 1e6              # largest magnitude of a number in a specification or an image (Claim 14)
U = 2.0 ** -53           # unit roundoff of float64
KAPPA = 32               # assumed: |np.sin(t) − sin t|, |np.cos(t) − cos t| ≤ KAPPA·U (Claim 4)
TINY = 2.0 ** -800       # absolute margin covering underflow (Claims 13, 14)
RAD = np.pi / 180
BUDGET = 32              # linear_bounds: default sub-boxes and grid steps per sub-box, BUDGET**(1/k') each


@dataclass(frozen=True, eq=False)
class Spec:
    """A box of transformation parameters: ``names`` (a subsequence of NAMES), float64 ``lower``/``upper``."""
    names: tuple
    lower: np.ndarray
    upper: np.ndarray
    text: str

    @property
    def k(self) -> int:
        return len(self.names)


def parse(text: str) -> Spec:
    """``rotate:15``, ``translate:2,2``, ``scale:0.9,1.1``, ``shear:0.1``, ``brightness:0.1``,
    ``contrast:0.9,1.1`` and compositions joined by '+'; ValueError names the bad part."""
    box = {}
    for part in str(text).split("+"):
        def bad(why, part=part):
            raise ValueError(f"bad geometric specification {part.strip()!r} in {text!r}: {why}; valid forms: "
                             + "; ".join(FORMS) + ", joined by '+'")
        kind, _, args = part.partition(":")
        kind = kind.strip()
        if kind not in ("rotate", "translate", "scale", "shear", "contrast", "brightness"):
            bad("unknown transformation" if kind else "empty part")
        names = ("dx", "dy") if kind == "translate" else (kind,)
        if any(n in box for n in names):
            bad(f"{kind} is named twice")
        try:
            v = [float(x) for x in args.split(",")]
        except ValueError:
            bad("not a number")
        if not all(np.isfinite(x) and abs(x) <= LIMIT for x in v):
            bad(f"numbers must be finite and at most {LIMIT:g} in magnitude")
        if len(v) != (2 if kind in ("scale", "contrast") else 1) and not (kind == "translate" and len(v) == 2):
            bad("wrong number of values")
        if kind in ("scale", "contrast"):
            if v[0] > v[1]:
                bad("empty box (LO > HI)")
            if kind == "scale" and v[0] < 0.01:
                bad("scale must be at least 0.01")
            box[kind] = (v[0], v[1])
            continue
        if min(v) < 0 or (kind == "rotate" and v[0] > 180):
            bad("the value must be ≥ 0" + (" and ≤ 180" if kind == "rotate" else ""))
        for n, x in zip(names, v * 2 if len(v) < len(names) else v):
            box[n] = (-x, x)
    names = tuple(n for n in NAMES if n in box)
    lower, upper = (np.array([box[n][i] for n in names], dtype=np.float64) for i in (0, 1))
    return Spec(names, lower, upper, str(text))


# --- the concrete transformation (Claims 1, 2) --------------------------------------------------------------

def _columns(spec, p):
    """{name: (N,) values} for all NAMES from parameter vectors p (N, k); absent ones at IDENTITY."""
    return {n: (p[:, spec.names.index(n)] if n in spec.names else np.full(len(p), IDENTITY[n])) for n in NAMES}


def coordinates(spec, params, shape):
    """Source coordinates (row, col), each (N, H, W), read by output pixel (r, c) under params (N, k)."""
    g = _columns(spec, np.atleast_2d(np.asarray(params, dtype=np.float64)))
    H, W = shape[-2:]
    cr, cc = (H - 1) / 2, (W - 1) / 2
    col = {n: v[:, None, None] for n, v in g.items()}
    a = (np.arange(W) - cc) - col["dx"]                      # (N, 1, W)
    b = (np.arange(H) - cr)[:, None] - col["dy"]             # (N, H, 1)
    t = g["rotate"] * RAD
    cs, sn = np.cos(t)[:, None, None], np.sin(t)[:, None, None]
    e, f = a * cs - b * sn, a * sn + b * cs
    return f / col["scale"] + cr, (e - col["shear"] * f) / col["scale"] + cc


def interpolate(image, row, col):
    """Bilinear interpolation of image (C, H, W) at (row, col) (any equal shapes S), zero padding: (C, *S)."""
    C, H, W = image.shape
    padded = np.pad(image, ((0, 0), (2, 3), (2, 3))).reshape(C, -1)  # 2 zero rows/cols before, 3 after
    row, col = np.clip(row, -2, H + 1), np.clip(col, -2, W + 1)     # beyond: all four neighbours are 0
    r0, c0 = np.floor(row), np.floor(col)
    wr, wc = row - r0, col - c0
    i = (r0.astype(np.intp) + 2) * (W + 5) + (c0.astype(np.intp) + 2)
    top = (1 - wc) * padded[:, i] + wc * padded[:, i + 1]
    bottom = (1 - wc) * padded[:, i + W + 5] + wc * padded[:, i + W + 6]
    return (1 - wr) * top + wr * bottom


def transform(image, spec, params):
    """The transformed image (C, H, W) for params (k,), or (N, C, H, W) for a batch (N, k) (vectorised)."""
    image = _image(image)
    p = np.asarray(params, dtype=np.float64)
    if p.ndim not in (1, 2) or p.shape[-1] != spec.k or not np.all(np.isfinite(p)):
        raise ValueError(f"params must be finite, shape ({spec.k},) or (N, {spec.k}) for {spec.text!r}; "
                         f"got {p.shape}")
    q = np.atleast_2d(p)
    g = _columns(spec, q)
    v = np.moveaxis(interpolate(image, *coordinates(spec, q, image.shape)), 0, 1)  # (N, C, H, W)
    out = g["contrast"][:, None, None, None] * v + g["brightness"][:, None, None, None]
    return out if p.ndim == 2 else out[0]


def pieces(spec, splits: int):
    """(lower, upper), each (splits**k, k): the box cut into ``splits`` equal parts per parameter; the first
    parameter varies slowest.  Neighbouring pieces share their float edges exactly."""
    if int(splits) != splits or splits < 1:
        raise ValueError(f"splits must be a positive integer, got {splits!r}")
    edges = [_points(lo, hi, int(splits) + 1) for lo, hi in zip(spec.lower, spec.upper)]
    index = _grid([np.arange(int(splits))] * spec.k)
    pick = lambda shift: np.stack([e[index[:, d] + shift] for d, e in enumerate(edges)], -1)
    return pick(0), pick(1)


def grid(lower, upper, n: int):
    """Parameters (N, k) of a grid on the box [lower, upper] (k,): n points per non-degenerate parameter."""
    return _grid([_points(lo, hi, n if hi > lo else 1) for lo, hi in zip(lower, upper)])


def grid_values(image, spec, lower, upper, n: int):
    """(params (N, k), transform(image, spec, params)): n points per non-degenerate parameter of one piece."""
    lower, upper, _ = _box_args(spec, lower, upper)
    p = grid(lower[0], upper[0], n)
    return p, transform(image, spec, p)


def _points(lo, hi, n):
    """n nondecreasing floats from lo to hi (both exact): lo + (hi − lo)·j/(n − 1), clipped at hi."""
    if n == 1:
        return np.array([lo], dtype=np.float64)
    t = np.minimum(lo + (hi - lo) * (np.arange(n) / (n - 1)), hi)
    t[-1] = hi
    return t


def _grid(axes):
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))


# --- outward-rounded interval arithmetic (Claim 3): an interval is a pair (lo, hi) of arrays -----------

def _out(lo, hi, steps=1):
    """(lo, hi) moved ``steps`` floats outward: one step covers one round-to-nearest operation."""
    for _ in range(steps):
        lo, hi = np.nextafter(lo, -np.inf), np.nextafter(hi, np.inf)
    return lo, hi


def _add(p, q):
    return _out(p[0] + q[0], p[1] + q[1])


def _sub(p, q):
    return _out(p[0] - q[1], p[1] - q[0])


def _mul(p, q):
    v = np.array([x * y for x in p for y in q])
    return _out(v.min(0), v.max(0))


def _div(p, q):  # q > 0
    v = np.array([x / y for x in p for y in q])
    return _out(v.min(0), v.max(0))


def _mag(p):
    return np.maximum(np.abs(p[0]), np.abs(p[1]))


def _trig(fn, tl, tu, peak):
    """[lo, hi] ⊇ fn([tl, tu]) for fn = sin (peak π/2) or cos (peak 0): maxima at peak + 2πk, minima at
    peak + π + 2πk; the endpoints' values widened by the library error (Claim 4)."""
    ends = fn(tl), fn(tu)
    lo, hi = np.minimum(*ends) - 2 * KAPPA * U, np.maximum(*ends) + 2 * KAPPA * U
    hits = lambda c: np.ceil((tl - c) / (2 * np.pi)) <= np.floor((tu - c) / (2 * np.pi))
    lo, hi = np.where(hits(peak + np.pi), -1.0, lo), np.where(hits(peak), 1.0, hi)
    return np.clip(lo, -1, 1)[:, None, None], np.clip(hi, -1, 1)[:, None, None]


def _box(spec, lower, upper, shape):
    """Intervals over each piece (K,) of the quantities of Claim 1, per output pixel (K, H, W) (Claims 4, 5)."""
    H, W = shape[-2:]
    lo, hi = _columns(spec, lower), _columns(spec, upper)
    iv = lambda n: (lo[n][:, None, None], hi[n][:, None, None])
    cr, cc = (H - 1) / 2, (W - 1) / 2
    x, y = np.arange(W) - cc, (np.arange(H) - cr)[:, None]
    a, b = _sub((x, x), iv("dx")), _sub((y, y), iv("dy"))
    tl, tu = _out(lo["rotate"] * RAD, hi["rotate"] * RAD, 8)
    sn, cs = _trig(np.sin, tl, tu, np.pi / 2), _trig(np.cos, tl, tu, 0.0)
    e, f = _sub(_mul(a, cs), _mul(b, sn)), _add(_mul(a, sn), _mul(b, cs))
    s, m = iv("scale"), iv("shear")
    row, col = _add(_div(f, s), (cr, cr)), _add(_div(_sub(e, _mul(m, f)), s), (cc, cc))
    return SimpleNamespace(row=row, col=col, a=a, b=b, e=e, f=f, sn=sn, cs=cs, s=s, m=m,
                           alpha=iv("contrast"), beta=iv("brightness"))


# --- range queries over the pixels a coordinate box touches (Claims 6–8) -------------------------------------

def _sparse(a, op):
    """table[i, j, :, r, c] = op of a[:, r : r + 2**i, c : c + 2**j] (a range-min/max table)."""
    C, R, S = a.shape
    table = np.zeros((R.bit_length(), S.bit_length(), C, R, S))
    table[0, 0] = a
    for i in range(table.shape[0]):
        if i:
            h = 1 << (i - 1)
            prev = table[i - 1, 0]
            table[i, 0, :, :R - 2 * h + 1] = op(prev[:, :R - 2 * h + 1], prev[:, h:R - h + 1])
        for j in range(1, table.shape[1]):
            h, prev = 1 << (j - 1), table[i, j - 1]
            table[i, j, ..., :S - 2 * h + 1] = op(prev[..., :S - 2 * h + 1], prev[..., h:S - h + 1])
    return table


def _query(table, op, r1, r2, c1, c2):
    """op over rows r1..r2, cols c1..c2 (inclusive, clipped into the array) of the table's array: (K, C, H, W)."""
    R, S = table.shape[-2:]
    r1, r2, c1, c2 = np.clip(r1, 0, R - 1), np.clip(r2, 0, R - 1), np.clip(c1, 0, S - 1), np.clip(c2, 0, S - 1)
    i, j = np.frexp(r2 - r1 + 1)[1] - 1, np.frexp(c2 - c1 + 1)[1] - 1   # floor(log2(length))
    rr, cc = r2 - (1 << i) + 1, c2 - (1 << j) + 1
    at = lambda r, c: table[i, j, :, r, c]                            # (K, H, W, C)
    return np.moveaxis(op(op(at(r1, c1), at(rr, c1)), op(at(r1, cc), at(rr, cc))), -1, 1)


def _touched(image, z):
    """(vlo, vhi, d_row, d_col), each (K, C, H, W): the range of the pixels (0 outside) whose cells the
    coordinate box z touches, and the largest vertical / horizontal neighbour differences among them."""
    padded = np.pad(image, ((0, 0), (1, 1), (1, 1)))                  # padded index = pixel index + 1
    H, W = image.shape[1:]
    idx = lambda v, n: np.floor(np.clip(v, -3, n + 2)).astype(np.intp) + 1
    r1, r2, c1, c2 = idx(z.row[0], H), idx(z.row[1], H), idx(z.col[0], W), idx(z.col[1], W)
    lo, hi = _sparse(padded, np.minimum), _sparse(padded, np.maximum)
    dv, dh = (_sparse(np.abs(np.diff(padded, axis=a)), np.maximum) for a in (1, 2))
    return (_query(lo, np.minimum, r1, r2 + 1, c1, c2 + 1), _query(hi, np.maximum, r1, r2 + 1, c1, c2 + 1),
            _query(dv, np.maximum, r1, r2, c1, c2 + 1), _query(dh, np.maximum, r1, r2 + 1, c1, c2))


# --- (a) interval bounds, the Lipschitz constants, (b) linear bounds ---------------------------------

def interval_bounds(image, spec, lower, upper):
    """(lo, hi), each (C, H, W) (or (K, C, H, W) for pieces (K, k)): lo ≤ T_p(image) ≤ hi for every p in the
    piece, for the real map and for ``transform``'s float64 output (Claim 9)."""
    image = _image(image)
    lower, upper, batched = _box_args(spec, lower, upper)
    z = _box(spec, lower, upper, image.shape)
    vlo, vhi = _touched(image, z)[:2]
    four = lambda p: (p[0][..., None], p[1][..., None])
    lo, hi = _add(_mul(four(z.alpha), (vlo, vhi)), four(z.beta))
    err = float_error(image, spec, lower, upper)[:, None, None, None]
    lo, hi = _out(lo - err, hi + err)
    return (lo, hi) if batched else (lo[0], hi[0])


def lipschitz(image, spec, lower, upper):
    """L (K, k, C, H, W): |T_p(image)_i − T_p'(image)_i| ≤ L[K, d, i]·|p_d − p'_d| for p, p' in piece K that
    differ only in parameter d (real map; Claims 10, 11)."""
    image = _image(image)
    lower, upper, _ = _box_args(spec, lower, upper)
    z = _box(spec, lower, upper, image.shape)
    vlo, vhi, d_row, d_col = _touched(image, z)
    rho = np.sqrt(_mag(z.a) ** 2 + _mag(z.b) ** 2)                     # |(e, f)| = |(a, b)|
    E, F, S, M = np.minimum(_mag(z.e), rho), np.minimum(_mag(z.f), rho), z.s[0], _mag(z.m)
    ms, mc = _mag(z.sn), _mag(z.cs)
    rates = {"rotate": (RAD * E / S, RAD * (F + M * E) / S), "dx": (ms / S, (mc + M * ms) / S),
             "dy": (mc / S, (ms + M * mc) / S), "scale": (F / S / S, (E + M * F) / S / S), "shear": (0.0, F / S)}
    alpha = _mag(z.alpha)[:, None]
    out = []
    for n in spec.names:
        if n in rates:
            r, c = (np.broadcast_to(v, E.shape)[:, None] for v in rates[n])
            out.append(alpha * (d_row * r + d_col * c))
        else:
            out.append(np.maximum(np.abs(vlo), np.abs(vhi)) if n == "contrast" else np.ones_like(vlo))
    return np.stack(out, axis=1)


def float_error(image, spec, lower, upper):
    """ε (K,): |transform(image, spec, p) − T_p(image)| ≤ ε for every float p in piece K (Claim 13)."""
    image = _image(image)
    lower, upper, _ = _box_args(spec, lower, upper)
    H, W = image.shape[-2:]
    lo, hi = _columns(spec, lower), _columns(spec, upper)
    mag = lambda n: np.maximum(np.abs(lo[n]), np.abs(hi[n]))
    M, alpha = np.abs(image).max(), mag("contrast")
    P = (W - 1) / 2 + (H - 1) / 2 + mag("dx") + mag("dy")
    T = 0.0175 * mag("rotate")                                          # ≥ the largest |angle| in radians
    dz = 2 * U * ((1 + mag("shear")) * P * (10 + 3 * T + KAPPA) / lo["scale"] + max(H, W) / 2 + 1)
    return 2 * (alpha * (32 * U * M + 4 * M * dz) + 3 * U * (alpha * M + mag("brightness"))) + TINY


def linear_bounds(image, spec, lower, upper, boxes: int | None = None, points: int | None = None):
    """(A, b, c): A (C·H·W, k), b, c ≥ 0 (C·H·W,) (leading K axis for pieces (K, k)) with
    |T_p(image)_i − (A_i·p + b_i)| ≤ c_i for every p in the piece, for the real map and for ``transform``'s
    float64 output (Claims 12–15).  Each non-degenerate parameter's range is cut into ``boxes`` sub-boxes
    of ``points`` grid steps each (default: BUDGET**(1/k') both, rounded down, k' the number of such
    parameters).  A, b: least squares on the grid, then centred; c: per sub-box, the largest deviation at its
    grid points plus its Lipschitz bounds times its grid's covering radii, plus floating-point margins."""
    image = _image(image)
    lower, upper, batched = _box_args(spec, lower, upper)
    if any(v is not None and (int(v) != v or v < 1) for v in (boxes, points)):
        raise ValueError(f"boxes and points must be positive integers or None, got {boxes!r}, {points!r}")
    out = [_linear(image, spec, lo, hi, boxes and int(boxes), points and int(points)) for lo, hi in zip(lower, upper)]
    A, b, c = (np.stack(v) for v in zip(*out))
    return (A, b, c) if batched else (A[0], b[0], c[0])


def _linear(image, spec, lo, hi, boxes, points):
    """(A, b, c) of one piece lo, hi (k,): the grid, the fit, the deviations and their sound slack."""
    live = hi > lo
    default = max(1, int(BUDGET ** (1 / max(1, live.sum())) + 1e-9))
    nb, ng = [1 if not a else (boxes or default) for a in live], [0 if not a else (points or default) for a in live]
    axes = [_points(l, h, n * g + 1) for l, h, n, g in zip(lo, hi, nb, ng)]
    p = _grid(axes)
    y = transform(image, spec, p).reshape(len(p), -1)
    fit = hi - lo > 1e-290                                             # fit slopes only where widths are normal
    x = (p[:, fit] - (lo + hi)[fit] / 2) / ((hi - lo)[fit] / 2)        # those parameters scaled to [−1, 1]
    coef = np.linalg.lstsq(np.hstack([x, np.ones((len(p), 1))]), y, rcond=None)[0]
    A = np.zeros((y.shape[1], spec.k))
    A[:, fit] = (coef[:-1] / ((hi - lo)[fit] / 2)[:, None]).T
    b = coef[-1] - A[:, fit] @ ((lo + hi)[fit] / 2)
    r = y - (p @ A.T + b)
    b = b + (r.max(0) + r.min(0)) / 2                                  # centre the deviations on the grid
    r = np.abs(y - (p @ A.T + b)).reshape(*[len(v) for v in axes], -1)
    for d, (n, g) in enumerate(zip(nb, ng)):                           # the largest per sub-box
        if g:
            v = np.moveaxis(r, d, 0)
            r = np.moveaxis(np.maximum(v[:-1].reshape(n, g, *v.shape[1:]).max(1), v[g::g]), 0, d)
    cl = _grid([v[:-1:g] if g else v for v, g in zip(axes, ng)])       # the sub-boxes' corners
    cu = _grid([v[g::g] if g else v for v, g in zip(axes, ng)])
    h = _grid([np.diff(v).reshape(n, g).max(1) / 2 if g else v * 0 for v, n, g in zip(axes, nb, ng)])
    L = lipschitz(image, spec, cl, cu).reshape(len(cl), spec.k, -1)   # of T alone: the affine part cancels,
    L[:, [n in ("contrast", "brightness") for n in spec.names]] = 0.0   # and so do α and β (Claim 12)
    slack = r.reshape(len(cl), -1) / (1 - U) + np.einsum("ckp,ck->cp", L, h)
    k1 = spec.k + 1
    affine = k1 * U / (1 - k1 * U) * (np.abs(A) @ np.maximum(np.abs(lo), np.abs(hi)) + np.abs(b))
    fp = 2 * float_error(image, spec, lo[None], hi[None])[0]
    return A, b, (slack.max(0) + affine + fp) * (1 + 2.0 ** -40) + TINY


# --- arguments ------------------------------------------------------------------------------------

def _image(image):
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3 or not np.all(np.isfinite(image)) or np.abs(image).max(initial=0) > LIMIT:
        raise ValueError(f"image must be (C, H, W), finite, |values| ≤ {LIMIT:g}; got shape {image.shape}")
    return image


def _box_args(spec, lower, upper):
    """(lower (K, k), upper (K, k), batched): a piece or pieces inside the specification's box."""
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    if lower.shape != upper.shape or lower.ndim not in (1, 2) or lower.shape[-1] != spec.k:
        raise ValueError(f"lower and upper must both be ({spec.k},) or (K, {spec.k}); "
                         f"got {lower.shape}, {upper.shape}")
    if not (np.all(spec.lower <= lower) and np.all(lower <= upper) and np.all(upper <= spec.upper)):
        raise ValueError(f"a piece must satisfy spec.lower ≤ lower ≤ upper ≤ spec.upper for {spec.text!r}")
    return np.atleast_2d(lower), np.atleast_2d(upper), lower.ndim == 2
