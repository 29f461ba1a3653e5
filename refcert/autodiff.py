"""The autodiff's top layer, where callers import it from: every primitive, as ``autodiff.<name>``.

A minimal reverse-mode automatic differentiation (``autodiff_core`` explains the op table ``OPS``, the
vjp convention and ``Tensor.backward()``).  Layers (each imports only those below it):
``autodiff_core`` holds ``Tensor``, recording (``no_grad``), ``primitive`` and the ops Tensor's
operators use (add, sub, mul, div, neg, sum, mean, matmul, reshape, transpose, getitem);
``autodiff_conv`` the convolution and pooling rows; this module the other primitives (maximum, where,
relu, sigmoid, logsumexp, cross_entropy, concatenate, take_last, ...) and composites, and it re-exports the names of
both lower modules, so ``autodiff.conv2d`` and ``autodiff.Tensor`` stay the one place callers look.
"""
from __future__ import annotations

import builtins

import numpy as np

from refcert import backends
from refcert.autodiff_conv import (  # noqa: F401  (re-exported: autodiff.conv2d etc.)
    CHUNK_BYTES, avg_pool2d, conv2d, conv_transpose2d, max_pool2d, pad2d)
from refcert.autodiff_core import (  # noqa: F401  (re-exported: the Tensor, recording and the core ops)
    OPS, Tensor, add, constant, div, enable_grad, getitem, grad_enabled, matmul, mean, mul, neg, no_grad,
    primitive, reshape, sub, sum, transpose, unbroadcast)
from refcert.autodiff_core import _inverse_permutation, _keep_reduced, _shape, _to_dtype, _xp

__all__ = ["Tensor", "no_grad", "OPS", "unbroadcast", "cross_entropy"]


# --- elementwise arithmetic (add, sub, mul, div, neg: autodiff_core) --------------------------
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

# --- reductions (sum, mean: autodiff_core) ----------------------------------------------------


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

# --- shapes (matmul, reshape, transpose, getitem: autodiff_core) ------------------------------
def inverse_index(index):
    """The permutation that undoes ``index`` (a NumPy permutation of 0..n−1): x[inverse][index] = x."""
    inverse = np.empty_like(index)
    inverse[index] = np.arange(index.size)
    return inverse


def _take_last(x, *, index):
    """x[..., index]: the last axis gathered by ``index`` (a NumPy permutation of its positions)."""
    return _xp().take(x, backends.current().asarray(index), axis=x.ndim - 1)


# A permutation of the last axis; its vjp is the inverse permutation: g ↦ g[..., inverse_index(index)].
take_last = primitive("take_last", _take_last,
                      lambda g, ans, x, *, index: _take_last(g, index=inverse_index(index)))


broadcast_to = primitive("broadcast_to", lambda x, *, shape: _xp().broadcast_to(x, tuple(shape)),
                         lambda g, ans, x, *, shape: unbroadcast(g, x.shape))


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


# --- composites (built from the primitives above; no vjp of their own) ------------------------

def softplus(x):
    """log(1 + exp(x)), computed stably as relu(x) + log(1 + exp(-|x|))."""
    return relu(x) + log(1.0 + exp(neg(abs(x))))


def as_tensor(value) -> Tensor:
    return value if isinstance(value, Tensor) else Tensor(value)
