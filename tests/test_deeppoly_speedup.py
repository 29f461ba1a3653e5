"""Issue 16, item 2: DeepPoly's back-substitution of a convolution's neurons through their receptive
fields (``refcert.domains.patches``) against the dense rule it replaces (``backsub.PATCHES = False``),
and item 3: ``domains.get`` imports only the module that registers the domain asked for.

The patches do the dense rule's elementwise operations on the same numbers, but the transposed
convolutions' matrix products and the sums over a layer add the same non-zero terms in another order, so
the bounds may differ in their last bits.  The sound policy's slack covers any order: each bound is
V − S (V the computed value, S the compensated slack plus the error of the last sums) with V within S
of the exact value, so B_patches − B_dense lies in [−2 S_patches, 2 S_dense].  That is what is checked,
bound by bound, on random convolutional networks (S measured as V − B, V computed without any slack).  Where the numbers must be the same (a net
whose back-substitution starts at a linear layer, the gather that replaced the one-hot product), the
comparison has zero tolerance.  Soundness of the patches against exact arithmetic is checked by
tests/test_fp_property.py, which runs under ``no_grad`` and so goes through them."""
from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refcert import domains, fp, nn, spec
from refcert.autodiff import Tensor, enable_grad, no_grad
from refcert.domains import backsub, patches
from tests.strategies import input_boxes, sample_points

FEW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
BOUNDS = backsub.bounds  # the function itself, whatever the tests below put in its place


@contextlib.contextmanager
def _both_rules():
    """Every ``backsub.bounds`` call inside also runs with the dense rule on the same steps; the calls are
    recorded as (steps, shape, input bounds, neurons, patch result, dense result).  The element goes on
    with the patch result."""
    calls = []

    def bounds(steps, shape, input_lower, input_upper, neurons=None, lower=None):
        dense = _with_rule(False, steps, shape, input_lower, input_upper, neurons, lower)
        result = _with_rule(True, steps, shape, input_lower, input_upper, neurons, lower)
        calls.append((steps, shape, input_lower, input_upper, neurons, result, dense))
        return result

    backsub.bounds = bounds
    try:
        yield calls
    finally:
        backsub.bounds = BOUNDS


def _with_rule(use_patches, *args):
    saved, backsub.PATCHES = backsub.PATCHES, use_patches
    try:
        steps, shape, input_lower, input_upper, neurons, lower = args
        return BOUNDS(steps, shape, input_lower, input_upper, neurons=neurons, lower=lower)
    finally:
        backsub.PATCHES = saved


def _unsound_value(steps, shape, input_lower, input_upper, neurons, use_patches):
    """V: the same substitution with no slack anywhere (no step slack or floor, no final error)."""
    bare = tuple(dataclasses.replace(s, slack=None, floor=None) if hasattr(s, "floor") else s for s in steps)
    with fp.use(sound=False), no_grad():  # (patches are used without gradients only)
        return [t.numpy() for t in _with_rule(use_patches, bare, shape, input_lower, input_upper, neurons, None)]


@st.composite
def _conv_nets(draw):
    """(net, input shape): normalize?, then 2–4 convolutions (kernel 1–4, stride 1–2, padding 0–2) each
    followed by an activation and sometimes a pool, ending in the last convolution or in flatten + linear:
    refinement reaches convolutions below convolutions, windows that overhang the border, and pools
    (where the dense rule takes over).  Float64, PyTorch-style random weights, scaled."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kw = {"rng": rng, "dtype": "float64"}
    channels, size = draw(st.integers(1, 2)), draw(st.integers(5, 12))
    shape = (channels, size, size)
    layers = [nn.Normalize(rng.uniform(-0.5, 0.5, channels), rng.uniform(0.5, 2.0, channels), dtype="float64")] \
        if draw(st.booleans()) else []
    for _ in range(draw(st.integers(2, 4))):
        c, h = shape[0], shape[1]
        k, stride, padding = draw(st.integers(1, 4)), draw(st.integers(1, 2)), draw(st.integers(0, 2))
        if (h + 2 * padding - k) // stride + 1 < 1:
            continue
        out = draw(st.integers(1, 3))
        layers.append(nn.Conv2d(c, out, k, stride, padding, **kw))
        h = (h + 2 * padding - k) // stride + 1
        shape = (out, h, h)
        layers.append({"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[
            draw(st.sampled_from(["relu", "relu", "sigmoid", "tanh"]))]())
        if h >= 3 and draw(st.integers(0, 4)) == 0:
            layers.append(draw(st.sampled_from([nn.AvgPool2d, nn.MaxPool2d]))(2, 1))
            shape = (out, h - 1, h - 1)
    if draw(st.booleans()):
        layers += [nn.Flatten(), nn.Linear(int(np.prod(shape)), draw(st.integers(1, 4)), **kw)]
    else:
        layers.append(nn.Conv2d(shape[0], draw(st.integers(1, 2)), 1, 1, 0, **kw))
    net = nn.Sequential(*layers)
    for p in net.parameters():
        p.value = p.value * draw(st.sampled_from([0.5, 1.0, 2.0]))
    return net, (channels, size, size)


@FEW
@given(st.data())
def test_patches_are_the_dense_bounds_within_the_slack(data):
    """Sound policy: each rule's bound B = V − S lies within S of the exact value, so with S measured as
    V − B for each rule, −2 S_patches ≤ B_patches − B_dense ≤ 2 S_dense (lower bounds; upper mirrored)."""
    net, shape = data.draw(_conv_nets(), label="network")
    if data.draw(st.booleans(), label="float32"):
        net.astype("float32")
    lower, upper = data.draw(input_boxes(shape), label="input box")
    dtype = nn.parameter_dtype(net)
    with no_grad(), _both_rules() as calls:
        net(domains.get("deeppoly").from_bounds(lower.astype(dtype), upper.astype(dtype))).bounds()
    for steps, shape_, input_lower, input_upper, neurons, result, dense in calls:
        values = {flag: _unsound_value(steps, shape_, input_lower, input_upper, neurons, flag)
                  for flag in (False, True)}
        for side, sign in ((0, 1.0), (1, -1.0)):  # an upper bound is −(lower bound of −x)
            got, want = sign * result[side].numpy(), sign * dense[side].numpy()
            slack_patches, slack_dense = sign * values[True][side] - got, sign * values[False][side] - want
            assert np.all(slack_patches >= 0) and np.all(slack_dense >= 0)
            gap = np.where(got == want, 0.0, got - want)          # equal infinities: no gap
            assert np.all((gap >= -2 * slack_patches) & (gap <= 2 * slack_dense)), (steps, gap)


def test_random_conv_nets_exercise_the_patches():
    """The property above is not vacuous: random nets like its own go through the patches, with a
    convolution below the top one (a window that grows) and the dense rule finishing below them."""
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.Normalize([0.1], [0.5], dtype="float64"), nn.Conv2d(1, 3, 3, 1, 1, rng=rng, dtype="float64"),
                        nn.ReLU(), nn.Conv2d(3, 4, 3, 2, 1, rng=rng, dtype="float64"), nn.ReLU(),
                        nn.Conv2d(4, 2, 2, 1, 0, rng=rng, dtype="float64"), nn.Tanh(), nn.MaxPool2d(2, 1),
                        nn.Conv2d(2, 2, 1, 1, 0, rng=rng, dtype="float64"), nn.ReLU(), nn.Flatten(),
                        nn.Linear(2 * 4 * 4, 3, rng=rng, dtype="float64"))
    x = rng.uniform(0, 1, (2, 1, 12, 12))
    with no_grad(), _both_rules() as calls:
        net(domains.get("deeppoly").linf_ball(x, 0.1)).bounds()
    plans = [patches.plan(steps, shape) for steps, shape, *_ in calls]
    assert any(p and p[0] >= 4 for p in plans)              # conv, relu, conv, normalize: windows grow
    assert any(p and p[0] < len(steps) for p, (steps, *_) in zip(plans, calls))  # the dense rule finishes
    _assert_rules_agree(calls, 1e-12)


def _assert_rules_agree(calls, tolerance):
    """Every recorded call's patched bounds equal the dense rule's up to ``tolerance`` (relative and absolute)."""
    for *_, result, dense in calls:
        for got, want in zip(result, dense):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=tolerance, atol=tolerance)


@FEW
@given(st.data())
def test_patches_without_the_sound_policy(data):
    """Without slack the two rules still agree up to float64 rounding."""
    net, shape = data.draw(_conv_nets(), label="network")
    lower, upper = data.draw(input_boxes(shape), label="input box")
    with no_grad(), fp.use(sound=False), _both_rules() as calls:
        net(domains.get("deeppoly").from_bounds(lower, upper)).bounds()
    _assert_rules_agree(calls, 1e-9)


@FEW
@given(st.data())
def test_patched_bounds_are_sound_on_sampled_points(data):
    net, shape = data.draw(_conv_nets(), label="network")
    lower, upper = data.draw(input_boxes(shape), label="input box")
    with no_grad():
        lo, hi = (t.numpy() for t in net(domains.get("deeppoly").from_bounds(lower, upper)).bounds())
        values = np.stack([net(Tensor(p)).numpy() for p in sample_points(lower, upper, np.random.default_rng(0))])
    assert np.all(values >= lo - 1e-9) and np.all(values <= hi + 1e-9)


def test_a_linear_top_layer_gets_the_same_numbers(monkeypatch):
    """Back-substitution that starts at a linear layer never uses patches: zero tolerance."""
    rng = np.random.default_rng(1)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, 1, 1, rng=rng), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 36, 5, rng=rng),
                        nn.ReLU(), nn.Linear(5, 3, rng=rng))
    x = rng.uniform(0, 1, (3, 1, 6, 6)).astype(np.float32)
    element = net.layers[3](net.layers[2](net.layers[1](net.layers[0](domains.get("deeppoly").linf_ball(x, 0.1)))))
    results = []
    for flag in (False, True):
        monkeypatch.setattr(backsub, "PATCHES", flag)
        with no_grad():
            results.append([t.numpy() for t in backsub.bounds(element.steps, (5,), element.input_lower,
                                                                element.input_upper)])
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)


def test_refinement_gather_gives_the_one_hot_products_numbers(monkeypatch):
    """``_refine`` puts the refined neurons back with a gather under ``no_grad`` and with a one-hot
    product (which passes gradients) otherwise: the same numbers, zero tolerance."""
    monkeypatch.setattr(backsub, "PATCHES", False)  # the same back-substitution on both sides
    x, y = _mnist_mini(6)
    net = _shipped("convsmall_mnist_diffai_box_0.1")
    margins = []
    for context in (no_grad, enable_grad):
        with context():
            margins.append(spec.margin_bounds(net, domains.get("deeppoly").linf_ball(Tensor(x), 0.1), y).numpy())
    np.testing.assert_array_equal(margins[0], margins[1])


@pytest.mark.parametrize("name", ["convsmall_mnist_diffai_box_0.1", "convbig_mnist_diffai_box_0.2"])
def test_shipped_nets_certify_the_same(name, monkeypatch):
    """certify on the shipped DiffAI nets: the same verdicts, margins equal up to float32 rounding."""
    from refcert import certify
    x, y = _mnist_mini(4)
    net = _shipped(name)
    results = {}
    for flag in (False, True):
        monkeypatch.setattr(backsub, "PATCHES", flag)
        results[flag] = certify(net, x, y, eps=0.1, domain="deeppoly", attack=False, batch_size=2)
    assert results[True].verdicts == results[False].verdicts
    np.testing.assert_allclose(results[True].margins, results[False].margins, rtol=1e-5, atol=1e-5)


def _mnist_mini(n):
    from refcert import datasets
    x, y = datasets.load("mnist-mini", "test")
    return x[:n], y[:n]


def _shipped(name):
    from refcert import weights
    return weights.load(name)


# --- item 3: domains load lazily --------------------------------------------------------------------

def _fresh(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_get_imports_only_the_module_of_the_domain():
    out = _fresh("import sys\nfrom refcert import domains\ndomains.get('deeppoly')\n"
                 "print(' '.join(sorted(m for m in sys.modules if m.startswith('refcert.domains.'))))")
    loaded = set(out.split())
    assert "refcert.domains.deeppoly" in loaded
    assert not loaded & {"refcert.domains.zonotope", "refcert.domains.line", "refcert.domains.line_element"}


def test_each_module_registers_the_names_the_lazy_table_gives_it():
    """``_MODULE_OF`` must say which module registers each domain: import them one at a time (each after
    the ones it imports) and see which names appear."""
    out = _fresh("import importlib\nfrom refcert import domains\nseen = set()\n"
                 "for module in ['box', 'zonotope', 'deeppoly', 'line']:\n"
                 "    importlib.import_module('refcert.domains.' + module)\n"
                 "    print(module, ' '.join(sorted(set(domains._REGISTRY) - seen)))\n"
                 "    seen |= set(domains._REGISTRY)\n")
    for line in out.splitlines():
        module, *registered = line.split()
        assert set(registered) == {n for n, m in domains._MODULE_OF.items() if m == module}, line


def test_names_lists_every_domain_in_a_fixed_order():
    out = _fresh("from refcert import domains\ndomains.get('deeppoly')\ndomains.get('exactline')\n"
                 "print(' '.join(domains.names()))")
    assert out.split() == list(domains._MODULE_OF)
    assert domains.names() == list(domains._MODULE_OF)
    with pytest.raises(ValueError, match="unknown domain 'nope'.*deepzono"):
        domains.get("nope")


@pytest.mark.filterwarnings("ignore:You are comparing a array_api_strict dtype")
def test_patches_run_on_the_array_api_alone():
    """The strict backend (array-api-strict: no einsum, no NumPy indexing) gives the numpy backend's bounds."""
    pytest.importorskip("array_api_strict")
    from refcert import backends
    results = []
    for name in ("numpy", "strict"):
        rng = np.random.default_rng(0)
        with backends.use(name), no_grad():
            net = nn.Sequential(nn.Normalize([0.1], [0.5]), nn.Conv2d(1, 3, 3, 1, 1, rng=rng), nn.ReLU(),
                                nn.Conv2d(3, 4, 3, 2, 1, rng=rng), nn.ReLU(), nn.Conv2d(4, 2, 3, 1, 1, rng=rng),
                                nn.Sigmoid(), nn.Flatten(), nn.Linear(2 * 5 * 5, 3, rng=rng))
            x = backends.current().asarray(rng.uniform(0, 1, (2, 1, 10, 10)).astype(np.float32))
            lo, hi = net(domains.get("deeppoly").linf_ball(Tensor(x), 0.1)).bounds()
            results.append([backends.to_numpy(lo.value), backends.to_numpy(hi.value)])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
