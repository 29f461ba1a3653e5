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
from dataclasses import dataclass, field

import numpy as np

from refcert import attacks, backends, domains, fp, nn, spec
from refcert import autodiff as ad
from refcert.autodiff import Tensor

VERDICTS = ("verified", "falsified", "unknown")
#: slack for accepting inputs slightly outside clip (data noise); never used for membership or verdicts
TOLERANCE = 1e-5
#: concrete passes (clean forward, PGD, re-checks) take at least this many inputs at once, whatever the
#: abstract batch: zonotopes and DeepPoly are fastest at batch 1 on a CPU, PGD is not
CONCRETE_BATCH = 128


@dataclass
class CertifyResult:
    """Per-input outcome on one domain; arrays are NumPy, index i is input i."""
    domain: str
    eps: float
    labels: np.ndarray                # (N,) int
    predicted: np.ndarray             # (N,) clean prediction
    verdicts: list                    # N strings from VERDICTS
    margins: np.ndarray               # (N,) certified lower bound of min_j y_t − y_j over the set
    counterexamples: list             # N entries: (*shape) array for 'falsified', else None
    times: np.ndarray                 # (N,) seconds of bound computation per input (batch time / batch size)
    attack_seconds: float = 0.0       # time spent in PGD for this domain's undecided inputs
    extra: dict = field(default_factory=dict)

    def fraction(self, verdict: str) -> float:
        return sum(v == verdict for v in self.verdicts) / max(len(self.verdicts), 1)

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.predicted == self.labels)) if len(self.labels) else 0.0

    def summary(self) -> dict:
        return {"domain": self.domain, "eps": self.eps, "n": len(self.verdicts), "accuracy": self.accuracy,
                **{v: self.fraction(v) for v in VERDICTS},
                "ms_per_image": 1000.0 * float(np.mean(self.times)) if len(self.times) else 0.0}


def ball_domains() -> list[str]:
    """Registered domains that can hold an L∞ ball (all but the concrete one and segment-only ones)."""
    names = []
    for name in domains.names():
        try:
            element = domains.get(name).linf_ball(np.full((1, 2), 0.5), 0.1)
        except ValueError:  # e.g. point and exactline refuse boxes that are not points
            continue
        if hasattr(element, "bounds"):
            names.append(name)
    return names


def check_domains(names) -> list[str]:
    """``names`` without repeats, each a domain of ``ball_domains()``; else a ValueError listing those."""
    accepted = ball_domains()
    for name in names:
        if name not in accepted:
            what = f"unknown domain {name!r}" if name not in domains.names() else \
                f"domain {name!r} cannot bound a box or L∞ ball"
            raise ValueError(f"{what}; choose from {', '.join(accepted)}")
    return list(dict.fromkeys(names))


def _validate(net, x, labels, eps, clip):
    """Inputs as NumPy (x float, labels int64) after checking shapes, values and ranges."""
    nn.check_finite(net)
    x = np.asarray(backends.to_numpy(x))
    labels = np.asarray(backends.to_numpy(labels))
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (N, *input_shape), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)).ravel()
        raise ValueError(f"x contains NaN or infinite values (inputs {bad[:5].tolist()})")
    labels = labels.reshape(-1)
    if labels.shape[0] != x.shape[0]:
        raise ValueError(f"got {x.shape[0]} inputs but {labels.shape[0]} labels")
    if labels.size and (not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels))):
        raise ValueError("labels must be integers")
    labels = labels.astype(np.int64)
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if clip is not None:
        lo, hi = float(clip[0]), float(clip[1])
        if lo > hi:
            raise ValueError(f"clip range is empty: {clip}")
        if x.size and (x.min() < lo - TOLERANCE or x.max() > hi + TOLERANCE):
            raise ValueError(f"inputs must lie in the clip range [{lo}, {hi}], got values in "
                             f"[{x.min():.4g}, {x.max():.4g}] (scale pixels to [0, 1] or pass clip=None)")
    try:
        with ad.no_grad():
            logits = net(Tensor(x[:1]))
    except Exception as err:  # a shape mismatch deep inside a layer: say what was fed in
        raise ValueError(f"the net cannot run on inputs of shape {x.shape[1:]}{_expected(net)}") from err
    n_classes = logits.shape[-1]
    if logits.ndim != 2:
        raise ValueError(f"the net must output (batch, classes), got shape {logits.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1} (the net has {n_classes} outputs), "
                         f"got {labels.min()}..{labels.max()}")
    return x, labels, eps, n_classes


def _expected(net) -> str:
    """A hint naming what the net's first shape-fixing layer expects, e.g. ' (first Linear expects 784 features)'."""
    layers = list(getattr(net, "layers", [net]))
    for layer in layers:
        if layer.op == "linear":
            return f" (its first Linear layer expects {layer.params['weight'].shape[-1]} features)"
        if layer.op == "conv2d":
            return f" (its first Conv2d layer expects {layer.params['weight'].shape[1]} channels, NCHW)"
        if layer.op not in ("normalize", "flatten", "permute", "relu", "sigmoid", "tanh"):
            break
    return ""


def _refuting(net, points, labels, n_classes: int, batch_size: int) -> np.ndarray:
    """(N,) bool: each point refutes the guarantee — (a) the real network gives it a margin ≤ 0 (a sound
    Box bound at the single point, real arithmetic), or (b) an execution in the policy's precision does
    (refcert's own forward pass in that precision, on the point as a float of it)."""
    hit = np.zeros(points.shape[0], dtype=bool)
    if n_classes < 2:
        return hit
    box = domains.get("box")
    execution = fp.policy().execution
    in_precision = execution in ("float32", "float64") and bool(np.all(points.astype(execution) == points))
    net_p = _in_precision(net, execution) if in_precision else None
    with ad.no_grad():
        for start in range(0, points.shape[0], batch_size):
            part, part_labels = points[start:start + batch_size], labels[start:start + batch_size]
            if net_p is not None:
                hit[start:start + batch_size] = _clean_margins(net_p, part.astype(execution), part_labels,
                                                               batch_size)[1] <= 0
            with fp.use(execution="exact"):
                point = Tensor(part)
                out = spec.margin_element(net, box.from_bounds(point, point), part_labels, n_classes)
            hit[start:start + batch_size] |= (out.bounds()[1].numpy() <= 0).any(axis=1)
    return hit


def _in_precision(net, dtype: str):
    """The net with its parameters in ``dtype`` (itself when they already are)."""
    if nn.parameter_dtype(net) in (None, dtype):
        return net
    import copy
    return copy.deepcopy(net).astype(dtype)


def _clean_margins(net, x, labels, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, margin y_t − max_{j≠t} y_j) by fresh concrete forward passes, in batches."""
    predicted, margins = [], []
    with ad.no_grad():
        for start in range(0, x.shape[0], batch_size):
            logits = net(Tensor(x[start:start + batch_size]))
            predicted.append(logits.numpy().argmax(axis=-1))
            margins.append(attacks.margin(logits, backends.current().asarray(labels[start:start + batch_size])).numpy())
    if not predicted:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(predicted), np.concatenate(margins)


def _misclassified(net, points, labels, batch_size: int) -> np.ndarray:
    """Concrete re-check: fresh forward pass, margin ≤ 0 (a tie counts as misclassified)."""
    return _clean_margins(net, points, labels, batch_size)[1] <= 0


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


def certify(net, x, labels, eps, domain="deepzono", clip=(0.0, 1.0), attack: bool = True,
            pgd_steps: int = 40, pgd_restarts: int = 1, batch_size: int = 32, rng=None, execution=None):
    """Certify each input of ``x`` (N, *shape) with ``labels`` (N,) on the set ball∞(x, eps) ∩ clip.

    ``domain``: a registered name (``refcert.domains.names()``) or a list of names; a list returns
    ``{name: CertifyResult}``, PGD then runs once per input and its points are shared.
    ``rng``: NumPy Generator or seed for PGD's random starts (default 0).
    ``execution``: 'float32' | 'float64' | 'exact', the precision of the executions a verdict covers
    (default: the policy's, else the net's dtype).
    """
    execution = fp.check_execution(execution) if execution is not None else fp.policy().execution
    execution = execution or nn.parameter_dtype(net)
    nn.check_finite(net)
    nn.check_range(net, execution)
    with fp.use(execution=execution):
        return _certify(net, x, labels, eps, domain, clip, attack, pgd_steps, pgd_restarts, batch_size, rng)


def _certify(net, x, labels, eps, domain, clip, attack, pgd_steps, pgd_restarts, batch_size, rng):
    names = [domain] if isinstance(domain, str) else list(dict.fromkeys(domain))
    for name in names:
        domains.get(name)  # unknown names fail before any work
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x, labels, eps, n_classes = _validate(net, x, labels, eps, clip)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
    batches = (int(batch_size), max(int(batch_size), CONCRETE_BATCH))
    predicted, clean = _clean_margins(net, x, labels, batches[1])
    attack_points: dict[int, np.ndarray] = {}   # input index -> PGD point (shared by domains)
    results = {}
    for name in names:
        results[name] = _certify_one(net, x, labels, eps, name, clip, attack, pgd_steps, pgd_restarts,
                                     batches, rng, predicted, clean, n_classes, attack_points)
    _cross_check(results)
    return results[names[0]] if isinstance(domain, str) else results


def _cross_check(results):
    """No input may be verified by one domain and falsified (by a checked point) under another."""
    for name, res in results.items():
        for other, res_other in results.items():
            clash = [i for i, v in enumerate(res.verdicts) if v == "verified" and res_other.verdicts[i] == "falsified"]
            if clash:
                raise RuntimeError(f"domain {name!r} verified input {clash[0]}, but a checked counterexample "
                                   f"exists (found while running {other!r}): the domain is unsound")


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
        for i, is_hit in zip(undecided, _misclassified(net, points, labels[undecided], concrete_batch)):
            if is_hit:
                candidates[i] = attack_points[i]
    if candidates:  # re-check exactly: a member of the real set that refutes the guarantee
        index = np.array(sorted(candidates), dtype=np.int64)
        points = np.stack([candidates[i] for i in index])
        member = fp.inside(points, x[index], eps, clip)
        refuting = _refuting(net, points, labels[index], n_classes, concrete_batch)
        for i, point, ok in zip(index, points, member & refuting):
            if ok and verdicts[i] != "verified":
                verdicts[i], counterexamples[i] = "falsified", point
    return CertifyResult(name, eps, labels, predicted, verdicts, margins, counterexamples, times,
                         attack_seconds=time.perf_counter() - began)
