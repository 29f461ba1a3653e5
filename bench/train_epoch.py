"""Benchmark: training time per epoch, standard vs certified training, as a ratio measured in one run.

    python bench/train_epoch.py                                   # convsmall, mnist-mini, box/deepzono/deeppoly
    python bench/train_epoch.py --data mnist --data-root ../shared/datasets/mnist --methods diffai:box pgd
    python bench/train_epoch.py --methods diffai:box diffai:box:bn     # :bn: the model's -bn variant (batch norm)

Every method runs the same optimiser step (``refcert.train.batch_loss`` at the full ε and κ, backward,
clipping, Adam) on the same batches; the steps are *interleaved* (standard, then each method, batch
after batch), so a change of machine load hits all methods alike.  Reported: median ms per batch and
the ratio to standard, which is the ratio of epoch times (an epoch is batches × the per-batch time).
DiffAI's seed reports 1.7× for its zonotope training against standard training.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread: on a shared
    os.environ.setdefault(_name, "1")  # 2-core machine threaded BLAS made the timings slower and noisy

import numpy as np  # noqa: E402

from refcert import datasets, models, nn, optim  # noqa: E402
from refcert.train import TrainConfig, batch_loss  # noqa: E402


def _config(method: str, eps: float, seed: int) -> TrainConfig:
    """'standard', 'pgd' or 'diffai:DOMAIN[:bn]' as a TrainConfig (ramp already finished: full ε and κ)."""
    name, _, domain = method.partition(":")
    domain = domain.removesuffix(":bn")
    return TrainConfig(method=name, domain=domain or "box", eps=eps, seed=seed, ramp_epochs=0).check()


def _step(net, optimizer, x, y, config, rng, ramp: float = 1.0) -> float:
    began = time.perf_counter()
    loss, _ = batch_loss(net, x, y, config, ramp, rng)
    optimizer.zero_grad()
    loss.backward()
    optim.clip_grad_norm(net.parameters(), config.clip_grad)
    optimizer.step()
    return time.perf_counter() - began


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="convsmall", choices=models.names())
    parser.add_argument("--data", default="mnist-mini", choices=datasets.names())
    parser.add_argument("--data-root")
    parser.add_argument("--methods", nargs="*", default=["diffai:box", "diffai:deepzono", "diffai:deeppoly"])
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ramp", type=float, default=1.0, help="ramp fraction of the timed steps (default 1: "
                        "full eps and kappa; crown-ibp's CROWN part is only computed while it is < 1)")
    args = parser.parse_args(argv)
    x, y = datasets.load(args.data, "train", root=args.data_root)
    methods = ["standard"] + [m for m in args.methods if m != "standard"]
    configs = {m: _config(m, args.eps, args.seed) for m in methods}
    nets = {m: models.get(args.model + ("-bn" if m.endswith(":bn") else ""), args.data, seed=args.seed)
            for m in methods}   # same initial weights (the -bn variant: the same draws, plus its BatchNorm layers)
    for net in nets.values():
        nn.set_training(net, True)   # as refcert.train: batch statistics (a no-op without BatchNorm)
    optimizers = {m: optim.Adam(nets[m].parameters(), lr=1e-3) for m in methods}
    rng = np.random.default_rng(args.seed)
    times = {m: [] for m in methods}
    for b in range(args.batches + 1):                      # batch 0 warms up (imports, allocations): not timed
        idx = rng.choice(len(y), args.batch_size, replace=False)
        for m in methods:
            seconds = _step(nets[m], optimizers[m], x[idx], y[idx].astype(np.int64), configs[m], rng, args.ramp)
            if b > 0:
                times[m].append(seconds)
    base = statistics.median(times["standard"])
    per_epoch = -(-60000 // args.batch_size)
    print(f"{args.model} on {args.data}, batch {args.batch_size}, eps {args.eps}, ramp {args.ramp}, {args.batches} "
          f"interleaved batches;"
          f" load average {os.getloadavg()[0]:.1f}")
    header = f"{'method':<18} {'ms/batch':>9} {'x standard':>11} {'s per 60k-image epoch':>22}"
    print(header + "\n" + "-" * len(header))
    for m in methods:
        median = statistics.median(times[m])
        print(f"{m:<18} {1000 * median:>9.1f} {median / base:>11.2f} {median * per_epoch:>22.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
