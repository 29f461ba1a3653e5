"""ExactLine / ApproxLine (refcert.domains.line) and certify_segment: properties over random networks."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refcert import domains, nn
from refcert.autodiff import Tensor
from refcert.domains import line, line_certify
from refcert.segment import certify_segment
from tests.strategies import networks

RELU_NETS = networks(activations=("relu",))


def _segment_ends(shape, seed, batch=2):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (batch,) + tuple(shape))
    scale = rng.choice([0.05, 0.5, 2.0])
    return a, a + scale * rng.uniform(-1, 1, a.shape)


def _on_segment(a, b, t):
    return a[None] + t.reshape((-1,) + (1,) * a.ndim) * (b - a)[None]


def _forward(net, x):
    return net(Tensor(x)).numpy()


def _tol(y):
    return 1e-8 * (1.0 + np.abs(y).max())


@given(RELU_NETS, st.integers(0, 2**32 - 1))
def test_exactline_pieces_are_affine_and_classes_agree(net_shape, seed):
    net, shape = net_shape
    a, b = _segment_ends(shape, seed)
    out = net(line.segment(a, b))
    rng = np.random.default_rng(seed)
    for k, (parts, P) in enumerate(zip(out.items, out.points)):
        t, P = parts.t, P.numpy()
        assert t[0] == 0 and t[-1] == 1 and np.all(np.diff(t) >= 0) and not parts.is_box.any()
        assert abs(parts.mass.sum() - 1) < 1e-12
        y_grid = _forward(net, _on_segment(a[k], b[k], t))
        assert np.allclose(P, y_grid, rtol=0, atol=_tol(y_grid)), "grid images differ from the net"
        for q in (0.5, 0.25):  # affine on every piece: interior points are interpolations of the ends
            y_mid = _forward(net, _on_segment(a[k], b[k], t[:-1] + q * np.diff(t)))
            assert np.allclose(y_mid, (1 - q) * P[:-1] + q * P[1:], rtol=0, atol=_tol(y_grid)), "not affine"
        pieces = line_certify.class_pieces(parts)
        assert abs((pieces.t_hi - pieces.t_lo).sum() - 1) < 1e-12
        ts = rng.uniform(0, 1, 200)
        y = _forward(net, _on_segment(a[k], b[k], ts))
        which = np.clip(np.searchsorted(pieces.t_lo, ts, side="right") - 1, 0, pieces.cls.size - 1)
        predicted = y[np.arange(ts.size), pieces.cls[which]]
        assert np.all(predicted >= y.max(axis=1) - _tol(y)), "a sampled point disagrees with its piece's class"
    lows, highs = line_certify.class_fractions(out)
    assert np.array_equal(lows, highs) and np.allclose(lows.sum(axis=1), 1.0)


def _assert_parts_contain(parts, a, b, net, rng):
    """Every sampled point of the segment maps into the part covering its t."""
    ts = rng.uniform(0, 1, 200)
    y = _forward(net, _on_segment(a, b, ts)).reshape(ts.size, -1)
    m = np.clip(np.searchsorted(parts.t, ts, side="right") - 1, 0, parts.is_box.size - 1)
    start, end = line_certify._numpy(parts)
    t0, t1 = parts.t[m], parts.t[m + 1]
    s = np.where(t1 > t0, (ts - t0) / np.where(t1 > t0, t1 - t0, 1), 0)[:, None]
    box = parts.is_box[m][:, None]
    lower = np.where(box, start[m], (1 - s) * start[m] + s * end[m])
    upper = np.where(box, end[m], lower)
    slack = 1e-7 * (1.0 + np.abs(y).max())
    assert np.all(y >= lower - slack) and np.all(y <= upper + slack), "a point escapes its part"


@given(networks(), st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 3, 8, None]))
def test_approxline_is_sound(net_shape, seed, budget):
    net, shape = net_shape
    a, b = _segment_ends(shape, seed)
    out = net(line.segment(a, b, "approxline", budget))
    rng = np.random.default_rng(seed)
    for k, parts in enumerate(out.items):
        assert budget is None or parts.is_box.size <= budget
        assert abs(parts.mass.sum() - 1) < 1e-12
        _assert_parts_contain(parts, a[k], b[k], net, rng)


@given(RELU_NETS, st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 4, 16]))
def test_approxline_contains_exactline(net_shape, seed, budget):
    net, shape = net_shape
    a, b = _segment_ends(shape, seed)
    exact, approx = net(line.segment(a, b)), net(line.segment(a, b, "approxline", budget))
    (el, eu), (al, au) = [tuple(x.numpy() for x in o.bounds()) for o in (exact, approx)]
    slack = 1e-9 * (1 + np.abs(eu).max() + np.abs(el).max())
    assert np.all(al <= el + slack) and np.all(au >= eu - slack)
    fractions, (lows, highs) = line_certify.class_fractions(exact)[0], line_certify.class_fractions(approx)
    assert np.all(lows <= fractions + 1e-9) and np.all(fractions <= highs + 1e-9)


def test_no_budget_approxline_equals_exactline():
    net, shape = networks(activations=("relu",)).example()
    a, b = _segment_ends(shape, 3)
    exact, approx = net(line.segment(a, b)), net(line.segment(a, b, "approxline"))
    for p, q in zip(exact.items, approx.items):
        assert np.array_equal(p.t, q.t) and np.array_equal(p.start.numpy(), q.start.numpy())


@given(networks(), st.integers(0, 2**32 - 1))
def test_approxline_from_bounds_is_box(net_shape, seed):
    if "box" not in domains.names():
        pytest.skip("refcert.domains.box not available")
    net, shape = net_shape
    a, b = _segment_ends(shape, seed)
    lower, upper = np.minimum(a, b), np.maximum(a, b)
    box = [x.numpy() for x in net(domains.get("box").from_bounds(lower, upper)).bounds()]
    one_box = [x.numpy() for x in net(domains.get("approxline").from_bounds(lower, upper)).bounds()]
    for x, y in zip(box, one_box):
        assert np.allclose(x, y, rtol=1e-9, atol=1e-9)
    b1 = [x.numpy() for x in net(line.segment(a, b, "approxline", 1)).bounds()]  # never looser than Box
    slack = 1e-9 * (1 + np.abs(box[0]).max() + np.abs(box[1]).max())
    assert np.all(b1[0] >= box[0] - slack) and np.all(b1[1] <= box[1] + slack)


def test_maxpool_splits_where_argmax_changes():
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.MaxPool2d(2, 1), nn.Flatten(), nn.Linear(4, 2, rng=rng, dtype="float64"))
    a = rng.uniform(-1, 1, (1, 1, 3, 3))
    b = rng.uniform(-1, 1, (1, 1, 3, 3))
    out = net(line.segment(a, b))
    t, P = out.items[0].t, out.points[0].numpy()
    assert t.size > 2, "random windows should change their argmax along the segment"
    y_mid = _forward(net, _on_segment(a[0], b[0], (t[:-1] + t[1:]) / 2))
    assert np.allclose(y_mid, (P[:-1] + P[1:]) / 2, atol=1e-12)


def test_refusals_are_clear():
    net = nn.Sequential(nn.Linear(2, 2, dtype="float64"), nn.Sigmoid())
    with pytest.raises(NotImplementedError, match="not piecewise linear"):
        net(line.segment(np.zeros((1, 2)), np.ones((1, 2))))
    with pytest.raises(ValueError, match="segment"):
        domains.get("exactline").from_bounds(np.zeros((1, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="budget"):
        line.segment(np.zeros((1, 2)), np.ones((1, 2)), "exactline", budget=3)
    with pytest.raises(ValueError, match="shape"):
        line.segment(np.zeros((1, 2)), np.ones((1, 3)))


SEGMENT_DOMAINS = [(d, b) for d, b in [("exactline", None), ("approxline", 2), ("box", None), ("deepzono", None)]
                   if d in domains.names()]


@settings(max_examples=60)
@given(RELU_NETS, st.integers(0, 2**32 - 1), st.sampled_from(SEGMENT_DOMAINS))
def test_certify_segment_never_verifies_a_refuted_segment(net_shape, seed, domain_budget):
    domain, budget = domain_budget
    net, shape = net_shape
    a, b = _segment_ends(shape, seed, batch=1)
    a, b = a[0], b[0]
    label = int(np.argmax(_forward(net, a[None])))
    result = certify_segment(net, a, b, label, domain=domain, budget=budget)
    ts = np.concatenate([[0.0, 1.0], np.random.default_rng(seed).uniform(0, 1, 300)])
    y = _forward(net, _on_segment(a, b, ts))
    if result.verdict == "verified":
        assert np.all(np.argmax(y, axis=1) == label), "verified, yet a sampled point has another class"
        assert result.margin <= (y[:, label:label + 1] - np.delete(y, label, axis=1)).min(initial=np.inf) + 1e-9
    if result.verdict == "falsified":
        t = result.t_counterexample
        assert 0 <= t <= 1 and np.allclose(result.counterexample, a + t * (b - a))
        assert np.argmax(_forward(net, result.counterexample[None])[0]) != label
    if domain == "exactline" and abs(result.margin) > 1e-9:
        assert result.verdict != "unknown", "exactline is complete on piecewise-linear nets"
    if domain in ("exactline", "approxline"):
        assert result.fractions_lower[label] <= 1 and result.fractions_upper.sum() >= 1 - 1e-9
