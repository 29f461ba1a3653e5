"""Model files: one ``.npz`` holding the architecture as JSON and every weight array.

Loaded with ``allow_pickle=False``; a corrupt, truncated or mismatched file raises ``ModelFileError``
naming the file and the problem.  Writes are atomic (temporary file in the same folder, then rename).
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from refcert import nn
from refcert.autodiff import Tensor

FORMAT = "refcert-model-1"


class ModelFileError(ValueError):
    """A model file that cannot be read: the message names the file and what is wrong."""


def _describe(module: nn.Module) -> dict:
    entry = {"type": type(module).__name__, "config": module.config()}
    if isinstance(module, nn.Sequential):
        entry["layers"] = [_describe(layer) for layer in module.layers]
    elif isinstance(module, nn.Residual):
        entry["block"], entry["shortcut"] = _describe(module.block), _describe(module.shortcut)
    return entry


def _field(entry, key, kind, path):
    """entry[key], checked to be of type ``kind``, or a ModelFileError naming what is missing."""
    if not isinstance(entry, dict) or not isinstance(entry.get(key), kind):
        raise ModelFileError(f"{path}: architecture record is malformed: expected a {kind.__name__} "
                             f"{key!r} in {str(entry)[:80]}")
    return entry[key]


def _build(entry: dict, path) -> nn.Module:
    kind = _field(entry, "type", str, path)
    if kind not in nn.LAYER_TYPES:
        raise ModelFileError(f"{path}: unknown layer type {kind!r}")
    if kind == "Sequential":
        return nn.Sequential(*[_build(e, path) for e in _field(entry, "layers", list, path)])
    if kind == "Residual":
        return nn.Residual(_build(_field(entry, "block", dict, path), path),
                           _build(_field(entry, "shortcut", dict, path), path))
    try:
        return nn.LAYER_TYPES[kind](**_field(entry, "config", dict, path))
    except (TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: layer {kind} has a bad configuration: {err}") from err


def atomic_write(path, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it into place."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def save(net: nn.Module, path) -> None:
    """Write ``net`` (architecture and weights) to ``path`` atomically."""
    header = json.dumps({"format": FORMAT, "network": _describe(net)}).encode()
    arrays = {name: t.numpy() for name, t in net.named_parameters().items()}
    arrays["__architecture__"] = np.frombuffer(header, dtype=np.uint8)
    atomic_write(path, lambda stream: np.savez(stream, **arrays))


def load(path) -> nn.Module:
    """Read a network written by ``save``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as err:
        raise ModelFileError(f"{path}: not a readable refcert model file ({err})") from err
    if "__architecture__" not in arrays:
        raise ModelFileError(f"{path}: no architecture record (not written by refcert.save?)")
    try:
        header = json.loads(arrays.pop("__architecture__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{path}: architecture record is corrupt ({err})") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ModelFileError(f"{path}: unsupported format {found!r}, expected {FORMAT!r}")
    net = _build(_field(header, "network", dict, path), path)
    expected = net.named_parameters()
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise ModelFileError(f"{path}: weights do not match the architecture (missing {missing}, unexpected {extra})")
    _assign(net, arrays, path)
    return net


def _assign(module: nn.Module, arrays: dict, path, prefix: str = "") -> None:
    if isinstance(module, nn.Sequential):
        for i, layer in enumerate(module.layers):
            _assign(layer, arrays, path, f"{prefix}{i}.")
        return
    if isinstance(module, nn.Residual):
        _assign(module.block, arrays, path, prefix + "block.")
        _assign(module.shortcut, arrays, path, prefix + "shortcut.")
        return
    for key, value in module.params.items():
        name = prefix + key
        if name in arrays:
            array = arrays[name]
            if array.dtype not in (np.float32, np.float64):
                raise ModelFileError(f"{path}: weight {name} has dtype {array.dtype}, expected float32 or float64")
            if array.shape != tuple(value.shape):
                raise ModelFileError(f"{path}: weight {name} has shape {array.shape}, expected {tuple(value.shape)}")
            if not np.all(np.isfinite(array)):
                raise ModelFileError(f"{path}: weight {name} contains NaN or infinity")
            module.params[key] = Tensor(array, requires_grad=True)
