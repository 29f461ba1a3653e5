"""Certification: prove, falsify or give up on local robustness, input by input (DESIGN.md, "Certification").

For each input x with label t and radius eps the set is S = ball∞(x, eps) ∩ [clip lo, hi] (ERAN's
convention: pixel space, before the net's own normalisation), a set of reals: x, eps and clip are read as
exact numbers.  Verdicts (the guarantee: proofs/floating_point.md, README "What verified means"):

- ``verified``: the domain's sound lower bound of min_{j≠t} y_t − y_j over S is > 0 (``refcert.spec``):
  the real-arithmetic network and every IEEE-754 execution in the ``execution`` precision (default: the
  net's dtype), in any summation order, give t a strictly positive margin on S.  The bound must not
  exceed the concrete margin at x (impossible for a sound domain; if it happens we raise);
- ``falsified``: a point of S (checked exactly, no tolerance) — x itself, else one found by PGD inside
  the inward-rounded ball — that refutes the guarantee: the real network gives it a margin ≤ 0 (a sound
  bound at the point, in real arithmetic), or an execution in the ``execution`` precision does (a fresh
  forward pass in that precision);
- ``unknown``: neither.
"""
from __future__ import annotations

import math
import time

import numpy as np

from refcert import attacks, backends, domains, fp, nn, spec
from refcert import autodiff as ad
from refcert.autodiff import Tensor
from refcert.certify_geometric import certify_geometric
from refcert.verdicts import (  # noqa: F401  (re-exported: the names certify has always offered)
    CONCRETE_BATCH, TOLERANCE, VERDICTS, CertifyResult, ball_domains, check_domains, clean_margins, cross_check,
    misclassified, refuting, validate)


def _attack(net, x, labels, eps, clip, steps, restarts, rng):
    """PGD points (numpy) for a batch; margin loss, then cross-entropy for any still-robust input."""
    found = attacks.pgd(net, x, labels, eps, steps=steps, restarts=restarts, clip=clip, loss="margin", rng=rng)
    points, margins = found.points.numpy(), found.margins.numpy()
    again = margins > 0
    if np.any(again) and steps > 0:
        retry = attacks.pgd(net, x[again], labels[again], eps, steps=steps, restarts=1, clip=clip, loss="ce",
                            rng=rng)
        points[again] = retry.points.numpy()
    return points


def certify(net, x, labels, eps=0.0, domain="deepzono", clip=(0.0, 1.0), attack: bool = True,
            pgd_steps: int = 40, pgd_restarts: int = 1, batch_size: int | None = None, rng=None, execution=None,
            spec=None, splits: int = 1, bounds: str = "linear"):
    """Certify each input of ``x`` (N, *shape) with ``labels`` (N,) on the set ball∞(x, eps) ∩ clip.

    ``spec``: a geometric specification ("rotate:15", "translate:2,2+brightness:0.05", ...): the set is then
    every transformed image plus the eps ball (``refcert.certify_geometric``, with ``splits`` pieces per
    parameter and ``bounds`` "linear" (DeepG) or "interval"); ``batch_size`` is then the pieces per run.
    ``batch_size``: inputs per abstract run; default (None) ``default_batch(domain)``.

    ``domain``: a registered name (``refcert.domains.names()``) or a list of names; a list returns
    ``{name: CertifyResult}``, PGD then runs once per input and its points are shared.
    ``rng``: NumPy Generator or seed for PGD's random starts (default 0).
    ``execution``: 'float32' | 'float64' | 'exact', the precision of the executions a verdict covers
    (default: the policy's, else the net's dtype).
    """
    if spec is not None:
        return certify_geometric(net, x, labels, spec, domain=domain, splits=splits, bounds=bounds, eps=eps,
                                 clip=clip, attack=attack, pgd_steps=pgd_steps, execution=execution, rng=rng,
                                 piece_batch=32 if batch_size is None else batch_size)
    execution = fp.check_execution(execution) if execution is not None else fp.policy().execution
    execution = execution or nn.parameter_dtype(net)
    nn.check_finite(net)
    nn.check_range(net, execution)
    with fp.use(execution=execution):
        return _certify(net, x, labels, eps, domain, clip, attack, pgd_steps, pgd_restarts, batch_size, rng)


def default_batch(domain: str) -> int:
    """Inputs per abstract run when none is given: 32 for Box and on a GPU; on a CPU 1 for the others,
    where the zonotopes and DeepPoly are fastest at batch 1 (their cost per input grows with the batch:
    DeepPoly refines a neuron for every input when it crosses 0 in any of them; bench/certify.py)."""
    return 32 if domain == "box" or backends.current().name != "numpy" else 1


def _certify(net, x, labels, eps, domain, clip, attack, pgd_steps, pgd_restarts, batch_size, rng):
    names = [domain] if isinstance(domain, str) else list(dict.fromkeys(domain))
    for name in names:
        domains.get(name)  # unknown names fail before any work
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x, labels, eps, n_classes = validate(net, x, labels, eps, clip)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
    predicted, clean = clean_margins(net, x, labels, max(int(batch_size or 1), CONCRETE_BATCH))
    attack_points: dict[int, np.ndarray] = {}   # input index -> PGD point (shared by domains)
    results = {}
    for name in names:
        abstract = int(batch_size) if batch_size is not None else default_batch(name)
        results[name] = _certify_one(net, x, labels, eps, name, clip, attack, pgd_steps, pgd_restarts,
                                     (abstract, max(abstract, CONCRETE_BATCH)), rng, predicted, clean, n_classes,
                                     attack_points)
    cross_check(results)
    return results[names[0]] if isinstance(domain, str) else results


def _certify_one(net, x, labels, eps, name, clip, attack, steps, restarts, batches, rng, predicted,
                 clean, n_classes, attack_points) -> CertifyResult:
    """One domain: bound every input's margin, then attack the undecided ones (PGD points cached).
    ``batches``: (inputs per abstract run, inputs per concrete pass: PGD and re-checks)."""
    batch_size, concrete_batch = batches
    N = x.shape[0]
    wrong = clean <= 0
    verdicts = ["unknown"] * N
    margins = np.full(N, -math.inf)
    counterexamples = [None] * N
    times = np.zeros(N)
    element_of = domains.get(name).linf_ball
    for start in range(0, N, batch_size):
        idx = np.arange(start, min(start + batch_size, N))
        began = time.perf_counter()
        with ad.no_grad():
            lower = spec.margin_bounds(net, element_of(Tensor(x[idx]), eps, clip), labels[idx], n_classes).numpy()
        times[idx] = (time.perf_counter() - began) / len(idx)
        margins[idx] = lower.min(axis=1) if n_classes > 1 else math.inf
    margins = np.where(np.isnan(margins), -math.inf, margins)
    limit = clean if fp.policy().sound else clean + TOLERANCE * (1 + np.abs(clean))  # sound bounds cover
    unsound = np.flatnonzero(margins > limit)                                          # our own float pass
    if unsound.size:
        i = unsound[0]
        raise RuntimeError(f"domain {name!r} is unsound on input {i}: certified margin {margins[i]:.6g} exceeds "
                           f"the margin {clean[i]:.6g} at x itself; refusing to certify")
    for i in np.flatnonzero((margins > 0) & ~wrong):
        verdicts[i] = "verified"
    candidates = {int(i): x[i] for i in np.flatnonzero(wrong)}     # x itself, where the float pass errs
    began = time.perf_counter()
    undecided = [i for i in range(N) if verdicts[i] == "unknown" and i not in candidates]
    if attack and undecided and eps > 0:
        todo = np.array([i for i in undecided if i not in attack_points], dtype=np.int64)
        for start in range(0, len(todo), concrete_batch):
            part = todo[start:start + concrete_batch]
            for i, point in zip(part, _attack(net, x[part], labels[part], eps, clip, steps, restarts, rng)):
                attack_points[int(i)] = point
        points = np.stack([attack_points[i] for i in undecided])
        for i, is_hit in zip(undecided, misclassified(net, points, labels[undecided], concrete_batch)):
            if is_hit:
                candidates[i] = attack_points[i]
    if candidates:  # re-check exactly: a member of the real set that refutes the guarantee
        index = np.array(sorted(candidates), dtype=np.int64)
        points = np.stack([candidates[i] for i in index])
        member = fp.inside(points, x[index], eps, clip)
        refutes = refuting(net, points, labels[index], n_classes, concrete_batch)
        for i, point, ok in zip(index, points, member & refutes):
            if ok and verdicts[i] != "verified":
                verdicts[i], counterexamples[i] = "falsified", point
    return CertifyResult(name, eps, labels, predicted, verdicts, margins, counterexamples, times,
                         attack_seconds=time.perf_counter() - began)
