"""Non-linear transformers of the zonotope family: ReLU variants, sigmoid, tanh, max pooling.

Every activation is a parallel-line relaxation ``f(x) = lam·x + mu + nu·e`` (``domains/relaxations.py``)
applied to a hybrid zonotope z = (c, E, β) (DiffAI, ICML'18, Sec. 4.2; DeepZ, NeurIPS'18, Sec. 3):
c ↦ lam·c + mu, E ↦ lam·E, β ↦ lam·β (lam ≥ 0), and the new error nu becomes

* a new noise symbol per neuron that needs one (pure zonotopes: deepzono, zbox, zdiag, zswitch, zsmooth), or
* part of the private box term, β ↦ lam·β + nu (hybrid zonotopes: hbox, hdiag, hswitch, hsmooth).

Floating point: ``with_error`` adds ``fp``'s rounding-error radius of the elementwise map to β, and the
relaxations are made sound for their computed slopes (``domains/relaxations.py``).
Elements are rebuilt with ``dataclasses.replace`` so this module does not import ``zonotope.py``.
Proofs: proofs/relu_zonotope.md, proofs/sigmoid_tanh_zonotope.md, proofs/maxpool.md.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from refcert import autodiff as ad
from refcert import backends, fp
from refcert.autodiff import Tensor
from refcert.domains import point, relaxations


def _new_symbols(nu: Tensor) -> Tensor | None:
    """New generator rows (batch, m, *shape): one fresh noise symbol per neuron with a non-zero error nu,
    packed per batch element (row k of element b carries b's k-th such neuron; m = the most any element
    needs, shorter elements are padded with zero rows).  Batch elements are independent zonotopes, so
    their new symbols need not line up; packing keeps m at one element's count, not the batch's union."""
    batch, shape = nu.shape[0], nu.shape[1:]
    n = int(np.prod(shape, dtype=np.int64))
    nonzero = backends.to_numpy(nu.value).reshape(batch, n) != 0
    counts = nonzero.sum(axis=1)
    m = int(counts.max(initial=0))
    if m == 0:
        return None
    element, neuron = np.nonzero(nonzero)                               # row-major: grouped by element
    slot = np.arange(element.size) - np.repeat(np.cumsum(counts) - counts, counts)
    one_hot = np.zeros((batch, m, n), dtype=backends.to_numpy(nu.value).dtype)
    one_hot[element, slot, neuron] = 1.0
    rows = ad.reshape(nu, shape=(batch, 1, n)) * backends.current().asarray(one_hot)
    return ad.reshape(rows, shape=(batch, m) + tuple(shape))


def with_error(z, lam: Tensor, mu: Tensor, nu: Tensor, *, hybrid: bool, magnitude=None):
    """z ↦ lam·z + mu + nu·[-1, 1] (lam ≥ 0, nu ≥ 0, shapes (batch, *shape)); proofs/relu_zonotope.md §0.
    Sound policy: the rounding of the map goes to β, and the result carries the hint |x'| ≤ lam·M + |mu| +
    nu + that radius (``magnitude``: M of z, if the caller has it)."""
    lam_rows = ad.reshape(lam, shape=(lam.shape[0], 1) + tuple(lam.shape[1:]))
    center, generators, beta = lam * z.center + mu, lam_rows * z.generators, lam * z.box_radius
    hint = None
    if fp.policy().sound:  # rounding of lam·(c, E, β) + mu and of β + nu (proofs/floating_point.md §3)
        xp = backends.current().xp
        m = (z.magnitude() if magnitude is None else magnitude).value
        image = xp.abs(lam.value) * m + xp.abs(mu.value) + nu.value
        error = fp.radius(ad.constant(image), 1, execution=None, count=z.generators.shape[1] + 2)
        beta = beta + error
        bound = fp.compensate(image + error.value, 4)
        hint = ad.constant(xp.nextafter(bound, xp.full_like(bound, np.inf)))
    if hybrid:
        beta = beta + nu
    else:
        rows = _new_symbols(nu)
        if rows is not None:
            generators = ad.concatenate([generators, rows], axis=1)
    return dataclasses.replace(z, center=center, generators=generators, box_radius=beta, hint=hint)


def _relax(z, relaxation, hybrid: bool):
    l, u = z.bounds()
    lam, mu, nu = relaxation(l, u)
    magnitude = Tensor(backends.current().xp.maximum(ad.abs(l).value, ad.abs(u).value)) if fp.policy().sound else None
    return with_error(z, lam, mu, nu, hybrid=hybrid, magnitude=magnitude)


# --- ReLU (proofs/relu_zonotope.md) -------------------------------------------------------------
def relu_deepzono(z):
    """DeepZ (NeurIPS'18, Thm 3.1): lam = u/(u − l), mu = −lam·l/2, new symbol of radius mu.
    Sound: relu(x) − lam·x ∈ [0, 2mu] on [l, u] (proofs/relu_zonotope.md §1)."""
    return _relax(z, relaxations.relu_deepzono, hybrid=False)


def relu_box(z):
    """DiffAI zBox (ICML'18, Sec. 5.2): crossing neurons become u/2 ± u/2 on a new symbol
    (relu(x) ∈ [0, u]; proofs/relu_zonotope.md §2)."""
    return _relax(z, relaxations.relu_box, hybrid=False)


def relu_diag(z):
    """DiffAI zDiag: crossing neurons x − l/2 ± (−l/2) on a new symbol
    (relu(x) − x ∈ [0, −l]; proofs/relu_zonotope.md §3)."""
    return _relax(z, relaxations.relu_diag, hybrid=False)


def relu_switch(z):
    """DiffAI zSwitch: zBox where −l > u, else zDiag, per neuron (proofs/relu_zonotope.md §4)."""
    return _relax(z, relaxations.relu_switch, hybrid=False)


def relu_smooth(z):
    """DiffAI zSmooth: the convex mix (1 − t)·zDiag + t·zBox, t = relu(−l)/(relu(u) + relu(−l) + 1e−4)
    (a convex mix of two enclosures sharing the new symbol; proofs/relu_zonotope.md §5)."""
    return _relax(z, relaxations.relu_smooth, hybrid=False)


def relu_box_hybrid(z):
    """DiffAI HBox (ICML'18, Sec. 5.2, creluBoxy): zBox with the new error in β (proofs/relu_zonotope.md §2, §6)."""
    return _relax(z, relaxations.relu_box, hybrid=True)


def relu_diag_hybrid(z):
    """DiffAI hybrid zDiag: slope 1, the error −l/2 in β (proofs/relu_zonotope.md §3, §6)."""
    return _relax(z, relaxations.relu_diag, hybrid=True)


def relu_switch_hybrid(z):
    """DiffAI HSwitch (creluSwitch): zSwitch with the new error in β (proofs/relu_zonotope.md §4, §6)."""
    return _relax(z, relaxations.relu_switch, hybrid=True)


def relu_smooth_hybrid(z):
    """DiffAI HSmooth (creluSmooth): zSmooth with the new error in β (proofs/relu_zonotope.md §5, §6)."""
    return _relax(z, relaxations.relu_smooth, hybrid=True)


# --- sigmoid and tanh (proofs/sigmoid_tanh_zonotope.md) -----------------------------------------
def sigmoid(z):
    """DeepZ (NeurIPS'18, Thm 3.2) parallel lines, lam = min(σ'(l), σ'(u)); new symbol of radius mu2.
    Sound: σ(x) − lam·x is non-decreasing on [l, u] (proofs/sigmoid_tanh_zonotope.md)."""
    return _relax(z, relaxations.sigmoid_parallel, hybrid=False)


def tanh(z):
    """DeepZ (NeurIPS'18, Thm 3.2) for tanh; new symbol of radius mu2 (proofs/sigmoid_tanh_zonotope.md)."""
    return _relax(z, relaxations.tanh_parallel, hybrid=False)


def sigmoid_hybrid(z):
    """DeepZ's sigmoid relaxation with the error mu2 in β (proofs/sigmoid_tanh_zonotope.md)."""
    return _relax(z, relaxations.sigmoid_parallel, hybrid=True)


def tanh_hybrid(z):
    """DeepZ's tanh relaxation with the error mu2 in β (proofs/sigmoid_tanh_zonotope.md)."""
    return _relax(z, relaxations.tanh_parallel, hybrid=True)


# --- max pooling (proofs/maxpool.md) -------------------------------------------------------------
def _windows(x, kernel_size: int, stride: int, padding: int):
    """Indices of the k² shifted views (…, Ho, Wo) of padded x: window position p of every output."""
    height, width = x.shape[-2:]
    out_h = (height + 2 * padding - kernel_size) // stride + 1
    out_w = (width + 2 * padding - kernel_size) // stride + 1
    return [(Ellipsis, slice(i, i + stride * (out_h - 1) + 1, stride), slice(j, j + stride * (out_w - 1) + 1, stride))
            for i in range(kernel_size) for j in range(kernel_size)]


def _max_pool(z, kernel_size: int, stride: int, padding: int, hybrid: bool):
    """DeepZ's max-pool rule (NeurIPS'18, Sec. 3): per window, an input whose lower bound is ≥ every
    other input's upper bound is the maximum: output it exactly (c, E, β); otherwise the output is a
    fresh box [max of lowers, max of uppers] (a new symbol, or β in the hybrid variants)."""
    if padding > kernel_size // 2:
        raise ValueError(f"max_pool2d padding {padding} exceeds half the kernel size {kernel_size}")
    l, u = z.bounds()
    pad = ((0, 0),) * (l.ndim - 2) + ((padding, padding),) * 2
    l_np = np.pad(backends.to_numpy(l.value), pad, constant_values=-np.inf)
    u_np = np.pad(backends.to_numpy(u.value), pad, constant_values=-np.inf)
    windows = _windows(l, kernel_size, stride, padding)
    L = np.stack([l_np[w] for w in windows])
    U = np.stack([u_np[w] for w in windows])
    selected, taken = [], np.zeros(L.shape[1:], dtype=bool)
    for p in range(len(windows)):
        others = np.max(np.delete(U, p, axis=0), axis=0) if len(windows) > 1 else np.full(U.shape[1:], -np.inf)
        sel = (L[p] >= others) & ~taken  # first dominant input only (ties are equal constants)
        selected.append(sel)
        taken |= sel
    asarray = backends.current().asarray
    pad_t = (lambda t: ad.pad2d(t, padding=padding)) if padding else (lambda t: t)
    c, E, beta = pad_t(z.center), pad_t(z.generators), pad_t(z.box_radius)
    zero_c = ad.getitem(c, index=windows[0]) * 0.0
    zero_E = ad.getitem(E, index=windows[0]) * 0.0
    center, generators, box_radius = zero_c, zero_E, zero_c
    for sel, w in zip(selected, windows):
        mask, mask_E = asarray(sel), asarray(sel[:, None])
        center = center + ad.where(mask, ad.getitem(c, index=w), zero_c)
        generators = generators + ad.where(mask_E, ad.getitem(E, index=w), zero_E)
        box_radius = box_radius + ad.where(mask, ad.getitem(beta, index=w), zero_c)
    fresh = asarray(~taken)
    pool = dict(kernel_size=kernel_size, stride=stride, padding=padding)
    max_l, max_u = point.max_pool2d(l, **pool), point.max_pool2d(u, **pool)
    mid, half = fp.mid_rad(max_l, max_u)
    center = center + ad.where(fresh, mid, zero_c)
    nu = ad.where(fresh, half, zero_c)
    pooled = dataclasses.replace(z, center=center, generators=generators, box_radius=box_radius, hint=None)
    return with_error(pooled, zero_c + 1.0, zero_c, nu, hybrid=hybrid)


def max_pool2d(z, *, kernel_size: int, stride: int, padding: int = 0):
    """DeepZ max pooling for pure zonotopes (proofs/maxpool.md)."""
    return _max_pool(z, kernel_size, stride, padding, hybrid=False)


def max_pool2d_hybrid(z, *, kernel_size: int, stride: int, padding: int = 0):
    """DeepZ max pooling with the fresh box in β (hybrid zonotopes; proofs/maxpool.md)."""
    return _max_pool(z, kernel_size, stride, padding, hybrid=True)
