"""A small MNIST autoencoder whose decoder is piecewise linear, for generative (interpolative) specifications.

Mirman, Gehr, Vechev, "Robustness certification of generative models" (PLDI'21, Sec. 5): encode two
images, walk the segment z(t) = z_a + t (z_b − z_a) in latent space, decode, classify, and certify
that the class stays the same for every t (``refcert.segment.certify_segment`` on decoder∘classifier).
The decoder ends in a *hard sigmoid* min(max(v, 0), 1) = relu(v) − relu(v − 1), written with Linear
and ReLU layers only, so the whole composite stays piecewise linear and ExactLine is exact on it
(a smooth sigmoid would force ApproxLine's boxes).  Everything is trained with refcert's own autodiff
and Adam, seeded.
"""
from __future__ import annotations

import numpy as np

from refcert import autodiff as ad
from refcert import interpret, nn
from refcert.autodiff import Tensor
from refcert.domains import point
from refcert.optim import Adam

IMAGE_SHAPE = (1, 28, 28)


def flip_horizontal(x) -> np.ndarray:
    """Mirror images left–right: x (..., H, W) -> x[..., ::-1] (a copy); an involution."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"flip_horizontal needs images (..., H, W), got shape {x.shape}")
    return np.ascontiguousarray(x[..., ::-1])


def hard_sigmoid_head(weight: np.ndarray, bias: np.ndarray, *, dtype="float32") -> list:
    """Layers computing min(max(W h + b, 0), 1) = relu(W h + b) − relu(W h + b − 1) (exact identity):
    Linear(h, 2d) with [W; W], [b; b − 1], ReLU, Linear(2d, d) with [I, −I] and zero bias."""
    d, h = weight.shape
    expand = nn.Linear(h, 2 * d, dtype=dtype, rng=np.random.default_rng(0))
    expand.params["weight"] = Tensor(np.concatenate([weight, weight]).astype(dtype), requires_grad=True)
    expand.params["bias"] = Tensor(np.concatenate([bias, bias - 1]).astype(dtype), requires_grad=True)
    combine = nn.Linear(2 * d, d, dtype=dtype, rng=np.random.default_rng(0))
    eye = np.eye(d, dtype=dtype)
    combine.params["weight"] = Tensor(np.concatenate([eye, -eye], axis=1), requires_grad=True)
    combine.params["bias"] = Tensor(np.zeros(d, dtype), requires_grad=True)
    return [expand, nn.ReLU(), combine]


def autoencoder(latent_dim: int = 16, hidden: int = 128, *, image_size: int = 784, seed: int = 0,
                dtype="float32"):
    """(encoder, decoder), untrained.  encoder: Flatten, Linear(784, hidden), ReLU, Linear(hidden, latent);
    decoder: Linear(latent, hidden), ReLU, then the hard-sigmoid head to ``image_size`` outputs in [0, 1]."""
    if latent_dim < 1 or hidden < 1:
        raise ValueError(f"autoencoder needs latent_dim >= 1 and hidden >= 1, got {latent_dim}, {hidden}")
    rng = np.random.default_rng(seed)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(image_size, hidden, rng=rng, dtype=dtype), nn.ReLU(),
                            nn.Linear(hidden, latent_dim, rng=rng, dtype=dtype))
    last = nn.Linear(hidden, image_size, rng=rng, dtype=dtype)
    decoder = nn.Sequential(nn.Linear(latent_dim, hidden, rng=rng, dtype=dtype), nn.ReLU(),
                            *hard_sigmoid_head(last.weight.numpy(), last.bias.numpy(), dtype=dtype))
    return encoder, decoder


def _head(decoder: nn.Sequential):
    """(core layers, expand layer, d) of a decoder built by ``autoencoder``; clear error otherwise."""
    layers = list(decoder.layers) if isinstance(decoder, nn.Sequential) else []
    ok = len(layers) >= 3 and [getattr(x, "op", None) for x in layers[-3:]] == ["linear", "relu", "linear"]
    if ok:
        expand, d = layers[-3], layers[-1].out_features
        W, b = expand.weight.numpy(), expand.bias.numpy()
        ok = W.shape[0] == 2 * d and np.array_equal(W[:d], W[d:]) and np.allclose(b[:d] - 1, b[d:])
    if not ok:
        raise ValueError("train_autoencoder needs a decoder ending in the hard-sigmoid head of "
                         "refcert.generative.autoencoder (Linear [W; W], ReLU, Linear [I, -I])")
    return layers[:-3], expand, d


def latent_dim(encoder) -> int:
    """Size of the encoder's last Linear output."""
    linears = [x for x in getattr(encoder, "layers", [encoder]) if getattr(x, "op", None) == "linear"]
    if not linears:
        raise ValueError("encoder has no Linear layer, so its latent size is unknown")
    return linears[-1].out_features


def _batches(n: int, batch_size: int, rng) -> list:
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def train_autoencoder(x, encoder, decoder, *, epochs: int = 5, lr: float = 1e-3, batch_size: int = 64,
                      seed: int = 0) -> list[float]:
    """Adam on the mean squared reconstruction error; updates encoder and decoder in place.

    The head's two copies of W, b are trained as one (tied) and rewritten afterwards, so the decoder
    stays exactly clip(W h + b, 0, 1).  Returns the mean loss of every epoch."""
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"train_autoencoder needs a batch of images (N, ...), got shape {x.shape}")
    flat = x.reshape(x.shape[0], -1)
    core, expand, d = _head(decoder)
    if flat.shape[1] != d:
        raise ValueError(f"decoder outputs {d} values but the images have {flat.shape[1]}")
    dtype = expand.weight.numpy().dtype
    W = Tensor(expand.weight.numpy()[:d].copy(), requires_grad=True)
    b = Tensor(expand.bias.numpy()[:d].copy(), requires_grad=True)
    params = encoder.parameters() + [p for layer in core for p in layer.parameters()] + [W, b]
    optimizer = Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(epochs):
        total = 0.0
        for index in _batches(len(flat), batch_size, rng):
            target = Tensor(flat[index].astype(dtype))
            h = interpret.run(core, encoder(Tensor(x[index].astype(dtype))))
            out = ad.clip(point.linear(h, weight=W, bias=b), lower=0.0, upper=1.0)
            loss = ad.mean((out - target) * (out - target))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.numpy()) * len(index)
        history.append(total / len(flat))
    w, bias = W.numpy(), b.numpy()
    expand.params["weight"] = Tensor(np.concatenate([w, w]), requires_grad=True)
    expand.params["bias"] = Tensor(np.concatenate([bias, bias - 1]).astype(dtype), requires_grad=True)
    return history


def reconstruction_loss(x, encoder, decoder) -> float:
    """Mean squared error of decoder(encoder(x)) against x (flattened)."""
    x = np.asarray(x)
    with ad.no_grad():
        out = decoder(encoder(Tensor(x))).numpy()
    return float(np.mean((out - x.reshape(x.shape[0], -1)) ** 2))


def classifier(hidden: int = 100, classes: int = 10, *, image_size: int = 784, seed: int = 0, dtype="float32"):
    """A fully connected classifier that accepts images (N, 1, 28, 28) and flat decoder outputs (N, 784)."""
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(image_size, hidden, rng=rng, dtype=dtype), nn.ReLU(),
                         nn.Linear(hidden, classes, rng=rng, dtype=dtype))


def train_classifier(x, y, net, *, epochs: int = 5, lr: float = 1e-3, batch_size: int = 64, seed: int = 0):
    """Standard training (Adam on cross-entropy), in place; returns the mean loss of every epoch."""
    x, y = np.asarray(x), np.asarray(y).astype(np.int64)
    dtype = net.parameters()[0].numpy().dtype
    optimizer = Adam(net.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(epochs):
        total = 0.0
        for index in _batches(len(x), batch_size, rng):
            loss = ad.cross_entropy(net(Tensor(x[index].astype(dtype))), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.numpy()) * len(index)
        history.append(total / len(x))
    return history


def compose(decoder, classifier_net) -> nn.Sequential:
    """decoder∘classifier as one Sequential (z -> logits): the decoder's layers, then the classifier's."""
    layers = [*getattr(decoder, "layers", [decoder]), *getattr(classifier_net, "layers", [classifier_net])]
    return nn.Sequential(*layers)
