"""refcert.autodiff against HIPS autograd: values and vector-Jacobian products of every primitive.

One table, ``OPS``, lists (name, refcert function, autograd.numpy function, input strategy); a single
property test checks value, dtype and the gradient of ``sum(out * cotangent)`` for every argument, in
float32 and float64.  Convolutions and pools are compared with direct loops written in autograd.numpy;
whole random networks (``tests.strategies.networks``) with the same network rebuilt in autograd.numpy.
Inputs go in as NumPy arrays and come back through ``backends.to_numpy``, so this runs under
``REFCERT_BACKEND=strict`` too.
"""
import contextlib

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from autograd.scipy.special import logsumexp as anp_logsumexp
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import basic_indices, mutually_broadcastable_shapes

from refcert import autodiff as ad
from refcert import backends
from refcert.autodiff import Tensor, no_grad
from refcert.backends import to_numpy
from tests.strategies import networks

pytestmark = pytest.mark.agnostic
TOLERANCE = {"float32": dict(rtol=2e-3, atol=2e-4), "float64": dict(rtol=1e-9, atol=1e-10)}


# --- input strategies: each draws (list of float64 arrays, params dict) -------------------------

def _values(rng, shape, kind):
    if kind == "positive":
        return rng.uniform(0.2, 2.0, shape)
    if kind == "away_from_zero":  # |x| >= 0.1: relu, abs and division stay differentiable
        return rng.uniform(0.1, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    if kind == "ties":  # few distinct values, so max/min/maximum see ties
        return rng.integers(-2, 3, shape).astype(float)
    return rng.normal(0.0, 1.0, shape)


@st.composite
def elementwise(draw, count=1, kind="any", kinds=None):
    shapes = draw(mutually_broadcastable_shapes(num_shapes=count, max_dims=3, max_side=3)).input_shapes
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kinds = kinds or (kind,) * count
    return [_values(rng, s, k) for s, k in zip(shapes, kinds)], {}


@st.composite
def where_inputs(draw):
    shapes = draw(mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=3)).input_shapes
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return [rng.normal(size=shapes[1]), rng.normal(size=shapes[2])], {"condition": rng.uniform(size=shapes[0]) < 0.5}


@st.composite
def reduction(draw, kind="any", axis_none=True, keepdims=True):
    shape = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple))
    axes = st.integers(-len(shape), len(shape) - 1)
    tuples = st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=len(shape), unique=True).map(tuple)
    axis = draw(st.one_of(st.none(), axes, tuples) if axis_none else axes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return [_values(rng, shape, kind)], {"axis": axis, "keepdims": draw(st.booleans()) if keepdims else False}


@st.composite
def matmul_inputs(draw, vector=False):
    shapes = draw(mutually_broadcastable_shapes(signature="(n,k),(k,m)->(n,m)", max_dims=2, max_side=3)).input_shapes
    if vector:  # x (..., n, k) @ y (k,)
        shapes = (shapes[0], shapes[0][-1:])
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return [rng.normal(size=s) for s in shapes], {}


@st.composite
def one_array(draw, min_dims=1, max_dims=3, min_side=1, max_side=3):
    shape = tuple(draw(st.lists(st.integers(min_side, max_side), min_size=min_dims, max_size=max_dims)))
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1))).normal(size=shape)


def with_params(array_strategy, **param_strategies):
    """Combine one array with parameters drawn from strategies that may depend on its shape."""
    @st.composite
    def draw_inputs(draw):
        x = draw(array_strategy)
        return [x], {k: draw(make(x.shape)) for k, make in param_strategies.items()}
    return draw_inputs()


@st.composite
def concat_inputs(draw, new_axis=False):
    base = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    axis = draw(st.integers(0, len(base) if new_axis else len(base) - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shapes = []
    for _ in range(draw(st.integers(1, 3))):
        shape = list(base)
        if not new_axis:
            shape[axis] = draw(st.integers(1, 3))
        shapes.append(tuple(shape))
    return [rng.normal(size=s) for s in shapes], {"axis": axis}


@st.composite
def cross_entropy_inputs(draw):
    batch, classes = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return [rng.normal(0, 3, (batch, classes))], {"labels": rng.integers(0, classes, batch)}


@st.composite
def broadcast_inputs(draw):
    """x whose shape broadcasts to ``shape``: leading axes dropped, some axes set to 1."""
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=3)))
    drop = draw(st.integers(0, len(shape)))
    source = tuple(draw(st.sampled_from([1, n])) for n in shape[drop:])
    x = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).normal(size=source)
    return [x], {"shape": shape}


@st.composite
def conv_inputs(draw, transpose=False, max_batch=2):
    """x (B, C, H, W) and w (O, C, kh, kw) with a stride and padding that fit; for the transposed
    convolution the first array is y (B, O, Ho, Wo) and ``input_hw`` is (H, W)."""
    batch, channels, out = draw(st.integers(1, max_batch)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw, stride, padding = (draw(st.integers(1, 3)), draw(st.integers(1, 3)),
                               draw(st.integers(1, 3)), draw(st.integers(0, 2)))
    height = draw(st.integers(max(1, kh - 2 * padding), 7))
    width = draw(st.integers(max(1, kw - 2 * padding), 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = rng.normal(size=(out, channels, kh, kw))
    if not transpose:
        return [rng.normal(size=(batch, channels, height, width)), w], {"stride": stride, "padding": padding}
    out_h, out_w = (height + 2 * padding - kh) // stride + 1, (width + 2 * padding - kw) // stride + 1
    return ([rng.normal(size=(batch, out, out_h, out_w)), w],
            {"stride": stride, "padding": padding, "input_hw": (height, width)})


@st.composite
def pool_inputs(draw):
    kernel, stride = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(st.integers(0, kernel // 2))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)),
             draw(st.integers(max(1, kernel - 2 * padding), 6)), draw(st.integers(max(1, kernel - 2 * padding), 6)))
    x = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).normal(size=shape)
    return [x], {"kernel_size": kernel, "stride": stride, "padding": padding}


def _patches(x, kh, kw, stride, padding, fill=0.0):
    """Direct loop: {(i, j): the window of the padded x that output position (i, j) sees}."""
    x = anp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), mode="constant", constant_values=fill)
    out_h, out_w = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    return {(i, j): x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            for i in range(out_h) for j in range(out_w)}, (out_h, out_w)


def _assemble(values, out_h, out_w):
    """{(i, j): (B, O)} -> (B, O, out_h, out_w)."""
    return anp.stack([anp.stack([values[i, j] for j in range(out_w)], axis=-1) for i in range(out_h)], axis=-2)


def conv2d_loop(x, w, stride, padding):
    patches, (out_h, out_w) = _patches(x, w.shape[2], w.shape[3], stride, padding)
    return _assemble({k: anp.tensordot(p, w, axes=([1, 2, 3], [1, 2, 3])) for k, p in patches.items()}, out_h, out_w)


def conv_transpose2d_loop(y, w, stride, padding, input_hw):
    """Scatter y[:, :, i, j] * w back onto the window each output position saw (the adjoint of conv2d)."""
    height, width = input_hw[0] + 2 * padding, input_hw[1] + 2 * padding
    kh, kw = w.shape[2], w.shape[3]
    total = 0.0
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            piece = anp.tensordot(y[:, :, i, j], w, axes=([1], [0]))  # (B, C, kh, kw)
            total = total + anp.pad(piece, ((0, 0), (0, 0), (i * stride, height - i * stride - kh),
                                            (j * stride, width - j * stride - kw)), mode="constant")
    return total[:, :, padding:height - padding, padding:width - padding]


def pool_loop(x, kernel_size, stride, padding, reduce, fill):
    patches, (out_h, out_w) = _patches(x, kernel_size, kernel_size, stride, padding, fill)
    return _assemble({k: reduce(p, axis=(2, 3)) for k, p in patches.items()}, out_h, out_w)


# --- the table ------------------------------------------------------------------------------------

def _reshape_targets(shape):
    size = int(np.prod(shape))
    return st.sampled_from([(-1,), (size, 1), (1, size), tuple(reversed(shape)), (1,) + tuple(shape)])


def _ce(z, labels):
    return anp.mean(anp_logsumexp(z, axis=-1) - z[np.arange(z.shape[0]), labels])


def _pad(x, p):
    return anp.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode="constant", constant_values=0.0)


def _broadcast_all(condition, x, y):
    """autograd's where does not undo broadcasting against the condition; pre-broadcast by adding zeros."""
    zeros = np.zeros(np.broadcast_shapes(np.shape(condition), np.shape(x), np.shape(y)))
    return x + zeros, y + zeros


OPS = [  # (name, refcert function, autograd.numpy function, strategy of (arrays, params))
    ("add", ad.add, anp.add, elementwise(2)),
    ("sub", ad.sub, anp.subtract, elementwise(2)),
    ("mul", ad.mul, anp.multiply, elementwise(2)),
    ("div", ad.div, anp.divide, elementwise(2, kinds=("any", "away_from_zero"))),
    ("neg", ad.neg, anp.negative, elementwise(1)),
    ("maximum", ad.maximum, anp.maximum, elementwise(2, "ties")),
    ("minimum", ad.minimum, anp.minimum, elementwise(2, "ties")),
    ("where", lambda x, y, condition: ad.where(condition, x, y),
     lambda x, y, condition: anp.where(condition, *_broadcast_all(condition, x, y)), where_inputs()),
    ("relu", ad.relu, lambda x: anp.maximum(x, 0.0), elementwise(1, "away_from_zero")),
    ("abs", ad.abs, anp.abs, elementwise(1, "away_from_zero")),
    ("exp", ad.exp, anp.exp, elementwise(1)),
    ("log", ad.log, anp.log, elementwise(1, "positive")),
    ("sqrt", ad.sqrt, anp.sqrt, elementwise(1, "positive")),
    ("sigmoid", ad.sigmoid, lambda x: 1.0 / (1.0 + anp.exp(-x)), elementwise(1)),
    ("tanh", ad.tanh, anp.tanh, elementwise(1)),
    ("softplus", ad.softplus, lambda x: anp.log1p(anp.exp(x)), elementwise(1)),
    ("clip", lambda x: ad.clip(x, lower=-0.5, upper=0.7), lambda x: anp.clip(x, -0.5, 0.7), elementwise(1)),
    ("sum", ad.sum, anp.sum, reduction()),
    ("mean", ad.mean, anp.mean, reduction()),
    ("max", ad.max, anp.max, reduction("ties")),
    ("min", ad.min, anp.min, reduction("ties")),
    ("logsumexp", ad.logsumexp, anp_logsumexp, reduction(axis_none=False)),
    ("cross_entropy", lambda z, labels: ad.cross_entropy(z, labels), _ce, cross_entropy_inputs()),
    ("matmul", ad.matmul, anp.matmul, matmul_inputs()),
    ("matmul_vector", ad.matmul, anp.matmul, matmul_inputs(vector=True)),
    ("reshape", ad.reshape, lambda x, shape: anp.reshape(x, shape), with_params(one_array(), shape=_reshape_targets)),
    ("transpose", ad.transpose, lambda x, axes: anp.transpose(x, axes),
     with_params(one_array(), axes=lambda s: st.permutations(range(len(s))).map(tuple))),
    ("T", lambda x: x.T, anp.transpose, elementwise(1)),
    ("take_last", ad.take_last, lambda x, index: x[..., index],
     with_params(one_array(max_side=5), index=lambda s: st.permutations(range(s[-1])).map(np.array))),
    ("getitem", ad.getitem, lambda x, index: x[index],
     with_params(one_array(), index=lambda s: basic_indices(s, allow_ellipsis=False))),
    ("broadcast_to", ad.broadcast_to, lambda x, shape: x + np.zeros(shape), broadcast_inputs()),  # autograd's
    # broadcast_to cannot add leading axes
    ("concatenate", lambda *xs, axis: ad.concatenate(list(xs), axis=axis),
     lambda *xs, axis: anp.concatenate(xs, axis=axis), concat_inputs()),
    ("stack", lambda *xs, axis: ad.stack(list(xs), axis=axis),
     lambda *xs, axis: anp.stack(xs, axis=axis), concat_inputs(new_axis=True)),
    ("pad2d", ad.pad2d, lambda x, padding: _pad(x, padding),
     with_params(one_array(min_dims=4, max_dims=4), padding=lambda _: st.integers(0, 2))),
    ("conv2d", ad.conv2d, conv2d_loop, conv_inputs()),
    ("conv_transpose2d", ad.conv_transpose2d, conv_transpose2d_loop, conv_inputs(transpose=True)),
    ("avg_pool2d", ad.avg_pool2d, lambda x, **p: pool_loop(x, **p, reduce=anp.mean, fill=0.0), pool_inputs()),
    ("max_pool2d", ad.max_pool2d, lambda x, **p: pool_loop(x, **p, reduce=anp.max, fill=-np.inf), pool_inputs()),
]


def refcert_value_and_grads(fn, arrays, params, cotangent):
    leaves = [Tensor(a, requires_grad=True) for a in arrays]
    out = fn(*leaves, **params)
    ad.sum(out * Tensor(cotangent)).backward()
    return out, [to_numpy(t.grad) for t in leaves]


def autograd_value_and_grads(fn, arrays, params, cotangent):
    def loss(*xs):
        return anp.sum(fn(*xs, **params) * cotangent)
    return fn(*arrays, **params), [autograd.grad(loss, i)(*arrays) for i in range(len(arrays))]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name, ours, theirs, inputs", OPS, ids=[row[0] for row in OPS])
@given(data=st.data())
def test_op_matches_autograd(name, ours, theirs, inputs, dtype, data):
    check_against_autograd(name, ours, theirs, *data.draw(inputs), dtype)


@contextlib.contextmanager
def one_item_slices():
    """Convolutions split their batch into slices of one item (the path big batches take)."""
    name = backends.current().name
    saved = ad.CHUNK_BYTES.get(name)
    ad.CHUNK_BYTES[name] = 1
    try:
        yield
    finally:
        if saved is None:
            del ad.CHUNK_BYTES[name]
        else:
            ad.CHUNK_BYTES[name] = saved


@pytest.mark.parametrize("name, ours, theirs, transpose", [
    ("conv2d", ad.conv2d, conv2d_loop, False), ("conv_transpose2d", ad.conv_transpose2d, conv_transpose2d_loop, True)])
@given(data=st.data())
def test_conv_in_batch_slices_matches_autograd(name, ours, theirs, transpose, data):
    arrays, params = data.draw(conv_inputs(transpose=transpose, max_batch=4))
    with one_item_slices():
        check_against_autograd(name, ours, theirs, arrays, params, "float64")


def check_against_autograd(name, ours, theirs, arrays, params, dtype):
    arrays = [np.asarray(a, dtype=dtype) for a in arrays]
    wide = [a.astype("float64") for a in arrays]
    expected = theirs(*wide, **params)
    cotangent = np.random.default_rng(0).normal(size=np.shape(expected)).astype(dtype)
    expected, expected_grads = autograd_value_and_grads(theirs, wide, params, cotangent.astype("float64"))
    out, grads = refcert_value_and_grads(ours, arrays, params, cotangent)
    assert out.shape == np.shape(expected), f"{name}: shape {out.shape} != {np.shape(expected)}"
    assert out.numpy().dtype == np.dtype(dtype), f"{name}: output dtype {out.numpy().dtype}, inputs {dtype}"
    np.testing.assert_allclose(out.numpy(), expected, **TOLERANCE[dtype], err_msg=f"{name} value")
    for i, (g, e) in enumerate(zip(grads, expected_grads)):
        assert g.shape == arrays[i].shape and g.dtype == np.dtype(dtype), f"{name}: grad {i} {g.shape} {g.dtype}"
        np.testing.assert_allclose(g, e, **TOLERANCE[dtype], err_msg=f"{name} gradient of argument {i}")


# --- whole networks -------------------------------------------------------------------------------

def autograd_forward(module, x, weights, prefix=""):
    """The network ``module`` rebuilt in autograd.numpy; trainable weights come from ``weights``."""
    if module.structure == "sequential":
        for i, layer in enumerate(module.layers):
            x = autograd_forward(layer, x, weights, f"{prefix}{i}.")
        return x
    if module.structure == "residual":
        return (autograd_forward(module.block, x, weights, prefix + "block.")
                + autograd_forward(module.shortcut, x, weights, prefix + "shortcut."))
    p = module.params
    param = lambda key: weights.get(prefix + key, None if p[key] is None else to_numpy(p[key]))  # noqa: E731
    if module.op == "linear":
        return x @ param("weight").T + (0.0 if p["bias"] is None else param("bias"))
    if module.op == "conv2d":
        y = conv2d_loop(x, param("weight"), p["stride"], p["padding"])
        return y + (0.0 if p["bias"] is None else anp.reshape(param("bias"), (1, -1, 1, 1)))
    if module.op == "normalize":
        mean, std = param("mean"), param("std")
        shape = (mean.shape[0],) + (1,) * (x.ndim - 2) if mean.shape[0] > 1 else (1,)
        return (x - anp.reshape(mean, shape)) / anp.reshape(std, shape)
    if module.op == "batchnorm":  # evaluation mode: x·scale + shift from the running statistics
        scale = param("weight") / anp.sqrt(param("running_var") + module.eps)
        shift = param("bias") - param("running_mean") * scale
        shape = (scale.shape[0],) + (1,) * (x.ndim - 2) if scale.shape[0] > 1 else (1,)
        return x * anp.reshape(scale, shape) + anp.reshape(shift, shape)
    pools = {"avg_pool2d": (anp.mean, 0.0), "max_pool2d": (anp.max, -np.inf)}
    if module.op in pools:
        return pool_loop(x, p["kernel_size"], p["stride"], p["padding"], *pools[module.op])
    return {"flatten": lambda: anp.reshape(x, (x.shape[0], -1)), "relu": lambda: anp.where(x > 0, x, 0.0),
            "permute": lambda: anp.reshape(anp.reshape(x, (x.shape[0], -1))[:, p.get("index")],
                                           (x.shape[0],) + tuple(p.get("shape", ()))),
            "sigmoid": lambda: 1.0 / (1.0 + anp.exp(-x)), "tanh": lambda: anp.tanh(x)}[module.op]()


@given(net_and_shape=networks(), seed=st.integers(0, 2**32 - 1))
def test_network_loss_gradient_matches_autograd(net_and_shape, seed):
    net, input_shape = net_and_shape
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (2,) + tuple(input_shape))
    x_tensor = Tensor(x, requires_grad=True)
    logits = net(x_tensor)
    labels = rng.integers(0, logits.shape[-1], 2)
    loss = ad.cross_entropy(logits, labels)
    loss.backward()

    named = net.named_parameters()
    weights = {name: to_numpy(t.value) for name, t in named.items()}

    def autograd_loss(weights, x):
        return _ce(autograd_forward(net, x, weights), labels)

    expected = autograd_loss(weights, x)
    grad_weights, grad_x = autograd.grad(autograd_loss, (0, 1))(weights, x)
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(to_numpy(x_tensor.grad), grad_x, rtol=1e-7, atol=1e-10, err_msg="input gradient")
    for name, tensor in named.items():
        if name.endswith((".running_mean", ".running_var")):   # statistics, not trained: no gradient
            assert tensor.grad is None, name
            continue
        np.testing.assert_allclose(to_numpy(tensor.grad), grad_weights[name], rtol=1e-7, atol=1e-10, err_msg=name)


# --- graph bookkeeping ------------------------------------------------------------------------

@given(seed=st.integers(0, 2**32 - 1))
def test_tensor_used_twice_accumulates_both_contributions(seed):
    x = np.random.default_rng(seed).normal(size=(3, 2))
    t = Tensor(x, requires_grad=True)
    a = ad.exp(t)                      # a feeds b twice and the loss once more
    b = a * a + ad.reshape(a, shape=(2, 3)).T * 3.0
    ad.sum(b + t).backward()
    expected = autograd.grad(lambda v: anp.sum(anp.exp(v) ** 2 + 3.0 * anp.exp(v) + v))(x)
    np.testing.assert_allclose(t.numpy(), x)
    np.testing.assert_allclose(to_numpy(t.grad), expected, rtol=1e-12)


def test_backward_twice_accumulates_into_grad():
    t = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    ad.sum(t * t).backward()
    ad.sum(t * 3.0).backward()
    np.testing.assert_allclose(to_numpy(t.grad), [2.0 + 3.0, 4.0 + 3.0])


def test_no_grad_records_nothing():
    t = Tensor(np.array([1.0, -2.0]), requires_grad=True)
    with no_grad():
        y = ad.sum(ad.relu(t) * 2.0)
    assert not y.requires_grad and y._node is None
    y.backward()
    assert t.grad is None
    with pytest.raises(RuntimeError), no_grad():
        raise RuntimeError("leave the block by an exception")
    assert ad.sum(t * t).requires_grad, "no_grad must restore recording on exit"


def test_constants_get_no_gradient():
    t, c = Tensor(np.ones(2), requires_grad=True), Tensor(np.ones(2))
    ad.sum(t * c + np.ones(2)).backward()
    assert c.grad is None and to_numpy(t.grad).tolist() == [1.0, 1.0]


# --- central finite differences (float64) -----------------------------------------------------

FINITE_DIFFERENCE_OPS = ["conv2d", "conv_transpose2d", "logsumexp", "cross_entropy", "sigmoid", "div", "max_pool2d"]


@pytest.mark.parametrize("name", FINITE_DIFFERENCE_OPS)
@given(data=st.data())
def test_gradient_matches_central_differences(name, data):
    _, ours, _, inputs = next(row for row in OPS if row[0] == name)
    arrays, params = data.draw(inputs)
    rng = np.random.default_rng(1)
    cotangent = rng.normal(size=ours(*arrays, **params).shape)
    _, grads = refcert_value_and_grads(ours, arrays, params, cotangent)
    h = 1e-6
    for i, x in enumerate(arrays):
        direction = rng.normal(size=x.shape)

        def f(step):
            shifted = [np.asarray(a + step * direction) if j == i else a for j, a in enumerate(arrays)]
            return float(np.sum(ours(*shifted, **params).numpy() * cotangent))
        numeric = (f(h) - f(-h)) / (2 * h)
        np.testing.assert_allclose(np.sum(grads[i] * direction), numeric, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{name}: argument {i}")


@given(data=st.data())
def test_conv_transpose_is_the_adjoint_of_conv(data):
    (x, w), params = data.draw(conv_inputs())
    y = np.random.default_rng(2).normal(size=ad.conv2d(x, w, **params).shape)
    back = ad.conv_transpose2d(y, w, **params, input_hw=x.shape[2:])
    assert back.shape == x.shape
    np.testing.assert_allclose(np.sum(ad.conv2d(x, w, **params).numpy() * y), np.sum(x * back.numpy()), rtol=1e-9)


def test_enable_grad_records_inside_no_grad_and_restores():
    t = Tensor(np.array([1.0, -2.0]), requires_grad=True)
    with no_grad():
        with ad.enable_grad():
            loss = ad.sum(t * t)
        assert not ad.sum(t * t).requires_grad, "enable_grad must restore no_grad on exit"
    loss.backward()
    np.testing.assert_array_equal(to_numpy(t.grad), [2.0, -4.0])


@pytest.mark.parametrize("count", [1, 64, 65, 150, 64 * 64 + 3])
def test_concatenate_any_number_of_tensors(count):
    """Past the primitive's 64 operands, concatenate joins groups; value and each operand's gradient stay exact."""
    rng = np.random.default_rng(count)
    arrays = [rng.normal(size=(2, 1 + i % 3)) for i in range(count)]
    leaves = [Tensor(a, requires_grad=True) for a in arrays]
    joined = ad.concatenate(leaves, axis=1)
    np.testing.assert_array_equal(joined.numpy(), np.concatenate(arrays, axis=1))
    weights = rng.normal(size=joined.shape)
    ad.sum(joined * Tensor(weights)).backward()
    np.testing.assert_array_equal(np.concatenate([to_numpy(t.grad) for t in leaves], axis=1), weights)
