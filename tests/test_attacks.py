"""FGSM and PGD: they find counterexamples that provably exist, never leave ball ∩ clip, and validate input."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refcert import attacks, nn
from refcert.autodiff import Tensor, no_grad
from tests.strategies import networks

pytestmark = pytest.mark.agnostic  # also run under REFCERT_BACKEND=strict


def line_net(boundary: float) -> nn.Sequential:
    """1-D net with y0 − y1 = 2 (x − boundary): class 0 right of the boundary, class 1 left of it."""
    layer = nn.Linear(1, 2, dtype="float64")
    layer.params["weight"] = Tensor(np.array([[1.0], [-1.0]]), requires_grad=True)
    layer.params["bias"] = Tensor(np.array([-boundary, boundary]), requires_grad=True)
    return nn.Sequential(layer)


@given(x0=st.floats(-0.9, 0.9), eps=st.floats(0.0, 0.5), offset=st.floats(0.01, 1.0),
       seed=st.integers(0, 2**16))
def test_attacks_find_the_analytic_counterexample(x0, eps, offset, seed):
    """Label 0 at x0 > boundary: a counterexample exists iff max(x0 − eps, −1) ≤ boundary (ties misclassify)."""
    boundary = x0 - offset
    net, x, y = line_net(boundary), np.array([[x0]]), np.array([0])
    exists = max(x0 - eps, -1.0) < boundary - 1e-9
    robust = max(x0 - eps, -1.0) > boundary + 1e-9
    for found in (attacks.pgd(net, x, y, eps, steps=10, clip=(-1.0, 1.0), rng=seed),
                  attacks.pgd(net, x, y, eps, steps=10, clip=(-1.0, 1.0), loss="ce", rng=seed),
                  attacks.fgsm(net, x, y, eps, clip=(-1.0, 1.0))):
        margin = found.margins.numpy()[0]
        if exists:
            assert margin < 0, f"missed the counterexample left of {boundary} within {eps} of {x0}"
            # a linear margin is minimised at the ball's edge: the attack must reach it
            assert found.points.numpy()[0, 0] == pytest.approx(max(x0 - eps, -1.0), abs=1e-9)
        if robust:
            assert margin > 0
        with no_grad():
            recomputed = attacks.margin(net(found.points), y).numpy()[0]
        assert recomputed == pytest.approx(margin, abs=1e-12)


@given(data=st.data())
def test_attacks_stay_in_ball_and_clip(data):
    net, shape = data.draw(networks(max_depth=3))
    n_out = net(np.zeros((1,) + shape)).shape[-1]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    batch = data.draw(st.integers(1, 3))
    lo, hi = data.draw(st.sampled_from([(0.0, 1.0), (-1.0, 1.0), (0.2, 0.4)]))
    x = rng.uniform(lo, hi, (batch,) + shape)
    x[rng.uniform(size=x.shape) < 0.2] = lo  # inputs on the clip edge
    y = rng.integers(0, n_out, batch)
    eps = data.draw(st.sampled_from([0.0, 1e-3, 0.1, 0.5, 3.0]))
    lower, upper = np.clip(x - eps, lo, hi), np.clip(x + eps, lo, hi)
    with no_grad():
        clean = attacks.margin(net(x), y).numpy()
    for loss in attacks.LOSSES:
        for found in (attacks.fgsm(net, x, y, eps, clip=(lo, hi), loss=loss),
                      attacks.pgd(net, x, y, eps, steps=5, restarts=2, clip=(lo, hi), loss=loss, rng=rng)):
            points = found.points.numpy()
            assert points.shape == x.shape
            assert np.all(points >= lower) and np.all(points <= upper), "attack left ball ∩ clip"
        # PGD keeps the best point seen, the clean point's margin included
        assert np.all(found.margins.numpy() <= clean + 1e-12)
        with no_grad():
            assert np.allclose(attacks.margin(net(found.points), y).numpy(), found.margins.numpy(), atol=1e-12)


def test_pgd_is_repeatable_with_a_seed():
    net = nn.Sequential(nn.Linear(4, 8, rng=np.random.default_rng(1)), nn.ReLU(),
                        nn.Linear(8, 3, rng=np.random.default_rng(2)))
    x, y = np.random.default_rng(0).uniform(0, 1, (5, 4)).astype(np.float32), np.array([0, 1, 2, 0, 1])
    a = attacks.pgd(net, x, y, 0.2, steps=3, rng=7).points.numpy()
    b = attacks.pgd(net, x, y, 0.2, steps=3, rng=7).points.numpy()
    c = attacks.pgd(net, x, y, 0.2, steps=0, rng=8).points.numpy()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c) or np.allclose(a, x)


def test_attacks_work_inside_no_grad():
    net, x, y = line_net(0.0), np.array([[0.1]]), np.array([0])
    with no_grad():
        assert attacks.pgd(net, x, y, 0.3, clip=None).margins.numpy()[0] < 0


@pytest.mark.parametrize("change, message", [
    (dict(eps=-0.1), "eps"), (dict(eps=float("nan")), "eps"),
    (dict(x=np.array([[np.nan]])), "NaN"), (dict(y=np.array([0, 1])), "labels"),
    (dict(y=np.array([2])), "0..1"), (dict(loss="hinge"), "loss"), (dict(clip=(1.0, 0.0)), "clip"),
])
def test_attack_arguments_are_validated(change, message):
    args = dict(x=np.array([[0.1]]), y=np.array([0]), eps=0.1, loss="margin", clip=(0.0, 1.0)) | change
    for attack in (attacks.pgd, attacks.fgsm):
        with pytest.raises(ValueError, match=message):
            attack(line_net(0.0), args["x"], args["y"], args["eps"], clip=args["clip"], loss=args["loss"])
