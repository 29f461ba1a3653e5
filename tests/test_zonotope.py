"""The zonotope family: exactness where it must hold, closed forms, shared noise symbols, gradients.

Soundness over random networks is in tests/test_soundness.py; this file checks precision facts that a
merely sound (but sloppy) implementation would fail.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from refcert import autodiff as ad
from refcert import domains, nn
from refcert.autodiff import Tensor
from refcert.domains import zonotope
from tests.strategies import input_boxes

ZONOTOPES = list(zonotope.TABLES)
PURE = ["deepzono", "zbox", "zdiag", "zswitch", "zsmooth"]
HYBRID_OF = {"zbox": "hbox", "zdiag": "hdiag", "zswitch": "hswitch", "zsmooth": "hsmooth"}
FEW = settings(max_examples=15, deadline=None)


def linear(W, b=None):
    """A Linear layer with the given weight (out, in) and bias (float64, trainable)."""
    W = np.asarray(W, dtype=np.float64)
    layer = nn.Linear(W.shape[1], W.shape[0], dtype="float64")
    layer.params["weight"] = Tensor(W, requires_grad=True)
    layer.params["bias"] = Tensor(np.zeros(W.shape[0]) if b is None else np.asarray(b, np.float64), requires_grad=True)
    return layer


def exact_affine_range(net, lower, upper):
    """For a net that is affine on the box: the exact range f(c) ± Σ_i |f(c + r_i e_i) − f(c)|
    (each probe c + r_i e_i lies in the box, so it sees the same affine piece)."""
    c, r = (lower + upper) / 2, (upper - lower) / 2
    batch, n = c.shape[0], c[0].size
    f_c = net(Tensor(c)).numpy().reshape(batch, -1)
    radius = []
    for i in range(batch):
        probes = c[i].reshape(-1) + np.diag(r[i].reshape(-1))
        columns = net(Tensor(probes.reshape((n,) + c.shape[1:]))).numpy().reshape(n, -1) - f_c[i]
        radius.append(np.abs(columns).sum(axis=0))
    radius = np.stack(radius)
    return f_c - radius, f_c + radius


@st.composite
def affine_networks(draw):
    """Random nets of affine layers only: conv, normalize, avg-pool, residual, flatten, linear."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kw = {"rng": rng, "dtype": "float64"}
    c = draw(st.integers(1, 2))
    layers = [nn.Normalize(mean=rng.uniform(-1, 1, c), std=rng.uniform(0.3, 2, c), dtype="float64"),
              nn.Conv2d(c, 2, 3, 1, 1, **kw), nn.Residual(nn.Conv2d(2, 2, 3, 1, 1, **kw), nn.Conv2d(2, 2, 1, **kw)),
              nn.AvgPool2d(2, 1), nn.Flatten(), nn.Linear(2 * 3 * 3, 3, **kw)]
    return nn.Sequential(*layers), (c, 4, 4)


@pytest.mark.parametrize("name", ZONOTOPES)
@FEW
@given(st.data())
def test_affine_networks_are_exact(name, data):
    net, shape = data.draw(affine_networks())
    lower, upper = data.draw(input_boxes(shape))
    lo, hi = net(domains.get(name).from_bounds(lower, upper)).bounds()
    exact_lo, exact_hi = exact_affine_range(net, lower, upper)
    np.testing.assert_allclose(lo.numpy(), exact_lo, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(hi.numpy(), exact_hi, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ZONOTOPES)
@FEW
@given(seed=st.integers(0, 2**32 - 1))
def test_stable_relus_are_exact(name, seed):
    """With every ReLU stable on the box the net is affine there, and every variant must be exact."""
    rng = np.random.default_rng(seed)
    net = nn.Sequential(nn.Linear(3, 5, rng=rng, dtype="float64"), nn.ReLU(), nn.Linear(5, 2, rng=rng, dtype="float64"))
    x = rng.uniform(-1, 1, (2, 3))
    pre = net.layers[0](Tensor(x)).numpy()
    eps = 0.5 * np.min(np.abs(pre)) / np.abs(net.layers[0].weight.numpy()).sum(axis=1).max()
    assume(eps > 1e-6)
    lower, upper = x - eps, x + eps
    lo, hi = net(domains.get(name).from_bounds(lower, upper)).bounds()
    exact_lo, exact_hi = exact_affine_range(net, lower, upper)
    np.testing.assert_allclose(lo.numpy(), exact_lo, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hi.numpy(), exact_hi, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("l, u", [(-1.0, 3.0), (-2.0, 0.5), (-1.0, 1.0)])
@pytest.mark.usefixtures("plain")
def test_one_crossing_neuron_has_the_closed_form(l, u):
    """x ∈ [l, u], l < 0 < u.  DeepZono: [λl, u] with λ = u/(u − l); zBox: [0, u]; zDiag: [l, u − l];
    zSwitch: zBox iff −l > u; zSmooth: λ = 1 − t, μ = (1 − t)(−l/2) + t·u/2 gives [λl, λu + 2μ]."""
    lam = u / (u - l)
    t = -l / (u - l + 1e-4)
    mu_s = (1 - t) * (-l / 2) + t * (u / 2)
    expected = {"deepzono": (lam * l, u), "zbox": (0.0, u), "zdiag": (l, u - l),
                "zswitch": (0.0, u) if -l > u else (l, u - l), "zsmooth": ((1 - t) * l, (1 - t) * u + 2 * mu_s)}
    for name, (want_lo, want_hi) in expected.items():
        for variant in (name, HYBRID_OF.get(name, name)):
            lo, hi = nn.ReLU()(domains.get(variant).from_bounds([[l]], [[u]])).bounds()
            np.testing.assert_allclose([lo.item(), hi.item()], [want_lo, want_hi], rtol=1e-12, atol=1e-15,
                                       err_msg=variant)


@pytest.mark.usefixtures("plain")
def test_deepzono_keeps_the_input_symbol_and_adds_one():
    """DeepZono on [l, u] = [-1, 3]: center λc + μ, rows [λr, μ] (the input symbol stays shared)."""
    z = nn.ReLU()(domains.get("deepzono").from_bounds([[-1.0]], [[3.0]]))
    lam, mu = 0.75, 0.375
    np.testing.assert_allclose(z.center.numpy(), [[lam * 1.0 + mu]])
    np.testing.assert_allclose(z.generators.numpy(), [[[lam * 2.0], [mu]]])
    np.testing.assert_allclose(z.box_radius.numpy(), [[0.0]])
    h = nn.ReLU()(domains.get("hbox").from_bounds([[-1.0]], [[3.0]]))  # box-like: E zeroed, error in β
    np.testing.assert_allclose(h.generators.numpy(), [[[0.0]]])
    np.testing.assert_allclose(h.box_radius.numpy(), [[1.5]])


@pytest.mark.parametrize("name", ZONOTOPES)
@pytest.mark.usefixtures("plain")
def test_x_minus_x_through_a_residual_is_exactly_zero(name):
    identity = linear(np.eye(3))
    net = nn.Sequential(nn.Residual(identity, linear(-np.eye(3))))
    lo, hi = net(domains.get(name).from_bounds(np.full((2, 3), -1.0), np.full((2, 3), 2.0))).bounds()
    assert np.all(lo.numpy() == 0.0) and np.all(hi.numpy() == 0.0)
    box_lo, box_hi = net(domains.get("box").from_bounds(np.full((2, 3), -1.0), np.full((2, 3), 2.0))).bounds()
    assert np.all(box_hi.numpy() - box_lo.numpy() > 1.0)  # Box forgets the correlation


@pytest.mark.parametrize("name", ["zdiag", "hdiag"])
@pytest.mark.usefixtures("plain")
def test_relu_minus_x_is_exact_for_diag(name):
    """relu(x) − x over [l, u] is exactly [0, −l]; zDiag gets it because x's symbol cancels."""
    net = nn.Sequential(nn.Residual(nn.ReLU(), linear(-np.eye(2))))
    lo, hi = net(domains.get(name).from_bounds([[-1.0, -3.0]], [[2.0, 0.5]])).bounds()
    np.testing.assert_allclose(lo.numpy(), [[0.0, 0.0]], atol=1e-15)
    np.testing.assert_allclose(hi.numpy(), [[1.0, 3.0]], rtol=1e-15)


def test_add_adds_shared_rows_and_concatenates_new_ones():
    z = zonotope.from_bounds(np.zeros((1, 2)), np.ones((1, 2)), domain="deepzono")  # 2 shared rows
    E0 = z.generators.numpy()
    extra_a, extra_b = np.array([[[0.5, 0.0]]]), np.array([[[0.0, -0.25]], [[1.0, 1.0]]]).transpose(1, 0, 2)
    a = zonotope.Zonotope(z.center, Tensor(np.concatenate([E0, extra_a], 1)), z.box_radius, "deepzono")
    b = zonotope.Zonotope(z.center, Tensor(np.concatenate([2 * E0, extra_b], 1)), z.box_radius + 0.1, "deepzono")
    s = zonotope.add(a, b, origin=z)
    np.testing.assert_allclose(s.generators.numpy(), np.concatenate([3 * E0, extra_a, extra_b], 1))
    np.testing.assert_allclose(s.box_radius.numpy(), np.full((1, 2), 0.1))
    with pytest.raises(ValueError, match="origin"):
        zonotope.add(a, b)


@pytest.mark.parametrize("pure", sorted(HYBRID_OF))
@FEW
@given(seed=st.integers(0, 2**32 - 1), eps=st.sampled_from([0.1, 0.5, 1.0]))
def test_hybrid_bounds_contain_pure_bounds(pure, seed, eps):
    """One hidden ReLU layer: hybrid = pure exactly (|W|ν = Σ_i |W_i| ν_i).  Two: the second ReLU still
    sees equal bounds, so hybrid ⊇ pure at the output.  Deeper nets have no such order (the ReLU
    transformers are not monotone in the input set), so it is not tested there."""
    rng = np.random.default_rng(seed)
    kw = {"rng": rng, "dtype": "float64"}
    one = nn.Sequential(nn.Linear(3, 5, **kw), nn.ReLU(), nn.Linear(5, 3, **kw))
    two = nn.Sequential(*one.layers, nn.ReLU(), nn.Linear(3, 2, **kw))
    x = rng.uniform(-1, 1, (2, 3))
    for net, equal in ((one, True), (two, False)):
        p_lo, p_hi = (b.numpy() for b in net(domains.get(pure).linf_ball(x, eps, clip=None)).bounds())
        h_lo, h_hi = (b.numpy() for b in net(domains.get(HYBRID_OF[pure]).linf_ball(x, eps, clip=None)).bounds())
        if equal:
            np.testing.assert_allclose(h_lo, p_lo, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(h_hi, p_hi, rtol=1e-9, atol=1e-12)
        assert np.all(h_lo <= p_lo + 1e-9) and np.all(h_hi >= p_hi - 1e-9)


@pytest.mark.usefixtures("plain")
def test_sigmoid_on_a_point_is_exact():
    for name in ("deepzono", "hbox"):
        x = np.array([[-30.0, -0.7, 0.0, 2.5, 30.0]])
        for layer, f in ((nn.Sigmoid(), lambda v: 1 / (1 + np.exp(-v))), (nn.Tanh(), np.tanh)):
            lo, hi = layer(domains.get(name).from_bounds(x, x)).bounds()
            np.testing.assert_allclose(lo.numpy(), f(x), rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(hi.numpy(), f(x), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["deepzono", "hbox"])
def test_max_pool_outputs_a_dominant_input_exactly(name):
    """One 2×2 window.  x00 ∈ [5, 6] dominates the others ∈ [0, 1]: the output is x00 itself (its
    generator kept, no new symbol).  With x00 ∈ [0.5, 2] no input dominates: the box [0.5, 2]."""
    pool = nn.MaxPool2d(kernel_size=2, stride=2)
    others = np.zeros((1, 1, 2, 2)), np.ones((1, 1, 2, 2))
    for (l00, u00), dominant in (((5.0, 6.0), True), ((0.5, 2.0), False)):
        lower, upper = others[0].copy(), others[1].copy()
        lower[0, 0, 0, 0], upper[0, 0, 0, 0] = l00, u00
        out = pool(domains.get(name).from_bounds(lower, upper))
        lo, hi = out.bounds()
        np.testing.assert_allclose([lo.item(), hi.item()], [l00, u00])
        if dominant:
            np.testing.assert_allclose(out.generators.numpy().reshape(-1), [0.5, 0, 0, 0])
        expected_rows = 4 if dominant or name == "hbox" else 5
        assert out.generators.shape[1] == expected_rows


def _loss(name, net, x, eps):
    lo, hi = net(domains.get(name).from_bounds(x - eps, x + eps)).bounds()
    return ad.sum(hi * hi) - ad.sum(lo) * 0.7


@pytest.mark.parametrize("name", ["box"] + ZONOTOPES)
@pytest.mark.usefixtures("plain")
def test_bound_gradients_match_finite_differences(name):
    rng = np.random.default_rng(7)
    kw = {"rng": rng, "dtype": "float64"}
    net = nn.Sequential(nn.Conv2d(1, 2, 2, 1, 1, **kw), nn.ReLU(), nn.MaxPool2d(2, 1),
                        nn.Residual(nn.Sequential(nn.Conv2d(2, 2, 3, 1, 1, **kw), nn.Tanh())),
                        nn.AvgPool2d(2, 2), nn.Flatten(), nn.Linear(2, 3, **kw), nn.Sigmoid(), nn.Linear(3, 2, **kw))
    x = Tensor(rng.uniform(0, 1, (2, 1, 3, 3)))
    eps = Tensor(np.array(0.15), requires_grad=True)
    loss = _loss(name, net, x, eps)
    loss.backward()
    h = 1e-6
    checked = list(net.parameters()) + [eps]
    for param in checked:
        grad = np.asarray(param.grad).reshape(-1)
        flat = param.value.reshape(-1)
        for i in range(flat.size):
            keep = float(flat[i])
            flat[i] = keep + h
            up = _loss(name, net, x, eps).item()
            flat[i] = keep - h
            down = _loss(name, net, x, eps).item()
            flat[i] = keep
            assert abs((up - down) / (2 * h) - grad[i]) <= 1e-5 * (1 + abs(grad[i])), (
                f"{name}: d loss/d param[{i}] autodiff {grad[i]:.8g} vs finite differences {(up - down) / (2 * h):.8g}")
