"""Every fused kernel equals its plain twin (gpudnn.kernels.generic) on the same buffers."""

import numpy as np
import pytest

from gpudnn.activations import ACTIVATIONS
from gpudnn.backend import get_backend
from gpudnn.errors import ConfigError
from gpudnn.kernels import get_kernels, numba_status
from gpudnn.kernels.generic import GenericKernels
from gpudnn.losses import LOSSES

pytestmark = pytest.mark.skipif(not numba_status()[0], reason=numba_status()[1])
HIDDEN = ["sigmoid", "tanh", "relu", "leaky_relu", "identity"]
SHAPES = [(1, 1), (3, 1), (1, 7), (17, 33), (128, 256)]
TOL = {"float32": dict(rtol=2e-6, atol=2e-6), "float64": dict(rtol=1e-13, atol=1e-14)}


@pytest.fixture(scope="module")
def pair():
    np_backend = get_backend("numpy")
    return GenericKernels(np), get_kernels("numba", np_backend)


def arrays(rng, shape, dtype, n=4):
    return [rng.standard_normal(shape).astype(dtype) for _ in range(n)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("act", HIDDEN)
def test_bias_act_equals_twin(pair, rng, act, shape, dtype):
    plain, fast = pair
    Z, _, _, _ = arrays(rng, shape, dtype)
    b = rng.standard_normal((shape[0], 1)).astype(dtype)
    Z1, Z2 = Z.copy(), Z.copy()
    plain.bias_act(Z1, b, ACTIVATIONS[act], np.empty_like(Z))
    fast.bias_act(Z2, b, ACTIVATIONS[act], np.empty_like(Z))
    np.testing.assert_allclose(Z2, Z1, **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("act", HIDDEN)
def test_act_backward_equals_twin(pair, rng, act, shape, dtype):
    plain, fast = pair
    D, Z, _, _ = arrays(rng, shape, dtype)
    A = Z.copy()
    ACTIVATIONS[act].forward(A, A, np.empty_like(A))  # a real σ(z) output
    outs = []
    for k in pair:
        d, db = D.copy(), np.empty((shape[0], 1), dtype)
        k.act_backward(d, A, ACTIVATIONS[act], np.empty_like(A), db)
        outs.append((d, db))
    (d1, db1), (d2, db2) = outs
    np.testing.assert_allclose(d2, d1, **TOL[dtype])
    np.testing.assert_allclose(db2, db1, rtol=TOL[dtype]["rtol"] * shape[1], atol=TOL[dtype]["atol"] * shape[1])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (10, 256), (3, 5)], ids=str)
@pytest.mark.parametrize("scale", [1.0, 1e4], ids=["normal", "extreme"])
@pytest.mark.parametrize("output,loss", [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"),
                                         ("identity", "mse"), ("tanh", "mse")])
def test_output_loss_delta_equals_twin(pair, rng, output, loss, shape, dtype, scale):
    n, B = shape
    Z0 = (rng.standard_normal(shape) * scale).astype(dtype)
    b = rng.standard_normal((n, 1)).astype(dtype)
    if loss == "cross_entropy":
        Y = np.eye(n, dtype=dtype)[:, rng.integers(0, n, B)]
    else:
        Y = rng.uniform(0, 1, shape).astype(dtype)
    results = []
    for k in pair:
        Z, A, delta, db = Z0.copy(), np.empty_like(Z0), np.empty_like(Z0), np.empty((n, 1), dtype)
        total = k.output_loss_delta(Z, b, A, Y, delta, db, ACTIVATIONS[output], LOSSES[loss],
                                    np.empty_like(Z0), np.empty_like(Z0))
        results.append((float(total), Z, A, delta, db))
    (t1, *r1), (t2, *r2) = results
    assert np.isfinite(t2)
    assert t2 == pytest.approx(t1, rel=TOL[dtype]["rtol"] * 10, abs=TOL[dtype]["atol"] * B * n * scale)
    for a1, a2 in zip(r1, r2):
        np.testing.assert_allclose(a2, a1, rtol=TOL[dtype]["rtol"] * 4, atol=TOL[dtype]["atol"] * max(n, B))


def test_non_contiguous_buffers_fall_back_to_the_twin(pair, rng):
    plain, fast = pair
    Z = rng.standard_normal((6, 8))[:, ::2]
    b = rng.standard_normal((6, 1))
    Z1, Z2 = Z.copy(order="F"), Z.copy(order="F")  # F-ordered: not C-contiguous
    plain.bias_act(Z1, b, ACTIVATIONS["relu"], np.empty_like(Z1))
    fast.bias_act(Z2, b, ACTIVATIONS["relu"], np.empty_like(Z2))
    np.testing.assert_array_equal(Z1, Z2)


def test_kernel_selection():
    b = get_backend("numpy")
    assert get_kernels("auto", b).name == "numba"
    assert get_kernels("generic", b).name == "generic"
    with pytest.raises(ConfigError, match="kernels must be one of"):
        get_kernels("fastest", b)
