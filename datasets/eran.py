"""ERAN's test-set CSV format (github.com/eth-sri/eran, data/mnist_test.csv, data/cifar10_test.csv).

One image per line: ``label,p_1,...,p_m`` with integer pixels 0..255.  MNIST rows have 784 pixels
(28×28, one channel); CIFAR-10 rows have 3072 pixels in HWC order (32×32×3, channels last, as ERAN
stores them), which we transpose to refcert's channel-major NCHW.  Pixels are scaled to [0, 1];
normalisation belongs to the network (``nn.Normalize``), as in ERAN.
"""
from __future__ import annotations

import math
import os

import numpy as np

#: pixels per row -> image shape (C, H, W); rows are stored H, W, C
KNOWN_SHAPES = {784: (1, 28, 28), 3072: (3, 32, 32)}


class EranFormatError(ValueError):
    """A malformed ERAN CSV: the message names the file and the line."""


def _parse_line(text: str, path, number: int) -> tuple[int, list[float]]:
    fields = [f.strip() for f in text.split(",")]
    try:
        values = [float(f) for f in fields]
    except ValueError:
        bad = next(f for f in fields if not _is_number(f))
        raise EranFormatError(f"{path}, line {number}: not a number: {bad!r}") from None
    label = values[0]
    if not math.isfinite(label) or label != int(label) or label < 0:
        raise EranFormatError(f"{path}, line {number}: label must be an integer >= 0, got {fields[0]!r}")
    pixels = values[1:]
    for position, value in enumerate(pixels, start=2):
        if not (0.0 <= value <= 255.0):  # NaN fails too
            raise EranFormatError(f"{path}, line {number}, field {position}: pixel {fields[position - 1]!r} "
                                  f"is outside 0..255")
    return int(label), pixels


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_eran_csv(path, shape=None):
    """(x, labels): x float32 (N, C, H, W) in [0, 1], labels int64 (N,).

    ``shape`` (C, H, W) is needed only for row lengths other than 784 (MNIST) and 3072 (CIFAR-10);
    rows are read as H, W, C (ERAN's order) and transposed to C, H, W.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such ERAN CSV file")
    labels, rows, width, first = [], [], None, None
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            label, pixels = _parse_line(line, path, number)
            if width is None:
                width, first = len(pixels), number
            elif len(pixels) != width:
                raise EranFormatError(f"{path}, line {number}: {len(pixels)} pixels, but line {first} has {width} "
                                      f"(ragged rows)")
            labels.append(label)
            rows.append(pixels)
    if not rows:
        raise EranFormatError(f"{path}: no images in the file")
    if shape is None:
        if width not in KNOWN_SHAPES:
            raise EranFormatError(f"{path}: rows of {width} pixels match neither MNIST (784) nor CIFAR-10 "
                                  f"(3072): an ERAN CSV row is label,p_1,...,p_m with m = 784 or 3072; for "
                                  f"other images use an .npz file with arrays x (N, C, H, W) and y (N,) "
                                  f"(in Python, read_eran_csv(path, shape=(C, H, W)) reads other sizes)")
        shape = KNOWN_SHAPES[width]
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or int(np.prod(shape)) != width:
        raise EranFormatError(f"{path}: rows of {width} pixels do not fit the shape {shape} (C, H, W)")
    channels, height, width_px = shape
    x = np.asarray(rows, dtype=np.float32).reshape(len(rows), height, width_px, channels)
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) / np.float32(255.0)
    return x.astype(np.float32), np.asarray(labels, dtype=np.int64)
