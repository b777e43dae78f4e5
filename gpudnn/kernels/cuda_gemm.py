"""A tiled GEMM in CUDA source, for small layers and for CUDA graphs: C = op(A) op(B).

cuBLAS is what ``xp.matmul`` calls on CuPy, and CuPy refuses cuBLAS calls while a stream
is captured into a CUDA graph; a step whose three products (W a, δ aᵀ, Wᵀ δ) go through
this kernel instead can be captured whole (issue 5). It is not meant to beat cuBLAS on
large layers.

Letters: C is (M, N), op(A) is (M, K), op(B) is (K, N). Each operand is given by its data
pointer and two element strides (row, column), so a transposed view of a C-contiguous
array (``W.T``, ``a.T``) or a column slice of one is read where it lies: no copy, and no
transpose flag. Strides must be positive (the launcher falls back to ``xp.matmul``
otherwise, and for dtypes other than float32 and float64).

    gemm_<T>(A, B, C, M, N, K, sa0, sa1, sb0, sb1, sc0, sc1, kchunk)
        one block of 256 threads per 64x64 tile of C (grid x: column tiles times K splits,
        grid y: row tiles); K in steps of 16 through shared memory, each thread keeping a
        4x4 set of C's entries (rows ty + 16 i, columns tx + 16 j: the stores of a warp
        are contiguous). A tile is loaded along whichever of its axes is contiguous in
        memory, so the loads coalesce for a transposed operand too. With more than one K
        split (kchunk < K), split s sums K in [s·kchunk, (s+1)·kchunk) into the scratch
        W[s] (C-contiguous (splits, M, N)), and
    gemm_reduce_<T>(W, C, M, N, splits, sc0, sc1)
        C ← Σ_s W[s], in split order (deterministic: no atomics).

K is split when C has few tiles and K is long (δ aᵀ of a narrow layer at a large batch:
64x64 outputs summed over 65536 samples would be one block otherwise). Accumulation is in T.
The scratch is the launcher's, grown on first use and kept: a step of fixed shapes
allocates nothing after its first call (what a CUDA graph capture needs).

tests/cuda_emulator.py runs this source on the CPU through the launcher below; a CPU-only
test compiles it to an sm_90 cubin with NVRTC.
"""

from __future__ import annotations

import numpy as np

SOURCE = r"""
#define TILE 64
#define BK 16
#define THREADS 256
// MIN_BLOCKS: blocks of gemm an SM must hold at once (-DMIN_BLOCKS=, TiledGemm's min_blocks),
// its launch bound: 1 leaves the compiler 255 registers a thread (it takes ~160: one block an
// SM); 2 bounds it to 128 (no spills under NVRTC 13.2), two blocks an SM
#ifndef MIN_BLOCKS
#define MIN_BLOCKS 1
#endif

template <typename T>
__device__ void gemm(const T* A, const T* B, T* C, long long M, long long N, long long K,
                     long long sa0, long long sa1, long long sb0, long long sb1,
                     long long sc0, long long sc1, long long kchunk) {
    // As[k][i] = op(A)[m0 + i, k0 + k], Bs[k][j] = op(B)[k0 + k, n0 + j]; a row is padded by
    // one element so that a load along k (consecutive threads, rows TILE + 1 apart) spreads
    // over the banks instead of hitting one bank 16 times
    __shared__ T As[BK][TILE + 1];
    __shared__ T Bs[BK][TILE + 1];
    long long tiles_n = (N + TILE - 1) / TILE;
    long long split = blockIdx.x / tiles_n;
    long long n0 = (blockIdx.x % tiles_n) * TILE, m0 = (long long)blockIdx.y * TILE;
    long long kbeg = split * kchunk, kend = kbeg + kchunk < K ? kbeg + kchunk : K;
    int t = threadIdx.x, tx = t % 16, ty = t / 16;
    T acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = T(0);
    bool a_k_contiguous = sa1 == 1, b_n_contiguous = sb1 == 1;
    for (long long k0 = kbeg; k0 < kend; k0 += BK) {
        for (int q = 0; q < (BK * TILE) / THREADS; ++q) {
            int e = t + q * THREADS;
            // A's tile: consecutive threads along k when A's rows are contiguous, else along i
            int i = a_k_contiguous ? e / BK : e % TILE, k = a_k_contiguous ? e % BK : e / TILE;
            long long gi = m0 + i, gk = k0 + k;
            As[k][i] = (gi < M && gk < kend) ? A[gi * sa0 + gk * sa1] : T(0);
            // B's tile: consecutive threads along j when B's rows are contiguous, else along k
            int j = b_n_contiguous ? e % TILE : e / BK, kb = b_n_contiguous ? e / TILE : e % BK;
            long long gj = n0 + j, gkb = k0 + kb;
            Bs[kb][j] = (gj < N && gkb < kend) ? B[gkb * sb0 + gj * sb1] : T(0);
        }
        __syncthreads();
        for (int k = 0; k < BK; ++k) {
            T a[4], b[4];
            for (int i = 0; i < 4; ++i) a[i] = As[k][ty + 16 * i];
            for (int j = 0; j < 4; ++j) b[j] = Bs[k][tx + 16 * j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
    bool whole = kchunk >= K;  // one split: straight into C, else into the scratch W[split]
    T* out = whole ? C : C + split * M * N;
    long long r0 = whole ? sc0 : N, r1 = whole ? sc1 : 1;
    for (int i = 0; i < 4; ++i) {
        long long gi = m0 + ty + 16 * i;
        if (gi >= M) continue;
        for (int j = 0; j < 4; ++j) {
            long long gj = n0 + tx + 16 * j;
            if (gj < N) out[gi * r0 + gj * r1] = acc[i][j];
        }
    }
}

template <typename T>
__device__ void gemm_reduce(const T* W, T* C, long long M, long long N, long long splits,
                            long long sc0, long long sc1) {
    long long MN = M * N;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < MN;
         e += (long long)gridDim.x * blockDim.x) {
        T s = W[e];
        for (long long p = 1; p < splits; ++p) s += W[p * MN + e];
        C[(e / N) * sc0 + (e % N) * sc1] = s;
    }
}

#define INSTANTIATE(T, SUFFIX)                                                                \
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) gemm_##SUFFIX(              \
        const T* A, const T* B, T* C, long long M, long long N, long long K,                 \
        long long sa0, long long sa1, long long sb0, long long sb1,                          \
        long long sc0, long long sc1, long long kchunk) {                                   \
    gemm<T>(A, B, C, M, N, K, sa0, sa1, sb0, sb1, sc0, sc1, kchunk); }                      \
extern "C" __global__ void gemm_reduce_##SUFFIX(const T* W, T* C, long long M, long long N,  \
        long long splits, long long sc0, long long sc1) {                                   \
    gemm_reduce<T>(W, C, M, N, splits, sc0, sc1); }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
"""

SUFFIX = {"f": "f32", "d": "f64"}
TILE, BK, THREADS = 64, 16, 256
TARGET_BLOCKS = 264  # split K until about this many blocks (2 per SM of an H100 SXM)
MIN_KCHUNK = 256  # ... but give each split at least this much of K
REDUCE_BLOCKS = 1024


MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y, where the row tiles go


def _plan(M, N, K):
    """(tiles_m, tiles_n, splits, kchunk) for C (M, N) summed over K."""
    tiles_m, tiles_n = -(-M // TILE), -(-N // TILE)
    splits = 1
    if K > MIN_KCHUNK:
        splits = max(1, min(-(-K // MIN_KCHUNK), TARGET_BLOCKS // (tiles_m * tiles_n)))
    kchunk = -(-K // splits)
    kchunk = -(-kchunk // BK) * BK  # whole BK steps per split
    splits = -(-K // kchunk)
    return tiles_m, tiles_n, splits, kchunk


class TiledGemm:
    """``out ← A @ B`` with the tiled kernel: a drop-in for ``xp.matmul(A, B, out=out)``
    (``Network._matmul``). ``xp`` is CuPy, or anything with its ``RawModule`` (the tests'
    CPU emulation). Other dtypes, negative strides or a missing ``out`` go to ``xp.matmul``.
    ``launches`` counts the tiled products."""

    def __init__(self, xp, min_blocks=1):
        """``min_blocks``: the gemm kernel's launch bound (1 or 2 blocks an SM at once;
        gpu_bench's graphs part times both)."""
        if type(min_blocks) is not int or min_blocks not in (1, 2):
            raise ValueError(f"min_blocks must be 1 or 2, got {min_blocks!r}")
        self.xp, self.min_blocks = xp, min_blocks
        self._module = None
        self._scratch = {}  # dtype char -> flat scratch of the K splits' partial sums
        self.launches = 0

    def _fn(self, name, char):
        if self._module is None:
            self._module = self.xp.RawModule(code=SOURCE, options=("--std=c++14", f"-DMIN_BLOCKS={self.min_blocks}"))
        return self._module.get_function(f"{name}_{SUFFIX[char]}")

    def __call__(self, A, B, out=None):
        char = A.dtype.char
        if (out is None or char not in SUFFIX or B.dtype.char != char or out.dtype.char != char
                or A.ndim != 2 or B.ndim != 2 or out.ndim != 2):
            return self.xp.matmul(A, B, out=out)
        (M, K), (K2, N) = A.shape, B.shape
        if K2 != K or out.shape != (M, N):
            raise ValueError(f"matmul shapes {A.shape} @ {B.shape} -> {out.shape} do not match")
        size = A.itemsize
        strides = [s // size for s in (*A.strides, *B.strides, *out.strides)]
        if any(s <= 0 for s in strides) or M == 0 or N == 0:
            return self.xp.matmul(A, B, out=out)
        if K == 0:
            out.fill(0)
            return out
        tiles_m, tiles_n, splits, kchunk = _plan(M, N, K)
        if tiles_m > MAX_GRID_Y:  # a layer over 4 million units wide: more row tiles than a grid takes
            return self.xp.matmul(A, B, out=out)
        target = out
        if splits > 1:
            scratch = self._scratch.get(char)
            if scratch is None or scratch.size < splits * M * N:
                scratch = self._scratch[char] = self.xp.empty(splits * M * N, dtype=A.dtype)
            target = scratch
        i64 = np.int64
        self._fn("gemm", char)((tiles_n * splits, tiles_m), (THREADS,),
                               (A, B, target, i64(M), i64(N), i64(K), *map(i64, strides), i64(kchunk)))
        if splits > 1:
            blocks = min(-(-(M * N) // THREADS), REDUCE_BLOCKS)
            self._fn("gemm_reduce", char)((blocks,), (THREADS,), (target, out, i64(M), i64(N), i64(splits),
                                                                 i64(strides[4]), i64(strides[5])))
        self.launches += 1
        return out
