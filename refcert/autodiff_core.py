"""The autodiff's lowest layer: ``Tensor``, graph recording and the op table ``OPS`` with ``primitive``.

A minimal reverse-mode automatic differentiation.  Every primitive is one row of ``OPS``: its forward
function next to the vector-Jacobian product (vjp) of each differentiable argument, written as in HIPS
autograd's ``defvjp``.  A vjp has the signature ``vjp(g, ans, *args, **params) -> gradient of that
argument``; ``g`` is the gradient of the output, ``ans`` the forward result, ``args`` the argument values
(arrays or Python scalars).  Broadcasting is undone in one place, ``unbroadcast``.  ``Tensor.backward()``
sorts the graph and *accumulates* gradients, so a tensor used twice gets both contributions.  Inside
``with no_grad():`` nothing is recorded.  All arithmetic goes through the active backend's array
namespace (``refcert.backends``).

Layers (each imports only those below it): this module holds the Tensor, the table and the primitives
that Tensor's own operators and methods call (arithmetic, sum/mean, matmul, reshape, transpose,
indexing); ``autodiff_conv`` adds convolution and pooling; ``autodiff`` adds the remaining primitives
and is where callers import everything from.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable

from refcert import backends

_grad_state = threading.local()


def _xp():
    return backends.current().xp


def grad_enabled() -> bool:
    return getattr(_grad_state, "enabled", True)


@contextlib.contextmanager
def _recording(enabled: bool):
    previous = grad_enabled()
    _grad_state.enabled = enabled
    try:
        yield
    finally:
        _grad_state.enabled = previous


def no_grad():
    """Record no graph inside the block (evaluation, attacks' inner bookkeeping)."""
    return _recording(False)


def enable_grad():
    """Record the graph inside the block even within a caller's ``no_grad()`` (attacks need input gradients)."""
    return _recording(True)


class Tensor:
    """An array with an optional gradient. ``value`` is a backend array, ``grad`` one after backward()."""

    __array_priority__ = 1000  # make ``ndarray + Tensor`` call Tensor.__radd__

    def __init__(self, value, requires_grad: bool = False, dtype=None):
        if isinstance(value, Tensor):
            value = value.value
        backend = backends.current()
        if isinstance(dtype, str):
            dtype = backend.dtype(dtype)
        self.value = backend.asarray(value, dtype=dtype)
        self.requires_grad = requires_grad
        self.grad = None
        self._node = None  # (op name, parents, argument values, params, ans) when recorded

    # --- basic properties -------------------------------------------------------------------
    shape = property(lambda self: tuple(self.value.shape))
    ndim = property(lambda self: self.value.ndim)
    dtype = property(lambda self: self.value.dtype)
    T = property(lambda self: transpose(self, axes=tuple(range(self.ndim - 1, -1, -1))))

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, requires_grad={self.requires_grad})"

    def numpy(self):
        return backends.to_numpy(self.value)

    def item(self) -> float:
        return float(self.numpy().reshape(-1)[0]) if self.numpy().size == 1 else _not_scalar(self)

    def detach(self) -> "Tensor":
        return Tensor(self.value)

    def zero_grad(self):
        self.grad = None

    # --- operators ----------------------------------------------------------------------------
    __add__ = lambda self, other: add(self, other)
    __radd__ = lambda self, other: add(other, self)
    __sub__ = lambda self, other: sub(self, other)
    __rsub__ = lambda self, other: sub(other, self)
    __mul__ = lambda self, other: mul(self, other)
    __rmul__ = lambda self, other: mul(other, self)
    __truediv__ = lambda self, other: div(self, other)
    __rtruediv__ = lambda self, other: div(other, self)
    __matmul__ = lambda self, other: matmul(self, other)
    __rmatmul__ = lambda self, other: matmul(other, self)
    __neg__ = lambda self: neg(self)
    __getitem__ = lambda self, index: getitem(self, index=index)

    def sum(self, axis=None, keepdims=False):
        return sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return mean(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        return reshape(self, shape=tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) * grad into every leaf's ``.grad`` (grad defaults to 1 for scalars)."""
        xp = _xp()
        if grad is None:
            if self.value.size != 1:
                raise ValueError(f"backward() without a gradient needs a scalar, got shape {self.shape}")
            grad = xp.ones_like(self.value)
        grads = {id(self): getattr(grad, "value", grad)}
        for tensor in _topological_order(self):
            g = grads.pop(id(tensor), None)
            if g is None:
                continue
            if tensor._node is None:  # a leaf: store its gradient in row-major order (a transposed view,
                g = _row_major(g)       # as linear layers' weights get, slows every later optimiser step)
                tensor.grad = g if tensor.grad is None else tensor.grad + g
                continue
            name, parents, args, params, ans = tensor._node
            vjps = OPS[name][1]
            for position, parent in parents:
                contribution = vjps[position](g, ans, *args, **params)
                key = id(parent)
                grads[key] = contribution if key not in grads else grads[key] + contribution


def constant(value) -> Tensor:
    """A Tensor around an array that is already the active backend's (no conversion, no gradient): the fast
    wrap for computed constants such as refcert.fp's error radii."""
    out = Tensor.__new__(Tensor)
    out.value, out.grad, out._node, out.requires_grad = value, None, None, False
    return out


def _row_major(a):
    """``a`` itself when it is stored row-major; else a row-major copy (reshape copies exactly then)."""
    xp = _xp()
    return xp.reshape(xp.reshape(a, (-1,)), a.shape)


def _not_scalar(tensor):
    raise ValueError(f"item() needs a one-element tensor, got shape {tensor.shape}")


def _topological_order(root: Tensor) -> list[Tensor]:
    """Tensors reachable from root, each after every tensor that uses it (root first)."""
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        tensor, expanded = stack.pop()
        if expanded:
            order.append(tensor)
            continue
        if id(tensor) in visited:
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        if tensor._node is not None:
            stack.extend((parent, False) for _, parent in tensor._node[1])
    return order[::-1]


OPS: dict[str, tuple[Callable, tuple[Callable, ...]]] = {}


def _as_operand(value):
    if isinstance(value, Tensor):
        return value.value
    if type(value) in (int, float, bool):  # Python scalars stay "weak" (they keep float32 float32);
        return value                       # NumPy scalars become 0-d arrays, as in NumPy's own promotion
    return backends.current().asarray(value)


def primitive(name: str, forward: Callable, *vjps: Callable) -> Callable:
    """Register a row of the op table and return the function that applies it to Tensors."""
    OPS[name] = (forward, vjps)

    def apply(*args, **params):
        values = [_as_operand(a) for a in args]
        out = Tensor.__new__(Tensor)
        out.value, out.grad, out._node, out.requires_grad = forward(*values, **params), None, None, False
        if grad_enabled():
            parents = tuple((i, a) for i, a in enumerate(args)
                            if isinstance(a, Tensor) and a.requires_grad and i < len(vjps) and vjps[i] is not None)
            if parents:
                out.requires_grad = True
                out._node = (name, parents, values, params, out.value)
        return out

    apply.__name__ = name
    return apply


def unbroadcast(g, shape):
    """Sum ``g`` over the axes that broadcasting added or stretched, so it has ``shape``."""
    xp = _xp()
    shape = tuple(getattr(shape, "shape", shape))
    while g.ndim > len(shape):
        g = xp.sum(g, axis=0)
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return xp.sum(g, axis=axes, keepdims=True) if axes else g


def _shape(x):
    return getattr(x, "shape", ())


def _keep_reduced(g, x, axis, keepdims):
    """Reshape a reduction's gradient so it broadcasts against x."""
    xp = _xp()
    if axis is None or keepdims or x.ndim == 0:
        return g if keepdims or axis is not None else xp.reshape(g, (1,) * x.ndim)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = tuple(a % x.ndim for a in axes)
    return xp.reshape(g, tuple(1 if i in axes else n for i, n in enumerate(x.shape)))


def _count(x, axis):
    if axis is None:
        return x.size
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    total = 1
    for a in axes:
        total *= x.shape[a]
    return total


def _swap_last(a):
    return _xp().matrix_transpose(a)


def _to_dtype(mask, like):
    return _xp().astype(mask, like.dtype)


# --- elementwise arithmetic -------------------------------------------------------------------
add = primitive("add", lambda x, y: x + y,
                lambda g, ans, x, y: unbroadcast(g, _shape(x)),
                lambda g, ans, x, y: unbroadcast(g, _shape(y)))
sub = primitive("sub", lambda x, y: x - y,
                lambda g, ans, x, y: unbroadcast(g, _shape(x)),
                lambda g, ans, x, y: unbroadcast(-g, _shape(y)))
mul = primitive("mul", lambda x, y: x * y,
                lambda g, ans, x, y: unbroadcast(g * y, _shape(x)),
                lambda g, ans, x, y: unbroadcast(g * x, _shape(y)))
div = primitive("div", lambda x, y: x / y,
                lambda g, ans, x, y: unbroadcast(g / y, _shape(x)),
                lambda g, ans, x, y: unbroadcast(-g * ans / y, _shape(y)))
neg = primitive("neg", lambda x: -x, lambda g, ans, x: -g)

# --- reductions (the rest: refcert.autodiff) --------------------------------------------------
sum = primitive(
    "sum", lambda x, *, axis=None, keepdims=False: _xp().sum(x, axis=axis, keepdims=keepdims),
    lambda g, ans, x, *, axis=None, keepdims=False:
        _xp().broadcast_to(_keep_reduced(g, x, axis, keepdims), x.shape))
mean = primitive(
    "mean", lambda x, *, axis=None, keepdims=False: _xp().mean(x, axis=axis, keepdims=keepdims),
    lambda g, ans, x, *, axis=None, keepdims=False:
        _xp().broadcast_to(_keep_reduced(g, x, axis, keepdims), x.shape) / _count(x, axis))

# --- linear algebra and shapes (the rest: refcert.autodiff) -----------------------------------


def _matmul_vjp_x(g, ans, x, y):
    if y.ndim == 1:
        return unbroadcast(g[..., None] * y, x.shape)
    return unbroadcast(g @ _swap_last(y), x.shape)


def _matmul_vjp_y(g, ans, x, y):
    xp = _xp()
    if y.ndim == 1:
        return xp.reshape(xp.sum(xp.reshape(g[..., None] * x, (-1, y.shape[0])), axis=0), y.shape)
    if y.ndim == 2:  # fold x's leading axes into rows: one matrix product, nothing to sum afterwards
        return _swap_last(xp.reshape(x, (-1, x.shape[-1]))) @ xp.reshape(g, (-1, g.shape[-1]))
    return unbroadcast(_swap_last(x) @ g, y.shape)


matmul = primitive("matmul", lambda x, y: x @ y, _matmul_vjp_x, _matmul_vjp_y)  # x.ndim >= 2
reshape = primitive("reshape", lambda x, *, shape: _xp().reshape(x, tuple(shape)),
                    lambda g, ans, x, *, shape: _xp().reshape(g, x.shape))
transpose = primitive("transpose", lambda x, *, axes: _xp().permute_dims(x, tuple(axes)),
                      lambda g, ans, x, *, axes: _xp().permute_dims(g, _inverse_permutation(axes)))


def _inverse_permutation(axes):
    inverse = [0] * len(axes)
    for i, a in enumerate(axes):
        inverse[a] = i
    return tuple(inverse)


def _explicit_index(index):
    """NumPy's x[0] on a 3-d x means x[0, ...]; the array API wants that trailing ellipsis spelled out."""
    index = index if isinstance(index, tuple) else (index,)
    if all(isinstance(i, (int, slice)) for i in index):
        index = index + (Ellipsis,)
    return index


def _getitem_vjp(g, ans, x, *, index):
    out = _xp().zeros_like(x)
    out[_explicit_index(index)] = g
    return out


getitem = primitive("getitem", lambda x, *, index: x[_explicit_index(index)], _getitem_vjp)  # basic indexing only
