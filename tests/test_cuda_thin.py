"""δ^l = (W^l)ᵀ δ^{l+1} ⊙ σ'(a^l) in one CUDA kernel below a thin layer (gpudnn/kernels/
cuda_thin.py, launched by CupyKernels.product_act_backward), against the generic twin (the
product, then act_backward), its columns split over blocks or not; on a GPU (the CuPy
backend) and on the CPU through tests/cuda_emulator.py; the same bits on every run; wider
layers, other layouts and dtypes refused (the network then runs matmul + act_backward); NVRTC
builds it for sm_90. Whole-network gradients through it: tests/test_gradients.py."""

import numpy as np
import pytest

from gpudnn.activations import ACTIVATIONS
from gpudnn.kernels import cuda_thin as thin
from gpudnn.kernels.cuda import PRELUDE, CupyKernels
from gpudnn.kernels.generic import GenericKernels

from helpers import emulated_cupy, launched as launches
from nvrtc import assert_compiles

TOL = {np.float32: dict(rtol=3e-5, atol=3e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def setup(backend, **options):
    """(CupyKernels on ``backend``: CuPy's own on a GPU, emulated on NumPy; to_device; to_host)."""
    if backend.name == "cupy":
        return CupyKernels(backend.xp, **options), backend.xp.asarray, backend.to_numpy
    return CupyKernels(emulated_cupy(), **options), np.asarray, np.asarray


def test_split_columns_plan():
    """plan: a few row blocks split their columns until the grid fills the card, each split
    at least MIN_COLUMNS long; many row blocks, or a short batch, are not split."""
    splits, chunk = thin.plan(128, 8192, 132)  # 784-1024-1024-10's δ^2: 1024 rows in 8s
    assert splits * 128 >= 4 * 132 and chunk >= thin.MIN_COLUMNS and chunk % thin.THREADS == 0
    assert splits * chunk >= 8192 > (splits - 1) * chunk
    assert thin.plan(1000, 8192, 132) == (1, 8192)
    assert thin.plan(1, 500, 132) == (1, 512)
    assert thin.plan(1, 10**7, 132)[0] == thin.MAX_SPLITS


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "sigmoid", "tanh", "identity"])
def test_product_act_backward_equals_twin(backend, rng, act, dtype):
    """δ^l = (W^l)ᵀ δ^{l+1} ⊙ σ'(a^l) written over a^l, db = its row sums: the thin kernel
    against the generic twin (matmul, then act_backward), split over blocks or not."""
    k, dev, host = setup(backend)
    sigma = ACTIVATIONS[act]
    for m, n, B in [(1, 1, 1), (10, 9, 300), (3, 17, 3000), (16, 5, 40)] + ([(10, 1024, 8192)] if backend.name == "cupy" else []):
        W = rng.standard_normal((m, n)).astype(dtype)
        delta = rng.standard_normal((m, B)).astype(dtype)
        a = sigma.forward(rng.standard_normal((n, B)).astype(dtype), np.empty((n, B), dtype), np.empty((n, B), dtype))
        db_want = np.empty((n, 1), dtype)
        want = GenericKernels(np).product_act_backward(W.T, delta, a.copy(), sigma, db_want)
        Wd, dd, ad, dbd = dev(W), dev(delta), dev(a), dev(np.full((n, 1), np.nan, dtype))
        assert k.fuses_product(Wd.T, dd, ad, sigma, dbd)
        assert k.product_act_backward(Wd.T, dd, ad, sigma, dbd) is ad
        np.testing.assert_allclose(host(ad), want, **TOL[dtype], err_msg=f"{m}x{n}x{B}")
        np.testing.assert_allclose(host(dbd), db_want, rtol=TOL[dtype]["rtol"],
                                   atol=TOL[dtype]["atol"] * np.sqrt(B), err_msg=f"db {m}x{n}x{B}")


def test_the_same_bits_every_run(backend, rng):
    """No atomics: two runs, the columns split over blocks, give the same bits."""
    k, dev, host = setup(backend)
    m, n, B = 10, 20, 5000
    W, D = dev(rng.standard_normal((m, n), dtype=np.float32)), dev(rng.standard_normal((m, B), dtype=np.float32))
    A = rng.standard_normal((n, B), dtype=np.float32)
    runs = []
    for _ in range(2):
        a, db = dev(A.copy()), dev(np.empty((n, 1), np.float32))
        k.product_act_backward(W.T, D, a, ACTIVATIONS["relu"], db)
        runs.append((host(a).copy(), host(db).copy()))
    for x, y in zip(*runs):
        np.testing.assert_array_equal(x, y)


def test_what_the_fused_kernel_leaves_to_the_twin(backend, rng):
    """More than 16 rows of δ, an output activation (no σ' of its own), a float64 db beside
    float32 arrays, a column slice of W (low_memory's blocks), float16, thin=False: refused,
    and product_act_backward then gives the twin's result (emulated: no thin launch)."""
    k, dev, host = setup(backend)
    off, _, _ = setup(backend, thin=False)
    relu, f32 = ACTIVATIONS["relu"], np.float32
    W, a0 = rng.standard_normal((4, 30), dtype=f32), rng.standard_normal((30, 50), dtype=f32)
    delta, db = dev(rng.standard_normal((4, 50), dtype=f32)), dev(np.zeros((30, 1), f32))
    Wd, a = dev(W), dev(a0)
    refused = [
        (k, dev(rng.standard_normal((17, 30), dtype=f32)).T, dev(rng.standard_normal((17, 50), dtype=f32)), a, relu, db),
        (k, Wd.T, delta, a, ACTIVATIONS["softmax"], db),
        (k, Wd.T, delta, a, relu, dev(np.empty((30, 1)))),
        (k, dev(rng.standard_normal((4, 60), dtype=f32))[:, :30].T, delta, a, relu, db),
        (k, Wd.T.astype(np.float16), delta.astype(np.float16), a.astype(np.float16), relu, db.astype(np.float16)),
        (off, Wd.T, delta, a, relu, db),
    ]
    for kernels, *args in refused:
        assert not kernels.fuses_product(*args)
    db_want = np.empty((30, 1), f32)
    want = GenericKernels(np).product_act_backward(W.T, host(delta), a0.copy(), relu, db_want)
    off.product_act_backward(Wd.T, delta, a, relu, db)
    np.testing.assert_allclose(host(a), want, **TOL[f32])
    np.testing.assert_allclose(host(db), db_want, rtol=1e-5, atol=1e-4)
    if backend.name != "cupy":
        assert not any(n.startswith("thin_") for n in launches(k)), launches(k)
        assert not any(n.startswith("thin_") for n in launches(off))


def test_thin_source_compiles_with_nvrtc():
    """The kernel builds (the prelude and its source: one module, as CupyKernels compiles
    it) for Hopper (sm_90) with no GPU present, at the widths 1, 10 and MAXM; the source's
    launch constants are the launcher's; a width beyond MAXM is refused."""
    assert [thin.rows(m) for m in (10, 11)] == [8, 4]
    for m in (1, 10, thin.MAXM):
        assert {f"-DTHIN_THREADS={thin.THREADS}", f"-DTHIN_ROWS={thin.rows(m)}"} <= set(thin.options(m))
        assert_compiles(PRELUDE + thin.SOURCE, ("thin_delta_f32", "thin_delta_f64"), "gpudnn_thin.cu", thin.options(m))
    for bad in (0, thin.MAXM + 1, 2.0):
        with pytest.raises(ValueError, match="thin kernels take"):
            thin.options(bad)
