"""Lines of any slope below and above σ and tanh, with sound offsets: α-CROWN's free lines for S-shaped
activations (Xu et al., ICLR'21, Sec. 3.1 and App. A, which parameterise them by tangent points; CROWN,
Zhang et al., NeurIPS'18, Sec. 3.2).

For f ∈ {σ, tanh} on [l, u] and any slope a ≥ 0, the tightest lower line of slope a is a·x + b(a) with
b(a) = min over [l, u] of g(x) = f(x) − a·x, and the tightest upper line a·x + B(a), B(a) = max of g.
α-CROWN for S-shaped functions optimises a point of tangency; a slope in [min f', max f'] on [l, u] is the
same family (each such slope is f' at a point of [l, u]) and every slope gives a sound line once its
offset is a sound bound of b(a) or B(a).  ``lower_offset`` computes that bound in floats:

- f is convex on x ≤ 0, so g is convex on [l, c], c = min(u, 0): g(x) ≥ g(t) + g'(t)(x − t) for any t
  there, whose minimum over [l, c] is at an end; t is an estimate of the point where f'(t) = a (there
  g'(t) = 0 and the bound is tight), found from f'⁻¹ and clipped to [l, c].  Interval arithmetic on
  enclosures of f(t) and f'(t) makes the bound rigorous whatever the estimate's error.
- f is concave on x ≥ 0, so g is concave on [m, u], m = max(l, 0): its minimum is at m or u.
- B(a) by symmetry: f(−x) = K − f(x) (K = 1 for σ, 0 for tanh), so B(a; l, u) = K − b(a; −u, −l).
- The execution error of f (``fp.function_error``) widens both, as for DeepPoly's own lines.

The derivative of b(a) is −(the point where the minimum is reached) (Danskin); ``alpha.py`` uses it as
the gradient of the offset, whose value is always the sound bound.  Proof: proofs/alpha_crown.md §4.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refcert import autodiff as ad
from refcert import backends, fp
from refcert.autodiff import Tensor

SHIFT = {"sigmoid": 1.0, "tanh": 0.0}   # K with f(−x) = K − f(x)
PEAK = {"sigmoid": 0.5, "tanh": 0.0}    # the value f(0), where f' is largest
DERIVATIVE = {"sigmoid": lambda s: s * (1.0 - s), "tanh": lambda s: 1.0 - s * s}  # f' as a function of f


@dataclass(frozen=True)
class Curve:
    """What α-CROWN needs to move the lines of an S-shaped neuron: f's ``name``, its input bounds
    ``lower``, ``upper`` (batch, *shape), the neurons it may move (``free``: l < u, a backend bool array),
    the slope range [``least``, ``most``] (min and max of f' on [l, u], outward) and ``limit``, a bound on
    |offset| of every line ``lower_offset``/``upper_offset`` can give there (for the rounding slack)."""
    name: str
    lower: Tensor
    upper: Tensor
    free: object
    least: Tensor
    most: Tensor
    limit: Tensor


def curve(name: str, l: Tensor, u: Tensor) -> Curve:
    from refcert.domains.relaxations import slope_below
    with ad.no_grad():
        l, u = ad.constant(l.value), ad.constant(u.value)
        least = slope_below(DERIVATIVE[name], name, l, u)
        zero = l * 0.0
        _, most = _derivative_range(name, *fp.enclose(name, ad.minimum(ad.maximum(zero, l), u), execution=False))
        K = SHIFT[name]
        ends = [ad.maximum(ad.abs(e), ad.abs(K - e)) for x in (l, u) for e in fp.enclose(name, x, execution=False)]
        size = ad.maximum(ad.maximum(ends[0], ends[1]), ad.maximum(ends[2], ends[3]))
        reach = ad.maximum(ad.abs(l), ad.abs(u))
        # |b| ≤ K + max(|f|, |K − f|) + a·|x| + |tilt| + spill, a and |g'| ≤ most; doubled for roundings (proof §4)
        limit = 2.0 * (K + size + 3.0 * most * reach + _spill(name, l, u))
    return Curve(name, l, u, u.value > l.value, least, most, limit)


def _derivative_range(name: str, f_lo: Tensor, f_hi: Tensor):
    """(lo, hi) of f' = D(f) over f ∈ [f_lo, f_hi]: D is a concave parabola with its peak at PEAK, so its
    minimum is at an end and its maximum at PEAK clipped into the interval; each value is moved outward
    by 8u(|f| + |D|), more than the two roundings of D (as ``relaxations.slope_below``)."""
    D = DERIVATIVE[name]
    u_c = 8.0 * fp.unit(f_lo.dtype)
    low = ad.minimum(D(f_lo) - u_c * (ad.abs(f_lo) + ad.abs(D(f_lo))), D(f_hi) - u_c * (ad.abs(f_hi) + ad.abs(D(f_hi))))
    top = ad.minimum(ad.maximum(f_lo * 0.0 + PEAK[name], f_lo), f_hi)
    high = D(top) + u_c * (ad.abs(top) + ad.abs(D(top)))
    return fp.down(ad.relu(low)), fp.up(high)


def _touch(name: str, a: Tensor, l: Tensor, c: Tensor) -> Tensor:
    """An estimate of the point x ≤ 0 with f'(x) = a, clipped to [l, c]; any value in [l, c] is sound."""
    xp = backends.current().xp
    a = a.value
    with np.errstate(all="ignore"):  # log(0) = −∞ where a = 0 (clipped below)
        if name == "sigmoid":  # σ(1 − σ) = a at σ = (1 − √(1 − 4a))/2 ≤ 1/2
            s = 0.5 * (1.0 - xp.sqrt(xp.maximum(1.0 - 4.0 * a, 0.0)))
            x = xp.log(s) - xp.log1p(-s)
        else:                  # 1 − tanh² = a at tanh = −√(1 − a)
            t = -xp.sqrt(xp.maximum(1.0 - a, 0.0))
            x = 0.5 * (xp.log1p(t) - xp.log1p(-t))
    x = xp.where(xp.isnan(x), l.value, x)  # NaN only from a NaN slope; −∞ (a = 0) clips to l
    return ad.constant(xp.minimum(xp.maximum(x, l.value), c.value))


def _low_product(a_lo, a_hi, b_lo, b_hi):
    """A lower bound of every product of a ∈ [a_lo, a_hi] and b ∈ [b_lo, b_hi] (a corner, rounded down)."""
    corners = [fp.down(p * q) for p in (a_lo, a_hi) for q in (b_lo, b_hi)]
    return ad.minimum(ad.minimum(corners[0], corners[1]), ad.minimum(corners[2], corners[3]))


def _value_low(name: str, a: Tensor, x: Tensor) -> Tensor:
    """A lower bound of f(x) − a·x."""
    return fp.down(fp.enclose(name, x, execution=False)[0] - fp.up(a * x))


def _min_below(name: str, a: Tensor, l: Tensor, u: Tensor):
    """(b, x): b ≤ min over [l, u] of f(x) − a·x in real arithmetic (a ≥ 0, l ≤ u), and x the point of
    [l, u] the bound came from (the minimiser, up to the estimate's error)."""
    zero = l * 0.0
    c, m = ad.minimum(u, zero), ad.maximum(l, zero)
    t = _touch(name, a, l, c)
    f_lo, f_hi = fp.enclose(name, t, execution=False)
    d_lo, d_hi = _derivative_range(name, f_lo, f_hi)
    g_lo, g_hi = fp.down(d_lo - a), fp.up(d_hi - a)               # g'(t) = f'(t) − a
    tilt = ad.minimum(_low_product(g_lo, g_hi, fp.down(l - t), fp.up(l - t)),
                      _low_product(g_lo, g_hi, fp.down(c - t), fp.up(c - t)))
    convex = fp.down(fp.down(f_lo - fp.up(a * t)) + tilt)        # ≤ min of g on [l, c] (g convex there)
    at_m, at_u = _value_low(name, a, m), _value_low(name, a, u)
    concave = ad.minimum(at_m, at_u)                              # = min of g on [m, u] (g concave there)
    has_convex, has_concave = l.value < 0, u.value > 0
    use_convex = has_convex & (~has_concave | (convex.value <= concave.value))
    b = ad.where(use_convex, convex, ad.where(has_convex, ad.minimum(convex, concave), concave))
    x = ad.where(use_convex, t, ad.where(at_m.value <= at_u.value, m, u))
    return b, x


def _spill(name: str, l: Tensor, u: Tensor) -> Tensor:
    """The largest execution error of f on [l, u] (f is monotone: |f| is largest at an end)."""
    ends = [ad.abs(e) for x in (l, u) for e in fp.enclose(name, x, execution=False)]
    return fp.function_error(ad.maximum(ad.maximum(ends[0], ends[1]), ad.maximum(ends[2], ends[3])))


def lower_offset(name: str, a: Tensor, l: Tensor, u: Tensor):
    """(b, x): a·x' + b ≤ f(x') for every x' in [l, u] and every execution of f there (a ≥ 0, any shape
    broadcasting with l, u); x is where the line (nearly) touches g's minimum, for the gradient."""
    with ad.no_grad():
        b, x = _min_below(name, a, l, u)
        return fp.down(b - _spill(name, l, u)), x


def upper_offset(name: str, a: Tensor, l: Tensor, u: Tensor):
    """(B, x): f(x') ≤ a·x' + B on [l, u], by the symmetry f(−x) = K − f(x) (module docstring)."""
    with ad.no_grad():
        b, y = _min_below(name, a, -u, -l)
        return fp.up(fp.up(SHIFT[name] - b) + _spill(name, l, u)), -y
