"""The soundness property, table-driven over every registered domain (DESIGN.md, "Style" 4).

For a random network (FC, conv, residual, pools, normalisation, sigmoid/tanh) and a random input box,
every concrete point of the box pushed through the network must lie inside the bounds of the abstract
element the domain computes.  The same check runs per single layer, and a planted bug (DeepZono with
its new error term halved) must be caught by it, so the check is known to be able to fail.
Domains whose ``from_bounds`` cannot build a set from a wide box (ExactLine: segments only) are skipped.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from refcert import autodiff as ad
from refcert import domains, nn
from refcert.autodiff import Tensor
from refcert.domains import relaxations, zonotope_relu
from tests.strategies import batchnorm_layer, assert_inside, input_boxes, networks, sample_points


def _buildable(name: str) -> bool:
    """Whether the domain builds an element from a wide box (ExactLine holds segments only)."""
    try:
        domains.get(name).from_bounds(np.zeros((1, 2)), np.ones((1, 2)))
    except (ValueError, TypeError, NotImplementedError):
        return False
    return True


ALL = [name for name in domains.names() if name != "point"]
SET_DOMAINS = [pytest.param(name, marks=[] if _buildable(name) else
                            pytest.mark.skip(reason=f"{name}.from_bounds cannot build a set from a box"))
               for name in ALL]
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outputs_escape(net, lower, upper, domain, seed=0):
    """The property: push ``domain.from_bounds(lower, upper)`` and sample points through ``net``;
    return the worst amount by which a point leaves the element's bounds (≤ 0 means sound)."""
    lo, hi = net(domain.from_bounds(lower, upper)).bounds()
    lo, hi = lo.numpy(), hi.numpy()
    values = np.stack([net(Tensor(p)).numpy() for p in sample_points(lower, upper, np.random.default_rng(seed))])
    slack = 1e-9 + 1e-9 * np.maximum(np.abs(lo), np.abs(hi))
    return max(float(np.max(lo - slack - values)), float(np.max(values - hi - slack)))


def _check(net, lower, upper, name, what):
    element = net(domains.get(name).from_bounds(lower, upper))
    assert element.domain == name, f"{name}: the output element claims domain {element.domain!r}"
    lo, hi = element.bounds()
    assert lo.shape == hi.shape == net(Tensor(lower)).shape, f"{name}: bounds have the wrong shape"
    assert np.all(lo.numpy() <= hi.numpy() + 1e-12), f"{name}: lower bound above upper bound"
    values = np.stack([net(Tensor(p)).numpy() for p in sample_points(lower, upper, np.random.default_rng(0))])
    assert_inside(values, lo.numpy(), hi.numpy(), what=f"{name}: {what}")


@pytest.mark.parametrize("name", SET_DOMAINS)
@FEW
@given(st.data())
def test_network_outputs_lie_inside_bounds(name, data):
    net, shape = data.draw(networks(), label="network")
    lower, upper = data.draw(input_boxes(shape), label="input box")
    _check(net, lower, upper, name, f"network output ({net})")


# --- one layer at a time ---------------------------------------------------------------------------
@st.composite
def single_layers(draw):
    """(net, input shape): an optional mixing layer (so set elements are correlated) and one op."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kw = {"rng": rng, "dtype": "float64"}
    op = draw(st.sampled_from(domains.OPS))
    scale = draw(st.sampled_from([1.0, 5.0, 20.0]))  # large pre-activations saturate sigmoid/tanh
    activation = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}.get(op)
    if op == "linear" or (activation is not None and draw(st.booleans())):
        width = draw(st.integers(1, 5))
        mix = nn.Linear(width, width, **kw)
        layer = nn.Linear(width, draw(st.integers(1, 4)), **kw) if op == "linear" else activation()
        shape = (width,)
    else:
        channels, size = draw(st.integers(1, 2)), draw(st.integers(2, 5))
        mix = nn.Conv2d(channels, channels, 3, 1, 1, **kw)
        shape = (channels, size, size)
        if op == "conv2d":
            layer = nn.Conv2d(channels, draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2)),
                              draw(st.integers(0, 1)), **kw)
        elif op == "normalize":
            layer = nn.Normalize(mean=rng.uniform(-1, 1, channels), std=rng.uniform(0.2, 2.0, channels),
                                 dtype="float64")
        elif op == "batchnorm":  # evaluation mode: scale of either sign, running statistics as constants
            layer = batchnorm_layer(rng, channels)
        elif op in ("avg_pool2d", "max_pool2d"):
            kernel = draw(st.integers(1, 2))
            pool = nn.AvgPool2d if op == "avg_pool2d" else nn.MaxPool2d
            layer = pool(kernel, draw(st.integers(1, 2)), draw(st.integers(0, kernel // 2)))
        elif op == "permute":  # any rearrangement, into the same, a transposed or a flat shape
            n = channels * size * size
            layer = nn.Permute(rng.permutation(n), draw(st.sampled_from([shape, (size, size, channels), (n,)])), shape)
        elif op == "add":
            layer = nn.Residual(nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, **kw), nn.ReLU()),
                                nn.Conv2d(channels, channels, 1, **kw) if draw(st.booleans()) else None)
        else:
            layer = nn.Flatten() if op == "flatten" else activation()
    layers = ([mix] if draw(st.booleans()) else []) + [layer]
    net = nn.Sequential(*layers)
    for p in net.parameters():
        p.value = p.value * scale
    return net, shape


@pytest.mark.parametrize("name", SET_DOMAINS)
@FEW
@given(st.data())
def test_each_layer_is_sound(name, data):
    net, shape = data.draw(single_layers(), label="layer")
    lower, upper = data.draw(input_boxes(shape), label="input box")
    _check(net, lower, upper, name, f"layer output ({net})")


@pytest.mark.parametrize("name", domains.names())
def test_every_table_covers_the_vocabulary(name):
    table = domains.get(name).transformers
    missing = [op for op in domains.OPS if not callable(table.get(op))]
    assert not missing, f"domain {name!r} has no transformer for {missing}"


def test_the_zonotope_family_and_box_are_registered():
    expected = {"box", "deepzono", "zbox", "zdiag", "zswitch", "zsmooth", "hbox", "hdiag", "hswitch", "hsmooth"}
    assert expected <= set(domains.names())


# --- the property can fail: a planted bug is caught --------------------------------------------------
def _relu_deepzono_error_halved(z):
    """DeepZono whose new error term is half what it must be: unsound on crossing neurons."""
    l, u = z.bounds()
    lam, mu, nu = relaxations.relu_deepzono(l, u)
    return zonotope_relu.with_error(z, lam, mu, 0.5 * nu, hybrid=False)


def test_a_planted_unsound_relu_is_caught(monkeypatch):
    monkeypatch.setitem(domains.get("deepzono").transformers, "relu", _relu_deepzono_error_halved)
    examples = networks(image=False, activations=("relu",), residual=False).flatmap(
        lambda net_shape: st.tuples(st.just(net_shape[0]), input_boxes(net_shape[1])))
    net, (lower, upper) = find(examples, lambda ex: outputs_escape(ex[0], *ex[1], domains.get("deepzono")) > 1e-6,
                               settings=settings(max_examples=500, database=None, deadline=None))
    assert outputs_escape(net, lower, upper, domains.get("deepzono")) > 1e-6
    monkeypatch.undo()
    assert outputs_escape(net, lower, upper, domains.get("deepzono")) <= 0, "the real DeepZono is sound there"


def test_bounds_stay_differentiable_for_every_set_domain():
    """Certified training needs gradients: d(sum of upper bounds)/d(weight) exists and is finite."""
    for name in ALL:
        if not _buildable(name) or name.endswith("line"):
            continue
        net = nn.Sequential(nn.Linear(3, 4, rng=np.random.default_rng(1), dtype="float64"), nn.ReLU(),
                            nn.Linear(4, 2, rng=np.random.default_rng(2), dtype="float64"))
        x = np.random.default_rng(3).uniform(-1, 1, (2, 3))
        upper = net(domains.get(name).from_bounds(x - 0.5, x + 0.5)).bounds()[1]
        ad.sum(upper).backward()
        grad = net.layers[0].weight.grad
        assert grad is not None and np.all(np.isfinite(np.asarray(grad))), f"{name}: no finite weight gradient"


def _affine(w, b):
    layer = nn.Linear(1, 1, dtype="float64")
    layer.params.update(weight=Tensor([[float(w)]], requires_grad=True), bias=Tensor([float(b)], requires_grad=True))
    return layer


def _two_branch_net():
    """clamp(x, 0, 1) − x/4 = [relu(x) − relu(x − 1)] − x/4: both inner branches create new symbols."""
    clamp = nn.Residual(nn.ReLU(), nn.Sequential(_affine(1, -1), nn.ReLU(), _affine(-1, 0)))
    return nn.Sequential(nn.Residual(clamp, _affine(-0.25, 0)))


@pytest.mark.parametrize("name", SET_DOMAINS)
def test_branches_that_both_create_symbols(name):
    _check(_two_branch_net(), np.array([[-1.0]]), np.array([[3.0]]), name, "two-branch residual")


def _add_merging_new_rows(a, b, *, origin=None):
    """Planted bug: treats the rows both branches appended as the same noise symbols."""
    k = min(a.generators.shape[1], b.generators.shape[1])
    parts = [a.generators[:, :k] + b.generators[:, :k]] + [g[:, k:] for g in (a.generators, b.generators)
                                                          if g.shape[1] > k]
    return dataclasses.replace(a, center=a.center + b.center, generators=ad.concatenate(parts, axis=1),
                               box_radius=a.box_radius + b.box_radius)


def test_a_planted_unsound_add_is_caught(monkeypatch):
    """With x ∈ [−1, 3] the wrong merge claims the output at x = 1 lies in [0.25, 0.5]; it is 0.75."""
    net, lower, upper = _two_branch_net(), np.array([[-1.0]]), np.array([[3.0]])
    assert outputs_escape(net, lower, upper, domains.get("deepzono")) <= 0
    monkeypatch.setitem(domains.get("deepzono").transformers, "add", _add_merging_new_rows)
    assert outputs_escape(net, lower, upper, domains.get("deepzono")) > 0.1
