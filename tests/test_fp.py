"""refcert.fp, the floating-point mechanism: its pieces checked exactly (fractions, mpmath), and the verdict
logic built on it (VNN-LIB decimals and strict rows, verify's input splitting, finite parameters)."""
from __future__ import annotations

from fractions import Fraction

import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refcert import fp, nn
from refcert.autodiff import Tensor
from refcert.io import vnnlib
from refcert.verify import verify

DTYPES = ("float32", "float64")
floats01 = st.floats(0.0, 1.0, allow_nan=False)
radii = st.sampled_from([0.0, 1e-12, 1e-9, 1e-7, 3e-3, 0.1, 0.7])


def test_gamma_matches_its_definition_and_refuses_too_long_sums():
    assert fp.gamma(10, "float32") == pytest.approx(10 * 2.0**-24 / (1 - 10 * 2.0**-24), rel=1e-15)
    assert fp.gamma(3, "float64") > 3 * 2.0**-53
    assert fp.gamma(5, None) == 0.0 and fp.unit("exact") == 0.0
    with pytest.raises(ValueError, match="float64"):
        fp.gamma(10**6, "float32")


@given(x=st.lists(floats01, min_size=1, max_size=5), eps=radii, dtype=st.sampled_from(DTYPES),
       clip=st.sampled_from([None, (0.0, 1.0), (0.1, 0.9)]))
def test_ball_outward_contains_and_inward_lies_inside_the_real_ball(x, eps, dtype, clip):
    x = np.array([x], dtype=dtype)
    if clip is not None:
        x = np.clip(x, *clip).astype(dtype)
    lo, hi = (t.numpy() for t in fp.ball(x, eps, clip, outward=True))
    lo_in, hi_in = (t.numpy() for t in fp.ball(x, eps, clip, outward=False))
    assert lo.dtype == hi.dtype == np.dtype(dtype)
    E = Fraction(eps)
    for j in range(x.shape[1]):
        c = Fraction(float(x[0, j]))
        real_lo, real_hi = c - E, c + E
        if clip is not None:
            real_lo, real_hi = max(real_lo, Fraction(clip[0])), min(real_hi, Fraction(clip[1]))
        assert Fraction(float(lo[0, j])) <= real_lo and real_hi <= Fraction(float(hi[0, j]))
        assert real_lo <= Fraction(float(lo_in[0, j])) <= c <= Fraction(float(hi_in[0, j])) <= real_hi
    assert fp.inside(lo_in, x, eps, clip).all() and fp.inside(hi_in, x, eps, clip).all()


def test_the_old_float32_ball_was_a_single_point_and_the_new_one_is_not():
    x = np.array([[0.5]], dtype="float32")
    lo, hi = (t.numpy() for t in fp.ball(x, 1e-9, None, outward=True))
    assert (x - 1e-9 == x).all()  # what the ball used to be
    assert lo[0, 0] < 0.5 < hi[0, 0]


def test_inside_is_exact_at_the_boundary():
    x = np.array([[0.5]])
    eps = 0.1  # 0.5 + 0.1 rounds to 0.6 in float64, which is below the real 0.6000000000000000055...
    on = np.array([[0.5 + 0.1]])
    assert Fraction(float(on[0, 0])) - Fraction(0.5) <= Fraction(eps)
    assert fp.inside(on, x, eps, None).all()
    beyond = np.nextafter(on, 1.0)
    assert Fraction(float(beyond[0, 0])) - Fraction(0.5) > Fraction(eps)
    assert not fp.inside(beyond, x, eps, None).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_enclosures_contain_the_true_value(name, dtype):
    xs = np.array([-150.0, -100.0, -30.0, -19.5, -1e-30, 0.0, 1e-8, 0.3, 2.0, 17.0, 40.0], dtype=dtype)
    lo, hi = (t.numpy() for t in fp.enclose(name, Tensor(xs)))
    mpmath.mp.dps = 60
    for x, a, b in zip(xs, lo, hi):
        exact = 1 / (1 + mpmath.exp(-mpmath.mpf(float(x)))) if name == "sigmoid" else mpmath.tanh(mpmath.mpf(float(x)))
        assert mpmath.mpf(float(a)) <= exact <= mpmath.mpf(float(b)), (name, dtype, x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_has_a_small_relative_error_far_left(dtype):
    from refcert import autodiff as ad
    xs = np.array([-19.5, -30.0, -80.0, -15.0, 5.0], dtype=dtype)
    got = ad.sigmoid(Tensor(xs)).numpy()
    mpmath.mp.dps = 50
    u = float(np.finfo(dtype).eps) / 2
    for x, y in zip(xs, got):
        exact = 1 / (1 + mpmath.exp(-mpmath.mpf(float(x))))
        if exact > np.finfo(dtype).tiny:
            assert abs(mpmath.mpf(float(y)) - exact) <= 8 * u * exact, (dtype, x, y)


def test_up_and_down_step_one_ulp_only_when_sound():
    t = Tensor(np.array([1.0, -2.0], dtype="float32"))
    assert (fp.up(t).numpy() > t.numpy()).all() and (fp.down(t).numpy() < t.numpy()).all()
    with fp.use(sound=False):
        assert (fp.up(t).numpy() == t.numpy()).all()
        assert fp.radius(t, 3) is None
    assert fp.policy().sound  # restored


def test_execution_names_are_checked():
    with pytest.raises(ValueError, match="execution"):
        with fp.use(execution="float16"):
            pass
    with fp.use(execution=np.float32) as policy:
        assert policy.execution == "float32"


# --- VNN-LIB: exact decimals, strict rows ---------------------------------------------------------
def test_vnnlib_numbers_are_exact_and_bounds_rounded_outward(tmp_path):
    path = tmp_path / "p.vnnlib"
    path.write_text("(declare-const X_0 Real) (declare-const Y_0 Real) (declare-const Y_1 Real)\n"
                    "(assert (>= X_0 0.1)) (assert (<= X_0 0.3))\n(assert (> Y_0 Y_1))\n(assert (<= Y_0 0.7))\n")
    [(lo, hi, [spec])] = read = vnnlib.read_vnnlib(path)
    assert read[0].exact_lower == [Fraction(1, 10)] and read[0].exact_upper == [Fraction(3, 10)]
    assert Fraction(float(lo[0])) <= Fraction(1, 10) and Fraction(float(hi[0])) >= Fraction(3, 10)
    assert list(spec.strict) == [True, False]
    assert spec.d_lower[1] <= 0.7 <= spec.d_upper[1] and Fraction(float(spec.d_lower[1])) <= Fraction(7, 10)
    assert Fraction(float(spec.d_upper[1])) >= Fraction(7, 10)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_vnnlib_refuses_non_finite_numbers(tmp_path, bad):
    path = tmp_path / "p.vnnlib"
    path.write_text(f"(declare-const X_0 Real) (declare-const Y_0 Real)\n(assert (>= X_0 0)) (assert (<= X_0 1))\n"
                    f"(assert (>= Y_0 {bad}))\n")
    with pytest.raises(vnnlib.VnnlibError, match="finite"):
        vnnlib.read_vnnlib(path)


def _linear(W, b, dtype="float64"):
    layer = nn.Linear(len(W[0]), len(W), dtype=dtype)
    layer.params["weight"] = Tensor(np.array(W, dtype=dtype), requires_grad=True)
    layer.params["bias"] = Tensor(np.array(b, dtype=dtype), requires_grad=True)
    return layer


def test_strict_unsafe_row_on_an_empty_set_is_never_sat(tmp_path):
    net = nn.Sequential(_linear([[1.0], [1.0]], [0.0, 0.0]))  # y0 ≡ y1, so Y_0 > Y_1 is empty
    path = tmp_path / "p.vnnlib"
    path.write_text("(declare-const X_0 Real) (declare-const Y_0 Real) (declare-const Y_1 Real)\n"
                    "(assert (>= X_0 0)) (assert (<= X_0 1)) (assert (> Y_0 Y_1))\n")
    outcome = verify(net, vnnlib.read_vnnlib(path), execution="float64")
    assert outcome.status in ("unsat", "unknown"), outcome.message  # read as >=, the tie was "sat"
    assert vnnlib.read_vnnlib(path)[0][2][0].strict.all()


def test_splitting_proves_what_no_domain_proves_at_once():
    # y = relu(x) − relu(x) = 0 on x ∈ [−1, 1]: the unsafe set y ≤ −0.5 is empty, but on the whole box Box and
    # DeepZono relax the two ReLUs independently (y ∈ [−1, 1]); on the halves [−1, 0] and [0, 1] they are exact
    net = nn.Sequential(_linear([[1.0], [1.0]], [0.0, 0.0]), nn.ReLU(), _linear([[1.0, -1.0]], [0.0]))
    unsafe = [(np.array([-1.0]), np.array([1.0]), [(np.array([[1.0]]), np.array([-0.5]))])]
    for complete in (False, True):  # branch and bound runs either way; complete adds the MILP
        outcome = verify(net, unsafe, domains=("box", "deepzono"), complete=complete, execution="float64")
        assert outcome.status == "unsat" and outcome.proved_by.get("input splitting") == 1, outcome


def test_absorbed_cancellation_is_sat_never_unsat():
    # h = [2⁵⁴x + 1, 2⁵⁴x], y = h1 − h0 = −1 exactly: the unsafe set y ≥ −0.5 is empty in reals, yet float64
    # executions absorb the +1 (y = 0 at x = 0.75): a sound verifier must not say unsat
    net = nn.Sequential(_linear([[2.0**54], [2.0**54]], [1.0, 0.0]), _linear([[-1.0, 1.0]], [0.0]))
    unsafe = [(np.array([0.74]), np.array([0.76]), [(np.array([[-1.0]]), np.array([0.5]))])]
    outcome = verify(net, unsafe, complete=True, execution="float64")
    assert outcome.status == "sat", outcome  # the real net is safe, but a float64 execution is not
    assert outcome.y[0] == 0.0


@pytest.mark.parametrize("where", ["weight", "bias", "std", "mean"])
def test_non_finite_parameters_are_refused(where):
    from refcert import certify
    layer = _linear([[1.0, 2.0], [0.5, -1.0]], [0.0, 0.0])
    norm = nn.Normalize(mean=[0.1], std=[0.3], dtype="float64")
    if where in ("weight", "bias"):
        value = layer.params[where].numpy().copy()
        value.flat[0] = np.inf if where == "weight" else np.nan
        layer.params[where] = Tensor(value, requires_grad=True)
    else:
        norm.params[where] = Tensor(np.array([np.inf if where == "mean" else 0.0]))
    net = nn.Sequential(norm, layer)
    with pytest.raises(ValueError, match="(?i)finite|std"):
        certify(net, np.array([[0.2, 0.4]]), [0], 0.01, domain="box")
    unsafe = [(np.array([0.0, 0.0]), np.array([1.0, 1.0]), [(np.array([[1.0, -1.0]]), np.array([0.0]))])]
    with pytest.raises(ValueError, match="(?i)finite|std"):
        verify(net, unsafe)


# --- relaxations built in floats hold exactly for their computed coefficients ----------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["relu_deepzono", "relu_box", "relu_diag", "relu_switch", "relu_smooth"])
def test_relu_relaxations_hold_exactly_for_the_computed_slope(name, dtype):
    """relu(x) − lam·x ∈ [mu − nu, mu + nu] on [l, u], checked in rational arithmetic at l, 0 and u (the
    function is piecewise linear with its kinks there) for the float lam, mu, nu actually computed."""
    from refcert.domains import relaxations
    rng = np.random.default_rng(7)
    l = -np.exp(rng.uniform(-20, 5, 4000)).astype(dtype)
    u = np.exp(rng.uniform(-20, 5, 4000)).astype(dtype)
    lam, mu, nu = (t.numpy() for t in getattr(relaxations, name)(Tensor(l), Tensor(u)))
    for args in zip(l, u, lam, mu, nu):
        lo_, up_, a, m, n = (Fraction(float(v)) for v in args)
        for x in (lo_, Fraction(0), up_):
            value = max(x, Fraction(0)) - a * x
            assert m - n <= value <= m + n, (name, dtype, args)


@pytest.mark.parametrize("dtype", DTYPES)
def test_deeppoly_relu_chord_lies_above_relu_exactly(dtype):
    from refcert.domains.deeppoly import relu_lines
    rng = np.random.default_rng(8)
    l = -np.exp(rng.uniform(-20, 5, 4000)).astype(dtype)
    u = np.exp(rng.uniform(-20, 5, 4000)).astype(dtype)
    step = relu_lines(Tensor(l), Tensor(u))
    a_u, b_u = step.upper_slope.numpy(), step.upper_offset.numpy()
    for lo_, up_, a, b in zip(l, u, a_u, b_u):
        a, b = Fraction(float(a)), Fraction(float(b))
        for x in (Fraction(float(lo_)), Fraction(float(up_))):  # relu convex: above at both ends suffices
            assert a * x + b >= max(x, Fraction(0))


# --- found by the adversarial review: overflow of the execution, strict input bounds -----------------
def _overflow_net(dtype):
    """h1 = 1e20·x, h2 = 1e20·h1, y0 = 1e-37·h2, y1 = 1e4: exactly y0 ≈ 1000·x < y1 on [0, 1], but a float32
    execution at x = 1 overflows (h2 = inf, y0 = inf > y1)."""
    return nn.Sequential(_linear([[1e20]], [0.0], dtype), _linear([[1e20]], [0.0], dtype),
                         _linear([[1e-37], [0.0]], [0.0, 1e4], dtype))


@pytest.mark.parametrize("domain", ["box", "deepzono", "hbox", "deeppoly", "crown-ibp"])
def test_an_execution_that_may_overflow_is_never_verified(domain):
    from refcert import certify
    with np.errstate(over="ignore", invalid="ignore"):
        assert np.float32(1e-37) * (np.float32(1e20) * (np.float32(1e20) * np.float32(1.0))) == np.inf
        for net, x, kw in ((_overflow_net("float32"), np.array([[0.5]]), {}),                  # float64 bounds
                           (_overflow_net("float64"), np.array([[0.5]]), {"execution": "float32"})):
            assert certify(net, x, [1], 0.5, domain=domain, **kw).verdicts[0] != "verified"
        # in float64 executions nothing overflows: the same net is verified
        assert certify(_overflow_net("float64"), np.array([[0.5]]), [1], 0.5, domain=domain).verdicts[0] == "verified"


def test_parameters_outside_the_execution_range_are_refused():
    from refcert import certify
    net = nn.Sequential(_linear([[1e39]], [0.0]), _linear([[1.0], [0.0]], [0.0, 1.0]))
    with pytest.raises(ValueError, match="float64"):
        certify(net, np.array([[0.5]]), [1], 0.1, domain="box", execution="float32")
    net = nn.Sequential(_linear([[1e-40]], [0.0]), _linear([[1.0], [0.0]], [0.0, 1.0]))
    with pytest.raises(ValueError, match="smallest normal"):
        certify(net, np.array([[0.5]]), [1], 0.1, domain="box", execution="float32")


def test_a_strict_input_bound_excludes_its_end_from_counterexamples(tmp_path):
    net = nn.Sequential(_linear([[-1.0]], [0.0]))  # y0 = −x: the unsafe set y0 ≥ 0 needs x ≤ 0, excluded
    path = tmp_path / "p.vnnlib"
    path.write_text("(declare-const X_0 Real) (declare-const Y_0 Real)\n"
                    "(assert (> X_0 0.0)) (assert (<= X_0 1.0)) (assert (>= Y_0 0.0))\n")
    disjuncts = vnnlib.read_vnnlib(path)
    assert disjuncts[0].strict_lower == [True]
    for execution in DTYPES:
        assert verify(net, disjuncts, execution=execution).status != "sat"


@pytest.mark.parametrize("layer", ["avg_pool", "normalize"])
@pytest.mark.parametrize("domain", ["box", "deepzono", "deeppoly", "crown-ibp"])
def test_an_overflowing_intermediate_sum_is_never_verified(layer, domain):
    """Average pooling sums k² values before dividing, normalisation subtracts before dividing by s: the
    execution's intermediate values exceed the layer's output.  With v = 0.6·(float32 max), the float32
    execution of AvgPool2d(2) on four v (or of (v − (−v))/4) overflows to inf, though the real output v is
    finite: bounds computed in float64 must not verify a float32 execution (second adversarial review)."""
    from refcert import certify
    v = np.float32(np.finfo(np.float32).max * 0.6)
    t = float(np.finfo(np.float32).tiny)
    head = _linear([[-t], [t]], [3.0, -3.0])
    if layer == "avg_pool":
        net, x = nn.Sequential(nn.AvgPool2d(2, 2), nn.Flatten(), head), np.full((1, 1, 2, 2), float(v))
    else:
        net, x = nn.Sequential(nn.Normalize(mean=[-float(v)], std=[4.0], dtype="float64"), head), np.full((1, 1), float(v))
    with np.errstate(over="ignore", invalid="ignore"):
        y32 = nn.Sequential(*net.layers).astype("float32")(Tensor(x.astype(np.float32))).numpy()
    assert not np.all(np.isfinite(y32))  # the float32 execution overflows
    assert certify(net, x, [0], 0.0, domain=domain, clip=None, execution="float32").verdicts[0] != "verified"
    assert certify(net, x, [0], 0.0, domain=domain, clip=None, execution="float64").verdicts[0] == "verified"


def test_verify_says_unknown_for_parameters_outside_the_execution_range():
    """A float32 file with a subnormal weight (the fp fuzz family makes them): no proof and no crash, `unknown`
    naming the reason; in float64 executions the same net is decided."""
    net = nn.Sequential(_linear([[1e-40]], [0.0]), _linear([[1.0], [0.0]], [0.0, 1.0]))
    unsafe = [(np.array([0.0]), np.array([1.0]), [(np.array([[1.0, -1.0]]), np.array([0.0]))])]  # y0 <= y1
    outcome = verify(net, unsafe, execution="float32")
    assert outcome.status == "unknown" and "smallest normal" in outcome.message
    assert verify(net, unsafe, execution="float64").status == "sat"
