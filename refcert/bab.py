"""Branch and bound: refute "some x in the box has C·net(x) in the unsafe set" by splitting the problem.

Two ways to split, one loop (``_search``): a queue of subproblems, bounded a batch at a time (one
abstract run for the whole batch, which is where a GPU pays), pruned when a sound lower bound puts a row
of C·y outside the unsafe set (``refuted``), split in two otherwise.  An attack (``attack(lower, upper,
starts)``, PGD re-checked exactly by the caller, who decides how often it runs) gets the whole box each round
with ``starts`` at the corners where the most promising subproblems' relaxed bounds are reached (ReLU
splitting), or the most promising open piece (input splitting: pieces are taken smallest parent margin first).

* **ReLU splitting** (``relu_split``; Bunel et al., JMLR'20; β-CROWN, Wang et al., NeurIPS'21): a
  subproblem fixes some crossing ReLUs active (x ≥ 0) or inactive (x ≤ 0).  Its bound is α-CROWN's on the
  steps of one DeepPoly pass over the whole box, with the split neurons' exact lines and their
  constraints weighted by β ≥ 0 (``refcert.domains.alpha``; proofs/bab.md).  The neuron to split is the
  free crossing neuron with the largest BaBSR intercept score (Bunel et al., Sec. 5.1): Σ_rows max(−λ, 0)·
  u(−l)/(u − l), what the upper chord's offset costs the bound, λ the neuron's coefficient in the
  back-substitution (so a split removes the largest loss first).
* **Input splitting** (``input_split``; for few inputs, ACAS Xu style): a subproblem is a piece of the
  box, bounded by a fresh alpha-crown run (intermediate bounds tighten with the piece).  The piece is
  bisected along the coordinate with the largest gradient × width: |∂(Σ rows of C·y)/∂x_i| at the
  piece's centre times its width.

Both answer ``"unsat"`` (every subproblem refuted: the pieces cover the box, the two halves of a split
cover the parent's subdomain), ``"sat"`` with the attack's point, or ``"unknown"`` when the budget of
subproblems or the deadline (``time.monotonic()``) runs out.  Proofs: proofs/bab.md, proofs/alpha_crown.md.
"""
from __future__ import annotations

import heapq
import math
import time

import numpy as np

from refcert import autodiff as ad
from refcert import backends, domains, interpret, nn
from refcert.autodiff import Tensor
from refcert.domains import alpha
from refcert.domains.backsub import RelaxStep
from refcert.spec import through

BATCH = 32            # subproblems bounded together
MAX_SUBPROBLEMS = 20000
#: α,β optimisation per round of ReLU splitting: β has no natural scale and starts at 0 in every
#: subproblem (no warm start), so it needs more and larger steps than α-CROWN's defaults
ITERATIONS, LR = 50, 0.3


def _element(net64, lower, upper, C):
    """The alpha-crown element of C·net over the boxes [lower, upper] (batch P, *input shape)."""
    element = domains.get("alpha-crown").from_bounds(Tensor(lower), Tensor(upper))
    Cs = np.broadcast_to(C, (lower.shape[0],) + C.shape)
    with ad.no_grad():
        element = interpret.run([net64, nn.Flatten()], element)
        return through([], element, Tensor(np.ascontiguousarray(Cs)))


def _rows(C):
    xp = backends.current().xp
    k = C.shape[0]
    return Tensor(xp.reshape(backends.current().asarray(np.eye(k)), (1, k, k)))


def relu_split(net64, lower, upper, C, refuted, deadline=math.inf, attack=None, batch=BATCH,
               max_subproblems=MAX_SUBPROBLEMS, goal=None):
    """ReLU branch and bound on one box (lower, upper: (1, *shape)); see the module docstring.  ``goal``:
    per row of C the value a lower bound must pass to refute (stops the optimisation early)."""
    root = _element(net64, lower, upper, C)
    steps = alpha.constant_steps(root.steps)
    relus = alpha.relu_steps(steps)
    xp = backends.current().xp
    shapes = [tuple(step.lower_slope.shape[1:]) for step in relus]
    crossing = [xp.reshape(step.crossing, (1,) + shape) for step, shape in zip(relus, shapes)]
    intercept = [xp.where(step.crossing, step.upper_offset.value, 0.0) for step in relus]  # u(−l)/(u − l)
    queue = [[xp.zeros((1,) + shape, dtype=xp.int8) for shape in shapes]]  # one subproblem: no split
    done, starts = 0, None
    while queue:
        if time.monotonic() > deadline or done >= max_subproblems:
            return "unknown", None
        if attack is not None:
            point = attack(lower, upper, starts)
            if point is not None:
                return "sat", point
        take, queue = queue[:batch], queue[batch:]
        splits = [xp.concat([s[k] for s in take]) for k in range(len(shapes))]
        record = []
        target = None if goal is None else np.broadcast_to(np.asarray(goal, dtype=np.float64), (len(take), C.shape[0]))
        with alpha.use(deadline=deadline, iterations=max(alpha.settings().iterations, ITERATIONS),
                       lr=max(alpha.settings().lr, LR)):
            low = alpha.optimize(_rows(C), steps, root.input_lower, root.input_upper, splits=splits or None,
                                 batch=len(take), record=record,
                                 goal=None if target is None else backends.current().asarray(target)).numpy()
        done += len(take)
        open_ = ~refuted(low)
        if not open_.any():
            continue
        starts = _primal_points(record, low, target, open_, root.input_lower, root.input_upper)
        scores = _scores(record, relus, intercept, splits, crossing, len(take))
        for i in np.flatnonzero(open_):
            if scores[i] is None:  # every crossing neuron split and still not refuted: cannot decide here
                return "unknown", None
            layer, index = scores[i]
            for side in (1, -1):
                child = [s[i:i + 1].copy() for s in splits]
                flat = xp.reshape(child[layer], (-1,))
                flat[index] = side
                child[layer] = xp.reshape(flat, child[layer].shape)
                queue.append(child)
    return "unsat", None


def _primal_points(record, low, target, open_, input_lower, input_upper, count=2):
    """Attack starts from the ``count`` open subproblems closest to a counterexample (smallest best margin
    max_r (bound_r − goal_r)): the box corner where the relaxed bound of the row hardest to satisfy is
    reached, where(lam'_r > 0, l, u) (lam' from ``record``'s "input" entry).  None without it."""
    lam = next((l for step, l in record if isinstance(step, str) and step == "input"), None)
    if lam is None:
        return None
    margin = low if target is None else low - target
    best = np.max(np.where(np.isnan(margin), np.inf, margin), axis=1)
    order = [i for i in np.argsort(best) if open_[i]][:count]
    lam = backends.to_numpy(lam.value)
    lo, hi = backends.to_numpy(input_lower.value)[0], backends.to_numpy(input_upper.value)[0]
    rows = np.argmax(np.where(np.isnan(margin), -np.inf, margin), axis=1)
    return np.stack([np.where(lam[min(i, lam.shape[0] - 1), rows[i]] > 0, lo, hi) for i in order])


def _scores(record, relus, intercept, splits, crossing, n):
    """Per subproblem: (layer, flat index) of the free crossing neuron with the largest BaBSR intercept
    score, or None when none is left."""
    xp = backends.current().xp
    lam_of = {id(step.crossing): lam for step, lam in record if isinstance(step, RelaxStep)}  # masks are shared
    best = [(-1.0, None)] * n
    for k, step in enumerate(relus):
        lam = lam_of.get(id(step.crossing))
        free = crossing[k] & (splits[k] == 0)
        if lam is None:
            score = xp.where(free, 1e-12 + intercept[k], -1.0)
        else:
            score = xp.sum(xp.maximum(-lam.value, 0.0), axis=1) * intercept[k] + 1e-12
            score = xp.where(free, xp.broadcast_to(score, free.shape), -1.0)
        flat = xp.reshape(score, (n, -1))
        top = xp.argmax(flat, axis=1)
        for i in range(n):
            value = float(flat[i, int(top[i])])
            if value >= 0 and value > best[i][0]:
                best[i] = (value, (k, int(top[i])))
    return [choice for _, choice in best]


def input_split(net64, lower, upper, C, refuted, deadline=math.inf, attack=None, batch=BATCH,
                max_subproblems=MAX_SUBPROBLEMS, goal=None):
    """Input-box branch and bound (lower, upper: (1, *shape)); see the module docstring.  With ``goal`` (per
    row of C, the value a lower bound must pass to refute) the open pieces are taken most promising first —
    the smallest best margin max_i (bound_i − goal_i) of their parent — and the attack gets the first."""
    queue = [(0.0, 0, lower, upper)]  # (parent's margin, tie-break, lo, hi): a heap
    done = count = 0
    while queue:
        if time.monotonic() > deadline or done >= max_subproblems:
            return "unknown", None
        take = [heapq.heappop(queue) for _ in range(min(batch, len(queue)))]
        lo = np.concatenate([piece[2] for piece in take])
        hi = np.concatenate([piece[3] for piece in take])
        if attack is not None:
            point = attack(take[0][2], take[0][3], None)
            if point is not None:
                return "sat", point
        element = _element(net64, lo, hi, C)
        with alpha.use(deadline=deadline):
            low = alpha.optimize(_rows(C), element.steps, element.input_lower, element.input_upper).numpy()
        done += len(take)
        open_ = np.flatnonzero(~refuted(low))
        if open_.size == 0:
            continue
        influence = _influence(net64, (lo[open_] + hi[open_]) / 2, C) * (hi[open_] - lo[open_]).reshape(open_.size, -1)
        margins = np.zeros(len(take)) if goal is None else np.max(low - np.asarray(goal, dtype=np.float64), axis=1)
        margins = np.nan_to_num(margins, nan=-np.inf)  # a NaN bound: look there first
        for j, i in enumerate(open_):
            k = int(np.argmax(influence[j]))
            width = (hi[i].reshape(-1))[k] - (lo[i].reshape(-1))[k]
            if width <= 0:
                return "unknown", None  # a point no bound refutes and the attack did not violate
            middle = lo[i].reshape(-1)[k] + width / 2
            left_hi, right_lo = hi[i:i + 1].copy().reshape(-1), lo[i:i + 1].copy().reshape(-1)
            left_hi[k], right_lo[k] = middle, middle
            for piece in ((lo[i:i + 1], left_hi.reshape(hi[i:i + 1].shape)), (right_lo.reshape(lo[i:i + 1].shape), hi[i:i + 1])):
                count += 1
                heapq.heappush(queue, (float(margins[i]), count, *piece))
    return "unsat", None


def _influence(net64, centres, C):
    """|∂(Σ_rows C·y)/∂x| at each centre (P, *shape) -> (P, n)."""
    with ad.enable_grad():
        x = Tensor(centres, requires_grad=True)
        y = ad.reshape(net64(x), shape=(centres.shape[0], -1))
        ad.sum(ad.matmul(y, Tensor(C.T))).backward()
    return np.abs(ad.as_tensor(x.grad).numpy().reshape(centres.shape[0], -1)) + 1e-12
