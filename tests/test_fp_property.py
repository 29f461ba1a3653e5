"""Floating-point soundness, zero tolerance (issue 11): every domain's bounds contain the exact and the
float outputs of the network.

For random small networks (fully connected, conv + pools, normalisation, residual blocks, sigmoid/tanh)
in float32 and float64, with PyTorch-style weights and adversarial draws (huge biases that absorb small
terms, cancelling pairs of neurons, near-tied outputs, saturated sigmoids, subnormal products), and a
random input set (``from_bounds`` or ``linf_ball``, clipped to [0, 1] or not, radii down to 1e-9 and 0),
every domain of
``refcert.certify.ball_domains()`` must give ``interpret.run(net, element).bounds()`` that contain

(a) the exact output (``tests/fp_exact.exact_forward``: Fractions; mpmath enclosures for sigmoid/tanh)
    at real points of the set: corners, rational interior points, the floats nearest its ends, and
(b) the output of every float evaluation in the net's dtype (``fp_exact.ORDERS``: matmul, left to right,
    right to left, pairwise, sorted by magnitude, an FMA chain; refcert's own pass; onnxruntime),

and ``spec.margin_bounds`` must be below the exact margins y_t − y_j and the exact differences of the
float outputs.  No tolerance anywhere: comparisons are exact (Fractions where floats cannot decide).
The checker is itself tested: a bound moved inward by one ulp must be reported.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refcert import domains, interpret, nn, spec
from refcert.autodiff import Tensor, no_grad
from refcert.certify import ball_domains
from tests import fp_exact as fx

HAVE_MPMATH = importlib.util.find_spec("mpmath") is not None
ACTIVATIONS = ("relu", "relu", "sigmoid", "tanh") if HAVE_MPMATH else ("relu",)
DTYPES = ("float32", "float64")
#: a bias whose ulp is 4 in its precision: it absorbs every term below 2
BIG = {"float32": 2.0**25, "float64": 2.0**54}
RADII = (0.0, 1e-9, 1e-7, 1e-4, 0.01, 0.1, 0.5)
DOMAINS = ball_domains()


# --- choices: drawn by Hypothesis in the tests, by a NumPy generator in bench/soundness.py --------------
class Draws:
    """Choices drawn by Hypothesis (so failures shrink)."""

    def __init__(self, draw):
        self.draw = draw

    def int(self, lo, hi):
        return self.draw(st.integers(lo, hi))

    def choice(self, options):
        return self.draw(st.sampled_from(list(options)))

    def seed(self):
        return np.random.default_rng(self.int(0, 2**32 - 1))


class RandomDraws(Draws):
    """The same choices from a NumPy generator (for the benchmark)."""

    def __init__(self, rng):
        self.rng = rng

    def int(self, lo, hi):
        return int(self.rng.integers(lo, hi + 1))

    def choice(self, options):
        options = list(options)
        return options[self.int(0, len(options) - 1)]


# --- networks ----------------------------------------------------------------------------------------
def _activation(name):
    return {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[name]()


def _set(layer, key, array):
    layer.params[key] = Tensor(np.asarray(array, dtype=layer.params[key].numpy().dtype), requires_grad=True)


@dataclass
class Case:
    """A network to test, its input shape (no batch), dtype, the label to use (None: random) and
    the adversarial edits made to it (for failure messages)."""
    layers: list
    shape: tuple
    dtype: str
    label: int | None = None
    edits: list = field(default_factory=list)

    @property
    def net(self):
        return nn.Sequential(*self.layers)


def _fc_layers(d, rng, width, dtype, max_depth=3):
    """Hidden layers (Linear + activation, residual blocks) on ``width`` features, then the output layer."""
    kw = {"rng": rng, "dtype": dtype}
    layers = []
    for _ in range(d.int(1, max_depth)):
        if d.choice(["linear", "linear", "residual"]) == "linear":
            out = d.int(2, 6)
            layers.append(nn.Linear(width, out, **kw))
            width = out
            if d.int(0, 3):   # mostly followed by an activation
                layers.append(_activation(d.choice(ACTIVATIONS)))
        else:
            block = nn.Sequential(nn.Linear(width, width, **kw), _activation(d.choice(ACTIVATIONS)))
            layers.append(nn.Residual(block))
    layers.append(nn.Linear(width, d.int(2, 4), **kw))
    return layers


def _normalize(rng, channels, dtype):
    return nn.Normalize(rng.uniform(-0.5, 0.5, channels), rng.uniform(0.3, 2.0, channels), dtype=dtype)


def build_fully_connected(d, dtype=None) -> Case:
    """A random FC network (normalisation, Linear, activations, residual blocks) in float32 or float64."""
    dtype = dtype or d.choice(DTYPES)
    rng = d.seed()
    width = d.int(1, 4)
    layers = [_normalize(rng, d.choice([1, width]), dtype)] if d.int(0, 1) else []
    return Case(layers + _fc_layers(d, rng, width, dtype), (width,), dtype)


def _image_layer(d, rng, shape, dtype):
    """One conv, activation, pool or residual layer on an image of ``shape``; (layer or None, new shape)."""
    kw = {"rng": rng, "dtype": dtype}
    c, h = shape[0], shape[1]
    kind = d.choice(["conv", "act", "pool", "residual"])
    if kind == "conv":
        k, s, p = d.int(1, 3), d.int(1, 2), d.int(0, 1)
        size = (h + 2 * p - k) // s + 1
        if size < 1:
            return None, shape
        out = d.int(1, 3)
        return nn.Conv2d(c, out, k, s, p, **kw), (out, size, size)
    if kind == "act":
        return _activation(d.choice(ACTIVATIONS)), shape
    if kind == "pool":
        s, p = d.int(1, 2), d.int(0, 1)
        size = (h + 2 * p - 2) // s + 1
        if size < 1:
            return None, shape
        return d.choice([nn.AvgPool2d, nn.MaxPool2d])(2, s, p), (c, size, size)
    block = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, **kw), _activation(d.choice(ACTIVATIONS)))
    shortcut = nn.Conv2d(c, c, 1, **kw) if d.int(0, 1) else None
    return nn.Residual(block, shortcut), shape


def build_convolutional(d, dtype=None) -> Case:
    """A random network on 1×4×4, 1×3×3 or 2×5×5 images: conv, pools, residual blocks, then an FC head."""
    dtype = dtype or d.choice(DTYPES)
    rng = d.seed()
    shape = d.choice([(1, 4, 4), (1, 3, 3), (2, 5, 5)])
    layers = [_normalize(rng, shape[0], dtype)] if d.int(0, 1) else []
    current = shape
    for _ in range(d.int(1, 3)):
        layer, current = _image_layer(d, rng, current, dtype)
        if layer is not None:
            layers.append(layer)
    layers.append(nn.Flatten())
    width = int(np.prod(current))
    if d.int(0, 1):
        return Case(layers + [nn.Linear(width, 3, rng=rng, dtype=dtype)], shape, dtype)
    return Case(layers + _fc_layers(d, rng, width, dtype, max_depth=1), shape, dtype)


# --- adversarial edits ----------------------------------------------------------------------------------
def _op(layers, i):
    return getattr(layers[i], "op", None) if 0 <= i < len(layers) else None


def _linear_positions(layers):
    return [i for i in range(len(layers)) if _op(layers, i) == "linear"]


def _cancelling_pair(case, d, rng):
    """Two neurons with the same weights and a huge bias (one of them one ulp off), read by the next
    Linear with opposite weights: they cancel in real arithmetic, and absorb everything small in floats."""
    big = BIG[case.dtype]
    for i in _linear_positions(case.layers)[:-1]:
        nxt = i + 2 if _op(case.layers, i + 1) == "relu" else i + 1
        if _op(case.layers, nxt) != "linear":
            continue
        first = case.layers[i]
        W, b = first.weight.numpy().copy(), first.bias.numpy().copy()
        r, q = rng.choice(W.shape[0], 2, replace=False)
        W[q] = W[r] = W[r] * d.choice([1.0, big / 4])
        b[r] = big
        b[q] = d.choice([big, np.nextafter(W.dtype.type(big), W.dtype.type(np.inf))])
        _set(first, "weight", W)
        _set(first, "bias", b)
        V = case.layers[nxt].weight.numpy().copy()
        V[:, q] = -V[:, r]
        _set(case.layers[nxt], "weight", V)
        case.edits.append(f"cancelling pair of neurons {r}, {q} of layer {i}")
        return


def _huge_bias(case, d, rng):
    """One bias entry of a Linear or Conv2d layer set to ±BIG."""
    positions = [i for i in range(len(case.layers)) if _op(case.layers, i) in ("linear", "conv2d")]
    i = d.choice(positions)
    b = case.layers[i].bias.numpy().copy()
    b[rng.integers(b.shape[0])] = d.choice([1, -1]) * BIG[case.dtype]
    _set(case.layers[i], "bias", b)
    case.edits.append(f"huge bias in layer {i}")


def _huge_weights(case, d, rng):
    """One row of the first Linear layer scaled by BIG/8 (terms that cancel only approximately)."""
    i = _linear_positions(case.layers)[0]
    W = case.layers[i].weight.numpy().copy()
    W[rng.integers(W.shape[0])] *= BIG[case.dtype] / 8
    _set(case.layers[i], "weight", W)
    case.edits.append(f"huge weights in layer {i}")


def _near_tie(case, d, rng):
    """Outputs 0 and 1 with weights and biases equal up to an ulp each; label 0."""
    last = case.layers[-1]
    W, b = last.weight.numpy().copy(), last.bias.numpy().copy()
    inf = W.dtype.type(np.inf)
    nudge = rng.integers(-1, 2, W.shape[1])
    W[1] = np.where(nudge > 0, np.nextafter(W[0], inf), np.where(nudge < 0, np.nextafter(W[0], -inf), W[0]))
    b[1] = d.choice([b[0], np.nextafter(b[0], inf), np.nextafter(b[0], -inf)])
    _set(last, "weight", W)
    _set(last, "bias", b)
    case.label = 0
    case.edits.append("near tie of outputs 0 and 1")


def _saturate(case, d, rng):
    """A neuron feeding sigmoid/tanh shifted deep into saturation (pre-activation moved by ±15..40), its
    outgoing weights scaled by 1000 (so the tiny σ(−20) or 1 − tanh(20) matters)."""
    for i in _linear_positions(case.layers)[:-1]:
        if _op(case.layers, i + 1) in ("sigmoid", "tanh") and _op(case.layers, i + 2) == "linear":
            b = case.layers[i].bias.numpy().copy()
            r = rng.integers(b.shape[0])
            b[r] += d.choice([1, -1]) * rng.uniform(15, 40)
            _set(case.layers[i], "bias", b)
            V = case.layers[i + 2].weight.numpy().copy()
            V[:, r] *= 1000
            _set(case.layers[i + 2], "weight", V)
            case.edits.append(f"saturated neuron {r} of layer {i}")
            return


def _tiny_weights(case, d, rng):
    """A Linear layer scaled by 2^-135 (float32; 2^-1060 in float64) and the next one by 2^127 (2^1023): its
    weights and the products x w are subnormal, so rounding errors are absolute (underflow), then amplified."""
    down, up = (135, 127) if case.dtype == "float32" else (1060, 1023)
    for i in _linear_positions(case.layers)[:-1]:
        nxt = i + 2 if _op(case.layers, i + 1) == "relu" else i + 1
        if _op(case.layers, nxt) != "linear":
            continue
        for key in ("weight", "bias"):
            _set(case.layers[i], key, np.ldexp(case.layers[i].params[key].numpy(), -down))
        _set(case.layers[nxt], "weight", np.ldexp(case.layers[nxt].weight.numpy(), up))
        case.edits.append(f"layer {i} scaled by 2^-{down}, layer {nxt} by 2^{up} (underflow)")
        return


EDITS = {"cancelling pair": _cancelling_pair, "huge bias": _huge_bias, "huge weights": _huge_weights,
         "near tie": _near_tie, "saturate": _saturate, "tiny weights": _tiny_weights}


def build_adversarial(d) -> Case:
    """An FC or conv network with one to three adversarial edits."""
    case = d.choice([build_fully_connected, build_convolutional])(d)
    rng = d.seed()
    for name in sorted({d.choice(sorted(EDITS)) for _ in range(d.int(1, 3))}):
        EDITS[name](case, d, rng)
    return case


# --- input sets ----------------------------------------------------------------------------------------
@dataclass
class InputSet:
    """How the element is built (``build(domain)``) and the real set it stands for (lo, hi Fractions)."""
    build: object
    lo: np.ndarray
    hi: np.ndarray
    description: str


def build_input_set(d, shape, dtype, batch=None) -> InputSet:
    """from_bounds(lower, upper) or linf_ball(x, eps, clip) over a batch of 1 or 2 inputs."""
    rng = d.seed()
    size = (batch or d.int(1, 2),) + tuple(shape)
    eps = d.choice(RADII)
    kind = d.choice(["bounds", "ball", "clipped ball"])
    if kind == "bounds":
        centre = rng.uniform(-1, 1, size)
        radius = eps * rng.uniform(0, 1, size) * (rng.uniform(size=size) > 0.2)
        lower = (centre - radius).astype(dtype)
        upper = np.maximum((centre + radius).astype(dtype), lower)
        lo, hi = fx.real_box(lower, upper)
        return InputSet(lambda dom: dom.from_bounds(Tensor(lower), Tensor(upper)), lo, hi,
                        f"from_bounds radius {eps}")
    clip = (0.0, 1.0) if kind == "clipped ball" else None
    centre = rng.uniform(0, 1, size) if clip else rng.uniform(-1, 1, size)
    if d.int(0, 1):   # centres on the clip edges and on 0.5 (the tiny-ball case)
        centre = rng.choice([0.0, 0.5, 1.0], size)
    x = centre.astype(dtype)
    lo, hi = fx.real_ball(x, eps, clip)
    return InputSet(lambda dom: dom.linf_ball(Tensor(x), eps, clip), lo, hi, f"linf_ball eps {eps} clip {clip}")


fully_connected = st.composite(lambda draw: build_fully_connected(Draws(draw)))
convolutional = st.composite(lambda draw: build_convolutional(Draws(draw)))
adversarial = st.composite(lambda draw: build_adversarial(Draws(draw)))
input_sets = st.composite(lambda draw, shape, dtype: build_input_set(Draws(draw), shape, dtype))


# --- the property ------------------------------------------------------------------------------------------
def pick_labels(case, batch, rng, n):
    """The case's label (near ties) or random labels, one per batch item."""
    return np.full(batch, case.label) if case.label is not None else rng.integers(0, n, batch)


def violations(case, inputs, seed, count=12, orders=fx.ORDERS):
    """Every violation of the guarantee by any domain on this network and input set."""
    net = case.net
    rng = np.random.default_rng(seed)
    n = spec.output_size(net)
    labels = pick_labels(case, inputs.lo.shape[0], rng, n)
    evidence = fx.gather_evidence(net, inputs.lo, inputs.hi, rng, count, labels, orders)
    found = []
    with no_grad(), fx.quiet_floats():
        for name in DOMAINS:
            domain = domains.get(name)
            lower, upper = interpret.run([net], inputs.build(domain)).bounds()
            margin = spec.margin_bounds(net, inputs.build(domain), labels)
            found += evidence.violations(name, lower.numpy(), upper.numpy(), margin.numpy())
    return found


def assert_sound(case, inputs, seed, **kw):
    found = violations(case, inputs, seed, **kw)
    assert not found, (f"{fx.summarize(found)}\nnet ({case.dtype}, edits {case.edits}): {case.net}\n"
                       f"input set: {inputs.description}")


@given(st.data())
def test_fully_connected_nets_are_sound(data):
    case = data.draw(fully_connected(), label="network")
    inputs = data.draw(input_sets(case.shape, case.dtype), label="input set")
    assert_sound(case, inputs, data.draw(st.integers(0, 2**32 - 1), label="seed"))


@given(st.data())
def test_convolutional_nets_are_sound(data):
    case = data.draw(convolutional(), label="network")
    inputs = data.draw(input_sets(case.shape, case.dtype), label="input set")
    assert_sound(case, inputs, data.draw(st.integers(0, 2**32 - 1), label="seed"))


@given(st.data())
def test_adversarial_nets_are_sound(data):
    case = data.draw(adversarial(), label="network")
    inputs = data.draw(input_sets(case.shape, case.dtype), label="input set")
    assert_sound(case, inputs, data.draw(st.integers(0, 2**32 - 1), label="seed"))


@settings(max_examples=1000)
@given(st.data())
def _thorough(data):
    case = data.draw(st.one_of(fully_connected(), convolutional(), adversarial()), label="network")
    inputs = data.draw(input_sets(case.shape, case.dtype), label="input set")
    assert_sound(case, inputs, data.draw(st.integers(0, 2**32 - 1), label="seed"), count=24)


@pytest.mark.slow
def test_all_nets_are_sound_thoroughly(request):
    """1000 networks of every kind, three times the points (a few minutes): ``pytest -m slow``."""
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("slow suite: select it with -m slow")
    _thorough()


# --- the checker and the evaluators themselves -------------------------------------------------------------
def _linear_net(weight, bias, dtype="float32"):
    layer = nn.Linear(len(weight[0]), len(weight), dtype=dtype)
    _set(layer, "weight", np.array(weight))
    _set(layer, "bias", np.array(bias))
    return nn.Sequential(layer)


def _evidence(net, lo, hi, labels=None):
    return fx.gather_evidence(net, lo, hi, np.random.default_rng(0), 8, labels)


def test_checker_reports_a_tight_bound_moved_inward_by_one_ulp():
    """y = x0 − x1 + 0.5 on [0, 1]²: [−0.5, 1.5] is exact and passes; one ulp inward is reported."""
    net = _linear_net([[1.0, -1.0]], [0.5])
    lo, hi = fx.real_box(np.zeros((1, 2), np.float32), np.ones((1, 2), np.float32))
    evidence = _evidence(net, lo, hi)
    lower, upper = np.array([[-0.5]], np.float32), np.array([[1.5]], np.float32)
    assert evidence.violations("tight", lower, upper) == []
    shrunk = evidence.violations("shrunk", lower, np.nextafter(upper, np.float32(0)))
    assert {v.source for v in shrunk} >= {"exact", "float32 matmul", "float32 fma"}
    assert all(v.side == "upper" for v in shrunk)
    raised = evidence.violations("raised", np.nextafter(lower, np.float32(0)), upper)
    assert raised and all(v.side == "lower" for v in raised)


def test_checker_reports_real_points_that_are_not_floats():
    """linf_ball(0.5, 1e-9) in float32 holds the one float 0.5 but real points up to 0.5 + 1e-9: the
    bounds [0.5, 0.5] pass every float evaluation and must still fail on the exact outputs."""
    net = _linear_net([[1.0]], [0.0])
    lo, hi = fx.real_ball(np.full((1, 1), 0.5, np.float32), 1e-9, (0.0, 1.0))
    evidence = _evidence(net, lo, hi)
    found = evidence.violations("point", np.full((1, 1), 0.5), np.full((1, 1), 0.5))
    assert found and {v.source for v in found} == {"exact"}
    half = np.full((1, 1), 0.5, np.float32)
    wider = evidence.violations("wider", np.nextafter(half, np.float32(0)), np.nextafter(half, np.float32(1)))
    assert wider == []


def test_checker_reports_a_margin_bound_one_ulp_too_high():
    """y0 − y1 = 2x − 1 on [0, 1] (least margin −1 at x = 0): −1 passes, the next float up fails."""
    net = _linear_net([[1.0], [-1.0]], [0.0, 1.0], dtype="float64")
    lo, hi = fx.real_box(np.zeros((1, 1)), np.ones((1, 1)))
    evidence = _evidence(net, lo, hi, labels=[0])
    wide = (np.full((1, 2), -10.0), np.full((1, 2), 10.0))
    assert evidence.violations("tight", *wide, np.array([[-1.0]])) == []
    found = evidence.violations("high", *wide, np.array([[np.nextafter(-1.0, 0)]]))
    assert found and {v.quantity for v in found} == {"margin"} and "exact" in {v.source for v in found}


def test_round_to_is_correctly_rounded():
    """1 + 2⁻²⁴ + 2⁻⁶⁰ rounds up in float32 (a float64 detour rounds to the tie and then down to 1)."""
    q = Fraction(1) + Fraction(1, 2**24) + Fraction(1, 2**60)
    assert fx.round_to(q, "float32") == np.float32(1 + 2**-23)
    assert fx.round_to(Fraction(1) + Fraction(1, 2**24), "float32") == np.float32(1)    # tie to even
    assert fx.round_to(Fraction(1, 3), "float64") == 1 / 3


@pytest.mark.parametrize("dtype", DTYPES)
def test_fma_rounds_once(dtype):
    """fx.fma(a, b, c) is a b + c rounded once, checked in Fractions (cancellation, huge and tiny terms)."""
    rng = np.random.default_rng(7)
    a = (rng.standard_normal(600) * rng.choice([1e-30, 1.0, BIG[dtype]], 600)).astype(dtype)
    b = rng.standard_normal(600).astype(dtype)
    c = (-(a.astype(np.float64) * b) * rng.choice([1.0, 1 + 1e-7, 1 - 1e-12], 600)).astype(dtype)
    c[:50] = 0
    out = fx.fma(a, b, c)
    for x, y, z, got in zip(a, b, c, out):
        assert got == fx.round_to(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)), dtype), (x, y, z)


@pytest.mark.skipif(not HAVE_MPMATH, reason="mpmath is not installed")
def test_sigmoid_and_tanh_enclosures_are_narrow_and_ordered():
    """lo ≤ hi, width ≤ 2^-250, and lo agrees with float64 σ and tanh (saturated arguments included)."""
    references = ((fx.sigmoid_enclosure, lambda v: 0.5 * (1 + np.tanh(v / 2))), (fx.tanh_enclosure, np.tanh))
    for q in (Fraction(-30), Fraction(-1, 7), Fraction(0), Fraction(3, 2), Fraction(2000), Fraction(-2000)):
        for enclosure, reference in references:
            lo, hi = enclosure(q)
            assert lo <= hi and hi - lo <= Fraction(1, 2**250)
            assert abs(float(lo) - reference(float(q))) <= 1e-15
    assert fx.sigmoid_enclosure(Fraction(0)) == (Fraction(1, 2), Fraction(1, 2))


@settings(max_examples=20)
@given(st.data())
def test_evaluators_agree_with_refcert_forward(data):
    """The exact and float evaluators read the layers as refcert does (checked up to rounding: this is a
    test of the evaluators' semantics, not of soundness)."""
    case = data.draw(st.one_of(fully_connected(), convolutional()), label="network")
    net, rng = case.net, np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.uniform(-1, 1, (3,) + case.shape).astype(case.dtype)
    reference = fx.refcert_forward(net, x)
    tol = 1e-4 if case.dtype == "float32" else 1e-10
    exact = fx.exact_forward(net, x)
    assert np.allclose(np.asarray(exact.lo, dtype=float), reference, rtol=tol, atol=tol)
    for source, y in fx.float_evaluations(net, x).items():
        assert y.dtype == np.dtype(case.dtype), source
        assert np.allclose(y, reference, rtol=tol, atol=tol), source
