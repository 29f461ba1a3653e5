"""Reading and writing networks and specifications: ``.npz`` model files (``npz``), ONNX (``onnx``, which
needs the optional ``onnx`` package), VNN-LIB (``vnnlib``).  ``read_network`` opens either kind of
network file, telling them apart by content."""
from __future__ import annotations

import pathlib

FLOATS = ("float32", "float64")


def read_network(path, dtype: str | None = None):
    """The network in ``path``: an ``.npz`` written by ``refcert.save`` (a zip archive: it starts with
    ``PK``) or an ONNX model (a protobuf that starts with its ir_version field, byte 0x08, or any file
    named ``.onnx``).  ``dtype`` 'float32' | 'float64' converts the parameters; None keeps the file's own
    precision (an ONNX file's input type, ``net.onnx_dtype``; its constants are folded in float64 and
    rounded once).  Raises FileNotFoundError or ValueError naming the file."""
    from refcert.io import npz

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such network file" if not path.exists()
                                else f"{path}: not a network file (a directory?)")
    with open(path, "rb") as stream:
        head = stream.read(2)
    if dtype is not None and dtype not in FLOATS:
        raise ValueError(f"dtype must be one of {FLOATS}, got {dtype!r}")
    if head.startswith(b"PK"):
        net = npz.load(path)
        return net if dtype is None else net.astype(dtype)
    if head[:1] != b"\x08" and path.suffix.lower() != ".onnx":
        raise npz.ModelFileError(f"{path}: not a network file: neither an .npz written by refcert.save "
                                 f"nor an ONNX model" + (" (the file is empty)" if not head else ""))
    from refcert.io.onnx import load_onnx
    net = load_onnx(path, dtype="float64")
    target = dtype or (net.onnx_dtype if net.onnx_dtype in FLOATS else "float64")
    return net if target == "float64" else net.astype(target)
