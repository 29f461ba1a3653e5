"""α-CROWN's free σ/tanh lines against DeepPoly on small MNIST nets (issue 13, item 1).

    python bench/alpha_curves.py [--eps 0.03] [--n 100] [--epochs 2] [--iterations 20]

For each activation (sigmoid, tanh): a 784-100-100-10 fully connected net trained with refcert's standard
training (Adam, lr 2e-3, seed 0) on the first 20,000 MNIST training images (full MNIST from REFCERT_DATA;
else the shipped mnist-mini), then ``refcert.certify`` without attack on the first N test images with
deeppoly and alpha-crown.  Prints verified % and ms per image.  Every number is one run on this machine.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from refcert import nn, train  # noqa: E402
from refcert.certify import certify  # noqa: E402
from refcert.domains import alpha  # noqa: E402
import mnist_images  # noqa: E402  (bench/mnist_images.py)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, default=0.03)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args(argv)
    x, y, source = mnist_images.first(20000, "train")
    xt, yt, _ = mnist_images.first(args.n)
    print(f"{source}: {len(x)} training images, {len(xt)} test images, eps {args.eps}")
    print(f"{'activation':<10} {'domain':<12} {'verified':>9} {'ms/image':>9}")
    for activation in (nn.Sigmoid, nn.Tanh):
        rng = np.random.default_rng(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 100, rng=rng), activation(), nn.Linear(100, 100, rng=rng),
                            activation(), nn.Linear(100, 10, rng=rng))
        train.train(net, x, y, train.TrainConfig(epochs=args.epochs, lr=2e-3), progress=False)
        for domain in ("deeppoly", "alpha-crown"):
            start = time.perf_counter()
            with alpha.use(iterations=args.iterations):
                result = certify(net, xt, yt, args.eps, domain=domain, attack=False, batch_size=1)
            ms = (time.perf_counter() - start) * 1000 / len(xt)
            print(f"{activation.__name__.lower():<10} {domain:<12} {100 * result.fraction('verified'):8.0f}% {ms:9.0f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
