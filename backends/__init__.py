"""Backend registry: which array library refcert computes with (installed as ``refcert.backends``).

A backend is an array namespace ``xp`` (the Python array API standard) plus the few helpers the
standard lacks: conversion to NumPy, construction from NumPy, a device name.  Every numeric
operation in refcert goes through ``current().xp``.

- ``numpy`` (default), ``cupy`` (GPU), ``strict`` (array-api-strict: proves the code uses only the
  standard, so it runs on any conforming library).
- ``REFCERT_BACKEND`` picks the default; ``use(name)`` switches inside a ``with`` block;
  ``current()`` returns the active backend.
Optional libraries load lazily; a missing one gives a clear message, raised here and nowhere else.
"""
from __future__ import annotations

import contextlib
import os
import threading
import types
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

__all__ = ["Backend", "BackendUnavailable", "names", "get", "current", "use", "to_numpy"]


class BackendUnavailable(RuntimeError):
    """Raised when a backend's library or device cannot be loaded."""


@dataclass(frozen=True)
class Backend:
    name: str
    xp: types.ModuleType           # array API namespace
    to_numpy: Callable             # array -> numpy.ndarray
    device: str                    # human-readable device name

    def asarray(self, value, dtype=None):
        """Any array-like (NumPy arrays, lists, arrays of another backend) -> this backend."""
        if not isinstance(value, (int, float, bool)) and not _is_native(self, value):
            value = np.asarray(_any_to_numpy(value))
        return self.xp.asarray(value, dtype=dtype)

    def dtype(self, name: str):
        """'float32' | 'float64' | 'int64' | 'bool' -> this backend's dtype object."""
        return getattr(self.xp, name)


def _is_native(backend: Backend, value) -> bool:
    return type(value).__module__.split(".")[0] == backend.xp.__name__.split(".")[0]


def _any_to_numpy(value):
    if isinstance(value, np.ndarray):
        return value
    module = type(value).__module__.split(".")[0]
    if module == "cupy":
        return value.get()
    if module == "array_api_strict":
        return np.from_dlpack(value)
    return np.asarray(value)


def _load_numpy() -> Backend:
    return Backend("numpy", np, np.asarray, "cpu")


def _load_strict() -> Backend:
    try:
        import array_api_strict as strict
    except ImportError as err:
        raise BackendUnavailable(
            "backend 'strict' needs array-api-strict: pip install refcert[test]") from err
    return Backend("strict", strict, lambda a: np.from_dlpack(a) if not isinstance(a, np.ndarray) else a,
                   "cpu (array-api-strict)")


def _cupy_namespace(cupy) -> types.ModuleType:
    """CuPy with the array-API names refcert uses that older CuPy releases lack."""
    shim = types.ModuleType("cupy")
    shim.__dict__.update({k: getattr(cupy, k) for k in dir(cupy) if not k.startswith("__")})
    shim.__name__ = "cupy"
    shim.permute_dims = getattr(cupy, "permute_dims", cupy.transpose)
    shim.concat = getattr(cupy, "concat", cupy.concatenate)
    shim.pow = getattr(cupy, "pow", cupy.power)
    if not hasattr(cupy, "astype"):
        shim.astype = lambda x, dtype, copy=True: x.astype(dtype, copy=copy)
    return shim


def _load_cupy() -> Backend:
    try:
        import cupy
    except ImportError as err:
        raise BackendUnavailable("backend 'cupy' needs CuPy: pip install refcert[gpu]") from err
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDA driver missing or broken
        raise BackendUnavailable(f"backend 'cupy': no CUDA device ({err})") from err
    if count == 0:
        raise BackendUnavailable("backend 'cupy': no CUDA device")
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return Backend("cupy", _cupy_namespace(cupy), lambda a: a.get(), f"cuda:0 ({name})")


_LOADERS: dict[str, Callable[[], Backend]] = {
    "numpy": _load_numpy, "cupy": _load_cupy, "strict": _load_strict}
_loaded: dict[str, Backend] = {}
_state = threading.local()


def names() -> list[str]:
    """Registered backend names (loadable or not)."""
    return list(_LOADERS)


def get(name: str) -> Backend:
    """The backend called ``name``; raises BackendUnavailable with an install hint if it cannot load."""
    if name not in _LOADERS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {names()}")
    if name not in _loaded:
        _loaded[name] = _LOADERS[name]()
    return _loaded[name]


def _default() -> Backend:
    return get(os.environ.get("REFCERT_BACKEND", "numpy").strip() or "numpy")


def current() -> Backend:
    """The active backend: the innermost ``use(...)``, else ``$REFCERT_BACKEND``, else numpy."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else _default()


@contextlib.contextmanager
def use(name: str) -> Iterator[Backend]:
    """``with use('cupy'): ...`` computes with that backend inside the block."""
    backend = get(name)
    if not hasattr(_state, "stack"):
        _state.stack = []
    _state.stack.append(backend)
    try:
        yield backend
    finally:
        _state.stack.pop()


def to_numpy(array) -> np.ndarray:
    """Any backend's array (or a refcert Tensor) as a NumPy array."""
    array = getattr(array, "value", array)
    return _any_to_numpy(array)
