"""δ^l = (W^l)ᵀ δ^{l+1} ⊙ σ'(a^l) in one CUDA kernel where layer l+1 is thin (at most MAXM
units: an output layer of 10 classes, or of one value).

Through cuBLAS that is two passes over a^l's size: the product writes (W^l)ᵀ δ^{l+1}, then
act_backward reads it back with a^l and writes δ^l. Here each element of δ^l is the short
sum x_kj = Σ_i W[i][k] δ[i][j] (i in order) made where it is stored, so a^l is read once
and δ^l written once:

    thin_delta_<T>(W, D, A, out, db, partials, K, N, chunk, kind)
        out (K, N) ← (Wᵀ D) ⊙ σ'(A), db (K) ← Σ_j out: block (x, y) takes THIN_ROWS rows of
        A (8; 4 past 10 units) over split y's columns [y·chunk, (y+1)·chunk), one column a
        thread, each column's m values of δ loaded once for its rows; the rows' W^l in
        shared memory. out may be A (each element read before it is written, by the thread
        that writes it). The row sums as act_backward's: doubles, a fixed order (no atomics:
        the same bits every run), into db, or into partials[k · splits + y] summed by
        kernels.cuda's row_sums when the columns are split

m is fixed when the source is compiled (``-DTHIN_M=m``: :func:`options`; CupyKernels keeps a
module per width it meets, usually one).

Measured on an H100 (float32, 2026-11-27; benchmarks/results/gpu_bench_thin_h100.json):
784-1024-1024-10 at a batch of 8192, δ^2 in 0.031 ms at 2.2 TB/s, where cuBLAS's product
(0.022 ms) and act_backward (0.038 ms) took 0.060; on 784-4096-4096-4096-10, 0.12 ms where
they took 0.20. Two products of such a layer were also written this way and dropped: W a
(Z = W^l a^l) and δ aᵀ (∂J/∂W^l), reading a^l once each as well, ran at 0.3-1.3 TB/s, slower
than cuBLAS on three of the four nets (W a 10x1024·1024x8192: 0.094 ms against 0.025; δ aᵀ
10x8192·8192x4096: 0.18 against 0.10; faster only for δ aᵀ 10x8192·8192x1024, 0.030 against
0.042). A first build with m a runtime bound ran 2-7x slower still: each load and FMA sat
behind a branch of its own.

Tested against the generic twin (tests/test_cuda_thin.py; whole-network gradients in
tests/test_gradients.py), on a GPU and through tests/cuda_emulator.py. The module is
:mod:`gpudnn.kernels.cuda`'s PRELUDE (σ', the accumulation type) and this source.
"""

from __future__ import annotations

MAXM = 16  # the widest layer l+1 (rows of W^l, of δ^{l+1}) the kernel takes: a module per width
THREADS = 256  # threads a block (the source's THIN_THREADS, passed by options())

BLOCKS_PER_SM = 4  # split the columns until the grid has about this many blocks an SM
MIN_COLUMNS = 1024  # ... but give each split at least this many columns
MAX_SPLITS = 64

SOURCE = r"""
// THIN_M, the units of layer l+1 (rows of W^l and δ^{l+1}), is fixed when the module is
// compiled (-DTHIN_M=m, one module per width): a column's m values stay in registers and the
// loops over them unroll with no branch; a block whose rows all lie in a^l runs a body with
// no bound checks.
// THIN_THREADS (threads a block) and THIN_ROWS (rows of a^l a block) come with it, from
// options() below: the launcher's own numbers.
#ifndef THIN_M
#define THIN_M 1
#endif
#ifndef THIN_THREADS
#define THIN_THREADS 256
#endif
#ifndef THIN_ROWS
#define THIN_ROWS 8
#endif

template <typename T>
__device__ __forceinline__ void thin_delta_column(const T (*Ws)[THIN_M], const T* D, const T* A, T* out,
                                                  double* s, long long k0, long long K, long long N,
                                                  long long j, int kind, bool whole) {
    T d[THIN_M], a[THIN_ROWS];  // all loaded before any is stored (out may be A)
#pragma unroll
    for (int i = 0; i < THIN_M; ++i) d[i] = D[i * N + j];
#pragma unroll
    for (int r = 0; r < THIN_ROWS; ++r) a[r] = whole || k0 + r < K ? A[(k0 + r) * N + j] : T(0);
#pragma unroll
    for (int r = 0; r < THIN_ROWS; ++r) {
        if (whole || k0 + r < K) {
            T x = T(0);
#pragma unroll
            for (int i = 0; i < THIN_M; ++i) x += Ws[r][i] * d[i];
            T v = x * sigma_prime<T>(kind, a[r]);
            out[(k0 + r) * N + j] = v;
            s[r] += (double)v;
        }
    }
}

template <typename T>
__device__ void thin_delta(const T* W, const T* D, const T* A, T* out, T* db, double* partials,
                           long long K, long long N, long long chunk, int kind) {
    __shared__ T Ws[THIN_ROWS][THIN_M];  // W[i][k0 + r]: this block's columns of W
    __shared__ double part[THIN_ROWS][THIN_THREADS];
    long long k0 = blockIdx.x * (long long)THIN_ROWS;
    for (int e = threadIdx.x; e < THIN_ROWS * THIN_M; e += blockDim.x) {
        int r = e / THIN_M, i = e % THIN_M;
        Ws[r][i] = k0 + r < K ? W[i * K + k0 + r] : T(0);
    }
    __syncthreads();
    long long jbeg = blockIdx.y * chunk, jend = jbeg + chunk < N ? jbeg + chunk : N;
    bool whole = k0 + THIN_ROWS <= K;  // the block's rows all in a^l (all blocks but the last)
    double s[THIN_ROWS];
#pragma unroll
    for (int r = 0; r < THIN_ROWS; ++r) s[r] = 0.0;
    for (long long j = jbeg + threadIdx.x; j < jend; j += blockDim.x) {
        if (whole) thin_delta_column(Ws, D, A, out, s, k0, K, N, j, kind, true);
        else thin_delta_column(Ws, D, A, out, s, k0, K, N, j, kind, false);
    }
#pragma unroll
    for (int r = 0; r < THIN_ROWS; ++r) part[r][threadIdx.x] = s[r];
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride)
            for (int r = 0; r < THIN_ROWS; ++r) part[r][threadIdx.x] += part[r][threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x < THIN_ROWS && k0 + threadIdx.x < K) {
        long long k = k0 + threadIdx.x;
        if (gridDim.y == 1) db[k] = (T)part[threadIdx.x][0];
        else partials[k * gridDim.y + blockIdx.y] = part[threadIdx.x][0];
    }
}

// thin_delta's launch bound: two blocks an SM in float32 (128 registers; it wants ~140 for a
// width of 10, holding its 8 rows' m weights in registers), one in float64 (240: bound to 128,
// it spilled 2 KB a thread)
#define THIN_DELTA_BLOCKS(T) (sizeof(T) == 4 ? 2 : 1)

#define INSTANTIATE_THIN(T, SUFFIX)                                                           \
extern "C" __global__ void __launch_bounds__(THIN_THREADS, THIN_DELTA_BLOCKS(T)) thin_delta_##SUFFIX( \
        const T* W, const T* D, const T* A, T* out, T* db, double* partials, long long K,     \
        long long N, long long chunk, int kind) {                                            \
    thin_delta<T>(W, D, A, out, db, partials, K, N, chunk, kind); }

INSTANTIATE_THIN(float, f32)
INSTANTIATE_THIN(double, f64)
"""


def rows(m):
    """thin_delta's rows of a^l a block, for a width m (the source's THIN_ROWS): the rows'
    m weights stay in registers (8 rows of 16 spilled in float32 at its 128-register bound)."""
    return 8 if m <= 10 else 4


def options(m):
    """NVRTC's options for the module of width ``m`` (1..MAXM): m, and the launch shape the
    launcher uses (THREADS, rows(m))."""
    if not (type(m) is int and 1 <= m <= MAXM):
        raise ValueError(f"the thin kernels take 1 to {MAXM} rows, got {m!r}")
    return ("--std=c++14", f"-DTHIN_M={m}", f"-DTHIN_THREADS={THREADS}", f"-DTHIN_ROWS={rows(m)}")


def plan(groups, N, sms):
    """(splits, chunk): the columns N split so that ``groups`` row blocks x splits reach
    about BLOCKS_PER_SM blocks an SM of ``sms``, each split at least MIN_COLUMNS columns
    (a multiple of THREADS) long."""
    want = -(-BLOCKS_PER_SM * sms // groups)
    splits = max(1, min(want, -(-N // MIN_COLUMNS), MAX_SPLITS))
    chunk = -(-N // splits)
    chunk = -(-chunk // THREADS) * THREADS
    return -(-N // chunk), chunk
