"""Training: standard, adversarial (PGD) and certified (DiffAI, CROWN-IBP) (DESIGN.md, "Training").

``train(net, x, y, config, out=DIR)`` runs ``config.epochs`` epochs of minibatch training.  Losses per batch
(B = batch, lb = lower bounds of the margins y_t − y_j, j ≠ t, over the input set, ``refcert.spec``):

- ``standard``: CE(net(x), t);
- ``pgd`` (Madry et al., ICLR'18, Eq. 2.1): CE(net(x'), t) at a PGD point x' of ball(x, ε) ∩ [0, 1];
- ``diffai`` (Mirman et al., ICML'18, Sec. 4): (1 − κ)·CE(net(x), t) + κ·A with the abstract loss A from
  any domain: CE over the worst-case logits (z_t = 0, z_j = −lb_j), i.e. log(1 + Σ_j exp(−lb_j)), which
  upper-bounds the cross-entropy of every point of the set; or the margin form softplus(max_j −lb_j);
- ``crown-ibp`` (Zhang et al., ICLR'20, Eq. 9): the same with lb = β·lb_CROWN-IBP + (1 − β)·lb_IBP, β 1 → 0.

ε and κ ramp per batch from 0 over ``ramp_epochs`` epochs that start after ``ramp_start`` epochs of
clean training (then stay); β falls from 1 to 0 over the same ramp.  The ramp is linear, or with
``schedule="smooth"`` the short warm-up of Shi et al. (NeurIPS'21, Sec. 4, after Xu et al. 2020's
auto_LiRPA): polynomial growth (t/m)⁴ over the first quarter m of the ramp, then linear, with the
slopes equal where they meet, so ε stays tiny while the bounds are loose at initialisation.
Networks with batch normalisation (``nn.BatchNorm``) train in training mode: each batch is normalised
with its own statistics and the abstract pass uses the clean batch's (the clean forward runs first);
metrics, attacks and the saved model use evaluation mode.  Learning rate: step decay (× ``lr_gamma`` every ``lr_step`` epochs).
Gradients are clipped to norm ``clip_grad`` (DiffAI's default 1).  After every epoch, in this order,
one metrics row is appended (and flushed) to ``metrics.csv``, then ``model.npz`` and ``checkpoint.npz``
are written atomically; ``resume=True`` continues from the checkpoint with the same weights, optimiser
moments and random-number state (dropping metrics rows and a model newer than it), so a run killed at
any point and resumed ends with the weights of an uninterrupted one.  The output folder follows the
rules of ``refcert.runs``: one writer at a time, no reuse without resume or overwrite, orphan
temporary files removed, and a resume states where it starts.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import numbers
import os
import pathlib
import sys
import time

import numpy as np

from refcert import attacks, domains, fp, geometric, nn, optim, runs, spec
from refcert import autodiff as ad
from refcert.autodiff import Tensor
from refcert.checkpoint import load_checkpoint, save_checkpoint

METHODS = ("standard", "pgd", "diffai", "crown-ibp")
LOSS_FORMS = ("ce", "margin")
SCHEDULES = ("linear", "smooth")
METRICS = ("epoch", "lr", "eps", "kappa", "loss", "train_accuracy", "val_accuracy", "seconds")
INTEGERS = ("epochs", "batch_size", "pgd_steps", "lr_step", "splits")
LIMITS = {  # numeric setting: (test of a finite value, what the error message asks for)
    "epochs": (lambda v: v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "pgd_steps": (lambda v: v >= 1, "an integer >= 1"),
    "lr_step": (lambda v: v >= 0, "an integer >= 0 (0: a constant learning rate)"),
    "lr": (lambda v: v > 0, "a finite number > 0"),
    "lr_gamma": (lambda v: v > 0, "a finite number > 0"),
    "eps": (lambda v: v >= 0, "a finite number >= 0"),
    "kappa": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "ramp_epochs": (lambda v: v >= 0, "a finite number >= 0"),
    "ramp_start": (lambda v: v >= 0, "a finite number >= 0"),
    "clip_grad": (lambda v: v >= 0, "a finite number >= 0 (0: no clipping)"),
    "splits": (lambda v: v >= 1, "an integer >= 1"),
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    method: str = "standard"
    domain: str = "box"           # diffai only: the domain of the abstract loss (box: IBP, fast on a CPU)
    eps: float = 0.1              # final training radius (pixel space)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"       # adam | sgd (momentum 0.9)
    kappa: float = 0.5            # final weight of the abstract loss (diffai, crown-ibp)
    ramp_epochs: float = 1.0      # epochs over which eps and kappa grow from 0
    ramp_start: float = 0.0       # epochs of clean training before the ramp starts
    schedule: str = "linear"      # linear | smooth (Shi et al.'s warm-up: (t/m)^4, then linear)
    loss_form: str = "ce"         # ce | margin (abstract loss form)
    lr_step: int = 0              # epochs between learning-rate decays (0: constant)
    lr_gamma: float = 0.1
    clip_grad: float = 1.0        # gradient-norm clip (0: off)
    pgd_steps: int = 7            # pgd method: attack steps per batch
    seed: int = 0                 # data order and PGD starts
    sound: bool = False           # abstract loss with refcert.fp's rounding-error radii (slower; a loss
                                  # needs no certificate, so training computes in plain arithmetic)
    spec: str = ""                # a geometric specification (refcert.geometric), e.g. "rotate:15": train for
                                  # invariance (transformed clean images; abstract loss on random pieces)
    splits: int = 1               # spec: the abstract loss's piece is 1/splits of each parameter's range

    def check(self) -> "TrainConfig":
        if self.method not in METHODS:
            raise ValueError(f"unknown training method {self.method!r}; choose one of {METHODS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.loss_form not in LOSS_FORMS:
            raise ValueError(f"unknown loss form {self.loss_form!r}; choose one of {LOSS_FORMS}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose adam or sgd")
        if self.spec:
            geometric.parse(self.spec)  # names the bad part
        for name, (holds, wanted) in LIMITS.items():
            value = getattr(self, name)
            kind = numbers.Integral if name in INTEGERS else numbers.Real
            if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or not holds(value):
                raise ValueError(f"{name} (--{name.replace('_', '-')}) must be {wanted}, got {value!r}")
        if self.method == "diffai":
            domains.get(self.domain)  # an unknown domain fails before any work
        return self


def make_optimizer(net, config: TrainConfig):
    if config.optimizer == "adam":
        return optim.Adam(net.parameters(), lr=config.lr)
    return optim.SGD(net.parameters(), lr=config.lr, momentum=0.9)


#: the smooth schedule's knee (fraction of the ramp) and exponent (Shi et al.'s and auto_LiRPA's defaults)
SMOOTH_MID, SMOOTH_POWER = 0.25, 4.0


def schedule(config: TrainConfig, step: int, batches_per_epoch: int) -> float:
    """Ramp fraction in [0, 1] after ``step`` batches (counting the current one): 0 during the first
    ``ramp_start`` epochs, then rising over ``ramp_epochs`` epochs (linearly, or "smooth": a·(t/m)^p up to
    the knee m, linear after it; a = 1/(1 + p(1 − m)/m) makes the two slopes equal at m), then 1."""
    t = step - config.ramp_start * batches_per_epoch
    ramp = config.ramp_epochs * batches_per_epoch
    if t <= 0:
        return 0.0
    t = 1.0 if ramp <= 0 else min(1.0, t / ramp)
    if config.schedule == "linear":
        return t
    knee = 1.0 / (1.0 + SMOOTH_POWER * (1.0 - SMOOTH_MID) / SMOOTH_MID)
    if t < SMOOTH_MID:
        return knee * (t / SMOOTH_MID) ** SMOOTH_POWER
    return knee + (1.0 - knee) * (t - SMOOTH_MID) / (1.0 - SMOOTH_MID)


def abstract_loss(lower: Tensor, form: str) -> Tensor:
    """Mean over the batch of the DiffAI loss from margin lower bounds ``lower`` (B, n−1).

    'ce': CE(z, t) with z_t = 0, z_j = −lb_j equals log(1 + Σ_j exp(−lb_j)) (order of j irrelevant).
    """
    if form == "margin":
        return ad.mean(ad.softplus(ad.max(-lower, axis=1)))
    zeros = Tensor(np.zeros((lower.shape[0], 1), dtype=lower.numpy().dtype))
    return ad.mean(ad.logsumexp(ad.concatenate([zeros, -lower], axis=1), axis=-1))


def geometric_batch(x, config: TrainConfig, ramp: float, rng):
    """For a ``spec``: (transformed images, pieces' pixel lower and upper bounds), each (B, *shape).  The
    parameter box grows from the identity with the ramp; each image gets a random piece (1/splits of each
    range) and a random parameter in it; the bounds are ``geometric.interval_bounds`` (a box, so any domain
    takes it, cheaply).  Invariance training as DiffAI on the geometric input set (issue 15)."""
    geo = geometric.parse(config.spec)
    identity = np.array([geometric.IDENTITY[name] for name in geo.names])
    geo = geometric.Spec(geo.names, identity + ramp * (geo.lower - identity), identity + ramp * (geo.upper - identity),
                         geo.text)
    lower, upper = geometric.pieces(geo, config.splits)
    pick = rng.integers(0, len(lower), len(x))
    params = lower[pick] + (upper[pick] - lower[pick]) * rng.random((len(x), geo.k))
    images = np.stack([geometric.transform(image, geo, p) for image, p in zip(x, params)])
    bounds = [geometric.interval_bounds(image, geo, lower[j], upper[j]) for image, j in zip(x, pick)]
    return images, np.stack([b[0] for b in bounds]), np.stack([b[1] for b in bounds])


def _input_set(name: str, x, eps: float, pieces):
    """The abstract loss's input set: the L∞ ball, or with a spec each piece's pixel box plus the ball."""
    if pieces is None:
        return domains.get(name).linf_ball(x, eps)
    lo, hi = np.clip(pieces[0] - eps, 0.0, 1.0), np.clip(pieces[1] + eps, 0.0, 1.0)
    return domains.get(name).from_bounds(Tensor(lo), Tensor(hi))


def batch_loss(net, x, y, config: TrainConfig, ramp: float, rng) -> tuple[Tensor, Tensor]:
    """(loss, clean logits) for one batch at ramp fraction ``ramp``."""
    eps, kappa = config.eps * ramp, config.kappa * ramp
    pieces = None
    if config.spec:
        x, lo, hi = geometric_batch(x, config, ramp, rng)
        pieces = (lo, hi)
    if config.method == "pgd":
        if eps > 0:
            nn.set_training(net, False)  # the attack leaves batch-norm statistics alone
            x = attacks.pgd(net, x, y, eps, steps=config.pgd_steps, loss="ce", rng=rng).points.value
            nn.set_training(net, True)
        logits = net(Tensor(x))
        return ad.cross_entropy(logits, y), logits
    logits = net(Tensor(x))
    clean = ad.cross_entropy(logits, y)
    if config.method == "standard" or kappa == 0:
        return clean, logits
    with fp.use(sound=config.sound):
        if config.method == "diffai":
            lower = spec.margin_bounds(net, _input_set(config.domain, x, eps, pieces), y)
        else:  # crown-ibp: beta falls 1 -> 0 as the ramp proceeds
            beta = 1.0 - ramp
            lower = spec.margin_bounds(net, _input_set("box", x, eps, pieces), y)
            if beta > 0:
                crown = spec.margin_bounds(net, _input_set("crown-ibp", x, eps, pieces), y)
                lower = beta * crown + (1.0 - beta) * lower
    return (1.0 - kappa) * clean + kappa * abstract_loss(lower, config.loss_form), logits


def accuracy(net, x, y, batch_size: int = 256) -> float:
    if len(y) == 0:
        return float("nan")
    with ad.no_grad():
        hits = sum(int(np.sum(net(Tensor(x[i:i + batch_size])).numpy().argmax(1) == y[i:i + batch_size]))
                   for i in range(0, len(y), batch_size))
    return hits / len(y)


def train(net, x, y, config: TrainConfig, out=None, resume: bool = False, val=None, progress: bool = True,
          callback=None, overwrite: bool = False, log=None) -> list[dict]:
    """Train ``net`` in place on x (N, C, H, W) float in [0, 1], y (N,) int; returns the metrics rows.

    ``out``: folder for metrics.csv, model.npz and checkpoint.npz (None: write nothing), locked for the
    whole run (``refcert.runs``); a folder holding a run needs ``resume`` (continue it) or ``overwrite``
    (start again).  ``val``: optional (x, y) for the per-epoch validation accuracy.  ``callback(row)``
    runs after each epoch's files are written.  ``log(message)`` receives the notes about ``out`` (where
    a resume starts, files removed); default: print them to stderr.
    """
    config.check()
    x, y = np.asarray(x), np.asarray(y).astype(np.int64)
    if x.ndim < 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"need a non-empty batch x (N, ...) and labels y (N,), got {x.shape} and {y.shape}")
    optimizer, rng = make_optimizer(net, config), np.random.default_rng(config.seed)
    out, log = None if out is None else pathlib.Path(out), log or runs.to_stderr
    with contextlib.nullcontext() if out is None else runs.lock(out, log=log):
        start, rows = (0, []) if out is None else _open_run(out, net, optimizer, rng, config, resume, overwrite, log)
        try:
            _epochs(net, x, y, config, optimizer, rng, start, rows, out, val, progress, callback)
        finally:
            nn.set_training(net, False)
    return rows


def _open_run(out: pathlib.Path, net, optimizer, rng, config: TrainConfig, resume, overwrite, log) -> tuple[int, list]:
    """Apply the folder rules (refcert.runs) to the locked ``out``: (epochs done, their metrics rows)."""
    runs.check_reuse(out, resume, overwrite)
    orphans = runs.remove_orphans(out)
    if orphans:
        log(f"{out}: removed temporary files of a save that was killed midway: {', '.join(orphans)}")
    if not resume:
        return 0, []
    if not (out / "checkpoint.npz").exists():
        partial = runs.remove_run_files(out)  # a first epoch that never reached its checkpoint
        log(f"no checkpoint in {out}: starting from epoch 0" + (f" (removed {', '.join(partial)})" if partial else ""))
        return 0, []
    saved, start = load_checkpoint(out / "checkpoint.npz", net, optimizer, rng)
    _check_same_config(saved, config, out / "checkpoint.npz")
    if start >= config.epochs:
        log(f"{out} already holds all {config.epochs} epochs" + (f" (it has {start})" if start > config.epochs else "")
            + ": nothing to do")
    else:
        log(f"resuming {out} from epoch {start} of {config.epochs}")
    return start, _truncate_metrics(out / "metrics.csv", start)


def _epochs(net, x, y, config, optimizer, rng, start, rows, out, val, progress, callback) -> None:
    """Epochs ``start`` .. config.epochs − 1, appending each metrics row to ``rows`` (and ``out``)."""
    per_epoch = math.ceil(len(y) / config.batch_size)
    for epoch in range(start, config.epochs):
        began = time.perf_counter()
        optimizer.lr = config.lr * config.lr_gamma ** (epoch // config.lr_step) if config.lr_step else config.lr
        order = rng.permutation(len(y))
        total, hits = 0.0, 0
        bar = progress_bar(per_epoch, f"epoch {epoch + 1}/{config.epochs}") if progress else None
        nn.set_training(net, True)
        for b in range(per_epoch):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            ramp = schedule(config, epoch * per_epoch + b + 1, per_epoch)
            loss, logits = batch_loss(net, x[idx], y[idx], config, ramp, rng)
            optimizer.zero_grad()
            loss.backward()
            if config.clip_grad > 0:
                optim.clip_grad_norm(net.parameters(), config.clip_grad)
            optimizer.step()
            total += float(loss.numpy()) * len(idx)
            hits += int(np.sum(logits.numpy().argmax(1) == y[idx]))
            if bar is not None:
                bar.set_postfix(loss=f"{total / ((b + 1) * config.batch_size):.4f}")
                bar.update(1)
        nn.set_training(net, False)
        if bar is not None:
            bar.close()
        ramp = schedule(config, (epoch + 1) * per_epoch, per_epoch)
        certified = config.method in ("diffai", "crown-ibp")
        row = {"epoch": epoch + 1, "lr": optimizer.lr, "eps": config.eps * ramp if config.method != "standard" else 0.0,
               "kappa": config.kappa * ramp if certified else 0.0,
               "loss": total / len(y), "train_accuracy": hits / len(y),
               "val_accuracy": accuracy(net, *val) if val is not None else float("nan"),
               "seconds": time.perf_counter() - began}
        if not math.isfinite(row["loss"]):
            raise RuntimeError(f"training diverged in epoch {epoch + 1} (loss {row['loss']}); lower --lr")
        rows.append(row)
        if out is not None:  # this order is what a resume expects: rows and model.npz may run one epoch ahead
            _append_metrics(out / "metrics.csv", row)
            save_checkpoint(out, net, optimizer, rng, epoch + 1, dataclasses.asdict(config))
        if progress:
            print(f"\repoch {epoch + 1}/{config.epochs}  loss {row['loss']:.4f}  train acc {row['train_accuracy']:.3f}"
                  f"  eps {row['eps']:.3g}  {row['seconds']:.1f}s", file=sys.stderr)
        if callback is not None:
            callback(row)


class TextBar:
    """The few tqdm methods ``train`` uses, drawn as one rewritten stderr line (tqdm is optional)."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.done, self.postfix = total, desc, 0, ""

    def set_postfix(self, loss: str):
        self.postfix = f" loss {loss}"

    def update(self, count: int):
        self.done += count
        filled = 24 * self.done // max(self.total, 1)
        print(f"\r{self.desc} [{'#' * filled:<24}] {self.done}/{self.total}{self.postfix}", end="", file=sys.stderr)

    def close(self):
        print("\r", end="", file=sys.stderr)


def progress_bar(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return TextBar(total, desc)
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)


def _check_same_config(saved: dict, config: TrainConfig, path):
    current = dataclasses.asdict(config)
    defaults = dataclasses.asdict(TrainConfig())  # settings added since the checkpoint took their default
    differ = [f"{k}: checkpoint {saved.get(k, defaults[k])!r}, now {v!r}" for k, v in current.items()
              if k != "epochs" and saved.get(k, defaults[k]) != v]
    if differ:
        raise ValueError(f"{path}: cannot resume with different settings ({'; '.join(differ)})")


def _append_metrics(path: pathlib.Path, row: dict):
    new = not path.exists()
    with open(path, "a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=METRICS, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow(row)
        stream.flush()
        os.fsync(stream.fileno())


def _truncate_metrics(path: pathlib.Path, epochs_done: int) -> list[dict]:
    """Keep the rows of the epochs the checkpoint holds (rows written after it, or cut short, are dropped)."""
    if not path.exists():
        return []
    with open(path, newline="") as stream:
        rows = [r for r in csv.DictReader(stream) if None not in r and None not in r.values()
                and r["epoch"].isdigit() and int(r["epoch"]) <= epochs_done]
    from refcert.io.npz import atomic_write

    def write(stream):
        text = [",".join(METRICS)] + [",".join(str(r.get(k, "")) for k in METRICS) for r in rows]
        stream.write(("\n".join(text) + "\n").encode())
    atomic_write(path, write)
    return [{k: float(v) if k != "epoch" else int(v) for k, v in r.items()} for r in rows]
