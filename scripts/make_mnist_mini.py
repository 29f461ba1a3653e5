"""Build datasets/mnist_mini.npz: a seeded, class-balanced subset of the official MNIST files.

    python scripts/make_mnist_mini.py [--source ../shared/datasets/mnist] [--train 4000] [--test 1000]

Reads the IDX files through ``refcert.datasets`` (so their checksums are verified), draws the same
number of images of each digit with ``numpy.random.default_rng(seed)`` (train from the training set,
test from the test set, so the two never overlap), keeps pixels as uint8 and writes the file
atomically.  The same arguments give a byte-identical file.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import pathlib
import sys

import numpy as np

from refcert.datasets import load
from refcert.io.npz import atomic_write

REPO = pathlib.Path(__file__).resolve().parent.parent


def balanced_subset(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``count`` items, count // 10 of each class 0..9, drawn without replacement."""
    if count % 10:
        raise ValueError(f"count must be a multiple of 10 (one share per class), got {count}")
    picks = [rng.choice(np.flatnonzero(labels == c), size=count // 10, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picks))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(REPO.parent / "shared" / "datasets"),
                        help="folder holding mnist/*-ubyte.gz (or the files themselves)")
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=20180710)
    parser.add_argument("--out", default=str(REPO / "datasets" / "mnist_mini.npz"))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    arrays = {}
    for split, count in (("train", args.train), ("test", args.test)):
        x, y = load("mnist", split, root=args.source)
        chosen = balanced_subset(y, count, rng)
        arrays[f"x_{split}"] = np.round(x[chosen, 0] * 255).astype(np.uint8)
        arrays[f"y_{split}"] = y[chosen].astype(np.uint8)
        arrays[f"index_{split}"] = chosen.astype(np.int32)  # positions in the official files
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    data = buffer.getvalue()
    atomic_write(args.out, lambda stream: stream.write(data))
    print(f"wrote {args.out}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}, "
          f"train {args.train}, test {args.test}, seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
