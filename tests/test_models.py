"""refcert.models: DiffAI's architectures build for MNIST and CIFAR shapes with the right layers."""
import numpy as np
import pytest

import refcert
from refcert import models, nn


def layer_kinds(net):
    return [type(layer).__name__ for layer in net.layers]


def convs(net):
    return [(l.out_channels, l.kernel_size, l.params["stride"], l.params["padding"])
            for l in net.layers if isinstance(l, nn.Conv2d)]


def widths(net):
    return [l.out_features for l in net.layers if isinstance(l, nn.Linear)]


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
@pytest.mark.parametrize("name", models.names())
def test_every_model_gives_logits(name, dataset):
    net = models.get(name, dataset, seed=1)
    x = np.random.default_rng(0).uniform(0, 1, (3, *models.input_shape(dataset))).astype(np.float32)
    y = net(x)
    assert y.shape == (3, 10) and np.all(np.isfinite(y.numpy()))
    first = net.layers[0]
    assert isinstance(first, nn.Normalize)
    expected_mean = [0.1307] if dataset == "mnist" else [0.4914, 0.4822, 0.4465]
    assert np.allclose(first.params["mean"].numpy(), expected_mean)
    assert all(p.numpy().dtype == np.float32 for p in net.parameters())


def test_architectures_match_diffai():
    assert widths(models.get("ffnn")) == [100] * 5 + [10]
    assert convs(models.get("convsmall")) == [(16, 4, 2, 0), (32, 4, 2, 0)]
    assert widths(models.get("convsmall")) == [100, 10]
    small = models.get("convsmall")
    assert small.layers[-3].in_features == 32 * 5 * 5  # 28 -> 13 -> 5
    assert convs(models.get("convmed")) == [(16, 4, 2, 1), (32, 4, 2, 1)]
    assert models.get("convmed").layers[-3].in_features == 32 * 7 * 7
    assert convs(models.get("convbig")) == [(32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1)]
    assert widths(models.get("convbig", "cifar10")) == [512, 512, 10]
    assert models.get("convbig", "cifar10").layers[-5].in_features == 64 * 8 * 8
    assert any(isinstance(l, nn.Residual) for l in models.get("skipnet").layers)
    # ReLU after every hidden layer, none after the logits
    kinds = layer_kinds(models.get("convsmall"))
    assert kinds == ["Normalize", "Conv2d", "ReLU", "Conv2d", "ReLU", "Flatten", "Linear", "ReLU", "Linear"]


def test_seed_reproducible_and_save_load(tmp_path):
    a, b, c = models.get("skipnet", seed=3), models.get("skipnet", seed=3), models.get("skipnet", seed=4)
    pa, pb, pc = (np.concatenate([p.numpy().ravel() for p in n.parameters()]) for n in (a, b, c))
    assert np.array_equal(pa, pb) and not np.array_equal(pa, pc)
    refcert.save(a, tmp_path / "n.npz")
    x = np.random.default_rng(1).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)
    assert np.array_equal(refcert.load(tmp_path / "n.npz")(x).numpy(), a(x).numpy())


def test_unknown_names_fail_clearly():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        models.get("resnet")
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        models.get("convsmall", "svhn")


def test_ibp_initialisation_follows_shi_et_al():
    """Shi et al. (NeurIPS'21) Sec. 3.1: N(0, (√(2π)/fan-in)²) weights, zero biases, every affine layer
    (residual blocks included), reproducible by seed; an unknown scheme is refused."""
    from refcert import models
    net = models.get("skipnet", "mnist", seed=3, init="ibp")
    layers = list(models._affine_layers(net))
    assert len(layers) == 6
    for layer in layers:
        w = layer.params["weight"].numpy()
        sigma = np.sqrt(2 * np.pi) / np.prod(w.shape[1:])
        assert abs(w.std() / sigma - 1) < 0.2 and abs(w.mean()) < 4 * sigma / np.sqrt(w.size) + 1e-12
        assert not np.any(layer.params["bias"].numpy())
    again = models.get("skipnet", "mnist", seed=3, init="ibp")
    assert all(np.array_equal(a.params["weight"].numpy(), b.params["weight"].numpy())
               for a, b in zip(layers, models._affine_layers(again)))
    with pytest.raises(ValueError, match="initialisation"):
        models.get("convsmall", init="xavier")
