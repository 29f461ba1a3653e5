"""DeepPoly and CROWN-IBP: exactness where the answer is known, closed forms, ERAN's tie rule, precision
against Box, soundness on random networks, and gradients of the bounds (proofs/deeppoly.md,
proofs/crown_ibp.md)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refcert import autodiff as ad
from refcert import domains, nn, spec
from refcert.autodiff import Tensor
from refcert.domains import backsub, deeppoly
from tests.strategies import assert_inside, input_boxes, networks, sample_points

BOTH = ["deeppoly", "crown-ibp"]
FEW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # examples: the profile (conftest)


def _bounds(net, lower, upper, name):
    lo, hi = net(domains.get(name).from_bounds(lower, upper)).bounds()
    return lo.numpy(), hi.numpy()


def _affine_range(net, lower, upper):
    """Exact range of an affine net over a box: A c + b ± |A| r, with A read off by evaluating the net."""
    batch, shape = lower.shape[0], lower.shape[1:]
    n = int(np.prod(shape))
    b = net(Tensor(np.zeros((1,) + shape))).numpy().reshape(-1)
    A = net(Tensor(np.eye(n).reshape((n,) + shape))).numpy().reshape(n, -1).T - b[:, None]   # (out, n)
    c, r = ((lower + upper) / 2).reshape(batch, n), ((upper - lower) / 2).reshape(batch, n)
    return c @ A.T + b - r @ np.abs(A).T, c @ A.T + b + r @ np.abs(A).T


@st.composite
def affine_networks(draw):
    """Networks of affine layers only (conv, avg pool, normalize, flatten, linear, affine residuals)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kw = {"rng": rng, "dtype": "float64"}
    c, h = draw(st.integers(1, 2)), draw(st.integers(5, 7))
    layers = [nn.Normalize(mean=rng.uniform(-0.5, 0.5, c), std=rng.uniform(0.5, 2.0, c), dtype="float64"),
              nn.Conv2d(c, 2, 3, draw(st.integers(1, 2)), 1, **kw)]
    shortcut = nn.Conv2d(2, 2, 1, **kw) if draw(st.booleans()) else None
    layers.append(nn.Residual(nn.Conv2d(2, 2, 3, 1, 1, **kw), shortcut))
    layers += [nn.AvgPool2d(2, 1), nn.Flatten()]
    width = int(np.prod(nn.Sequential(*layers)(Tensor(np.zeros((1, c, h, h)))).shape[1:]))
    layers += [nn.Linear(width, 4, **kw), nn.Residual(nn.Linear(4, 4, **kw)), nn.Linear(4, 3, **kw)]
    return nn.Sequential(*layers), (c, h, h)


@pytest.mark.parametrize("name", BOTH)
@FEW
@given(st.data())
def test_affine_networks_give_the_exact_range(name, data):
    net, shape = data.draw(affine_networks(), label="affine net")
    lower, upper = data.draw(input_boxes(shape), label="input box")
    lo, hi = _bounds(net, lower, upper, name)
    exact_lo, exact_hi = _affine_range(net, lower, upper)
    np.testing.assert_allclose(lo, exact_lo, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(hi, exact_hi, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", BOTH)
def test_stable_relus_are_exact(name):
    """Half the hidden neurons always active, half always dead on the box: the net is affine there."""
    rng = np.random.default_rng(1)
    first, second = nn.Linear(5, 6, rng=rng, dtype="float64"), nn.Linear(6, 3, rng=rng, dtype="float64")
    W = first.weight.numpy()
    first.bias.value = np.where(np.arange(6) % 2 == 0, 1.0, -1.0) * (np.abs(W).sum(axis=1) * 2.0 + 0.5)
    net = nn.Sequential(first, nn.ReLU(), second)
    lower = rng.uniform(-1, 0, (2, 5))
    upper = lower + rng.uniform(0, 1, (2, 5))
    lo, hi = _bounds(net, lower, upper, name)
    exact_lo, exact_hi = _affine_range(net, lower, upper)  # relu is the fixed mask on the whole box
    np.testing.assert_allclose(lo, exact_lo, atol=1e-12)
    np.testing.assert_allclose(hi, exact_hi, atol=1e-12)


def _relu_minus(c: float):
    """y = relu(x) − c·x on one input, as a residual block (exercises the residual back-substitution)."""
    shortcut = nn.Linear(1, 1, dtype="float64")
    shortcut.weight.value, shortcut.bias.value = np.array([[-c]]), np.array([0.0])
    return nn.Sequential(nn.Residual(nn.ReLU(), shortcut))


@pytest.mark.parametrize("name", BOTH)
@pytest.mark.parametrize("l, u", [(-1.0, 3.0), (-2.0, 0.5), (-0.3, 0.3), (-1.0, 1.0), (-1.0, 0.999)])
@pytest.mark.usefixtures("plain")
def test_one_crossing_neuron_has_the_closed_form_bounds(name, l, u):
    """relu(x) − c x on [l, u] back-substitutes to (α − c) x below and u(x − l)/(u − l) − c x above,
    α = 1 iff u ≥ −l (ERAN's tie rule: l = −1, u = 1 takes α = 1); then intersected with Box."""
    c = 0.75
    alpha = 1.0 if u >= -l else 0.0
    closed_lo = min((alpha - c) * l, (alpha - c) * u)
    closed_hi = max(u - c * u, -c * l)  # the chord minus c x is linear: its max is at an end point
    box_lo, box_hi = 0.0 - c * u, u - c * l
    lo, hi = _bounds(_relu_minus(c), np.array([[l]]), np.array([[u]]), name)
    assert lo[0, 0] == pytest.approx(max(closed_lo, box_lo), abs=1e-14)
    assert hi[0, 0] == pytest.approx(min(closed_hi, box_hi), abs=1e-14)


@pytest.mark.usefixtures("plain")
def test_eran_tie_rule_is_observable():
    """At u = −l DeepPoly takes α = 1; with c = 0.75 on [−1, 1] that gives −0.25 (α = 0 would give −0.75)."""
    lo, _ = _bounds(_relu_minus(0.75), np.array([[-1.0]]), np.array([[1.0]]), "deeppoly")
    assert lo[0, 0] == pytest.approx(-0.25, abs=1e-14)
    step = deeppoly.relu_lines(Tensor(np.array([-1.0, -1.0, -1.0])), Tensor(np.array([1.0, 0.999, 1.001])))
    np.testing.assert_array_equal(step.lower_slope.numpy(), [1.0, 0.0, 1.0])


@pytest.mark.parametrize("lines, f", [(deeppoly.sigmoid_lines, lambda x: 1 / (1 + np.exp(-x))),
                                      (deeppoly.tanh_lines, np.tanh),
                                      (deeppoly.relu_lines, lambda x: np.maximum(x, 0))])
def test_activation_lines_enclose_the_function(lines, f):
    rng = np.random.default_rng(2)
    l = np.concatenate([rng.uniform(-6, 6, 300), [0.0, -1.0, 2.0, -3.0]])
    u = np.concatenate([l[:300] + rng.exponential(2.0, 300), [0.0, -1.0, 2.5, 0.0]])
    step = lines(Tensor(l), Tensor(u))
    x = l + (u - l) * np.linspace(0, 1, 201)[:, None]
    low = step.lower_slope.numpy() * x + step.lower_offset.numpy()
    high = step.upper_slope.numpy() * x + step.upper_offset.numpy()
    assert np.all(low <= f(x) + 1e-12) and np.all(f(x) <= high + 1e-12)


ACTS = st.sampled_from([("relu",), ("relu", "sigmoid", "tanh")])


@pytest.mark.parametrize("name", BOTH)
@FEW
@given(st.data())
def test_sound_on_random_networks(name, data):
    net, shape = data.draw(networks(activations=data.draw(ACTS)), label="network")
    lower, upper = data.draw(input_boxes(shape), label="input box")
    lo, hi = _bounds(net, lower, upper, name)
    values = np.stack([net(Tensor(p)).numpy() for p in sample_points(lower, upper, np.random.default_rng(0))])
    assert_inside(values, lo, hi, what=f"{name} on {net}")


@pytest.mark.parametrize("name", BOTH)
@FEW
@given(st.data())
def test_at_least_as_tight_as_box_on_relu_networks(name, data):
    net, shape = data.draw(networks(activations=("relu",)), label="network")
    lower, upper = data.draw(input_boxes(shape), label="input box")
    lo, hi = _bounds(net, lower, upper, name)
    box_lo, box_hi = _bounds(net, lower, upper, "box")
    assert np.all(lo >= box_lo - 1e-9) and np.all(hi <= box_hi + 1e-9)


def test_deeppoly_beats_box_and_crown_ibp_on_a_deep_relu_net():
    """Not just ≥: on a 3-layer ReLU net DeepPoly's margin is strictly tighter than Box's and CROWN-IBP's."""
    nn.seed(3)
    net = nn.Sequential(nn.Linear(4, 20, dtype="float64"), nn.ReLU(), nn.Linear(20, 20, dtype="float64"),
                        nn.ReLU(), nn.Linear(20, 3, dtype="float64"))
    x = np.random.default_rng(3).uniform(0, 1, (2, 4))
    width = {name: np.mean(np.subtract(*_bounds(net, x - 0.1, x + 0.1, name)[::-1]))
             for name in ("box", "crown-ibp", "deeppoly")}
    assert width["deeppoly"] < width["crown-ibp"] < width["box"]


@pytest.mark.parametrize("name", BOTH)
def test_specification_margins_are_sound(name):
    """Per-input weights (batch, out, in): the C·y layer that certify() appends."""
    nn.seed(4)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, 2, 1, dtype="float64"), nn.ReLU(), nn.MaxPool2d(2, 1), nn.Flatten(),
                        nn.Linear(12, 4, dtype="float64"))
    rng = np.random.default_rng(4)
    x, labels = rng.uniform(0, 1, (3, 1, 6, 6)), np.array([0, 2, 3])
    margins = spec.margin_bounds(net, domains.get(name).linf_ball(x, 0.05), labels).numpy()
    box_margins = spec.margin_bounds(net, domains.get("box").linf_ball(x, 0.05), labels).numpy()
    lower, upper = np.clip(x - 0.05, 0, 1), np.clip(x + 0.05, 0, 1)
    for point in sample_points(lower, upper, rng):
        assert np.all(spec.margin_bounds(net, Tensor(point), labels).numpy() >= margins - 1e-9)
    assert np.all(margins >= box_margins - 1e-9)


def test_chunked_back_substitution_gives_the_same_bounds(monkeypatch):
    nn.seed(5)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, 1, 0, dtype="float64"), nn.ReLU(), nn.Flatten(),
                        nn.Linear(32, 5, dtype="float64"))
    x = np.random.default_rng(5).uniform(0, 1, (2, 1, 6, 6))
    whole = _bounds(net, x - 0.1, x + 0.1, "deeppoly")
    monkeypatch.setattr(backsub, "CHUNK_ELEMENTS", 200)  # chunks of a few rows
    chunked = _bounds(net, x - 0.1, x + 0.1, "deeppoly")
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-12, atol=1e-12)


def test_selected_neurons_get_the_bounds_full_back_substitution_gives_them():
    """``backsub.bounds(..., neurons=idx)`` (the ReLU-only refinement) equals the full pass at idx, in
    chunks too; and lazy refinement leaves a stable ReLU layer's relaxation as full refinement has it."""
    nn.seed(6)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, 1, 0, dtype="float64"), nn.ReLU(), nn.Flatten(),
                        nn.Linear(48, 7, dtype="float64"), nn.ReLU(), nn.Linear(7, 3, dtype="float64"))
    x = np.random.default_rng(6).uniform(0, 1, (2, 1, 6, 6))
    element = net.layers[0](domains.get("deeppoly").from_bounds(x - 0.05, x + 0.05))
    element = net.layers[3](net.layers[2](net.layers[1](element)))    # the Linear(48, 7) output, unrefined
    assert not element.refined
    full_lo, full_hi = backsub.bounds(element.steps, (7,), element.input_lower, element.input_upper)
    idx = np.array([6, 0, 3])
    for chunk in (2 ** 24, 3):
        backsub.CHUNK_ELEMENTS, saved = chunk, backsub.CHUNK_ELEMENTS
        try:
            lo, hi = backsub.bounds(element.steps, (7,), element.input_lower, element.input_upper, neurons=idx)
        finally:
            backsub.CHUNK_ELEMENTS = saved
        np.testing.assert_allclose(lo.numpy(), full_lo.numpy()[:, idx], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(hi.numpy(), full_hi.numpy()[:, idx], rtol=1e-12, atol=1e-12)
    lazy = deeppoly._refine(element, everywhere=False)
    crossing = (element.lower.numpy() < 0) & (element.upper.numpy() > 0)
    untouched = ~crossing.any(axis=0)            # refined: neurons crossing in some batch element
    assert crossing.any() and untouched.any()
    np.testing.assert_allclose(lazy.lower.numpy()[crossing], np.maximum(element.lower.numpy(), full_lo.numpy())[crossing])
    np.testing.assert_array_equal(lazy.upper.numpy()[:, untouched], element.upper.numpy()[:, untouched])


@pytest.mark.parametrize("name", BOTH)
@pytest.mark.usefixtures("plain")
def test_bound_gradients_match_central_differences(name):
    """d(Σ r1·lower + Σ r2·upper)/dθ for every weight, against central differences (float64)."""
    nn.seed(6)
    net = nn.Sequential(nn.Conv2d(1, 2, 2, 1, 0, dtype="float64"), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8, 4, dtype="float64"), nn.Sigmoid(), nn.Linear(4, 3, dtype="float64"))
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 1, (2, 1, 3, 3))
    r1, r2 = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))

    def objective():
        lo, hi = net(domains.get(name).linf_ball(x, 0.2)).bounds()
        return ad.sum(lo * r1) + ad.sum(hi * r2)

    params = net.parameters()
    for p in params:
        p.grad = None
    objective().backward()
    h = 1e-6
    for p in params:
        flat = p.value.reshape(-1)
        numeric = np.zeros(flat.shape)
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + h
            plus = objective().item()
            flat[i] = saved - h
            minus = objective().item()
            flat[i] = saved
            numeric[i] = (plus - minus) / (2 * h)
        np.testing.assert_allclose(np.asarray(p.grad).reshape(-1), numeric, rtol=1e-5, atol=1e-7)


def test_add_refuses_branches_from_another_origin():
    make = domains.get("deeppoly").from_bounds
    a, other = make(np.zeros((1, 2)), np.ones((1, 2))), make(np.zeros((1, 2)), np.ones((1, 2)))
    branch = deeppoly.relu(a)
    with pytest.raises(ValueError, match="branch point"):
        deeppoly.add(branch, branch, origin=deeppoly.relu(other))


def test_crown_ibp_keeps_interval_bounds_inside_and_back_substitutes_only_in_bounds():
    nn.seed(7)
    net = nn.Sequential(nn.Linear(3, 8, dtype="float64"), nn.ReLU(), nn.Linear(8, 8, dtype="float64"), nn.ReLU(),
                        nn.Linear(8, 2, dtype="float64"))
    x = np.random.default_rng(7).uniform(0, 1, (2, 3))
    element = net(domains.get("crown-ibp").from_bounds(x - 0.3, x + 0.3))
    box_lo, box_hi = _bounds(net, x - 0.3, x + 0.3, "box")
    np.testing.assert_allclose(element.lower.numpy(), box_lo, rtol=1e-12)   # the IBP bounds, layer by layer
    np.testing.assert_allclose(element.upper.numpy(), box_hi, rtol=1e-12)
    lo, hi = element.bounds()
    assert np.all(lo.numpy() >= box_lo - 1e-12) and np.any(hi.numpy() < box_hi - 1e-6)
