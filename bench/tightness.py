"""Benchmark: how tight each domain's output bounds are, against the exact bounds of the MILP oracle.

    python bench/tightness.py [--nets 10] [--eps 0.05 0.2] [--seed 0]

Small random ReLU networks (fully connected: 6 inputs, two hidden layers of 16; convolutional: a 1x6x6
input, 3x3 convolutions with 3 and 4 channels, a linear layer to 5 outputs), PyTorch-style initialisation,
an L∞ box of radius eps around a uniform random point in [-1, 1].  For every output, the ratio of a
domain's width to the exact width (``refcert.exact.width_ratios``): 1 is exact, and a sound domain is
never below 1.  Prints the median, the 90th percentile and the worst ratio per domain, and how many
outputs each domain bounds exactly (ratio ≤ 1 + 1e-6).  approxline is left out: it is a segment
domain, and on a box it gives Box's bounds.  Needs SciPy.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from refcert import nn
from refcert.certify import ball_domains
from refcert.exact import width_ratios


def fully_connected(rng):
    return nn.Sequential(nn.Linear(6, 16, rng=rng), nn.ReLU(), nn.Linear(16, 16, rng=rng), nn.ReLU(),
                         nn.Linear(16, 5, rng=rng)), (6,)


def convolutional(rng):
    return nn.Sequential(nn.Conv2d(1, 3, 3, 1, 0, rng=rng), nn.ReLU(), nn.Conv2d(3, 4, 3, 1, 0, rng=rng), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 2 * 2, 5, rng=rng)), (1, 6, 6)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", type=int, default=10, help="random nets per architecture and eps")
    parser.add_argument("--eps", type=float, nargs="*", default=[0.05, 0.2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    names = [name for name in ball_domains() if name != "approxline"]
    began = time.perf_counter()
    for build in (fully_connected, convolutional):
        for eps in args.eps:
            collected: dict[str, list] = {}
            for _ in range(args.nets):
                net, shape = build(rng)
                x = rng.uniform(-1, 1, (1,) + shape)
                for name, ratio in width_ratios(net, x - eps, x + eps, names).items():
                    collected.setdefault(name, []).append(ratio[np.isfinite(ratio)])
            print(f"\n{build.__name__}, eps {eps}, {args.nets} nets x 5 outputs")
            print(f"{'domain':<11} {'median':>8} {'p90':>8} {'worst':>8} {'exact':>7}")
            for name, parts in collected.items():
                ratio = np.concatenate(parts)
                if np.any(ratio < 1 - 1e-6):
                    print(f"{name}: a width below the exact one ({ratio.min():.6f}): unsound", file=sys.stderr)
                    return 1
                print(f"{name:<11} {np.median(ratio):>8.3f} {np.percentile(ratio, 90):>8.3f} {ratio.max():>8.3f} "
                      f"{np.mean(ratio <= 1 + 1e-6):>7.0%}")
    print(f"\n{time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
