"""Choosing the array backend: CuPy only when a CUDA device is usable."""

import subprocess
import sys
import types

import numpy as np
import pytest

import gpudnn
from gpudnn.backend import get_backend
from gpudnn.errors import BackendError


def fake_cupy(device_count):
    """A stand-in `cupy` module whose device query returns ``device_count`` or raises it."""
    mod = types.ModuleType("cupy")

    def getDeviceCount():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    mod.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=getDeviceCount))
    return mod


class CUDARuntimeError(RuntimeError):
    pass


def test_import_gpudnn_does_not_import_cupy_or_the_optional_extras():
    code = ("import sys, gpudnn; gpudnn.Network([2, 2], backend='numpy'); "
            "print([m for m in ('cupy', 'sklearn', 'matplotlib', 'tqdm') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_cupy_means_numpy_for_auto_and_a_clear_error_for_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    assert get_backend("auto").name == "numpy"
    with pytest.raises(BackendError, match="CuPy is not installed.*gpudnn\\[cuda12\\]"):
        get_backend("cupy")
    with pytest.raises(BackendError):
        gpudnn.Network([2, 2], backend="cupy")


def test_cupy_without_a_driver_counts_as_no_gpu(monkeypatch):
    err = CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(err))
    assert get_backend("auto").name == "numpy"
    with pytest.raises(BackendError, match="no CUDA device is usable.*InsufficientDriver"):
        get_backend("cupy")


def test_cupy_with_zero_devices_counts_as_no_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(0))
    assert get_backend("auto").name == "numpy"
    with pytest.raises(BackendError, match="found no CUDA device"):
        get_backend("cupy")


def test_cupy_with_a_device_is_chosen_by_auto(monkeypatch):
    fake = fake_cupy(1)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    b = get_backend("auto")
    assert b.name == "cupy" and b.xp is fake


def test_round_trip_on_each_backend(backend):
    a = backend.asarray([1.0, 2.0], dtype=np.float32)
    a *= 3
    backend.synchronize()
    host = backend.to_numpy(a)
    assert backend.owns(a) and type(host) is np.ndarray and host.dtype == np.float32 and host.tolist() == [3.0, 6.0]
    assert ("CPU" if backend.name == "numpy" else "GPU 0:") in backend.describe()


def test_same_weights_on_every_backend(backend):
    """Initialisation is drawn on the host, so every backend starts from the same weights."""
    a = gpudnn.Network([5, 4, 3], backend="numpy", seed=11)
    b = gpudnn.Network([5, 4, 3], backend=backend, seed=11)
    np.testing.assert_array_equal(a.params, backend.to_numpy(b.params))


def test_read_later_gives_the_value_as_it_was_when_asked(backend):
    """The reader returns x as it stood when read_later was called, in stream order: work
    queued afterwards (the step's backward pass, here x += 1) does not reach it. A reader left
    unread takes its slot with it, and the next read_later gets a fresh one."""
    x = backend.asarray(np.float64(2.5))
    first = backend.read_later(x)
    x += 1.0
    unread = backend.read_later(x)  # never called
    x += 1.0
    second = backend.read_later(x)
    x *= 10.0
    assert second() == 4.5 and first() == 2.5
    assert first() == 2.5 and second() == 4.5  # a reader repeats its value
    third = backend.read_later(x)  # the slots free again
    assert third() == 45.0 and type(third()) is float
    assert callable(unread)
    assert backend.read_later(np.float32(1.25))() == 1.25  # a host scalar: read at once
