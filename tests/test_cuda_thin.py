"""The thin layer's CUDA kernels (gpudnn/kernels/cuda_thin.py, launched by CupyKernels): W a,
δ aᵀ (its columns split or not) and δ^l = (W^l)ᵀ δ^{l+1} ⊙ σ'(a^l) with its row sums, against
a float64 product on the host and against the generic twin; on a GPU (the CuPy backend) and on
the CPU through tests/cuda_emulator.py; the same bits on every run; wider layers, other
layouts and dtypes left to cuBLAS; NVRTC builds them for sm_90. Whole-network gradients
through them: tests/test_gradients.py."""

import numpy as np
import pytest

from gpudnn.activations import ACTIVATIONS
from gpudnn.kernels import cuda_thin as thin
from gpudnn.kernels.cuda import SOURCE, CupyKernels
from gpudnn.kernels.generic import GenericKernels

from helpers import emulated_cupy, launched as launches
from nvrtc import assert_compiles

TOL = {np.float32: dict(rtol=3e-5, atol=3e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def setup(backend, **options):
    """(CupyKernels on ``backend``: CuPy's own on a GPU, emulated on NumPy; to_device; to_host)."""
    if backend.name == "cupy":
        return CupyKernels(backend.xp, **options), backend.xp.asarray, backend.to_numpy
    return CupyKernels(emulated_cupy(), **options), np.asarray, np.asarray


def shapes(backend):
    """(m, K, N) cases: thin rows 1..16, long and short products; the GPU's include a batch
    that splits δ aᵀ's columns many ways (the emulator's stay small: every thread a fiber)."""
    cases = [(1, 1, 1), (3, 7, 33), (10, 100, 300), (16, 33, 2500), (1, 64, 3000), (10, 9, 5)]
    if backend.name == "cupy":
        cases += [(10, 1024, 8192), (1, 64, 65536), (7, 4097, 1031)]
    return cases


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_and_weight_gradient_products(backend, rng, dtype):
    """W a and δ aᵀ through the thin kernels equal the float64 product (to rounding)."""
    k, dev, host = setup(backend)
    for m, K, N in shapes(backend):
        W, A = rng.standard_normal((m, K)).astype(dtype), rng.standard_normal((K, N)).astype(dtype)
        D = rng.standard_normal((m, N)).astype(dtype)
        Z, dW = dev(np.full((m, N), np.nan, dtype)), dev(np.full((m, K), np.nan, dtype))
        Ad = dev(A)
        assert k.matmul(dev(W), Ad, out=Z) is Z
        assert k.matmul(dev(D), Ad.T, out=dW) is dW
        scale = np.sqrt(max(K, N))  # the sums' size grows as the root of their length
        np.testing.assert_allclose(host(Z), W.astype(np.float64) @ A, rtol=TOL[dtype]["rtol"],
                                   atol=TOL[dtype]["atol"] * scale, err_msg=f"W a {m}x{K}x{N}")
        np.testing.assert_allclose(host(dW), D.astype(np.float64) @ A.T.astype(np.float64), rtol=TOL[dtype]["rtol"],
                                   atol=TOL[dtype]["atol"] * scale, err_msg=f"δ aᵀ {m}x{N}x{K}")
    if backend.name != "cupy":
        got, t = launches(k), "f32" if dtype == np.float32 else "f64"
        # every product thin (a 1x1 aᵀ, C-contiguous as it is, goes through thin_wa)
        assert got["thin_wa_" + t] + got["thin_dw_" + t] == 2 * len(shapes(backend)), got
        assert got["thin_reduce_" + t] >= 2, got  # columns split


def test_split_columns_plan():
    """plan: a few row blocks split their columns until the grid fills the card, each split
    at least MIN_COLUMNS long; many row blocks, or a short batch, are not split."""
    splits, chunk = thin.plan(128, 8192, 132)  # 784-1024-1024-10's δ aᵀ: 1024 rows in 8s
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
    """No atomics: two runs of each kernel, the columns split, give the same bits."""
    k, dev, host = setup(backend)
    m, n, B = 10, 20, 5000
    W, D = dev(rng.standard_normal((m, n), dtype=np.float32)), dev(rng.standard_normal((m, B), dtype=np.float32))
    A = dev(rng.standard_normal((n, B), dtype=np.float32))
    relu = ACTIVATIONS["relu"]
    runs = []
    for _ in range(2):
        Z, dW, a, db = (dev(np.empty(s, np.float32)) for s in [(m, B), (m, n), (n, B), (n, 1)])
        a[...] = A
        k.matmul(W, A, out=Z)
        k.matmul(D, A.T, out=dW)
        k.product_act_backward(W.T, D, a, relu, db)
        runs.append([host(x).copy() for x in (Z, dW, a, db)])
    for x, y in zip(*runs):
        np.testing.assert_array_equal(x, y)


def test_what_the_thin_kernels_leave_to_cublas(backend, rng):
    """More than 16 rows, float16, a strided W, thin=False: matmul's
    results (and, emulated, no thin launch); the fused δ^l is refused for them too."""
    k, dev, host = setup(backend)
    off, devoff, _ = setup(backend, thin=False)
    relu = ACTIVATIONS["relu"]
    f32 = np.float32
    W17, A = dev(rng.standard_normal((17, 30), dtype=f32)), dev(rng.standard_normal((30, 50), dtype=f32))
    cases = [
        (W17, A, np.empty((17, 50), f32)),  # too wide
        (dev(rng.standard_normal((4, 30)).astype(np.float16)), dev(rng.standard_normal((30, 50)).astype(np.float16)),
         np.empty((4, 50), np.float16)),  # float16: cuBLAS's tensor cores
        (dev(rng.standard_normal((30, 4), dtype=f32)).T, A, np.empty((4, 50), f32)),  # W a strided view
    ]
    for W, Aop, out in cases:
        out = dev(out)
        k.matmul(W, Aop, out=out)
        np.testing.assert_allclose(host(out), host(W).astype(np.float64) @ host(Aop), rtol=2e-2, atol=2e-2)
    W = dev(rng.standard_normal((4, 30), dtype=f32))
    a, db = dev(rng.standard_normal((30, 50), dtype=f32)), dev(np.empty((30, 1), f32))
    delta = dev(rng.standard_normal((4, 50), dtype=f32))
    assert not k.fuses_product(W17.T, dev(rng.standard_normal((17, 50), dtype=f32)), a, relu, db)
    assert not k.fuses_product(W.T, delta, a, ACTIVATIONS["softmax"], db)  # no σ' of its own
    assert not k.fuses_product(W.T, delta, a, relu, dev(np.empty((30, 1))))  # float64 db
    assert not off.fuses_product(W.T, delta, a, relu, db)
    off.matmul(W, a, out=dev(np.empty((4, 50), f32)))
    if backend.name != "cupy":
        assert not any(n.startswith("thin_") for n in launches(k)), launches(k)
        assert not any(n.startswith("thin_") for n in launches(off))


def test_thin_source_compiles_with_nvrtc():
    """The fused and thin kernels build together (one module, as CupyKernels compiles them)
    for Hopper (sm_90) with no GPU present, at the widths 1, 10 and MAXM; the source's
    launch constants are the launcher's; a width beyond MAXM is refused."""
    assert f"#define THIN_WARPS {thin.WARPS}\n" in thin.SOURCE
    assert "#define THIN_ROWS (THIN_M <= 10 ? 8 : 4)\n" in thin.SOURCE and [thin.rows(m) for m in (10, 11)] == [8, 4]
    for m in (1, 10, thin.MAXM):
        assert_compiles(SOURCE + thin.SOURCE, ("thin_wa_f32", "thin_dw_f64", "thin_reduce_f32", "thin_delta_f32",
                                               "thin_delta_f64", "bias_act_f32"), "gpudnn_thin.cu", thin.options(m))
    for bad in (0, thin.MAXM + 1, 2.0):
        with pytest.raises(ValueError, match="thin kernels take"):
            thin.options(bad)
