"""Interval universal approximation (Baader, Mirman & Vechev, ICLR 2020, Theorem 1.1, Section 4).

``interval_network(f, lower, upper, delta, lipschitz=..., range_oracle=...)`` builds a ReLU network n
(Linear and ReLU layers of one ``nn.Sequential``) whose Box analysis n# approximates the range of f on
every box B inside Γ = [lower, upper]:  [l + δ, u − δ] ⊆ n#(B) ⊆ [l − δ, u + δ], l, u = min, max f(B).
Names follow proofs/universal_approximation.md: grid M, steepness L = 2^d, grid boxes c = [α/M, β/M],
bumps φ_c, slices ξ_k = ξ_0 + k·h, Δ_k, n_k = R1(Σ_{c∈Δ_k} φ_c), n = ξ_0 + h·Σ_k n_k.
The size is known before any weight is allocated; a request over the budget raises ApproximationTooLarge.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from refcert import nn
from refcert.autodiff import Tensor

BYTES = 8  # float64 weights


class ApproximationTooLarge(ValueError):
    """The requested network (or its planning table) exceeds the neuron or memory budget."""


@dataclass(frozen=True)
class Plan:
    """Everything the network is built from (proofs/universal_approximation.md, "Construction").

    Scaled coordinates x' = (x − lower) / (upper − lower) ∈ [0,1]^m.  omega: |f(x) − f(y)| ≤ omega when
    ‖x' − y'‖∞ ≤ 1/M; eta: admission slack, lb(c) ≥ min_c f − eta; h ≤ delta − omega − eta.
    Bump j is the grid box [alpha[j]/M, beta[j]/M] and lies in Δ_k for k_from[j] ≤ k < k_to[j].
    """
    lower: np.ndarray
    upper: np.ndarray
    delta: float
    M: int
    d: int
    L: int
    omega: float
    eta: float
    xi0: float
    h: float
    N: int
    alpha: np.ndarray  # (bumps, m) int
    beta: np.ndarray   # (bumps, m) int
    k_from: np.ndarray  # (bumps,) int
    k_to: np.ndarray    # (bumps,) int


@dataclass(frozen=True)
class Size:
    neurons: int        # hidden ReLU units
    linear_layers: int
    parameters: int
    bumps: int
    slices: int         # slices k that contain at least one bump (the others contribute n_k = 0)

    @property
    def megabytes(self) -> float:
        return self.parameters * BYTES / 2**20

    def __str__(self):
        return (f"{self.neurons} ReLU neurons, {self.linear_layers} linear layers, {self.parameters} parameters "
                f"({self.megabytes:.1f} MiB), {self.bumps} bumps, {self.slices} slices")


@dataclass(frozen=True)
class IntervalApproximation:
    net: nn.Sequential
    plan: Plan
    size: Size


# ---------------------------------------------------------------- min trees (Lemma 2, 3)
ONE = None  # the padding constant 1


def balanced_tree(n: int):
    """Balanced binary tree of min2 over leaves 0..n−1, padded with ONE to 2^d leaves, d = ⌈log2 n⌉."""
    nodes = list(range(n)) + [ONE] * (2 ** math.ceil(math.log2(max(n, 1))) - n)
    while len(nodes) > 1:
        nodes = [(nodes[i], nodes[i + 1]) for i in range(0, len(nodes), 2)]
    return nodes[0]


def chain_tree(n: int):
    """min2(...min2(min2(0, 1), 2)..., n−1): the WRONG shape (breaks Lemma 3 for m ≥ 3); tests only."""
    tree = 0
    for leaf in range(1, n):
        tree = (tree, leaf)
    return tree


def _flatten(tree):
    """Nodes in post-order as (children keys or None, leaf index or None, height, constant)."""
    nodes = []

    def visit(node):
        if isinstance(node, tuple):
            a, b = visit(node[0]), visit(node[1])
            height = 1 + max(nodes[a][2], nodes[b][2])
            nodes.append(((a, b), None, height, nodes[a][3] and nodes[b][3]))
        else:
            nodes.append((None, node, 0, node is ONE))
        return len(nodes) - 1
    visit(tree)
    return nodes


def _template(tree, leaves: int):
    """Per-bump layers after the leaf ReLUs: [(W, b)], the last giving the root (min) value μ.

    Values are affine expressions (coef dict over the current layer's ReLU outputs, const).  Leaf j is
    v_j = R1(t_j) = 1 − R(z_j) with z_j = 1 − t_j.  A min2 node takes 4 neurons R(a+b), R(−a−b), R(a−b),
    R(b−a) and equals ½(r1 − r2 − r3 − r4); a value waiting for a deeper sibling (v ≤ 1) passes through
    one neuron as 1 − R(1 − v), which is exact on intervals.  Constant nodes (all ONE) stay constant 1.
    """
    nodes = _flatten(tree)
    root = len(nodes) - 1

    def affine(*terms):  # terms: (scale, (coef, const))
        coef, const = {}, 0.0
        for s, (c, k) in terms:
            const += s * k
            for i, v in c.items():
                coef[i] = coef.get(i, 0.0) + s * v
        return coef, const

    def value_of(key):
        return ({}, 1.0) if nodes[key][3] else value[key]

    value = {key: ({node[1]: -1.0}, 1.0) for key, node in enumerate(nodes) if node[0] is None and not node[3]}
    frontier = [key for key, node in enumerate(nodes) if node[0] is None]
    layers, width = [], leaves
    for t in range(1, nodes[root][2] + 1):
        computed = [key for key, node in enumerate(nodes) if node[2] == t]
        consumed = {child for key in computed for child in nodes[key][0]}
        rows, new_value = [], {}
        for key in frontier:
            if key in consumed or nodes[key][3]:
                continue
            new_value[key] = ({len(rows): -1.0}, 1.0)   # pass through: v = 1 − R(1 − v)
            rows.append(affine((-1.0, value_of(key)), (1.0, ({}, 1.0))))
        for key in computed:
            if nodes[key][3]:
                continue
            a, b = value_of(nodes[key][0][0]), value_of(nodes[key][0][1])
            base = len(rows)
            rows += [affine((1, a), (1, b)), affine((-1, a), (-1, b)), affine((1, a), (-1, b)), affine((-1, a), (1, b))]
            new_value[key] = ({base: 0.5, base + 1: -0.5, base + 2: -0.5, base + 3: -0.5}, 0.0)
        layers.append(_matrix(rows, width))
        frontier = [key for key in frontier if key not in consumed] + computed
        value, width = new_value, len(rows)
    layers.append(_matrix([value_of(root)], width))  # μ, the pre-activation of φ = R(μ)
    return layers


def _matrix(rows, width):
    W, b = np.zeros((len(rows), width)), np.zeros(len(rows))
    for r, (coef, const) in enumerate(rows):
        for i, v in coef.items():
            W[r, i] += v
        b[r] = const
    return W, b


# ---------------------------------------------------------------- planning (grid, slices, Δ_k)
def _pairs(M: int):
    """All 1-D grid intervals [α, β], 0 ≤ α < β ≤ M, α-major; and the index of each one-step extension."""
    pairs = [(a, b) for a in range(M) for b in range(a + 1, M + 1)]
    index = {p: i for i, p in enumerate(pairs)}
    ext_lo = np.array([index.get((a - 1, b), -1) for a, b in pairs])
    ext_hi = np.array([index.get((a, b + 1), -1) for a, b in pairs])
    return np.array(pairs), ext_lo, ext_hi


def _interval_min(cells: np.ndarray, axis: int, M: int) -> np.ndarray:
    """Replace a cell axis (length M) by the grid-interval axis (length M(M+1)/2): min over cells α..β−1."""
    cells = np.moveaxis(cells, axis, 0)
    parts = [np.minimum.accumulate(cells[a:], axis=0) for a in range(M)]
    return np.moveaxis(np.concatenate(parts, axis=0), 0, axis)


def _check_budget(what: str, need_bytes: float, max_bytes: float):
    if need_bytes > max_bytes:
        raise ApproximationTooLarge(
            f"{what} needs about {need_bytes / 2**20:.0f} MiB, over the budget of {max_bytes / 2**20:.0f} MiB; "
            f"use a larger delta, a smaller domain or Lipschitz constant, or raise max_bytes")


def _oracle(range_oracle, lo, hi):
    mins, maxs = range_oracle(lo, hi)
    mins, maxs = np.asarray(mins, dtype=np.float64).reshape(-1), np.asarray(maxs, dtype=np.float64).reshape(-1)
    if mins.shape != (len(lo),) or maxs.shape != (len(lo),) or not np.all(np.isfinite(mins)):
        raise ValueError(f"range_oracle must return two finite arrays of shape ({len(lo)},), got "
                         f"{mins.shape} and {maxs.shape}")
    if np.any(mins > maxs):
        j = int(np.argmax(mins > maxs))
        raise ValueError(f"range_oracle returned min {mins[j]} > max {maxs[j]} on box {lo[j]}..{hi[j]}")
    return mins, maxs


def _boxes(grid: np.ndarray, m: int):
    """Scaled lower/upper corners of every product of 1-D grid intervals (P^m, m), axis-0 major."""
    idx = np.stack(np.meshgrid(*[np.arange(len(grid))] * m, indexing="ij"), -1).reshape(-1, m)
    return grid[idx, 0], grid[idx, 1]


def plan(f, lower, upper, delta, *, lipschitz=None, range_oracle=None, max_bytes=2**30) -> Plan:
    """Grid M, slices (ξ_0, h, N) and the maximal admissible boxes of each Δ_k (see ``interval_network``)."""
    lower, upper = np.atleast_1d(np.asarray(lower, np.float64)), np.atleast_1d(np.asarray(upper, np.float64))
    m = lower.size
    if lower.shape != (m,) or upper.shape != (m,) or not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper))):
        raise ValueError(f"lower and upper must be finite vectors of one length, got {lower} and {upper}")
    if not np.all(lower < upper):
        raise ValueError(f"Γ = [lower, upper] must have lower < upper in every coordinate, got {lower}, {upper}")
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be a positive number, got {delta!r}")
    if lipschitz is None and range_oracle is None:
        raise ValueError("give a Lipschitz constant (lipschitz=) or a range oracle (range_oracle=)")
    if lipschitz is not None and not (math.isfinite(lipschitz) and lipschitz >= 0):
        raise ValueError(f"lipschitz must be a non-negative number, got {lipschitz!r}")
    width = upper - lower
    d = math.ceil(math.log2(2 * m))
    if lipschitz is not None:  # |f(x)−f(y)| ≤ Lip·‖x−y‖∞ ≤ Lip·max(width)·‖x'−y'‖∞
        lip = float(lipschitz) * float(width.max())
        M = max(1, math.ceil(2 * lip / delta))
        omega = lip / M
    else:
        M, omega = _grid_from_oracle(range_oracle, lower, width, delta, max_bytes)
    P = M * (M + 1) // 2
    _check_budget(f"the table of all {P}^{m} grid boxes (M = {M})", 6.0 * BYTES * max(P**m * m, M**m), max_bytes)
    grid, ext_lo, ext_hi = _pairs(M)
    if range_oracle is not None:  # exact minima: eta = 0
        lo, hi = _boxes(grid, m)
        lb, _ = _oracle(range_oracle, lower + width * lo / M, lower + width * hi / M)
        lb = lb.reshape((P,) * m)
        xi0, top = (float(v[0]) for v in _oracle(range_oracle, lower[None], upper[None]))
        eta = 0.0
    else:  # lb(cell) = f(centre) − Lip'/(2M) ≤ min over the cell; lb(c) = min over its cells
        centres = np.stack(np.meshgrid(*[(np.arange(M) + 0.5) / M] * m, indexing="ij"), -1).reshape(-1, m)
        values = np.asarray(f(lower + width * centres), dtype=np.float64).reshape(-1)
        if values.shape != (M**m,) or not np.all(np.isfinite(values)):
            raise ValueError(f"f must map a (count, {m}) array to {M**m} finite values")
        eta = lip / (2 * M)
        lb = (values - eta).reshape((M,) * m)
        xi0, top = float(lb.min()), float(values.max() + eta)
        for axis in range(m):
            lb = _interval_min(lb, axis, M)
    h_max = delta - omega - eta
    if not h_max > 0:
        raise ValueError(f"grid error omega + eta = {omega + eta:.3g} leaves no room below delta = {delta}")
    N = math.ceil((top - xi0) / h_max) if top > xi0 else 0
    h = (top - xi0) / N if N else 0.0
    xi = xi0 + h * np.arange(1, N + 1)                       # ξ_1 .. ξ_N
    K = np.searchsorted(xi, lb, side="right")                # c ∈ Δ_k  ⇔  ξ_{k+1} ≤ lb(c)  ⇔  k < K(c)
    K_ext = np.zeros_like(K)
    for axis in range(m):
        for ext in (ext_lo, ext_hi):
            taken = np.take(K, np.maximum(ext, 0), axis=axis)
            valid = (ext >= 0).reshape([-1 if a == axis else 1 for a in range(m)])
            K_ext = np.maximum(K_ext, np.where(valid, taken, 0))
    used = np.nonzero(K_ext < K)                             # c is maximal in Δ_k for K_ext ≤ k < K
    pairs = np.stack([grid[i] for i in used], axis=1) if m else None   # (bumps, m, 2)
    return Plan(lower, upper, float(delta), M, d, 2**d, omega, eta, xi0, h, N,
                pairs[:, :, 0], pairs[:, :, 1], K_ext[used], K[used])


def _grid_from_oracle(range_oracle, lower, width, delta, max_bytes):
    """Smallest M = 2^j with omega ≤ δ/2, omega = max spread of f over aligned boxes two cells wide."""
    m = lower.size
    for j in range(0, 31):
        M = 2**j
        _check_budget(f"choosing the grid (M = {M})", 6.0 * BYTES * (M + 1) ** m * m, max_bytes)
        starts = np.stack(np.meshgrid(*[np.arange(max(M - 1, 1))] * m, indexing="ij"), -1).reshape(-1, m)
        lo, hi = starts / M, np.minimum(starts + 2, M) / M
        mins, maxs = _oracle(range_oracle, lower + width * lo, lower + width * hi)
        omega = float(np.max(maxs - mins))
        if omega <= delta / 2:
            return M, omega
    raise ValueError("range oracle: f varies too fast for any grid up to M = 2^30")


# ---------------------------------------------------------------- the network
def size_of(plan: Plan, tree=None) -> Size:
    """Neurons, layers and parameters of ``build_net(plan, tree)``, computed without building it."""
    m, B = plan.lower.size, len(plan.alpha)
    if B == 0:
        return Size(0, 1, m + 1, 0, 0)
    template = _template(balanced_tree(2 * m) if tree is None else tree, 2 * m)
    widths = [m, 2 * m * B] + [W.shape[0] * B for W, _ in template]
    slices = len(_active_slices(plan))
    widths += [slices, 1]
    params = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
    return Size(sum(widths[1:-1]), len(widths) - 1, params, B, slices)


def _active_slices(plan: Plan) -> np.ndarray:
    return np.unique(np.concatenate([np.arange(a, b) for a, b in zip(plan.k_from, plan.k_to)]))


def _linear(W: np.ndarray, b: np.ndarray) -> nn.Linear:
    layer = nn.Linear(1, 1, dtype="float64")
    layer.in_features, layer.out_features = W.shape[1], W.shape[0]
    layer.params = {"weight": Tensor(np.ascontiguousarray(W, dtype=np.float64), requires_grad=True),
                    "bias": Tensor(np.asarray(b, dtype=np.float64), requires_grad=True)}
    return layer


def build_net(plan: Plan, tree=None) -> nn.Sequential:
    """The network of the proof: leaves t_j, min tree (balanced by default), φ_c = R(μ_c), n_k, n.

    Leaf (i, lo) of bump c: t = M·L·(x'_i − α_i/M) + 1; leaf (i, hi): t = M·L·(β_i/M − x'_i) + 1, with
    x'_i = (x_i − lower_i)/width_i folded into the first Linear layer; each is clipped by R1 = min(·, 1).
    """
    m, M, L, B = plan.lower.size, plan.M, plan.L, len(plan.alpha)
    if B == 0:  # no slice admits a box: n = ξ_0
        return nn.Sequential(_linear(np.zeros((1, m)), np.array([plan.xi0])))
    width = plan.upper - plan.lower
    # layer 0: z = 1 − t for every leaf, ordered (bump, coordinate, side)
    W0, b0 = np.zeros((B, m, 2, m)), np.zeros((B, m, 2))
    for i in range(m):
        W0[:, i, 0, i], W0[:, i, 1, i] = -M * L / width[i], M * L / width[i]
        b0[:, i, 0] = M * L * plan.lower[i] / width[i] + L * plan.alpha[:, i]
        b0[:, i, 1] = -M * L * plan.lower[i] / width[i] - L * plan.beta[:, i]
    layers = [_linear(W0.reshape(B * 2 * m, m), b0.reshape(-1)), nn.ReLU()]
    for W, b in _template(balanced_tree(2 * m) if tree is None else tree, 2 * m):   # min tree, then μ
        layers += [_linear(np.kron(np.eye(B), W), np.tile(b, B)), nn.ReLU()]        # ReLU after μ: φ_c
    slices = _active_slices(plan)
    member = (plan.k_from[None, :] <= slices[:, None]) & (slices[:, None] < plan.k_to[None, :])
    layers += [_linear(-member.astype(np.float64), np.ones(len(slices))), nn.ReLU()]  # R(1 − Σ φ_c)
    # n = ξ_0 + h·Σ_k n_k with n_k = R1(Σ φ_c) = 1 − R(1 − Σ φ_c)
    layers.append(_linear(np.full((1, len(slices)), -plan.h), np.array([plan.xi0 + plan.h * len(slices)])))
    return nn.Sequential(*layers)


def interval_network(f, lower, upper, delta, *, lipschitz=None, range_oracle=None,
                     max_neurons=200_000, max_bytes=2**30) -> IntervalApproximation:
    """A ReLU network n whose interval analysis δ-approximates f's range on every box in [lower, upper].

    f: maps a (count, m) float64 array to (count,) values.  Give ``lipschitz`` (ℓ∞: |f(x) − f(y)| ≤
    Lip·‖x − y‖∞) and/or ``range_oracle(box_lower, box_upper) -> (min, max)`` taking (count, m) arrays of
    original coordinates and returning the EXACT minimum and maximum of f per box (count,).  Raises
    ApproximationTooLarge, naming the size needed, before allocating more than ``max_bytes`` of weights
    or ``max_neurons`` hidden neurons.  Returns IntervalApproximation(net, plan, size).
    """
    the_plan = plan(f, lower, upper, delta, lipschitz=lipschitz, range_oracle=range_oracle, max_bytes=max_bytes)
    size = size_of(the_plan)
    if size.neurons > max_neurons:
        raise ApproximationTooLarge(f"the network would need {size}; over max_neurons = {max_neurons}; "
                                    f"use a larger delta or raise max_neurons")
    _check_budget(f"the network ({size})", size.parameters * BYTES * 2, max_bytes)
    return IntervalApproximation(build_net(the_plan), the_plan, size)
