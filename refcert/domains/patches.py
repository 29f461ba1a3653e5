"""Back-substitution of a convolutional layer's neurons through their receptive fields ("patches").

``backsub.bounds`` starts from unit rows: one row per neuron of the top layer (and its negation).  When
that layer is a convolution, a row's coefficients stay zero outside the neuron's receptive field on the
way down through convolutions, ReLU/σ/tanh relaxations and normalisation: a neuron of ConvBig's third
convolution sees a 3×3 window of the layer below, 8×8 of the one below that, 10×10 of the input.  The
dense rule (``backsub.substitute``) carries every row over the whole layer (32×28×28 numbers where
2,048 can be non-zero); here each row carries only a window (its *patch*) and the window's position:

- a patch is an array (channels, h, w, rows, batch') and, per row, the layer coordinates (oy, ox) of its
  window's top-left entry; entries outside the layer (windows of border neurons overhang it) are zero;
- through a convolution (kernel k, stride s, padding p) the patch becomes a ((h − 1)s + k)×((w − 1)s + k)
  patch at (s·oy − p, s·ox − p): the transposed convolution of the patch alone, entries that fall on the
  padding dropped (set to zero) as the dense rule drops them;
- relaxations, normalisation, slacks and the final minimum over the input box read the per-neuron
  arrays (slopes, offsets, slacks, input bounds) at each row's window (one ``take`` per step) and do
  the dense rule's elementwise operations on the window; the sums over the layer become sums over the
  window (the terms left out are exact zeros);
- any other step (linear, flatten, pooling, residual), or a patch as large as its layer, turns the
  patches into dense rows and the dense rule finishes (``backsub.substitute``).

The result is the dense rule's bound up to floating-point rounding: the elementwise operations give the
same numbers, but the transposed convolutions' matrix products and the sums over a layer add the same
non-zero terms in another order (a BLAS matrix product's order already depends on its shape, i.e. on how
many rows share a chunk).  Soundness does not depend on the order: every step's slack is fp.radius over
the number of terms of the sum, which bounds any order (proofs/floating_point.md §5), and each sum here
has at most as many terms as the dense one.  Used without gradients only (certification, the tightening
of DeepPoly's intermediate bounds under ``no_grad``); training and α-CROWN keep the dense rule.
Proofs: proofs/deeppoly.md §1 ("Receptive fields"), proofs/floating_point.md §5 ("Order of evaluation").
"""
from __future__ import annotations

import numpy as np

from refcert import backends
from refcert.autodiff import Tensor


def _value(t):
    return t.value if isinstance(t, Tensor) else t


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _elementwise(step, shape) -> bool:
    """A relaxation with one line per neuron (no rows axis, no split constraints): what patches support."""
    per_neuron = (step.lower_slope, step.lower_offset, step.upper_slope, step.upper_offset)
    return (step.beta is None and step.curve is None
            and all(tuple(t.shape[1:]) == tuple(shape) for t in per_neuron))


def _supported(step, shape) -> bool:
    """A step patches go through: a square convolution, a normalisation or a per-neuron relaxation of
    an image layer (``shape``: the step's output feature shape)."""
    op = getattr(step, "op", None)
    if op == "conv2d":
        return len(step.in_shape) == 3 and step.params["weight"].shape[2] == step.params["weight"].shape[3]
    if op in ("normalize", "batchnorm"):
        return len(step.in_shape) == 3
    return hasattr(step, "lower_slope") and shape is not None and len(shape) == 3 and _elementwise(step, shape)


def plan(steps: tuple, shape: tuple):
    """How rows of ``steps``' top layer (feature ``shape``) go down: (count, elements, size) with the top
    ``count`` steps taken as patches, ``elements`` the most numbers one row's patch takes on the way
    (for chunking) and ``size`` the feature size of the layer where the dense rule takes the rows over.
    None unless the top step is a convolution, or a batch normalisation right after one.  Patches stop at a
    step they do not go through and where a window would be as large as its layer (the dense rule is
    faster there)."""
    ops = [getattr(step, "op", None) for step in steps[-2:]]
    if len(shape) != 3 or not steps or not (ops[-1] == "conv2d" or ops == ["conv2d", "batchnorm"]):
        return None
    h = w = 1
    count, largest, current = 0, _size(shape), tuple(shape)
    for step in reversed(steps):
        if not _supported(step, current):
            break
        if getattr(step, "op", None) == "conv2d":
            k, stride = step.params["weight"].shape[2], step.params["stride"]
            channels, height, width = step.in_shape
            nh, nw = (h - 1) * stride + k, (w - 1) * stride + k
            if nh * nw >= height * width:
                break
            largest = max(largest, channels * k * k * h * w, channels * nh * nw)   # product, then windows
            h, w = nh, nw
        current = tuple(step.in_shape) if hasattr(step, "in_shape") else current
        count += 1
    return (count, largest, _size(current)) if count else None


class _Windows:
    """Where each row's window lies in one layer (``height`` × ``width``): top-left corners (oy, ox) (NumPy
    int arrays (rows,)), size h × w, and the ``take`` indices of the windows in the zero-padded plane."""

    def __init__(self, oy, ox, h: int, w: int, height: int, width: int):
        self.oy, self.ox, self.h, self.w, self.height, self.width = oy, ox, h, w, height, width
        self.top, self.left = max(0, -int(oy.min())), max(0, -int(ox.min()))
        self.bottom = max(0, int(oy.max()) + h - height)
        self.right = max(0, int(ox.max()) + w - width)
        ys = (oy + self.top)[None, None, :] + np.arange(h)[:, None, None]                   # (h, 1, rows)
        xs = (ox + self.left)[None, None, :] + np.arange(w)[None, :, None]                  # (1, w, rows)
        self.index = backends.current().asarray((ys * (width + self.left + self.right) + xs).reshape(-1))

    def gather(self, *arrays):
        """Each array (batch, C_i, H, W) at the rows' windows: (C_i, h, w, rows, batch), zero outside the
        layer; one ``take`` for all of them."""
        xp = backends.current().xp
        values = [_value(t) for t in arrays]
        batch = max(t.shape[0] for t in values)
        values = [t if t.shape[0] == batch else xp.broadcast_to(t, (batch,) + tuple(t.shape[1:])) for t in values]
        v = values[0] if len(values) == 1 else xp.concat(values, axis=1)
        v = xp.permute_dims(v, (1, 2, 3, 0))                                                 # (C, H, W, batch)
        channels = v.shape[0]
        if self.top or self.bottom or self.left or self.right:
            padded = xp.zeros((channels, self.height + self.top + self.bottom, self.width + self.left + self.right,
                               batch), dtype=v.dtype)
            padded[:, self.top:self.top + self.height, self.left:self.left + self.width, :] = v
            v = padded
        taken = xp.take(xp.reshape(v, (channels, -1, batch)), self.index, axis=1)
        taken = xp.reshape(taken, (channels, self.h, self.w, -1, batch))
        if len(values) == 1:
            return taken
        edges = np.cumsum([0] + [t.shape[1] for t in values])
        return [taken[int(a):int(b), ...] for a, b in zip(edges[:-1], edges[1:])]

    def dense(self, patch):
        """Patches (C, h, w, rows, batch') as dense rows (batch', rows, C, H, W), zero outside each window."""
        xp = backends.current().xp
        channels, rows, batch = patch.shape[0], patch.shape[3], patch.shape[4]
        ly = np.arange(self.height)[:, None, None] - self.oy[None, None, :]                 # (H, 1, rows)
        lx = np.arange(self.width)[None, :, None] - self.ox[None, None, :]                  # (1, W, rows)
        inside = (ly >= 0) & (ly < self.h) & (lx >= 0) & (lx < self.w)
        local = (ly * self.w + lx) * rows + np.arange(rows)[None, None, :]
        index = np.where(inside, local, self.h * self.w * rows).reshape(-1)   # outside: an appended zero
        flat = xp.reshape(patch, (channels, -1, batch))
        flat = xp.concat([flat, xp.zeros((channels, 1, batch), dtype=patch.dtype)], axis=1)
        out = xp.take(flat, backends.current().asarray(index), axis=1)
        return xp.permute_dims(xp.reshape(out, (channels, self.height, self.width, rows, batch)), (4, 3, 0, 1, 2))


def _dot(patch, values):
    """Σ over each row's window of patch·values: (batch, rows).  One ``einsum`` where the array library has
    it (NumPy, CuPy: 2–3× faster than the product and the sum), else the two."""
    xp = backends.current().xp
    einsum = getattr(xp, "einsum", None)
    if einsum is None:
        return xp.matrix_transpose(xp.sum(patch * values, axis=(0, 1, 2)))
    shape = np.broadcast_shapes(tuple(patch.shape), tuple(values.shape))
    return einsum("fhwrb,fhwrb->br", xp.broadcast_to(patch, shape), xp.broadcast_to(values, shape))


def _plus(a, b):
    return b if a is None else a if b is None else a + b


def _through_conv(patch, windows: _Windows, step):
    """The transposed convolution of each row's patch (proofs/deeppoly.md §1), entries on the padding
    dropped (set to zero); and lam·b over the patch."""
    xp = backends.current().xp
    weight, bias = _value(step.params["weight"]), step.params["bias"]
    stride, padding = step.params["stride"], step.params["padding"]
    out_channels, in_channels, k = weight.shape[0], weight.shape[1], weight.shape[2]
    _, h, w, rows, batch = patch.shape
    kernel_t = xp.matrix_transpose(xp.reshape(weight, (out_channels, -1)))           # (C·k·k, O)
    cols = xp.reshape(kernel_t @ xp.reshape(patch, (out_channels, -1)), (in_channels, k, k, h, w, rows, batch))
    nh, nw = (h - 1) * stride + k, (w - 1) * stride + k
    out = xp.zeros((in_channels, nh, nw, rows, batch), dtype=patch.dtype)
    for i in range(k):
        for j in range(k):
            out[:, i:i + stride * (h - 1) + 1:stride, j:j + stride * (w - 1) + 1:stride, ...] += cols[:, i, j, ...]
    height, width = step.in_shape[1], step.in_shape[2]
    oy, ox = windows.oy * stride - padding, windows.ox * stride - padding
    constant = None if bias is None else _dot(patch, xp.reshape(_value(bias), (-1, 1, 1, 1, 1)))
    ys, xs = oy[None, :] + np.arange(nh)[:, None], ox[None, :] + np.arange(nw)[:, None]      # (nh|nw, rows)
    keep_y, keep_x = (ys >= 0) & (ys < height), (xs >= 0) & (xs < width)
    if not (keep_y.all() and keep_x.all()):
        keep = backends.current().asarray((keep_y[:, None, :] & keep_x[None, :, :])[..., None])
        out = xp.where(keep, out, xp.zeros((), dtype=out.dtype))
    return out, _Windows(oy, ox, nh, nw, height, width), constant


def _through_relaxation(patch, windows: _Windows, step, slack):
    """``backsub._through_relaxation`` on the windows: the same elementwise operations (the differences
    of the lines are taken before the gather, neuron by neuron: the same numbers)."""
    xp = backends.current().xp
    arrays = [step.upper_slope, step.lower_slope.value - step.upper_slope.value, step.upper_offset,
              step.lower_offset.value - step.upper_offset.value]
    upper, spread, upper_offset, offset_spread, *rest = windows.gather(*arrays, *([slack] if slack is not None else []))
    pos = xp.maximum(patch, 0.0)
    new = patch * upper + pos * spread
    constant = _dot(patch, upper_offset) + _dot(pos, offset_spread)
    return new, constant, (rest[0] if rest else None)


def _through_normalize(patch, step):
    """x_k = (x − m)/s: lam ↦ lam/s, constant −lam·m/s."""
    xp = backends.current().xp
    mean, std = _value(step.params["mean"]), _value(step.params["std"])
    shape = (mean.shape[0], 1, 1, 1, 1) if mean.shape[0] > 1 else (1,)
    scaled = patch / xp.reshape(std, shape)
    return scaled, -_dot(scaled, xp.reshape(mean, shape))


def _through_batchnorm(patch, step):
    """x_k = x·s + t: lam ↦ lam·s, constant lam·t."""
    xp = backends.current().xp
    scale, shift = _value(step.params["scale"]), _value(step.params["shift"])
    shape = (scale.shape[0], 1, 1, 1, 1) if scale.shape[0] > 1 else (1,)
    return patch * xp.reshape(scale, shape), _dot(patch, xp.reshape(shift, shape))


class Rows:
    """Rows of coefficients as patches (C, h, w, rows, batch') with their ``windows``."""

    def __init__(self, patch, windows: _Windows):
        self.patch, self.windows = patch, windows

    @classmethod
    def unit(cls, neurons, signs, shape: tuple, dtype):
        """Rows signs[r]·e_{neurons[r]} of a layer with feature ``shape`` (flat indices, NumPy arrays)."""
        xp = backends.current().xp
        channels, height, width = shape
        c_index, y, x = np.unravel_index(neurons, shape)
        one_hot = (np.arange(channels)[:, None] == c_index[None, :]) * signs[None, :]          # (C, rows)
        patch = xp.reshape(backends.current().asarray(one_hot, dtype=dtype), (channels, 1, 1, neurons.shape[0], 1))
        return cls(patch, _Windows(y.astype(np.int64), x.astype(np.int64), 1, 1, height, width))

    def substitute(self, steps: tuple):
        """``backsub.substitute`` through ``steps`` (each ``_supported``): (constant, slack), backend arrays
        (batch, rows) or None."""
        xp = backends.current().xp
        patch, windows = self.patch, self.windows
        constant = slack = None
        for step in reversed(steps):
            more = None
            if hasattr(step, "lower_slope"):  # the step's slack is read at the same windows
                new, more, step_slack = _through_relaxation(patch, windows, step, step.slack)
            elif step.slack is not None:
                step_slack = windows.gather(step.slack)
            if step.slack is not None:
                slack = _plus(slack, _dot(xp.abs(patch), step_slack))
            if step.floor is not None:
                slack = _plus(slack, xp.reshape(_value(step.floor), (-1, 1)))
            if hasattr(step, "lower_slope"):
                patch = new
            elif step.op == "conv2d":
                patch, windows, more = _through_conv(patch, windows, step)
            elif step.op == "batchnorm":
                patch, more = _through_batchnorm(patch, step)
            else:
                patch, more = _through_normalize(patch, step)
            constant = _plus(constant, more)
        self.patch, self.windows = patch, windows
        return constant, slack

    def dense(self) -> Tensor:
        """The rows as dense coefficients (batch', rows, C, H, W)."""
        return Tensor(self.windows.dense(self.patch))

    def dots(self, kind: str, v):
        """``backsub._concretize``'s Σ f(lam')·v per (batch, row) over the windows (f by ``kind``)."""
        xp = backends.current().xp
        f = {"lam": lambda p: p, "pos": lambda p: xp.maximum(p, 0.0), "abs": xp.abs}[kind]
        return Tensor(_dot(f(self.patch), self.windows.gather(v)))
