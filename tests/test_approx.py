"""Interval universal approximation (refcert/approx.py, proofs/universal_approximation.md).

Functions with an exactly known range on every box (piecewise linear in 1-D, g(x0) + h(x1), |x0 − x1|,
coordinate-wise monotone); the theorem's inclusions checked with refcert's Box domain on large, small
and point boxes; the gadget lemmas; the chain-instead-of-tree pitfall; the expression evaluator.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refcert import approx, domains
from refcert.expr import ExpressionError, compile_expression

TOL = 1e-9


def box_bounds(net, lo, hi, domain="box"):
    lower, upper = net(domains.get(domain).from_bounds(np.asarray(lo, float), np.asarray(hi, float))).bounds()
    return lower.numpy()[:, 0], upper.numpy()[:, 0]


def random_boxes(rng, m, count=300):
    """Large, small and point boxes in [0,1]^m, (count, m) each."""
    c = rng.uniform(0, 1, (count, m))
    r = rng.choice([0.5, 0.05, 0.0], size=(count, 1)) * rng.uniform(0, 1, (count, m))
    return np.clip(c - r, 0, 1), np.clip(c + r, 0, 1)


def check_theorem(result, f, oracle, rng, m, domain="box", inner=True, count=300):
    delta = result.plan.delta
    lo, hi = random_boxes(rng, m, count)
    l, u = oracle(lo, hi)
    n_lo, n_hi = box_bounds(result.net, lo, hi, domain)
    assert np.all(n_lo >= l - delta - TOL) and np.all(n_hi <= u + delta + TOL), \
        f"outer inclusion fails by {max(np.max(l - delta - n_lo), np.max(n_hi - u - delta)):.3g}"
    if inner:
        assert np.all(n_lo <= l + delta + TOL) and np.all(n_hi >= u - delta - TOL), \
            f"inner inclusion fails by {max(np.max(n_lo - l - delta), np.max(u - delta - n_hi)):.3g}"
        x = rng.uniform(0, 1, (200, m))
        assert np.max(np.abs(result.net(x).numpy()[:, 0] - f(x))) <= delta + TOL


# ---------------------------------------------------------------- functions with exact ranges
def piecewise_linear(values):
    knots = np.linspace(0, 1, len(values))

    def f(x):
        return np.interp(x, knots, values)

    def oracle(a, b):  # the extremes are at a, b or at a knot inside [a, b]
        inside = (knots[None] >= a[:, None]) & (knots[None] <= b[:, None])
        kv = np.where(inside, values[None], np.nan)
        ends = np.stack([f(a), f(b)], 1)
        return np.fmin(np.nanmin(np.c_[kv, ends], 1), ends.min(1)), np.fmax(np.nanmax(np.c_[kv, ends], 1), ends.max(1))
    return f, oracle, float(np.max(np.abs(np.diff(values))) * (len(values) - 1))


pieces = st.lists(st.floats(-1, 1), min_size=2, max_size=5).map(np.array)


@settings(max_examples=12)
@given(pieces, st.sampled_from([0.15, 0.3]), st.booleans(), st.integers(0, 2**31))
def test_theorem_1d_piecewise_linear(values, delta, use_oracle, seed):
    g, g_range, lip = piecewise_linear(values)
    f = lambda X: g(X[:, 0])
    oracle = lambda lo, hi: g_range(lo[:, 0], hi[:, 0])
    result = approx.interval_network(f, [0], [1], delta, lipschitz=lip,
                                     range_oracle=oracle if use_oracle else None)
    check_theorem(result, f, oracle, np.random.default_rng(seed), 1)


def separable_sum(v0, v1):
    g, g_range, lip_g = piecewise_linear(v0)
    h, h_range, lip_h = piecewise_linear(v1)

    def oracle(lo, hi):
        (a, b), (c, d) = g_range(lo[:, 0], hi[:, 0]), h_range(lo[:, 1], hi[:, 1])
        return a + c, b + d
    return (lambda X: g(X[:, 0]) + h(X[:, 1])), oracle, lip_g + lip_h


def abs_difference():
    def oracle(lo, hi):
        gap = np.maximum(lo[:, 0] - hi[:, 1], lo[:, 1] - hi[:, 0])
        return np.maximum(gap, 0), np.maximum(np.abs(hi[:, 0] - lo[:, 1]), np.abs(hi[:, 1] - lo[:, 0]))
    return (lambda X: np.abs(X[:, 0] - X[:, 1])), oracle, 2.0


def monotone():  # increasing in each coordinate on [0,1]^2: extremes at the corners
    f = lambda X: X[:, 0] * X[:, 1] + 0.5 * X[:, 0]
    return f, (lambda lo, hi: (f(lo), f(hi))), 2.5


@settings(max_examples=8)
@given(st.sampled_from(["sum", "absdiff", "monotone"]), pieces, pieces, st.sampled_from([0.4, 0.6]),
       st.booleans(), st.integers(0, 2**31))
def test_theorem_2d(kind, v0, v1, delta, use_oracle, seed):
    f, oracle, lip = {"sum": lambda: separable_sum(v0 / 2, v1 / 2), "absdiff": abs_difference,
                      "monotone": monotone}[kind]()
    result = approx.interval_network(f, [0, 0], [1, 1], delta, lipschitz=lip,
                                     range_oracle=oracle if use_oracle else None)
    check_theorem(result, f, oracle, np.random.default_rng(seed), 2)


def test_rescaled_domain_and_other_domains():
    """Γ ≠ [0,1]^m (rescaling inside the first layer); outer inclusion for the zonotope/DeepPoly domains."""
    f, oracle, lip = abs_difference()
    lower, upper = np.array([-2.0, 1.0]), np.array([1.0, 1.5])
    F = lambda X: f((X - lower) / (upper - lower))  # |x0' − x1'|: ℓ∞-Lipschitz 1/3 + 1/0.5
    result = approx.interval_network(F, lower, upper, 0.8, lipschitz=1 / 3 + 2)
    rng = np.random.default_rng(0)
    wrapped = approx.IntervalApproximation(_scaled_net(result.net, lower, upper), result.plan, result.size)
    check_theorem(wrapped, f, oracle, rng, 2)
    # The theorem is about interval analysis only: DeepZono's ReLU relaxation (lower bound λ·l < 0) loses
    # the cancellations the min gadget relies on, and its bounds exceed [l − δ, u + δ] by several units
    # (measured; proof, Remark 3).  For those domains check soundness on these networks instead.
    lo, hi = random_boxes(rng, 2, 12)
    x = lo + (hi - lo) * rng.uniform(size=(64,) + lo.shape)
    values = wrapped.net(x.reshape(-1, 2)).numpy()[:, 0].reshape(64, 12)
    for name in ("deeppoly", "deepzono"):
        if name not in domains.names():
            continue
        n_lo, n_hi = box_bounds(wrapped.net, lo, hi, name)
        assert np.all(values >= n_lo - 1e-7) and np.all(values <= n_hi + 1e-7), name


def _scaled_net(net, lower, upper):
    """net ∘ (x' ↦ lower + (upper − lower)·x'): lets the [0,1]^m checks run on a rescaled Γ."""
    from refcert import nn
    first = net.layers[0]
    W, b = first.params["weight"].numpy(), first.params["bias"].numpy()
    layer = approx._linear(W * (upper - lower)[None], b + W @ lower)
    return nn.Sequential(layer, *net.layers[1:])


# ---------------------------------------------------------------- gadget lemmas
def min_net(n, tree):
    """v ↦ min(v) for v ≤ 1 (leaf z = 1 − v, then the min tree) as a Sequential."""
    from refcert import nn
    layers = [approx._linear(-np.eye(n), np.ones(n)), nn.ReLU()]
    template = approx._template(tree, n)
    for i, (W, b) in enumerate(template):
        layers.append(approx._linear(W, b))
        if i < len(template) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@settings(max_examples=25)
@given(st.integers(1, 3), st.integers(0, 2**31))
def test_min_gadget_lemma(m, seed):
    """Lemma 3: exact on points; [1,1] on all-ones; upper ≤ 2^−d·Σ_j b_j (padded with 1); sound."""
    n, rng = 2 * m, np.random.default_rng(seed)
    d = int(np.ceil(np.log2(n)))
    net = min_net(n, approx.balanced_tree(n))
    b = np.minimum(rng.uniform(-3, 1.5, (50, n)), 1)
    a = b - rng.choice([0, 0.1, 5], (50, n)) * rng.uniform(0, 1, (50, n))
    lo, hi = box_bounds(net, a, b)
    assert np.all(hi <= (b.sum(1) + (2**d - n)) / 2**d + TOL)
    v = a + (b - a) * rng.uniform(size=(50, n))
    assert np.allclose(net(v).numpy()[:, 0], v.min(1), atol=TOL)
    assert np.all(lo <= v.min(1) + TOL) and np.all(v.min(1) <= hi + TOL)
    ones = np.ones((1, n))
    assert np.allclose(box_bounds(net, ones, ones), 1.0, atol=TOL)


def bump_net(m, M, alpha, beta, tree=None):
    """A network computing exactly φ_c (n = ξ_0 + h·R1(φ_c) with ξ_0 = 0, h = 1, and φ_c ≤ 1)."""
    d = int(np.ceil(np.log2(2 * m)))
    plan = approx.Plan(np.zeros(m), np.ones(m), 1.0, M, d, 2**d, 0.0, 0.0, 0.0, 1.0, 1,
                       np.array([alpha]), np.array([beta]), np.array([0]), np.array([1]))
    return approx.build_net(plan, tree)


def bump_cases(rng, m, M, count=400):
    alpha = rng.integers(0, M, m)
    beta = np.array([rng.integers(a + 1, M + 1) for a in alpha])
    lo, hi = random_boxes(rng, m, count)
    # targeted half: B straddles c widely in every coordinate but one, where it just misses c^+ (the
    # case where the min tree's halving of the far leaf's deficit matters, Lemma 3)
    t = slice(count // 2, None)
    lo[t], hi[t] = rng.uniform(0, 1, lo[t].shape) * alpha / M, beta / M + rng.uniform(0, 1, hi[t].shape) * (1 - beta / M)
    for row in range(count // 2, count):
        i = rng.integers(m)
        gap = rng.uniform(1, 2) / M
        if alpha[i] >= 1 and (beta[i] == M or rng.uniform() < 0.5):
            hi[row, i] = max(alpha[i] / M - gap, 0.0)
            lo[row, i] = max(hi[row, i] - rng.uniform(0, 0.3), 0.0)
        elif beta[i] < M:
            lo[row, i] = min(beta[i] / M + gap, 1.0)
            hi[row, i] = min(lo[row, i] + rng.uniform(0, 0.3), 1.0)
    inside = np.all((lo >= alpha / M) & (hi <= beta / M), 1)
    misses = np.any((hi <= (alpha - 1) / M) | (lo >= (beta + 1) / M), 1)
    return alpha, beta, lo, hi, inside, misses


@settings(max_examples=25)
@given(st.integers(1, 3), st.integers(2, 8), st.integers(0, 2**31))
def test_bump_lemma(m, M, seed):
    """Lemma 4: φ_c#(B) ⊆ [0,1]; = [1,1] if B ⊆ c; = [0,0] if B misses the open box c enlarged by 1/M."""
    alpha, beta, lo, hi, inside, misses = bump_cases(np.random.default_rng(seed), m, M)
    lower, upper = box_bounds(bump_net(m, M, alpha, beta), lo, hi)
    assert np.all(lower >= -TOL) and np.all(upper <= 1 + TOL)
    assert np.allclose(lower[inside], 1, atol=1e-9) and np.allclose(upper[inside], 1, atol=1e-9)
    assert np.allclose(upper[misses], 0, atol=1e-9)


def test_chain_instead_of_balanced_tree_breaks_the_bump_lemma():
    """With min as a chain (depth 2m − 1) but L = 2^⌈log2 2m⌉, a box missing c^+ gets φ_c#(B) > 0 (m = 3).

    For m ≤ 2 a chain happens to be safe: the far leaf's sibling coordinate leaf is [1,1], an exact
    no-op for min2 on intervals, so the far leaf's effective weight is still ≥ 2^−d (proof, Remark)."""
    rng, m, M = np.random.default_rng(0), 3, 10
    worst = {}
    for name, tree in (("balanced", None), ("chain", approx.chain_tree(2 * m))):
        alpha, beta = np.array([5, 3, 3]), np.array([8, 6, 6])
        count = 2000
        lo, hi = rng.uniform(0, 1, (count, m)), rng.uniform(0, 1, (count, m))
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
        hi[:, 0] = np.minimum(hi[:, 0], (alpha[0] - 1) / M)   # B misses c^+ in x0
        lo[:, 0] = np.minimum(lo[:, 0], hi[:, 0])
        worst[name] = box_bounds(bump_net(m, M, alpha, beta, tree), lo, hi)[1].max()
    assert worst["balanced"] <= TOL
    assert worst["chain"] > 0.25, f"the chain variant was expected to break Lemma 4, got {worst}"


# ---------------------------------------------------------------- size refusal, expressions, CLI
def test_size_refusal_before_allocation():
    f = lambda X: np.sin(3 * X[:, 0]) + np.abs(X[:, 1])
    with pytest.raises(approx.ApproximationTooLarge, match="would need .* ReLU neurons"):
        approx.interval_network(f, [0, 0], [1, 1], 0.3, lipschitz=4, max_neurons=100)
    with pytest.raises(approx.ApproximationTooLarge, match="MiB"):
        approx.interval_network(f, [0, 0], [1, 1], 0.01, lipschitz=4)  # table of 80 million boxes
    result = approx.interval_network(f, [0, 0], [1, 1], 0.6, lipschitz=4)
    assert result.size.parameters == sum(p.numpy().size for p in result.net.parameters())
    assert result.size.neurons == sum(l.out_features for l in result.net.layers[:-1] if l.op == "linear")


@pytest.mark.parametrize("text", ["__import__('os')", "x0.real", "().__class__", "y + 1", "x2",
                                  "np.sin(x0)", "sin(x0, 1)", "open('f')", "[x0][0]", "True", "lambda: 1"])
def test_expression_rejects(text):
    with pytest.raises(ExpressionError):
        compile_expression(text, 2)


def test_expression_evaluates():
    x = np.random.default_rng(0).uniform(-1, 1, (10, 2))
    f = compile_expression("sin(3*x0) + abs(x1) - maximum(x0, x1)**2 / (1 + exp(-x1)) + pi*e", 2)
    expected = np.sin(3 * x[:, 0]) + abs(x[:, 1]) - np.maximum(x[:, 0], x[:, 1])**2 / (1 + np.exp(-x[:, 1])) + np.pi * np.e
    assert np.allclose(f(x), expected)
    with pytest.raises(ExpressionError, match="'y'"):
        compile_expression("x0 + y", 2)


def test_cli_builds_and_saves(tmp_path, capsys):
    import refcert
    from refcert.cli import main
    out = tmp_path / "net.npz"
    assert main(["approx", "--fn", "abs(x0 - 0.5)", "--lower", "0", "--upper", "1", "--delta", "0.2",
                 "--lipschitz", "1", "--out", str(out)]) == 0
    net = refcert.load(out)
    x = np.linspace(0, 1, 101)[:, None]
    assert np.max(np.abs(net(x).numpy()[:, 0] - np.abs(x[:, 0] - 0.5))) <= 0.2 + TOL
    assert "ReLU neurons" in capsys.readouterr().out
    assert main(["approx", "--fn", "__import__('os')", "--lower", "0", "--upper", "1", "--delta", "0.2",
                 "--lipschitz", "1", "--out", str(out)]) == 1
