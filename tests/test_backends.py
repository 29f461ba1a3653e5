"""refcert.backends: the registry, ``use()`` nesting, ``REFCERT_BACKEND``, clear errors, conversions."""
import os
import subprocess
import sys

import numpy as np
import pytest

from refcert import autodiff as ad
from refcert import backends
from refcert.backends import BackendUnavailable

pytestmark = pytest.mark.agnostic


def test_registry_names():
    assert backends.names() == ["numpy", "cupy", "strict"]
    assert backends.get("numpy").xp is np
    assert backends.get("strict").xp.__name__ == "array_api_strict"


def test_default_is_numpy_without_environment(monkeypatch):
    monkeypatch.delenv("REFCERT_BACKEND", raising=False)
    assert backends.current().name == "numpy"
    monkeypatch.setenv("REFCERT_BACKEND", "strict")
    assert backends.current().name == "strict"
    monkeypatch.setenv("REFCERT_BACKEND", "  ")
    assert backends.current().name == "numpy"


def test_use_nests_and_restores(monkeypatch):
    monkeypatch.delenv("REFCERT_BACKEND", raising=False)
    with backends.use("strict") as outer:
        assert outer.name == backends.current().name == "strict"
        with backends.use("numpy"):
            assert backends.current().name == "numpy"
            with backends.use("strict"):
                assert backends.current().name == "strict"
            assert backends.current().name == "numpy"
        assert backends.current().name == "strict"
        with pytest.raises(KeyError):
            with backends.use("numpy"):
                raise KeyError("leave by an exception")
        assert backends.current().name == "strict"
    assert backends.current().name == "numpy"


def test_use_beats_the_environment(monkeypatch):
    monkeypatch.setenv("REFCERT_BACKEND", "strict")
    with backends.use("numpy"):
        assert backends.current().name == "numpy"
    assert backends.current().name == "strict"


@pytest.mark.parametrize("name", ["numpy", "strict"])
def test_environment_variable_in_a_fresh_process(name):
    code = "from refcert import backends, Tensor; print(backends.current().name, type(Tensor([1.0]).value).__module__)"
    env = {**os.environ, "REFCERT_BACKEND": name}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    backend, module = out.stdout.split()
    assert backend == name and module.split(".")[0] == {"numpy": "numpy", "strict": "array_api_strict"}[name]


def test_unknown_backend_in_environment_fails_clearly():
    code = "from refcert import backends; backends.current()"
    env = {**os.environ, "REFCERT_BACKEND": "tpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "BackendUnavailable" in out.stderr and "unknown backend 'tpu'" in out.stderr


def test_unknown_backend():
    with pytest.raises(BackendUnavailable, match=r"unknown backend 'jax'.*numpy.*cupy.*strict"):
        backends.get("jax")
    with pytest.raises(BackendUnavailable):
        with backends.use("jax"):
            pass  # pragma: no cover


@pytest.mark.parametrize("name, module, hint", [
    ("cupy", "cupy", "pip install refcert[gpu]"),
    ("strict", "array_api_strict", "pip install refcert[test]"),
])
def test_missing_library_gives_install_hint(monkeypatch, name, module, hint):
    monkeypatch.setitem(sys.modules, module, None)           # makes `import module` raise ImportError
    monkeypatch.delitem(backends._loaded, name, raising=False)  # forget a backend loaded earlier
    with pytest.raises(BackendUnavailable, match=rf"backend '{name}' needs .*{hint.replace('[', '.').replace(']', '.')}"):
        backends.get(name)
    assert name not in backends._loaded


def test_to_numpy_converts_every_kind_of_array():
    strict = backends.get("strict").xp
    for value in (np.arange(3.0), strict.asarray([0.0, 1.0, 2.0]), [0.0, 1.0, 2.0], ad.Tensor(np.arange(3.0))):
        out = backends.to_numpy(value)
        assert isinstance(out, np.ndarray)
        np.testing.assert_array_equal(out, [0.0, 1.0, 2.0])
    with backends.use("strict"):
        t = ad.Tensor(np.arange(3.0))
        assert type(t.value).__module__.startswith("array_api_strict")
        np.testing.assert_array_equal(backends.to_numpy(t), [0.0, 1.0, 2.0])
        np.testing.assert_array_equal(t.numpy(), [0.0, 1.0, 2.0])


def test_asarray_moves_arrays_between_backends():
    strict, numpy = backends.get("strict"), backends.get("numpy")
    a = strict.asarray(np.arange(4.0), dtype=strict.dtype("float32"))
    assert a.dtype == strict.xp.float32
    b = numpy.asarray(a)
    assert isinstance(b, np.ndarray) and b.dtype == np.float32
    np.testing.assert_array_equal(b, np.arange(4.0))


def test_cupy_backend_when_a_gpu_is_present():
    try:
        cupy_backend = backends.get("cupy")
    except BackendUnavailable as err:
        pytest.skip(str(err))
    with backends.use("cupy"):
        x = ad.Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
        ad.sum(ad.relu(x) * x).backward()
        assert cupy_backend.device.startswith("cuda")
        np.testing.assert_allclose(backends.to_numpy(x.grad), 2 * np.arange(6.0).reshape(2, 3))
