"""Adversarial attacks: FGSM (Goodfellow et al., ICLR'15) and PGD (Madry et al., ICLR'18, Sec. 2).

Both search the L∞ ball of radius ``eps`` around each input, intersected with the valid range
``clip = (lo, hi)`` — exactly the set ``Domain.linf_ball(x, eps, clip)`` describes, so an attack's
point is a genuine member of the set a certificate talks about.  Gradients come from refcert's own
autodiff.  Attacks only *find* counterexamples; ``refcert.certify`` re-checks every point it reports.

Losses (per input, summed over the batch so each input gets its own gradient):
- ``"ce"``: cross-entropy of the logits with the true label (Madry'18, Eq. 2.1);
- ``"margin"``: −(y_t − max_{j≠t} y_j) (Carlini & Wagner, S&P'17, Sec. V); a point with a positive
  loss is misclassified.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from refcert import autodiff as ad
from refcert import backends, fp, nn
from refcert.autodiff import Tensor

LOSSES = ("ce", "margin")


class Attack(NamedTuple):
    """Result of an attack on a batch: the best point per input and its concrete margin."""
    points: Tensor   # (batch, *shape), inside ball ∩ clip
    margins: Tensor  # (batch,), y_t − max_{j≠t} y_j at ``points``; < 0 means misclassified


def _xp():
    return backends.current().xp


def _label_mask(labels, n_classes: int, like):
    """(batch, n) boolean backend array: True at each input's label."""
    xp = _xp()
    labels = backends.current().asarray(getattr(labels, "value", labels))  # NumPy labels on any backend
    return xp.arange(n_classes)[None, :] == xp.astype(labels, xp.int64)[:, None]


def margin(logits: Tensor, labels) -> Tensor:
    """(batch,) y_t − max_{j≠t} y_j; +inf when the net has a single output (nothing to confuse)."""
    n = logits.shape[-1]
    if n == 1:
        return Tensor(_xp().full((logits.shape[0],), math.inf, dtype=logits.dtype))
    mask = _label_mask(labels, n, logits.value)
    true = ad.sum(ad.where(mask, logits, 0.0), axis=-1)
    best_other = ad.max(ad.where(mask, -math.inf, logits), axis=-1)
    return true - best_other


def _loss(logits: Tensor, labels, loss: str) -> Tensor:
    """Scalar whose gradient w.r.t. each input row is that input's own loss gradient (larger = worse)."""
    if loss == "ce":
        return ad.cross_entropy(logits, labels) * logits.shape[0]  # undo the batch mean
    return -ad.sum(margin(logits, labels))


def _check(net_input: Tensor, labels, eps, clip, loss):
    """Validate arguments; return (x, labels, eps) as backend values."""
    if loss not in LOSSES:
        raise ValueError(f"unknown attack loss {loss!r}; choose one of {LOSSES}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    x = net_input.numpy()
    if not np.all(np.isfinite(x)):
        raise ValueError("inputs contain NaN or infinite values")
    labels_np = np.asarray(backends.to_numpy(labels)).reshape(-1)
    if labels_np.shape[0] != x.shape[0]:
        raise ValueError(f"got {x.shape[0]} inputs but {labels_np.shape[0]} labels")
    if clip is not None and clip[0] > clip[1]:
        raise ValueError(f"clip range is empty: {clip}")
    return backends.current().asarray(labels_np.astype(np.int64)), eps


def _check_labels(labels, n_classes: int):
    labels_np = backends.to_numpy(labels)
    if labels_np.size and (labels_np.min() < 0 or labels_np.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1} (the net has {n_classes} outputs), "
                         f"got {labels_np.min()}..{labels_np.max()}")


def _project(z, x, eps: float, clip):
    """Nearest point of ball(x, eps) ∩ [lo, hi] to z, coordinate-wise (Madry'18: projected step).

    The bounds are ``fp.ball(..., outward=False)``: the real ball rounded inward to x's dtype, so every
    projected point is a member of the real set (no tolerance needed when it is reported).
    """
    xp = _xp()
    lower, upper = fp.ball(Tensor(x), eps, clip, outward=False)
    return xp.minimum(xp.maximum(z, lower.value), upper.value)


def _gradient(net, z, labels, loss: str):
    """(margin at z, d loss / d z) for the batch z (backend array)."""
    with ad.enable_grad():
        point = Tensor(z, requires_grad=True)
        logits = net(point)
        _loss(logits, labels, loss).backward()
    _check_labels(labels, logits.shape[-1])
    grad = point.grad if point.grad is not None else _xp().zeros_like(z)  # loss independent of the input
    with ad.no_grad():
        return margin(logits.detach(), labels).value, grad


def fgsm(net, x, labels, eps, *, clip=(0.0, 1.0), loss: str = "ce") -> Attack:
    """One step of size eps along sign(∇ loss), projected to ball ∩ clip (Goodfellow'15, Eq. 3)."""
    nn.check_evaluation_mode(net)  # in training mode every call would move batch-norm statistics
    x = ad.as_tensor(x)
    labels, eps = _check(x, labels, eps, clip, loss)
    _, g = _gradient(net, x.value, labels, loss)
    point = _project(x.value + eps * _xp().sign(g), x.value, eps, clip)
    with ad.no_grad():
        return Attack(Tensor(point), margin(net(Tensor(point)), labels))


def pgd(net, x, labels, eps, *, steps: int = 40, step_size: float | None = None, restarts: int = 1,
        clip=(0.0, 1.0), loss: str = "margin", rng=None) -> Attack:
    """Projected gradient descent (Madry'18, Sec. 2): per restart a uniform random start in the ball,
    then ``steps`` steps z ← Π(z + α·sign(∇ loss)); keeps per input the point of lowest margin seen
    (the start and every step count, so the result is never worse than the clean point).

    ``step_size`` α defaults to 2.5·eps/steps (Madry'18 use α·k ≈ 2.5 eps).  ``rng``: a NumPy
    Generator or seed (default 0), so runs repeat.
    """
    nn.check_evaluation_mode(net)  # in training mode every call would move batch-norm statistics
    x = ad.as_tensor(x)
    labels, eps = _check(x, labels, eps, clip, loss)
    if int(steps) < 0 or int(restarts) < 1:
        raise ValueError(f"PGD needs steps >= 0 and restarts >= 1, got {steps}, {restarts}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
    alpha = 2.5 * eps / max(int(steps), 1) if step_size is None else float(step_size)
    xp, backend = _xp(), backends.current()
    x0 = x.value
    with ad.no_grad():
        logits = net(x)
        _check_labels(labels, logits.shape[-1])
        best_margin = margin(logits, labels).value
    best = x0
    for _ in range(int(restarts)):
        noise = backend.asarray(rng.uniform(-eps, eps, size=x.shape), dtype=x0.dtype)
        z = _project(x0 + noise, x0, eps, clip)
        for step in range(int(steps) + 1):
            m, g = _gradient(net, z, labels, loss)
            better = m < best_margin
            best = xp.where(xp.reshape(better, (-1,) + (1,) * (x.ndim - 1)), z, best)
            best_margin = xp.where(better, m, best_margin)
            if step < int(steps):
                z = _project(z + alpha * xp.sign(g), x0, eps, clip)
    return Attack(Tensor(best), Tensor(best_margin))
