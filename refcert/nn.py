"""Layers and networks: each layer is an op name from the shared vocabulary plus its parameters.

``net(x)`` runs ``refcert.interpret.run`` on x, so the same network evaluates concrete inputs and
abstract elements of any domain.  Conventions follow PyTorch: ``Linear.weight`` is (out, in),
``Conv2d.weight`` is (out_channels, in_channels, kh, kw), inputs are NCHW batches, and parameters
start from PyTorch's default uniform initialisation U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
Weights are drawn from NumPy's generator (``seed(s)`` or a layer's ``rng=``) so a seed gives the same
network on every backend; ``dtype`` defaults to float32.
"""
from __future__ import annotations

import numpy as np

from refcert import backends, interpret
from refcert.autodiff import Tensor

_rng = np.random.default_rng(0)


def seed(value: int) -> None:
    """Reset the generator that new layers draw their initial weights from."""
    global _rng
    _rng = np.random.default_rng(value)


def _uniform(shape, bound, rng, dtype):
    rng = _rng if rng is None else rng
    return Tensor(rng.uniform(-bound, bound, size=shape).astype(dtype), requires_grad=True)


class Module:
    """A layer: ``op`` (a name in the domains' tables) and ``params`` (keyword arguments of that op)."""

    op: str | None = None
    structure: str | None = None  # "sequential" | "residual" for the two structural layers

    def __init__(self):
        self.params: dict = {}

    def __call__(self, x):
        return interpret.run([self], x)

    def arguments(self, x) -> dict:
        """The keyword arguments of ``op`` for input ``x`` (a batch or an abstract element): ``params``,
        except for a layer whose op arguments are derived (``BatchNorm``)."""
        return self.params

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable), used by refcert.save."""
        return {}

    def named_parameters(self, prefix: str = "") -> dict[str, Tensor]:
        return {prefix + k: v for k, v in self.params.items() if isinstance(v, Tensor) and v.requires_grad}

    def parameters(self) -> list[Tensor]:
        return list(self.named_parameters().values())

    def astype(self, dtype: str):
        """Convert every parameter to ``dtype`` ('float32' or 'float64') in place; returns self."""
        for key, value in self.params.items():
            if isinstance(value, Tensor):
                self.params[key] = Tensor(value.numpy().astype(dtype), requires_grad=value.requires_grad)
        for child in self.children():
            child.astype(dtype)
        return self

    def children(self) -> list["Module"]:
        return []

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class Linear(Module):
    op = "linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rng=None, dtype="float32"):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        bound = 1.0 / np.sqrt(in_features)
        self.params = {"weight": _uniform((out_features, in_features), bound, rng, dtype),
                       "bias": _uniform((out_features,), bound, rng, dtype) if bias else None}

    weight = property(lambda self: self.params["weight"])
    bias = property(lambda self: self.params["bias"])

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.params["bias"] is not None}


class Conv2d(Module):
    op = "conv2d"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True, *, rng=None, dtype="float32"):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = int(in_channels), int(out_channels), int(kernel_size)
        bound = 1.0 / np.sqrt(in_channels * kernel_size * kernel_size)
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.params = {"weight": _uniform(shape, bound, rng, dtype),
                       "bias": _uniform((out_channels,), bound, rng, dtype) if bias else None,
                       "stride": int(stride), "padding": int(padding)}

    weight = property(lambda self: self.params["weight"])
    bias = property(lambda self: self.params["bias"])

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.params["stride"],
                "padding": self.params["padding"], "bias": self.params["bias"] is not None}


class Normalize(Module):
    """(x - mean) / std per channel (the first feature axis); constants, not trained."""
    op = "normalize"

    def __init__(self, mean, std, *, dtype="float32"):
        super().__init__()
        mean = np.atleast_1d(np.asarray(mean, dtype=dtype))
        std = np.atleast_1d(np.asarray(std, dtype=dtype))
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"Normalize needs mean and std of one shape (channels,), got {mean.shape}, {std.shape}")
        if not np.all(std > 0):
            raise ValueError(f"Normalize needs std > 0, got {std.tolist()}")
        self.params = {"mean": Tensor(mean), "std": Tensor(std)}

    def config(self):
        mean = self.params["mean"].numpy()
        return {"mean": mean.tolist(), "std": self.params["std"].numpy().tolist(), "dtype": str(mean.dtype)}


class BatchNorm(Module):
    """Batch normalisation (Ioffe & Szegedy, ICML'15) per channel (the first feature axis; a flat layer's
    features are its channels).  Its op is the per-channel affine map y = x·scale + shift with
    scale = weight / √(var + eps) and shift = bias − mean·scale (``arguments``), which every domain treats
    like any affine layer: in evaluation mode mean and var are the running statistics, so the layer is
    one fixed affine map, and that map (scale and shift as computed) is what a certificate is about.

    Training mode (``set_training(net, True)``, as ``refcert.train`` does): a call on a concrete batch
    normalises with the batch's own mean and (biased) variance, keeps them for the abstract elements that
    follow (the abstract pass of the same step uses the clean batch's statistics, as Shi et al. (NeurIPS'21,
    Sec. 3.2) and auto_LiRPA do) and moves the running statistics towards them (momentum, PyTorch's
    convention: the running variance takes the unbiased estimate).  ``weight`` and ``bias`` are trained;
    ``running_mean`` and ``running_var`` are saved with them but never receive a gradient.

    Precision casts (``astype``, which certify's and verify's executions in another precision use) round
    the op's own constants, scale and shift, as every other layer's parameters are rounded; recomputing
    them from rounded statistics would be another map (found by an adversarial review: a verdict about
    the float64 map, an execution of a different float32 one).  A cast layer keeps them as ``scale`` and
    ``shift`` parameters (saved with it) until it trains again (``set_training(net, True)`` drops them)."""
    op = "batchnorm"

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1, *, dtype="float32",
                 cast: bool = False):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
            raise ValueError(f"BatchNorm needs an integer number of channels >= 1, got {channels!r}")
        if str(np.dtype(dtype)) not in ("float32", "float64"):
            raise ValueError(f"BatchNorm's dtype must be float32 or float64, got {dtype!r}")
        self.channels, self.eps, self.momentum = int(channels), float(eps), float(momentum)
        if not self.eps > 0 or not 0 <= self.momentum <= 1:
            raise ValueError(f"BatchNorm needs eps > 0 and momentum in [0, 1], got {eps}, {momentum}")
        ones, zeros = np.ones(self.channels, dtype=dtype), np.zeros(self.channels, dtype=dtype)
        self.params = {"weight": Tensor(ones, requires_grad=True), "bias": Tensor(zeros.copy(), requires_grad=True),
                       "running_mean": Tensor(zeros.copy(), requires_grad=True),
                       "running_var": Tensor(ones.copy(), requires_grad=True)}
        if cast:
            self.params.update(scale=Tensor(ones.copy(), requires_grad=True), shift=Tensor(zeros.copy(), requires_grad=True))
        self.training, self.batch_stats = False, None

    def config(self):
        config = {"channels": self.channels, "eps": self.eps, "momentum": self.momentum,
                  "dtype": str(self.params["weight"].numpy().dtype)}
        return {**config, "cast": True} if "scale" in self.params else config

    def astype(self, dtype: str):
        """Convert in place; in evaluation mode the op's scale and shift are rounded to ``dtype`` (class
        docstring), not recomputed from the rounded statistics."""
        constants = None if self.training else self.constants()
        super().astype(dtype)
        if constants is not None:
            self.params.update({key: Tensor(value.astype(dtype), requires_grad=True) for key, value in constants.items()})
        return self

    def constants(self) -> dict:
        """The evaluation-mode scale and shift as arrays, without NumPy's warnings for a bad variance
        (``check_finite`` names those)."""
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return {key: value.numpy() for key, value in self.arguments(None).items()}

    def _statistics(self, x):
        """(mean, var) to normalise ``x`` with: running statistics in evaluation mode; in training mode the
        batch's own for a concrete ``x`` (updating the running ones), the last batch's for an abstract one."""
        from refcert import autodiff as ad
        if not self.training:
            return ad.constant(self.params["running_mean"].value), ad.constant(self.params["running_var"].value)
        if hasattr(x, "domain"):
            if self.batch_stats is None:
                raise RuntimeError("BatchNorm in training mode: run the clean batch through the network before "
                                   "an abstract element, so the element can use the batch's statistics")
            return self.batch_stats
        x = ad.as_tensor(x)
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise ValueError(f"BatchNorm({self.channels}) takes (batch, {self.channels}, ...) inputs, got {tuple(x.shape)}")
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, self.channels) + (1,) * (x.ndim - 2)
        mean = ad.mean(x, axis=axes)
        centred = x - ad.reshape(mean, shape=shape)
        var = ad.mean(centred * centred, axis=axes)
        count = int(np.prod(x.shape)) // self.channels
        m, xp = self.momentum, backends.current().xp
        for key, batch in (("running_mean", mean.value), ("running_var", var.value * (count / max(count - 1, 1)))):
            old = self.params[key].value
            self.params[key].value = xp.astype((1 - m) * old + m * batch, old.dtype)
        self.batch_stats = (mean, var)
        return self.batch_stats

    def arguments(self, x) -> dict:
        """{"scale", "shift"} of the affine map y = x·scale + shift (per channel) for input ``x``."""
        from refcert import autodiff as ad
        if not self.training and "scale" in self.params:  # a cast layer: its rounded constants
            return {key: ad.constant(self.params[key].value) for key in ("scale", "shift")}
        mean, var = self._statistics(x)
        scale = self.params["weight"] / ad.sqrt(var + self.eps)
        return {"scale": scale, "shift": self.params["bias"] - mean * scale}


def set_training(net: Module, training: bool = True) -> Module:
    """Put every ``BatchNorm`` of ``net`` in training (True) or evaluation (False) mode; returns net."""
    for _, module in modules(net):
        if isinstance(module, BatchNorm):
            module.training, module.batch_stats = bool(training), None
            if training:  # the statistics will move: a cast layer's rounded constants no longer apply
                module.params.pop("scale", None)
                module.params.pop("shift", None)
    return net


class _Parameterless(Module):
    def __init__(self):
        super().__init__()


class ReLU(_Parameterless):
    op = "relu"


class Sigmoid(_Parameterless):
    op = "sigmoid"


class Tanh(_Parameterless):
    op = "tanh"


class Flatten(_Parameterless):
    """Flatten every axis after the batch axis."""
    op = "flatten"


class Permute(Module):
    """Rearrange the features: flat feature j of the output is flat feature ``index[j]`` of the input
    (after the batch axis, C order), shaped as ``shape``.  The input must have features of shape
    ``in_shape`` exactly (anything else is refused, so an NHWC net never silently takes NCHW images).
    ``index`` must be a permutation, so the layer is exact in every domain.
    ``Permute.transpose(in_shape, axes)`` moves the feature axes like ``numpy.transpose`` (NHWC input to
    NCHW: ``Permute.transpose((H, W, C), (2, 0, 1))``); an ONNX model whose input is transposed before its
    first convolution starts with one."""
    op = "permute"

    def __init__(self, index, shape, in_shape):
        super().__init__()
        index = np.asarray(index)
        shape, in_shape = (tuple(int(s) for s in np.atleast_1d(s)) for s in (shape, in_shape))
        if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer) and index.size:
            raise ValueError(f"Permute needs a 1-D integer index, got shape {index.shape} dtype {index.dtype}")
        index = index.astype(np.int64)
        if not np.array_equal(np.sort(index), np.arange(index.size)):
            raise ValueError(f"Permute's index must be a permutation of 0..{index.size - 1}")
        for name, value in (("shape", shape), ("in_shape", in_shape)):
            if int(np.prod(value)) != index.size or any(s < 1 for s in value):
                raise ValueError(f"Permute's {name} {value} does not hold its {index.size} features")
        self.params = {"index": index, "shape": shape, "in_shape": in_shape}

    @classmethod
    def transpose(cls, in_shape, axes) -> "Permute":
        moved = np.transpose(np.arange(int(np.prod(in_shape))).reshape(tuple(in_shape)), tuple(axes))
        return cls(moved.reshape(-1), moved.shape, in_shape)

    def config(self):
        return {"index": self.params["index"].tolist(), "shape": list(self.params["shape"]),
                "in_shape": list(self.params["in_shape"])}

    def __repr__(self):
        return f"Permute(features {self.params['in_shape']} to {self.params['shape']})"


class _Pool(Module):
    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0):
        super().__init__()
        self.params = {"kernel_size": int(kernel_size),
                       "stride": int(kernel_size if stride is None else stride), "padding": int(padding)}

    def config(self):
        return dict(self.params)


class AvgPool2d(_Pool):
    op = "avg_pool2d"


class MaxPool2d(_Pool):
    op = "max_pool2d"


class Sequential(Module):
    structure = "sequential"

    def __init__(self, *layers: Module):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for layer in layers:
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential takes layers, got {type(layer).__name__}")
        self.layers = list(layers)

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, index):
        return Sequential(*self.layers[index]) if isinstance(index, slice) else self.layers[index]

    def children(self):
        return list(self.layers)

    def named_parameters(self, prefix: str = "") -> dict[str, Tensor]:
        named = {}
        for i, layer in enumerate(self.layers):
            named.update(layer.named_parameters(f"{prefix}{i}."))
        return named

    def __repr__(self):
        inner = "\n".join("  " + repr(layer).replace("\n", "\n  ") for layer in self.layers)
        return f"Sequential(\n{inner}\n)"


class Residual(Module):
    """y = block(x) + shortcut(x); the shortcut defaults to the identity."""
    structure = "residual"

    def __init__(self, block: Module, shortcut: Module | None = None):
        super().__init__()
        self.block = block if isinstance(block, Sequential) else Sequential(block)
        shortcut = Sequential() if shortcut is None else shortcut
        self.shortcut = shortcut if isinstance(shortcut, Sequential) else Sequential(shortcut)

    def children(self):
        return [self.block, self.shortcut]

    def named_parameters(self, prefix: str = "") -> dict[str, Tensor]:
        return {**self.block.named_parameters(prefix + "block."),
                **self.shortcut.named_parameters(prefix + "shortcut.")}

    def __repr__(self):
        return f"Residual(block={self.block!r}, shortcut={self.shortcut!r})"


def modules(net):
    """(prefix, module) for ``net`` and every layer in it, depth first; prefixes as '1.' or '2.0.'."""
    stack = [(net, "")]
    while stack:
        module, prefix = stack.pop(0)
        yield prefix, module
        stack[:0] = [(child, f"{prefix}{i}.") for i, child in enumerate(module.children())]


def tensors(net):
    """(name, module, array) for every Tensor constant of the network, depth first, e.g. '1.Linear.weight';
    a batch normalisation's derived scale and shift too (the op's own constants)."""
    for prefix, module in modules(net):
        for key, value in module.params.items():
            if isinstance(value, Tensor):
                yield f"{prefix}{type(module).__name__}.{key}", module, value.numpy()
        if isinstance(module, BatchNorm) and not module.training and "scale" not in module.params:
            for key, value in module.constants().items():
                yield f"{prefix}{type(module).__name__}.{key}", module, value


def check_evaluation_mode(net) -> None:
    """Refuse a network with a ``BatchNorm`` in training mode: there each concrete call is a training batch
    (its own statistics; the running ones move), so no fixed function is certified or exported."""
    for prefix, module in modules(net):
        if isinstance(module, BatchNorm) and module.training:
            raise ValueError(f"layer {prefix}BatchNorm is in training mode (each call would use its own batch "
                             f"statistics): call refcert.nn.set_training(net, False) first")


def check_finite(net) -> None:
    """Refuse a network that no certificate can be about: a NaN or infinite weight, bias or normalisation
    constant, a normalisation std that is not > 0, a negative batch-norm running variance, or a batch
    normalisation in training mode.  Raises ValueError naming the layer and parameter."""
    check_evaluation_mode(net)
    for name, module, array in tensors(net):
        if name.endswith("BatchNorm.running_var") and np.any(array < 0):
            raise ValueError(f"layer parameter {name} has negative values (down to {array.min():.3g}); "
                             f"a variance must be >= 0")
        bad = ~np.isfinite(array)
        if bad.any():
            raise ValueError(f"layer parameter {name} has {int(bad.sum())} NaN or infinite value(s) of {array.size}; "
                             f"weights, biases and normalisation constants must be finite")
        if module.op == "normalize" and name.endswith(".std") and not np.all(array > 0):
            raise ValueError(f"layer {name}: Normalize needs std > 0, got {array.tolist()}")


def check_range(net, execution) -> None:
    """A network whose parameters, rounded to the execution precision, would overflow or underflow (the
    floating-point error model assumes neither, proofs/floating_point.md §2) is refused for that precision."""
    if execution not in ("float32", "float64"):
        return
    info = np.finfo(execution)
    for name, _, array in tensors(net):
        a = np.abs(array.astype(np.float64))
        if np.any(a > info.max):
            raise ValueError(f"parameter {name} has values up to {a.max():.3g}, beyond {execution}'s range: "
                             f"choose execution='float64' (on the command line: --execution float64)")
        if np.any((a > 0) & (a < info.tiny)):
            raise ValueError(f"parameter {name} has non-zero values below {execution}'s smallest normal "
                             f"number ({info.tiny:.3g}): choose execution='float64' "
                             f"(on the command line: --execution float64)")


def parameter_dtype(net) -> str | None:
    """The dtype of the network's first parameter (its precision), or None for a network without any."""
    return next((str(array.dtype) for _, _, array in tensors(net)), None)


#: layer classes by name, for refcert.save / refcert.load
LAYER_TYPES = {cls.__name__: cls for cls in (Linear, Conv2d, Normalize, BatchNorm, ReLU, Sigmoid, Tanh, Flatten, Permute,
                                             AvgPool2d, MaxPool2d, Sequential, Residual)}
