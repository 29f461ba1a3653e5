"""Box: exactness of single layers, clear errors for bad input.  Soundness: tests/test_soundness.py."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refcert import domains, nn
from refcert.autodiff import Tensor
from tests.strategies import input_boxes

BOX = domains.get("box")
FEW = settings(max_examples=20, deadline=None)


def vertex_range(net, lower, upper):
    """Exact per-output range of an affine net over a small box: min/max over all 2^n vertices."""
    n = lower[0].size
    outs = []
    for corner in itertools.product([0, 1], repeat=n):
        pick = np.array(corner, dtype=bool).reshape(lower.shape[1:])
        outs.append(net(Tensor(np.where(pick, upper, lower))).numpy())
    outs = np.stack(outs)
    return outs.min(axis=0), outs.max(axis=0)


@FEW
@given(st.data())
def test_one_affine_layer_is_exact(data):
    """The |W| formula gives the exact interval image of one affine layer (proofs/box.md)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    kw = {"rng": rng, "dtype": "float64"}
    layer, shape = data.draw(st.sampled_from([
        (nn.Linear(4, 3, **kw), (4,)),
        (nn.Conv2d(1, 2, 2, 1, 1, **kw), (1, 3, 3)),
        (nn.Normalize(mean=[0.3], std=[0.7], dtype="float64"), (1, 2, 3)),
        (nn.AvgPool2d(2, 1), (1, 3, 3)),
    ]))
    net = nn.Sequential(layer)
    lower, upper = data.draw(input_boxes(shape))
    lo, hi = net(BOX.from_bounds(lower, upper)).bounds()
    exact_lo, exact_hi = vertex_range(net, lower, upper)
    np.testing.assert_allclose(lo.numpy(), exact_lo, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(hi.numpy(), exact_hi, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer, f", [(nn.ReLU(), lambda v: np.maximum(v, 0)),
                                      (nn.Sigmoid(), lambda v: 1 / (1 + np.exp(-v))), (nn.Tanh(), np.tanh)])
@pytest.mark.usefixtures("plain")
def test_monotone_activations_map_the_bounds(layer, f):
    lower, upper = np.array([[-2.0, -1.0, 0.0, 0.5]]), np.array([[-1.0, 3.0, 0.0, 4.0]])
    lo, hi = layer(BOX.from_bounds(lower, upper)).bounds()
    np.testing.assert_allclose(lo.numpy(), f(lower), rtol=1e-15)
    np.testing.assert_allclose(hi.numpy(), f(upper), rtol=1e-15)


def test_max_pool_and_residual():
    lower = np.arange(16.0).reshape(1, 1, 4, 4)
    upper = lower + 0.5
    lo, hi = nn.MaxPool2d(2, 2)(BOX.from_bounds(lower, upper)).bounds()
    np.testing.assert_allclose(lo.numpy(), [[[[5.0, 7.0], [13.0, 15.0]]]])
    np.testing.assert_allclose(hi.numpy(), [[[[5.5, 7.5], [13.5, 15.5]]]])
    lo, hi = nn.Residual(nn.ReLU())(BOX.from_bounds([[-1.0, 1.0]], [[2.0, 3.0]])).bounds()  # relu(x) + x
    np.testing.assert_allclose(lo.numpy(), [[-1.0, 2.0]])
    np.testing.assert_allclose(hi.numpy(), [[4.0, 6.0]])


@pytest.mark.usefixtures("plain")
def test_ibp_on_a_known_network():
    """Hand-computed: x ∈ [-1, 1]², h = relu([x1 + x2, x1 − x2]) ∈ [0, 2]², y = h1 − h2 ∈ [-2, 2]."""
    first, second = nn.Linear(2, 2, dtype="float64"), nn.Linear(2, 1, dtype="float64")
    first.params.update(weight=Tensor([[1.0, 1.0], [1.0, -1.0]]), bias=Tensor([0.0, 0.0]))
    second.params.update(weight=Tensor([[1.0, -1.0]]), bias=Tensor([0.0]))
    lo, hi = nn.Sequential(first, nn.ReLU(), second)(BOX.from_bounds([[-1.0, -1.0]], [[1.0, 1.0]])).bounds()
    assert (lo.item(), hi.item()) == (-2.0, 2.0)


@pytest.mark.parametrize("lower, upper, message", [
    (np.zeros((1, 2)), np.zeros((1, 3)), "differ in shape"),
    (np.ones((1, 2)), np.zeros((1, 2)), "lower exceeds upper"),
    (np.full((1, 2), np.nan), np.zeros((1, 2)), "NaN"),
    (np.float64(0.0), np.float64(1.0), "batch axis"),
])
def test_bad_bounds_are_refused_clearly(lower, upper, message):
    for name in ("box", "deepzono", "hbox"):
        with pytest.raises(ValueError, match=message):
            domains.get(name).from_bounds(lower, upper)


def test_linf_ball_is_clipped():
    lo, hi = BOX.linf_ball(np.array([[0.05, 0.5, 0.98]]), eps=0.1).bounds()
    np.testing.assert_allclose(lo.numpy(), [[0.0, 0.4, 0.88]])
    np.testing.assert_allclose(hi.numpy(), [[0.15, 0.6, 1.0]])
