"""refcert.nn: layers, initialisation, structure (Sequential, Residual), parameters, dtype, and training.

The layers are plain data (an op name and its parameters), so these tests check what the data means:
PyTorch's default initialisation bounds, composition, the residual sum, parameter naming, and that
Adam on the autodiff graph actually learns a small problem.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refcert import autodiff as ad
from refcert import nn
from refcert.autodiff import Tensor
from refcert.backends import to_numpy
from refcert.optim import Adam

pytestmark = pytest.mark.agnostic


def _xor_problem(rng, count):
    """A two-class XOR problem on [-1, 1]^2 with a margin around the axes (linearly inseparable)."""
    x = rng.uniform(-1.0, 1.0, (count, 2))
    x = x[np.min(np.abs(x), axis=1) > 0.1][:count]
    return x.astype("float32"), (x[:, 0] * x[:, 1] > 0).astype("int64")


def test_mlp_learns_xor_with_adam():
    rng = np.random.default_rng(0)
    x, y = _xor_problem(rng, 512)
    net = nn.Sequential(nn.Linear(2, 32, rng=rng), nn.ReLU(), nn.Linear(32, 32, rng=rng), nn.ReLU(),
                        nn.Linear(32, 2, rng=rng))
    optimizer = Adam(net.parameters(), lr=0.01)
    for _ in range(300):
        optimizer.zero_grad()
        loss = ad.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
    x_test, y_test = _xor_problem(np.random.default_rng(1), 512)
    accuracy = np.mean(np.argmax(net(x_test).numpy(), axis=1) == y_test)
    assert accuracy > 0.95, f"accuracy {accuracy:.3f} after 300 Adam steps (loss {loss.item():.3f})"


@pytest.mark.parametrize("make, fan_in", [
    (lambda rng: nn.Linear(50, 400, rng=rng), 50),
    (lambda rng: nn.Conv2d(3, 64, kernel_size=3, rng=rng), 3 * 3 * 3),
])
def test_default_initialisation_is_pytorchs_uniform(make, fan_in):
    layer = make(np.random.default_rng(0))
    bound = 1.0 / np.sqrt(fan_in)
    for name in ("weight", "bias"):
        values = layer.params[name].numpy()
        assert values.dtype == np.float32
        assert np.all(np.abs(values) <= bound), f"{name} outside U(-{bound}, {bound})"
        if values.size > 1000:  # the bound is attained (nearly) and the mean is near 0
            assert np.max(np.abs(values)) > 0.98 * bound and abs(np.mean(values)) < 0.05 * bound


def test_seed_makes_weights_reproducible():
    nn.seed(7)
    a = nn.Linear(4, 3).weight.numpy()
    nn.seed(7)
    b = nn.Linear(4, 3).weight.numpy()
    c = nn.Linear(4, 3).weight.numpy()
    assert np.array_equal(a, b) and not np.array_equal(b, c)


def _small_layers(rng):
    return [nn.Linear(3, 4, rng=rng, dtype="float64"), nn.Tanh(), nn.Linear(4, 3, rng=rng, dtype="float64")]


@given(seed=st.integers(0, 2**32 - 1))
def test_sequential_composes_its_layers(seed):
    rng = np.random.default_rng(seed)
    layers = _small_layers(rng)
    x = rng.normal(size=(2, 3))
    expected = x
    for layer in layers:
        expected = layer(expected)
    net = nn.Sequential(*layers)
    np.testing.assert_array_equal(net(x).numpy(), expected.numpy())
    np.testing.assert_array_equal(nn.Sequential(layers)(x).numpy(), expected.numpy())  # a list works too
    assert len(net) == 3 and list(net) == layers and net[1] is layers[1]
    np.testing.assert_array_equal(net[1:](layers[0](x)).numpy(), expected.numpy())
    np.testing.assert_array_equal(nn.Sequential()(x).numpy(), x)  # the empty Sequential is the identity


@given(seed=st.integers(0, 2**32 - 1), with_shortcut=st.booleans())
def test_residual_adds_block_and_shortcut(seed, with_shortcut):
    rng = np.random.default_rng(seed)
    block = nn.Sequential(*_small_layers(rng))
    shortcut = nn.Linear(3, 3, rng=rng, dtype="float64") if with_shortcut else None
    x = rng.normal(size=(2, 3))
    expected = block(x).numpy() + (shortcut(x).numpy() if with_shortcut else x)
    np.testing.assert_allclose(nn.Residual(block, shortcut)(x).numpy(), expected, rtol=1e-12)


def test_sequential_rejects_non_layers():
    with pytest.raises(TypeError, match="Sequential takes layers"):
        nn.Sequential(nn.ReLU(), lambda x: x)


def test_parameters_are_named_and_trainable():
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.Normalize(mean=[0.5], std=[0.25]), nn.Conv2d(1, 2, 3, rng=rng), nn.ReLU(),
                        nn.Residual(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, rng=rng)),
                                    nn.Conv2d(2, 2, 1, bias=False, rng=rng)),
                        nn.Flatten(), nn.Linear(2 * 3 * 3, 2, rng=rng))
    names = list(net.named_parameters())
    assert names == ["1.weight", "1.bias", "3.block.0.weight", "3.block.0.bias", "3.shortcut.0.weight",
                     "5.weight", "5.bias"]
    params = net.parameters()
    assert all(p.requires_grad for p in params) and len(params) == len(names)
    x = np.random.default_rng(1).uniform(size=(2, 1, 5, 5)).astype("float32")
    ad.sum(net(x)).backward()
    assert all(p.grad is not None and to_numpy(p.grad).shape == p.shape for p in params)
    assert net.layers[0].params["mean"].grad is None, "Normalize's constants are not trained"


def test_astype_converts_parameters_and_outputs():
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(8, 3, rng=rng), nn.Sigmoid())
    x = rng.uniform(size=(2, 1, 6, 6))
    before = net(x.astype("float32")).numpy()
    assert before.dtype == np.float32
    assert net.astype("float64") is net
    assert all(p.numpy().dtype == np.float64 and p.requires_grad for p in net.parameters())
    after = net(x).numpy()
    assert after.dtype == np.float64
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


def test_normalize_validates_its_constants():
    with pytest.raises(ValueError, match="std > 0"):
        nn.Normalize(mean=[0.0], std=[0.0])
    with pytest.raises(ValueError, match="one shape"):
        nn.Normalize(mean=[0.0, 1.0], std=[1.0])
    x = np.arange(8.0).reshape(1, 2, 2, 2)
    y = nn.Normalize(mean=[1.0, 2.0], std=[2.0, 4.0], dtype="float64")(Tensor(x)).numpy()
    np.testing.assert_allclose(y, (x - np.array([1.0, 2.0])[:, None, None]) / np.array([2.0, 4.0])[:, None, None])


def test_pools_default_stride_is_the_kernel_size():
    assert nn.MaxPool2d(3).params == {"kernel_size": 3, "stride": 3, "padding": 0}
    assert nn.AvgPool2d(2, stride=1, padding=1).params == {"kernel_size": 2, "stride": 1, "padding": 1}
