"""Verdicts and their checks, shared by every kind of certification (``certify``: L∞ balls;
``certify_geometric``: transformations): the result record, input validation, the concrete passes, the
exact re-check that makes a found point a counterexample (``refuting``), and the cross-check that no
input is verified by one domain and falsified under another.  The guarantee: proofs/floating_point.md.
"""
from __future__ import annotations

import math
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


def validate(net, x, labels, eps, clip):
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
        if layer.op not in ("normalize", "batchnorm", "flatten", "permute", "relu", "sigmoid", "tanh"):
            break
    return ""


def refuting(net, points, labels, n_classes: int, batch_size: int) -> np.ndarray:
    """(N,) bool: each point refutes the guarantee — (a) the real network gives it a margin ≤ 0 (a sound
    Box bound at the single point, real arithmetic), or (b) an execution in the policy's precision does
    (refcert's own forward pass in that precision, on the point as a float of it)."""
    hit = np.zeros(points.shape[0], dtype=bool)
    if n_classes < 2:
        return hit
    box = domains.get("box")
    execution = fp.policy().execution
    floats = execution in ("float32", "float64") and bool(np.all(points.astype(execution) == points))
    net_p = in_precision(net, execution) if floats else None
    with ad.no_grad():
        for start in range(0, points.shape[0], batch_size):
            part, part_labels = points[start:start + batch_size], labels[start:start + batch_size]
            if net_p is not None:
                hit[start:start + batch_size] = clean_margins(net_p, part.astype(execution), part_labels,
                                                              batch_size)[1] <= 0
            with fp.use(execution="exact"):
                point = Tensor(part)
                out = spec.margin_element(net, box.from_bounds(point, point), part_labels, n_classes)
            hit[start:start + batch_size] |= (out.bounds()[1].numpy() <= 0).any(axis=1)
    return hit


def in_precision(net, dtype: str):
    """The net with its parameters in ``dtype`` (itself when they already are)."""
    if nn.parameter_dtype(net) in (None, dtype):
        return net
    import copy
    return copy.deepcopy(net).astype(dtype)


def clean_margins(net, x, labels, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
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


def misclassified(net, points, labels, batch_size: int) -> np.ndarray:
    """Concrete re-check: fresh forward pass, margin ≤ 0 (a tie counts as misclassified)."""
    return clean_margins(net, points, labels, batch_size)[1] <= 0


def cross_check(results):
    """No input may be verified by one domain and falsified (by a checked point) under another."""
    for name, res in results.items():
        for other, res_other in results.items():
            clash = [i for i, v in enumerate(res.verdicts) if v == "verified" and res_other.verdicts[i] == "falsified"]
            if clash:
                raise RuntimeError(f"domain {name!r} verified input {clash[0]}, but a checked counterexample "
                                   f"exists (found while running {other!r}): the domain is unsound")
