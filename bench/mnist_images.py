"""The benchmarks' MNIST images: full MNIST when REFCERT_DATA (or the cache) has it, else the shipped
mnist-mini (its test split holds the first 1,000 test images, its train split 4,000 training images)."""
from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from refcert import datasets  # noqa: E402


def first(n: int, split: str = "test"):
    """(x, y, source): the first n images of ``split`` and the dataset they came from."""
    for name in ("mnist", "mnist-mini"):
        try:
            x, y = datasets.load(name, split)
            return x[:n], y[:n], name
        except (OSError, ValueError):
            continue
    raise SystemExit("no MNIST images found")
