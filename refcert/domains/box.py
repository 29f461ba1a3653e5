"""The Box (interval) domain: every neuron keeps a lower and an upper bound.

Interval arithmetic as used for certified training by DiffAI (Mirman, Gehr, Vechev, ICML'18, Sec. 4.1,
"Box") and by IBP (Gowal et al. 2018, Eq. 6): an affine map sends the center through the map and the
radius through its absolute value; monotone layers (ReLU, sigmoid, tanh, pooling) map the bounds.
The element is a batch of boxes ``Box(lower, upper)``, both Tensors (batch, *shape).  Every
transformer is written with autodiff ops, so the bounds are differentiable in the weights and in the
input bounds.  Proofs: proofs/box.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from refcert import autodiff as ad
from refcert import domains
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


def _from_center_radius(c: Tensor, r: Tensor) -> Box:
    return Box(c - r, c + r)


def linear(x: Box, *, weight: Tensor, bias: Tensor | None) -> Box:
    """DiffAI Sec. 4.1 / IBP Eq. 6: c' = W c + b, r' = |W| r.  Sound: |W(x − c)| ≤ |W| |x − c| ≤ |W| r."""
    return _from_center_radius(point.linear(x.center, weight=weight, bias=bias),
                               point.linear(x.radius, weight=ad.abs(weight), bias=None))


def conv2d(x: Box, *, weight: Tensor, bias: Tensor | None, stride: int, padding: int) -> Box:
    """As ``linear`` for the convolution's matrix: c' = conv(c) + b, r' = conv_|K|(r) (proofs/box.md)."""
    return _from_center_radius(point.conv2d(x.center, weight=weight, bias=bias, stride=stride, padding=padding),
                               point.conv2d(x.radius, weight=ad.abs(weight), bias=None, stride=stride,
                                            padding=padding))


def normalize(x: Box, *, mean: Tensor, std: Tensor) -> Box:
    """(x − m)/s is affine with diagonal matrix 1/s: c' = (c − m)/s, r' = r/|s| (proofs/box.md)."""
    feature_ndim = x.lower.ndim - 1
    return _from_center_radius(point.normalize(x.center, mean=mean, std=std, feature_ndim=feature_ndim),
                               point.scale_by_std(x.radius, std=ad.abs(std), feature_ndim=feature_ndim))


def flatten(x: Box) -> Box:
    """A reshape moves no value: exact."""
    return Box(point.flatten(x.lower), point.flatten(x.upper))


def avg_pool2d(x: Box, *, kernel_size: int, stride: int, padding: int = 0) -> Box:
    """Averaging has non-negative weights, so it is monotone: apply it to each bound (proofs/box.md)."""
    return Box(point.avg_pool2d(x.lower, kernel_size=kernel_size, stride=stride, padding=padding),
               point.avg_pool2d(x.upper, kernel_size=kernel_size, stride=stride, padding=padding))


def max_pool2d(x: Box, *, kernel_size: int, stride: int, padding: int = 0) -> Box:
    """Max is monotone in every argument: apply it to each bound (exact per output neuron)."""
    return Box(point.max_pool2d(x.lower, kernel_size=kernel_size, stride=stride, padding=padding),
               point.max_pool2d(x.upper, kernel_size=kernel_size, stride=stride, padding=padding))


def relu(x: Box) -> Box:
    """DiffAI Sec. 4.1: ReLU is monotone, [relu(l), relu(u)] is its exact image per neuron."""
    return Box(ad.relu(x.lower), ad.relu(x.upper))


def sigmoid(x: Box) -> Box:
    """σ is increasing: [σ(l), σ(u)] is its exact image per neuron (proofs/box.md)."""
    return Box(ad.sigmoid(x.lower), ad.sigmoid(x.upper))


def tanh(x: Box) -> Box:
    """tanh is increasing: [tanh(l), tanh(u)] is its exact image per neuron (proofs/box.md)."""
    return Box(ad.tanh(x.lower), ad.tanh(x.upper))


def add(a: Box, b: Box, *, origin=None) -> Box:
    """Minkowski sum of the two branches' boxes: [la + lb, ua + ub] (the branches' correlation is lost)."""
    return Box(a.lower + b.lower, a.upper + b.upper)


TRANSFORMERS = {
    "linear": linear, "conv2d": conv2d, "normalize": normalize, "flatten": flatten,
    "avg_pool2d": avg_pool2d, "max_pool2d": max_pool2d,
    "relu": relu, "sigmoid": sigmoid, "tanh": tanh, "add": add,
}

domains.register(NAME, TRANSFORMERS, from_bounds)
