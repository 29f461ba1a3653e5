"""The trained networks shipped with refcert, by name, and the one way the CLI finds a network.

The files are ``datasets/weights/NAME.npz`` (installed in the package ``refcert.datasets``), described
by ``weights/manifest.json``: per file the architecture (``model``), ``data``, training ``method``,
``domain`` and ``eps_train``, the ``command`` that trained it and the ``results`` it measured
(``results_on`` says on which images).  ``names()`` lists them (e.g. ``convsmall_mnist_diffai_box_0.1``),
``path``/``info``/``load`` take a name; ``refcert weights`` prints the table.

``load_network(spec)`` is what ``refcert certify --net``, ``verify`` and ``certify-path`` use: ``spec``
is a network file (an ``.npz`` written by ``refcert.save`` or an ONNX model, ``refcert.io.read_network``)
or, when no such file exists, a shipped name.
"""
from __future__ import annotations

import json
import os
import pathlib

import refcert.datasets
from refcert.io import npz, read_network

FOLDER = pathlib.Path(refcert.datasets.__file__).resolve().parent / "weights"


def _manifest() -> dict:
    """file name -> entry, as in manifest.json (an empty dict when the folder is absent)."""
    manifest = FOLDER / "manifest.json"
    return json.loads(manifest.read_text()) if manifest.is_file() else {}


def names() -> list[str]:
    """The shipped networks' names (file stems), in the manifest's order."""
    return [file[:-len(".npz")] for file in _manifest() if file.endswith(".npz")]


def _check(name: str) -> str:
    if name not in names():
        raise ValueError(f"unknown shipped network {name!r}; shipped: {', '.join(names()) or 'none'}")
    return name


def path(name: str) -> pathlib.Path:
    """The file of the shipped network ``name``."""
    return FOLDER / f"{_check(name)}.npz"


def info(name: str) -> dict:
    """The manifest entry of ``name`` (model, data, method, domain, eps_train, command, results, ...)."""
    return dict(_manifest()[f"{_check(name)}.npz"])


def load(name: str):
    """The shipped network ``name`` (``refcert.load`` of its file)."""
    return npz.load(path(name))


def resolve(spec) -> pathlib.Path:
    """The file ``spec`` names: itself when it exists, else the shipped network of that name."""
    if os.path.exists(spec):
        return pathlib.Path(spec)
    if str(spec) in names():
        return path(str(spec))
    raise FileNotFoundError(f"{spec}: no such network file, nor the name of a shipped network "
                            f"(shipped: {', '.join(names()) or 'none'}; see `refcert weights`)")


def load_network(spec, dtype: str | None = None):
    """The network ``spec`` names (``resolve``), read by ``refcert.io.read_network`` (``dtype`` as there)."""
    return read_network(resolve(spec), dtype)
