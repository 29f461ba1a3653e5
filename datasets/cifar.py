"""CIFAR-10's *binary* distribution (cifar-10-batches-bin, https://www.cs.toronto.edu/~kriz/cifar.html).

Each batch file is a run of 3073-byte records: 1 label byte (0..9), then 3072 pixel bytes, channel-major:
1024 red (row-major 32×32), 1024 green, 1024 blue — already refcert's CHW layout.  Training data is
data_batch_1.bin .. data_batch_5.bin (10000 records each), test data test_batch.bin.  The pickled
Python version of CIFAR-10 is never read (unpickling runs arbitrary code).
"""
from __future__ import annotations

import os

import numpy as np

RECORD = 1 + 3 * 32 * 32
FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
RECORDS_PER_FILE = 10000
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class CifarFormatError(ValueError):
    """A malformed CIFAR-10 binary batch; the message names the file."""


def read_batch(path, expected_records: int | None = RECORDS_PER_FILE) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) from one binary batch file.

    ``expected_records``: the number of records the file must hold (None accepts any whole number).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        raise CifarFormatError(f"{path}: no such file") from None
    if len(data) == 0 or len(data) % RECORD:
        raise CifarFormatError(f"{path}: {len(data)} bytes is not a whole number of {RECORD}-byte CIFAR-10 "
                               "records (truncated, or not a file from cifar-10-batches-bin)")
    n = len(data) // RECORD
    if expected_records is not None and n != expected_records:
        raise CifarFormatError(f"{path}: holds {n} records, expected {expected_records} (truncated or wrong file)")
    records = np.frombuffer(data, dtype=np.uint8).reshape(n, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(CLASSES):
        bad = int(np.argmax(labels >= len(CLASSES)))
        raise CifarFormatError(f"{path}: record {bad} has label {labels[bad]}, expected 0..9 "
                               "(is this cifar-100 or the pickled version?)")
    return records[:, 1:].reshape(n, 3, 32, 32).copy(), labels
