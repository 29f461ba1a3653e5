"""α-CROWN and branch and bound (issue 13): sound, never looser than DeepPoly, and as decisive as the exact
MILP on small nets; a planted bug (α outside [0, 1], a split constraint with the wrong sign) is caught."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from refcert import bab, domains, fp, spec
from refcert.autodiff import no_grad
from refcert.domains import alpha
from refcert.exact import ExactUndecided, exact_bounds, find_violation
from tests import fp_exact as fx
from tests.strategies import input_boxes, networks, sample_points

pytest.importorskip("scipy")


def _outputs(net, x):
    with no_grad():
        y = net(np.asarray(x, dtype=np.float64)).numpy()
    return y.reshape(y.shape[0], -1)


@settings(max_examples=25, deadline=None)
@given(networks(max_depth=3), st.data())
def test_alpha_crown_is_sound_and_never_looser_than_deeppoly(drawn, data):
    net, shape = drawn
    lower, upper = data.draw(input_boxes(shape))
    labels = np.zeros(lower.shape[0], dtype=int)
    n = _outputs(net, lower).shape[1]
    assume(n > 1)
    bounds = {}
    for sound in (False, True):
        for name in ("deeppoly", "alpha-crown"):
            with alpha.use(iterations=15), fp.use(sound=sound):
                element = domains.get(name).from_bounds(lower, upper)
                bounds[name, sound] = spec.margin_bounds(net, element, labels, n).numpy()
    # in real-number arithmetic α starts at DeepPoly's choice and the best bound is kept: never looser
    # (under the sound policy alpha-crown's rounding slack covers every α, so it may sit a few ulps lower)
    assert np.all(bounds["alpha-crown", False] >= bounds["deeppoly", False])
    bounds["alpha-crown"] = bounds["alpha-crown", True]
    points = sample_points(lower, upper, np.random.default_rng(0))
    y = np.stack([_outputs(net, p) for p in points])             # (count, batch, n)
    margins = y[..., :1] - y[..., 1:]                            # y_0 − y_j, j = 1..n−1
    assert np.all(margins >= bounds["alpha-crown"][None] - 1e-9)


def _unit(net, lower, upper, data, offset):
    """A one-row unsafe set y_j ≤ d (or −y_j ≤ d) placed ``offset`` of the exact range past the extreme."""
    try:
        lo, hi, _, _ = exact_bounds(net, lower, upper, time_limit=5.0)
    except ExactUndecided:
        assume(False)
    lo, hi = lo.reshape(-1), hi.reshape(-1)
    j = data.draw(st.integers(0, lo.size - 1))
    sign = data.draw(st.sampled_from([1.0, -1.0]))
    C = np.zeros((1, lo.size))
    C[0, j] = sign
    extreme = lo[j] if sign > 0 else -hi[j]
    return C, np.array([extreme + offset * (hi[j] - lo[j] + 1e-2)])


@settings(max_examples=20, deadline=None)
@given(networks(activations=("relu",), max_depth=2), st.data(), st.sampled_from([-0.3, -0.05, 0.05, 0.3]))
def test_relu_branch_and_bound_agrees_with_the_milp(drawn, data, offset):
    """Never unsat where the MILP finds a violation; unsat where the MILP proves a clear margin."""
    net, shape = drawn
    lower, upper = data.draw(input_boxes(shape, max_batch=1))
    C, d = _unit(net, lower, upper, data, offset)
    try:
        violation = find_violation(net, lower, upper, C, d, time_limit=5.0)
    except ExactUndecided:
        assume(False)
    status, _ = bab.relu_split(net, lower, upper, C, lambda low: np.any(low > d, axis=1), max_subproblems=300)
    if violation is not None:
        assert status != "unsat"
    elif offset <= -0.3:
        assert status == "unsat"


@settings(max_examples=20, deadline=None)
@given(networks(image=False, activations=("relu", "sigmoid"), max_depth=3), st.data(),
       st.sampled_from([-0.3, 0.05, 0.3]))
def test_input_splitting_is_never_unsat_where_a_point_violates(drawn, data, offset):
    """Sigmoid too (the MILP cannot encode it): a sampled point of the box that violates forbids unsat."""
    net, shape = drawn
    lower, upper = data.draw(input_boxes(shape, max_batch=1))
    points = sample_points(lower, upper, np.random.default_rng(1), count=256)[:, 0]
    y = _outputs(net, points)
    j = data.draw(st.integers(0, y.shape[1] - 1))
    C = np.eye(y.shape[1])[[j]]
    d = np.array([y[:, j].min() + offset * (np.ptp(y[:, j]) + 1e-2)])
    status, _ = bab.input_split(net, lower, upper, C, lambda low: np.any(low > d, axis=1), max_subproblems=500)
    if np.any(y[:, j] <= d):
        assert status != "unsat"


def test_relu_split_needs_splits_and_beta_where_one_bound_is_not_enough():
    """y = relu(x) + relu(−x) − |x| = 0 written with crossing ReLUs: DeepPoly and α-CROWN leave a gap on the
    whole box; splitting the first layer's neurons closes it."""
    from refcert import nn

    def linear(w, b):
        layer = nn.Linear(len(w[0]), len(w), dtype="float64")
        layer.params["weight"].value[...] = np.array(w, dtype=np.float64)
        layer.params["bias"].value[...] = np.array(b, dtype=np.float64)
        return layer
    net = nn.Sequential(linear([[1.0, 0.5], [-1.0, 0.5]], [0.1, -0.1]), nn.ReLU(), linear([[1.0, 1.0]], [0.0]),
                        nn.ReLU(), linear([[-1.0]], [0.0]))
    lower, upper = -np.ones((1, 2)), np.ones((1, 2))
    lo, hi, _, _ = exact_bounds(net, lower, upper)
    C, d = np.array([[-1.0]]), np.array([-hi[0, 0] - 0.05])  # unsafe: y ≥ max + 0.05, empty
    root = spec.margin_bounds  # noqa: F841  (the whole-box bound is checked through relu_split's first round)
    status, _ = bab.relu_split(net, lower, upper, C, lambda low: np.any(low > d, axis=1))
    assert status == "unsat"


def _pre_activations(module, value, found):
    """Run ``module`` on points ``value``, appending the input of every ReLU layer to ``found`` in the order the
    interpreter meets them (a residual block before its shortcut); returns the output."""
    if module.structure == "sequential":
        for layer in module.layers:
            value = _pre_activations(layer, value, found)
        return value
    if module.structure == "residual":
        block = _pre_activations(module.block, value, found)
        return block + (value if module.shortcut is None else _pre_activations(module.shortcut, value, found))
    if module.op == "relu":
        found.append(value.reshape(value.shape[0], -1))
    with no_grad():
        return module(value).numpy()


def _relu_steps(steps):
    """Every ReLU step (crossing or not) in back-substitution's visiting order: depth first, block first."""
    from refcert.domains.backsub import RelaxStep, ResidualStep
    found = []
    for step in steps:
        if isinstance(step, ResidualStep):
            found += _relu_steps(step.block) + _relu_steps(step.shortcut)
        elif isinstance(step, RelaxStep) and step.crossing is not None:
            found.append(step)
    return found


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(networks(activations=("relu", "relu", "sigmoid", "tanh"), max_depth=3), st.data())
def test_every_split_subproblem_bound_holds_on_its_subdomain(drawn, data):
    """A batch of random split assignments, α, β and the σ/tanh slopes optimised hard: for every sampled point
    that satisfies a subproblem's split constraints, the real network's C·y (exact arithmetic; mpmath
    enclosures for σ and tanh) is at least that subproblem's bound, with zero tolerance."""
    from refcert.autodiff import Tensor
    from refcert.backends import current
    net, shape = drawn
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    centre, radius = rng.uniform(-1, 1, (1,) + tuple(shape)), data.draw(st.sampled_from([0.2, 0.5, 1.0]))
    lower, upper = centre - radius * rng.uniform(0.5, 1, centre.shape), centre + radius * rng.uniform(0.5, 1, centre.shape)
    n_out = _outputs(net, lower).shape[1]
    C = rng.normal(size=(2, n_out))
    root = bab._element(net, lower, upper, C)
    steps = alpha.constant_steps(root.steps)
    relu_layers = _relu_steps(steps)
    crossing_layers = [i for i, s in enumerate(relu_layers) if np.any(s.crossing)]
    assume(crossing_layers)
    batch = 6
    splits = []
    for i in crossing_layers:
        crossing = np.asarray(relu_layers[i].crossing)
        choice = rng.choice([-1, 0, 0, 1], size=(batch,) + crossing.shape[1:]).astype(np.int8)
        splits.append(np.where(crossing, choice, 0).astype(np.int8))
    with alpha.use(iterations=30, lr=0.5):
        low = alpha.optimize(Tensor(np.eye(2)[None]), steps, root.input_lower, root.input_upper,
                             splits=[current().asarray(s) for s in splits], batch=batch).numpy()
    points = sample_points(lower, upper, rng, count=128)[:, 0]
    exact = fx.exact_forward(net, points)                                  # Fractions: the real network
    lo, hi = exact.lo.reshape(len(points), -1), exact.hi.reshape(len(points), -1)
    weights = np.array([[Fraction(float(c)) for c in row] for row in C]).T
    values = lo @ np.maximum(weights, 0) + hi @ np.minimum(weights, 0)    # (count, 2): ≤ the real C·y
    pre = []
    _pre_activations(net, np.asarray(points, dtype=np.float64), pre)
    assert len(pre) == len(relu_layers)
    for b in range(batch):
        inside = np.ones(len(points), dtype=bool)
        for k, i in enumerate(crossing_layers):
            sign = splits[k][b].reshape(-1)
            # float64 decides which points satisfy the splits; points within 1e-9 of a split's boundary are
            # left out (their real sign is not certain), every other one is compared exactly
            inside &= np.all((sign[None] * pre[i] > 1e-9) | (sign[None] == 0), axis=1)
        bound = [Fraction(float(v)) for v in low[b]]
        assert all(v >= bound[r] for row in values[inside] for r, v in enumerate(row)), (b, inside.sum())


@settings(max_examples=15, deadline=None)
@given(networks(activations=("relu",), max_depth=2), st.data())
def test_attack_starts_are_where_the_relaxed_bound_is_reached(drawn, data):
    """``bab._primal_points`` gives, for the most promising subproblem, the box corner minimising the back-
    substituted linear form of its hardest row: no sampled point of the box gives that form a smaller value."""
    from refcert.autodiff import Tensor
    net, shape = drawn
    lower, upper = data.draw(input_boxes(shape, max_batch=1))
    n_out = _outputs(net, lower).shape[1]
    C = np.random.default_rng(0).normal(size=(2, n_out))
    root = bab._element(net, lower, upper, C)
    steps = alpha.constant_steps(root.steps)
    record = []
    with alpha.use(iterations=3):
        low = alpha.optimize(Tensor(np.eye(2)[None]), steps, root.input_lower, root.input_upper, record=record).numpy()
    starts = bab._primal_points(record, low, None, np.ones(low.shape[0], bool), root.input_lower, root.input_upper)
    lam = next(l for step, l in record if isinstance(step, str)).numpy()[0]     # (rows, *shape)
    row = int(np.argmax(low[0]))
    form = lambda x: float(np.sum(lam[row] * x))  # noqa: E731
    points = sample_points(lower, upper, np.random.default_rng(1))[:, 0]
    assert starts.shape == (1,) + tuple(lower.shape[1:])
    assert all(form(starts[0]) <= form(p) + 1e-9 * (1 + abs(form(p))) for p in points)
