"""refcert.optim against the update rules PyTorch documents, computed by hand in NumPy.

SGD (torch.optim.SGD, dampening 0): g = grad + wd p;  b = g at step 1, else momentum b + g;  p -= lr b.
Adam (torch.optim.Adam, L2 weight decay): g = grad + wd p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refcert.autodiff import Tensor
from refcert.backends import to_numpy
from refcert.optim import SGD, Adam, clip_grad_norm

pytestmark = pytest.mark.agnostic


def _run(optimizer_class, settings, p0, grads):
    """Apply the optimiser to one parameter for the given sequence of gradients; return its values."""
    p = Tensor(p0, requires_grad=True)
    optimizer = optimizer_class([p], **settings)
    history = []
    for g in grads:
        optimizer.zero_grad()
        assert p.grad is None
        p.grad = Tensor(g).value
        optimizer.step()
        history.append(to_numpy(p.value).copy())
    return history


def sgd_reference(p, grads, lr, momentum, weight_decay):
    history, buffer = [], None
    for g in grads:
        g = g + weight_decay * p
        buffer = g if buffer is None or momentum == 0 else momentum * buffer + g
        p = p - lr * buffer
        history.append(p)
    return history


def adam_reference(p, grads, lr, betas, eps, weight_decay):
    (b1, b2), m, v, history = betas, np.zeros_like(p), np.zeros_like(p), []
    for t, g in enumerate(grads, start=1):
        g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        history.append(p)
    return history


def _problem(seed, steps=5):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(1, 4, rng.integers(1, 3)))
    return rng.normal(size=shape), [rng.normal(size=shape) * 10.0 ** rng.uniform(-3, 1) for _ in range(steps)]


@given(seed=st.integers(0, 2**32 - 1), lr=st.sampled_from([1e-3, 0.1, 0.5]),
       momentum=st.sampled_from([0.0, 0.5, 0.9]), weight_decay=st.sampled_from([0.0, 1e-2, 0.3]))
def test_sgd_matches_reference(seed, lr, momentum, weight_decay):
    p0, grads = _problem(seed)
    settings = dict(lr=lr, momentum=momentum, weight_decay=weight_decay)
    ours = _run(SGD, settings, p0, grads)
    for step, (a, b) in enumerate(zip(ours, sgd_reference(p0, grads, **settings)), start=1):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=f"SGD step {step}")


@given(seed=st.integers(0, 2**32 - 1), lr=st.sampled_from([1e-3, 0.1]),
       betas=st.sampled_from([(0.9, 0.999), (0.5, 0.9)]), eps=st.sampled_from([1e-8, 1e-2]),
       weight_decay=st.sampled_from([0.0, 0.1]))
def test_adam_matches_reference(seed, lr, betas, eps, weight_decay):
    p0, grads = _problem(seed)
    settings = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    ours = _run(Adam, settings, p0, grads)
    for step, (a, b) in enumerate(zip(ours, adam_reference(p0, grads, **settings)), start=1):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14, err_msg=f"Adam step {step}")


def test_adam_skips_parameters_without_gradient_and_keeps_their_own_step_count():
    a, b = Tensor(np.ones(2), requires_grad=True), Tensor(np.ones(2), requires_grad=True)
    optimizer = Adam([a, b], lr=0.1)
    grads = [np.array([1.0, -2.0]), np.array([0.5, 0.5])]
    a.grad = Tensor(grads[0]).value        # step 1: only a has a gradient
    optimizer.step()
    np.testing.assert_array_equal(to_numpy(b.value), np.ones(2))
    a.grad, b.grad = Tensor(grads[1]).value, Tensor(grads[1]).value
    optimizer.step()                       # step 2 for a, step 1 for b (as in PyTorch)
    np.testing.assert_allclose(to_numpy(a.value), adam_reference(np.ones(2), grads, 0.1, (0.9, 0.999), 1e-8, 0)[-1])
    np.testing.assert_allclose(to_numpy(b.value), adam_reference(np.ones(2), grads[1:], 0.1, (0.9, 0.999), 1e-8, 0)[-1])


@given(seed=st.integers(0, 2**32 - 1), max_norm=st.sampled_from([0.01, 1.0, 100.0]))
def test_clip_grad_norm(seed, max_norm):
    rng = np.random.default_rng(seed)
    grads = [rng.normal(size=(3, 2)), rng.normal(size=(4,))]
    params = [Tensor(np.zeros_like(g), requires_grad=True) for g in grads] + [Tensor(np.zeros(1), requires_grad=True)]
    for p, g in zip(params, grads):
        p.grad = Tensor(g).value                      # the last parameter has no gradient
    total = np.sqrt(sum(np.sum(g * g) for g in grads))
    assert clip_grad_norm(params, max_norm) == pytest.approx(total, rel=1e-12)
    clipped = [to_numpy(p.grad) for p in params[:2]]
    scale = min(1.0, max_norm / total)
    for c, g in zip(clipped, grads):
        np.testing.assert_allclose(c, g * scale, rtol=1e-9)
    assert params[2].grad is None


def test_optimizer_arguments_are_checked():
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        Adam([Tensor(np.ones(1), requires_grad=True)], lr=0.0)
