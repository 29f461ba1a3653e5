"""The IDX file format of MNIST and Fashion-MNIST (LeCun et al., http://yann.lecun.com/exdb/mnist/).

A file is a 4-byte magic number ``0x00 0x00 T D`` (T = element type, D = number of dimensions), then
D big-endian uint32 sizes, then the elements in row-major order.  MNIST uses T = 0x08 (uint8):
images are D = 3 (N, 28, 28), labels D = 1 (N,).  Files may be gzip-compressed (the usual download)
or raw.  Every check failure raises ``IdxFormatError`` naming the file and what is wrong.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import zlib

import numpy as np

#: IDX element type byte -> big-endian NumPy dtype
TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxFormatError(ValueError):
    """A file that is not a well-formed IDX file; the message names the file."""


def read_bytes(path) -> bytes:
    """The file's content, decompressed when it is gzip (detected by its magic bytes, not its name)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        raise IdxFormatError(f"{path}: no such file") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as err:
            raise IdxFormatError(f"{path}: truncated or corrupt gzip data ({err})") from None
    return data


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse(data: bytes, path="<bytes>") -> np.ndarray:
    """The array an IDX byte string holds, after checking the magic number, dimensions and size."""
    if len(data) < 4:
        raise IdxFormatError(f"{path}: {len(data)} bytes, too short for an IDX header")
    zero1, zero2, kind, ndim = data[0], data[1], data[2], data[3]
    if zero1 != 0 or zero2 != 0 or kind not in TYPES or ndim == 0:
        raise IdxFormatError(f"{path}: bad IDX magic number {data[:4].hex()} (expected 0000TTDD with a "
                             f"known type TT in {[f'{t:02x}' for t in TYPES]} and DD >= 1)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{path}: truncated IDX header ({len(data)} bytes, need {header} for {ndim} dimensions)")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(TYPES[kind])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise IdxFormatError(f"{path}: {problem}: header says shape {shape} ({expected} bytes in all), "
                             f"file holds {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path, expected_sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (gzip or raw).  ``expected_sha256``: of the *decompressed* content, so a
    re-compressed copy of an official file still verifies; a mismatch raises ``IdxFormatError``."""
    data = read_bytes(path)
    if expected_sha256 is not None:
        found = sha256(data)
        if found != expected_sha256:
            raise IdxFormatError(f"{os.fspath(path)}: checksum mismatch: sha256 of the IDX content is {found}, "
                                 f"expected {expected_sha256} (corrupt or a different file; delete it and fetch again)")
    return parse(data, os.fspath(path))


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    """Write ``array`` (uint8) as an IDX file; used by tests and tools that build small IDX files."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.tobytes()
    with open(path, "wb") as stream:
        stream.write(gzip.compress(data, mtime=0) if compress else data)
