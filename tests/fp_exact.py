"""Reference evaluators for the floating-point soundness tests (issue 11): exact, IEEE-754, onnxruntime.

The guarantee under test: bounds computed by a domain from an input set contain

(a) the *exact* output of the network in real arithmetic (stored float weights read as exact
    rationals) at every real point of the set, floats or not, and
(b) the output of every IEEE-754 evaluation of the network in the execution precision, with
    round-to-nearest and any summation order (FMA or not), at every float point of the set.

This module gives the tests what they need to check that with zero tolerance:

* ``exact_forward(net, points)``: the forward pass in ``fractions.Fraction``.  Piecewise-linear nets
  give exact values; sigmoid and tanh give rigorous enclosures of width about 2^-290 relative
  (``mpmath`` interval arithmetic at 300 bits), so every value is an ``Interval`` of Fractions.
* ``float_forward(net, points, order)``: the forward pass in the points' dtype where every dot product
  and window sum is computed in one of ``ORDERS`` (NumPy's matmul, left to right, right to left,
  pairwise halving, sorted by magnitude either way, a chain of fused multiply-adds, each rounded once
  by ``fma``) and every elementwise op in the dtype; sigmoid as 1/(1 + exp(-x)).  ``refcert_forward``
  is refcert's own pass; ``onnxruntime_forward`` runs the exported ONNX model (None where
  onnx/onnxruntime or a kernel for the dtype is missing).  ``round_to`` rounds a Fraction correctly.
* ``real_box``/``real_ball`` (the input set as exact rationals), ``sample_points`` (corners, rational
  interior points, the floats of the dtype nearest the ends inside the set, random floats), and
  ``gather_evidence``/``Evidence``: the exact and float outputs of the sampled points of one element,
  checked against any number of domains' bounds (``Evidence.violations``) with a float64 filter and an
  exact fallback, so each point is evaluated once and the comparison itself never rounds.

Layer semantics follow refcert/nn.py, refcert/domains/point.py and refcert/autodiff_conv.py: linear
y = x Wᵀ + b; conv2d is NCHW cross-correlation with weight (O, C, kh, kw), stride and zero padding;
normalize is (x − mean) / std per channel (the first feature axis; one constant for all features when
there is a single channel); batchnorm (evaluation mode) is x·scale + shift per channel, the same way, with
scale and shift the floats ``layer.arguments(None)`` computes from the running statistics (read exactly;
float passes: fl(fl(x·scale) + shift), or fma(x, scale, shift) in the "fma" order); avg_pool2d counts the zero padding in the mean (divides by k²); max_pool2d
pads with −inf; Residual(block, shortcut) = block(x) + shortcut(x).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

ORDERS = ("matmul", "sequential", "reversed", "pairwise", "ascending", "descending", "fma")

# --- walking a network ---------------------------------------------------------------------------


def walk(module, x, leaf, add):
    """Evaluate ``module`` on x: Sequential layers in order, Residual as add(block(x), shortcut(x)),
    every other layer as leaf(layer, x)."""
    structure = getattr(module, "structure", None)
    if structure == "sequential":
        for layer in module.layers:
            x = walk(layer, x, leaf, add)
        return x
    if structure == "residual":
        return add(walk(module.block, x, leaf, add), walk(module.shortcut, x, leaf, add))
    return leaf(module, x)


def _array(layer, key):
    """A layer parameter as a NumPy array (None when absent, e.g. no bias)."""
    value = layer.params.get(key)
    return None if value is None else np.asarray(value.numpy())


def net_dtype(net) -> np.dtype:
    """The dtype of the net's first parameter (float64 for a net without parameters)."""
    params = net.parameters()
    return np.dtype(params[0].numpy().dtype) if params else np.dtype("float64")


# --- shapes shared by the exact and the float passes ----------------------------------------------


def _out_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def windows(x, kh, kw, stride, padding, fill):
    """(P, C, H, W) -> (P, C, Ho, Wo, kh*kw): the entries each kernel position sees, padding = ``fill``.

    Works for float arrays and for object arrays of Fractions alike."""
    P, C, H, W = x.shape
    padded = np.full((P, C, H + 2 * padding, W + 2 * padding), fill, dtype=x.dtype)
    padded[:, :, padding:padding + H, padding:padding + W] = x
    Ho, Wo = _out_size(H, kh, stride, padding), _out_size(W, kw, stride, padding)
    views = [padded[:, :, i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride]
             for i in range(kh) for j in range(kw)]
    return np.stack(views, axis=-1)


def conv_patches(x, kh, kw, stride, padding, zero):
    """(P, C, H, W) -> (P, Ho, Wo, C*kh*kw), entries ordered (c, i, j) like weight.reshape(O, -1)."""
    stacked = windows(x, kh, kw, stride, padding, zero)             # (P, C, Ho, Wo, kh*kw)
    P, C, Ho, Wo, K = stacked.shape
    return stacked.transpose(0, 2, 3, 1, 4).reshape(P, Ho, Wo, C * K)


def channel_shape(x_ndim, channels):
    """Shape a per-channel constant takes to broadcast over (P, *features), as refcert's normalize."""
    feature_ndim = x_ndim - 1
    return (channels,) + (1,) * (feature_ndim - 1) if channels > 1 else (1,)


# --- exact arithmetic -----------------------------------------------------------------------------


def to_fractions(array) -> np.ndarray:
    """A float array (any float dtype) as an object array of exact Fractions; refuses NaN and inf."""
    values = np.asarray(array, dtype=np.float64)   # exact: float32 ⊂ float64
    if not np.all(np.isfinite(values)):
        raise ValueError("cannot read NaN or infinity as a rational")
    out = np.empty(values.shape, dtype=object)
    out.reshape(-1)[:] = [Fraction(v) for v in values.reshape(-1).tolist()]
    return out


def object_array(values, shape) -> np.ndarray:
    """An object array of ``shape`` filled from the flat sequence ``values``."""
    out = np.empty(int(np.prod(shape, dtype=np.int64)), dtype=object)
    out[:] = list(values)
    return out.reshape(shape)


class Interval:
    """Elementwise enclosure lo ≤ value ≤ hi; lo and hi are object arrays of Fractions, and ``lo is hi``
    while every value is known exactly (piecewise-linear nets)."""

    def __init__(self, lo, hi=None):
        self.lo = lo
        self.hi = lo if hi is None else hi

    @property
    def exact(self) -> bool:
        return self.lo is self.hi

    @property
    def shape(self):
        return self.lo.shape

    def map(self, fn):
        """Apply a monotone increasing fn (reshape, relu, pooling, ...) to both ends."""
        lo = fn(self.lo)
        return Interval(lo) if self.exact else Interval(lo, fn(self.hi))

    def affine(self, apply, weight, bias):
        """apply(v, weight) + bias for v in the enclosure: weight's sign picks which end each term takes."""
        if self.exact:
            return Interval(_plus(apply(self.lo, weight), bias))
        positive = np.where(weight > 0, weight, Fraction(0))
        negative = np.where(weight < 0, weight, Fraction(0))
        lo = apply(self.lo, positive) + apply(self.hi, negative)
        hi = apply(self.hi, positive) + apply(self.lo, negative)
        return Interval(_plus(lo, bias), _plus(hi, bias))

    def reshape(self, shape):
        return self.map(lambda v: v.reshape(shape))

    def __add__(self, other):
        if self.exact and other.exact:
            return Interval(self.lo + other.lo)
        return Interval(self.lo + other.lo, self.hi + other.hi)


def _plus(value, bias):
    return value if bias is None else value + bias


# sigmoid and tanh: rigorous enclosures from mpmath's interval arithmetic
ENCLOSURE_BITS = 300
_CUTOFF = 1400                      # |x| beyond this: σ(x) or 1 − σ(x) < e^-1400 < 2^-2000
_TINY = Fraction(1, 2**2000)
_interval_context = None


def _iv():
    """A private mpmath interval context at ENCLOSURE_BITS (mpmath.iv's precision is global state)."""
    global _interval_context
    if _interval_context is None:
        from mpmath.ctx_iv import MPIntervalContext
        _interval_context = MPIntervalContext()
        _interval_context.prec = ENCLOSURE_BITS
    return _interval_context


def _mpf_fraction(mpf_tuple) -> Fraction:
    """An mpmath mpf value (sign, mantissa, exponent, bitcount) as an exact Fraction (finite only)."""
    sign, man, exp, bc = mpf_tuple
    if man == 0:
        if bc != 0 or exp != 0:
            raise ValueError(f"not a finite number: {mpf_tuple}")
        return Fraction(0)
    value = Fraction(int(man)) * Fraction(2) ** int(exp)   # int(): mpmath may hold gmpy2 integers
    return -value if sign else value


def _enclosure(value) -> tuple[Fraction, Fraction]:
    """An mpmath interval as a pair of Fractions."""
    lo, hi = value._mpi_
    return _mpf_fraction(lo), _mpf_fraction(hi)


def sigmoid_enclosure(q: Fraction) -> tuple[Fraction, Fraction]:
    """(lo, hi) with lo ≤ 1 / (1 + e^-q) ≤ hi, hi − lo ≈ 2^-290 relative (absolute 2^-2000 when saturated)."""
    if q < -_CUTOFF:
        return Fraction(0), _TINY
    if q > _CUTOFF:
        return 1 - _TINY, Fraction(1)
    ctx = _iv()
    x = ctx.mpf(q.numerator) / q.denominator
    return _enclosure(1 / (1 + ctx.exp(-x)))


def tanh_enclosure(q: Fraction) -> tuple[Fraction, Fraction]:
    """(lo, hi) with lo ≤ tanh(q) ≤ hi, as (1 − e^-2|q|) / (1 + e^-2|q|) with the sign of q."""
    if q < 0:
        lo, hi = tanh_enclosure(-q)
        return -hi, -lo
    if q > _CUTOFF:
        return 1 - _TINY, Fraction(1)
    ctx = _iv()
    e = ctx.exp(-2 * (ctx.mpf(q.numerator) / q.denominator))
    return _enclosure((1 - e) / (1 + e))


def _monotone(enclosure):
    """The exact transformer of a monotone increasing function given by its enclosure function."""
    def apply(x: Interval) -> Interval:
        ends = [enclosure(v) for v in x.lo.reshape(-1)]
        lo = object_array((e[0] for e in ends), x.shape)
        if x.exact:
            return Interval(lo, object_array((e[1] for e in ends), x.shape))
        return Interval(lo, object_array((enclosure(v)[1] for v in x.hi.reshape(-1)), x.shape))
    return apply


def _exact_conv(x: Interval, layer) -> Interval:
    weight, bias = _array(layer, "weight"), _array(layer, "bias")
    O, C, kh, kw = weight.shape
    stride, padding = layer.params["stride"], layer.params["padding"]
    patches = x.map(lambda v: conv_patches(v, kh, kw, stride, padding, Fraction(0)))
    y = patches.affine(lambda v, w: v @ w.T, to_fractions(weight.reshape(O, -1)),
                       None if bias is None else to_fractions(bias))            # (P, Ho, Wo, O)
    return y.map(lambda v: v.transpose(0, 3, 1, 2))


def _exact_normalize(x: Interval, layer) -> Interval:
    mean, std = _array(layer, "mean"), _array(layer, "std")
    shape = channel_shape(len(x.shape), mean.shape[0])
    mean, std = to_fractions(mean).reshape(shape), to_fractions(std).reshape(shape)
    return x.map(lambda v: (v - mean) / std)   # std > 0: increasing


def batchnorm_constants(layer, ndim):
    """(scale, shift) of an evaluation-mode ``nn.BatchNorm`` as float arrays shaped to broadcast over
    (P, *features) of ``ndim`` axes: the constants of its op, as refcert computes them."""
    if getattr(layer, "training", False):
        raise NotImplementedError("the reference evaluators model BatchNorm in evaluation mode only")
    q = layer.arguments(None)
    scale, shift = (np.asarray(q[key].numpy()) for key in ("scale", "shift"))
    shape = channel_shape(ndim, scale.shape[0])
    return scale.reshape(shape), shift.reshape(shape)


def _exact_batchnorm(x: Interval, layer) -> Interval:
    scale, shift = batchnorm_constants(layer, len(x.shape))
    return x.affine(lambda v, s: v * s, to_fractions(scale), to_fractions(shift))   # the sign of s picks the end


def _exact_pool(x: Interval, layer, kind) -> Interval:
    k, stride, padding = (layer.params[key] for key in ("kernel_size", "stride", "padding"))
    if kind == "max":
        return x.map(lambda v: windows(v, k, k, stride, padding, float("-inf")).max(axis=-1))
    return x.map(lambda v: windows(v, k, k, stride, padding, Fraction(0)).sum(axis=-1) / Fraction(k * k))


def _permuted(v, layer):
    """nn.Permute on an array (batch first): flat feature j of the output is flat feature index[j]."""
    index, shape = layer.params["index"], layer.params["shape"]
    return v.reshape(v.shape[0], -1)[:, index].reshape((v.shape[0],) + tuple(shape))


def _exact_leaf(layer, x: Interval) -> Interval:
    op = layer.op
    if op == "linear":
        weight, bias = _array(layer, "weight"), _array(layer, "bias")
        return x.affine(lambda v, w: v @ w.T, to_fractions(weight), None if bias is None else to_fractions(bias))
    if op == "conv2d":
        return _exact_conv(x, layer)
    if op == "normalize":
        return _exact_normalize(x, layer)
    if op == "batchnorm":
        return _exact_batchnorm(x, layer)
    if op == "flatten":
        return x.reshape((x.shape[0], -1))
    if op == "permute":
        return x.map(lambda v: _permuted(v, layer))
    if op in ("avg_pool2d", "max_pool2d"):
        return _exact_pool(x, layer, op[:3])
    if op == "relu":
        return x.map(lambda v: np.maximum(v, Fraction(0)))
    if op == "sigmoid":
        return _monotone(sigmoid_enclosure)(x)
    if op == "tanh":
        return _monotone(tanh_enclosure)(x)
    raise NotImplementedError(f"exact evaluator: no semantics for layer op {op!r}")


def exact_forward(net, points) -> Interval:
    """The exact outputs of ``net`` at ``points`` (P, *input_shape): floats, or an object array of
    Fractions (real, non-float points).  Returns an Interval (P, *output_shape)."""
    if np.asarray(points).dtype != object:
        points = to_fractions(points)
    return walk(net, Interval(points), _exact_leaf, lambda a, b: a + b)


# --- IEEE-754 evaluation in a chosen summation order -------------------------------------------------


def round_to(q: Fraction, dtype) -> np.floating:
    """q rounded to nearest (ties to even) in ``dtype`` (float32 or float64), correctly: no double rounding."""
    dtype = np.dtype(dtype)
    try:
        nearest64 = float(q)          # int / int: correctly rounded to float64
    except OverflowError:
        return dtype.type(np.inf if q > 0 else -np.inf)
    if dtype == np.float64:
        return np.float64(nearest64)
    with np.errstate(over="ignore"):
        guess = np.float32(nearest64)
    if not np.isfinite(guess):
        return guess
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    candidates = [c for c in candidates if np.isfinite(c)]

    def key(c):
        return abs(Fraction(float(c)) - q), int(np.asarray(c, np.float32).view(np.uint32)) & 1
    return min(candidates, key=key)


def _round_array(values, dtype) -> np.ndarray:
    return np.array([round_to(v, dtype) for v in values.reshape(-1)], dtype=dtype).reshape(values.shape)


def _sequential(terms):
    total = terms[..., 0]
    for k in range(1, terms.shape[-1]):
        total = total + terms[..., k]
    return total


def _pairwise(terms):
    n = terms.shape[-1]
    if n == 1:
        return terms[..., 0]
    return _pairwise(terms[..., :n // 2]) + _pairwise(terms[..., n // 2:])


def sum_terms(terms, order):
    """Sum over the last axis of ``terms`` in its dtype, in ``order`` (any of ORDERS but matmul/fma)."""
    if order in ("sequential", "matmul", "fma"):
        return _sequential(terms)
    if order == "reversed":
        return _sequential(terms[..., ::-1])
    if order == "pairwise":
        return _pairwise(terms)
    if order in ("ascending", "descending"):
        by_size = np.argsort(np.abs(terms), axis=-1, kind="stable")
        if order == "descending":
            by_size = by_size[..., ::-1]
        return _sequential(np.take_along_axis(terms, by_size, axis=-1))
    raise ValueError(f"unknown summation order {order!r}; choose one of {ORDERS}")


def _two_sum(a, b):
    """s = fl(a + b) and the exact error e = a + b − s (Knuth's 2Sum; no overflow assumed)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _two_product(a, b):
    """p = fl(a b) and the exact error a b − p (Dekker/Veltkamp, float64; exact without under/overflow)."""
    p = a * b
    split = 134217729.0 * a, 134217729.0 * b           # 2^27 + 1
    ah, bh = split[0] - (split[0] - a), split[1] - (split[1] - b)
    al, bl = a - ah, b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _round_to_odd_sum(a, b):
    """a + b rounded to odd in float64: fl(a + b) when exact, else whichever neighbour has an odd
    significand (Boldo & Melquiond; rounding it again to nearest in any precision ≤ 51 bits is the
    correct rounding of a + b)."""
    s, e = _two_sum(a, b)
    even = (s.view(np.int64) & 1) == 0
    return np.where((e != 0) & even, np.nextafter(s, np.where(e > 0, np.inf, -np.inf)), s)


def fma(a, b, c):
    """fl(a b + c) rounded once, elementwise, in the dtype of the float arrays a, b, c (float32/float64).

    float32: a b is exact in float64, and round-to-odd in float64 then to float32 rounds correctly.
    float64: Boldo & Melquiond's emulation (IEEE TC 2008, "Emulation of FMA and correctly rounded sums",
    Alg. 5): (uh, ul) = a b exactly, (th, tl) = c + uh exactly, fl(th + RO(tl + ul)); elements where the
    error-free transforms could under- or overflow are redone with Fractions."""
    a, b, c = np.broadcast_arrays(a, b, c)
    dtype = a.dtype
    if dtype == np.float32:
        return _round_to_odd_sum(a.astype(np.float64) * b, c.astype(np.float64)).astype(np.float32)
    uh, ul = _two_product(a, b)
    th, tl = _two_sum(c, uh)
    out = th + _round_to_odd_sum(tl, ul)
    product = np.abs(uh)
    risky = ((product < 2.0**-950) & (a != 0) & (b != 0)) | (np.maximum(np.abs(a), np.abs(b)) > 2.0**990) \
        | (product > 2.0**990) | (np.abs(c) > 2.0**1000) | ~np.isfinite(out)
    for index in zip(*np.nonzero(risky)):
        exact = Fraction(float(a[index])) * Fraction(float(b[index])) + Fraction(float(c[index]))
        out[index] = round_to(exact, dtype)
    return out


def _fma_dot(x, weight, bias):
    """acc = bias (or 0); acc = fma(x_k, w_k, acc) for k = 0, 1, ...: an FMA chain. x (..., K), weight (O, K)."""
    acc = np.zeros(x.shape[:-1] + weight.shape[:1], x.dtype)
    if bias is not None:
        acc = acc + bias
    for k in range(x.shape[-1]):
        acc = fma(x[..., None, k], weight[:, k], acc)
    return acc


def float_dot(x, weight, bias, order):
    """x Wᵀ + b in x's dtype, every output a sum of the products x_k w_k (rounded) and b in ``order``:
    the bias is the last term, except in "reversed" (the bias, then the products from the last one)
    and in the sorted orders (the bias takes its place by magnitude)."""
    dtype = x.dtype
    weight = weight.astype(dtype)
    bias = None if bias is None else bias.astype(dtype)
    if order == "matmul":
        y = np.matmul(x, weight.T)
        return y if bias is None else y + bias
    if order == "fma":
        return _fma_dot(x, weight, bias)
    products = x[..., None, :] * weight                            # (..., O, K), each product rounded
    if bias is None:
        return sum_terms(products, order)
    bias = np.broadcast_to(bias[:, None], products.shape[:-1] + (1,))
    if order == "reversed":
        return _sequential(np.concatenate([bias, products[..., ::-1]], axis=-1))
    return sum_terms(np.concatenate([products, bias], axis=-1), order)


def float_sigmoid(x):
    """1 / (1 + exp(−x)) in x's dtype (0 where exp overflows, which is the correctly rounded limit)."""
    one = x.dtype.type(1)
    with np.errstate(over="ignore"):
        return one / (one + np.exp(-x))


def _float_leaf(order):
    def leaf(layer, x):
        op, dtype = layer.op, x.dtype
        if op == "linear":
            return float_dot(x, _array(layer, "weight"), _array(layer, "bias"), order)
        if op == "conv2d":
            weight = _array(layer, "weight")
            O, C, kh, kw = weight.shape
            patches = conv_patches(x, kh, kw, layer.params["stride"], layer.params["padding"], 0)
            y = float_dot(patches, weight.reshape(O, -1), _array(layer, "bias"), order)
            return y.transpose(0, 3, 1, 2)
        if op == "normalize":
            shape = channel_shape(x.ndim, layer.params["mean"].shape[0])
            mean, std = (_array(layer, key).astype(dtype).reshape(shape) for key in ("mean", "std"))
            return (x - mean) / std
        if op == "batchnorm":
            scale, shift = (c.astype(dtype) for c in batchnorm_constants(layer, x.ndim))
            return fma(x, scale, shift) if order == "fma" else x * scale + shift
        if op == "flatten":
            return x.reshape(x.shape[0], -1)
        if op == "permute":
            return _permuted(x, layer)
        if op in ("avg_pool2d", "max_pool2d"):
            k, stride, padding = (layer.params[key] for key in ("kernel_size", "stride", "padding"))
            if op == "max_pool2d":
                return windows(x, k, k, stride, padding, -np.inf).max(axis=-1)
            return sum_terms(windows(x, k, k, stride, padding, 0), order) / dtype.type(k * k)
        if op == "relu":
            return np.maximum(x, dtype.type(0))
        if op == "sigmoid":
            return float_sigmoid(x)
        if op == "tanh":
            return np.tanh(x)
        raise NotImplementedError(f"float evaluator: no semantics for layer op {op!r}")
    return leaf


def float_forward(net, points, order="matmul"):
    """The network evaluated in the dtype of ``points`` (P, *input_shape) with sums in ``order``."""
    points = np.asarray(points)
    if order not in ORDERS:
        raise ValueError(f"unknown summation order {order!r}; choose one of {ORDERS}")
    with np.errstate(invalid="ignore"):
        return walk(net, points, _float_leaf(order), lambda a, b: a + b)


def refcert_forward(net, points):
    """refcert's own concrete forward pass (the point domain) on ``points``."""
    from refcert.autodiff import Tensor, no_grad
    with no_grad():
        return np.asarray(net(Tensor(np.asarray(points))).numpy())


def onnxruntime_forward(net, points):
    """onnxruntime's CPU evaluation of the exported net in the points' dtype, or None when onnx or
    onnxruntime is not installed or has no kernel for an op in that dtype (e.g. float64 Conv)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        return None
    import refcert
    points = np.asarray(points)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "net.onnx")
        refcert.export_onnx(net, path, input_shape=(1,) + points.shape[1:], dtype=str(points.dtype))
        try:
            session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own NotImplemented for missing kernels
            if "NOT_IMPLEMENTED" in str(err):
                return None
            raise
    return session.run(None, {"input": points})[0]


def float_evaluations(net, points, orders=ORDERS, onnx=True) -> dict:
    """{source name: outputs (P, *output_shape)} for every order, refcert's pass and onnxruntime."""
    dtype = np.asarray(points).dtype
    outputs = {f"{dtype} {order}": float_forward(net, points, order) for order in orders}
    outputs[f"{dtype} refcert"] = refcert_forward(net, points)
    if onnx:
        ort = onnxruntime_forward(net, points)
        if ort is not None:
            outputs[f"{dtype} onnxruntime"] = ort
    return outputs


# --- the input set as exact rationals, and points in it ------------------------------------------


def real_box(lower, upper):
    """from_bounds(lower, upper): the real set [lower, upper] read exactly, as Fraction object arrays."""
    return to_fractions(lower), to_fractions(upper)


def real_ball(x, eps, clip=(0.0, 1.0)):
    """linf_ball(x, eps, clip): {r : |r − x| ≤ eps} ∩ clip in real arithmetic, x and eps read exactly."""
    X = to_fractions(x)
    radius = to_fractions(np.broadcast_to(np.asarray(eps, dtype=np.float64), np.shape(x)))
    lo, hi = X - radius, X + radius
    if clip is not None:
        floor, ceiling = Fraction(float(clip[0])), Fraction(float(clip[1]))
        lo = np.maximum(lo, floor)
        hi = np.minimum(hi, ceiling)
    return lo, hi


def inner_floats(lo, hi, dtype):
    """The smallest float of ``dtype`` ≥ lo and the largest ≤ hi, elementwise (the float part of the set)."""
    up, down = dtype.type(np.inf), dtype.type(-np.inf)
    first = _round_array(lo, dtype)
    first = np.where(to_fractions(first) < lo, np.nextafter(first, up), first)
    last = _round_array(hi, dtype)
    last = np.where(to_fractions(last) > hi, np.nextafter(last, down), last)
    return first, last


def corners(rng, count, a, b, every=16):
    """Corners of the boxes [a, b] (batch, *shape): all of them when there are at most ``every``,
    else ``count`` random ones; (corners, batch, *shape)."""
    dims = int(np.prod(a.shape[1:], dtype=np.int64))
    if 2**dims <= every:
        bits = (np.arange(2**dims)[:, None] >> np.arange(dims)[None, :]) & 1          # (2^d, d)
        pick = np.broadcast_to(bits.reshape((2**dims, 1) + a.shape[1:]).astype(bool), (2**dims,) + a.shape)
    else:
        pick = rng.integers(0, 2, (count,) + a.shape).astype(bool)
    return np.where(pick, b[None], a[None])


def sample_points(lo, hi, dtype, rng, count=16):
    """Points of the real set [lo, hi] (object arrays (batch, *shape)).

    Returns (real, floats).  real (R, batch, *shape), exact rationals: both ends, the corners (all of
    them up to 16, else ``count // 2`` random ones), ``count // 2`` points lo + (hi − lo)·k/7 with random
    k in 1..6 per coordinate, the midpoint.  floats (F, batch, *shape) in ``dtype``: the floats nearest
    the ends inside the set, their corners (as above), random floats between them, the float nearest
    the midpoint."""
    dtype = np.dtype(dtype)
    sevenths = rng.integers(1, 7, (count // 2,) + lo.shape)
    interior = lo[None] + (hi - lo)[None] * (sevenths / np.array(Fraction(7), dtype=object))
    real = np.concatenate([lo[None], hi[None], corners(rng, count // 2, lo, hi), interior,
                           ((lo + hi) / 2)[None]], axis=0)
    first, last = inner_floats(lo, hi, dtype)
    if not np.all(first <= last):
        raise ValueError("the input set contains no float of the dtype in some coordinate")
    u = rng.uniform(size=(count // 2,) + lo.shape)
    between = np.clip((first + (last.astype(np.float64) - first) * u).astype(dtype), first, last)
    middle = np.clip(_round_array((lo + hi) / 2, dtype), first, last)
    floats = np.concatenate([first[None], last[None], corners(rng, count // 2, first, last), between,
                             middle[None]], axis=0).astype(dtype)
    return real, floats


def gather_evidence(net, lo, hi, rng, count=16, labels=None, orders=ORDERS, onnx=True) -> "Evidence":
    """Sample points of the real set [lo, hi] (batch, *shape), evaluate each exactly once (floats and
    rationals) and in every float evaluation (float points, in the net's dtype): the Evidence to check
    any number of domains' bounds of that set against."""
    dtype = net_dtype(net)
    real, floats = sample_points(lo, hi, dtype, rng, count)
    points = np.concatenate([real, to_fractions(floats)])
    P, batch = points.shape[:2]
    exact = exact_forward(net, points.reshape((P * batch,) + points.shape[2:]))
    exact = exact.reshape((P, batch) + exact.shape[1:])
    F = floats.shape[0]
    with quiet_floats():
        outputs = float_evaluations(net, floats.reshape((F * batch,) + floats.shape[2:]), orders, onnx)
    outputs = {source: y.reshape((F, batch) + y.shape[1:]) for source, y in outputs.items()}
    return Evidence(exact, outputs, labels)


# --- checking bounds against the evidence ----------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One value outside one domain's bounds."""
    domain: str
    quantity: str      # "output" or "margin"
    source: str        # "exact" or the float evaluation, e.g. "float32 pairwise"
    point: int         # index of the sampled point
    index: tuple       # (batch item, output or margin index ...)
    side: str          # "lower" or "upper"
    bound: float
    value: float       # the value (rounded to float64 for display)

    def __str__(self):
        gap = (self.bound - self.value) if self.side == "lower" else (self.value - self.bound)
        relation = ">" if self.side == "lower" else "<"
        return (f"{self.domain}: {self.quantity}{list(self.index)} {self.side} bound {self.bound!r} {relation} "
                f"{self.source} value {self.value!r} (by {gap:.3g}) at point {self.point}")


def _down(q) -> np.ndarray:
    """Float64 values ≤ the Fractions of q: nextafter(RN(q), −inf) (RN(q) is within half an ulp)."""
    nearest = np.array([float(v) for v in q.reshape(-1)], dtype=np.float64).reshape(q.shape)
    return np.nextafter(nearest, -np.inf)


def _up(q) -> np.ndarray:
    nearest = np.array([float(v) for v in q.reshape(-1)], dtype=np.float64).reshape(q.shape)
    return np.nextafter(nearest, np.inf)


def _exact_le(bound, value, fast):
    """bound ≤ value for bound (batch, ...) and exact values (P, batch, ...), where fast ≤ value is a
    float64 filter: decided in floats where it suffices, else exactly (NaN bounds fail)."""
    ok = np.array(bound[None] <= fast)
    for index in zip(*np.nonzero(~ok)):
        b = float(bound[index[1:]])
        ok[index] = b == -np.inf or bool(np.isfinite(b) and Fraction(b) <= value[index])
    return ok


def _exact_ge(bound, value, fast):
    """bound ≥ value (see _exact_le); fast ≥ value."""
    ok = np.array(bound[None] >= fast)
    for index in zip(*np.nonzero(~ok)):
        b = float(bound[index[1:]])
        ok[index] = b == np.inf or bool(np.isfinite(b) and Fraction(b) >= value[index])
    return ok


def _float_difference_ge(bound, a, b, fast):
    """bound ≤ a − b exactly, for float64 arrays a, b (P, batch, ...), fast = nextafter(fl(a − b), −inf)."""
    ok = np.array(bound[None] <= fast)
    for index in zip(*np.nonzero(~ok)):
        values = (float(bound[index[1:]]), float(a[index]), float(b[index]))
        ok[index] = bool(np.all(np.isfinite(values)) and
                         Fraction(values[0]) <= Fraction(values[1]) - Fraction(values[2]))
    return ok


def _violations(ok, domain, quantity, source, side, bound, value):
    """Violation records where ``ok`` (P, batch, ...) is False; bound (batch, ...), value (P, batch, ...)."""
    return [Violation(domain, quantity, source, int(index[0]), tuple(int(i) for i in index[1:]), side,
                      float(bound[index[1:]]), float(value[index]))
            for index in zip(*np.nonzero(~ok))]


class Evidence:
    """The exact and float outputs of the sampled points of one element, prepared once for checking
    the bounds of every domain.

    exact: Interval (P, batch, n) of the exact outputs; floats: {source: (F, batch, n)};
    labels: (batch,) ints for the margin check (None: no margins)."""

    def __init__(self, exact: Interval, floats: dict, labels=None):
        self.exact, self.floats = exact, floats
        self.exact_lo_fast, self.exact_hi_fast = _down(exact.lo), _up(exact.hi)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
        self.has_margins = self.labels is not None and exact.shape[-1] > 1
        if self.has_margins:
            self._prepare_margins()

    @property
    def exact_points(self) -> int:
        """Number of exact point evaluations (sampled points × batch items)."""
        return int(np.prod(self.exact.shape[:2]))

    @property
    def float_points(self) -> int:
        """Number of float evaluations (sources × sampled float points × batch items)."""
        return int(sum(np.prod(v.shape[:2]) for v in self.floats.values()))

    def _prepare_margins(self):
        n = self.exact.shape[-1]
        rows = np.stack([np.delete(np.arange(n), t) for t in self.labels])[None]      # (1, batch, n−1)
        label = self.labels[None, :, None]                                              # (1, batch, 1)

        def take(values, index):
            return np.take_along_axis(values, np.broadcast_to(index, values.shape[:2] + index.shape[2:]), -1)
        # the least exact margin y_t − y_j over the enclosure
        self.margin_exact = take(self.exact.lo, label) - take(self.exact.hi, rows)
        self.margin_exact_fast = _down(self.margin_exact)
        self.margin_floats = {}
        for source, y in self.floats.items():
            a, b = take(y, label).astype(np.float64), take(y, rows).astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                a, b = np.broadcast_arrays(a, b)
                self.margin_floats[source] = (a, b, np.nextafter(a - b, -np.inf))

    def violations(self, domain, lower, upper, margin_lower=None) -> list[Violation]:
        """Every sampled value outside [lower, upper] (batch, n) and every margin below margin_lower
        (batch, n−1), with zero tolerance."""
        lower, upper = np.asarray(lower), np.asarray(upper)
        found = []
        found += _violations(_exact_le(lower, self.exact.lo, self.exact_lo_fast), domain, "output", "exact",
                             "lower", lower, self.exact.lo)
        found += _violations(_exact_ge(upper, self.exact.hi, self.exact_hi_fast), domain, "output", "exact",
                             "upper", upper, self.exact.hi)
        for source, y in self.floats.items():
            found += _violations(lower[None] <= y, domain, "output", source, "lower", lower, y)
            found += _violations(upper[None] >= y, domain, "output", source, "upper", upper, y)
        if margin_lower is not None and self.has_margins:
            found += self._margin_violations(domain, np.asarray(margin_lower))
        return found

    def _margin_violations(self, domain, bound):
        found = _violations(_exact_le(bound, self.margin_exact, self.margin_exact_fast), domain, "margin",
                            "exact", "lower", bound, self.margin_exact)
        for source, (a, b, fast) in self.margin_floats.items():
            with np.errstate(invalid="ignore", over="ignore"):
                found += _violations(_float_difference_ge(bound, a, b, fast), domain, "margin", source,
                                     "lower", bound, a - b)
        return found


def summarize(violations, limit=8) -> str:
    """A readable summary: per domain, the count and which evaluations escaped; then the first few."""
    if not violations:
        return "no violations"
    per_domain = {}
    for v in violations:
        sources = per_domain.setdefault(v.domain, {})
        sources[v.source] = sources.get(v.source, 0) + 1
    lines = [f"{len(violations)} violations in {len(per_domain)} domains:"]
    lines += [f"  {domain}: {sum(sources.values())} ({', '.join(sorted(sources))})"
              for domain, sources in per_domain.items()]
    lines += [str(v) for v in violations[:limit]]
    return "\n".join(lines)


@contextlib.contextmanager
def quiet_floats():
    """NumPy floating-point warnings off (overflow to inf, 0·inf) while evaluating adversarial nets."""
    with np.errstate(all="ignore"):
        yield
