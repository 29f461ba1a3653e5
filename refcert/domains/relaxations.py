"""Parallel-line relaxations of activations, shared by the zonotope family (REFERENCES.md, "Zonotope family").

Each function takes the concrete pre-activation bounds ``l ≤ x ≤ u`` (Tensors, any shape) and returns
``(lam, mu, nu)`` of that shape such that, for every x in [l, u],

    f(x) = lam·x + mu + nu·e   for some e in [-1, 1],     with lam ≥ 0 and nu ≥ 0.

A zonotope transformer then maps c ↦ lam·c + mu, E ↦ lam·E, β ↦ lam·β and adds the error nu either as
a new noise symbol (pure zonotope) or to the box term β (hybrid).  Stable ReLU neurons are exact
(u ≤ 0: lam = mu = nu = 0; l ≥ 0: lam = 1, mu = nu = 0).  Everything is built from autodiff ops and is
safe where l == u (no division by u − l there).  Floating point (``fp.policy().sound``): a ReLU's offset is
recomputed from its computed slope as the exact range of relu(x) − lam·x, rounded up (``_sound_offset``),
and the S-shaped relaxations come from outward enclosures of f and a slope rounded down.  Proofs: proofs/relu_zonotope.md,
proofs/sigmoid_tanh_zonotope.md.
"""
from __future__ import annotations

from refcert import autodiff as ad
from refcert import fp
from refcert.autodiff import Tensor

#: DiffAI's smoothing constant in zSmooth's mixing weight t (ai.py, creluSmooth)
SMOOTH_EPS = 1e-4


def _zeros_like(x: Tensor) -> Tensor:
    return x * 0.0


def _stable_exact(l: Tensor, u: Tensor, lam: Tensor, mu: Tensor, nu: Tensor):
    """Overwrite stable neurons with the exact ReLU: u ≤ 0 ↦ (0, 0, 0), l ≥ 0 ↦ (1, 0, 0)."""
    dead, live = u.value <= 0, l.value >= 0
    zero = _zeros_like(l)
    lam = ad.where(dead, zero, ad.where(live, zero + 1.0, lam))
    mu, nu = _sound_offset(l, u, lam, mu, nu)
    mu = ad.where(dead | live, zero, mu)
    nu = ad.where(dead | live, zero, nu)
    return lam, mu, nu


def _sound_offset(l: Tensor, u: Tensor, lam: Tensor, mu: Tensor, nu: Tensor):
    """In floats, make (mu, nu) fit the *computed* slope lam ∈ [0, 1]: on [l, u] with l < 0 < u,
    relu(x) − lam·x ranges over [0, D], D = max(−lam·l, (1 − lam)·u); mu = nu = D/2, each product rounded
    up (proofs/floating_point.md §4).  The variants' own offsets are this D/2 in exact arithmetic (zSmooth's
    is larger).  Unchanged when not sound."""
    if not fp.policy().sound:
        return mu, nu
    with ad.no_grad():
        reach = ad.maximum(fp.up(-lam * l), fp.up(fp.up(1.0 - lam) * ad.relu(u)))
        half = fp.up(reach * 0.5)
    return half, half


def relu_deepzono(l: Tensor, u: Tensor):
    """DeepZ (Singh et al., NeurIPS'18, Theorem 3.1): minimal-area parallelogram on crossing neurons.

    lam = u/(u − l), mu = nu = −lam·l/2.  Sound: relu(x) − lam·x ∈ [0, −lam·l] on [l, u] (its
    maximum −lam·l is reached at both ends, its minimum 0 at x = 0).  proofs/relu_zonotope.md §1.
    """
    crossing = (l.value < 0) & (u.value > 0)
    zero = _zeros_like(l)
    lam = ad.where(crossing, u, zero) / ad.where(crossing, u - l, zero + 1.0)  # safe where l == u
    mu = -0.5 * lam * l
    return _stable_exact(l, u, lam, mu, mu)


def relu_box(l: Tensor, u: Tensor):
    """DiffAI's "zBox" (Mirman et al., ICML'18, Sec. 5.2, creluBoxy): relu(x) ∈ [0, u], lam = 0,
    mu = nu = u/2; the neuron's correlation is dropped.  proofs/relu_zonotope.md §2."""
    half_u = 0.5 * u
    return _stable_exact(l, u, _zeros_like(l), half_u, half_u)


def relu_diag(l: Tensor, u: Tensor):
    """DiffAI's "zDiag" (ICML'18, Sec. 5.2): slope 1, relu(x) − x ∈ [0, −l], so mu = nu = −l/2.
    proofs/relu_zonotope.md §3."""
    half_minus_l = -0.5 * l
    return _stable_exact(l, u, _zeros_like(l) + 1.0, half_minus_l, half_minus_l)


def relu_switch(l: Tensor, u: Tensor):
    """DiffAI's "zSwitch" (ICML'18, Sec. 5.2, creluSwitch): zBox where −l > u, else zDiag; each
    choice is sound on its own.  proofs/relu_zonotope.md §4."""
    boxy = -l.value > u.value
    lam_b, mu_b, nu_b = relu_box(l, u)
    lam_d, mu_d, nu_d = relu_diag(l, u)
    return ad.where(boxy, lam_b, lam_d), ad.where(boxy, mu_b, mu_d), ad.where(boxy, nu_b, nu_d)


def relu_smooth(l: Tensor, u: Tensor):
    """DiffAI's "zSmooth" (creluSmooth): t = relu(−l)/(relu(u) + relu(−l) + 1e−4), then
    (1 − t)·zDiag + t·zBox.  Sound: a convex combination of two enclosures that use the same new
    symbol is an enclosure (proofs/relu_zonotope.md §5); differentiable in l and u."""
    minus_l, plus_u = ad.relu(-l), ad.relu(u)
    t = minus_l / (plus_u + minus_l + SMOOTH_EPS)
    lam = 1.0 - t
    mu = (1.0 - t) * (0.5 * minus_l) + t * (0.5 * plus_u)
    return _stable_exact(l, u, lam, mu, mu)


def _parallel_lines(f, df, l: Tensor, u: Tensor, name: str = ""):
    """DeepZ (NeurIPS'18, Theorem 3.2) for an increasing f whose derivative is unimodal:
    lam = min(f'(l), f'(u)), mu = ½(f(u) + f(l) − lam(u + l)), nu = ½(f(u) − f(l) − lam(u − l)).
    f(x) − lam·x is non-decreasing on [l, u] (f' ≥ lam there), so it lies in [mu − nu, mu + nu].
    l == u gives nu = 0 and mu = f(l) − lam·l: exact.  proofs/sigmoid_tanh_zonotope.md."""
    if fp.policy().sound:
        return _sound_parallel_lines(df, l, u, name)
    f_l, f_u = f(l), f(u)
    lam = ad.minimum(df(f_l), df(f_u))
    mu = 0.5 * (f_u + f_l - lam * (u + l))
    nu = ad.relu(0.5 * (f_u - f_l - lam * (u - l)))  # ≥ 0 in exact arithmetic; relu removes rounding
    return lam, mu, nu


def slope_below(df, name: str, l: Tensor, u: Tensor) -> Tensor:
    """A slope ≤ min of f' on [l, u] (f' is unimodal, so the minimum is at an end): f' = df(f) is concave
    in f, so over f's enclosure at each end its minimum is at an enclosure end; each value is lowered
    by 8u·(|f| + f') for the two roundings of df (an absolute error near f' ≈ 0).  No gradient."""
    with ad.no_grad():
        u_c = fp.unit(l.dtype)
        ends = [e for x in (l, u) for e in fp.enclose(name, x, execution=False)]
        lowered = [ad.relu(df(e) - 8.0 * u_c * (ad.abs(e) + ad.abs(df(e)))) for e in ends]
        slope = lowered[0]
        for value in lowered[1:]:
            slope = ad.minimum(slope, value)
        return slope


def _sound_parallel_lines(df, l: Tensor, u: Tensor, name: str):
    """The sound-mode DeepZ relaxation: lam = ``slope_below``; f(x) − lam·x ∈ [A, B] with
    A = f_lo(l) − lam·l and B = f_hi(u) − lam·u rounded outward, widened by the largest execution error
    of f on [l, u] (proofs/floating_point.md §4); (mu, nu) = fp.mid_rad(A, B)."""
    with ad.no_grad():
        lam = slope_below(df, name, l, u)
        low_l, high_l = fp.enclose(name, l, execution=False)
        low_u, high_u = fp.enclose(name, u, execution=False)
        spill = fp.function_error(ad.maximum(ad.abs(low_l), ad.abs(high_u)))
        start = fp.down(fp.down(low_l - fp.up(lam * l)) - spill)
        end = fp.up(fp.up(high_u - fp.down(lam * u)) + spill)
        mu, nu = fp.mid_rad(start, end)
    return lam, mu, nu


def sigmoid_parallel(l: Tensor, u: Tensor):
    """DeepZ's sigmoid relaxation; σ' = σ(1 − σ) is unimodal with its peak at 0."""
    return _parallel_lines(ad.sigmoid, lambda s: s * (1.0 - s), l, u, "sigmoid")


def tanh_parallel(l: Tensor, u: Tensor):
    """DeepZ's tanh relaxation; tanh' = 1 − tanh² is unimodal with its peak at 0."""
    return _parallel_lines(ad.tanh, lambda s: 1.0 - s * s, l, u, "tanh")
