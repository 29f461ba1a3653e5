"""certify and the specification: never 'verified' where a counterexample exists, re-checked
counterexamples, exact margins for affine nets on relational domains, and clear input errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refcert import attacks, domains, nn, spec
from refcert.autodiff import Tensor, cross_entropy, no_grad
from refcert.certify import VERDICTS, ball_domains, certify
from tests.strategies import networks

pytestmark = pytest.mark.agnostic  # also run under REFCERT_BACKEND=strict

#: domains that build L∞ balls (every registered one except the concrete domain and segment-only ones)
SET_DOMAINS = ball_domains()
RELATIONAL = [name for name in ("deepzono", "deeppoly") if name in SET_DOMAINS]
needs_domains = pytest.mark.skipif(not SET_DOMAINS, reason="no set domain registered yet")


def _inputs(net, shape, rng, batch):
    x = rng.uniform(0.0, 1.0, (batch,) + shape)
    with no_grad():
        n = net(x).shape[-1]
    return x, rng.integers(0, n, batch)


@needs_domains
@settings(max_examples=20)
@given(data=st.data())
def test_never_verified_where_pgd_finds_a_counterexample(data):
    net, shape = data.draw(networks(max_depth=3))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x, y = _inputs(net, shape, rng, batch=3)
    with no_grad():
        y = np.where(rng.uniform(size=3) < 0.7, net(x).numpy().argmax(-1), y)  # mostly correct labels
    eps = data.draw(st.sampled_from([0.0, 0.01, 0.05, 0.2]))
    strong = attacks.pgd(net, x, y, eps, steps=30, restarts=3, rng=rng).margins.numpy()
    results = certify(net, x, y, eps, domain=SET_DOMAINS, attack=False)
    for name, res in results.items():
        assert set(res.verdicts) <= {"verified", "falsified", "unknown"}
        for i, verdict in enumerate(res.verdicts):
            assert not (verdict == "verified" and strong[i] <= 0), f"{name} verified input {i}, PGD falsified it"
            # the certified margin lower-bounds every concrete margin in the set
            assert res.margins[i] <= strong[i] + 1e-9 * (1 + abs(strong[i])), name


@needs_domains
@settings(max_examples=15)
@given(data=st.data())
def test_falsified_counterexamples_recheck(data):
    net, shape = data.draw(networks(max_depth=3, max_outputs=4))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x, y = _inputs(net, shape, rng, batch=4)
    eps = data.draw(st.sampled_from([0.05, 0.3, 1.0]))
    res = certify(net, x, y, eps, domain=SET_DOMAINS[0], pgd_steps=10, rng=rng)
    for i, verdict in enumerate(res.verdicts):
        point = res.counterexamples[i]
        assert (point is None) == (verdict != "falsified")
        if verdict == "falsified":
            assert np.all(point >= np.clip(x[i] - eps, 0, 1) - 1e-12)
            assert np.all(point <= np.clip(x[i] + eps, 0, 1) + 1e-12)
            with no_grad():
                assert attacks.margin(net(point[None]), y[i:i + 1]).numpy()[0] <= 0
        if res.predicted[i] != y[i]:
            assert verdict == "falsified" and np.array_equal(point, x[i])


@pytest.mark.skipif("box" not in SET_DOMAINS, reason="box not registered yet")
@settings(max_examples=20)
@given(data=st.data())
def test_eps_zero_verifies_correct_points_with_box(data):
    net, shape = data.draw(networks(max_depth=3))
    x, _ = _inputs(net, shape, np.random.default_rng(data.draw(st.integers(0, 2**16))), batch=3)
    with no_grad():
        logits = net(x).numpy()
    y = logits.argmax(-1)
    res = certify(net, x, y, 0.0, domain="box", attack=False)
    clear = np.sort(logits, -1)[:, -2] < logits.max(-1) - 1e-6 if logits.shape[-1] > 1 else np.ones(3, bool)
    assert all(v == "verified" for v, ok in zip(res.verdicts, clear) if ok)


def _affine_net(rng, shape_in=(1, 5, 5)):
    kw = {"rng": rng, "dtype": "float64"}
    return nn.Sequential(nn.Normalize([0.1], [0.3], dtype="float64"), nn.Conv2d(1, 2, 3, 1, 1, **kw),
                         nn.AvgPool2d(2, 1), nn.Flatten(), nn.Linear(32, 6, **kw), nn.Linear(6, 4, **kw))


@pytest.mark.skipif(not RELATIONAL, reason="no relational domain registered yet")
@pytest.mark.parametrize("name", RELATIONAL)
@pytest.mark.parametrize("seed", range(5))
def test_margin_bounds_exact_for_affine_nets(name, seed):
    """For affine g the exact minimum of a·x + b over a box is a·mid − |a|·rad; zonotopes/DeepPoly hit it."""
    rng = np.random.default_rng(seed)
    net = _affine_net(rng)
    x, y = rng.uniform(0, 1, (3, 1, 5, 5)), rng.integers(0, 4, 3)
    eps = [0.0, 0.01, 0.2, 1.0][seed % 4]
    lower = spec.margin_bounds(net, domains.get(name).linf_ball(x, eps), y).numpy()
    lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    C = spec.margin_matrix(y, 4).numpy()
    basis = np.eye(25).reshape(25, 1, 1, 5, 5)
    with no_grad():   # Jacobian of the affine net from its responses to unit vectors
        b = net(np.zeros((1, 1, 5, 5))).numpy()[0]
        J = np.stack([net(basis[k]).numpy()[0] - b for k in range(25)], axis=1)   # (4, 25)
    a = np.einsum("brn,nk->brk", C, J)
    exact = (np.einsum("brk,bk->br", a, mid.reshape(3, 25)) - np.einsum("brk,bk->br", np.abs(a), rad.reshape(3, 25))
             + np.einsum("brn,n->br", C, b))
    np.testing.assert_allclose(lower, exact, rtol=1e-9, atol=1e-9)


@needs_domains
def test_worst_case_logits_bound_cross_entropy_of_every_point():
    rng = np.random.default_rng(3)
    net = nn.Sequential(nn.Linear(3, 8, rng=rng, dtype="float64"), nn.ReLU(), nn.Linear(8, 4, rng=rng, dtype="float64"))
    x, y, eps = rng.uniform(0, 1, (5, 3)), rng.integers(0, 4, 5), 0.1
    for name in SET_DOMAINS:
        z = spec.worst_case_logits(net, domains.get(name).linf_ball(x, eps), y).numpy()
        assert np.all(z[np.arange(5), y] == 0)
        for _ in range(20):
            p = np.clip(x + rng.uniform(-eps, eps, x.shape), 0, 1)
            for i in range(5):
                worst = cross_entropy(Tensor(z[i:i + 1]), y[i:i + 1]).item()
                assert cross_entropy(net(p[i:i + 1]), y[i:i + 1]).item() <= worst + 1e-9, name


def test_margin_matrix_rows():
    C = spec.margin_matrix(np.array([2, 0]), 3).numpy()
    assert C.shape == (2, 2, 3)
    np.testing.assert_array_equal(C[0], [[-1, 0, 1], [0, -1, 1]])
    np.testing.assert_array_equal(C[1], [[1, -1, 0], [1, 0, -1]])
    with pytest.raises(ValueError, match="0..2"):
        spec.margin_matrix(np.array([3]), 3)


@needs_domains
def test_list_of_domains_gives_results_per_domain():
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.Linear(4, 6, rng=rng), nn.ReLU(), nn.Linear(6, 3, rng=rng))
    x = rng.uniform(0, 1, (7, 4)).astype(np.float32)
    results = certify(net, x, np.zeros(7, int), 0.05, domain=SET_DOMAINS, batch_size=3)
    assert list(results) == SET_DOMAINS
    for res in results.values():
        assert len(res.verdicts) == 7 and set(res.verdicts) <= set(VERDICTS) and res.times.shape == (7,)


@pytest.mark.parametrize("change, message", [
    (dict(x=np.zeros((2, 5))), "shape"), (dict(x=np.full((2, 4), np.nan)), "NaN"),
    (dict(eps=-0.1), "eps"), (dict(y=np.array([0, 3])), "0..2"), (dict(y=np.array([0])), "labels"),
    (dict(x=np.full((2, 4), 2.0)), "clip range"), (dict(domain="nonexistent"), "unknown domain"),
])
def test_bad_inputs_give_clear_errors(change, message):
    net = nn.Sequential(nn.Linear(4, 3, rng=np.random.default_rng(0)))
    args = dict(x=np.full((2, 4), 0.5), y=np.array([0, 1]), eps=0.1, domain="point") | change
    with pytest.raises(ValueError, match=message):
        certify(net, args["x"], args["y"], args["eps"], domain=args["domain"])


def test_an_unsound_domain_is_refused(monkeypatch):
    """A domain claiming a margin above the concrete one at x must raise, never certify."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Liar:
        lower: Tensor
        domain: str = "liar"

        def bounds(self):
            return self.lower + 100.0, self.lower + 100.0

    table = {op: (lambda x, **params: x) for op in domains.OPS}
    table["linear"] = lambda x, *, weight, bias: Liar(domains.get("point").transformers["linear"](
        x.lower, weight=weight, bias=bias))
    monkeypatch.setitem(domains._REGISTRY, "liar", domains.Domain("liar", table, lambda lo, hi: Liar(lo)))
    net = nn.Sequential(nn.Linear(4, 3, rng=np.random.default_rng(0)))
    with pytest.raises(RuntimeError, match="unsound"):
        certify(net, np.full((2, 4), 0.5), np.array([0, 1]), 0.1, domain="liar")


def test_verified_and_falsified_on_one_input_is_refused(monkeypatch):
    """A domain that only looks at the ball's centre 'verifies' a non-robust input; the counterexample PGD
    finds for a second (vacuous) domain on the same input must expose it."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Centre:
        value: Tensor
        domain: str
        width: float

        def bounds(self):
            return self.value - self.width, self.value + self.width

    point = domains.get("point").transformers
    for name, width in (("centre-only", 0.0), ("vacuous", 1e9)):
        table = {op: (lambda x, _op=op, **params: Centre(point[_op](x.value, **params), x.domain, x.width))
                 for op in domains.OPS if op != "add"}
        table["add"] = lambda a, b, origin=None: Centre(a.value + b.value, a.domain, a.width)
        make = (lambda name, width: lambda lo, hi: Centre((lo + hi) / 2, name, width))(name, width)
        monkeypatch.setitem(domains._REGISTRY, name, domains.Domain(name, table, make))
    net = line_net_2d()
    x, y = np.array([[0.5, 0.5]]), np.array([0])  # margin 0.1 at x, boundary 0.05 away
    assert certify(net, x, y, 0.2, domain="centre-only").verdicts == ["verified"]  # fooled alone ...
    with pytest.raises(RuntimeError, match="unsound"):                          # ... caught with a witness
        certify(net, x, y, 0.2, domain=["centre-only", "vacuous"])


def line_net_2d():
    layer = nn.Linear(2, 2, dtype="float64")
    layer.params["weight"] = Tensor(np.array([[1.0, 0.0], [0.0, 1.0]]))
    layer.params["bias"] = Tensor(np.array([0.1, 0.0]))
    return nn.Sequential(layer)


def test_default_batch_is_one_for_relational_domains_on_a_cpu(monkeypatch):
    """Without batch_size, Box runs 32 inputs at a time and the other domains 1 (on the NumPy backend), and
    the verdicts are those of an explicit batch of 1; the batch each abstract run saw is recorded."""
    from refcert import backends
    from refcert.certify import default_batch
    if backends.current().name != "numpy":
        pytest.skip("the CPU default: on another backend every domain takes 32")
    assert default_batch("box") == 32 and default_batch("deeppoly") == 1
    rng = np.random.default_rng(4)
    net = nn.Sequential(nn.Linear(6, 8, rng=rng, dtype="float64"), nn.ReLU(), nn.Linear(8, 3, rng=rng, dtype="float64"))
    x = rng.uniform(0, 1, (40, 6))
    labels = net(Tensor(x)).numpy().argmax(1)
    seen = []
    original = spec.margin_bounds

    def spy(net, element, labels, *args, **kwargs):
        seen.append((element.domain, element.lower.shape[0]))
        return original(net, element, labels, *args, **kwargs)
    monkeypatch.setattr(spec, "margin_bounds", spy)
    default = certify(net, x, labels, 0.05, domain=["box", "deeppoly"], attack=False)
    assert {size for name, size in seen if name == "box"} == {32, 8}
    assert {size for name, size in seen if name == "deeppoly"} == {1}
    explicit = certify(net, x, labels, 0.05, domain="deeppoly", attack=False, batch_size=1)
    assert default["deeppoly"].verdicts == explicit.verdicts
