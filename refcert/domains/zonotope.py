"""The zonotope family: DeepZono and DiffAI's zonotope and hybrid-zonotope variants, one element type.

A hybrid zonotope (Mirman, Gehr, Vechev, "Differentiable abstract interpretation for provably robust
neural networks", ICML'18, Sec. 4.2) is the set

    x = c + Eᵀε + β ⊙ η,   ε ∈ [-1, 1]^k (shared noise symbols),  η ∈ [-1, 1]^n (one private symbol each),

stored batched as ``center`` (batch, *shape), ``generators`` (batch, k, *shape) and ``box_radius``
(batch, *shape) ≥ 0.  Pure zonotopes (AI2, S&P'18; DeepZ, NeurIPS'18) keep β = 0: every new error term
becomes a new row of E.  The "h" variants put new error terms into β instead.  Affine maps act exactly
on c and E and by |W| on β (this file); activations and max pooling are in ``zonotope_relu.py``.
Variants are tables that differ in their "relu" row.  Floating point: every transformer adds
``refcert.fp``'s rounding-error radius to β (for every variant: a pure zonotope then has a box term too),
and ``bounds()`` rounds outward (proofs/floating_point.md §3).  Proofs: proofs/zonotope.md,
proofs/relu_zonotope.md, proofs/sigmoid_tanh_zonotope.md, proofs/maxpool.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial

import numpy as np

from refcert import autodiff as ad
from refcert import backends, domains, fp
from refcert.autodiff import Tensor
from refcert.domains import point
from refcert.domains import zonotope_relu as nonlinear
from refcert.domains.box import check_bounds, std_peak


@dataclass(frozen=True)
class Zonotope:
    """c + Eᵀε + β⊙η: center (batch, *shape), generators (batch, k, *shape), box_radius (batch, *shape)."""
    center: Tensor
    generators: Tensor
    box_radius: Tensor
    domain: str
    hint: Tensor | None = None   # a known bound M ≥ |x| on the set (saves a pass over E; see ``magnitude``)

    @property
    def shape(self) -> tuple:
        return self.center.shape

    @property
    def radius(self) -> Tensor:
        """Σ_k |E_k| + β, (batch, *shape): the largest deviation from the center per neuron."""
        return ad.sum(ad.abs(self.generators), axis=1) + self.box_radius

    def bounds(self):
        """(c − r, c + r): exact per-neuron bounds of the set (each ε_k, η_i set to ±sign); in floats the
        sum r is bounded from above and c ∓ r rounded outward (``fp``)."""
        r = fp.sum_up(self.radius, self.generators.shape[1] + 1)
        return fp.widen(self.center - r, self.center + r)

    def magnitude(self) -> Tensor:
        """M ≥ |x| for every x of the set: the ``hint`` when a transformer left one, else max(|l|, |u|) of
        ``bounds()``, computed the same way on raw arrays (a constant)."""
        if self.hint is not None:
            return self.hint
        xp = backends.current().xp
        k = self.generators.shape[1]
        r = xp.sum(xp.abs(self.generators.value), axis=1) + self.box_radius.value
        r = r * (1.0 + 2.0 * fp.gamma(k + 2, r.dtype))
        inf = xp.full_like(r, np.inf)
        r = xp.nextafter(r, inf)
        c = self.center.value
        return ad.constant(xp.maximum(xp.abs(xp.nextafter(c - r, -inf)), xp.abs(xp.nextafter(c + r, inf))))


def from_bounds(lower, upper, *, domain: str) -> Zonotope:
    """The box [lower, upper] as a zonotope with one generator per input coordinate (E = diag(r)),
    as DiffAI's HBox.box does, so input correlations are kept by every variant; β = 0."""
    lower, upper = ad.as_tensor(lower), ad.as_tensor(upper)
    check_bounds(lower, upper, domain)
    xp = backends.current().xp
    batch, shape = lower.shape[0], lower.shape[1:]
    n = 1
    for size in shape:
        n *= size
    c, r = fp.mid_rad(lower, upper)
    eye = xp.reshape(xp.eye(n, dtype=r.dtype), (1, n) + tuple(shape))
    E = ad.reshape(r, shape=(batch, 1) + tuple(shape)) * eye
    hint = Tensor(xp.maximum(xp.abs(lower.value), xp.abs(upper.value)))  # the box itself: exact
    return Zonotope(c, E, r * 0.0, domain, hint)


def _with(z: Zonotope, center: Tensor, generators: Tensor, box_radius: Tensor, error=None) -> Zonotope:
    """The zonotope (c, E, β + error): ``error`` the rounding-error radius (None: not sound)."""
    return Zonotope(center, generators, fp.plus(box_radius, error), z.domain)


def _error(z: Zonotope, image, n: int, parameter=None, others=(), peak: float = 1.0):
    """fp's error radius of an affine layer: image(M) = |A| M + |b|, M = z's magnitude (+ those of
    ``others``, the other branch of a residual merge); n bounds the terms of every sum."""
    if not fp.policy().sound:
        return None
    with ad.no_grad():
        magnitude = z.magnitude()
        for other in others:
            magnitude = magnitude + other.magnitude()
        count = z.generators.shape[1] + sum(o.generators.shape[1] for o in others) + 1
        execution = fp.execution_dtype(getattr(parameter, "dtype", None), z.center.dtype)
        return fp.radius(image(magnitude), n, execution=execution, count=count, peak=peak)


def _abs_or_none(t):
    return None if t is None else ad.abs(t)


def linear(z: Zonotope, *, weight: Tensor, bias: Tensor | None) -> Zonotope:
    """DeepZ (NeurIPS'18, Sec. 3, affine transformer) / DiffAI Sec. 4.2: c' = Wc + b, E' = EWᵀ exactly,
    β' = |W|β (the private symbols are independent, so |W| is the tightest sound map).
    Rounding: β' + fp.radius(|W| M + |b|).  proofs/zonotope.md §1, proofs/floating_point.md §3."""
    abs_w = ad.abs(weight)
    image = lambda m: point.linear(m, weight=abs_w, bias=_abs_or_none(bias))
    return _with(z, point.linear(z.center, weight=weight, bias=bias),
                 point.linear(z.generators, weight=weight, bias=None),
                 point.linear(z.box_radius, weight=abs_w, bias=None),
                 _error(z, image, weight.shape[-1] + 1, weight))


def conv2d(z: Zonotope, *, weight: Tensor, bias: Tensor | None, stride: int, padding: int) -> Zonotope:
    """A convolution is a linear map: as ``linear`` with the kernel K on c and E and |K| on β."""
    abs_k = ad.abs(weight)
    image = lambda m: point.conv2d(m, weight=abs_k, bias=_abs_or_none(bias), stride=stride, padding=padding)
    fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
    return _with(z, point.conv2d(z.center, weight=weight, bias=bias, stride=stride, padding=padding),
                 point.conv2d(z.generators, weight=weight, bias=None, stride=stride, padding=padding),
                 point.conv2d(z.box_radius, weight=abs_k, bias=None, stride=stride, padding=padding),
                 _error(z, image, fan_in + 1, weight))


def normalize(z: Zonotope, *, mean: Tensor, std: Tensor) -> Zonotope:
    """(x − m)/s per channel: c' = (c − m)/s, E' = E/s, β' = β/|s| (proofs/zonotope.md §1);
    rounding: + fp.radius((M + |m|)/|s|)."""
    nd = z.center.ndim - 1
    image = lambda m: point.normalize(m, mean=-ad.abs(mean), std=ad.abs(std), feature_ndim=nd)
    return _with(z, point.normalize(z.center, mean=mean, std=std, feature_ndim=nd),
                 point.scale_by_std(z.generators, std=std, feature_ndim=nd),
                 point.scale_by_std(z.box_radius, std=ad.abs(std), feature_ndim=nd),
                 _error(z, image, 2, mean, peak=std_peak(std)))


def batchnorm(z: Zonotope, *, scale: Tensor, shift: Tensor) -> Zonotope:
    """x·s + t per channel (``nn.BatchNorm`` in evaluation mode): c' = c·s + t, E' = E·s, β' = β·|s|
    (proofs/zonotope.md §1); rounding: + fp.radius(|s| M + |t|), n = 2."""
    nd = z.center.ndim - 1
    image = lambda m: point.batchnorm(m, scale=ad.abs(scale), shift=ad.abs(shift), feature_ndim=nd)
    return _with(z, point.batchnorm(z.center, scale=scale, shift=shift, feature_ndim=nd),
                 point.scale_channels(z.generators, scale=scale, feature_ndim=nd),
                 point.scale_channels(z.box_radius, scale=ad.abs(scale), feature_ndim=nd),
                 _error(z, image, 2, scale))


def flatten(z: Zonotope) -> Zonotope:
    """A reshape of every component: exact (the magnitude hint is reshaped too)."""
    nd = z.center.ndim - 1
    flat = _with(z, point.flatten(z.center, feature_ndim=nd), point.flatten(z.generators, feature_ndim=nd),
                 point.flatten(z.box_radius, feature_ndim=nd))
    return flat if z.hint is None else dataclasses.replace(flat, hint=point.flatten(z.hint, feature_ndim=nd))


def permute(z: Zonotope, **params) -> Zonotope:
    """A rearrangement of every component's features (``point.permute``): exact (the magnitude hint moves too)."""
    move = lambda t: point.permute(t, **params)
    moved = _with(z, move(z.center), move(z.generators), move(z.box_radius))
    return moved if z.hint is None else dataclasses.replace(moved, hint=move(z.hint))


def avg_pool2d(z: Zonotope, *, kernel_size: int, stride: int, padding: int = 0) -> Zonotope:
    """Average pooling is linear with non-negative weights (|W| = W): apply it to c, E and β;
    rounding: + fp.radius(avg(M)), n = k² + 1."""
    pool = partial(point.avg_pool2d, kernel_size=kernel_size, stride=stride, padding=padding)
    return _with(z, pool(z.center), pool(z.generators), pool(z.box_radius),
                 _error(z, pool, kernel_size * kernel_size + 1, peak=kernel_size * kernel_size))


def add(a: Zonotope, b: Zonotope, *, origin=None) -> Zonotope:
    """Residual merge a + b (DiffAI Sec. 4.2, sum of hybrid zonotopes; proofs/zonotope.md §2).

    The first k0 rows (k0 = the generator count of ``origin``, the branch point) are the same noise
    symbols in both branches and are added; the rows each branch appended afterwards are different
    symbols, so they are concatenated, never added.  β adds (private symbols: |β_a η + β_b η'| ≤ β_a + β_b).
    Rounding: + fp.radius(M_a + M_b).
    """
    if not isinstance(origin, Zonotope):
        raise ValueError(f"{a.domain}: add needs origin= (the zonotope at the branch point) to know which "
                         f"noise symbols the branches share; got {type(origin).__name__}")
    k0, ka, kb = origin.generators.shape[1], a.generators.shape[1], b.generators.shape[1]
    if ka < k0 or kb < k0 or a.shape != b.shape:
        raise ValueError(f"{a.domain}: add got branches with shapes {a.shape}/{b.shape} and {ka}/{kb} "
                         f"generators, but the branch point has {k0}")
    parts = [a.generators[:, :k0] + b.generators[:, :k0]]
    parts += [g[:, k0:] for g, k in ((a.generators, ka), (b.generators, kb)) if k > k0]
    E = parts[0] if len(parts) == 1 else ad.concatenate(parts, axis=1)
    return _with(a, a.center + b.center, E, a.box_radius + b.box_radius, _error(a, lambda m: m, 1, others=(b,)))


#: DeepZono (DeepZ, NeurIPS'18): the pure zonotope with the minimal-area ReLU relaxation
ZONOTOPE = {
    "linear": linear, "conv2d": conv2d, "normalize": normalize, "batchnorm": batchnorm, "flatten": flatten, "permute": permute,
    "avg_pool2d": avg_pool2d, "max_pool2d": nonlinear.max_pool2d,
    "relu": nonlinear.relu_deepzono, "sigmoid": nonlinear.sigmoid, "tanh": nonlinear.tanh, "add": add,
}
ZBOX = {**ZONOTOPE, "relu": nonlinear.relu_box}
ZDIAG = {**ZONOTOPE, "relu": nonlinear.relu_diag}
ZSWITCH = {**ZONOTOPE, "relu": nonlinear.relu_switch}
ZSMOOTH = {**ZONOTOPE, "relu": nonlinear.relu_smooth}

#: hybrid zonotopes: every new error term goes to the box term β
HYBRID = {**ZONOTOPE, "max_pool2d": nonlinear.max_pool2d_hybrid,
          "sigmoid": nonlinear.sigmoid_hybrid, "tanh": nonlinear.tanh_hybrid}
HBOX = {**HYBRID, "relu": nonlinear.relu_box_hybrid}
HDIAG = {**HYBRID, "relu": nonlinear.relu_diag_hybrid}
HSWITCH = {**HYBRID, "relu": nonlinear.relu_switch_hybrid}
HSMOOTH = {**HYBRID, "relu": nonlinear.relu_smooth_hybrid}

TABLES = {"deepzono": ZONOTOPE, "zbox": ZBOX, "zdiag": ZDIAG, "zswitch": ZSWITCH, "zsmooth": ZSMOOTH,
          "hbox": HBOX, "hdiag": HDIAG, "hswitch": HSWITCH, "hsmooth": HSMOOTH}

for _name, _table in TABLES.items():
    domains.register(_name, _table, partial(from_bounds, domain=_name))
