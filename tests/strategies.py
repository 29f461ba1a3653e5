"""Hypothesis strategies shared by the property tests: random networks, input sets, sample points.

``networks()`` draws a small float64 network over the whole layer vocabulary (FC, conv, residual,
pools, normalisation, batch normalisation in evaluation mode, feature permutations, sigmoid/tanh)
together with its input shape.  ``input_boxes()`` draws a batch of
boxes (some coordinates degenerate, radius 0 included).  ``sample_points()`` returns corners, uniform
points and centres of those boxes.  ``assert_inside()`` is the soundness check every domain test uses.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from refcert import nn
from refcert.autodiff import Tensor

ACTIVATIONS = ("relu", "relu", "sigmoid", "tanh")  # ReLU twice as often


def _activation(name):
    return {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[name]()


def batchnorm_layer(rng, channels, dtype="float64"):
    """An ``nn.BatchNorm`` in evaluation mode with random statistics: γ of either sign, some of it tiny
    (1e-3 times), β and the running mean in [−1, 1], the running variance in [0.05, 3]."""
    layer = nn.BatchNorm(channels, dtype=dtype)
    gamma = rng.uniform(0.2, 2.0, channels) * rng.choice([1.0, -1.0], channels) \
        * np.where(rng.uniform(size=channels) < 0.2, 1e-3, 1.0)
    for key, value in (("weight", gamma), ("bias", rng.uniform(-1, 1, channels)),
                       ("running_mean", rng.uniform(-1, 1, channels)),
                       ("running_var", rng.uniform(0.05, 3.0, channels))):
        layer.params[key] = Tensor(np.asarray(value, dtype=dtype), requires_grad=True)  # backend arrays
    return layer


@st.composite
def networks(draw, image=None, max_depth=4, activations=ACTIVATIONS, residual=True, pools=True,
             max_outputs=4, batchnorm=True):
    """(net, input_shape without batch): a random float64 network with PyTorch-style random weights.

    With ``batchnorm``, each convolution and each hidden linear layer is followed by a ``BatchNorm``
    (evaluation mode, ``batchnorm_layer``) with probability 1/3; its constants come from a generator of
    their own, so the other layers' weights are the ones the same seed gives without batch norm."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng, bn_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])

    def maybe_batchnorm(channels):
        if batchnorm and draw(st.integers(0, 2)) == 0:
            layers.append(batchnorm_layer(bn_rng, channels))

    scale = draw(st.sampled_from([0.5, 1.0, 2.0]))
    kw = {"rng": rng, "dtype": "float64"}
    layers = []
    image = draw(st.booleans()) if image is None else image
    if image:
        channels, size = draw(st.integers(1, 2)), draw(st.integers(4, 7))
        shape = input_shape = (channels, size, size)
        if draw(st.booleans()):
            layers.append(nn.Normalize(mean=rng.uniform(-0.5, 0.5, channels), std=rng.uniform(0.5, 2.0, channels),
                                       dtype="float64"))
        for _ in range(draw(st.integers(1, max_depth))):
            kind = draw(st.sampled_from(["conv", "act", "permute"] + (["pool"] if pools else [])
                                        + (["residual"] if residual else [])))
            c, h = shape[0], shape[1]
            if kind == "conv":
                k, s, p = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(0, 1))
                if (h + 2 * p - k) // s + 1 < 1:
                    continue
                out = draw(st.integers(1, 3))
                layers.append(nn.Conv2d(c, out, k, s, p, **kw))
                maybe_batchnorm(out)
                h = (h + 2 * p - k) // s + 1
                shape = (out, h, h)
            elif kind == "act":
                layers.append(_activation(draw(st.sampled_from(activations))))
            elif kind == "permute":  # a random rearrangement of the features, same shape
                layers.append(nn.Permute(rng.permutation(int(np.prod(shape))), shape, shape))
            elif kind == "pool" and h >= 2:
                k, s = 2, draw(st.integers(1, 2))
                layers.append(draw(st.sampled_from([nn.AvgPool2d, nn.MaxPool2d]))(k, s))
                h = (h - k) // s + 1
                shape = (c, h, h)
            elif kind == "residual":
                block = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, **kw), _activation(draw(st.sampled_from(activations))))
                shortcut = nn.Conv2d(c, c, 1, **kw) if draw(st.booleans()) else None
                layers.append(nn.Residual(block, shortcut))
        layers.append(nn.Flatten())
        width = int(np.prod(shape))
    else:
        width = draw(st.integers(1, 6))
        input_shape = (width,)
    for _ in range(draw(st.integers(0 if image else 1, max_depth))):
        kind = draw(st.sampled_from(["linear", "act", "permute"] + (["residual"] if residual else [])))
        if kind == "permute":
            layers.append(nn.Permute(rng.permutation(width), (width,), (width,)))
        elif kind == "linear":
            out = draw(st.integers(1, 6))
            layers.append(nn.Linear(width, out, **kw))
            maybe_batchnorm(out)
            width = out
        elif kind == "act":
            layers.append(_activation(draw(st.sampled_from(activations))))
        else:
            layers.append(nn.Residual(nn.Sequential(nn.Linear(width, width, **kw),
                                                    _activation(draw(st.sampled_from(activations))))))
    layers.append(nn.Linear(width, draw(st.integers(1, max_outputs)), **kw))
    statistics = {id(layer.params[key]) for layer in layers if getattr(layer, "op", None) == "batchnorm"
                  for key in ("running_mean", "running_var")}
    for p in nn.Sequential(*layers).parameters():
        if id(p) not in statistics:   # weights (γ, β included) scaled; running statistics kept
            p.value = p.value * scale
    return nn.Sequential(*layers), input_shape


@st.composite
def input_boxes(draw, shape, max_batch=2):
    """(lower, upper) float64 arrays (batch, *shape); radii mix 0, small and large values."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch = draw(st.integers(1, max_batch))
    center = rng.uniform(-1.0, 1.0, (batch,) + tuple(shape))
    eps = draw(st.sampled_from([0.0, 1e-3, 0.05, 0.3, 1.0]))
    radius = eps * rng.uniform(0.0, 1.0, center.shape)
    radius[rng.uniform(size=center.shape) < draw(st.sampled_from([0.0, 0.3]))] = 0.0  # degenerate coordinates
    return center - radius, center + radius


def sample_points(lower, upper, rng, count=64):
    """Points of each box: the centre, random corners and uniform points, (count, batch, *shape)."""
    lower, upper = np.asarray(lower), np.asarray(upper)
    corners = np.where(rng.integers(0, 2, (count // 2,) + lower.shape).astype(bool), upper, lower)
    uniform = lower + (upper - lower) * rng.uniform(size=(count - count // 2 - 1,) + lower.shape)
    return np.concatenate([((lower + upper) / 2)[None], corners, uniform], axis=0)


def assert_inside(values, lower, upper, rtol=1e-9, atol=1e-9, what="output"):
    """Every value (count, batch, *shape) lies in [lower, upper] up to rounding; fail with the worst gap."""
    values, lower, upper = np.asarray(values), np.asarray(lower), np.asarray(upper)
    slack = atol + rtol * np.maximum(np.abs(lower), np.abs(upper))
    below = np.max(lower - slack - values)
    above = np.max(values - upper - slack)
    assert below <= 0 and above <= 0, (
        f"{what} escapes the abstract bounds: by {max(below, above):.3g} "
        f"(below lower: {below:.3g}, above upper: {above:.3g})")
