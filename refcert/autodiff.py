"""A minimal reverse-mode automatic differentiation: ``Tensor`` and a table of primitive ops.

Every primitive is one row of ``OPS``: its forward function next to the vector-Jacobian product (vjp)
of each differentiable argument, written as in HIPS autograd's ``defvjp``.  A vjp has the signature
``vjp(g, ans, *args, **params) -> gradient of that argument``; ``g`` is the gradient of the output,
``ans`` the forward result, ``args`` the argument values (arrays or Python scalars).  Broadcasting is
undone in one place, ``unbroadcast``.  ``Tensor.backward()`` sorts the graph and *accumulates*
gradients, so a tensor used twice gets both contributions.  Inside ``with no_grad():`` nothing is
recorded.  All arithmetic goes through the active backend's array namespace (``refcert.backends``).
"""
from __future__ import annotations

import builtins
import contextlib
import threading
from typing import Callable

from refcert import backends

__all__ = ["Tensor", "no_grad", "OPS", "unbroadcast", "cross_entropy"]

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
maximum = primitive(  # ties split the gradient equally, as autograd does
    "maximum", lambda x, y: _xp().maximum(x, y),
    lambda g, ans, x, y: unbroadcast(g * _to_dtype(x == ans, ans) / (1.0 + _to_dtype(x == y, ans)), _shape(x)),
    lambda g, ans, x, y: unbroadcast(g * _to_dtype(y == ans, ans) / (1.0 + _to_dtype(x == y, ans)), _shape(y)))
minimum = primitive(
    "minimum", lambda x, y: _xp().minimum(x, y),
    lambda g, ans, x, y: unbroadcast(g * _to_dtype(x == ans, ans) / (1.0 + _to_dtype(x == y, ans)), _shape(x)),
    lambda g, ans, x, y: unbroadcast(g * _to_dtype(y == ans, ans) / (1.0 + _to_dtype(x == y, ans)), _shape(y)))
where = primitive(  # where(condition, x, y); the condition is a constant boolean array
    "where", lambda c, x, y: _xp().where(c, x, y),
    None,
    lambda g, ans, c, x, y: unbroadcast(_xp().where(c, g, 0.0), _shape(x)),
    lambda g, ans, c, x, y: unbroadcast(_xp().where(c, 0.0, g), _shape(y)))

# --- elementwise functions --------------------------------------------------------------------
relu = primitive("relu", lambda x: _xp().maximum(x, 0.0), lambda g, ans, x: _xp().where(x > 0, g, 0.0))
abs = primitive("abs", lambda x: _xp().abs(x), lambda g, ans, x: g * _xp().sign(x))
exp = primitive("exp", lambda x: _xp().exp(x), lambda g, ans, x: g * ans)
log = primitive("log", lambda x: _xp().log(x), lambda g, ans, x: g / x)
sqrt = primitive("sqrt", lambda x: _xp().sqrt(x), lambda g, ans, x: g * 0.5 / ans)
def _sigmoid(x):
    """σ(x) = 1/(1 + e⁻ˣ) for x ≥ 0 and eˣ/(1 + eˣ) for x < 0: only e^(−|x|) ≤ 1 is formed, so the
    result has a small *relative* error everywhere (0.5·(tanh(x/2) + 1) is 0 below −20 in float32)."""
    xp = _xp()
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


sigmoid = primitive("sigmoid", _sigmoid, lambda g, ans, x: g * ans * (1.0 - ans))
tanh = primitive("tanh", lambda x: _xp().tanh(x), lambda g, ans, x: g * (1.0 - ans * ans))
clip = primitive(  # bounds are constants (scalars or arrays); the gradient passes where x is inside
    "clip", lambda x, *, lower, upper: _xp().minimum(_xp().maximum(x, lower), upper),
    lambda g, ans, x, *, lower, upper: g * _to_dtype((ans != lower) & (ans != upper), g))

# --- reductions -------------------------------------------------------------------------------
sum = primitive(
    "sum", lambda x, *, axis=None, keepdims=False: _xp().sum(x, axis=axis, keepdims=keepdims),
    lambda g, ans, x, *, axis=None, keepdims=False:
        _xp().broadcast_to(_keep_reduced(g, x, axis, keepdims), x.shape))
mean = primitive(
    "mean", lambda x, *, axis=None, keepdims=False: _xp().mean(x, axis=axis, keepdims=keepdims),
    lambda g, ans, x, *, axis=None, keepdims=False:
        _xp().broadcast_to(_keep_reduced(g, x, axis, keepdims), x.shape) / _count(x, axis))


def _extreme_vjp(g, ans, x, *, axis=None, keepdims=False):
    """Gradient of max/min: shared equally among the positions that attain it (as autograd)."""
    xp = _xp()
    hit = _to_dtype(x == _keep_reduced(ans, x, axis, keepdims), x)
    return hit * _keep_reduced(g, x, axis, keepdims) / xp.sum(hit, axis=axis, keepdims=True)


max = primitive("max", lambda x, *, axis=None, keepdims=False: _xp().max(x, axis=axis, keepdims=keepdims),
                _extreme_vjp)
min = primitive("min", lambda x, *, axis=None, keepdims=False: _xp().min(x, axis=axis, keepdims=keepdims),
                _extreme_vjp)


def _logsumexp(x, *, axis=-1, keepdims=False):
    xp = _xp()
    m = xp.max(x, axis=axis, keepdims=True)
    out = m + xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True))
    return out if keepdims else xp.squeeze(out, axis=axis)


logsumexp = primitive(
    "logsumexp", _logsumexp,
    lambda g, ans, x, *, axis=-1, keepdims=False:
        _keep_reduced(g, x, axis, keepdims) * _xp().exp(x - _keep_reduced(ans, x, axis, keepdims)))


def _one_hot(labels, classes, like):
    xp = _xp()
    return _to_dtype(xp.arange(classes)[None, :] == xp.astype(labels, xp.int64)[:, None], like)


cross_entropy = primitive(  # mean over the batch of -log softmax(logits)[label]; labels (batch,) ints
    "cross_entropy",
    lambda z, labels: _xp().mean(_logsumexp(z, axis=-1) - _xp().sum(z * _one_hot(labels, z.shape[-1], z), axis=-1)),
    lambda g, ans, z, labels: g * (_xp().exp(z - _logsumexp(z, axis=-1, keepdims=True))
                                   - _one_hot(labels, z.shape[-1], z)) / z.shape[0])

# --- linear algebra and shapes ----------------------------------------------------------------


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
broadcast_to = primitive("broadcast_to", lambda x, *, shape: _xp().broadcast_to(x, tuple(shape)),
                         lambda g, ans, x, *, shape: unbroadcast(g, x.shape))


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


def _memory_order(x):
    """x's axes from the slowest-varying in memory to the fastest (from strides; None where the array
    library has none).  A transposed view reports the order of the buffer it views."""
    strides = getattr(x, "strides", None)
    if strides is None or len(strides) < 2:
        return None
    return tuple(sorted(range(x.ndim), key=lambda a: (-builtins.abs(strides[a]), a)))


def _concat_forward(*xs, axis=0):
    """Concatenation whose result keeps the first operand's memory layout.

    The zonotope generators after a convolution are a transposed view (the conv writes channels, rows,
    columns, then generators); a plain row-major concat would transpose every generator matrix, and the
    next convolution transpose it back.  Permuting to memory order first makes both views instead.
    """
    xp = _xp()
    axis = axis % xs[0].ndim
    order = _memory_order(xs[0])
    if order is None or order == tuple(range(xs[0].ndim)):
        return xp.concat(xs, axis=axis)
    joined = xp.concat([xp.permute_dims(x, order) for x in xs], axis=order.index(axis))
    return xp.permute_dims(joined, _inverse_permutation(order))


def _concat_vjp(position):
    def vjp(g, ans, *xs, axis=0):
        start = 0
        for x in xs[:position]:
            start += x.shape[axis]
        index = [slice(None)] * g.ndim
        index[axis] = slice(start, start + xs[position].shape[axis])
        return g[tuple(index)]
    return vjp


_CONCAT_ARITY = 64  # the primitive has one vjp per operand position
_concat = primitive("concatenate", _concat_forward, *[_concat_vjp(i) for i in range(_CONCAT_ARITY)])


def concatenate(tensors, axis=0):
    """Join tensors along an existing axis; more than 64 are joined in groups of 64, then the groups."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concatenate needs at least one tensor")
    while len(tensors) > _CONCAT_ARITY:
        tensors = [_concat(*tensors[i:i + _CONCAT_ARITY], axis=axis) for i in range(0, len(tensors), _CONCAT_ARITY)]
    return _concat(*tensors, axis=axis)


def stack(tensors, axis=0):
    """Join tensors along a new axis."""
    expanded = []
    for t in tensors:
        t = t if isinstance(t, Tensor) else Tensor(t)
        shape = list(t.shape)
        shape.insert(axis % (t.ndim + 1), 1)
        expanded.append(reshape(t, shape=tuple(shape)))
    return concatenate(expanded, axis=axis)


# --- composites (built from the primitives above; no vjp of their own) --------------------------

def softplus(x):
    """log(1 + exp(x)), computed stably as relu(x) + log(1 + exp(-|x|))."""
    return relu(x) + log(1.0 + exp(neg(abs(x))))


def as_tensor(value) -> Tensor:
    return value if isinstance(value, Tensor) else Tensor(value)


# Convolution and pooling are rows of the same op table, kept in their own module for length; importing
# them here registers them and keeps ``autodiff.conv2d`` etc. the one place callers look.
from refcert.autodiff_conv import (  # noqa: E402,F401
    CHUNK_BYTES, avg_pool2d, conv2d, conv_transpose2d, max_pool2d, pad2d)
