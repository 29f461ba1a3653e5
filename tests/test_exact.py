"""The exact MILP oracle: its bounds are attained, enclose every sample, and lie inside every domain's."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refcert import domains, nn
from refcert.exact import exact_bounds, find_violation, width_ratios
from tests.strategies import assert_inside, input_boxes, networks, sample_points

pytest.importorskip("scipy.optimize", reason="the exact oracle needs SciPy's milp")

TOL = 1e-6


def _outputs(net, points):
    return net(np.asarray(points)).numpy().reshape(len(points), -1)


def _domain_bounds(lower, upper, net):
    """(name, lo, hi) for every registered domain that can bound ``net`` on the box."""
    found = []
    for name in domains.names():
        if name == "point":
            continue
        try:
            lo, hi = net(domains.get(name).from_bounds(lower, upper)).bounds()
        except Exception:  # noqa: BLE001 - a domain that cannot run this net/box is skipped, as briefed
            continue
        found.append((name, lo.numpy().reshape(1, -1), hi.numpy().reshape(1, -1)))
    return found


def _check(net, lower, upper, seed):
    lo, hi, argmin, argmax = exact_bounds(net, lower, upper)
    lo, hi = lo.reshape(1, -1), hi.reshape(1, -1)
    m = lo.shape[1]
    # attained: the concrete net at the MILP's optimisers reaches the bounds
    np.testing.assert_allclose(np.diag(_outputs(net, argmin)), lo[0], atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np.diag(_outputs(net, argmax)), hi[0], atol=TOL, rtol=TOL)
    assert np.all(argmin >= lower - 1e-9) and np.all(argmax <= upper + 1e-9)
    # every sample lies inside (the MILP is not below the sampled min / above the sampled max)
    points = sample_points(lower, upper, np.random.default_rng(seed), count=256)[:, 0]
    assert_inside(_outputs(net, points)[:, None], lo, hi, rtol=TOL, atol=TOL, what="sampled output")
    # exact bounds are the tightest: inside every sound domain's bounds
    for name, dlo, dhi in _domain_bounds(lower, upper, net):
        assert_inside(np.concatenate([lo, hi])[:, None], dlo, dhi, rtol=TOL, atol=TOL, what=f"exact vs {name}")
    return lo[0], hi[0], m


@settings(max_examples=12)
@given(networks(image=False, activations=("relu",), max_depth=3), st.data())
def test_exact_bounds_fc(drawn, data):
    net, shape = drawn
    lower, upper = data.draw(input_boxes(shape, max_batch=1))
    _check(net, lower, upper, data.draw(st.integers(0, 2**31)))


@st.composite
def small_conv_networks(draw):
    """A variant of tests.strategies.networks small enough for MILP: 1 x 4 x 4 input, one conv, then a
    max/avg pool or a residual block, then 1-2 outputs."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kw = {"rng": rng, "dtype": "float64"}
    c = draw(st.integers(1, 2))
    layers = [nn.Normalize(mean=[0.1], std=[0.5], dtype="float64"), nn.Conv2d(1, c, 2, 1, draw(st.integers(0, 1)), **kw),
              nn.ReLU()]
    size = 3 if layers[1].params["padding"] == 0 else 5
    kind = draw(st.sampled_from(["max", "avg", "residual"]))
    if kind == "residual":
        layers.append(nn.Residual(nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, **kw), nn.ReLU())))
    else:
        layers.append((nn.MaxPool2d if kind == "max" else nn.AvgPool2d)(2, 2 if size == 5 else 1))
        size = 2
    layers += [nn.Flatten(), nn.Linear(c * size * size, draw(st.integers(1, 2)), **kw)]
    return nn.Sequential(*layers), (1, 4, 4)


@settings(max_examples=8)
@given(small_conv_networks(), st.data())
def test_exact_bounds_conv_pool_residual(drawn, data):
    net, shape = drawn
    lower, upper = data.draw(input_boxes(shape, max_batch=1))
    _check(net, lower, upper, data.draw(st.integers(0, 2**31)))


def test_exact_matches_dense_grid_on_two_inputs():
    """On a 2-D box, a 201 x 201 grid gets within the grid's Lipschitz error of the exact extremes."""
    rng = np.random.default_rng(3)
    net = nn.Sequential(nn.Linear(2, 6, rng=rng, dtype="float64"), nn.ReLU(), nn.Linear(6, 5, rng=rng, dtype="float64"),
                        nn.ReLU(), nn.Linear(5, 2, rng=rng, dtype="float64"))
    lower, upper = np.array([[-1.0, -0.5]]), np.array([[1.0, 1.5]])
    lo, hi, _, _ = exact_bounds(net, lower, upper)
    g = np.stack(np.meshgrid(np.linspace(-1, 1, 201), np.linspace(-0.5, 1.5, 201)), axis=-1).reshape(-1, 2)
    y = _outputs(net, g)
    assert np.all(y.min(0) >= lo[0] - TOL) and np.all(y.max(0) <= hi[0] + TOL)
    assert np.all(y.min(0) - lo[0] < 0.05) and np.all(hi[0] - y.max(0) < 0.05)


@settings(max_examples=12)
@given(networks(image=False, activations=("relu",), max_depth=3), st.data(), st.sampled_from([-0.3, -0.01, 0.01, 0.3]))
def test_find_violation_agrees_with_exact_bounds_and_sampling(drawn, data, offset):
    net, shape = drawn
    lower, upper = data.draw(input_boxes(shape, max_batch=1))
    lo, hi, _, _ = exact_bounds(net, lower, upper)
    lo, hi = lo.reshape(-1), hi.reshape(-1)
    row = np.zeros((1, lo.size))
    row[0, 0] = 1.0
    d = np.array([lo[0] + offset * (hi[0] - lo[0] + 1e-3)])   # unsafe set: y_0 <= d
    x = find_violation(net, lower, upper, row, d)
    points = sample_points(lower, upper, np.random.default_rng(0), count=256)[:, 0]
    sampled_violation = np.any(_outputs(net, points)[:, 0] <= d[0])
    if x is None:
        assert offset < 0 and not sampled_violation
    else:
        assert offset > 0
        assert np.all(x >= lower[0]) and np.all(x <= upper[0])
        assert _outputs(net, x[None])[0, 0] <= d[0]


def test_non_piecewise_linear_layer_is_refused():
    net = nn.Sequential(nn.Linear(2, 2, dtype="float64"), nn.Sigmoid())
    with pytest.raises(ValueError, match="Sigmoid"):
        exact_bounds(net, np.zeros((1, 2)), np.ones((1, 2)))


@pytest.mark.usefixtures("plain")
def test_width_ratios_never_below_one_and_one_where_a_domain_is_exact():
    rng = np.random.default_rng(3)
    relu_net = nn.Sequential(nn.Linear(3, 8, rng=rng), nn.ReLU(), nn.Linear(8, 8, rng=rng), nn.ReLU(),
                             nn.Linear(8, 4, rng=rng))
    affine_net = nn.Sequential(nn.Linear(3, 8, rng=rng), nn.Linear(8, 4, rng=rng))
    x = rng.uniform(-1, 1, (1, 3))
    lower, upper = x - 0.4, x + 0.4
    ratios = width_ratios(relu_net, lower, upper)
    assert {"box", "deepzono", "deeppoly", "crown-ibp", "hswitch"} <= set(ratios)
    for name, ratio in ratios.items():
        assert ratio.shape == (4,) and np.all(ratio >= 1 - TOL), (name, ratio)
    assert np.all(ratios["deeppoly"] <= ratios["box"] + TOL)   # DeepPoly is intersected with Box
    exact = width_ratios(affine_net, lower, upper, names=["box", "deepzono", "zbox", "hbox", "deeppoly"])
    for name in ("deepzono", "zbox", "hbox", "deeppoly"):   # affine maps are exact on zonotopes and DeepPoly
        np.testing.assert_allclose(exact[name], 1.0, rtol=1e-6, err_msg=name)
    assert np.all(exact["box"] >= 1 - TOL) and np.any(exact["box"] > 1.01)   # Box loses the dependency
    point = width_ratios(relu_net, x, x, names=["box"])["box"]
    assert np.all(np.isnan(point))   # no width to compare with
