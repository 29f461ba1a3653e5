"""refcert.datasets: IDX and CIFAR-10 binary readers, checksums, search order, the shipped subset."""
import gzip
import shutil

import numpy as np
import pytest

from refcert import datasets
from refcert.datasets import cifar, files, idx, mini
from tests.conftest import shared_file


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test touches the network or the user's real data folders."""
    monkeypatch.setattr(files, "download", lambda urls, target, timeout=30.0: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("REFCERT_DATA", raising=False)


def write_fashion(folder, split="test", n=10000, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    (folder / "fashion-mnist").mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    idx.write_idx(folder / "fashion-mnist" / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
    idx.write_idx(folder / "fashion-mnist" / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip_header_shape_dtype(tmp_path, compress):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    idx.write_idx(tmp_path / "a", array, compress)
    raw = gzip.decompress((tmp_path / "a").read_bytes()) if compress else (tmp_path / "a").read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3]) and raw[4:16] == bytes([0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 5])
    read = idx.read_idx(tmp_path / "a")
    assert read.dtype == np.uint8 and read.shape == (2, 3, 5) and np.array_equal(read, array)


@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_dataset_from_root(tmp_path, compress):
    images, labels = write_fashion(tmp_path, compress=compress)
    x, y = datasets.load("fashion-mnist", "test", root=tmp_path)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and set(np.unique(y)) <= set(range(10))
    assert np.array_equal(np.round(x[:, 0] * 255).astype(np.uint8), images) and np.array_equal(y, labels)


def test_search_order_env_before_cache(tmp_path, monkeypatch):
    write_fashion(tmp_path / "env", seed=1)
    _, cached = write_fashion(tmp_path / "cache" / "refcert", seed=2)
    assert np.array_equal(datasets.load("fashion-mnist", "test")[1], cached)   # only the cache
    monkeypatch.setenv("REFCERT_DATA", str(tmp_path / "env"))
    _, from_env = datasets.load("fashion-mnist", "test")
    assert not np.array_equal(from_env, cached)


def test_truncated_files_fail_naming_the_file(tmp_path):
    write_fashion(tmp_path, compress=False)
    path = tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(idx.IdxFormatError, match="t10k-images-idx3-ubyte.*truncated"):
        datasets.load("fashion-mnist", "test", root=tmp_path)
    gz = tmp_path / "g.gz"
    gz.write_bytes(gzip.compress(b"\0\0\x08\x01" + b"\0\0\0\x05" + bytes(5))[:-12])
    with pytest.raises(idx.IdxFormatError, match="g.gz.*gzip"):
        idx.read_idx(gz)
    path.write_bytes(b"\0\0\x08")
    with pytest.raises(idx.IdxFormatError, match="too short"):
        idx.read_idx(path)


def test_bad_magic_and_wrong_shape_fail(tmp_path):
    (tmp_path / "m").write_bytes(b"\x01\x00\x08\x01\0\0\0\x01\x07")
    with pytest.raises(idx.IdxFormatError, match="magic"):
        idx.read_idx(tmp_path / "m")
    write_fashion(tmp_path, n=10)
    with pytest.raises(idx.IdxFormatError, match="holds 10 items"):
        datasets.load("fashion-mnist", "test", root=tmp_path)


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(datasets.DatasetNotFound, match=r"t10k-images-idx3-ubyte.gz.*REFCERT_DATA"):
        datasets.load("mnist", "test")
    with pytest.raises(datasets.DatasetNotFound, match="data_batch_1.bin.*binary"):
        datasets.load("cifar10", "train", root=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.load("imagenet", "test")
    with pytest.raises(ValueError, match="split"):
        datasets.load("mnist", "validation")


def test_official_mnist_from_shared():
    folder = shared_file("datasets/mnist/t10k-images-idx3-ubyte.gz").parent.parent
    x, y = datasets.load("mnist", "test", root=folder)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert y[:5].tolist() == [7, 2, 1, 0, 4] and np.bincount(y).tolist()[:2] == [980, 1135]
    assert x.min() == 0.0 and x.max() == 1.0


def test_wrong_checksum_fails_naming_the_file(tmp_path):
    source = shared_file("datasets/mnist/t10k-labels-idx1-ubyte.gz")
    (tmp_path / "mnist").mkdir()
    shutil.copy(source.parent / "t10k-images-idx3-ubyte.gz", tmp_path / "mnist")
    content = bytearray(gzip.decompress(source.read_bytes()))
    content[8] = (content[8] + 1) % 10  # a plausible but wrong label: the header and size still check out
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(bytes(content))  # raw spelling is found too
    with pytest.raises(idx.IdxFormatError, match=r"t10k-labels-idx1-ubyte: checksum mismatch"):
        datasets.load("mnist", "test", root=tmp_path)


def cifar_records(labels):
    """Records whose red plane is 10 + i, green 20 + i, blue 30 + i (i = record index)."""
    records = []
    for i, label in enumerate(labels):
        planes = [np.full(1024, base + i, dtype=np.uint8) for base in (10, 20, 30)]
        records.append(bytes([label]) + b"".join(p.tobytes() for p in planes))
    return b"".join(records)


def test_cifar_binary_reader_is_channel_major(tmp_path):
    (tmp_path / "b.bin").write_bytes(cifar_records([3, 9, 0]))
    x, y = cifar.read_batch(tmp_path / "b.bin", expected_records=None)
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.uint8 and y.tolist() == [3, 9, 0]
    assert [int(x[1, c, 5, 7]) for c in range(3)] == [11, 21, 31]
    (tmp_path / "b.bin").write_bytes(cifar_records([3, 9])[:-1])
    with pytest.raises(cifar.CifarFormatError, match="b.bin.*whole number"):
        cifar.read_batch(tmp_path / "b.bin", expected_records=None)
    (tmp_path / "b.bin").write_bytes(cifar_records([3, 12]))
    with pytest.raises(cifar.CifarFormatError, match="record 1 has label 12"):
        cifar.read_batch(tmp_path / "b.bin", expected_records=None)


def test_load_cifar10_test_split(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    labels = np.arange(10000) % 10
    records = np.zeros((10000, cifar.RECORD), dtype=np.uint8)
    records[:, 0] = labels
    records[:, 1 + 1024:1 + 2048] = 255  # green plane full
    (folder / "test_batch.bin").write_bytes(records.tobytes())
    x, y = datasets.load("cifar10", "test", root=tmp_path)
    assert x.shape == (10000, 3, 32, 32) and x.dtype == np.float32 and np.array_equal(y, labels)
    assert x[:, 1].min() == 1.0 and x[:, 0].max() == 0.0 and x[:, 2].max() == 0.0
    (folder / "test_batch.bin").write_bytes(records[:9999].tobytes())
    with pytest.raises(cifar.CifarFormatError, match="test_batch.bin: holds 9999 records"):
        datasets.load("cifar10", "test", root=tmp_path)


def test_mnist_mini_is_a_balanced_real_subset():
    x, y = datasets.load("mnist-mini", "train")
    x_test, y_test = datasets.load("mnist-mini", "test")
    assert x.shape[1:] == (1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert len(y) >= 2000 and len(y_test) >= 500 and mini.PATH.stat().st_size < 3_000_000
    assert np.bincount(y, minlength=10).tolist() == [len(y) // 10] * 10
    assert np.bincount(y_test, minlength=10).tolist() == [len(y_test) // 10] * 10
    folder = shared_file("datasets/mnist/t10k-images-idx3-ubyte.gz").parent.parent
    official_x, official_y = datasets.load("mnist", "test", root=folder)
    with np.load(mini.PATH) as archive:
        chosen = archive["index_test"]
    assert np.array_equal(official_x[chosen], x_test) and np.array_equal(official_y[chosen], y_test)


def test_make_mnist_mini_is_reproducible(tmp_path):
    folder = shared_file("datasets/mnist/train-images-idx3-ubyte.gz").parent.parent
    from scripts.make_mnist_mini import main
    main(["--source", str(folder), "--out", str(tmp_path / "m.npz")])
    assert (tmp_path / "m.npz").read_bytes() == mini.PATH.read_bytes()
