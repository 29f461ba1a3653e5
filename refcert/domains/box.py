"""The Box (interval) domain: a lower and an upper bound per neuron (IBP; DiffAI, ICML'18, Sec. 3).

Affine maps use the centre/radius form: for y = W x + b with x in [c − r, c + r], y lies in
[W c + b − |W| r, W c + b + |W| r], which is the exact interval image of the box (proofs/box.md).
Every other op in the vocabulary (normalize with std > 0, flatten, pooling, ReLU, sigmoid, tanh) is
monotone non-decreasing in each input, so it maps the two bounds.  Residual ``add`` adds bounds.
"""
from __future__ import annotations

from dataclasses import dataclass

from refcert import autodiff as ad
from refcert import domains
from refcert.autodiff import Tensor
from refcert.domains import point

NAME = "box"


@dataclass(frozen=True)
class Box:
    """All points x with lower <= x <= upper; Tensors (batch, *shape)."""
    lower: Tensor
    upper: Tensor
    domain: str = NAME

    def bounds(self):
        return self.lower, self.upper

    @property
    def shape(self):
        return self.lower.shape


def from_bounds(lower, upper) -> Box:
    lower, upper = ad.as_tensor(lower), ad.as_tensor(upper)
    if lower.shape != upper.shape:
        raise ValueError(f"lower and upper bounds differ in shape: {lower.shape} vs {upper.shape}")
    if bool((lower.numpy() > upper.numpy()).any()):
        raise ValueError("empty box: some lower bound exceeds its upper bound")
    return Box(lower, upper)


def _center_radius(x: Box):
    return (x.lower + x.upper) * 0.5, (x.upper - x.lower) * 0.5


def linear(x: Box, *, weight: Tensor, bias) -> Box:
    """Interval image of x ↦ W x + b: centre through the map, radius through |W| (proofs/box.md)."""
    c, r = _center_radius(x)
    c, r = point.linear(c, weight=weight, bias=bias), point.linear(r, weight=ad.abs(weight), bias=None)
    return Box(c - r, c + r)


def conv2d(x: Box, *, weight: Tensor, bias, stride: int, padding: int) -> Box:
    """Interval image of a convolution: centre through the kernel, radius through |kernel|."""
    c, r = _center_radius(x)
    c = point.conv2d(c, weight=weight, bias=bias, stride=stride, padding=padding)
    r = point.conv2d(r, weight=ad.abs(weight), bias=None, stride=stride, padding=padding)
    return Box(c - r, c + r)


def _monotone(fn):
    """Lift an op that is non-decreasing in every input: apply it to both bounds (proofs/box.md)."""
    def transformer(x: Box, **params) -> Box:
        return Box(fn(x.lower, **params), fn(x.upper, **params))
    transformer.__name__ = getattr(fn, "__name__", "monotone")
    transformer.__doc__ = f"Box transformer for the monotone op {transformer.__name__}: both bounds mapped."
    return transformer


def add(a: Box, b: Box, *, origin=None) -> Box:
    """Merge of a residual block: [l_a + l_b, u_a + u_b]."""
    return Box(a.lower + b.lower, a.upper + b.upper)


TRANSFORMERS = {
    "linear": linear, "conv2d": conv2d,
    "normalize": _monotone(point.normalize), "flatten": _monotone(point.flatten),
    "avg_pool2d": _monotone(point.avg_pool2d), "max_pool2d": _monotone(point.max_pool2d),
    "relu": _monotone(ad.relu), "sigmoid": _monotone(ad.sigmoid), "tanh": _monotone(ad.tanh),
    "add": add,
}

domains.register(NAME, TRANSFORMERS, from_bounds)
