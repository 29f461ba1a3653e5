"""The concrete domain: a batch of points, i.e. ordinary evaluation of a network.

These functions are also the affine building blocks the abstract domains reuse: a zonotope moves
its center and generators with them, Box its center.  Every function takes and returns Tensors
whose first axis is the batch; ``bias=None`` means an affine map without its constant part.
"""
from __future__ import annotations

from refcert import autodiff as ad
from refcert.autodiff import Tensor

NAME = "point"


def linear(x: Tensor, *, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (batch, ..., in) -> x Wᵀ + b, (batch, ..., out).

    ``weight`` is (out, in), shared by the batch, or (batch, out, in), one map per input (how a
    specification C y with per-input labels is applied); ``bias`` is then (out,) or (batch, out).
    """
    if weight.ndim == 3:
        lead = x.shape[1:-1]
        flat = ad.reshape(x, shape=(x.shape[0], -1, x.shape[-1]))
        y = ad.matmul(flat, ad.transpose(weight, axes=(0, 2, 1)))
        y = ad.reshape(y, shape=(x.shape[0],) + lead + (weight.shape[1],))
        if bias is not None:
            y = y + ad.reshape(bias, shape=(x.shape[0],) + (1,) * len(lead) + (weight.shape[1],))
        return y
    y = ad.matmul(x, weight.T)
    return y if bias is None else y + bias


def conv2d(x: Tensor, *, weight: Tensor, bias: Tensor | None, stride: int, padding: int) -> Tensor:
    """x (B, C, H, W) -> (B, O, Ho, Wo); extra leading axes are folded into the batch."""
    lead = x.shape[:-3]
    x4 = ad.reshape(x, shape=(-1,) + x.shape[-3:]) if len(lead) != 1 else x
    y = ad.conv2d(x4, weight, stride=stride, padding=padding)
    if bias is not None:
        y = y + ad.reshape(bias, shape=(1, -1, 1, 1))
    return ad.reshape(y, shape=lead + y.shape[1:]) if len(lead) != 1 else y


def _channel_shape(x: Tensor, channels: int, feature_ndim: int) -> tuple:
    """(C, 1, 1) for image features, (C,) for flat ones, so per-channel constants broadcast."""
    return (channels,) + (1,) * (feature_ndim - 1) if channels > 1 else (1,)


def normalize(x: Tensor, *, mean: Tensor, std: Tensor, feature_ndim: int | None = None) -> Tensor:
    """(x - mean) / std per channel; channel is the first feature axis (NCHW)."""
    feature_ndim = x.ndim - 1 if feature_ndim is None else feature_ndim
    shape = _channel_shape(x, mean.shape[0], feature_ndim)
    return (x - ad.reshape(mean, shape=shape)) / ad.reshape(std, shape=shape)


def scale_by_std(x: Tensor, *, std: Tensor, feature_ndim: int) -> Tensor:
    """The linear part of normalize (no mean shift): x / std."""
    return x / ad.reshape(std, shape=_channel_shape(x, std.shape[0], feature_ndim))


def batchnorm(x: Tensor, *, scale: Tensor, shift: Tensor, feature_ndim: int | None = None) -> Tensor:
    """Batch normalisation as the affine map it is in evaluation mode (``nn.BatchNorm``): x·scale + shift
    per channel (the first feature axis, as normalize)."""
    feature_ndim = x.ndim - 1 if feature_ndim is None else feature_ndim
    shape = _channel_shape(x, scale.shape[0], feature_ndim)
    return x * ad.reshape(scale, shape=shape) + ad.reshape(shift, shape=shape)


def scale_channels(x: Tensor, *, scale: Tensor, feature_ndim: int) -> Tensor:
    """The linear part of batchnorm (no shift): x·scale per channel."""
    return x * ad.reshape(scale, shape=_channel_shape(x, scale.shape[0], feature_ndim))


def flatten(x: Tensor, *, feature_ndim: int | None = None) -> Tensor:
    """Keep the leading (batch) axes, flatten the last ``feature_ndim`` axes."""
    feature_ndim = x.ndim - 1 if feature_ndim is None else feature_ndim
    lead = x.shape[:x.ndim - feature_ndim]
    return ad.reshape(x, shape=lead + (-1,))


def permute(x: Tensor, *, index, shape, in_shape) -> Tensor:
    """Rearrange the features: x's last axes must be ``in_shape``; flat feature j of the output is flat
    feature ``index[j]`` of the input (``index`` a permutation), shaped as ``shape``; leading axes stay."""
    lead, features = x.shape[:x.ndim - len(in_shape)], x.shape[x.ndim - len(in_shape):]
    if tuple(features) != tuple(in_shape) or x.ndim <= len(in_shape):
        raise ValueError(f"Permute takes features of shape {tuple(in_shape)} after the batch axis; got an "
                         f"input of shape {tuple(x.shape)}")
    return ad.reshape(ad.take_last(ad.reshape(x, shape=lead + (-1,)), index=index), shape=lead + tuple(shape))


def _fold(fn, x: Tensor, **params) -> Tensor:
    lead = x.shape[:-3]
    y = fn(ad.reshape(x, shape=(-1,) + x.shape[-3:]), **params)
    return ad.reshape(y, shape=lead + y.shape[1:])


def avg_pool2d(x: Tensor, *, kernel_size: int, stride: int, padding: int = 0) -> Tensor:
    return _fold(ad.avg_pool2d, x, kernel_size=kernel_size, stride=stride, padding=padding)


def max_pool2d(x: Tensor, *, kernel_size: int, stride: int, padding: int = 0) -> Tensor:
    return _fold(ad.max_pool2d, x, kernel_size=kernel_size, stride=stride, padding=padding)


def add(a: Tensor, b: Tensor, *, origin=None) -> Tensor:
    """The merge of a residual block: a + b."""
    return a + b


def from_bounds(lower, upper) -> Tensor:
    """A point set needs lower == upper; anything wider is not a point and is refused."""
    lower, upper = ad.as_tensor(lower), ad.as_tensor(upper)
    if lower.shape != upper.shape or not bool((lower.numpy() == upper.numpy()).all()):
        raise ValueError("the point domain holds single points: lower and upper must be equal "
                         "(use box, deepzono or deeppoly for sets)")
    return lower


TRANSFORMERS = {
    "linear": linear, "conv2d": conv2d, "normalize": normalize, "batchnorm": batchnorm, "flatten": flatten, "permute": permute,
    "avg_pool2d": avg_pool2d, "max_pool2d": max_pool2d,
    "relu": lambda x: ad.relu(x), "sigmoid": lambda x: ad.sigmoid(x), "tanh": lambda x: ad.tanh(x),
    "add": add,
}
