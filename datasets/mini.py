"""The small MNIST subset shipped with refcert (``mnist_mini.npz``), so ``refcert demo`` works offline.

Built reproducibly by ``scripts/make_mnist_mini.py`` from the official MNIST files: a class-balanced,
seeded subset of the training set and of the test set, pixels kept as uint8 (the file stays small).
Arrays: ``x_train, x_test`` (N, 28, 28) uint8 and ``y_train, y_test`` (N,) uint8.
"""
from __future__ import annotations

import pathlib
import zipfile

import numpy as np

PATH = pathlib.Path(__file__).resolve().parent / "mnist_mini.npz"


def read(split: str, path=PATH) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of ``split`` ('train' or 'test')."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            x, y = archive[f"x_{split}"], archive[f"y_{split}"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: the shipped MNIST subset is missing (reinstall refcert or run "
                                "scripts/make_mnist_mini.py)") from None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable MNIST subset ({err})") from None
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (x.shape[0],):
        raise ValueError(f"{path}: unexpected arrays x {x.dtype} {x.shape}, y {y.shape} for split {split!r}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{path}: labels outside 0..9 in split {split!r}")
    return x, y
