"""Specification elision (issue 16, item 1; Gowal et al. 2018, Sec. 3): the margins of every domain are
intersected with the interval of the folded last layer (C·W) h + C·b.  Never looser than without it,
strictly tighter on a constructed case, sound for sampled points (the zero-tolerance exact and
multi-order float checks of tests/test_fp_property.py run through ``spec.margin_bounds`` and so cover it;
dropping its error term R fails test_adversarial_nets_are_sound), used by verify and by the training loss."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refcert import domains, fp, spec
from refcert import nn
from refcert.autodiff import Tensor, no_grad
from refcert.certify import ball_domains
from tests.strategies import input_boxes, networks, sample_points

DOMAINS = [name for name in ball_domains() if name not in ("approxline",)]


def _old_margins(net, element, labels, n):
    """The margins without elision: [net, C] through the domain, then the lower bound."""
    execution = nn.parameter_dtype(net)
    with fp.use(execution=execution):
        out = spec.through(spec._layers(net), element, spec.margin_matrix(labels, n, dtype=spec._float_dtype(net)))
    return out.bounds()[0]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks(max_depth=3), st.data(), st.sampled_from(DOMAINS), st.booleans())
def test_elided_margins_are_sound_and_never_looser(drawn, data, name, sound):
    net, shape = drawn
    lower, upper = data.draw(input_boxes(shape))
    with no_grad():
        n = net(lower).numpy().reshape(lower.shape[0], -1).shape[1]
    if n < 2:
        return
    labels = np.zeros(lower.shape[0], dtype=int)
    with no_grad(), fp.use(sound=sound):
        new = spec.margin_bounds(net, domains.get(name).from_bounds(lower, upper), labels, n).numpy()
        old = _old_margins(net, domains.get(name).from_bounds(lower, upper), labels, n).numpy()
    assert np.all(new >= old)
    points = sample_points(lower, upper, np.random.default_rng(0))
    with no_grad():
        y = np.stack([net(p).numpy().reshape(p.shape[0], -1) for p in points])
    margins = y[..., :1] - y[..., 1:]
    assert np.all(margins >= new[None] - 1e-9)


def _cancelling_net():
    """y0 − y1 = 1 whatever the hidden layer: the last layer's two rows are equal up to the bias."""
    rng = np.random.default_rng(0)
    first = nn.Linear(3, 4, rng=rng, dtype="float64")
    last = nn.Linear(4, 2, dtype="float64")
    last.params["weight"] = Tensor(np.array([[1.0, -2.0, 0.5, 3.0], [1.0, -2.0, 0.5, 3.0]]))
    last.params["bias"] = Tensor(np.array([1.0, 0.0]))
    return nn.Sequential(first, nn.ReLU(), last)


@pytest.mark.parametrize("name", ["box", "deepzono", "deeppoly", "crown-ibp"])
def test_elision_is_strictly_tighter_where_the_rows_share_the_hidden_layer(name):
    net = _cancelling_net()
    lower, upper = np.full((1, 3), -1.0), np.full((1, 3), 1.0)
    with no_grad():
        new = spec.margin_bounds(net, domains.get(name).from_bounds(lower, upper), [0], 2).numpy()
        old = _old_margins(net, domains.get(name).from_bounds(lower, upper), [0], 2).numpy()
    assert new[0, 0] >= 1.0 - 1e-9          # exactly 1 up to the rounding radius
    if name == "box":                        # Box took C on the logits' intervals
        assert old[0, 0] < 0.0


def test_verify_uses_the_elided_bound():
    """A VNN-LIB-style property y0 − y1 ≤ 0.5 on the cancelling net is unsat by Box alone."""
    from refcert.verify import verify
    net = _cancelling_net()
    lower, upper = np.full((1, 3), -1.0), np.full((1, 3), 1.0)
    outcome = verify(net, [(lower[0], upper[0], [(np.array([[1.0, -1.0]]), np.array([0.5]))])], domains=("box",),
                     timeout=30)
    assert outcome.status == "unsat" and outcome.proved_by.get("box") == 1


def test_the_training_loss_gets_the_elided_margins():
    """DiffAI's loss on Box: its gradient reaches the last layer through C·W (nonzero where the rows differ)."""
    from refcert import train
    net = _cancelling_net()
    x = np.random.default_rng(1).uniform(-1, 1, (4, 3))
    loss, _ = train.batch_loss(net, x, np.zeros(4, dtype=np.int64),
                               train.TrainConfig(method="diffai", eps=0.5, kappa=1.0), 1.0, np.random.default_rng(0))
    loss.backward()
    assert float(loss.numpy()) < np.log(2.0)  # margin bound ≈ 1 > 0: the loss is below CE at a zero margin
