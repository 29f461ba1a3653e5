"""α-CROWN and β-CROWN bounds on DeepPoly's steps (Xu et al., ICLR'21; Wang et al., NeurIPS'21).

DeepPoly's back-substitution (``backsub.py``) bounds a linear form of the last layer from below through
one pair of lines per neuron.  For a crossing ReLU (l < 0 < u) every lower line α·x with α ∈ [0, 1] lies
below relu on [l, u]; DeepPoly picks α ∈ {0, 1} by area.  α-CROWN makes α a variable per specification
row and neuron and maximises the bound by projected gradient ascent (Adam, then α clipped to [0, 1]):
the bound is a differentiable function of α (refcert's own autodiff), and *every* α gives a sound bound,
so stopping early — at the iteration budget or the deadline — is always sound, and the best bound seen
per row is kept.  The intermediate bounds (which decide which neurons cross and the upper chords) stay
DeepPoly's.  Starting from DeepPoly's α and keeping the best, the result is never looser than DeepPoly.
Sigmoid and tanh (α-CROWN's tangent points): both lines of every neuron with l < u get a free slope per row,
clipped to [min f', max f'] on [l, u], and the tightest sound offset for that slope (``curves.py``).

Branch and bound (``refcert.bab``) passes ``splits``: per crossing ReLU an int8 array (batch, *shape)
with +1 (the neuron is active on this subdomain: x ≥ 0, so relu(x) = x), −1 (inactive: x ≤ 0, relu = 0)
or 0.  A split neuron gets its exact line, and its constraint sign·x ≥ 0 enters the bound with a
multiplier β ≥ 0, also optimised (β-CROWN's Lagrangian term; ``backsub._through_relaxation``).
Proofs: proofs/alpha_crown.md (α), proofs/bab.md (splits and β).

Floating point: the slack of a crossing ReLU step is built for any slopes in [0, 1] (``deeppoly._relaxed``
for the alpha-crown domain), and the β term is kept only where its float result has the right sign.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from dataclasses import dataclass

from refcert import autodiff as ad
from refcert import backends
from refcert.autodiff import Tensor
from refcert.domains import backsub, curves
from refcert.domains.backsub import AffineStep, RelaxStep, ResidualStep
from refcert.optim import Adam


@dataclass(frozen=True)
class Settings:
    iterations: int = 20      # gradient steps on α (and β); 0 gives DeepPoly's bound
    lr: float = 0.1           # Adam's step size on α ∈ [0, 1] and β ≥ 0
    deadline: float = math.inf  # time.monotonic() past which the optimisation stops (the bound so far is sound)


_local = threading.local()


def settings() -> Settings:
    return getattr(_local, "settings", Settings())


@contextlib.contextmanager
def use(**changes):
    """``with alpha.use(iterations=50, lr=0.05, deadline=t):`` — the α-CROWN settings inside the block."""
    old = settings()
    new = dataclasses.replace(old, **{k: v for k, v in changes.items() if v is not None})
    if new.iterations < 0 or not new.lr > 0:
        raise ValueError(f"alpha-crown needs iterations >= 0 and lr > 0, got {new.iterations} and {new.lr}")
    _local.settings = new
    try:
        yield new
    finally:
        _local.settings = old


# --- the steps with α (and splits) in place ---------------------------------------------------------------
def _constant(value):
    return ad.constant(value.value) if isinstance(value, Tensor) else value


def constant_steps(steps: tuple) -> tuple:
    """The steps with every Tensor detached, so optimising α sends no gradient to the network's weights."""
    out = []
    for step in steps:
        if isinstance(step, ResidualStep):
            step = dataclasses.replace(step, block=constant_steps(step.block), shortcut=constant_steps(step.shortcut))
        elif isinstance(step, AffineStep):
            step = dataclasses.replace(step, params={k: _constant(v) for k, v in step.params.items()})
        fields = {f.name: _constant(getattr(step, f.name)) for f in dataclasses.fields(step)
                  if isinstance(getattr(step, f.name), Tensor)}
        out.append(dataclasses.replace(step, **fields))
    return tuple(out)


def _is_relu(step) -> bool:
    return (isinstance(step, RelaxStep) and step.crossing is not None
            and bool(backends.current().xp.any(step.crossing)))


def _is_curve(step) -> bool:
    return isinstance(step, RelaxStep) and step.curve is not None and bool(backends.current().xp.any(step.curve.free))


def relu_steps(steps: tuple) -> list:
    """The ReLU steps with a crossing neuron, in the order ``map_relu_steps`` visits them."""
    found = []
    map_relu_steps(steps, lambda step, k: found.append(step) or step)
    return found


def map_relu_steps(steps: tuple, change, wanted=_is_relu) -> tuple:
    """``steps`` with every ReLU step that has a crossing neuron (or, with ``wanted``, every such step)
    replaced by change(step, k), k counting them in a fixed order (depth first, residual block before
    shortcut)."""
    count = [0]

    def walk(steps):
        out = []
        for step in steps:
            if isinstance(step, ResidualStep):
                step = dataclasses.replace(step, block=walk(step.block), shortcut=walk(step.shortcut))
            elif wanted(step):
                step = change(step, count[0])
                count[0] += 1
            out.append(step)
        return tuple(out)
    return walk(steps)


def curve_steps(steps: tuple) -> list:
    """The σ and tanh steps with a free neuron (``curves.Curve``), in the order ``map_relu_steps`` visits."""
    found = []
    map_relu_steps(steps, lambda step, k: found.append(step) or step, wanted=_is_curve)
    return found


def _with_curve_lines(step: RelaxStep, lower: Tensor, upper: Tensor) -> RelaxStep:
    """The σ/tanh step with per-row slopes ``lower``, ``upper`` on its free neurons and the sound offsets of
    ``curves`` for them (gradient: Danskin's, −the touching point); where a slope is still DeepPoly's, the
    tighter of the two offsets (both are sound).  An offset outside the slack's range |b| ≤ ``limit``
    (proof §4 shows none is) becomes ∓∞, which can only make the bound −∞ or NaN: never a refutation."""
    xp = backends.current().xp
    c = step.curve
    rows = backsub._with_rows_axis
    l, u, limit = rows(c.lower), rows(c.upper), rows(c.limit).value
    free = xp.reshape(c.free, (c.free.shape[0], 1) + tuple(c.free.shape[1:]))
    b, x_b = curves.lower_offset(c.name, ad.constant(lower.value), l, u)
    B, x_B = curves.upper_offset(c.name, ad.constant(upper.value), l, u)
    b = xp.where(lower.value == rows(step.lower_slope).value, xp.maximum(b.value, rows(step.lower_offset).value), b.value)
    B = xp.where(upper.value == rows(step.upper_slope).value, xp.minimum(B.value, rows(step.upper_offset).value), B.value)
    b = xp.where(xp.abs(b) <= limit, b, -xp.inf)
    B = xp.where(xp.abs(B) <= limit, B, xp.inf)
    b = ad.constant(b) + (lower - ad.constant(lower.value)) * ad.constant(-x_b.value)
    B = ad.constant(B) + (upper - ad.constant(upper.value)) * ad.constant(-x_B.value)
    return dataclasses.replace(step, lower_slope=ad.where(free, lower, rows(step.lower_slope)),
                               lower_offset=ad.where(free, b, rows(step.lower_offset)),
                               upper_slope=ad.where(free, upper, rows(step.upper_slope)),
                               upper_offset=ad.where(free, B, rows(step.upper_offset)))


def _with_lines(step: RelaxStep, alpha: Tensor, split, beta: Tensor | None) -> RelaxStep:
    """The ReLU step with lower slope α (per row) on its free crossing neurons and, where ``split`` is ±1,
    the exact line and the split constraint with multiplier β."""
    xp = backends.current().xp
    free = step.crossing if split is None else step.crossing & (split == 0)
    rows = lambda a: xp.reshape(a, (a.shape[0], 1) + tuple(a.shape[1:]))
    lower = ad.where(rows(free), alpha, backsub._with_rows_axis(step.lower_slope))
    if split is None:
        return dataclasses.replace(step, lower_slope=lower)
    active, inactive = split > 0, split < 0
    zero = step.upper_offset * 0.0
    lower = ad.where(rows(active), zero + 1.0, ad.where(rows(inactive), zero, lower))
    upper = ad.where(active, zero + 1.0, ad.where(inactive, zero, step.upper_slope))
    offset = ad.where(active | inactive, zero, step.upper_offset)
    sign = rows(xp.astype(split, step.upper_slope.dtype))
    return dataclasses.replace(step, lower_slope=lower, upper_slope=upper, upper_offset=offset, beta=beta, sign=sign)


# --- the optimisation -----------------------------------------------------------------------------------
def optimize(lam: Tensor, steps: tuple, input_lower: Tensor, input_upper: Tensor, splits=None, batch=None,
             goal=None, record=None):
    """Lower bounds (batch, rows) of lam·x_top over the input box, α (and, with ``splits``, β) optimised.

    lam: (1 or batch, rows, *top shape).  ``splits``: None, or per ReLU step of ``relu_steps(steps)`` an int8
    backend array (batch, *shape), the subproblems of branch and bound (``batch`` of them; the input box
    and the steps are shared, batch 1).  ``goal``: (batch, rows) values past which a row refutes its
    subproblem (branch and bound's thresholds); the loop stops when every subproblem has such a row.  ``record``: a list
    that receives (step, lam) per ReLU step from the best iteration (for branching).  Returns a constant
    Tensor; its entries are each the best bound over the iterations, each one sound."""
    conf = settings()
    steps = constant_steps(steps)
    relus, curved = relu_steps(steps), curve_steps(steps)
    lam = ad.constant(lam.value)
    n = batch or max(lam.shape[0], input_lower.shape[0])
    rows = lam.shape[1]
    xp = backends.current().xp
    per_row = lambda t: xp.broadcast_to(backsub._with_rows_axis(t).value, (n, rows) + tuple(t.shape[1:])) + 0.0
    alphas = [Tensor(per_row(step.lower_slope), requires_grad=True) for step in relus]
    betas = [] if splits is None else [Tensor(xp.zeros((n, rows) + tuple(step.lower_slope.shape[1:]),
                                                       dtype=lam.dtype), requires_grad=True) for step in relus]
    ranges = [(backsub._with_rows_axis(s.curve.least).value, backsub._with_rows_axis(s.curve.most).value)
              for s in curved]
    slopes = [Tensor(xp.clip(per_row(getattr(s, side)), lo, hi), requires_grad=True)
              for s, (lo, hi) in zip(curved, ranges) for side in ("lower_slope", "upper_slope")]
    params = alphas + betas + slopes
    optimizer = Adam(params, lr=conf.lr) if params else None
    best = None
    for iteration in range(conf.iterations + 1):
        change = (lambda step, k: _with_lines(step, alphas[k], None if splits is None else splits[k],
                                              None if splits is None else betas[k]))
        trial = []
        with ad.enable_grad():
            moved = map_relu_steps(steps, change)
            moved = map_relu_steps(moved, lambda step, k: _with_curve_lines(step, slopes[2 * k], slopes[2 * k + 1]),
                                   wanted=_is_curve)
            bound = backsub.lower_bounds(lam, moved, input_lower, input_upper, None if record is None else trial)
            value = xp.where(xp.isnan(bound.value), -xp.inf, bound.value)  # NaN: no bound (never refutes)
            if best is None or bool(xp.any(value > best)):
                if record is not None:
                    record[:] = [(step, ad.constant(l.value)) for step, l in trial]
                best = value if best is None else xp.where(value > best, value, best)
            if (iteration == conf.iterations or not params or time.monotonic() > conf.deadline
                    or (goal is not None and bool(xp.all(xp.any(best > goal, axis=1))))):
                break
            ad.sum(-bound).backward()
        optimizer.step()
        optimizer.zero_grad()
        for a in alphas:
            a.value = xp.clip(a.value, 0.0, 1.0)
        for b in betas:
            b.value = xp.maximum(b.value, 0.0)
        for k, s in enumerate(slopes):
            s.value = xp.clip(s.value, *ranges[k // 2])
    return ad.constant(best)


def bounds(steps: tuple, shape: tuple, input_lower: Tensor, input_upper: Tensor):
    """(lower, upper) of the top layer's neurons (feature ``shape``, batch first), α optimised for each
    neuron and side: ``backsub.bounds``' rows [E; −E] with ``optimize`` as the lower-bound pass."""
    with ad.no_grad():
        return backsub.bounds(steps, shape, input_lower, input_upper,
                              lower=lambda lam, steps, lo, hi: optimize(lam, steps, lo, hi))
