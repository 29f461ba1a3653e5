"""Datasets (import name ``refcert.datasets``): ``load(name, split)`` -> (x, y).

x is float32 NCHW in [0, 1] (normalisation belongs to the network), y int64.  Names:

- ``mnist``, ``fashion-mnist``: the IDX files (gzip or raw, ``idx.py``); MNIST's content is verified
  against the sha256 of the official files;
- ``cifar10``: the official *binary* batches ``cifar-10-batches-bin`` (``cifar.py``), never the pickle;
- ``mnist-mini``: the class-balanced subset shipped in this package (``mini.py``), works offline.

Files are searched as ``files.py`` describes (``root=``, ``$REFCERT_DATA``, ``~/.cache/refcert``, ...).
"""
from __future__ import annotations

import pathlib

import numpy as np

from refcert.datasets import cifar, files, idx, mini
from refcert.datasets.cifar import CifarFormatError
from refcert.datasets.files import DatasetNotFound
from refcert.datasets.idx import IdxFormatError

from refcert.datasets.eran import EranFormatError, read_eran_csv  # noqa: F401  (ERAN's test CSVs)

SPLITS = ("train", "test")

#: IDX datasets: subfolder, file stem per (split, kind), expected shapes, sha256 of decompressed content
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_URLS = ("https://storage.googleapis.com/cvdf-datasets/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
IDX_DATASETS = {
    "mnist": {"subdir": "mnist", "sha256": MNIST_SHA256, "urls": MNIST_URLS, "hint": ""},
    "fashion-mnist": {"subdir": "fashion-mnist", "sha256": {}, "urls": (),
                      "hint": "On Debian/Ubuntu: apt-get install dataset-fashion-mnist."},
}
SIZES = {"train": 60000, "test": 10000}


def names() -> list[str]:
    return ["mnist", "fashion-mnist", "cifar10", "mnist-mini"]


def load(name: str, split: str = "train", root=None) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 (N, C, H, W) in [0, 1], y int64 (N,)) of dataset ``name``, split 'train' or 'test'.

    ``root``: a folder holding the files (searched alone when given).  Missing files raise
    ``DatasetNotFound`` saying where to put which file; corrupt ones name the file and the problem.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if name in IDX_DATASETS:
        images, labels = _load_idx(name, split, root)
    elif name == "cifar10":
        images, labels = _load_cifar(split, root)
    elif name == "mnist-mini":
        images, labels = mini.read(split)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {names()}")
    if images.ndim == 3:
        images = images[:, None]
    return images.astype(np.float32) / np.float32(255.0), labels


def _idx_file(name: str, stem: str, root) -> pathlib.Path:
    info = IDX_DATASETS[name]
    spellings = [stem + ".gz", stem, stem.replace("-idx", ".idx")]  # official, unpacked, Windows-unpacked
    path = files.find(info["subdir"], spellings, root)
    if path is None and root is None and info["urls"]:
        target = files.cache_dir() / info["subdir"] / spellings[0]
        path = files.download([url + spellings[0] for url in info["urls"]], target)
    if path is None:
        hint = info["hint"]
        if root is None and info["urls"]:
            hint = f"Downloading from {info['urls'][0]} failed (offline?). " + hint
        raise DatasetNotFound(files.not_found_message(name, info["subdir"], spellings, root, hint))
    return path


def _load_idx(name: str, split: str, root) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    info = IDX_DATASETS[name]
    arrays = {}
    for kind, ndim in (("images-idx3-ubyte", 3), ("labels-idx1-ubyte", 1)):
        stem = f"{prefix}-{kind}"
        path = _idx_file(name, stem, root)
        array = idx.read_idx(path, info["sha256"].get(stem))
        if array.dtype != np.uint8 or array.ndim != ndim or (ndim == 3 and array.shape[1:] != (28, 28)):
            raise IdxFormatError(f"{path}: expected uint8 {'images (N, 28, 28)' if ndim == 3 else 'labels (N,)'}, "
                                 f"got {array.dtype} {array.shape}")
        if array.shape[0] != SIZES[split]:
            raise IdxFormatError(f"{path}: holds {array.shape[0]} items, the {split} split has {SIZES[split]}")
        arrays[ndim] = (path, array)
    (_, images), (label_path, labels) = arrays[3], arrays[1]
    if labels.max() > 9:
        raise IdxFormatError(f"{label_path}: label {labels.max()} outside 0..9")
    return images, labels.astype(np.int64)


def _load_cifar(split: str, root) -> tuple[np.ndarray, np.ndarray]:
    subdir = "cifar-10-batches-bin"
    images, labels = [], []
    for name in cifar.FILES[split]:
        path = files.find(subdir, [name], root)
        if path is None:
            raise DatasetNotFound(files.not_found_message(
                "cifar10", subdir, [name], root,
                "Get the binary version (cifar-10-binary.tar.gz, md5 c32a1d4ab5d03f1284b67883e8d87530) from "
                "https://www.cs.toronto.edu/~kriz/cifar.html and unpack it there; the pickled version is not read."))
        x, y = cifar.read_batch(path)
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)
