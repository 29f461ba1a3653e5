"""Back-substitution for DeepPoly and CROWN-IBP (Singh et al., POPL'19, Sec. 4; Zhang et al., NeurIPS'18).

A DeepPoly element keeps, per layer, a *step*: how that layer's neurons relate linearly to the layer
before.  To bound a linear form Σ lam·x_k + c of layer k from below, walk the steps from layer k down to
the input, replacing x_k by its relation to x_{k−1} at each step, then concretise over the input box:

- ``AffineStep``  x_k = A x_{k−1} + b exactly: lam ↦ Aᵀlam (the vector-Jacobian product of the layer:
  ``lam @ W`` for linear, ``conv_transpose2d`` for conv2d, ÷ std for normalize, a reshape for
  flatten, the inverse permutation for permute, the transposed pooling for avg_pool2d), c ↦ c + lam·b.
- ``RelaxStep``   a_l·x + b_l ≤ x_k ≤ a_u·x + b_u per neuron (ReLU, sigmoid, tanh): where lam ≥ 0 the
  lower line is used, where lam < 0 the upper line (lam·x_k ≥ lam·(line) in both cases).
- ``MaxPoolStep`` the same with lines that pick one input of each window (or a constant).
- ``ResidualStep`` x_k = a + b, two branches from one branch point: substitute lam through each branch
  down to the branch point and add the two results.

Floating point (proofs/floating_point.md §5): every step carries ``slack`` ≥ 0 (its output's shape) and
``floor`` (per batch element) such that the step's inequality holds for the *computed* lam' and constant
up to |lam|·slack + floor: the error of computing lam' and the constant in floats, plus, for affine steps,
the error of any execution of the layer.  ``substitute`` adds these up in S, and ``lower_bounds``
subtracts S (compensated for its own rounding) and the error of its own final sums, rounding down.  Without the sound policy the
slacks are None and nothing is added.

Only the *lower* rule exists here: an upper bound of lam·x is −(lower bound of −lam·x), so ``bounds``
stacks the rows [I; −I] and runs one pass.  At the input, Σ max(lam,0)·l + min(lam,0)·u is the exact
minimum of the linear form over the box.  Everything is autodiff ops (gradients reach weights and input
bounds); when no gradient is recorded, the rows of a convolution's neurons go down through their
receptive fields only (``patches.py``) while the layers are images.  Proof: proofs/deeppoly.md §1, §5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from refcert import autodiff as ad
from refcert import backends, fp
from refcert.autodiff import Tensor
from refcert.domains import patches, point

#: rows × (largest layer size) × batch elements per chunk of lam (2^24 float64 = 128 MiB)
CHUNK_ELEMENTS = 2 ** 24

#: a convolution's neurons are back-substituted through their receptive fields (``patches``) when no
#: gradient is recorded; False: always the dense rule (the reference the tests compare against)
PATCHES = True


@dataclass(frozen=True)
class AffineStep:
    """x_k = op(x_{k−1}; params), an affine map; ``in_shape`` is x_{k−1}'s feature shape (no batch)."""
    op: str
    params: dict
    in_shape: tuple
    slack: Tensor | None = None      # (batch, *out shape): rounding + execution error per unit of |lam|
    floor: Tensor | None = None      # (batch,): absolute underflow error of the substitution


@dataclass(frozen=True)
class RelaxStep:
    """Per-neuron lines a_l·x + b_l ≤ f(x) ≤ a_u·x + b_u; all four Tensors (batch, *shape), the slopes
    also (batch, rows, *shape): one line per specification row (α-CROWN, ``alpha.py``).
    ``crossing``: for a ReLU, the backend bool array (batch, *shape) of neurons with l < 0 < u (whose lower
    slope α-CROWN may choose in [0, 1]); None for other functions.  ``beta``, ``sign``: split constraints
    sign·x ≥ 0 (sign ±1, 0 where the neuron is not split; (batch, 1, *shape)) with their multipliers
    β ≥ 0 (batch, rows, *shape), as branch and bound adds them (β-CROWN; proofs/bab.md).  ``curve``: for σ
    and tanh in the alpha-crown domain, a ``curves.Curve`` (whose lines α-CROWN may move; their offsets
    then also carry the rows axis)."""
    lower_slope: Tensor
    lower_offset: Tensor
    upper_slope: Tensor
    upper_offset: Tensor
    slack: Tensor | None = None
    floor: Tensor | None = None
    crossing: object = None
    beta: Tensor | None = None
    sign: object = None
    curve: object = None


@dataclass(frozen=True)
class MaxPoolStep:
    """Per output neuron: lower line x_{window[lower_pick]}; upper line x_{window[upper_pick]} where
    upper_pick ≥ 0 (one input dominates: exact), else the constant ``upper_constant``.
    Picks are backend int arrays (batch, C, Ho, Wo) indexing the k² window positions."""
    lower_pick: object
    upper_pick: object
    upper_constant: Tensor
    kernel_size: int
    stride: int
    padding: int
    in_shape: tuple
    slack: Tensor | None = None
    floor: Tensor | None = None


@dataclass(frozen=True)
class ResidualStep:
    """x_k = block(x_o) + shortcut(x_o): each branch is the tuple of steps from the branch point x_o.
    ``slack``: the merge's rounding/execution error (output shape); ``origin_slack``: the error of adding
    the two branches' coefficients at x_o, per unit of |lam_a| + |lam_b| (x_o's shape)."""
    block: tuple
    shortcut: tuple
    slack: Tensor | None = None
    origin_slack: Tensor | None = None
    floor: Tensor | None = None


def _feature_sum(t: Tensor) -> Tensor:
    """Sum over every axis after (batch, rows): (batch, rows, *shape) -> (batch, rows)."""
    return ad.sum(t, axis=tuple(range(2, t.ndim))) if t.ndim > 2 else t


def _with_rows_axis(t: Tensor) -> Tensor:
    """(batch, *shape) -> (batch, 1, *shape), to broadcast against lam's rows."""
    return ad.reshape(t, shape=(t.shape[0], 1) + t.shape[1:])


def _fold_rows(lam: Tensor, keep: int) -> Tensor:
    """(batch, rows, *shape) -> (batch·rows·..., *last ``keep`` axes), for convolution-style ops."""
    return ad.reshape(lam, shape=(-1,) + lam.shape[lam.ndim - keep:])


def _through_affine(lam: Tensor, step: AffineStep):
    """Aᵀlam and lam·b for one affine step (proofs/deeppoly.md §1)."""
    p, batch, rows = step.params, lam.shape[0], lam.shape[1]
    if step.op == "linear":
        W, b = p["weight"], p["bias"]
        new = ad.matmul(lam, W)  # (batch, rows, out) @ (out, in) or (batch, out, in)
        if b is None:
            return new, None
        return new, _dot_features(lam, b if b.ndim == 2 else ad.reshape(b, shape=(1, -1)))
    if step.op == "conv2d":
        W, b = p["weight"], p["bias"]
        new = ad.conv_transpose2d(_fold_rows(lam, 3), W, stride=p["stride"], padding=p["padding"],
                                  input_hw=tuple(step.in_shape[1:]))
        new = ad.reshape(new, shape=(batch, rows) + tuple(step.in_shape))
        if b is None:
            return new, None
        return new, _feature_sum(lam * ad.reshape(b, shape=(-1, 1, 1)))
    if step.op == "normalize":  # x_k = (x − m)/s: lam ↦ lam/s, constant −lam·m/s
        ndim = len(step.in_shape)
        shape = (p["mean"].shape[0],) + (1,) * (ndim - 1) if p["mean"].shape[0] > 1 else (1,)
        scaled = lam / ad.reshape(p["std"], shape=shape)
        return scaled, -_feature_sum(scaled * ad.reshape(p["mean"], shape=shape))
    if step.op == "batchnorm":  # x_k = x·s + t: lam ↦ lam·s, constant lam·t
        ndim = len(step.in_shape)
        shape = (p["scale"].shape[0],) + (1,) * (ndim - 1) if p["scale"].shape[0] > 1 else (1,)
        return lam * ad.reshape(p["scale"], shape=shape), _feature_sum(lam * ad.reshape(p["shift"], shape=shape))
    if step.op == "flatten":
        return ad.reshape(lam, shape=(batch, rows) + tuple(step.in_shape)), None
    if step.op == "permute":  # y_j = x_index[j]: the coefficient of x_i is lam_inverse[i]
        return point.permute(lam, index=ad.inverse_index(p["index"]), shape=p["in_shape"], in_shape=p["shape"]), None
    if step.op == "avg_pool2d":  # transpose of a depthwise mean: conv_transpose2d with a k×k kernel of 1/k²
        k = p["kernel_size"]
        xp = backends.current().xp
        kernel = xp.full((1, 1, k, k), 1.0 / (k * k), dtype=lam.dtype)
        new = ad.conv_transpose2d(ad.reshape(lam, shape=(-1, 1) + lam.shape[-2:]), kernel, stride=p["stride"],
                                  padding=p["padding"], input_hw=tuple(step.in_shape[1:]))
        return ad.reshape(new, shape=(batch, rows) + tuple(step.in_shape)), None
    raise NotImplementedError(f"back-substitution has no rule for affine op {step.op!r}")


def _dot_features(lam: Tensor, v: Tensor) -> Tensor:
    """Σ_features lam·v as one matrix product: lam (batch', rows, *shape), v (batch, *shape) -> (batch, rows);
    a v with lam's rows axis (per-row offsets, α-CROWN's curves) is multiplied and summed row by row."""
    if v.ndim == lam.ndim:
        return ad.sum(ad.reshape(lam * v, shape=(-1, lam.shape[1], math.prod(lam.shape[2:]))), axis=2)
    flat = ad.reshape(lam, shape=(lam.shape[0], lam.shape[1], -1))
    return ad.reshape(ad.matmul(flat, ad.reshape(v, shape=(v.shape[0], -1, 1))), shape=(-1, lam.shape[1]))


def _rows(t: Tensor, lam: Tensor) -> Tensor:
    """A per-neuron Tensor (batch, *shape) with lam's rows axis added; one with rows already as it is."""
    return t if t.ndim == lam.ndim else _with_rows_axis(t)


def _through_relaxation(lam: Tensor, step: RelaxStep):
    """Lower rule: lam⁺·(a_l x + b_l) + lam⁻·(a_u x + b_u) ≤ lam·f(x) (proofs/deeppoly.md §1).

    Computed as lam·(a_u x + b_u) + lam⁺·((a_l − a_u) x + (b_l − b_u)) (lam⁻ = lam − lam⁺): two full-size
    products instead of four, and the constants as matrix products instead of product-then-sum.
    Split constraints (``step.beta``): on the subdomain sign·x ≥ 0, so lam'·x ≥ (lam' − β·sign)·x for β ≥ 0;
    where rounding made the float result move the wrong way (sign·(lam' − lam'') < 0, an effective β < 0),
    lam' is kept: the sign of a float difference is exact, so the effective multiplier is ≥ 0 (bab.md §2)."""
    pos = ad.relu(lam)
    upper = _rows(step.upper_slope, lam)
    new = lam * upper + pos * (_rows(step.lower_slope, lam) - upper)
    if step.beta is not None:
        candidate = new - step.beta * step.sign
        new = ad.where(step.sign * (new.value - candidate.value) >= 0, candidate, new)
    return new, _dot_features(lam, step.upper_offset) + _dot_features(pos, step.lower_offset - step.upper_offset)


def _through_maxpool(lam: Tensor, step: MaxPoolStep):
    """Scatter lam⁺ to each window's lower pick and lam⁻ to its upper pick (or into the constant where no
    input dominates); the scatter is conv_transpose2d with one-hot k×k kernels (proofs/deeppoly.md §4)."""
    xp = backends.current().xp
    k = step.kernel_size
    pos = ad.relu(lam)
    neg = lam - pos
    lower_pick = xp.reshape(step.lower_pick, (step.lower_pick.shape[0], 1) + tuple(step.lower_pick.shape[1:]))
    upper_pick = xp.reshape(step.upper_pick, (step.upper_pick.shape[0], 1) + tuple(step.upper_pick.shape[1:]))
    parts = [ad.where(lower_pick == p, pos, 0.0) + ad.where(upper_pick == p, neg, 0.0) for p in range(k * k)]
    stacked = ad.stack(parts, axis=3)                                   # (batch, rows, C, k², Ho, Wo)
    batch, rows, channels = stacked.shape[:3]  # batch: the picks' batch when lam's was 1
    stacked = ad.reshape(stacked, shape=(-1, k * k) + lam.shape[-2:])
    one_hot = xp.reshape(xp.eye(k * k, dtype=lam.dtype), (k * k, 1, k, k))
    new = ad.conv_transpose2d(stacked, one_hot, stride=step.stride, padding=step.padding,
                              input_hw=tuple(step.in_shape[1:]))
    new = ad.reshape(new, shape=(batch, rows, channels) + tuple(step.in_shape[1:]))
    constant = ad.where(upper_pick < 0, neg, 0.0) * _with_rows_axis(step.upper_constant)
    return new, _feature_sum(constant)


def substitute(lam: Tensor, steps: tuple, record: list | None = None):
    """Walk ``steps`` from the last to the first: returns (lam', c, S) with lam·x_top ≥ lam'·x_bottom + c − S
    for every reachable x (c, S are (batch', rows) or None; S ≥ 0 is the floating-point slack, exact up
    to the rounding of its own sums, see ``lower_bounds``).  lam: (batch', rows, *shape of x_top).
    ``record``: a list that receives (step, lam at its output) for every RelaxStep (branching heuristics)."""
    c = slack = None
    for step in reversed(steps):
        if record is not None and isinstance(step, RelaxStep):
            record.append((step, lam))
        if getattr(step, "slack", None) is not None:
            slack = _plus(slack, _dot_features(ad.abs(lam), step.slack))
        if getattr(step, "floor", None) is not None:
            slack = _plus(slack, ad.reshape(step.floor, shape=(-1, 1)))
        if isinstance(step, AffineStep):
            lam, dc = _through_affine(lam, step)
        elif isinstance(step, RelaxStep):
            lam, dc = _through_relaxation(lam, step)
        elif isinstance(step, MaxPoolStep):
            lam, dc = _through_maxpool(lam, step)
        elif isinstance(step, ResidualStep):  # both branches start from the same lam and meet at x_o
            lam_a, c_a, s_a = substitute(lam, step.block, record)
            lam_b, c_b, s_b = substitute(lam, step.shortcut, record)
            lam, dc = lam_a + lam_b, _plus(c_a, c_b)
            slack = _plus(slack, _plus(s_a, s_b))
            if step.origin_slack is not None:
                slack = _plus(slack, _dot_features(ad.abs(lam_a) + ad.abs(lam_b), step.origin_slack))
        else:
            raise TypeError(f"unknown back-substitution step {type(step).__name__}")
        c = _plus(c, dc)
    return lam, c, slack


def _plus(a, b):
    return b if a is None else a if b is None else a + b


def lower_bounds(lam: Tensor, steps: tuple, input_lower: Tensor, input_upper: Tensor, record=None) -> Tensor:
    """Lower bounds (batch, rows) of lam·x_top over the input box: substitute to the input, then
    min over the box of lam'·x = Σ max(lam',0)·l + min(lam',0)·u = lam'·u + max(lam',0)·(l − u)
    (proofs/deeppoly.md §1).  Sound policy: minus S (compensated for the rounding of its own sums) and fp's
    radius of these last sums, rounded down (proofs/floating_point.md §5).  ``record`` (see ``substitute``)
    also receives ("input", lam') last: a point of the box where row r's linear form is smallest is
    where(lam'_r > 0, l, u) (branch and bound starts its attacks there)."""
    lam, c, slack = substitute(lam, steps, record)
    if record is not None:
        record.append(("input", lam))
    return _concretize(_dense_dots(lam), c, slack, steps, input_lower, input_upper)


def _dense_dots(lam: Tensor):
    """``_concretize``'s dots for dense coefficients lam' (batch', rows, *input shape)."""
    forms = {"lam": lambda: lam, "pos": lambda: ad.relu(lam), "abs": lambda: ad.abs(lam)}
    return lambda kind, v: _dot_features(forms[kind](), v)


def _concretize(dots, c, slack, steps: tuple, input_lower: Tensor, input_upper: Tensor) -> Tensor:
    """The end of ``lower_bounds``: min over the input box of lam'·x + c, minus the slack S and the error of
    these last sums (sound policy).  ``dots(kind, v)`` is Σ_features f(lam')·v per (batch, row) with f the
    identity ("lam"), max(·, 0) ("pos") or |·| ("abs"); ``steps`` are all the steps substituted through."""
    bound = dots("lam", input_upper) + dots("pos", input_lower - input_upper)
    bound = bound if c is None else bound + c
    if not fp.policy().sound:  # no rounding slack then; an input set's own error (``from_affine``) still counts
        return bound if slack is None else bound - slack
    size = _size(input_lower.shape[1:])
    if slack is not None:  # S's float sums (≤ largest layer + steps roundings) only shrank it; S keeps its
        slack = fp.compensate(slack, max(size, _largest_layer(steps)) + 2 * _count(steps) + 2)  # gradient
    with ad.no_grad():
        scale = ad.maximum(ad.abs(input_lower), ad.abs(input_upper)) * 3.0
        last = dots("abs", scale)
        last = last if c is None else last + ad.abs(c)
        if slack is not None:
            last = last + ad.constant(slack.value)
        error = fp.radius(last, size + 2, execution=None)
    if slack is not None:  # (an input set's error c is part of S: α-CROWN's gradient must see it)
        error = error + slack
    return fp.down(bound - error)


def _count(steps: tuple) -> int:
    """Number of steps, residual branches included."""
    return sum(_count(s.block) + _count(s.shortcut) + 1 if isinstance(s, ResidualStep) else 1 for s in steps)


def _size(shape) -> int:
    count = 1
    for n in shape:
        count *= n
    return count


def _largest_layer(steps: tuple) -> int:
    """The largest feature size lam takes on its way down through ``steps`` (bounds chunk memory)."""
    size = 1
    for step in steps:
        if isinstance(step, ResidualStep):
            size = max(size, _largest_layer(step.block), _largest_layer(step.shortcut))
        elif hasattr(step, "in_shape"):
            size = max(size, _size(step.in_shape))
    return size


def _through_patches(count: int, start: int, stop: int, selected, steps: tuple, shape: tuple,
                     input_lower: Tensor, input_upper: Tensor) -> Tensor:
    """``lower_bounds`` of rows start..stop−1 of [E; −E] (E: the unit rows of the ``selected`` neurons of a
    convolution): patches (``patches.Rows``) through the top ``count`` steps, the dense rule below."""
    m = selected.shape[0]
    index = np.arange(start, stop)
    rows = patches.Rows.unit(backends.to_numpy(selected)[index % m], np.where(index < m, 1.0, -1.0), shape,
                             input_lower.value.dtype)
    c, slack = (None if t is None else Tensor(t) for t in rows.substitute(steps[len(steps) - count:]))
    if count == len(steps):
        return _concretize(rows.dots, c, slack, steps, input_lower, input_upper)
    lam, more, extra = substitute(rows.dense(), steps[:len(steps) - count])
    return _concretize(_dense_dots(lam), _plus(c, more), _plus(slack, extra), steps, input_lower, input_upper)


def _signed_unit_rows(start: int, stop: int, neurons, n: int, dtype):
    """Rows start..stop−1 of the (2m, n) matrix [E; −E], E the unit rows of the m ``neurons`` (flat
    indices), built without the whole matrix."""
    xp = backends.current().xp
    m = neurons.shape[0]
    index = xp.arange(start, stop)
    sign = 1.0 - 2.0 * xp.astype(index >= m, dtype)
    hit = xp.arange(n)[None, :] == xp.take(neurons, index % m)[:, None]
    return xp.astype(hit, dtype) * sign[:, None]


def bounds(steps: tuple, shape: tuple, input_lower: Tensor, input_upper: Tensor, neurons=None, lower=None):
    """(lower, upper) of the top layer's neurons (feature ``shape``): one lower pass over the rows [E; −E]
    (upper = −lower of −x), in chunks of rows to bound the memory of lam.  ``neurons``: flat indices of
    the neurons wanted (backend int array; default all) — results are then (batch, m), else (batch, *shape).
    ``lower``: the lower-bound pass, (lam, steps, input_lower, input_upper) -> (batch, rows); default
    ``lower_bounds`` (alpha-crown passes its optimised one)."""
    xp = backends.current().xp
    n = _size(shape)
    batch = input_lower.shape[0]
    selected = xp.arange(n) if neurons is None else neurons
    m = selected.shape[0]
    plan = None if lower is not None or ad.grad_enabled() or not PATCHES else patches.plan(steps, shape)
    lower = lower_bounds if lower is None else lower
    if plan:  # a row's patches, then (if the dense rule finishes) the layers below
        count, elements, size = plan
        below = _largest_layer(steps[:len(steps) - count])
        chunk = max(1, CHUNK_ELEMENTS // (batch * max(elements, size, below)))
    else:
        chunk = max(1, CHUNK_ELEMENTS // (batch * max(n, _largest_layer(steps))))
    pieces = []
    for start in range(0, 2 * m, chunk):
        if plan:  # a convolution's neurons: through their receptive fields (``patches``), then dense
            stop = min(start + chunk, 2 * m)
            pieces.append(_through_patches(count, start, stop, selected, steps, tuple(shape), input_lower,
                                           input_upper))
            continue
        rows = _signed_unit_rows(start, min(start + chunk, 2 * m), selected, n, input_lower.dtype)
        rows = xp.reshape(rows, (1, -1) + tuple(shape))
        pieces.append(lower(Tensor(rows), steps, input_lower, input_upper))
    low = pieces[0] if len(pieces) == 1 else ad.concatenate(pieces, axis=1)  # (batch, 2m)
    lower = ad.getitem(low, index=(slice(None), slice(0, m)))
    upper = -ad.getitem(low, index=(slice(None), slice(m, 2 * m)))
    if neurons is not None:
        return lower, upper
    return ad.reshape(lower, shape=(batch,) + tuple(shape)), ad.reshape(upper, shape=(batch,) + tuple(shape))
