"""The CPU emulation of CUDA kernels (tests/cuda_emulator.py) catches what it is there for:
wrong arithmetic, a missing __syncthreads(), a divergent barrier, and an argument whose C
type or dtype does not match the kernel's parameter; its modules keep their own shared
memory, and its warp shuffles sum as a GPU's do."""

import numpy as np
import pytest

from gpudnn.activations import ACTIVATIONS
from gpudnn.kernels import cuda
from gpudnn.kernels.cuda import CupyKernels
from gpudnn.kernels.generic import GenericKernels

from cuda_emulator import EmulatedCupy, EmulatedRawModule, EmulatorError
from helpers import needs_compiler

pytestmark = needs_compiler

TOY = r"""
extern "C" __global__ void scale(float* x, long long n, float s) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}
extern "C" __global__ void divergent(float* x) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    x[threadIdx.x] = 1.0f;
}
extern "C" __global__ void block_sum(const float* x, float* out) {  // one block, blockDim a power of two
    __shared__ float s[1024];
    s[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = s[0];
}
"""


def test_launch_covers_the_grid_and_checks_types():
    f = EmulatedRawModule(TOY).get_function("scale")
    x = np.arange(1000, dtype=np.float32)
    f((4,), (256,), (x, np.int64(x.size), np.float32(2)))
    np.testing.assert_array_equal(x, 2 * np.arange(1000, dtype=np.float32))
    with pytest.raises(EmulatorError, match="argument 1: the kernel takes int64, given int"):
        f((4,), (256,), (x, 1000, np.float32(2)))  # a bare Python int: its C type is CuPy's guess
    with pytest.raises(EmulatorError, match=r"argument 0: float32\* given a float64 array"):
        f((4,), (256,), (x.astype(np.float64), np.int64(1000), np.float32(2)))
    with pytest.raises(EmulatorError, match="takes 3 arguments, given 2"):
        f((4,), (256,), (x, np.int64(1000)))
    with pytest.raises(EmulatorError, match="invalid launch"):
        f((4,), (2048,), (x, np.int64(1000), np.float32(2)))


def test_shared_memory_reduction_and_divergent_barrier():
    m = EmulatedRawModule(TOY)
    x, out = np.arange(64, dtype=np.float32), np.zeros(1, np.float32)
    m.get_function("block_sum")((1,), (64,), (x, out))
    assert out[0] == x.sum()
    with pytest.raises(EmulatorError, match="wait at __syncthreads"):
        m.get_function("divergent")((1,), (8,), (np.zeros(8, np.float32),))


SHARED = r"""
template <typename T> __device__ void keep(T* x, int load) {  // load: buf <- x, else x <- buf
    __shared__ T buf[N];
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
        if (load) buf[i] = x[i]; else x[i] = buf[i];
    }
}
extern "C" __global__ void keep_f32(float* x, int load) { keep<float>(x, load); }
"""


def test_modules_keep_their_own_shared_memory():
    """Two modules of one source built with another size (as the thin kernels are, one per
    width) each have their own __shared__ array, though a template's: the larger one's
    writes do not reach the smaller's (GCC's unique symbols would merge them)."""
    small, large = EmulatedRawModule(SHARED, ("-DN=4",)), EmulatedRawModule(SHARED, ("-DN=64",))
    small.get_function("keep_f32")((1,), (32,), (np.ones(4, np.float32), np.int32(1)))
    large.get_function("keep_f32")((1,), (32,), (np.full(64, 2, np.float32), np.int32(1)))
    back = np.zeros(4, np.float32)
    small.get_function("keep_f32")((1,), (32,), (back, np.int32(0)))
    assert back.tolist() == [1.0] * 4


def test_warp_shuffles_sum_each_warp_into_its_first_lane():
    """__shfl_down_sync as the thin kernel's warp_sum uses it: lane 0 of each warp of a
    block of 96 threads gets its warp's sum; a lane whose partner is past lane 31 gets its own
    value, as on a GPU."""
    source = r"""
    extern "C" __global__ void warp_sums(const float* x, float* out) {
        float v = x[threadIdx.x];
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        out[threadIdx.x] = v;
    }
    """
    x, out = np.arange(96, dtype=np.float32), np.zeros(96, np.float32)
    EmulatedRawModule(source).get_function("warp_sums")((1,), (96,), (x, out))
    assert out[::32].tolist() == [x[w * 32:(w + 1) * 32].sum() for w in range(3)]
    # past lane 31 a lane gets its own value back, and adds it: doubled at each of 5 steps
    assert out[31] == 32 * x[31] and out[30] == 16 * (x[30] + x[31])


def _act_backward(source, rng):
    """(fused, twin) δ and db of act_backward, the fused one compiled from ``source``."""
    D = rng.standard_normal((5, 300))
    A = np.abs(rng.standard_normal((5, 300)))
    out = []
    for k in (CupyKernels(EmulatedCupy()), GenericKernels(np)):
        if isinstance(k, CupyKernels):
            k._module = EmulatedRawModule(source)
        d, db = D.copy(), np.empty((5, 1))
        k.act_backward(d, A, ACTIVATIONS["tanh"], np.empty_like(D), db)
        out.append((d, db))
    return out


@pytest.mark.parametrize("mutation", [
    ("s += (double)to_acc(v);", "s += 0.0;"),  # the bias gradient dropped
    ("return C(1) - a * a;", "return C(1) - a;"),  # a wrong tanh'
    ("partial[threadIdx.x + stride];\n        __syncthreads();",  # the reduction's barrier
     "partial[threadIdx.x + stride];\n"),
], ids=["db", "tanh-prime", "barrier"])
def test_a_broken_kernel_fails_the_comparison(rng, mutation):
    """The real source matches the twin, and each mutant of it does not."""
    (d, db), (d0, db0) = _act_backward(cuda.SOURCE, rng)
    np.testing.assert_allclose(d, d0, rtol=1e-13)
    np.testing.assert_allclose(db, db0, rtol=1e-12)
    old, new = mutation
    assert cuda.SOURCE.count(old) == 1
    (d, db), _ = _act_backward(cuda.SOURCE.replace(old, new), rng)
    assert not (np.allclose(d, d0, rtol=1e-6) and np.allclose(db, db0, rtol=1e-6))
