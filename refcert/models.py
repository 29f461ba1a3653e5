"""The model zoo: DiffAI's benchmark architectures (Mirman, Gehr & Vechev, ICML'18, Sec. 6) and small nets.

``get(name, dataset)`` builds a freshly initialised network for 'mnist' / 'fashion-mnist' (1×28×28)
or 'cifar10' (3×32×32) with the dataset's normalisation as its first layer (REFERENCES.md), so
networks take pixels in [0, 1] and certificates talk about pixel-space balls.  ``names()`` lists them.

- ``ffnn``: 5 fully connected layers of 100 ReLUs (DiffAI's FFNN);
- ``convsmall``: conv(16, k4, s2) conv(32, k4, s2) FC100;  ``convmed``: the same with padding 1;
- ``convbig``: conv(32,3,1) conv(32,4,2) conv(64,3,1) conv(64,4,2), padding 1, FC512, FC512;
- ``skipnet``: a small residual net (conv16, one residual block of two 3×3 conv16, conv32 s2, FC100);
- ``ffnn-small`` (2×100) and ``convtiny`` (conv(8, k4, s2), FC50): quick to train and certify, for demos.

Every name with ``-bn`` appended (``convsmall-bn``) is the same network with batch normalisation
(``nn.BatchNorm``) between each convolution or hidden fully connected layer and its ReLU (not inside
residual blocks), as Shi et al. (NeurIPS'21, Sec. 3.2) add it for certified training.

The generative-specification models (issue 7, ``refcert.generative``) are re-exported here:
``autoencoder(latent_dim, hidden)`` → (encoder, decoder with a ReLU-only hard-sigmoid head, so the
decoder stays piecewise linear for ExactLine), ``mlp_classifier`` (784-hidden-10), ``compose(decoder,
classifier)`` (one network from latent code to logits) and ``flip_horizontal`` (image pairs for paths).
"""
from __future__ import annotations

import numpy as np

from refcert import nn
from refcert.generative import autoencoder, compose, flip_horizontal  # noqa: F401  (re-exported, see above)
from refcert.generative import classifier as mlp_classifier  # noqa: F401

#: dataset -> (input shape (C, H, W), mean, std, classes)
DATASETS = {
    "mnist": ((1, 28, 28), (0.1307,), (0.3081,), 10),
    "mnist-mini": ((1, 28, 28), (0.1307,), (0.3081,), 10),
    "fashion-mnist": ((1, 28, 28), (0.1307,), (0.3081,), 10),  # DiffAI uses MNIST's statistics for it too
    "cifar10": ((3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 10),
}


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class _Builder:
    """Tracks the feature shape while layers are appended, so FC sizes are computed, not hard-coded."""

    def __init__(self, dataset: str, rng, dtype: str, batchnorm: bool = False):
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r} for a model; choose one of {sorted(DATASETS)}")
        self.shape, mean, std, self.classes = DATASETS[dataset]
        self.rng, self.dtype, self.batchnorm = rng, dtype, batchnorm
        self.layers = [nn.Normalize(mean, std, dtype=dtype)]

    def conv(self, channels: int, kernel: int, stride: int, padding: int, relu: bool = True):
        c, h, w = self.shape
        layer = nn.Conv2d(c, channels, kernel, stride, padding, rng=self.rng, dtype=self.dtype)
        self.shape = (channels, _conv_out(h, kernel, stride, padding), _conv_out(w, kernel, stride, padding))
        return self._add(layer, relu)

    def fc(self, width: int, relu: bool = True):
        if len(self.shape) > 1:
            self.layers.append(nn.Flatten())
            self.shape = (int(np.prod(self.shape)),)
        layer = nn.Linear(self.shape[0], width, rng=self.rng, dtype=self.dtype)
        self.shape = (width,)
        return self._add(layer, relu)

    def _add(self, layer, relu: bool):
        self.layers.append(layer)
        if relu and self.batchnorm:
            self.layers.append(nn.BatchNorm(self.shape[0], dtype=self.dtype))
        if relu:
            self.layers.append(nn.ReLU())
        return self

    def residual(self, kernel: int = 3):
        """y = relu(x + conv(relu(conv(x)))), both convs keeping the shape (stride 1, 'same' padding)."""
        c = self.shape[0]
        pad = kernel // 2
        block = nn.Sequential(nn.Conv2d(c, c, kernel, 1, pad, rng=self.rng, dtype=self.dtype), nn.ReLU(),
                              nn.Conv2d(c, c, kernel, 1, pad, rng=self.rng, dtype=self.dtype))
        self.layers += [nn.Residual(block), nn.ReLU()]
        return self

    def logits(self) -> nn.Sequential:
        self.fc(self.classes, relu=False)
        return nn.Sequential(*self.layers)


def _ffnn(b, widths):
    for width in widths:
        b.fc(width)
    return b.logits()


ARCHITECTURES = {
    "ffnn": lambda b: _ffnn(b, [100] * 5),
    "ffnn-small": lambda b: _ffnn(b, [100, 100]),
    "convtiny": lambda b: b.conv(8, 4, 2, 0).fc(50).logits(),
    "convsmall": lambda b: b.conv(16, 4, 2, 0).conv(32, 4, 2, 0).fc(100).logits(),
    "convmed": lambda b: b.conv(16, 4, 2, 1).conv(32, 4, 2, 1).fc(100).logits(),
    "convbig": lambda b: (b.conv(32, 3, 1, 1).conv(32, 4, 2, 1).conv(64, 3, 1, 1).conv(64, 4, 2, 1)
                          .fc(512).fc(512).logits()),
    "skipnet": lambda b: b.conv(16, 3, 1, 1).residual().conv(32, 4, 2, 1).fc(100).logits(),
}


def names() -> list[str]:
    return list(ARCHITECTURES) + [f"{name}-bn" for name in ARCHITECTURES]


def input_shape(dataset: str) -> tuple[int, int, int]:
    """(C, H, W) of the dataset's images."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[dataset][0]


def get(name: str, dataset: str = "mnist", *, seed: int | None = None, dtype: str = "float32",
        init: str = "default") -> nn.Sequential:
    """A new ``name`` network for ``dataset``; ``seed`` makes its initial weights reproducible.  ``init``:
    "default" (PyTorch's uniform ±1/√fan-in) or "ibp" (``ibp_init``)."""
    base = name[:-len("-bn")] if name.endswith("-bn") else name
    if base not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; choose one of {names()}")
    if init not in INITS:
        raise ValueError(f"unknown initialisation {init!r}; choose one of {INITS}")
    rng = np.random.default_rng(seed) if seed is not None else None
    net = ARCHITECTURES[base](_Builder(dataset, rng, dtype, batchnorm=base != name))
    return ibp_init(net, np.random.default_rng(seed)) if init == "ibp" else net


INITS = ("default", "ibp")


def ibp_init(net, rng) -> nn.Sequential:
    """Shi et al., NeurIPS'21 ("Fast certified robust training with short warmup", Sec. 3.1): weights drawn
    from N(0, σ²) with σ = √(2π)/fan-in for every linear and convolutional layer, biases 0, so that the
    expected width of interval bounds stays the same from layer to layer at initialisation (instead of
    growing with depth).  In place; returns the net."""
    for layer in _affine_layers(net):
        weight = layer.params["weight"]
        fan_in = int(np.prod(weight.shape[1:]))
        sigma = np.sqrt(2 * np.pi) / fan_in
        weight.value = rng.normal(0.0, sigma, weight.shape).astype(weight.value.dtype)
        if layer.params.get("bias") is not None:
            layer.params["bias"].value = layer.params["bias"].value * 0
    return net


def _affine_layers(module):
    """The linear and convolutional layers of ``module``, nested Sequentials and Residual blocks included."""
    structure = getattr(module, "structure", None)
    if structure == "sequential":
        for layer in module.layers:
            yield from _affine_layers(layer)
    elif structure == "residual":
        yield from _affine_layers(module.block)
        if module.shortcut is not None:
            yield from _affine_layers(module.shortcut)
    elif getattr(module, "op", None) in ("linear", "conv2d"):
        yield module
