"""The Box (interval) domain: every neuron keeps a lower and an upper bound.

Interval arithmetic as used for certified training by DiffAI (Mirman, Gehr, Vechev, ICML'18, Sec. 4.1,
"Box") and by IBP (Gowal et al. 2018, Eq. 6): an affine map sends the center through the map and the
radius through its absolute value; monotone layers (ReLU, sigmoid, tanh, pooling) map the bounds.
The element is a batch of boxes ``Box(lower, upper)``, both Tensors (batch, *shape).  Every
transformer is written with autodiff ops, so the bounds are differentiable in the weights and in the
input bounds.  Floating point: every transformer that rounds adds ``refcert.fp``'s error radius for
(|A| M + |b|), M = max(|lower|, |upper|) its input's magnitude; monotone functions take ``fp.enclose``'s
outward enclosures.  Proofs: proofs/box.md, proofs/floating_point.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from refcert import autodiff as ad
from refcert import backends, domains, fp
from refcert.autodiff import Tensor
from refcert.domains import point

NAME = "box"


@dataclass(frozen=True)
class Box:
    """A batch of boxes {x : lower ≤ x ≤ upper}; lower, upper (batch, *shape)."""
    lower: Tensor
    upper: Tensor
    domain: str = field(default=NAME)

    def bounds(self):
        return self.lower, self.upper

    @property
    def shape(self) -> tuple:
        return self.lower.shape

    @property
    def center(self) -> Tensor:
        return (self.lower + self.upper) * 0.5

    @property
    def radius(self) -> Tensor:
        return (self.upper - self.lower) * 0.5


def from_bounds(lower, upper) -> Box:
    """The box [lower, upper]; refuses mismatched shapes, NaN and lower > upper with a clear message."""
    lower, upper = ad.as_tensor(lower), ad.as_tensor(upper)
    check_bounds(lower, upper, NAME)
    return Box(lower, upper)


def check_bounds(lower: Tensor, upper: Tensor, domain: str) -> None:
    """Shared input check for from_bounds: same shape, a batch axis, no NaN, lower ≤ upper."""
    if lower.shape != upper.shape:
        raise ValueError(f"{domain}.from_bounds: lower {lower.shape} and upper {upper.shape} differ in shape")
    if lower.ndim < 1:
        raise ValueError(f"{domain}.from_bounds: bounds need a batch axis, got a scalar")
    lo, hi = lower.numpy(), upper.numpy()
    if np.isnan(lo).any() or np.isnan(hi).any():
        raise ValueError(f"{domain}.from_bounds: bounds contain NaN")
    if (lo > hi).any():
        gap = float(np.max(lo - hi))
        raise ValueError(f"{domain}.from_bounds: lower exceeds upper (by up to {gap:.3g}) at "
                         f"{int((lo > hi).sum())} coordinates")


def _from_center_radius(c: Tensor, r: Tensor, error: Tensor | None = None) -> Box:
    """[c − r, c + r], the radius grown by the rounding-error radius ``error`` (None: not sound)."""
    r = fp.plus(r, error)
    return Box(c - r, c + r)


def magnitude(x: Box) -> Tensor:
    """M = max(|lower|, |upper|) ≥ |x| for every x of the box (exact; a constant, computed on raw arrays)."""
    xp = backends.current().xp
    return ad.constant(xp.maximum(xp.abs(x.lower.value), xp.abs(x.upper.value)))


def _error(x: Box, image, n: int, parameter=None, peak: float = 1.0):
    """fp's error radius of an affine layer: image(M) = |A| M + |b| for the layer's matrix A and constant b
    (a constant: computed without gradient); n bounds the terms of every sum.  None when not sound."""
    if not fp.policy().sound:
        return None
    with ad.no_grad():
        execution = fp.execution_dtype(getattr(parameter, "dtype", None), x.lower.dtype)
        return fp.radius(image(magnitude(x)), n, execution=execution, peak=peak)


def _affine(x: Box, center: Tensor, abs_map, abs_bias, n: int, parameter) -> Box:
    """[c' ∓ r'] with c' the computed centre and r' = |A| r plus the rounding-error radius, in one product:
    r' = |A|(r + G·M) + G|b| + floor (``fp.folded``; proofs/floating_point.md §3).  The error terms are
    constants, computed on raw arrays."""
    r = x.radius
    execution = fp.execution_dtype(getattr(parameter, "dtype", None), r.dtype)
    terms = fp.folded(n, r.dtype, execution)
    if terms is None:
        return _from_center_radius(center, abs_map(r))
    g, floor = terms
    xp = backends.current().xp
    spread = ad.constant(magnitude(x).value * g)
    offset = floor if abs_bias is None else ad.constant(xp.abs(abs_bias.value) * g + floor)
    radius = abs_map(r + spread) + offset
    may_overflow = radius.value >= fp.folded_limit(g, n, execution)  # an execution may overflow: no bound
    return _from_center_radius(center, ad.where(may_overflow, xp.full_like(radius.value, np.inf), radius))


def std_peak(std: Tensor) -> float:
    """(x − m) is formed before the division by s: its size is up to max(1, |s|) times the result's."""
    return max(1.0, float(np.max(np.abs(std.numpy()))))


def linear(x: Box, *, weight: Tensor, bias: Tensor | None) -> Box:
    """DiffAI Sec. 4.1 / IBP Eq. 6: c' = W c + b, r' = |W| r.  Sound: |W(x − c)| ≤ |W| |x − c| ≤ |W| r.
    Rounding: + fp's radius of (|W| M + |b|), n = fan-in + 1, folded into the product (``_affine``)."""
    abs_w = ad.abs(weight)
    return _affine(x, point.linear(x.center, weight=weight, bias=bias),
                   lambda r: point.linear(r, weight=abs_w, bias=None), bias, weight.shape[-1] + 1, weight)


def conv2d(x: Box, *, weight: Tensor, bias: Tensor | None, stride: int, padding: int) -> Box:
    """As ``linear`` for the convolution's matrix: c' = conv(c) + b, r' = conv_|K|(r) (proofs/box.md)."""
    abs_k = ad.abs(weight)
    fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
    bias_map = None if bias is None else ad.reshape(bias, shape=(-1, 1, 1))
    return _affine(x, point.conv2d(x.center, weight=weight, bias=bias, stride=stride, padding=padding),
                   lambda r: point.conv2d(r, weight=abs_k, bias=None, stride=stride, padding=padding),
                   bias_map, fan_in + 1, weight)


def normalize(x: Box, *, mean: Tensor, std: Tensor) -> Box:
    """(x − m)/s is affine with diagonal matrix 1/s: c' = (c − m)/s, r' = r/|s| (proofs/box.md);
    rounding: + fp.radius((M + |m|)/|s|)."""
    feature_ndim = x.lower.ndim - 1
    image = lambda m: point.normalize(m, mean=-ad.abs(mean), std=ad.abs(std), feature_ndim=feature_ndim)
    return _from_center_radius(point.normalize(x.center, mean=mean, std=std, feature_ndim=feature_ndim),
                               point.scale_by_std(x.radius, std=ad.abs(std), feature_ndim=feature_ndim),
                               _error(x, image, 2, mean, peak=std_peak(std)))


def batchnorm(x: Box, *, scale: Tensor, shift: Tensor) -> Box:
    """x·s + t per channel (``nn.BatchNorm`` in evaluation mode) is affine with diagonal matrix s:
    c' = c·s + t, r' = r·|s| (proofs/box.md); rounding: + fp.radius(|s| M + |t|), n = 2 (one product and
    the shift: a linear layer of fan-in 1)."""
    nd = x.lower.ndim - 1
    image = lambda m: point.batchnorm(m, scale=ad.abs(scale), shift=ad.abs(shift), feature_ndim=nd)
    return _from_center_radius(point.batchnorm(x.center, scale=scale, shift=shift, feature_ndim=nd),
                               point.scale_channels(x.radius, scale=ad.abs(scale), feature_ndim=nd),
                               _error(x, image, 2, scale))


def flatten(x: Box) -> Box:
    """A reshape moves no value: exact."""
    return Box(point.flatten(x.lower), point.flatten(x.upper))


def permute(x: Box, **params) -> Box:
    """A rearrangement of the features (``point.permute``) moves no value: exact."""
    return Box(point.permute(x.lower, **params), point.permute(x.upper, **params))


def avg_pool2d(x: Box, *, kernel_size: int, stride: int, padding: int = 0) -> Box:
    """Averaging has non-negative weights, so it is monotone: apply it to each bound (proofs/box.md);
    rounding: ∓ fp.radius(avg(M)), n = k² + 1."""
    pool = lambda t: point.avg_pool2d(t, kernel_size=kernel_size, stride=stride, padding=padding)
    error = _error(x, pool, kernel_size * kernel_size + 1, peak=kernel_size * kernel_size)
    return Box(fp.plus(pool(x.lower), None if error is None else -error), fp.plus(pool(x.upper), error))


def max_pool2d(x: Box, *, kernel_size: int, stride: int, padding: int = 0) -> Box:
    """Max is monotone in every argument: apply it to each bound (exact per output neuron, no rounding)."""
    return Box(point.max_pool2d(x.lower, kernel_size=kernel_size, stride=stride, padding=padding),
               point.max_pool2d(x.upper, kernel_size=kernel_size, stride=stride, padding=padding))


def relu(x: Box) -> Box:
    """DiffAI Sec. 4.1: ReLU is monotone, [relu(l), relu(u)] is its exact image per neuron (no rounding)."""
    return Box(ad.relu(x.lower), ad.relu(x.upper))


def sigmoid(x: Box) -> Box:
    """σ is increasing: [σ(l), σ(u)] is its exact image per neuron (proofs/box.md), taken from
    fp.enclose's outward enclosures (real σ and every execution's)."""
    return Box(fp.enclose("sigmoid", x.lower)[0], fp.enclose("sigmoid", x.upper)[1])


def tanh(x: Box) -> Box:
    """tanh is increasing: [tanh(l), tanh(u)] per neuron (proofs/box.md), from fp.enclose."""
    return Box(fp.enclose("tanh", x.lower)[0], fp.enclose("tanh", x.upper)[1])


def add(a: Box, b: Box, *, origin=None) -> Box:
    """Minkowski sum of the two branches' boxes: [la + lb, ua + ub] (the branches' correlation is lost);
    rounding: ∓ fp.radius(M_a + M_b)."""
    error = _error(a, lambda m: m + magnitude(b), 1)
    return Box(fp.plus(a.lower + b.lower, None if error is None else -error), fp.plus(a.upper + b.upper, error))


TRANSFORMERS = {
    "linear": linear, "conv2d": conv2d, "normalize": normalize, "batchnorm": batchnorm, "flatten": flatten, "permute": permute,
    "avg_pool2d": avg_pool2d, "max_pool2d": max_pool2d,
    "relu": relu, "sigmoid": sigmoid, "tanh": tanh, "add": add,
}

domains.register(NAME, TRANSFORMERS, from_bounds)
