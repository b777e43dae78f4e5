"""The tiled CUDA GEMM (gpudnn/kernels/cuda_gemm.py), run on the CPU by tests/cuda_emulator.py
through its own launcher: every transpose combination, awkward shapes, K split or not,
float32 and float64 against np.matmul; a mutant fails; NVRTC builds it for sm_90; inside a
network step it gives the gradients np.matmul gives."""

import numpy as np
import pytest

from gpudnn.backend import get_backend
from gpudnn.kernels import cuda_gemm
from gpudnn.kernels.cuda_gemm import TiledGemm, _plan

from cuda_emulator import EmulatedCupy, EmulatedRawModule
from helpers import batch, emulated_cupy, make, needs_compiler
from nvrtc import assert_compiles


TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def operand(rng, rows, cols, transposed, dtype):
    """A (rows, cols) operand: C-contiguous, or the transposed view of a C-contiguous array."""
    if transposed:
        return np.ascontiguousarray(rng.standard_normal((cols, rows)).astype(dtype)).T
    return rng.standard_normal((rows, cols)).astype(dtype)


def check(g, rng, M, N, K, ta, tb, dtype):
    A, B = operand(rng, M, K, ta, dtype), operand(rng, K, N, tb, dtype)
    C = np.full((M, N), np.nan, dtype=dtype)
    assert g(A, B, out=C) is C
    want = np.matmul(A.astype(np.float64), B.astype(np.float64))
    np.testing.assert_allclose(C, want, **TOL[dtype])


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (7, 17, 33), (33, 1, 7), (130, 7, 17), (17, 130, 1), (64, 64, 16),
                                   (65, 63, 130)])
def test_matches_matmul(rng, M, N, K, ta, tb, dtype):
    g = TiledGemm(EmulatedCupy())
    check(g, rng, M, N, K, ta, tb, dtype)
    assert g.launches == 1


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,N,K", [(7, 17, 1000), (1, 33, 700), (70, 3, 530)])
def test_split_k_matches_matmul(rng, M, N, K, dtype):
    """Long K, few tiles: K is split, the partial sums reduced by the second kernel."""
    assert _plan(M, N, K)[2] > 1
    g = TiledGemm(EmulatedCupy())
    check(g, rng, M, N, K, False, True, dtype)  # δ aᵀ: the product that needs the split
    check(g, rng, M, N, K, True, False, dtype)
    launched = {name: f.launches for name, f in g._module._functions.items()}
    assert launched[f"gemm_reduce_{'f32' if dtype == np.float32 else 'f64'}"] == 2


def test_plan():
    assert _plan(64, 64, 65536)[2:] == (256, 256)  # δ aᵀ of 64-64 @ 65536: one tile, 256 splits
    assert _plan(64, 65536, 64)[2] == 1  # W a: 1024 tiles
    assert _plan(128, 64, 256)[2] == 1  # the small net: no split under MIN_KCHUNK
    for M, N, K in [(7, 17, 1000), (1, 1, 257), (300, 300, 100000)]:
        tm, tn, splits, kchunk = _plan(M, N, K)
        assert kchunk % cuda_gemm.BK == 0 and (splits - 1) * kchunk < K <= splits * kchunk


@needs_compiler
def test_column_slices_and_fallbacks(rng):
    """Strided operands (low_memory's W[:, r0:r1].T) are read in place; what the kernel does
    not take (float16, no out) goes to np.matmul."""
    g = TiledGemm(EmulatedCupy())
    W = rng.standard_normal((9, 40))
    D = rng.standard_normal((9, 21))
    C = np.empty((13, 21))
    g(W[:, 5:18].T, D, out=C)
    np.testing.assert_allclose(C, W[:, 5:18].T @ D, rtol=1e-12)
    assert g.launches == 1
    h = W.astype(np.float16)
    np.testing.assert_array_equal(g(h[:, :9], h[:, :9]), np.matmul(h[:, :9], h[:, :9]))
    assert g.launches == 1


@needs_compiler
@pytest.mark.parametrize("mutation", [
    ("acc[i][j] += a[i] * b[j];", "acc[i][j] = a[i] * b[j];"),  # the sum over K lost
    ("        __syncthreads();\n    }\n    bool whole", "    }\n    bool whole"),  # the tile's second barrier
    ("for (long long p = 1; p < splits; ++p)", "for (long long p = 1; p < splits - 1; ++p)"),  # a split dropped
], ids=["accumulate", "barrier", "reduce"])
def test_a_broken_kernel_fails(rng, mutation):
    old, new = mutation
    assert cuda_gemm.SOURCE.count(old) == 1
    g = TiledGemm(EmulatedCupy())
    g._module = EmulatedRawModule(cuda_gemm.SOURCE.replace(old, new))
    with pytest.raises(AssertionError):
        check(g, rng, 70, 33, 600, False, True, np.float64)  # two K tiles and three splits


def test_cuda_gemm_source_compiles_with_nvrtc():
    for blocks in (1, 2):  # TiledGemm(min_blocks=): the launch bound of gemm
        assert_compiles(cuda_gemm.SOURCE, ("gemm_f32", "gemm_f64", "gemm_reduce_f32", "gemm_reduce_f64"),
                        "gpudnn_gemm.cu", ("--std=c++14", f"-DMIN_BLOCKS={blocks}"))


@needs_compiler
@pytest.mark.parametrize("low_memory", [False, True])
@pytest.mark.parametrize("output,loss", [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy")])
def test_network_step_through_the_tiled_gemm(rng, output, loss, low_memory):
    """Network._matmul routed to the emulated GEMM: every product of a step goes through it
    (3L - 1 of them, more in row blocks with low_memory) and the gradients are np.matmul's."""
    backend = get_backend("numpy")
    sizes = [7, 17, 33, 5 if output == "softmax" else 1]
    nets = [make(sizes, backend, output=output, loss=loss, seed=4, low_memory=low_memory) for _ in range(2)]
    g = TiledGemm(EmulatedCupy())
    nets[1]._matmul = g
    A0, Y = batch(nets[0], 300, rng)  # K = 300 in δ aᵀ: split
    losses = [net.forward_backward(A0, Y) for net in nets]
    assert g.launches >= 3 * nets[1].n_layers - 1
    assert losses[1] == pytest.approx(losses[0], rel=1e-13)
    np.testing.assert_allclose(nets[1].grads, nets[0].grads, rtol=1e-11, atol=1e-13)


def _gemm_for(backend):
    """The tiled GEMM on ``backend``: CuPy's own on a GPU, the emulated one on NumPy."""
    if backend.name == "cupy":
        return TiledGemm(backend.xp)
    return TiledGemm(emulated_cupy())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_on_each_backend(backend, rng, dtype):
    """The same cases on the GPU (the real kernel) and on the CPU (emulated), against a
    float64 product on the host: the transposes, a split K, and a narrow net's δ aᵀ."""
    g, xp = _gemm_for(backend), backend.xp
    big = backend.name == "cupy"
    cases = [(7, 17, 33), (130, 65, 300), (64, 64, 65536 if big else 2000), (1, 64, 4096 if big else 700)]
    for M, N, K in cases:
        for ta in (False, True):
            for tb in (False, True):
                A, B = operand(rng, M, K, ta, dtype), operand(rng, K, N, tb, dtype)
                dA = xp.asarray(np.ascontiguousarray(A.T)).T if ta else xp.asarray(A)
                dB = xp.asarray(np.ascontiguousarray(B.T)).T if tb else xp.asarray(B)
                C = xp.empty((M, N), dtype=dtype)
                g(dA, dB, out=C)
                want = A.astype(np.float64) @ B.astype(np.float64)
                scale = np.abs(A).astype(np.float64) @ np.abs(B).astype(np.float64)
                err = np.max(np.abs(backend.to_numpy(C) - want) / scale)
                assert err < (1e-5 if dtype == "float32" else 1e-13), (M, N, K, ta, tb, err)


@needs_compiler
def test_min_blocks_is_checked_and_changes_nothing_but_the_bound(rng):
    """TiledGemm(min_blocks=2): the same results (only the registers the compiler may use
    differ, emulated here); other values refused."""
    g = TiledGemm(EmulatedCupy(), min_blocks=2)
    check(g, rng, 65, 63, 130, True, False, np.float32)
    for bad in (0, 3, True, 1.0):
        with pytest.raises(ValueError, match="min_blocks"):
            TiledGemm(EmulatedCupy(), min_blocks=bad)


@needs_compiler
def test_more_row_tiles_than_a_grid_takes_go_to_matmul(rng, monkeypatch):
    """CUDA takes at most 65535 blocks along y, where the row tiles go (a layer over 4
    million units wide): such a product goes to xp.matmul instead of failing to launch."""
    monkeypatch.setattr(cuda_gemm, "MAX_GRID_Y", 1)
    g = TiledGemm(EmulatedCupy())
    A, B = rng.normal(size=(65, 9)), rng.normal(size=(9, 5))  # two row tiles
    out = np.empty((65, 5))
    np.testing.assert_array_equal(g(A, B, out=out), A @ B)
    assert g.launches == 0
    g(A[:64], B, out=out[:64])  # one tile: launched
    assert g.launches == 1
