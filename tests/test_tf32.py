"""precision="tf32": float32 networks whose matmuls run on TF32 tensor cores (CuPy, compute
capability 8.0+). The CPU cases check the refusals and the switch's restore; the CuPy cases
(a GPU machine) check that TF32 is really used, only inside the passes, and that gradients
stay close to float32's."""

import numpy as np
import pytest

import gpudnn
from gpudnn.backend import _ComputeType
from gpudnn.data import train_test_split
from gpudnn.errors import ConfigError


def test_tf32_is_refused_where_it_cannot_run():
    with pytest.raises(ConfigError, match="needs the cupy backend"):
        gpudnn.Network([3, 4, 2], precision="tf32", backend="numpy")
    with pytest.raises(ConfigError, match="needs dtype='float32'"):
        gpudnn.Network([3, 4, 2], precision="tf32", dtype="float64", backend="numpy")


class _FakeLinalg:
    """Stands in for cupy._core._routines_linalg: one compute type per dtype."""

    COMPUTE_TYPE_TF32 = 7

    def __init__(self):
        self.types = {np.float32: 1}

    def get_compute_type(self, dtype):
        return self.types[dtype]

    def set_compute_type(self, dtype, compute):
        self.types[dtype] = compute


def test_the_compute_type_is_switched_for_a_pass_and_restored_even_on_error():
    linalg = _FakeLinalg()
    ctx = _ComputeType(linalg, np.float32, linalg.COMPUTE_TYPE_TF32)
    for _ in range(2):  # reusable
        with ctx:
            assert linalg.types[np.float32] == 7
        assert linalg.types[np.float32] == 1
    with pytest.raises(RuntimeError), ctx:
        raise RuntimeError("a failing pass")
    assert linalg.types[np.float32] == 1


def _pair(backend):
    if backend.name != "cupy":
        pytest.skip("TF32 runs on the CuPy backend only (the NumPy case is the refusal test)")
    if int(backend.xp.cuda.Device().compute_capability) < 80:
        pytest.skip("TF32 needs compute capability 8.0+")
    kw = dict(seed=1, backend=backend, dtype="float32")
    return gpudnn.Network([256, 512, 512, 10], **kw), gpudnn.Network([256, 512, 512, 10], precision="tf32", **kw)


def test_tf32_passes_use_tensor_cores_and_stay_close_to_float32(backend, rng):
    ref, net = _pair(backend)
    from cupy._core import _routines_linalg as linalg

    before = linalg.get_compute_type(np.float32)
    assert "precision='tf32'" in repr(net) and "precision" not in net.config()
    A0 = rng.standard_normal((256, 128)).astype(np.float32)
    Y = np.eye(10, dtype=np.float32)[:, rng.integers(0, 10, 128)]
    l_ref, l = ref.forward_backward(A0, Y), net.forward_backward(A0, Y)
    assert linalg.get_compute_type(np.float32) == before  # only inside the passes
    g_ref, g = backend.to_numpy(ref.grads), backend.to_numpy(net.grads)
    assert not np.array_equal(g, g_ref)  # TF32 rounding happened: the mode took effect
    assert l == pytest.approx(l_ref, rel=1e-2)
    assert np.linalg.norm(g - g_ref) <= 1e-2 * np.linalg.norm(g_ref)


def test_tf32_inside_fit_predict_and_evaluate(backend):
    """fit, predict and evaluate run their passes in TF32 and leave CuPy's setting as it was."""
    if backend.name != "cupy":
        pytest.skip("TF32 runs on the CuPy backend only (the NumPy case is the refusal test)")
    if int(backend.xp.cuda.Device().compute_capability) < 80:
        pytest.skip("TF32 needs compute capability 8.0+")
    from cupy._core import _routines_linalg as linalg

    # a shuffled split (load_digits' last rows are other writers: a float32 net trained on the
    # first 1500 scores 0.82 on them, on the H100 and on the CPU alike)
    Xtr, Xte, ytr, yte = train_test_split(*gpudnn.load_digits(), test_size=0.2, seed=0)
    before = linalg.get_compute_type(np.float32)
    scores = {}
    for precision in ("float32", "tf32"):
        net = gpudnn.Network([64, 64, 10], precision=precision, backend=backend, seed=0)
        net.fit(Xtr, ytr, epochs=10, batch_size=32, optimizer=gpudnn.optim.SGD(lr=0.05, momentum=0.9),
                standardize=True, verbose=0)
        assert linalg.get_compute_type(np.float32) == before
        scores[precision] = net.evaluate(Xte, yte)["accuracy"]
    # TF32's 10-bit mantissa in the products costs no accuracy against its float32 twin
    assert scores["float32"] > 0.95 and scores["tf32"] >= scores["float32"] - 0.02, scores
    np.testing.assert_array_equal(net.predict(Xte), net.classes_[net.predict_proba(Xte).argmax(axis=1)])
    assert linalg.get_compute_type(np.float32) == before
