"""Convolution and pooling primitives of the autodiff (NCHW), rows of ``OPS`` like the others.

The autodiff's middle layer: built on ``autodiff_core`` (``Tensor``, ``primitive``) and imported by
``autodiff``, which re-exports its public names, so callers write ``autodiff.conv2d``.  A convolution
is im2col followed by one matrix product per slice of the batch (``_batch_slices``): zonotope
generators travel through a convolution as a batch of ~1000 images per input, whose im2col columns
would otherwise take gigabytes.
"""
from __future__ import annotations

import builtins
import math

from refcert import backends
from refcert.autodiff_core import _shape, _swap_last, _to_dtype, _xp, primitive


def _pad_hw(x, padding):
    """Zero-pad the last two axes by ``padding`` on each side (NCHW)."""
    if padding == 0:
        return x
    xp = _xp()
    out = xp.zeros(x.shape[:-2] + (x.shape[-2] + 2 * padding, x.shape[-1] + 2 * padding), dtype=x.dtype)
    out[..., padding:-padding, padding:-padding] = x
    return out


def _unpad_hw(x, padding):
    return x if padding == 0 else x[..., padding:-padding, padding:-padding]


pad2d = primitive("pad2d", lambda x, *, padding: _pad_hw(x, padding),
                  lambda g, ans, x, *, padding: _unpad_hw(g, padding))

# --- convolution and pooling (NCHW) -----------------------------------------------------------


def _out_size(size, kernel, stride, padding):
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"kernel {kernel} (stride {stride}, padding {padding}) does not fit input size {size}")
    return out


def _windows(kernel_h, kernel_w, stride, out_h, out_w, batch_last=False):
    """The slice of the padded input that each kernel position (i, j) sees, row-major.

    The slices index the two spatial axes, which are the last two, or (``batch_last``) the two before
    a trailing batch axis.
    """
    trailing = (slice(None),) if batch_last else ()
    return [(..., slice(i, i + stride * (out_h - 1) + 1, stride), slice(j, j + stride * (out_w - 1) + 1, stride))
            + trailing for i in range(kernel_h) for j in range(kernel_w)]


def _im2col(x, kernel_h, kernel_w, stride, padding):
    """(B, C, H, W) -> columns (C*kh*kw, Ho*Wo*B), and (Ho, Wo).

    Row c*kh*kw + i*kw + j, column (p*Wo + q)*B + b holds padded x[b, c, p*stride + i, q*stride + j], so
    ``W.reshape(O, -1) @ columns`` is the whole convolution as one matrix product.  The batch is the
    fastest axis (layout C, H, W, B), so each window copy runs over long contiguous rows.
    """
    xp = _xp()
    batch, channels, height, width = x.shape
    out_h = _out_size(height, kernel_h, stride, padding)
    out_w = _out_size(width, kernel_w, stride, padding)
    padded = xp.zeros((channels, height + 2 * padding, width + 2 * padding, batch), dtype=x.dtype)
    padded[:, padding:padding + height, padding:padding + width, :] = xp.permute_dims(x, (1, 2, 3, 0))
    windows = _windows(kernel_h, kernel_w, stride, out_h, out_w, batch_last=True)
    cols = xp.stack([padded[w] for w in windows], axis=1)  # (C, kh*kw, Ho, Wo, B)
    return xp.reshape(cols, (channels * kernel_h * kernel_w, out_h * out_w * batch)), (out_h, out_w)


def _col2im(cols, input_shape, kernel_h, kernel_w, stride, padding):
    """Adjoint of _im2col: add each column entry back to the input position it came from.
    Returns (C, H, W, B), the batch fastest."""
    xp = _xp()
    batch, channels, height, width = input_shape
    out_h = _out_size(height, kernel_h, stride, padding)
    out_w = _out_size(width, kernel_w, stride, padding)
    cols = xp.reshape(cols, (channels, kernel_h * kernel_w, out_h, out_w, batch))
    padded = xp.zeros((channels, height + 2 * padding, width + 2 * padding, batch), dtype=cols.dtype)
    for position, window in enumerate(_windows(kernel_h, kernel_w, stride, out_h, out_w, batch_last=True)):
        padded[window] += cols[:, position, ...]
    return padded[:, padding:padding + height, padding:padding + width, :]


# The columns of a whole batch can be huge: a zonotope's generators go through a convolution as a batch
# of ~1000 images per input, whose columns would take gigabytes.  The convolutions below therefore work
# on slices of the batch whose columns take at most this many bytes: peak memory stays small, and NumPy
# reuses the same blocks instead of asking the OS for fresh pages (which costs more than the copy).  On a
# GPU a slice only needs to be large enough to keep it busy.
CHUNK_BYTES = {"numpy": 16 * 2**20}
_DEFAULT_CHUNK_BYTES = 2**30


def _batch_slices(batch, channels, kernel_hw, out_hw, dtype):
    """Slices of the batch axis whose im2col columns fit in the backend's chunk budget (>= 1 item each)."""
    itemsize = _xp().finfo(dtype).bits // 8  # the array API has no dtype.itemsize
    per_item = channels * kernel_hw[0] * kernel_hw[1] * out_hw[0] * out_hw[1] * itemsize
    budget = CHUNK_BYTES.get(backends.current().name, _DEFAULT_CHUNK_BYTES)
    step = builtins.max(1, budget // builtins.max(1, per_item))
    return [slice(start, builtins.min(start + step, batch)) for start in range(0, batch, step)]


def _check_conv(x_shape, w_shape):
    if len(x_shape) != 4 or len(w_shape) != 4 or x_shape[1] != w_shape[1]:
        raise ValueError(f"conv2d needs x (B, C, H, W) and weight (O, C, kh, kw), got {x_shape} and {w_shape}")


def _by_channel(y):
    """(B, O, Ho, Wo) -> (O, Ho*Wo*B), the layout of im2col's columns."""
    xp = _xp()
    return xp.reshape(xp.permute_dims(y, (1, 2, 3, 0)), (y.shape[1], -1))


def _join_slices(slices, batch, compute):
    """compute(part) -> (C, H, W, b) for each batch slice, joined along that last axis (no copy for a
    single slice) and returned as a (B, C, H, W) view."""
    xp = _xp()
    out = None
    for part in slices:
        piece = compute(part)
        if len(slices) == 1:
            out = piece
        else:
            out = xp.empty(piece.shape[:-1] + (batch,), dtype=piece.dtype) if out is None else out
            out[..., part] = piece
    return xp.permute_dims(out, (3, 0, 1, 2))


def _conv2d(x, w, *, stride=1, padding=0):
    """Cross-correlation on arrays, slice by slice of the batch: (B, C, H, W) -> (B, O, Ho, Wo), returned
    as a view of a (O, Ho, Wo, B) array (the layout the next convolution's columns want)."""
    xp = _xp()
    out_hw = (_out_size(x.shape[2], w.shape[2], stride, padding), _out_size(x.shape[3], w.shape[3], stride, padding))
    kernel = xp.reshape(w, (w.shape[0], -1))

    def convolve(part):
        cols, _ = _im2col(x[part, ...], w.shape[2], w.shape[3], stride, padding)
        return xp.reshape(kernel @ cols, (w.shape[0],) + out_hw + (-1,))            # (O, Ho, Wo, b)
    return _join_slices(_batch_slices(x.shape[0], x.shape[1], w.shape[2:], out_hw, x.dtype),
                        x.shape[0], convolve)


def _conv_weight_grad(g, x, w_shape, stride, padding):
    """d<g, conv2d(x, w)>/dw for g (B, O, Ho, Wo): sum over batch slices of g (O, Ho*Wo*b) @ columns^T."""
    xp = _xp()
    total = None
    for part in _batch_slices(x.shape[0], x.shape[1], w_shape[2:], g.shape[2:], x.dtype):
        cols, _ = _im2col(x[part, ...], w_shape[2], w_shape[3], stride, padding)
        term = _by_channel(g[part, ...]) @ _swap_last(cols)
        total = term if total is None else total + term
    return xp.reshape(total, tuple(w_shape))


def _conv_transpose2d(y, w, *, stride=1, padding=0, input_hw):
    """The adjoint of conv2d in x: maps (B, O, Ho, Wo) back to (B, C, H, W) with H, W = input_hw."""
    xp = _xp()
    height, width = int(input_hw[0]), int(input_hw[1])
    kernel_t = _swap_last(xp.reshape(w, (w.shape[0], -1)))                    # (C*kh*kw, O)

    def transpose_convolve(part):
        cols = kernel_t @ _by_channel(y[part, ...])                             # (C*kh*kw, Ho*Wo*b)
        shape = (cols.shape[1] // (y.shape[2] * y.shape[3]), w.shape[1], height, width)
        return _col2im(cols, shape, w.shape[2], w.shape[3], stride, padding)   # (C, H, W, b)
    return _join_slices(_batch_slices(y.shape[0], w.shape[1], w.shape[2:], y.shape[2:], y.dtype),
                        y.shape[0], transpose_convolve)


_conv2d_op = primitive(
    "conv2d", _conv2d,
    lambda g, ans, x, w, *, stride=1, padding=0: _conv_transpose2d(g, w, stride=stride, padding=padding,
                                                                    input_hw=x.shape[2:]),
    lambda g, ans, x, w, *, stride=1, padding=0: _conv_weight_grad(g, x, w.shape, stride, padding))


def conv2d(x, w, *, stride=1, padding=0):
    """Cross-correlation of x (B, C, H, W) with w (O, C, kh, kw) -> (B, O, Ho, Wo); the layer adds the bias.

    im2col, then one matrix product with the kernel, slice by slice of the batch; the gradient in x is
    conv_transpose2d, the gradient in w recomputes the columns slice by slice (the graph keeps x, not its
    columns: recomputing them measured no slower on training batches, and memory stays bounded).
    """
    _check_conv(_shape(x), _shape(w))
    _out_size(_shape(x)[2], _shape(w)[2], stride, padding)
    _out_size(_shape(x)[3], _shape(w)[3], stride, padding)
    return _conv2d_op(x, w, stride=stride, padding=padding)


conv_transpose2d = primitive(  # used by back-substitution (DeepPoly) through convolutions
    "conv_transpose2d", _conv_transpose2d,
    lambda g, ans, y, w, *, stride=1, padding=0, input_hw: _conv2d(g, w, stride=stride, padding=padding),
    lambda g, ans, y, w, *, stride=1, padding=0, input_hw: _conv_weight_grad(y, g, w.shape, stride, padding))


def _pool_windows(x, kernel, stride, padding):
    out_h = _out_size(x.shape[2], kernel, stride, padding)
    out_w = _out_size(x.shape[3], kernel, stride, padding)
    return _windows(kernel, kernel, stride, out_h, out_w)


def _avg_pool2d(x, *, kernel_size, stride, padding=0):
    """Mean over each window; zero padding counts in the mean (PyTorch's count_include_pad=True)."""
    padded = _pad_hw(x, padding)
    windows = _pool_windows(x, kernel_size, stride, padding)
    total = padded[windows[0]]
    for window in windows[1:]:
        total = total + padded[window]
    return total / float(kernel_size * kernel_size)


def _avg_pool2d_vjp(g, ans, x, *, kernel_size, stride, padding=0):
    xp = _xp()
    padded = xp.zeros(x.shape[:2] + (x.shape[2] + 2 * padding, x.shape[3] + 2 * padding), dtype=g.dtype)
    share = g / float(kernel_size * kernel_size)
    for window in _pool_windows(x, kernel_size, stride, padding):
        padded[window] = padded[window] + share
    return _unpad_hw(padded, padding)


avg_pool2d = primitive("avg_pool2d", _avg_pool2d, _avg_pool2d_vjp)


def _max_pool_stack(x, kernel_size, stride, padding):
    xp = _xp()
    if padding > kernel_size // 2:
        raise ValueError(f"max_pool2d padding {padding} exceeds half the kernel size {kernel_size} (as PyTorch requires)")
    if padding:  # padded positions never win: -inf (PyTorch's max_pool2d pads the same way)
        padded = xp.full(x.shape[:2] + (x.shape[2] + 2 * padding, x.shape[3] + 2 * padding), -math.inf, dtype=x.dtype)
        padded[..., padding:-padding, padding:-padding] = x
    else:
        padded = x
    return xp.stack([padded[w] for w in _pool_windows(x, kernel_size, stride, padding)], axis=2)


def _max_pool2d_vjp(g, ans, x, *, kernel_size, stride, padding=0):
    """The gradient goes to the first maximal entry of each window (as PyTorch)."""
    xp = _xp()
    stacked = _max_pool_stack(x, kernel_size, stride, padding)
    first = xp.argmax(stacked, axis=2)
    padded = xp.zeros(x.shape[:2] + (x.shape[2] + 2 * padding, x.shape[3] + 2 * padding), dtype=g.dtype)
    for position, window in enumerate(_pool_windows(x, kernel_size, stride, padding)):
        padded[window] = padded[window] + g * _to_dtype(first == position, g)
    return _unpad_hw(padded, padding)


max_pool2d = primitive(
    "max_pool2d",
    lambda x, *, kernel_size, stride, padding=0: _xp().max(_max_pool_stack(x, kernel_size, stride, padding), axis=2),
    _max_pool2d_vjp)
