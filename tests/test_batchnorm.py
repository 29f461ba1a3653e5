"""``nn.BatchNorm`` (op "batchnorm"): its forward passes, gradients, training-mode abstract pass, every
domain's transformer (zero tolerance against exact arithmetic and IEEE-754 evaluations), DeepPoly's
receptive-field rule, model files, ONNX and the exact MILP.

Semantics under test (refcert/nn.py): in evaluation mode the layer is y = x·scale + shift per channel
with scale = γ/√(running_var + eps) and shift = β − running_mean·scale (``layer.arguments``; the channel
is the first feature axis, one constant for everything when there is one channel).  In training mode a
concrete batch is normalised with its own mean and biased variance over every axis but the channel
axis, which move the running statistics (momentum; unbiased variance, as PyTorch), and an abstract
element uses the statistics of the last concrete batch.

The soundness checker (``violations``) is the one of tests/test_fp_property.py: sampled real points
evaluated in Fractions, float points in every summation order (FMA included), refcert's pass and
onnxruntime; no tolerance.  It is shown to catch deliberately broken transformers (the planted bugs at
the end).
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refcert
from refcert import autodiff as ad
from refcert import domains, fp, interpret, nn, spec
from refcert.autodiff import Tensor, no_grad
from refcert.certify import ball_domains
from refcert.domains import backsub, box, line, patches, point, zonotope
from tests import fp_exact as fx
from tests.strategies import assert_inside, networks, sample_points

HAVE_MPMATH = importlib.util.find_spec("mpmath") is not None
HAVE_ONNX = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None
DOMAINS = ball_domains()   # every sound set domain: box, the zonotopes, deeppoly, crown-ibp, alpha-crown, approxline


def _bn(channels, dtype, rng, gamma=None, beta=None, mean=None, var=None, eps=1e-5, momentum=0.1):
    """A BatchNorm with the given (or random) statistics: γ of both signs, one of them tiny."""
    layer = nn.BatchNorm(channels, eps=eps, momentum=momentum, dtype=dtype)
    if gamma is None:
        gamma = rng.uniform(0.3, 2.0, channels) * np.where(np.arange(channels) % 2, -1.0, 1.0)
        if channels > 2:
            gamma[2] = 1e-3
    values = {"weight": gamma, "bias": rng.uniform(-1, 1, channels) if beta is None else beta,
              "running_mean": rng.uniform(-1, 1, channels) if mean is None else mean,
              "running_var": rng.uniform(0.05, 3.0, channels) if var is None else var}
    for key, value in values.items():
        layer.params[key].value = np.asarray(value, dtype=dtype).reshape(channels)
    return layer


def _numpy_batchnorm(x, gamma, beta, mean, var, eps):
    """The textbook formula (x − mean)/√(var + eps)·γ + β, channel axis 1 (or everything for C = 1)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    r = lambda v: np.reshape(v, shape)  # noqa: E731
    return (x - r(mean)) / np.sqrt(r(var) + eps) * r(gamma) + r(beta)


# --- forward passes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 3), (5, 3, 4, 4), (4, 1, 3, 3), (7, 1)])
@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_training_forward_is_batch_normalisation(shape, momentum):
    rng = np.random.default_rng(1)
    C = shape[1]
    layer = _bn(C, "float64", rng, momentum=momentum, eps=1e-3)
    x = rng.normal(1.0, 2.0, shape)
    old_mean, old_var = (layer.params[k].value.copy() for k in ("running_mean", "running_var"))
    gamma, beta = layer.params["weight"].value, layer.params["bias"].value
    nn.set_training(layer, True)
    assert layer.training and layer.batch_stats is None
    y = layer(Tensor(x)).numpy()
    axes = (0,) + tuple(range(2, x.ndim))
    mean, var = x.mean(axis=axes), x.var(axis=axes)            # biased variance
    count = x.size // C
    np.testing.assert_allclose(y, _numpy_batchnorm(x, gamma, beta, mean, var, 1e-3), rtol=1e-12, atol=1e-12)
    # the batch normalised with its own statistics: per channel mean β and standard deviation |γ|·√(var/(var+eps))
    np.testing.assert_allclose(y.mean(axis=axes), beta, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(y.std(axis=axes), np.abs(gamma) * np.sqrt(var / (var + 1e-3)), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.batch_stats[0].numpy(), mean, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(layer.batch_stats[1].numpy(), var, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(layer.params["running_mean"].value, (1 - momentum) * old_mean + momentum * mean,
                               rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(layer.params["running_var"].value,
                               (1 - momentum) * old_var + momentum * var * count / (count - 1), rtol=1e-13, atol=1e-13)
    # a second batch moves them again, from where the first left them
    before = layer.params["running_mean"].value.copy()
    x2 = rng.normal(-1.0, 0.5, shape)
    layer(Tensor(x2))
    np.testing.assert_allclose(layer.params["running_mean"].value,
                               (1 - momentum) * before + momentum * x2.mean(axis=axes), rtol=1e-13, atol=1e-13)
    nn.set_training(layer, False)
    assert not layer.training and layer.batch_stats is None


def test_training_mode_keeps_float32():
    rng = np.random.default_rng(1)
    layer = nn.set_training(_bn(2, "float32", rng), True)
    x = rng.normal(size=(5, 2, 3, 3)).astype(np.float32)
    y = layer(Tensor(x)).numpy()
    assert y.dtype == np.float32
    assert all(layer.params[k].value.dtype == np.float32 for k in layer.params)
    p = {k: layer.params[k].value.astype(np.float64) for k in ("weight", "bias")}
    wide = x.astype(np.float64)
    np.testing.assert_allclose(y, _numpy_batchnorm(wide, p["weight"], p["bias"], wide.mean(axis=(0, 2, 3)),
                                                   wide.var(axis=(0, 2, 3)), layer.eps), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(4, 3), (3, 3, 4, 4), (2, 1, 3, 3), (3, 5)])
def test_evaluation_forward_is_the_affine_map_of_the_running_statistics(dtype, shape):
    """Bitwise x·scale + shift with scale = γ/√(var + eps), shift = β − mean·scale computed in the dtype;
    the running statistics do not move; C = 1 broadcasts one constant over every feature."""
    rng = np.random.default_rng(2)
    C = 1 if shape == (3, 5) else shape[1]
    layer = _bn(C, dtype, rng)
    x = rng.normal(size=shape).astype(dtype)
    p = {k: layer.params[k].value.copy() for k in layer.params}
    scale = p["weight"] / np.sqrt(p["running_var"] + np.asarray(layer.eps, dtype))
    shift = p["bias"] - p["running_mean"] * scale
    q = layer.arguments(None)
    assert np.array_equal(q["scale"].numpy(), scale) and np.array_equal(q["shift"].numpy(), shift)
    assert q["scale"].numpy().dtype == np.dtype(dtype)
    cs = (C,) + (1,) * (len(shape) - 2) if C > 1 else (1,)
    y = layer(Tensor(x)).numpy()
    assert y.dtype == np.dtype(dtype)
    assert np.array_equal(y, x * scale.reshape(cs) + shift.reshape(cs))
    tol = 1e-5 if dtype == "float32" else 1e-12
    wide = x.astype(np.float64)
    textbook = (wide - p["running_mean"].reshape(cs)) / np.sqrt(p["running_var"].reshape(cs) + layer.eps) \
        * p["weight"].reshape(cs) + p["bias"].reshape(cs)
    np.testing.assert_allclose(y, textbook, rtol=tol, atol=tol)
    assert all(np.array_equal(layer.params[k].value, p[k]) for k in p)


def test_a_bad_input_in_training_mode_is_refused():
    layer = nn.set_training(nn.BatchNorm(3, dtype="float64"), True)
    with pytest.raises(ValueError, match=r"BatchNorm\(3\) takes \(batch, 3, \.\.\.\)"):
        layer(Tensor(np.zeros((2, 4))))
    with pytest.raises(ValueError, match="channels >= 1"):
        nn.BatchNorm(0)
    with pytest.raises(ValueError, match="momentum"):
        nn.BatchNorm(2, momentum=1.5)


# --- gradients ------------------------------------------------------------------------------------------
def _autograd_batchnorm(x, gamma, beta, eps):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = anp.mean(x, axis=axes)
    centred = x - anp.reshape(mean, shape)
    var = anp.mean(centred * centred, axis=axes)
    return centred / anp.sqrt(anp.reshape(var, shape) + eps) * anp.reshape(gamma, shape) + anp.reshape(beta, shape)


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 3, 3), (4, 1, 2, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_gradients_match_autograd(shape, training):
    """d loss / d(x, γ, β) through BatchNorm (the batch statistics depend on x in training mode) and a
    Linear head, against HIPS autograd; the running statistics never get a gradient."""
    rng = np.random.default_rng(3)
    C = shape[1]
    layer = _bn(C, "float64", rng, eps=1e-2)
    n_features = int(np.prod(shape[1:]))
    head = nn.Linear(n_features, 3, rng=rng, dtype="float64")
    net = nn.Sequential(layer, nn.Flatten(), head)
    nn.set_training(net, training)
    x = rng.normal(size=shape)
    labels = rng.integers(0, 3, shape[0])
    W, b = head.params["weight"].value, head.params["bias"].value
    mean, var = layer.params["running_mean"].value.copy(), layer.params["running_var"].value.copy()

    def loss(x, gamma, beta):
        if training:
            y = _autograd_batchnorm(x, gamma, beta, layer.eps)
        else:
            cs = (1, -1) + (1,) * (x.ndim - 2)
            scale = gamma / anp.sqrt(var + layer.eps)
            y = x * anp.reshape(scale, cs) + anp.reshape(beta - mean * scale, cs)
        z = anp.reshape(y, (shape[0], -1)) @ W.T + b
        z = z - anp.max(z, axis=1, keepdims=True)
        return anp.mean(anp.log(anp.sum(anp.exp(z), axis=1)) - z[np.arange(shape[0]), labels])

    gamma, beta = layer.params["weight"].value.copy(), layer.params["bias"].value.copy()
    expected = loss(x, gamma, beta)
    gx, gg, gb = autograd.grad(loss, (0, 1, 2))(x, gamma, beta)
    xt = Tensor(x, requires_grad=True)
    value = ad.cross_entropy(net(xt), labels)
    value.backward()
    np.testing.assert_allclose(value.item(), expected, rtol=1e-12)
    np.testing.assert_allclose(xt.grad, gx, rtol=1e-8, atol=1e-12, err_msg="input gradient")
    np.testing.assert_allclose(layer.params["weight"].grad, gg, rtol=1e-8, atol=1e-12, err_msg="gamma gradient")
    np.testing.assert_allclose(layer.params["bias"].grad, gb, rtol=1e-8, atol=1e-12, err_msg="beta gradient")
    assert layer.params["running_mean"].grad is None and layer.params["running_var"].grad is None


# --- training mode: the abstract pass uses the clean batch's statistics --------------------------------------
def _training_net(rng, dtype="float64"):
    return nn.Sequential(nn.Conv2d(1, 2, 3, 1, 1, rng=rng, dtype=dtype), _bn(2, dtype, rng), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32, 4, rng=rng, dtype=dtype), _bn(4, dtype, rng), nn.ReLU(),
                         nn.Linear(4, 3, rng=rng, dtype=dtype))


def _eval_copy_with(net, statistics):
    """An evaluation-mode copy of ``net`` whose BatchNorms hold the given (mean, var) as running statistics."""
    layers = []
    stats = iter(statistics)
    for layer in net.layers:
        if layer.op == "batchnorm":
            mean, var = next(stats)
            copy = nn.BatchNorm(layer.channels, eps=layer.eps, dtype="float64")
            for key, value in (("weight", layer.params["weight"].value), ("bias", layer.params["bias"].value),
                               ("running_mean", mean), ("running_var", var)):
                copy.params[key].value = np.array(value)
            layer = copy
        layers.append(layer)
    return nn.Sequential(*layers)


def test_abstract_pass_in_training_mode_uses_the_clean_batch_statistics(plain):
    rng = np.random.default_rng(4)
    net = nn.set_training(_training_net(rng), True)
    clean = rng.uniform(0, 1, (6, 1, 4, 4))
    y = net(Tensor(clean)).numpy()
    stats = [(layer.batch_stats[0].numpy().copy(), layer.batch_stats[1].numpy().copy())
             for layer in net.layers if layer.op == "batchnorm"]
    running = [layer.params["running_mean"].value.copy() for layer in net.layers if layer.op == "batchnorm"]
    # the same points as a degenerate set: the same values (up to rounding), running statistics untouched
    lo, hi = net(domains.get("box").linf_ball(clean, 0.0, clip=None)).bounds()
    np.testing.assert_allclose(lo.numpy(), y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(hi.numpy(), y, rtol=1e-12, atol=1e-12)
    assert all(np.array_equal(layer.params["running_mean"].value, r)
               for layer, r in zip([m for m in net.layers if m.op == "batchnorm"], running))
    # other points (a batch of 2): normalised with the clean batch's statistics, not their own
    other = rng.uniform(0, 1, (2, 1, 4, 4))
    expected = _eval_copy_with(net, stats)(Tensor(other)).numpy()
    own = nn.set_training(_training_net(np.random.default_rng(4)), True)(Tensor(other)).numpy()
    assert np.abs(own - expected).max() > 1e-3        # (their own statistics would give other values)
    for name in ("box", "deepzono", "deeppoly", "crown-ibp"):
        lo, hi = net(domains.get(name).linf_ball(other, 0.0, clip=None)).bounds()
        np.testing.assert_allclose(lo.numpy(), expected, rtol=1e-9, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(hi.numpy(), expected, rtol=1e-9, atol=1e-9, err_msg=name)
    # and with a radius, the bounds contain the evaluation-mode copy's outputs of sampled points
    lower, upper = other - 0.05, other + 0.05
    values = np.stack([_eval_copy_with(net, stats)(Tensor(p)).numpy()
                       for p in sample_points(lower, upper, rng, 32)])
    for name in ("box", "deepzono", "deeppoly"):
        lo, hi = net(domains.get(name).from_bounds(lower, upper)).bounds()
        assert_inside(values, lo.numpy(), hi.numpy(), what=name)


def test_abstract_pass_in_training_mode_without_a_batch_is_refused():
    net = nn.set_training(_training_net(np.random.default_rng(5)), True)
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(RuntimeError, match="clean batch"):
        net(domains.get("box").linf_ball(x, 0.1))
    net(Tensor(np.random.default_rng(0).uniform(size=(3, 1, 4, 4))))
    net(domains.get("box").linf_ball(x, 0.1))                 # fine after a batch
    nn.set_training(net, True)                                # a mode switch forgets the batch
    with pytest.raises(RuntimeError, match="clean batch"):
        net(domains.get("deeppoly").linf_ball(x, 0.1))


# --- soundness against exact arithmetic, zero tolerance --------------------------------------------------
def _linear(weight, bias, dtype):
    weight = np.asarray(weight, dtype=np.float64)
    layer = nn.Linear(weight.shape[1], weight.shape[0], dtype=dtype)
    layer.params["weight"].value = weight.astype(dtype)
    layer.params["bias"].value = np.asarray(bias, dtype=dtype)
    return layer


def _cases():
    """name -> (net, input shape, dtype): BatchNorm after linear and conv layers, on the input, with one
    channel, inside a residual block, at the top, with a huge shift (float32's ulp there is 4)."""
    rng = np.random.default_rng(6)
    act = nn.Sigmoid if HAVE_MPMATH else nn.ReLU
    f32, f64 = "float32", "float64"
    cases = {
        "fc-float32": (nn.Sequential(nn.Linear(3, 4, rng=rng, dtype=f32), _bn(4, f32, rng), nn.ReLU(),
                                     nn.Linear(4, 4, rng=rng, dtype=f32), _bn(4, f32, rng), act(),
                                     nn.Linear(4, 3, rng=rng, dtype=f32)), (3,), f32),
        "input-bn-float64": (nn.Sequential(_bn(3, f64, rng), nn.Linear(3, 4, rng=rng, dtype=f64), _bn(4, f64, rng),
                                           nn.ReLU(), nn.Linear(4, 2, rng=rng, dtype=f64), _bn(2, f64, rng)), (3,), f64),
        "conv-float32": (nn.Sequential(nn.Conv2d(1, 2, 3, 1, 1, rng=rng, dtype=f32), _bn(2, f32, rng), nn.ReLU(),
                                       nn.Conv2d(2, 2, 3, 2, 1, rng=rng, dtype=f32), _bn(2, f32, rng), nn.ReLU(),
                                       nn.Flatten(), nn.Linear(8, 3, rng=rng, dtype=f32)), (1, 4, 4), f32),
        "one-channel-float64": (nn.Sequential(_bn(1, f64, rng), nn.Conv2d(1, 1, 2, 1, 0, rng=rng, dtype=f64),
                                              _bn(1, f64, rng, gamma=[-1.5]), nn.ReLU(), nn.AvgPool2d(2, 1),
                                              nn.Flatten(), nn.Linear(4, 2, rng=rng, dtype=f64)), (1, 4, 4), f64),
        "residual-float32": (nn.Sequential(nn.Linear(2, 3, rng=rng, dtype=f32),
                                           nn.Residual(nn.Sequential(_bn(3, f32, rng), nn.ReLU())),
                                           nn.Residual(_bn(3, f32, rng, gamma=[-1.0, -0.5, -2.0]),
                                                       _linear(-np.eye(3), np.zeros(3), f32)),
                                           nn.Linear(3, 2, rng=rng, dtype=f32)), (2,), f32),
        # x·s + 2^25 rounds to a multiple of 4 in float32; the next layer subtracts 2^25 again
        "huge-shift-float32": (nn.Sequential(_bn(2, f32, rng, gamma=[0.7, -1.3], beta=[2.0**25, 2.0**25],
                                                 mean=[0.1, -0.2], var=[1.0, 0.5]),
                                             _linear([[1.0, 0.0], [1.0, -1.0]], [-2.0**25, 0.0], f32)), (2,), f32),
        # the output layer itself: its rounding error has no later layer's error term to hide in
        "top-float32": (nn.Sequential(nn.Linear(2, 3, rng=rng, dtype=f32), nn.ReLU(),
                                      _bn(3, f32, rng, beta=[2.0**25, -0.5, 3.0])), (2,), f32),
    }
    return cases


CASES = _cases()


def _input_sets(name, shape, dtype):
    """(lo, hi Fractions, build(domain), description): a ball, a clipped ball, a tiny ball, a box."""
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    x = rng.uniform(0, 1, (2,) + shape).astype(dtype)
    sets = []
    for eps, clip in ((0.1, None), (1e-7, (0.0, 1.0)), (0.0, None)):
        lo, hi = fx.real_ball(x, eps, clip)
        sets.append((lo, hi, lambda d, eps=eps, clip=clip: d.linf_ball(Tensor(x), eps, clip), f"ball {eps} {clip}"))
    lower = (x - rng.uniform(0, 0.3, x.shape)).astype(dtype)
    upper = np.maximum((x + rng.uniform(0, 0.3, x.shape) * (rng.uniform(size=x.shape) > 0.3)).astype(dtype), lower)
    lo, hi = fx.real_box(lower, upper)
    sets.append((lo, hi, lambda d: d.from_bounds(Tensor(lower), Tensor(upper)), "box"))
    return sets


def violations(net, inputs, names=DOMAINS, seed=0, count=10, n_classes=None):
    """Every sampled exact or float output (and margin) outside any of the domains' bounds: no tolerance."""
    lo, hi, build, _ = inputs
    rng = np.random.default_rng(seed)
    n = n_classes or spec.output_size(net)
    labels = rng.integers(0, n, lo.shape[0])
    evidence = fx.gather_evidence(net, lo, hi, rng, count, labels)
    found = []
    with no_grad(), fx.quiet_floats():
        for name in names:
            domain = domains.get(name)
            lower, upper = interpret.run([net], build(domain)).bounds()
            margin = spec.margin_bounds(net, build(domain), labels, n_classes=n_classes)
            found += evidence.violations(name, lower.numpy(), upper.numpy(), margin.numpy())
    return found


def _n_classes(net):
    try:
        return spec.output_size(net)
    except ValueError:     # a net ending in a BatchNorm
        return net.layers[-1].channels


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_domain_is_sound_on_batchnorm_nets(case):
    net, shape, dtype = CASES[case]
    nn.check_finite(net)
    for k, inputs in enumerate(_input_sets(case, shape, dtype)):
        found = violations(net, inputs, seed=k, n_classes=_n_classes(net))
        assert not found, f"{fx.summarize(found)}\nnet {case}: {net}\ninput set: {inputs[3]}"


def _has_batchnorm(module):
    return getattr(module, "op", None) == "batchnorm" or any(_has_batchnorm(m) for m in module.children())


@settings(max_examples=12, deadline=None)
@given(networks(max_depth=3).filter(lambda drawn: _has_batchnorm(drawn[0])), st.sampled_from(["float32", "float64"]),
       st.sampled_from([0.0, 1e-6, 0.05, 0.3]), st.integers(0, 2**32 - 1))
def test_random_batchnorm_nets_are_sound(drawn, dtype, eps, seed):
    """tests.strategies.networks with a BatchNorm somewhere, in float32 or float64, a linf ball: every
    domain's bounds and margins contain the exact and every float evaluation's outputs."""
    net, shape = drawn
    net.astype(dtype)
    x = np.random.default_rng(seed).uniform(-1, 1, (1,) + shape).astype(dtype)
    lo, hi = fx.real_ball(x, eps, None)
    inputs = (lo, hi, lambda d: d.linf_ball(Tensor(x), eps, None), f"ball {eps}")
    found = violations(net, inputs, seed=seed, count=8)
    assert not found, f"{fx.summarize(found)}\n{dtype} net: {net}"


def test_the_evaluators_read_batchnorm_as_refcert_does():
    """fp_exact's exact and float passes agree with refcert's forward (to rounding), and the huge-shift
    case does round: the float outputs are not the exact ones (so the error term is exercised)."""
    for name, (net, shape, dtype) in CASES.items():
        x = np.random.default_rng(0).uniform(0, 1, (4,) + shape).astype(dtype)
        reference = fx.refcert_forward(net, x)
        tol = 1e-4 if dtype == "float32" else 1e-10
        exact = np.asarray(fx.exact_forward(net, x).lo, dtype=float)
        np.testing.assert_allclose(exact, reference, rtol=tol, atol=tol if "huge" not in name else 8, err_msg=name)
        for source, y in fx.float_evaluations(net, x, onnx=False).items():
            assert y.dtype == np.dtype(dtype)
            if "huge" not in name:
                np.testing.assert_allclose(y, reference, rtol=tol, atol=tol, err_msg=f"{name} {source}")
        for layer in net.layers:      # each BatchNorm alone: the same two roundings as refcert's pass
            if layer.op == "batchnorm":
                z = np.random.default_rng(1).uniform(-2, 2, (4, layer.channels)).astype(dtype)
                alone = nn.Sequential(layer)
                for order in ("sequential", "pairwise", "matmul"):
                    assert np.array_equal(fx.float_forward(alone, z, order), fx.refcert_forward(alone, z)), name
                fused = fx.float_forward(alone, z, "fma")   # x·s + t rounded once
                exact = fx.exact_forward(alone, z).lo
                assert all(f == fx.round_to(q, dtype) for f, q in zip(fused.reshape(-1), exact.reshape(-1))), name
    net, shape, _ = CASES["huge-shift-float32"]
    x = np.random.default_rng(0).uniform(0, 1, (4,) + shape).astype(np.float32)
    exact = np.asarray(fx.exact_forward(net, x).lo, dtype=float)
    assert np.abs(fx.refcert_forward(net, x) - exact).max() > 0.5


def test_batchnorm_alone_in_every_domain():
    """A single BatchNorm layer (flat and image, C = 1 and C > 1) in every domain, float32 and float64."""
    rng = np.random.default_rng(8)
    for dtype in ("float32", "float64"):
        for channels, shape in ((3, (3,)), (2, (2, 3, 3)), (1, (1, 2, 2)), (1, (4,))):
            net = nn.Sequential(_bn(channels, dtype, rng))
            x = rng.uniform(-1, 1, (2,) + shape).astype(dtype)
            lo, hi = fx.real_ball(x, 0.25, None)
            inputs = (lo, hi, lambda d, x=x: d.linf_ball(Tensor(x), 0.25, None), "ball")
            evidence = fx.gather_evidence(net, lo, hi, rng, 10)
            with no_grad():
                for name in DOMAINS:
                    lower, upper = interpret.run([net], inputs[2](domains.get(name))).bounds()
                    found = evidence.violations(name, lower.numpy(), upper.numpy())
                    assert not found, f"{fx.summarize(found)}\n{dtype} {shape}"


def test_exactline_pieces_are_the_net_on_a_batchnorm_relu_net():
    """ExactLine (plain floats, not a sound domain: checked to rounding, as tests/test_line.py does): the
    images of the pieces' ends are the net's outputs there and the net is affine on every piece."""
    net, shape, _ = CASES["input-bn-float64"]
    rng = np.random.default_rng(9)
    a = rng.uniform(-1, 1, (2,) + shape)
    b = a + rng.uniform(-1, 1, a.shape)
    out = net(line.segment(a, b))
    for k, (parts, P) in enumerate(zip(out.items, out.points)):
        t = parts.t
        on = lambda s: a[k][None] + s[:, None] * (b[k] - a[k])[None]   # noqa: E731
        y = net(Tensor(on(t))).numpy()
        np.testing.assert_allclose(P.numpy(), y, rtol=0, atol=1e-10 * (1 + np.abs(y).max()))
        mid = t[:-1] + 0.5 * np.diff(t)
        np.testing.assert_allclose(net(Tensor(on(mid))).numpy(), (y[:-1] + y[1:]) / 2, rtol=0,
                                   atol=1e-10 * (1 + np.abs(y).max()))
    assert sum(len(parts.t) for parts in out.items) > 4      # the ReLU did split the segments


# --- DeepPoly: receptive fields ("patches") against the dense rule -----------------------------------
def _conv_bn_net(rng, dtype="float64"):
    """conv-BN-ReLU twice, then conv-ReLU twice: the rows of the last convolution go down through both
    BatchNorms as patches (rows starting at a BatchNorm take the dense rule: ``patches.plan`` wants a
    convolution on top)."""
    kw = {"rng": rng, "dtype": dtype}
    return nn.Sequential(nn.Normalize([0.2], [0.6], dtype=dtype), nn.Conv2d(1, 3, 3, 1, 1, **kw), _bn(3, dtype, rng),
                         nn.ReLU(), nn.Conv2d(3, 2, 3, 1, 1, **kw), _bn(2, dtype, rng), nn.ReLU(),
                         nn.Conv2d(2, 2, 3, 1, 1, **kw), nn.ReLU(), nn.Conv2d(2, 2, 3, 2, 1, **kw), nn.ReLU(),
                         nn.Flatten(), nn.Linear(72, 3, **kw))


def _bounds_with_rule(net, element_of, flag, monkeypatch, sound=True):
    monkeypatch.setattr(backsub, "PATCHES", flag)
    with no_grad(), fp.use(sound=sound):
        lo, hi = net(element_of(domains.get("deeppoly"))).bounds()
    return lo.numpy(), hi.numpy()


def _patched_calls(net, element_of, monkeypatch):
    """The backsub.bounds calls of one DeepPoly pass that go through a BatchNorm step as patches."""
    calls, real = [], backsub.bounds

    def recording(steps, shape, *args, **kw):
        plan = patches.plan(steps, shape)
        if plan:
            calls.append([s.op for s in steps[len(steps) - plan[0]:] if hasattr(s, "op")])
        return real(steps, shape, *args, **kw)
    monkeypatch.setattr(backsub, "bounds", recording)
    with no_grad():
        net(element_of(domains.get("deeppoly")))
    monkeypatch.setattr(backsub, "bounds", real)
    return calls


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_patches_give_the_dense_bounds_through_batchnorm(dtype, monkeypatch):
    rng = np.random.default_rng(10)
    net = _conv_bn_net(rng, dtype)
    x = rng.uniform(0, 1, (2, 1, 12, 12)).astype(dtype)
    element_of = lambda d: d.linf_ball(x, 0.3)  # noqa: E731
    calls = _patched_calls(net, element_of, monkeypatch)
    assert any(ops.count("batchnorm") == 2 and ops.count("conv2d") == 4 for ops in calls), calls   # not vacuous
    # without the sound policy's slack the two rules compute the same sums in other orders
    plain = {flag: _bounds_with_rule(net, element_of, flag, monkeypatch, sound=False) for flag in (True, False)}
    tol = 1e-5 if dtype == "float32" else 1e-10
    for got, want in zip(plain[True], plain[False]):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    # with it, both are sound and within each other's slack: compare them as tests/test_deeppoly_speedup does
    sound = {flag: _bounds_with_rule(net, element_of, flag, monkeypatch) for flag in (True, False)}
    for side, sign in ((0, 1.0), (1, -1.0)):
        got, want = sign * sound[True][side], sign * sound[False][side]
        slack_patches, slack_dense = sign * plain[True][side] - got, sign * plain[False][side] - want
        assert np.all(slack_patches >= 0) and np.all(slack_dense >= 0)
        gap = got - want
        assert np.all((gap >= -2 * slack_patches - 1e-300) & (gap <= 2 * slack_dense + 1e-300)), gap
    lo, hi = fx.real_ball(x, 0.3, (0.0, 1.0))
    found = fx.gather_evidence(net, lo, hi, rng, 10, orders=("matmul", "pairwise", "fma")).violations(
        "deeppoly (patches)", *sound[True])
    assert not found, fx.summarize(found)


def test_a_planted_patches_rule_without_the_shift_is_caught(monkeypatch):
    """The comparison above can fail: a patches rule that forgets lam·t disagrees with the dense rule."""
    rng = np.random.default_rng(10)
    net = _conv_bn_net(rng)
    x = rng.uniform(0, 1, (1, 1, 12, 12))
    element_of = lambda d: d.linf_ball(x, 0.3)  # noqa: E731
    dense = _bounds_with_rule(net, element_of, False, monkeypatch, sound=False)
    real = patches._through_batchnorm
    monkeypatch.setattr(patches, "_through_batchnorm", lambda patch, step: (real(patch, step)[0], None))
    broken = _bounds_with_rule(net, element_of, True, monkeypatch, sound=False)
    assert max(np.abs(b - d).max() for b, d in zip(broken, dense)) > 1e-3


# --- model files, finiteness checks -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_and_load_keep_the_statistics_and_the_outputs(dtype, tmp_path):
    rng = np.random.default_rng(11)
    net = _training_net(rng, dtype)
    nn.set_training(net, True)
    net(Tensor(rng.uniform(0, 1, (5, 1, 4, 4)).astype(dtype)))          # running statistics moved
    nn.set_training(net, False)
    net.layers[1].eps, net.layers[1].momentum = 1e-3, 0.25            # non-default settings travel too
    x = rng.uniform(0, 1, (3, 1, 4, 4)).astype(dtype)
    refcert.save(net, tmp_path / "bn.npz")
    again = refcert.load(tmp_path / "bn.npz")
    for old, new in zip(net.layers, again.layers):
        assert type(old) is type(new)
        for key, value in old.params.items():
            if isinstance(value, Tensor):
                assert np.array_equal(value.numpy(), new.params[key].numpy()) and \
                    value.numpy().dtype == new.params[key].numpy().dtype, key
        if old.op == "batchnorm":
            assert (new.eps, new.momentum, new.channels, new.training) == (old.eps, old.momentum, old.channels, False)
    assert np.array_equal(again(Tensor(x)).numpy(), net(Tensor(x)).numpy())
    names = set(again.named_parameters())
    assert {"1.running_mean", "1.running_var", "5.weight", "5.bias"} <= names


@pytest.mark.parametrize("key, value, accepted", [
    ("running_var", -1.0, False),          # √ of a negative number: NaN scale
    ("running_var", -1e-5, False),         # var + eps = 0: infinite scale
    ("weight", np.inf, False), ("bias", np.nan, False), ("running_mean", np.inf, False),
    ("running_var", 0.0, True),            # var + eps > 0: a finite affine map
    ("weight", 0.0, True),                 # scale 0: a constant output, finite
])
def test_check_finite_refuses_a_non_finite_batchnorm_map(key, value, accepted):
    layer = _bn(3, "float64", np.random.default_rng(12))
    layer.params[key].value[1] = value
    net = nn.Sequential(nn.Linear(2, 3, dtype="float64"), layer)
    if accepted:
        nn.check_finite(net)
        assert np.all(np.isfinite(layer.arguments(None)["scale"].numpy()))
        return
    message = ("running_var has negative values" if key == "running_var"
               else r"1\.BatchNorm\.\w+ has 1 NaN or infinite")
    with pytest.raises(ValueError, match=message):  # named, and without NumPy warnings first
        nn.check_finite(net)
    with np.errstate(all="ignore"), pytest.raises(ValueError, match="BatchNorm"):   # and so is certification
        refcert.certify(net, np.zeros((1, 2)), np.zeros(1, dtype=int), 0.1, domain="box", attack=False)


# --- ONNX ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAVE_ONNX, reason="onnx and onnxruntime are not installed")
@pytest.mark.parametrize("case", ["fc-float32", "conv-float32", "one-channel-float64", "residual-float32"])
def test_onnx_export_matches_onnxruntime_and_reimports(case, tmp_path):
    import onnx
    net, shape, dtype = CASES[case]
    net = copy.deepcopy(net)           # (astype changes the layers in place)
    if dtype == "float64":
        net.astype("float32")
    x = np.random.default_rng(13).uniform(0, 1, (5,) + shape).astype(np.float32)
    ours = fx.refcert_forward(net, x)
    theirs = fx.onnxruntime_forward(net, x)
    assert theirs is not None and theirs.dtype == np.float32
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-6)   # float32 rounding, other op orders
    path = tmp_path / "bn.onnx"
    refcert.export_onnx(net, path, input_shape=(1,) + shape)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert "BatchNormalization" not in ops and ops.count("Mul") >= 1 and "Add" in ops
    again = refcert.load_onnx(path)
    np.testing.assert_allclose(again(Tensor(x)).numpy(), ours, rtol=1e-5, atol=1e-6)
    # float64 export and import: the same map to float64 rounding
    net64 = nn.Sequential(*CASES[case][0].layers)
    refcert.export_onnx(net64, tmp_path / "bn64.onnx", input_shape=(1,) + shape, dtype="float64")
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(refcert.load_onnx(tmp_path / "bn64.onnx", dtype="float64")(Tensor(x64)).numpy(),
                               fx.refcert_forward(net64, x64.astype(dtype)), rtol=1e-5, atol=1e-6)


# --- the exact MILP -------------------------------------------------------------------------------------
def test_exact_milp_bounds_contain_the_samples_and_are_attained():
    pytest.importorskip("scipy.optimize", reason="the exact oracle needs SciPy's milp")
    from refcert.exact import exact_bounds
    rng = np.random.default_rng(14)
    nets = [nn.Sequential(nn.Linear(2, 3, rng=rng, dtype="float64"), _bn(3, "float64", rng), nn.ReLU(),
                          nn.Linear(3, 3, rng=rng, dtype="float64"), _bn(3, "float64", rng), nn.ReLU(),
                          nn.Linear(3, 2, rng=rng, dtype="float64")),
            nn.Sequential(nn.Conv2d(1, 2, 2, 1, 0, rng=rng, dtype="float64"), _bn(2, "float64", rng), nn.ReLU(),
                          nn.Flatten(), nn.Linear(18, 2, rng=rng, dtype="float64"))]
    for net, shape in zip(nets, [(2,), (1, 4, 4)]):
        x = rng.uniform(0, 1, (1,) + shape)
        lower, upper = x - 0.3, x + 0.3
        lo, hi, argmin, argmax = exact_bounds(net, lower, upper)
        lo, hi = lo.reshape(1, -1), hi.reshape(1, -1)
        out = lambda p: net(Tensor(np.asarray(p))).numpy().reshape(len(p), -1)  # noqa: E731
        np.testing.assert_allclose(np.diag(out(argmin)), lo[0], atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(np.diag(out(argmax)), hi[0], atol=1e-6, rtol=1e-6)
        points = sample_points(lower, upper, rng, count=256)[:, 0]
        assert_inside(out(points)[:, None], lo, hi, rtol=1e-6, atol=1e-6, what="sampled output")
        assert np.any(lo < hi - 1e-3)
        for name in ("box", "deepzono", "deeppoly"):        # and inside the sound domains' bounds
            dlo, dhi = net(domains.get(name).from_bounds(lower, upper)).bounds()
            assert_inside(np.concatenate([lo, hi])[:, None], dlo.numpy().reshape(1, -1), dhi.numpy().reshape(1, -1),
                          rtol=1e-6, atol=1e-6, what=f"exact vs {name}")


# --- the checks can fail: planted bugs are caught --------------------------------------------------------
def _box_signed_radius(x, *, scale, shift):
    """Box's rule with r·s instead of r·|s| (the rest as the real one): wrong for negative γ."""
    nd = x.lower.ndim - 1
    image = lambda m: point.batchnorm(m, scale=ad.abs(scale), shift=ad.abs(shift), feature_ndim=nd)  # noqa: E731
    return box._from_center_radius(point.batchnorm(x.center, scale=scale, shift=shift, feature_ndim=nd),
                                   point.scale_channels(x.radius, scale=scale, feature_ndim=nd),
                                   box._error(x, image, 2, scale))


def _box_without_rounding(x, *, scale, shift):
    """Box's rule in real arithmetic only: no rounding-error radius for the executed x·s + t."""
    nd = x.lower.ndim - 1
    return box._from_center_radius(point.batchnorm(x.center, scale=scale, shift=shift, feature_ndim=nd),
                                   point.scale_channels(x.radius, scale=ad.abs(scale), feature_ndim=nd))


def _zonotope_unsigned_generators(z, *, scale, shift):
    """The zonotope rule with E·|s| instead of E·s: correlations through a negative γ get the wrong sign."""
    real = zonotope.batchnorm(z, scale=scale, shift=shift)
    nd = z.center.ndim - 1
    return dataclasses.replace(real, generators=point.scale_channels(z.generators, scale=ad.abs(scale), feature_ndim=nd))


def _caught(name, planted, case, monkeypatch):
    """(violations with the planted rule, violations with the real one) on ``case``'s input sets."""
    net, shape, dtype = CASES[case]
    sets = _input_sets(case, shape, dtype)
    real_found = [v for k, s in enumerate(sets) for v in violations(net, s, [name], seed=k, n_classes=_n_classes(net))]
    monkeypatch.setitem(domains.get(name).transformers, "batchnorm", planted)
    found = [v for k, s in enumerate(sets) for v in violations(net, s, [name], seed=k, n_classes=_n_classes(net))]
    monkeypatch.undo()
    return found, real_found


@pytest.mark.parametrize("name, planted, case", [
    ("box", _box_signed_radius, "fc-float32"),
    ("box", _box_without_rounding, "top-float32"),
    ("deepzono", _zonotope_unsigned_generators, "residual-float32"),
])
def test_a_planted_unsound_batchnorm_transformer_is_caught(name, planted, case, monkeypatch):
    found, real_found = _caught(name, planted, case, monkeypatch)
    assert found, f"the checker missed the planted {planted.__name__} in {name} on {case}"
    assert not real_found, fx.summarize(real_found)


def test_a_planted_deeppoly_substitution_without_the_shift_is_caught(monkeypatch):
    """The box image stays right, so only the back-substituted bounds of later layers are wrong."""
    real = domains.get("deeppoly").transformers["batchnorm"]

    def planted(x, *, scale, shift):
        element = real(x, scale=scale, shift=shift)
        step = dataclasses.replace(element.steps[-1], params={"scale": scale, "shift": shift * 0.0})
        return dataclasses.replace(element, steps=element.steps[:-1] + (step,))
    found, real_found = _caught("deeppoly", planted, "input-bn-float64", monkeypatch)
    assert found and not real_found


def test_a_network_in_training_mode_is_refused_by_certify_exact_and_export():
    """In training mode every call is a training batch (its own statistics, the running ones move): no
    fixed function to certify, solve or export, so each refuses it by name and leaves the layer alone."""
    rng = np.random.default_rng(3)
    net = nn.Sequential(nn.Linear(2, 3, rng=rng, dtype="float64"), _bn(3, "float64", rng), nn.ReLU(),
                        nn.Linear(3, 2, rng=rng, dtype="float64"))
    nn.set_training(net, True)
    net(Tensor(rng.uniform(0, 1, (8, 2))))
    before = net.layers[1].params["running_mean"].numpy().copy()
    with pytest.raises(ValueError, match="1.BatchNorm is in training mode"):
        refcert.certify(net, np.zeros((1, 2)), np.zeros(1, dtype=int), 0.05, domain="box")
    from refcert import exact
    with pytest.raises(ValueError, match="training mode"):
        exact.exact_bounds(net, np.zeros((1, 2)), np.ones((1, 2)))
    from refcert import attacks
    with pytest.raises(ValueError, match="training mode"):
        attacks.pgd(net, np.zeros((1, 2)), np.zeros(1, dtype=int), 0.05, steps=2)
    assert np.array_equal(net.layers[1].params["running_mean"].numpy(), before)
    nn.set_training(net, False)
    refcert.certify(net, np.zeros((1, 2)), np.zeros(1, dtype=int), 0.05, domain="box")


# --- precision casts (adversarial review, issue 16) ---------------------------------------------------------
def test_a_cast_rounds_the_ops_constants_instead_of_recomputing_them(tmp_path):
    """astype rounds scale and shift (the op's constants) to the new precision, like any layer's weights; a
    recomputation from rounded statistics is another map: here float64's shift 4e-4 against float32's
    recomputed 0 (the review's counterexample: verified, while the float32 execution has margin ≤ 0)."""
    import copy

    from refcert import verdicts
    bn = nn.BatchNorm(2, dtype="float64")
    bn.params["running_mean"].value[...] = [1e4, 0.0]
    bn.params["running_var"].value[...] = 1.0 - 1e-5                        # scale 1
    bn.params["bias"].value[...] = [1e4 + 4e-4, 2e-4]                       # shift (4e-4, 2e-4) in float64
    wide = bn.arguments(None)
    cast = copy.deepcopy(bn).astype("float32")
    narrow = cast.arguments(None)
    for key in ("scale", "shift"):
        assert narrow[key].numpy().dtype == np.float32
        assert np.array_equal(narrow[key].numpy(), wide[key].numpy().astype(np.float32))
    net = nn.Sequential(bn)
    x, labels = np.zeros((1, 2)), np.array([0])
    y32 = verdicts.in_precision(net, "float32")(Tensor(x.astype(np.float32))).numpy()[0]
    for name in ("box", "deeppoly", "deepzono"):
        result = refcert.certify(net, x, labels, 0.0, domain=name, execution="float32", clip=None)
        assert (result.verdicts[0] == "verified") == (y32[0] - y32[1] > 0), (name, y32)
    refcert.save(nn.Sequential(cast), tmp_path / "cast.npz")                # the cast constants are saved
    again = refcert.load(tmp_path / "cast.npz").layers[0]
    assert np.array_equal(again.arguments(None)["shift"].numpy(), narrow["shift"].numpy())
    nn.set_training(nn.Sequential(cast), True)                              # training drops them
    assert "scale" not in cast.params and cast.training


def test_verify_does_not_prove_a_property_its_float32_execution_breaks(tmp_path):
    """A float32 BatchNorm whose shift cancels (β ≈ μ·scale): verify bounds a float64 copy; that copy must
    compute the float32 net's own scale and shift, or it proves 'unsat' while refcert's float32 forward
    violates the property (the review's counterexample)."""
    from refcert.verify import verify
    bn = nn.BatchNorm(1, dtype="float32")
    bn.params["running_mean"].value[...] = 25871.7207
    bn.params["running_var"].value[...] = 0.5896
    with ad.no_grad():
        scale = bn.arguments(None)["scale"].numpy()
    bn.params["bias"].value[...] = np.float32(bn.params["running_mean"].value * scale)
    net = nn.Sequential(bn)
    with ad.no_grad():
        y32 = float(net(Tensor(np.ones((1, 1), np.float32))).numpy()[0, 0])
    path = tmp_path / "p.vnnlib"
    path.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 0.0))\n"
                    f"(assert (<= X_0 1.0))\n(assert (>= Y_0 {y32!r}))\n")      # X_0 = 1 satisfies it
    from refcert.io.vnnlib import read_vnnlib
    assert verify(net, read_vnnlib(path), timeout=20).status != "unsat"


@pytest.mark.parametrize("arguments", [(2.7,), (True,), ("3",), (0,), (3, 0.0), (3, 1e-5, 1.5)])
def test_bad_batchnorm_settings_are_refused(arguments):
    with pytest.raises(ValueError, match="BatchNorm needs"):
        nn.BatchNorm(*arguments)
    with pytest.raises(ValueError, match="float32 or float64"):
        nn.BatchNorm(3, dtype="float16")
