"""Layer l's backward pass (∂J/∂W^l = δ^{l+1} (a^l)ᵀ, δ^l = (W^l)ᵀ δ^{l+1} ⊙ σ'(a^l), its
row sums) in one CUDA kernel below a thin layer (gpudnn/kernels/cuda_thin.py, launched by
CupyKernels.layer_backward), against the generic twin (the two products, then act_backward),
its columns split over blocks or not; on a GPU (the CuPy backend) and on the CPU through
tests/cuda_emulator.py; the same bits on every run; wider layers, other layouts and dtypes
refused (the network then runs matmul + act_backward); NVRTC builds it for sm_90 at every
width with no register spills. Whole-network gradients through it: tests/test_gradients.py."""

import numpy as np
import pytest

from gpudnn.activations import ACTIVATIONS
from gpudnn.kernels import cuda_thin as thin
from gpudnn.kernels.cuda import PRELUDE, CupyKernels
from gpudnn.kernels.generic import GenericKernels

from helpers import emulated_cupy, launched as launches
from nvrtc import ptxas_spills

# float16: the stored result's rounding (half an ulp: 2^-11 relative) and float sums
TOL = {np.float32: dict(rtol=3e-5, atol=3e-5), np.float64: dict(rtol=1e-12, atol=1e-12),
       np.float16: dict(rtol=1e-3, atol=1e-4)}


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


def case(rng, m, n, B, dtype, sigma):
    """W (m, n), δ (m, B) and a^l = σ(z) (n, B) drawn from rng, in dtype."""
    W = rng.standard_normal((m, n)).astype(dtype)
    delta = rng.standard_normal((m, B)).astype(dtype)
    a = sigma.forward(rng.standard_normal((n, B)).astype(dtype), np.empty((n, B), dtype), np.empty((n, B), dtype))
    return W, delta, a


def twin(W, delta, a, sigma):
    """The generic twin's (dW, δ^l, db) on the host."""
    (m, n), dtype = W.shape, W.dtype
    dW, db = np.empty((m, n), dtype), np.empty((n, 1), dtype)
    out = GenericKernels(np).layer_backward(W, delta, a.copy(), sigma, dW, db)
    return dW, out, db


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "sigmoid", "tanh", "identity"])
def test_layer_backward_equals_twin(backend, rng, act, dtype):
    """∂J/∂W^l = δ aᵀ, δ^l = (W^l)ᵀ δ^{l+1} ⊙ σ'(a^l) written over a^l and db = its row sums:
    the thin kernel against the generic twin (two matmuls, then act_backward), its rows in
    one block or several, the last one partial, its columns split over blocks or not.
    float16 (mixed precision's passes: float arithmetic, one rounding on store) against the
    twin in float64 on the same float16 inputs, within float16's rounding."""
    k, dev, host = setup(backend)
    sigma = ACTIVATIONS[act]
    for m, n, B in [(1, 1, 1), (10, 9, 300), (3, 17, 3000), (16, 5, 40), (7, 23, 700)] + (
            [(10, 1024, 8192)] if backend.name == "cupy" else []):
        W, delta, a = case(rng, m, n, B, dtype, sigma)
        exact = (lambda M: M.astype(np.float64)) if dtype == np.float16 else (lambda M: M)  # noqa: E731
        dW_want, want, db_want = twin(exact(W), exact(delta), exact(a), sigma)
        Wd, dd, ad = dev(W), dev(delta), dev(a)
        dWd, dbd = dev(np.full((m, n), np.nan, dtype)), dev(np.full((n, 1), np.nan, dtype))
        assert k.fuses_layer_backward(Wd, dd, ad, sigma, dWd, dbd)
        assert k.layer_backward(Wd, dd, ad, sigma, dWd, dbd) is ad
        sums = dict(rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * np.sqrt(B))  # sums over B
        np.testing.assert_allclose(host(ad), want, **TOL[dtype], err_msg=f"δ {m}x{n}x{B}")
        np.testing.assert_allclose(host(dWd), dW_want, **sums, err_msg=f"dW {m}x{n}x{B}")
        np.testing.assert_allclose(host(dbd), db_want, **sums, err_msg=f"db {m}x{n}x{B}")


def test_the_same_bits_every_run(backend, rng):
    """No atomics: two runs, the columns split over blocks, give the same bits."""
    k, dev, host = setup(backend)
    m, n, B = 10, 20, 5000
    W, D = dev(rng.standard_normal((m, n), dtype=np.float32)), dev(rng.standard_normal((m, B), dtype=np.float32))
    A = rng.standard_normal((n, B), dtype=np.float32)
    runs = []
    for _ in range(2):
        a, dW, db = dev(A.copy()), dev(np.empty((m, n), np.float32)), dev(np.empty((n, 1), np.float32))
        k.layer_backward(W, D, a, ACTIVATIONS["relu"], dW, db)
        runs.append((host(a).copy(), host(dW).copy(), host(db).copy()))
    for x, y in zip(*runs):
        np.testing.assert_array_equal(x, y)


def test_what_the_fused_kernel_leaves_to_the_twin(backend, rng):
    """More than 16 rows of δ, an output activation (no σ' of its own), a float64 db or dW
    beside float32 arrays, a float16 dW and db beside float32 arrays, a transposed dW,
    thin=False: refused, and layer_backward then gives the twin's result (emulated: no thin
    launch)."""
    k, dev, host = setup(backend)
    off, _, _ = setup(backend, thin=False)
    relu, f32 = ACTIVATIONS["relu"], np.float32
    W, delta0, a0 = case(rng, 4, 30, 50, f32, relu)
    Wd, delta, a = dev(W), dev(delta0), dev(a0)
    dW, db = dev(np.zeros((4, 30), f32)), dev(np.zeros((30, 1), f32))
    wide = dev(rng.standard_normal((17, 30), dtype=f32))
    refused = [
        (k, wide, dev(rng.standard_normal((17, 50), dtype=f32)), a, relu, dev(np.zeros((17, 30), f32)), db),
        (k, Wd, delta, a, ACTIVATIONS["softmax"], dW, db),
        (k, Wd, delta, a, relu, dW, dev(np.empty((30, 1)))),
        (k, Wd, delta, a, relu, dev(np.empty((4, 30))), db),
        (k, Wd, delta, a, relu, dev(np.empty((30, 4), f32)).T, db),
        (k, Wd, delta, a, relu, dW.astype(np.float16), db.astype(np.float16)),
        (off, Wd, delta, a, relu, dW, db),
    ]
    for kernels, *args in refused:
        assert not kernels.fuses_layer_backward(*args)
    dW_want, want, db_want = twin(W, delta0, a0, relu)
    off.layer_backward(Wd, delta, a, relu, dW, db)
    np.testing.assert_allclose(host(a), want, **TOL[f32])
    np.testing.assert_allclose(host(dW), dW_want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(host(db), db_want, rtol=1e-5, atol=1e-4)
    if backend.name != "cupy":
        assert not any(n.startswith("thin_") for n in launches(k)), launches(k)
        assert not any(n.startswith("thin_") for n in launches(off))


def test_thin_source_compiles_with_nvrtc_and_keeps_its_sums_in_registers():
    """The kernel builds (the prelude and its source: one module, as CupyKernels compiles
    it) for Hopper (sm_90) with no GPU present at every width 1..MAXM, and ptxas spills no
    register in any dtype: rows(m) keeps a thread's m x rows sums of ∂J/∂W^l within the
    float32 bound of 128 registers. The source's launch constants are the launcher's; a width
    beyond MAXM is refused."""
    assert [thin.rows(m) for m in (1, 10, 16)] == [16, 7, 4]
    for m in range(1, thin.MAXM + 1):
        assert {f"-DTHIN_THREADS={thin.THREADS}", f"-DTHIN_ROWS={thin.rows(m)}"} <= set(thin.options(m))
        spills = ptxas_spills(PRELUDE + thin.SOURCE, thin.options(m))
        assert set(spills) == {f"thin_backward_{t}" for t in ("f32", "f64", "f16")}, spills
        assert not any(spills.values()), (m, spills)
    for bad in (0, thin.MAXM + 1, 2.0):
        with pytest.raises(ValueError, match="thin kernels take"):
            thin.options(bad)
