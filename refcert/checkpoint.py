"""Training checkpoints: everything a run needs to continue exactly, in one atomically written ``.npz``.

``checkpoint.npz`` holds ``model`` (the bytes of a ``refcert.save`` model file, so its architecture and
weights are checked by the same loader), the optimiser's state arrays (Adam's moments m, v; SGD's
velocity) and ``meta`` (JSON: format, epochs done, training settings, optimiser counters and the NumPy
random generator's state).  ``save_checkpoint`` first writes ``model.npz`` (the usable artefact),
then the checkpoint; both go through ``atomic_write``, so a crash leaves the previous file intact.
"""
from __future__ import annotations

import io
import json
import pathlib
import zipfile

import numpy as np

import refcert
from refcert import backends, optim
from refcert.io.npz import ModelFileError, atomic_write

FORMAT = "refcert-checkpoint-1"


def _optimizer_state(optimizer) -> tuple[dict, dict]:
    """(JSON-able counters, named arrays) of an Adam or SGD optimiser."""
    if isinstance(optimizer, optim.Adam):
        arrays = {f"adam.m.{i}": backends.to_numpy(m) for i, m in enumerate(optimizer.m)}
        arrays.update({f"adam.v.{i}": backends.to_numpy(v) for i, v in enumerate(optimizer.v)})
        return {"kind": "adam", "t": optimizer.t, "steps": list(optimizer.steps), "lr": optimizer.lr}, arrays
    if isinstance(optimizer, optim.SGD):
        arrays = {f"sgd.velocity.{i}": backends.to_numpy(v) for i, v in enumerate(optimizer.velocity) if v is not None}
        return {"kind": "sgd", "lr": optimizer.lr}, arrays
    raise TypeError(f"cannot checkpoint optimiser {type(optimizer).__name__}")


def save_checkpoint(folder, net, optimizer, rng: np.random.Generator, epoch: int, config: dict) -> None:
    """Write ``folder/model.npz`` and ``folder/checkpoint.npz`` (state after ``epoch`` epochs)."""
    folder = pathlib.Path(folder)
    refcert.save(net, folder / "model.npz")
    counters, arrays = _optimizer_state(optimizer)
    meta = {"format": FORMAT, "epoch": int(epoch), "config": config, "optimizer": counters,
            "rng": rng.bit_generator.state}
    arrays["model"] = np.frombuffer((folder / "model.npz").read_bytes(), dtype=np.uint8)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    atomic_write(folder / "checkpoint.npz", lambda stream: np.savez(stream, **arrays))


def load_checkpoint(path, net, optimizer, rng: np.random.Generator) -> tuple[dict, int]:
    """Restore ``net``'s weights, ``optimizer``'s state and ``rng``'s state in place from ``path``.

    Returns (training settings stored in the checkpoint, epochs done).  A damaged or mismatched file
    raises ``ModelFileError`` naming it.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
        saved = refcert.load(io.BytesIO(arrays.pop("model").tobytes()))
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError, OSError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{path}: not a readable refcert checkpoint ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: unsupported checkpoint format (expected {FORMAT!r})")
    copy_weights(net, saved, f"{path}: the checkpoint's network")
    _restore_optimizer(path, optimizer, meta["optimizer"], arrays)
    rng.bit_generator.state = meta["rng"]
    return meta["config"], int(meta["epoch"])


def copy_weights(net, saved, what: str) -> None:
    """Set net's parameters to saved's (same names and shapes, else ModelFileError naming ``what``)."""
    target, source = net.named_parameters(), saved.named_parameters()
    if set(target) != set(source) or any(tuple(target[k].shape) != tuple(source[k].shape) for k in target):
        differ = sorted(k for k in set(target) | set(source)
                        if k not in target or k not in source or tuple(target[k].shape) != tuple(source[k].shape))
        raise ModelFileError(f"{what} does not match the one being trained (parameters differ: {differ[:4]})")
    for name, tensor in target.items():
        tensor.value = backends.current().asarray(source[name].numpy().astype(tensor.numpy().dtype))


def _restore_optimizer(path, optimizer, counters: dict, arrays: dict) -> None:
    asarray = backends.current().asarray
    if not (isinstance(optimizer, optim.SGD) and counters["kind"] == "sgd"
            or isinstance(optimizer, optim.Adam) and counters["kind"] == "adam"):
        raise ModelFileError(f"{path}: checkpoint optimiser is {counters['kind']}, run uses {type(optimizer).__name__}")
    optimizer.lr = counters["lr"]
    if counters["kind"] == "adam":
        n = len(optimizer.parameters)
        optimizer.m = [np.array(arrays[f"adam.m.{i}"]) for i in range(n)]
        optimizer.v = [np.array(arrays[f"adam.v.{i}"]) for i in range(n)]
        optimizer.m = [asarray(m) for m in optimizer.m]
        optimizer.v = [asarray(v) for v in optimizer.v]
        optimizer.t, optimizer.steps = int(counters["t"]), [int(s) for s in counters["steps"]]
    else:
        optimizer.velocity = [asarray(arrays[f"sgd.velocity.{i}"]) if f"sgd.velocity.{i}" in arrays else None
                              for i in range(len(optimizer.parameters))]
