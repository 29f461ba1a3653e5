"""Floating-point soundness: the one mechanism every domain uses (proofs/floating_point.md).

refcert computes in round-to-nearest NumPy/CuPy arithmetic, which has no rounding-mode control.  So
instead of rounding every operation outward (ELINA), each transformer *adds a rigorous a-posteriori
error radius* to what it computes: for an affine map y = A x + b computed in precision u with at most n
terms per output, and any x with |x| ≤ M,

    |fl(A x + b) − (A x + b)| ≤ γₙ₊₁ (|A| M + |b|),   γₙ = n u / (1 − n u)      (Higham, §3.1)

in any summation order, with or without FMA.  The same bound in the *execution* precision covers (b) of
the guarantee: every IEEE-754 evaluation of the network, whatever its order of operations.  A domain
adds the radius where it keeps independent error (Box: the radius; zonotopes: the box term β;
DeepPoly/CROWN: the constant of each step of back-substitution).  Single correctly-rounded operations
whose direction matters (the ends of the input box, a relaxation's slope, the final margin) are moved
one ulp outward with ``nextafter`` (``up``, ``down``).

``policy()`` says what to account for: ``sound`` (on by default; training may turn it off for speed) and
``execution``, the precision whose evaluations the bounds must cover: 'float32', 'float64', 'exact'
(real arithmetic only, used for the specification layer, which the network never executes) or None
(each layer's own parameter dtype, i.e. the network's dtype).  ``use(...)`` sets them in a ``with`` block.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass, replace

import numpy as np

from refcert import autodiff as ad
from refcert import backends

EXECUTIONS = ("float32", "float64", "exact")


@dataclass(frozen=True)
class Policy:
    sound: bool = True
    execution: str | None = None   # 'float32' | 'float64' | 'exact' | None: each layer's parameter dtype


_state = threading.local()


def policy() -> Policy:
    """The policy in force in this thread (default: sound, execution in the network's dtype)."""
    return getattr(_state, "policy", None) or Policy()


@contextlib.contextmanager
def use(*, sound: bool | None = None, execution: str | None | type(...) = ...):
    """Set ``sound`` and/or ``execution`` inside a ``with`` block (unset arguments are kept)."""
    old = policy()
    new = old
    if sound is not None:
        new = replace(new, sound=bool(sound))
    if execution is not ...:
        new = replace(new, execution=check_execution(execution))
    _state.policy = new
    try:
        yield new
    finally:
        _state.policy = old


def check_execution(execution):
    """None or one of EXECUTIONS (NumPy dtypes and their names accepted), else a clear ValueError."""
    if execution is None:
        return None
    name = str(np.dtype(execution)) if not isinstance(execution, str) else execution
    if name not in EXECUTIONS:
        raise ValueError(f"execution precision must be one of {EXECUTIONS} (or None for the network's "
                         f"dtype), got {execution!r}")
    return name


# --- the error model ------------------------------------------------------------------------------
#: largest n·u allowed in γₙ: beyond it the precision cannot carry the computation (γ would blow up)
MAX_NU = 0.01
#: the execution library's σ and tanh (the stated assumption):
#: |f̃(x) − f(x)| ≤ FUNCTION_ULPS·u·|f(x)| + FUNCTION_ABS_ULPS·u + tiny.  The absolute term admits
#: implementations accurate only near 1 (onnxruntime's Sigmoid: measured ≤ 2.1u beyond the relative term)
FUNCTION_ULPS = 32
FUNCTION_ABS_ULPS = 8


def unit(dtype) -> float:
    """Unit roundoff u of a precision: 2⁻²⁴ (float32), 2⁻⁵³ (float64); 0 for 'exact' / None."""
    return _unit(None if dtype is None or dtype == "exact" else _name(dtype))


@functools.lru_cache(maxsize=None)
def _unit(name):
    return 0.0 if name is None else float(np.finfo(name).eps) / 2


def tiny(dtype) -> float:
    """Smallest positive *normal* number: bounds the underflow error of one operation, also under
    flush-to-zero (0 for 'exact')."""
    return _tiny(None if dtype is None or dtype == "exact" else _name(dtype))


@functools.lru_cache(maxsize=None)
def _tiny(name):
    return 0.0 if name is None else float(np.finfo(name).tiny)


def _name(dtype) -> str:
    if isinstance(dtype, str):
        return dtype
    return _dtype_name(dtype)


@functools.lru_cache(maxsize=None)
def _dtype_name(dtype) -> str:
    return str(getattr(dtype, "name", None) or np.dtype(str(dtype).split(".")[-1]))


def gamma(n: int, dtype) -> float:
    """γₙ = n u / (1 − n u) (Higham, Lemma 3.1): |∏(1 + δᵢ)^±1 − 1| ≤ γₙ for n roundings."""
    nu = n * unit(dtype)
    if nu > MAX_NU:
        raise ValueError(f"a sum of {n} terms in {_name(dtype)} is beyond what refcert's error bound covers "
                         f"(n·u = {nu:.3g} > {MAX_NU}); compute in float64")
    return nu / (1.0 - nu)


def execution_dtype(parameter_dtype=None, computation_dtype=None):
    """The precision whose evaluations the bounds of a layer must cover (None: real arithmetic only): the
    policy's, else the layer's parameter dtype, else (a layer without parameters) the computation's dtype.
    certify, verify and certify_segment always set the policy to the network's precision; a direct
    ``interpret.run`` of a float32 net on float64 boxes should do the same (``fp.use(execution=...)``)."""
    chosen = policy().execution
    if chosen == "exact":
        return None
    if chosen is not None:
        return chosen
    dtype = parameter_dtype if parameter_dtype is not None else computation_dtype
    return None if dtype is None else _name(dtype)


def error_factor(n: int, computation_dtype, execution=None) -> float:
    """The factor F in the error radius F·(|A| M + |b|) of one transformer with at most n terms per sum.

    F = (γₙ₊₆ + γₙ₊₃^exec)·(1 + 2γₙ₊₆): γₙ₊₁ bounds the computed affine image, five more roundings cover
    turning it into bounds (the input's mid-point and radius, c ± r, adding the radius), γₙ₊₃^exec (weights
    cast to the execution precision, n products and sums, the bias) any execution; the last factor covers
    computing the radius itself in floats: its n + 3 roundings of non-negative numbers shrink it by at most
    (1 − γₙ₊₃) (proofs/floating_point.md §2).
    """
    first_order = gamma(n + 6, computation_dtype) + gamma(n + 3, execution)
    return first_order * (1.0 + 2.0 * gamma(n + 6, computation_dtype))


def radius(magnitude, n: int, *, execution="auto", count: int = 1, peak: float = 1.0):
    """The error radius of a transformer: F·m + (2n + 12)·count·(tiny_c + tiny_e), a constant Tensor.

    ``magnitude`` m ≥ 0 (Tensor) is |A| M + |b| computed in floats: A the layer's linear map, M ≥ |x| a
    bound on its input, b its constant; ``n`` bounds the number of terms of every sum; ``count`` the
    number of values each output is made from (a zonotope's generator count + 1: underflow is absolute).
    ``execution`` 'auto' takes ``execution_dtype`` of the magnitude's dtype; pass a dtype name or None.
    ``peak``: the execution's largest intermediate value is at most peak·m (average pooling sums k² values
    before dividing: k²; normalisation subtracts before dividing by s: max(1, |s|)), for the overflow test.
    Returns None when the policy is not sound.
    """
    if not policy().sound:
        return None
    value = getattr(magnitude, "value", magnitude)
    dtype = value.dtype
    execution = execution_dtype(None, dtype) if execution == "auto" else execution
    floor = (2 * n + 12) * count * (tiny(dtype) + tiny(execution))
    out = value * error_factor(n, dtype, execution) + floor
    return ad.constant(overflowing(out, value * peak >= overflow_limit(execution, n)))


def overflow_limit(execution, n: int) -> float:
    """Higham's bound assumes no overflow: a layer whose |A| M + |b| (which bounds every partial sum and
    product of any evaluation order) may reach the execution precision's largest float is given an
    infinite radius (proofs/floating_point.md §2).  inf when nothing is executed."""
    if execution is None or execution == "exact":
        return np.inf
    return float(np.finfo(_name(execution)).max) * (1.0 - 4.0 * gamma(n + 3, execution))


def overflowing(radius, where):
    """``radius`` with +inf where an execution may overflow (raw arrays)."""
    xp = backends.current().xp
    return xp.where(where, xp.full_like(radius, np.inf), radius)


def folded(n: int, computation_dtype, execution):
    """(G, floor) for Box's one-product form r' = |A|(r + G·M) + G|b| + floor of ``radius``: computing
    |A| r inside the same product costs another γₙ₊₄ relative to |A| M (proofs/floating_point.md §3), so
    G = (F₀ + γₙ₊₄)(1 + 2γₙ₊₄) with F₀ the first-order factor of ``error_factor``.  None when not sound."""
    if not policy().sound:
        return None
    first = gamma(n + 6, computation_dtype) + gamma(n + 3, execution)
    g = (first + gamma(n + 4, computation_dtype)) * (1.0 + 2.0 * gamma(n + 6, computation_dtype))
    return g, (2 * n + 12) * (tiny(computation_dtype) + tiny(execution))


def folded_limit(g: float, n: int, execution) -> float:
    """The overflow test for ``folded``'s radius r' ≥ G·(|A| M + |b|)·(1 − γ): r' ≥ G·limit·(1 − γ) flags
    every layer that ``overflow_limit`` flags (and, harmlessly, some with a huge |A| r)."""
    return g * overflow_limit(execution, n) * (1.0 - 4.0 * gamma(n + 6, "float64"))


def plus(t, extra):
    """t + extra where extra may be None (the policy is not sound): the one way radii are added."""
    return t if extra is None else t + extra


# --- directed rounding of single operations -------------------------------------------------------
def _step(direction: float):
    return ad.primitive(f"nextafter{'+' if direction > 0 else '-'}",
                        lambda x: backends.current().xp.nextafter(x, backends.current().xp.full_like(x, direction)),
                        lambda g, ans, x: g)  # a rounding correction: the gradient passes unchanged


_up, _down = _step(np.inf), _step(-np.inf)


def up(t):
    """The next float above t: an upper bound of the exact result of the one correctly rounded operation
    that produced t (identity when the policy is not sound)."""
    return _up(t) if policy().sound else t


def down(t):
    """The next float below t (see ``up``)."""
    return _down(t) if policy().sound else t


def widen(lower, upper):
    """(down(lower), up(upper)): the bounds after their last rounding, made outward."""
    return down(lower), up(upper)


def compensate(t, n: int):
    """t·(1 + 2γₙ): an upper bound of a non-negative quantity whose float value t came from at most n
    roundings of non-negative numbers (each can only have shrunk it by a factor ≥ 1 − u)."""
    if not policy().sound:
        return t
    return t * (1.0 + 2.0 * gamma(n + 1, getattr(t, "dtype", np.float64)))


def sum_up(t, n: int):
    """An upper bound of a sum of n non-negative terms whose float value is t:
    exact ≤ t / (1 − γₙ) ≤ t·(1 + 2γₙ₊₁), the product rounded up."""
    return up(compensate(t, n))


def mid_rad(lower, upper):
    """(m, r) with [m − r, m + r] ⊇ [lower, upper] in exact arithmetic (r rounded up)."""
    mid = (lower + upper) * 0.5
    if not policy().sound:
        return mid, (upper - lower) * 0.5
    return mid, ad.maximum(up(up(upper - mid)), up(up(mid - lower)))



# --- sigmoid and tanh -----------------------------------------------------------------------------
def enclose(name: str, x, *, execution: bool = True):
    """(lo, hi) with lo ≤ f(x) ≤ hi for the real f ('sigmoid' or 'tanh') and, if ``execution``, for every
    execution's f̃(x) (error ≤ FUNCTION_ULPS·u·|f| + FUNCTION_ABS_ULPS·u + tiny, the stated assumption;
    proofs/floating_point.md §4).

    Computed in float64 (refcert's own exp/tanh are held to the same ulp bound), widened by both
    relative errors, clamped to f's range, then cast outward to x's dtype.  Not sound: (f(x), f(x)).
    """
    fn = ad.sigmoid if name == "sigmoid" else ad.tanh
    if not policy().sound:
        value = fn(x)
        return value, value
    xp = backends.current().xp
    dtype = x.dtype
    execution = execution_dtype(None, dtype) if execution else None
    with ad.no_grad():
        value = fn(ad.Tensor(xp.astype(x.value, xp.float64))).value
    slack = FUNCTION_ULPS * (unit("float64") + unit(execution))
    floor = tiny("float64") + tiny(execution) + FUNCTION_ABS_ULPS * unit(execution)
    lo_range, hi_range = (0.0, 1.0) if name == "sigmoid" else (-1.0, 1.0)
    spread = xp.abs(value) * slack + floor
    lo = xp.clip(value - spread, lo_range, hi_range)
    hi = xp.clip(value + spread, lo_range, hi_range)
    lo, hi = xp.astype(lo, dtype), xp.astype(hi, dtype)
    if _name(dtype) != "float64":  # the cast rounded to nearest: one step outward
        lo, hi = xp.nextafter(lo, xp.full_like(lo, -np.inf)), xp.nextafter(hi, xp.full_like(hi, np.inf))
    return ad.Tensor(lo), ad.Tensor(hi)


def function_error(bound):
    """The largest |f̃(x) − f(x)| of an execution of σ or tanh where |f(x)| ≤ bound (a Tensor ≥ 0), doubled
    for its own rounding: FUNCTION_ULPS·u·bound + FUNCTION_ABS_ULPS·u + tiny of the execution precision
    (0 when not sound or 'exact')."""
    execution = execution_dtype(None, bound.dtype)
    if not policy().sound or execution is None:
        return bound * 0.0
    return ad.Tensor(bound.value * (2 * FUNCTION_ULPS * unit(execution))
                     + 2 * (FUNCTION_ABS_ULPS * unit(execution) + tiny(execution)))


# --- the input set ----------------------------------------------------------------------------------
def ball(x, eps, clip, *, outward: bool):
    """Float bounds in x's dtype of the real set {y : |y − x| ≤ eps} ∩ [clip] (x, eps, clip exact reals).

    ``outward``: [lower, upper] contains the real set (for bounding: proofs/floating_point.md §1).
    Otherwise every float in [lower, upper] lies in the real set (for attacks: their points are then
    members with no tolerance); x itself is kept as a member where it lies in clip.  Computed in float64
    (one rounding, then one step the safe way), cast to x's dtype (then one more step).  Constants.
    """
    xp = backends.current().xp
    x = ad.as_tensor(x)
    dtype = x.dtype
    x64 = xp.astype(x.value, xp.float64)
    e64 = xp.astype(backends.current().asarray(ad.as_tensor(eps).numpy().astype(np.float64)), xp.float64)
    inf = xp.full_like(x64, np.inf)
    lower, upper = x64 - e64, x64 + e64
    if outward:
        lower, upper = xp.nextafter(lower, -inf), xp.nextafter(upper, inf)
    else:  # inward, but never past x (x is in the ball)
        lower, upper = xp.minimum(xp.nextafter(lower, inf), x64), xp.maximum(xp.nextafter(upper, -inf), x64)
    if clip is not None:
        lower = xp.maximum(lower, xp.full_like(x64, float(clip[0])))
        upper = xp.minimum(upper, xp.full_like(x64, float(clip[1])))
    cast_lower, cast_upper = xp.astype(lower, dtype), xp.astype(upper, dtype)
    if cast_lower.dtype != xp.float64:
        inf = xp.full_like(cast_lower, np.inf)
        low64, up64 = xp.astype(cast_lower, xp.float64), xp.astype(cast_upper, xp.float64)
        if outward:
            cast_lower = xp.where(low64 > lower, xp.nextafter(cast_lower, -inf), cast_lower)
            cast_upper = xp.where(up64 < upper, xp.nextafter(cast_upper, inf), cast_upper)
        else:
            cast_lower = xp.where(low64 < lower, xp.nextafter(cast_lower, inf), cast_lower)
            cast_upper = xp.where(up64 > upper, xp.nextafter(cast_upper, -inf), cast_upper)
    return ad.Tensor(cast_lower), ad.Tensor(cast_upper)


def inside(points, x, eps, clip) -> np.ndarray:
    """(N,) bool: is each points[i] in the real set ball∞(x[i], eps) ∩ clip, compared exactly (no
    tolerance)?  Float64 decides where it is clear by a margin; borderline coordinates are compared in
    rational arithmetic (``fractions``)."""
    from fractions import Fraction
    p = np.asarray(backends.to_numpy(getattr(points, "value", points)))
    c = np.asarray(backends.to_numpy(getattr(x, "value", x)))
    p64, c64 = p.astype(np.float64).reshape(p.shape[0], -1), c.astype(np.float64).reshape(c.shape[0], -1)
    eps = float(eps)
    lo, hi = (-np.inf, np.inf) if clip is None else (float(clip[0]), float(clip[1]))
    with np.errstate(invalid="ignore", over="ignore"):
        gap = np.abs(p64 - c64) - eps
        slack = 1e-12 * (np.abs(p64) + np.abs(c64) + eps) + 1e-300
        clearly_in = (gap < -slack) & (p64 >= lo) & (p64 <= hi)
        clearly_out = (gap > slack) | (p64 < lo) | (p64 > hi) | ~np.isfinite(p64)
    result = ~clearly_out.any(axis=1)
    E = Fraction(eps)
    for i, j in zip(*np.nonzero(~clearly_in & ~clearly_out)):
        if result[i] and abs(Fraction(float(p64[i, j])) - Fraction(float(c64[i, j]))) > E:
            result[i] = False
    return result
