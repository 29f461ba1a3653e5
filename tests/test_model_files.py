"""Model files (refcert.save / refcert.load): exact round trips, and clear errors for every bad file.

A bad file must raise ``refcert.ModelFileError`` whose message names the file, never a deep NumPy or
zipfile traceback, and never load silently wrong weights.
"""
import io
import json
import os
import tempfile
import zipfile

import numpy as np
import pytest
from hypothesis import given

import refcert
from refcert import nn
from refcert.io.npz import FORMAT, atomic_write
from tests.strategies import networks

pytestmark = pytest.mark.agnostic


def _every_layer_net():
    rng = np.random.default_rng(0)
    return nn.Sequential(
        nn.Normalize(mean=[0.1, 0.2], std=[0.3, 0.4]),
        nn.Conv2d(2, 3, 3, stride=1, padding=1, rng=rng), nn.ReLU(),
        nn.Residual(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, rng=rng), nn.Tanh()),
                    nn.Conv2d(3, 3, 1, bias=False, rng=rng)),
        nn.MaxPool2d(2), nn.Residual(nn.Sigmoid()), nn.AvgPool2d(2, stride=1, padding=1),
        nn.Flatten(), nn.Linear(3 * 4 * 4, 5, rng=rng), nn.ReLU(), nn.Linear(5, 2, bias=False, rng=rng))


def _outputs(net, shape, dtype="float32"):
    x = np.random.default_rng(1).uniform(size=(3,) + tuple(shape)).astype(dtype)
    return net(x).numpy()


def test_round_trip_every_layer_type(tmp_path):
    net, path = _every_layer_net(), tmp_path / "net.npz"
    refcert.save(net, path)
    loaded = refcert.load(path)
    assert repr(loaded) == repr(net)
    assert list(loaded.named_parameters()) == list(net.named_parameters())
    np.testing.assert_array_equal(_outputs(loaded, (2, 6, 6)), _outputs(net, (2, 6, 6)))
    assert all(p.requires_grad for p in loaded.parameters())


@given(net_and_shape=networks())
def test_round_trip_random_networks(net_and_shape):
    net, shape = net_and_shape
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "net.npz")
        refcert.save(net, path)
        loaded = refcert.load(path)
    for (name, a), b in zip(net.named_parameters().items(), loaded.parameters()):
        assert a.numpy().dtype == b.numpy().dtype == np.float64, name
    np.testing.assert_array_equal(_outputs(loaded, shape, "float64"), _outputs(net, shape, "float64"))


def test_file_holds_no_pickled_object(tmp_path):
    path = tmp_path / "net.npz"
    refcert.save(_every_layer_net(), path)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    assert all(a.dtype != object for a in arrays.values())
    header = json.loads(arrays["__architecture__"].tobytes().decode())
    assert header["format"] == FORMAT


# --- bad files --------------------------------------------------------------------------------

def _write_npz(path, arrays):
    np.savez(path, **arrays)


def _valid_arrays(tmp_path):
    path = tmp_path / "valid.npz"
    refcert.save(nn.Sequential(nn.Linear(3, 2, rng=np.random.default_rng(0))), path)
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}, path


def _header(arrays):
    return json.loads(arrays["__architecture__"].tobytes().decode())


def _encode(header):
    return np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


def _corrupt(tmp_path, path):
    path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)))


def _truncated(tmp_path, path):
    _, valid = _valid_arrays(tmp_path)
    data = valid.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _empty(tmp_path, path):
    path.write_bytes(b"")


def _plain_npz(tmp_path, path):
    _write_npz(path, {"weights": np.ones(3)})


def _wrong_format(tmp_path, path):
    arrays, _ = _valid_arrays(tmp_path)
    _write_npz(path, {**arrays, "__architecture__": _encode({**_header(arrays), "format": "other-1"})})


def _header_not_json(tmp_path, path):
    arrays, _ = _valid_arrays(tmp_path)
    _write_npz(path, {**arrays, "__architecture__": np.frombuffer(b"{not json", dtype=np.uint8)})


def _header_not_an_object(tmp_path, path):
    arrays, _ = _valid_arrays(tmp_path)
    _write_npz(path, {**arrays, "__architecture__": _encode([1, 2, 3])})


def _unknown_layer(tmp_path, path):
    arrays, _ = _valid_arrays(tmp_path)
    header = _header(arrays)
    header["network"]["layers"][0]["type"] = "Softmax"
    _write_npz(path, {**arrays, "__architecture__": _encode(header)})


def _bad_config(tmp_path, path):
    arrays, _ = _valid_arrays(tmp_path)
    header = _header(arrays)
    header["network"]["layers"][0]["config"]["in_features"] = "three"
    _write_npz(path, {**arrays, "__architecture__": _encode(header)})


def _residual_without_block(tmp_path, path):
    arrays, _ = _valid_arrays(tmp_path)
    _write_npz(path, {**arrays, "__architecture__": _encode(
        {"format": FORMAT, "network": {"type": "Residual", "config": {}}})})


def _mismatched_shape(tmp_path, path):
    arrays, _ = _valid_arrays(tmp_path)
    _write_npz(path, {**arrays, "0.weight": np.ones((2, 4), dtype="float32")})


def _nan_weight(tmp_path, path):
    arrays, _ = _valid_arrays(tmp_path)
    _write_npz(path, {**arrays, "0.bias": np.array([0.0, np.nan], dtype="float32")})


def _integer_weight(tmp_path, path):
    arrays, _ = _valid_arrays(tmp_path)
    _write_npz(path, {**arrays, "0.bias": np.array([1, 2])})


def _missing_weight(tmp_path, path):
    arrays, _ = _valid_arrays(tmp_path)
    del arrays["0.bias"]
    _write_npz(path, arrays)


def _extra_weight(tmp_path, path):
    arrays, _ = _valid_arrays(tmp_path)
    _write_npz(path, {**arrays, "1.weight": np.ones(2)})


def _pickled_object(tmp_path, path):
    arrays, _ = _valid_arrays(tmp_path)
    _write_npz(path, {**arrays, "0.bias": np.array([{"evil": 1}, None], dtype=object)})


BAD_FILES = [_corrupt, _truncated, _empty, _plain_npz, _wrong_format, _header_not_json, _header_not_an_object,
             _unknown_layer, _bad_config, _residual_without_block, _mismatched_shape, _nan_weight,
             _integer_weight, _missing_weight, _extra_weight, _pickled_object]


@pytest.mark.parametrize("make", BAD_FILES, ids=[f.__name__.strip("_") for f in BAD_FILES])
def test_bad_file_raises_model_file_error_naming_the_file(tmp_path, make):
    path = tmp_path / "bad-model.npz"
    make(tmp_path, path)
    with pytest.raises(refcert.ModelFileError, match="bad-model.npz"):
        refcert.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(refcert.ModelFileError, match="no-such-model.npz"):
        refcert.load(tmp_path / "no-such-model.npz")


def test_model_file_error_is_a_value_error():
    assert issubclass(refcert.ModelFileError, ValueError)


# --- atomic writes ----------------------------------------------------------------------------

def test_atomic_write_leaves_no_half_written_file(tmp_path):
    path = tmp_path / "net.npz"

    def failing_writer(stream):
        stream.write(b"half of a file")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, failing_writer)
    assert list(tmp_path.iterdir()) == []

    refcert.save(_every_layer_net(), path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, failing_writer)
    assert path.read_bytes() == before, "a failed write must leave the previous file intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.npz"]


def test_atomic_write_writes_the_bytes(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write(path, lambda stream: stream.write(b"abc"))
    assert path.read_bytes() == b"abc"
    buffer = io.BytesIO()
    np.savez(buffer, a=np.arange(3))
    atomic_write(path, lambda stream: stream.write(buffer.getvalue()))
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["a.npy"]
