"""α-CROWN's free lines for σ and tanh (refcert/domains/curves.py): for every slope, the line with the
offset ``lower_offset`` gives lies below f on [l, u] and the one from ``upper_offset`` above it — checked
in exact arithmetic (Fractions against mpmath enclosures of f, zero tolerance) and against float
executions of f; the offsets are nearly the tightest; alpha-crown moves them to tighter bounds than
DeepPoly on sigmoid and tanh nets; a planted bug (the concave part forgotten) is caught."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refcert import autodiff as ad
from refcert import domains, fp, nn, spec
from refcert.autodiff import Tensor, no_grad
from refcert.domains import alpha, curves

mpmath = pytest.importorskip("mpmath")
from tests import fp_exact as fx  # noqa: E402  (needs mpmath)

ENCLOSURE = {"sigmoid": fx.sigmoid_enclosure, "tanh": fx.tanh_enclosure}
ends = st.floats(-9.0, 9.0, allow_nan=False, width=32)


def _float_executions(name, x: np.ndarray) -> list[np.ndarray]:
    """f at x as networks compute it in x's dtype: refcert's own op and NumPy's formula."""
    with no_grad():
        own = (ad.sigmoid if name == "sigmoid" else ad.tanh)(Tensor(x)).value
    with np.errstate(over="ignore"):
        plain = (1 / (1 + np.exp(-x))) if name == "sigmoid" else np.tanh(x)
    return [own, plain.astype(x.dtype)]


def _lines(name, l, u, share, dtype):
    """Curve on [l, u] and, for slopes spread over [0, 1.2·most] (share picks where), the offsets."""
    L, U = Tensor(np.array([l], dtype=dtype)), Tensor(np.array([u], dtype=dtype))
    with fp.use(sound=True):
        c = curves.curve(name, L, U)
        a = Tensor((np.asarray(share, dtype=dtype) * 1.2 * c.most.value).astype(dtype))
        b, x_b = curves.lower_offset(name, a, L, U)
        B, x_B = curves.upper_offset(name, a, L, U)
    return c, a.value, b.value, B.value, x_b.value, x_B.value


def _violations(name, l, u, a, b, B, dtype, rng, count=24):
    """Points of [l, u] where a·x + b > f or f > a·x + B, exactly or in a float execution."""
    xs = np.concatenate([[l, u, min(max(0.0, l), u)], rng.uniform(l, u, count)]).astype(dtype)
    xs = xs[(xs >= l) & (xs <= u)]
    bad = []
    for i in range(a.size):
        A, lo_off, hi_off = Fraction(float(a[i])), Fraction(float(b[i])), Fraction(float(B[i]))
        runs = _float_executions(name, xs)
        for k, x in enumerate(xs):
            X = Fraction(float(x))
            f_lo, f_hi = ENCLOSURE[name](X)
            floats = [Fraction(float(r[k])) for r in runs]
            if A * X + lo_off > min([f_lo] + floats) or max([f_hi] + floats) > A * X + hi_off:
                bad.append((float(a[i]), float(x)))
    return bad


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["sigmoid", "tanh"]), l=ends, width=st.floats(0.0, 12.0, width=32),
       share=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4), dtype=st.sampled_from(["float32", "float64"]),
       seed=st.integers(0, 2**16))
def test_every_slope_gives_sound_lines_exactly(name, l, width, share, dtype, seed):
    u = float(np.float32(l + width))
    if u < l:
        u = l
    _, a, b, B, _, _ = _lines(name, l, u, share, dtype)
    assert not _violations(name, l, u, a.reshape(-1), b.reshape(-1), B.reshape(-1), dtype,
                           np.random.default_rng(seed))


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(["sigmoid", "tanh"]), l=ends, width=st.floats(0.05, 8.0),
       share=st.floats(0.0, 1.0))
def test_offsets_are_nearly_the_tightest(name, l, width, share):
    """min of f − line over a grid and the touching point is ≥ 0 and within 1e-9 of 0, likewise above."""
    u = l + width
    c, a, b, B, x_b, x_B = _lines(name, l, u, [share / 1.2], "float64")
    xs = np.concatenate([np.linspace(l, u, 2001), x_b.reshape(-1), x_B.reshape(-1)])
    f = _float_executions(name, xs)[0]
    below, above = np.min(f - (a[0] * xs + b[0])), np.min(a[0] * xs + B[0] - f)
    assert -1e-12 <= below <= 1e-9 and -1e-12 <= above <= 1e-9
    assert l <= x_b[0] <= u and l <= x_B[0] <= u    # the Danskin points lie in the interval


def test_a_planted_bug_forgetting_the_concave_part_is_caught(monkeypatch):
    """σ on [−1, 3] with slope 1/4: the convex part's minimum (at 0) is above g(3); dropping the concave
    part's ends must show up as a line above σ near 3."""
    def broken(name, a, l, u):
        zero = l * 0.0
        c = ad.minimum(u, zero)
        t = curves._touch(name, a, l, c)
        return curves._value_low(name, a, t), t
    args = ("sigmoid", -1.0, 3.0, [0.25 / 1.2 / 0.25], "float64")
    _, a, b, B, _, _ = _lines(*args)
    assert not _violations("sigmoid", -1.0, 3.0, a.reshape(-1), b.reshape(-1), B.reshape(-1), "float64",
                           np.random.default_rng(0))
    monkeypatch.setattr(curves, "_min_below", broken)
    _, a, b, B, _, _ = _lines(*args)
    assert _violations("sigmoid", -1.0, 3.0, a.reshape(-1), b.reshape(-1), B.reshape(-1), "float64",
                       np.random.default_rng(0))


@pytest.mark.parametrize("activation", [nn.Sigmoid, nn.Tanh])
def test_alpha_crown_tightens_sigmoid_and_tanh_nets(activation):
    """On a fixed random 8-30-30-5 net, alpha-crown's margins beat DeepPoly's (tangent points optimised)
    and hold for sampled points; with no σ/tanh line free to move, they would be equal."""
    rng = np.random.default_rng(0)
    layers = [nn.Linear(8, 30, rng=rng, dtype="float64"), activation(), nn.Linear(30, 30, rng=rng, dtype="float64"),
              activation(), nn.Linear(30, 5, rng=rng, dtype="float64")]
    for layer in layers[::2]:
        layer.params["weight"].value *= 4
    net = nn.Sequential(*layers)
    x = rng.uniform(size=(3, 8))
    lower, upper = x - 0.15, x + 0.15
    with no_grad():
        labels = net(x).numpy().argmax(1)
    margins = {}
    for name in ("deeppoly", "alpha-crown"):
        with alpha.use(iterations=30), fp.use(sound=True):
            margins[name] = spec.margin_bounds(net, domains.get(name).from_bounds(lower, upper), labels).numpy()
    assert np.mean(margins["alpha-crown"] - margins["deeppoly"]) > 0.05
    points = lower + (upper - lower) * rng.uniform(size=(500,) + lower.shape)
    with no_grad():
        y = np.stack([net(p).numpy() for p in points])
    true = np.take_along_axis(y, labels[None, :, None], 2) - y
    for b in range(3):
        observed = np.delete(true[:, b], labels[b], axis=1).min(0)
        assert np.all(observed >= margins["alpha-crown"][b])
