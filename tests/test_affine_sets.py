"""Input sets that are an affine image of a parameter box plus a per-feature error (``Domain.from_affine``,
the input of geometric specifications): every domain's bounds contain the exact outputs (Fractions, zero
tolerance) at real points A p + b + c⊙e of the set and every float execution at float points of it;
DeepPoly's short construction gives the default construction's bounds; a planted bug (c halved) is caught."""
from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refcert import domains, fp, interpret, spec
from refcert.autodiff import no_grad
from tests import fp_exact as fx
from tests.test_fp_property import DOMAINS, Draws, RandomDraws, build_convolutional, build_fully_connected

pytest.importorskip("mpmath")  # sigmoid/tanh nets need the enclosures


def _affine_set(rng, shape, dtype, k):
    """A (1, n, k), b, c (1, n) and the parameter box (1, k), in ``dtype``; some c are 0."""
    n = int(np.prod(shape))
    A = (rng.normal(size=(1, n, k)) * rng.choice([0.01, 0.3, 1.0])).astype(dtype)
    b = rng.uniform(-1, 1, (1, n)).astype(dtype)
    c = (rng.uniform(0, 0.2, (1, n)) * (rng.uniform(size=(1, n)) > 0.2)).astype(dtype)
    centre = rng.uniform(-1, 1, (1, k))
    radius = rng.choice([0.0, 1e-6, 0.1, 1.0]) * rng.uniform(0, 1, (1, k))
    return A, b, c, (centre - radius).astype(dtype), (centre + radius).astype(dtype)


def _points(rng, A, b, c, lower, upper, dtype, count=10):
    """(real (R, 1, n) Fractions, floats (F, 1, n)) points of the set: parameters at corners and random
    sevenths, errors ±1, 0 or sevenths; the floats nearest real points that still lie in the set."""
    Af, bf, cf = fx.to_fractions(A[0]), fx.to_fractions(b[0]), fx.to_fractions(c[0])
    lo, hi = fx.to_fractions(lower[0]), fx.to_fractions(upper[0])
    sevenths = lambda size: rng.integers(0, 8, size) / np.array(Fraction(7), dtype=object)  # noqa: E731
    real, floats = [], []
    for i in range(count):
        p = np.where(rng.uniform(size=lo.shape) < 0.5, lo, hi) if i % 2 else lo + (hi - lo) * sevenths(lo.shape)
        e = rng.choice([-1, 1], size=cf.shape).astype(object) if i % 3 == 0 else 2 * sevenths(cf.shape) - 1
        centre = Af.dot(p) + bf
        x = centre + cf * e
        real.append(x)
        nearest = np.array([fx.round_to(v, np.dtype(dtype)) for v in x], dtype=dtype)
        if all(abs(Fraction(float(v)) - m) <= r for v, m, r in zip(nearest, centre, cf)):
            floats.append(nearest)
    real = np.stack(real)[:, None]
    floats = np.stack(floats)[:, None] if floats else np.zeros((0, 1, real.shape[-1]), dtype=dtype)
    return real, floats


def _evidence(net, shape, real, floats, labels):
    exact = fx.exact_forward(net, real.reshape((-1,) + tuple(shape)))
    exact = exact.reshape((real.shape[0], 1) + exact.shape[1:])
    outputs = {}
    if floats.shape[0]:
        with fx.quiet_floats():
            outputs = fx.float_evaluations(net, floats.reshape((-1,) + tuple(shape)), onnx=False)
        outputs = {source: y.reshape((floats.shape[0], 1) + y.shape[1:]) for source, y in outputs.items()}
    return fx.Evidence(exact, outputs, labels)


def _violations(case, A, b, c, lower, upper, evidence, labels, names=DOMAINS):
    found = []
    with no_grad(), fx.quiet_floats():
        for name in names:
            build = lambda: domains.get(name).from_affine(A, b, c, lower, upper, case.shape)  # noqa: E731
            out_lower, out_upper = interpret.run([case.net], build()).bounds()
            margin = spec.margin_bounds(case.net, build(), labels)
            found += evidence.violations(name, out_lower.numpy(), out_upper.numpy(), margin.numpy())
    return found


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from([1, 2, 3]))
def test_every_domain_contains_the_affine_set_exactly(data, k):
    case = data.draw(st.one_of(st.builds(lambda d: build_fully_connected(d), st.builds(Draws, st.just(data.draw))),
                               st.builds(lambda d: build_convolutional(d), st.builds(Draws, st.just(data.draw)))),
                     label="network")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    A, b, c, lower, upper = _affine_set(rng, case.shape, case.dtype, k)
    real, floats = _points(rng, A, b, c, lower, upper, case.dtype)
    labels = rng.integers(0, spec.output_size(case.net), 1)
    evidence = _evidence(case.net, case.shape, real, floats, labels)
    found = _violations(case, A, b, c, lower, upper, evidence, labels)
    assert not found, f"{fx.summarize(found)}\nnet: {case.net}"


@pytest.mark.parametrize("sound", [False, True])
def test_deeppoly_short_construction_gives_the_default_bounds(sound):
    """Same set, same bounds: the parameter box as input (one step, c in its slack) or (p, e) through a
    linear layer with weight [A | diag c]."""
    rng = np.random.default_rng(3)
    case = build_convolutional(RandomDraws(rng), dtype="float64")
    A, b, c, lower, upper = _affine_set(rng, case.shape, "float64", 2)
    table = domains.get("deeppoly")
    generic = dataclasses.replace(table, affine=None)
    with no_grad(), fp.use(sound=sound):
        short = interpret.run([case.net], table.from_affine(A, b, c, lower, upper, case.shape)).bounds()
        default = interpret.run([case.net], generic.from_affine(A, b, c, lower, upper, case.shape)).bounds()
    for s, d in zip(short, default):
        np.testing.assert_allclose(s.numpy(), d.numpy(), rtol=1e-9, atol=1e-9)


def test_a_planted_bug_halving_the_error_is_caught(monkeypatch):
    rng = np.random.default_rng(5)
    case = build_fully_connected(RandomDraws(rng), dtype="float64")
    A, b, c, lower, upper = _affine_set(np.random.default_rng(1), case.shape, "float64", 2)
    c = np.full_like(c, 0.1)
    real, floats = _points(np.random.default_rng(2), A, b, c, lower, upper, "float64", count=24)
    labels = np.array([0])
    evidence = _evidence(case.net, case.shape, real, floats, labels)
    assert not _violations(case, A, b, c, lower, upper, evidence, labels, ["deeppoly", "box"])
    table = domains.get("deeppoly")
    honest = table.affine
    monkeypatch.setitem(domains._REGISTRY, "deeppoly", dataclasses.replace(
        table, affine=lambda A, b, c, lo, hi, shape: honest(A, b, c * 0.5, lo, hi, shape)))
    assert _violations(case, A, b, c, lower, upper, evidence, labels, ["deeppoly"])
