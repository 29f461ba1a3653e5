"""DeepPoly (Singh, Gehr, Püschel, Vechev, POPL'19) and CROWN-IBP (Zhang et al., ICLR'20): one element type.

Every neuron has concrete bounds ``lower ≤ x ≤ upper`` and, through ``steps`` (see ``backsub.py``), one
linear lower and one linear upper bound in terms of the layer before.  The two domains differ only in
where back-substitution is used:

- ``deeppoly``: the concrete bounds of an affine layer's output (linear, conv2d, avg_pool2d, residual
  add) come from back-substitution to the input (POPL'19 Sec. 4), intersected with the interval image of
  the previous bounds (sound, and it makes DeepPoly never looser than Box).  Back-substitution runs when
  the bounds are used (``refined`` is False until then): before a ReLU only for the neurons whose
  interval bounds cross 0, before sigmoid, tanh, max pool and in ``bounds()`` for every neuron.  A
  stable ReLU's lines do not depend on its bounds, so skipping those neurons is sound and loses only
  what their tighter bounds would add to later interval images (3× faster on ConvSmall; on a DiffAI
  net a third of the margins got looser, by up to 0.6, with the same inputs verified).  Elementwise layers (ReLU, sigmoid, tanh,
  normalize, flatten, max pool) take the interval image: per neuron it is exact for the given input
  bounds, so back-substitution could not do better there.  Never refined: an affine layer whose input
  set is still exactly a box (only normalize/flatten before it), where the interval image is exact.
  A convolution's neurons are back-substituted through their receptive fields when no gradient is
  recorded (``patches.py``; 3.5× faster on the DiffAI ConvBig, the same bounds up to rounding).
- ``crown-ibp``: every layer keeps interval (IBP) bounds, which also choose the relaxations; only
  ``bounds()`` back-substitutes, from the element it is called on (in certification and training: the
  specification layer C·y), and intersects with the IBP bounds.  That is CROWN-IBP's bound (Eq. 9).

Relaxations: ReLU (POPL'19 Sec. 4.2, with ERAN's tie rule), sigmoid/tanh (Sec. 4.3), max pool (ERAN).
Floating point: the concrete bounds come from Box's sound transformers; each step records ``fp``'s error
radius for back-substitution through it (``_errors``), relaxation lines are built with outward rounding.
Proofs: proofs/deeppoly.md, proofs/crown_ibp.md, proofs/floating_point.md.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from refcert import autodiff as ad
from refcert import backends, domains, fp
from refcert.autodiff import Tensor
from refcert.domains import backsub, box, point
from refcert.domains.backsub import AffineStep, MaxPoolStep, RelaxStep, ResidualStep

DEEPPOLY, CROWN_IBP, ALPHA = "deeppoly", "crown-ibp", "alpha-crown"


@dataclass(frozen=True)
class DeepPoly:
    """Concrete bounds lower, upper (batch, *shape); the input box (batch, *input shape); the steps
    from the input up to this layer (a tuple, shared with the elements it was built from)."""
    lower: Tensor
    upper: Tensor
    input_lower: Tensor
    input_upper: Tensor
    steps: tuple
    domain: str
    refined: bool = True      # False: deeppoly's back-substitution has not tightened lower/upper yet

    @property
    def shape(self) -> tuple:
        return self.lower.shape

    def bounds(self):
        """(lower, upper), each (batch, *shape).  CROWN-IBP back-substitutes here (proofs/crown_ibp.md)."""
        if not self.refined:
            return _refine(self, everywhere=True).bounds()
        if self.domain == CROWN_IBP and self.steps:
            lower, upper = backsub.bounds(self.steps, self.lower.shape[1:], self.input_lower, self.input_upper)
            return ad.maximum(self.lower, lower), ad.minimum(self.upper, upper)
        if self.domain == ALPHA and self.steps:  # DeepPoly's bounds, then α optimised per neuron and side
            from refcert.domains import alpha  # here: deeppoly and crown-ibp do without it (and its optimiser)
            lower, upper = alpha.bounds(self.steps, self.lower.shape[1:], self.input_lower, self.input_upper)
            return ad.maximum(self.lower, lower), ad.minimum(self.upper, upper)
        return self.lower, self.upper


def from_bounds(lower, upper, *, domain: str) -> DeepPoly:
    """The input box [lower, upper]; no steps yet."""
    lower, upper = ad.as_tensor(lower), ad.as_tensor(upper)
    box.check_bounds(lower, upper, domain)
    return DeepPoly(lower, upper, lower, upper, (), domain)


def from_affine(A, b, c, lower, upper, shape, *, domain: str) -> DeepPoly:
    """``Domain.from_affine``'s set with the parameter box as the input: one affine step x = A p + b whose
    slack also holds c (lam·x ≥ lam·(A p + b) − |lam|·c for every x of the set: the slack's meaning,
    proofs/floating_point.md §5), interval bounds widened by c, then the identity permute to ``shape``.
    The same set as the default construction, without its (n + k)-column weight: back-substitution
    ends in k parameters instead of n + k.  proofs/geometric.md."""
    A, b, c = ad.as_tensor(A), ad.as_tensor(b), ad.as_tensor(c)
    xp = backends.current().xp
    if not bool(xp.all(c.value >= 0)):  # also catches NaN
        raise ValueError("from_affine needs an error c >= 0 in every feature")
    x = from_bounds(lower, upper, domain=domain)
    with fp.use(execution="exact"):  # the map of reals describing the set, never executed
        x = linear(x, weight=A, bias=b)
    step = x.steps[-1]
    slack = c if step.slack is None else fp.up(step.slack + c)
    x = dataclasses.replace(x, lower=fp.down(x.lower - c), upper=fp.up(x.upper + c),
                            steps=x.steps[:-1] + (dataclasses.replace(step, slack=slack),))
    n = A.shape[1]
    return permute(x, index=np.arange(n), shape=tuple(shape), in_shape=(n,))


# --- relaxations: per-neuron lines a_l·x + b_l ≤ f(x) ≤ a_u·x + b_u on [l, u] ------------------------
def relu_lines(l: Tensor, u: Tensor) -> RelaxStep:
    """POPL'19 Sec. 4.2.  Stable neurons exact; crossing (l < 0 < u): upper chord u(x − l)/(u − l), lower
    α·x with α = 1 if u ≥ −l else 0 (ERAN/ELINA: area heuristic, the tie u = −l goes to α = 1).
    Sound: relu is convex, so the chord lies above it; αx ≤ relu(x) for α ∈ [0, 1].  proofs/deeppoly.md §2.
    In floats the chord's slope a is rounded up (any a ≥ u/(u − l) gives a line a(x − l) above relu on
    [l, u]) and its offset −a·l too (proofs/floating_point.md §4)."""
    dead, live = u.value <= 0, l.value >= 0
    crossing = ~(dead | live)
    zero = l * 0.0
    chord = ad.where(crossing, u, zero) / fp.down(ad.where(crossing, u - l, zero + 1.0))  # safe where l == u
    chord = ad.where(crossing, fp.up(chord), zero)
    upper_slope = ad.where(live, zero + 1.0, chord)
    alpha = ad.where(live | (crossing & (u.value >= -l.value)), zero + 1.0, zero)
    return RelaxStep(alpha, zero, upper_slope, fp.up(-chord * l), crossing=crossing)


def _s_shaped_lines(f, df, l: Tensor, u: Tensor, name: str = "") -> RelaxStep:
    """POPL'19 Sec. 4.3 for f convex on x ≤ 0, concave on x ≥ 0, f' unimodal with peak at 0 (σ, tanh).
    chord λ = (f(u) − f(l))/(u − l), tangent-slope λ' = min(f'(l), f'(u)):
    lower f(l) + λ(x − l) if l > 0 else f(l) + λ'(x − l);
    upper f(u) + λ(x − u) if u ≤ 0 else f(u) + λ'(x − u).
    Sound: the chord of a concave (convex) piece lies below (above) it; f' ≥ λ' on [l, u]. §3."""
    if fp.policy().sound:
        return _sound_s_shaped_lines(df, l, u, name)
    f_l, f_u = f(l), f(u)
    flat = u.value <= l.value  # l == u: the point itself, slope 0
    zero = l * 0.0
    chord = ad.where(flat, zero, f_u - f_l) / ad.where(flat, zero + 1.0, u - l)
    tangent = ad.where(flat, zero, ad.minimum(df(f_l), df(f_u)))
    lower_slope = ad.where(l.value > 0, chord, tangent)
    upper_slope = ad.where(u.value <= 0, chord, tangent)
    return RelaxStep(lower_slope, f_l - lower_slope * l, upper_slope, f_u - upper_slope * u)


def _chord_below(start: Tensor, end: Tensor, l: Tensor, u: Tensor) -> Tensor:
    """A slope ≤ (end − start)/(u − l) (u > l), each operation rounded the safe way; NaN-free."""
    rise = fp.down(end - start)
    run = ad.where(rise.value >= 0, fp.up(u - l), fp.down(u - l))
    ok = run.value > 0
    return ad.where(ok, fp.down(rise / ad.where(ok, run, rise * 0.0 + 1.0)), rise * 0.0 - np.inf)


def _sound_s_shaped_lines(df, l: Tensor, u: Tensor, name: str) -> RelaxStep:
    """The lines of ``_s_shaped_lines`` made sound in floats (proofs/floating_point.md §4): f's values
    from outward enclosures; the tangent slope from ``relaxations.slope_below`` (≤ min f' on [l, u]); a
    chord slope is used only where it is ≤ the chord through the enclosures, and never below the tangent
    slope (both are valid there); offsets rounded outward and widened by the largest execution error of f."""
    from refcert.domains.relaxations import slope_below
    with ad.no_grad():
        low_l, high_l = fp.enclose(name, l, execution=False)
        low_u, high_u = fp.enclose(name, u, execution=False)
        spill = fp.function_error(ad.maximum(ad.maximum(ad.abs(low_l), ad.abs(high_l)),
                                             ad.maximum(ad.abs(low_u), ad.abs(high_u))))
        flat = u.value <= l.value
        zero = l * 0.0
        tangent = ad.where(flat, zero, slope_below(df, name, l, u))
        lower_chord = ad.maximum(_chord_below(low_l, low_u, l, u), tangent)
        upper_chord = ad.maximum(_chord_below(high_l, high_u, l, u), tangent)
        lower_slope = ad.where((l.value > 0) & ~flat, lower_chord, tangent)
        upper_slope = ad.where((u.value <= 0) & ~flat, upper_chord, tangent)
        lower_offset = fp.down(fp.down(low_l - fp.up(lower_slope * l)) - spill)
        upper_offset = fp.up(fp.up(high_u - fp.down(upper_slope * u)) + spill)
    return RelaxStep(lower_slope, lower_offset, upper_slope, upper_offset)


def sigmoid_lines(l: Tensor, u: Tensor) -> RelaxStep:
    return _s_shaped_lines(ad.sigmoid, lambda s: s * (1.0 - s), l, u, "sigmoid")


def tanh_lines(l: Tensor, u: Tensor) -> RelaxStep:
    return _s_shaped_lines(ad.tanh, lambda s: 1.0 - s * s, l, u, "tanh")


def maxpool_lines(l: Tensor, u: Tensor, kernel_size: int, stride: int, padding: int) -> MaxPoolStep:
    """ERAN's DeepPoly max pool (proofs/deeppoly.md §4), per window of inputs x_1..x_K:
    if some x_j has l_j ≥ max_{i≠j} u_i then y = x_j (both lines); else x_{j*} ≤ y ≤ max_i u_i with
    j* = argmax_i l_i.  Sound: y = max_i x_i ≥ x_{j*}, and every x_i ≤ u_i."""
    if padding > kernel_size // 2:
        raise ValueError(f"max_pool2d padding {padding} exceeds half the kernel size {kernel_size}")
    pad = ((0, 0), (0, 0), (padding, padding), (padding, padding))
    L = np.pad(backends.to_numpy(l.value), pad, constant_values=-np.inf)  # padding never wins
    U = np.pad(backends.to_numpy(u.value), pad, constant_values=-np.inf)
    out_h = (L.shape[2] - kernel_size) // stride + 1
    out_w = (L.shape[3] - kernel_size) // stride + 1
    rows = lambda i, n: slice(i, i + stride * (n - 1) + 1, stride)  # window position i of n outputs
    windows = [(Ellipsis, rows(i, out_h), rows(j, out_w)) for i in range(kernel_size) for j in range(kernel_size)]
    L, U = np.stack([L[w] for w in windows]), np.stack([U[w] for w in windows])  # (K, batch, C, Ho, Wo)
    lower_pick = np.argmax(L, axis=0)
    upper_pick = np.full(lower_pick.shape, -1)
    for p in range(len(windows)):
        others = np.max(np.delete(U, p, axis=0), axis=0) if len(windows) > 1 else np.full(U.shape[1:], -np.inf)
        upper_pick = np.where((upper_pick < 0) & (L[p] >= others), p, upper_pick)
    asarray = backends.current().asarray
    upper_constant = ad.max_pool2d(u, kernel_size=kernel_size, stride=stride, padding=padding)
    return MaxPoolStep(asarray(lower_pick), asarray(upper_pick), upper_constant, kernel_size, stride, padding,
                       tuple(l.shape[1:]))


# --- transformers ---------------------------------------------------------------------------------
def _box_exact(steps: tuple) -> bool:
    """The layer's input is still exactly a box: only diagonal, reshaping or permuting affine steps so far."""
    return all(isinstance(s, AffineStep) and s.op in ("normalize", "batchnorm", "flatten", "permute") for s in steps)


def _push(x: DeepPoly, step, image: box.Box, *, backsubstitute: bool) -> DeepPoly:
    """Append ``step`` with the interval image as concrete bounds; DeepPoly's affine layers are marked
    for back-substitution, which ``_refine`` does when the bounds are used (proofs/deeppoly.md §1, §5)."""
    return dataclasses.replace(x, lower=image.lower, upper=image.upper, steps=x.steps + (step,),
                               refined=x.refined and not (backsubstitute and x.domain in (DEEPPOLY, ALPHA)))


def _refine(x: DeepPoly, *, everywhere: bool) -> DeepPoly:
    """Tighten the interval bounds by back-substitution: for every neuron, or (``everywhere`` False) only
    for those whose interval bounds cross 0 in some batch element (what a ReLU's lines depend on)."""
    if x.refined:
        return x
    xp = backends.current().xp
    lower, upper, shape = x.lower, x.upper, x.lower.shape[1:]
    if everywhere:
        deep_lower, deep_upper = backsub.bounds(x.steps, shape, x.input_lower, x.input_upper)
        lower, upper = ad.maximum(lower, deep_lower), ad.minimum(upper, deep_upper)
        return dataclasses.replace(x, lower=lower, upper=upper, refined=True)
    batch, n = lower.shape[0], int(np.prod(shape, dtype=np.int64))
    crossing = xp.any(xp.reshape((lower.value < 0) & (upper.value > 0), (batch, n)), axis=0)
    neurons = xp.nonzero(crossing)[0]
    if neurons.shape[0] > 0:
        deep_lower, deep_upper = backsub.bounds(x.steps, shape, x.input_lower, x.input_upper, neurons=neurons)
        chosen = xp.reshape(crossing, (1,) + tuple(shape))
        if ad.grad_enabled():  # scatter the m refined neurons back into (batch, n) with a one-hot product
            one_hot = xp.astype(neurons[:, None] == xp.arange(n)[None, :], lower.dtype)       # (m, n)
            flat = lambda t: ad.reshape(ad.matmul(t, one_hot), shape=(batch,) + tuple(shape))
        else:  # no gradient: a gather does it (the same numbers; the product's m·n work is gone)
            hit = backends.to_numpy(crossing)
            place = backends.current().asarray(np.where(hit, np.cumsum(hit) - 1, hit.sum()))  # m: a zero
            flat = lambda t: ad.constant(xp.reshape(xp.take(
                xp.concat([t.value, xp.zeros((batch, 1), dtype=t.dtype)], axis=1), place, axis=1),
                (batch,) + tuple(shape)))
        lower = ad.where(chosen, ad.maximum(lower, flat(deep_lower)), lower)
        upper = ad.where(chosen, ad.minimum(upper, flat(deep_upper)), upper)
    return dataclasses.replace(x, lower=lower, upper=upper, refined=True)


def _box(x: DeepPoly) -> box.Box:
    return box.Box(x.lower, x.upper)


def _errors(x: DeepPoly, coefficient, n: int, *, constant=None, parameter=None, executes: bool = True,
            peak: float = 1.0) -> dict:
    """``slack`` and ``floor`` of a step whose input is x (proofs/floating_point.md §5), as keyword
    arguments for the step (empty when not sound).  ``coefficient(M)`` is |A| M for the step's (relaxed)
    linear part and input magnitude M; ``constant`` its |b| (output shape; a Tensor or a function of M); n bounds the terms of every
    sum of the step's coefficients, forward (the execution, if the layer ``executes``) and in
    substitution.  slack = fp.radius(|A| M + |b|, n) + fp.radius(|b|, output size) (the constant's dot)."""
    if not fp.policy().sound:
        return {}
    xp = backends.current().xp
    with ad.no_grad():
        magnitude = box.magnitude(_box(x))
        image = coefficient(magnitude).value
        constant = constant(magnitude) if callable(constant) else constant
        constant = None if constant is None else xp.broadcast_to(xp.abs(constant.value), image.shape)
        total = image if constant is None else image + constant
        execution = fp.execution_dtype(getattr(parameter, "dtype", None), magnitude.dtype) if executes else None
        slack = fp.radius(ad.constant(total), n, execution=execution, peak=peak).value
        size = int(np.prod(image.shape[1:], dtype=np.int64))
        if constant is not None:
            slack = slack + fp.radius(ad.constant(constant), size + 1, execution=None).value
        spread = xp.sum(xp.reshape(magnitude.value, (magnitude.shape[0], -1)), axis=1)
        floor = (spread + float(size + 1)) * (2.0 * (max(n, size) + 2) * fp.tiny(magnitude.dtype))
    return {"slack": ad.constant(slack), "floor": ad.constant(floor)}


def _affine(x: DeepPoly, op: str, params: dict, image: box.Box, errors: dict) -> DeepPoly:
    step = AffineStep(op, params, tuple(x.lower.shape[1:]), **errors)
    return _push(x, step, image, backsubstitute=not _box_exact(x.steps))


def linear(x: DeepPoly, *, weight: Tensor, bias: Tensor | None) -> DeepPoly:
    """y = W x + b (W (out, in) or per-input (batch, out, in)); back-substitution: lam ↦ lam W."""
    abs_w = ad.abs(weight)
    errors = _errors(x, lambda m: point.linear(m, weight=abs_w, bias=None), max(weight.shape[-2:]) + 1,
                     constant=bias, parameter=weight)
    return _affine(x, "linear", {"weight": weight, "bias": bias}, box.linear(_box(x), weight=weight, bias=bias),
                   errors)


def conv2d(x: DeepPoly, *, weight: Tensor, bias: Tensor | None, stride: int, padding: int) -> DeepPoly:
    """Convolution; back-substitution: lam ↦ conv_transpose2d(lam, W)."""
    params = {"weight": weight, "bias": bias, "stride": stride, "padding": padding}
    abs_k = ad.abs(weight)
    image = lambda m: point.conv2d(m, weight=abs_k, bias=None, stride=stride, padding=padding)
    constant = None if bias is None else ad.reshape(bias, shape=(-1, 1, 1))
    n = max(weight.shape[0], weight.shape[1]) * weight.shape[2] * weight.shape[3] + 1
    errors = _errors(x, image, n, constant=constant, parameter=weight)
    return _affine(x, "conv2d", params, box.conv2d(_box(x), **params), errors)


def avg_pool2d(x: DeepPoly, *, kernel_size: int, stride: int, padding: int = 0) -> DeepPoly:
    """Average pooling; back-substitution: the transposed pooling."""
    params = {"kernel_size": kernel_size, "stride": stride, "padding": padding}
    errors = _errors(x, lambda m: point.avg_pool2d(m, **params), kernel_size * kernel_size + 1,
                     peak=kernel_size * kernel_size)
    return _affine(x, "avg_pool2d", params, box.avg_pool2d(_box(x), **params), errors)


def normalize(x: DeepPoly, *, mean: Tensor, std: Tensor) -> DeepPoly:
    """(x − m)/s: diagonal, so the interval image is exact per neuron; recorded for back-substitution."""
    nd = x.lower.ndim - 1
    constant = lambda m: point.normalize(m * 0.0, mean=-ad.abs(mean), std=ad.abs(std), feature_ndim=nd)
    errors = _errors(x, lambda m: point.scale_by_std(m, std=ad.abs(std), feature_ndim=nd), 2,
                     constant=constant, parameter=mean, peak=box.std_peak(std))
    step = AffineStep("normalize", {"mean": mean, "std": std}, tuple(x.lower.shape[1:]), **errors)
    return _push(x, step, box.normalize(_box(x), mean=mean, std=std), backsubstitute=False)


def batchnorm(x: DeepPoly, *, scale: Tensor, shift: Tensor) -> DeepPoly:
    """x·s + t per channel (``nn.BatchNorm`` in evaluation mode): diagonal, so the interval image is exact
    per neuron; recorded for back-substitution (lam ↦ lam·s, constant lam·t)."""
    nd = x.lower.ndim - 1
    constant = lambda m: point.batchnorm(m * 0.0, scale=scale, shift=ad.abs(shift), feature_ndim=nd)
    errors = _errors(x, lambda m: point.scale_channels(m, scale=ad.abs(scale), feature_ndim=nd), 2,
                     constant=constant, parameter=scale)
    step = AffineStep("batchnorm", {"scale": scale, "shift": shift}, tuple(x.lower.shape[1:]), **errors)
    return _push(x, step, box.batchnorm(_box(x), scale=scale, shift=shift), backsubstitute=False)


def flatten(x: DeepPoly) -> DeepPoly:
    """A reshape: exact."""
    return _push(x, AffineStep("flatten", {}, tuple(x.lower.shape[1:])), box.flatten(_box(x)), backsubstitute=False)


def permute(x: DeepPoly, **params) -> DeepPoly:
    """A rearrangement of the features: exact; back-substitution applies the inverse permutation."""
    step = AffineStep("permute", params, tuple(x.lower.shape[1:]))
    return _push(x, step, box.permute(_box(x), **params), backsubstitute=False)


def _relaxed(x: DeepPoly, step: RelaxStep, curve: str | None = None) -> RelaxStep:
    """The step with its slack: substituting lam through the lines costs γ·|lam|((2|a_u| + |a_l|) M) in the
    coefficients and γ·|lam|(2|b_u| + |b_l|) in the constant (proofs/floating_point.md §5).  For alpha-crown
    a crossing ReLU's slopes may become any α ∈ [0, 1] (and 1 or 0 both, when branch and bound splits it),
    so its slack is taken for |a_u|, |a_l| ≤ 1: 2 + 1 (proofs/alpha_crown.md §3); a σ or tanh step (``curve``
    names it) gets its ``curves.Curve`` and the slack of any slope ≤ ``most`` and offset ≤ ``limit`` (§4)."""
    if x.domain == ALPHA and curve is not None:
        from refcert.domains import curves
        step = dataclasses.replace(step, curve=curves.curve(curve, x.lower, x.upper))
    if not fp.policy().sound:
        return step
    xp = backends.current().xp
    slopes = 2.0 * xp.abs(step.upper_slope.value) + xp.abs(step.lower_slope.value)
    offsets = 2.0 * xp.abs(step.upper_offset.value) + xp.abs(step.lower_offset.value)
    if x.domain == ALPHA and step.crossing is not None:
        slopes = xp.where(step.crossing, 3.0, slopes)
    if step.curve is not None:
        slopes = xp.where(step.curve.free, 3.0 * step.curve.most.value, slopes)
        offsets = xp.where(step.curve.free, 3.0 * step.curve.limit.value, offsets)
    errors = _errors(x, lambda m: ad.constant(slopes * m.value), 3, constant=ad.constant(offsets), executes=False)
    return dataclasses.replace(step, **errors)


def relu(x: DeepPoly) -> DeepPoly:
    x = _refine(x, everywhere=False)
    return _push(x, _relaxed(x, relu_lines(x.lower, x.upper)), box.relu(_box(x)), backsubstitute=False)


def sigmoid(x: DeepPoly) -> DeepPoly:
    x = _refine(x, everywhere=True)
    return _push(x, _relaxed(x, sigmoid_lines(x.lower, x.upper), "sigmoid"), box.sigmoid(_box(x)), backsubstitute=False)


def tanh(x: DeepPoly) -> DeepPoly:
    x = _refine(x, everywhere=True)
    return _push(x, _relaxed(x, tanh_lines(x.lower, x.upper), "tanh"), box.tanh(_box(x)), backsubstitute=False)


def max_pool2d(x: DeepPoly, *, kernel_size: int, stride: int, padding: int = 0) -> DeepPoly:
    x = _refine(x, everywhere=True)
    step = maxpool_lines(x.lower, x.upper, kernel_size, stride, padding)
    pool = dict(kernel_size=kernel_size, stride=stride, padding=padding)
    if fp.policy().sound:  # the scatter sums ≤ k² coefficients; the constant is a dot over the output
        step = dataclasses.replace(step, **_errors(x, lambda m: ad.max_pool2d(m, **pool), kernel_size * kernel_size,
                                                   constant=ad.abs(step.upper_constant), executes=False))
    image = box.max_pool2d(_box(x), **pool)
    return _push(x, step, image, backsubstitute=False)


def add(a: DeepPoly, b: DeepPoly, *, origin: DeepPoly) -> DeepPoly:
    """Residual merge a + b of two branches from ``origin``: one ResidualStep holding each branch's
    steps after the branch point; back-substitution goes down both and adds (proofs/deeppoly.md §5)."""
    if not isinstance(origin, DeepPoly):
        raise TypeError(f"{a.domain} add needs the branch point (origin=) as a DeepPoly element, "
                        f"got {type(origin).__name__}")
    n = len(origin.steps)
    for name, branch in (("block", a), ("shortcut", b)):
        if len(branch.steps) < n or any(s is not t for s, t in zip(branch.steps, origin.steps)):
            raise ValueError(f"{a.domain} add: the {name} branch does not start at the branch point origin")
    errors = {}
    if fp.policy().sound:
        merge = _errors(a, lambda m: m + box.magnitude(_box(b)), 1)
        at_origin = _errors(origin, lambda m: m, 1, executes=False)
        errors = {"slack": merge["slack"], "floor": merge["floor"] + at_origin["floor"],
                  "origin_slack": at_origin["slack"]}
    step = ResidualStep(a.steps[n:], b.steps[n:], **errors)
    return _push(origin, step, box.add(_box(a), _box(b)), backsubstitute=True)


TRANSFORMERS = {
    "linear": linear, "conv2d": conv2d, "normalize": normalize, "batchnorm": batchnorm, "flatten": flatten, "permute": permute,
    "avg_pool2d": avg_pool2d, "max_pool2d": max_pool2d,
    "relu": relu, "sigmoid": sigmoid, "tanh": tanh, "add": add,
}

for _name in (DEEPPOLY, CROWN_IBP, ALPHA):
    domains.register(_name, TRANSFORMERS, functools.partial(from_bounds, domain=_name),
                     functools.partial(from_affine, domain=_name))
