"""The thin layer's products in CUDA: a layer of at most MAXM units (an output layer of 10
classes, or of one value) at a large batch.

cuBLAS runs the three products of such a layer far below the card's memory bandwidth, the
one bound they have (784-1024-1024-10 at a batch of 8192 on an H100: δ aᵀ, 10x8192 by
8192x1024, 0.042 ms, 0.8 TB/s of the 3.35 its a^l needs read once; W a 0.025 ms; Wᵀ δ
0.022 ms, then act_backward reads its output back). These kernels read a^l once each:

    thin_wa_<T>(W, A, Z, K, N)
        Z (m, N) = W (m, K) · A (K, N)   (the forward product, W a): a block of 8 warps per
        32 columns, warp s taking rows k = s, s + 8, ... of A, 8 at a time in flight; the
        warps' m sums per column added in order through shared memory
    thin_dw_<T>(D, A, dW, partials, K, N, chunk)
        dW (m, K) = D (m, N) · A (K, N)ᵀ   (∂J/∂W = δ aᵀ): warp w of block (x, y) takes row
        k = 8x + w of A over split y's columns [y·chunk, (y+1)·chunk), each lane every 32nd;
        the lanes' sums added in order; into dW, or into partials (splits, m, K) and then
    thin_reduce_<T>(partials, dW, m·K, splits)
        dW ← Σ_y partials[y], in split order
    thin_delta_<T>(W, D, A, out, db, partials, K, N, chunk, kind)
        out (K, N) ← (Wᵀ D) ⊙ σ'(A), db (K) ← Σ_j out: the recursion δ^l = (W^l)ᵀ δ^{l+1} ⊙
        σ'(z^l) in one pass (no (W^l)ᵀ δ^{l+1} array): block (x, y) takes the rows
        8x .. 8x + 7 (4 a block for m > 10) over split y's columns, each column's m values
        of δ loaded once for its rows; out may be A. The row sums as act_backward's (doubles, a fixed order;
        partials[k · splits + y] and its row_sums kernel when split)

m is fixed when the source is compiled (``-DTHIN_M=m``: :func:`options`; CupyKernels keeps a
module per width it meets, usually one): a column's m sums stay in registers and their loops
unroll with no branch (with m a runtime bound, the first build on an H100 ran W a at 0.18 TB/s,
7x cuBLAS's time: each of its loads and FMAs sat behind a branch of its own).

Every sum runs in a fixed order (no atomics): the same bits on every run. Accumulation is in
T, as cuBLAS's; the order differs from cuBLAS's, so results match xp.matmul to rounding
(tests/test_cuda_thin.py, on a GPU and through tests/cuda_emulator.py). The source is
compiled with :mod:`gpudnn.kernels.cuda`'s (σ' and row_sums are its); ``plan`` gives the
launch shapes.
"""

from __future__ import annotations

MAXM = 16  # the widest layer (rows of W, of δ) the thin kernels take: a module per width up to it
WARPS = 8  # a thin kernel's block: 8 warps
THREADS = 32 * WARPS


def rows(m):
    """thin_delta's rows of a^l a block, for a width m (the source's THIN_ROWS)."""
    return 8 if m <= 10 else 4


LOADS = 8  # thin_wa, thin_dw: loads of a^l in flight per thread
BLOCKS_PER_SM = 4  # split the columns until the grid has about this many blocks an SM
MIN_COLUMNS = 1024  # ... but give each split at least this many columns
MAX_SPLITS = 64

SOURCE = r"""
// THIN_M, the layer's units (rows of W and δ), is fixed when the module is compiled
// (-DTHIN_M=m, one module per width): the m sums of a column stay in registers and the
// loops over them unroll with no branch; the loops over rows and columns run a branch-free
// body over whole groups and a guarded one over the rest.
#ifndef THIN_M
#define THIN_M 1
#endif
#define WARP 32
#define THIN_WARPS 8
#define THIN_THREADS (WARP * THIN_WARPS)
// rows of a^l a thin_delta block takes: its rows' m weights stay in registers (8 rows of
// 16 spilled in float32 at its 128-register bound)
#define THIN_ROWS (THIN_M <= 10 ? 8 : 4)
#define THIN_LOADS 8

template <typename T>
__device__ __forceinline__ void thin_wa_rows(const T* W, const T* A, T* acc, long long k0, long long K,
                                             long long N, long long j, bool whole) {
    T a[THIN_LOADS];  // loaded before any is used: THIN_LOADS loads in flight
#pragma unroll
    for (int u = 0; u < THIN_LOADS; ++u) {
        long long k = k0 + u * THIN_WARPS;
        a[u] = whole || k < K ? A[k * N + j] : T(0);
    }
#pragma unroll
    for (int u = 0; u < THIN_LOADS; ++u) {
        long long k = k0 + u * THIN_WARPS;
        if (whole || k < K) {
#pragma unroll
            for (int i = 0; i < THIN_M; ++i) acc[i] += W[i * K + k] * a[u];
        }
    }
}

template <typename T>
__device__ void thin_wa(const T* W, const T* A, T* Z, long long K, long long N) {
    __shared__ T red[THIN_WARPS][THIN_M][WARP + 1];
    int lane = threadIdx.x % WARP, s = threadIdx.x / WARP;
    long long j = blockIdx.x * (long long)WARP + lane;
    T acc[THIN_M];
#pragma unroll
    for (int i = 0; i < THIN_M; ++i) acc[i] = T(0);
    if (j < N) {
        const long long step = THIN_WARPS * THIN_LOADS;
        long long k0 = s;
        for (; k0 + step - THIN_WARPS < K; k0 += step) thin_wa_rows(W, A, acc, k0, K, N, j, true);
        if (k0 < K) thin_wa_rows(W, A, acc, k0, K, N, j, false);
    }
#pragma unroll
    for (int i = 0; i < THIN_M; ++i) red[s][i][lane] = acc[i];
    __syncthreads();
    for (int e = threadIdx.x; e < THIN_M * WARP; e += blockDim.x) {
        int i = e / WARP, l = e % WARP;
        long long jj = blockIdx.x * (long long)WARP + l;
        T z = red[0][i][l];
        for (int q = 1; q < THIN_WARPS; ++q) z += red[q][i][l];
        if (jj < N) Z[i * N + jj] = z;
    }
}

template <typename T>
__device__ __forceinline__ void thin_dw_columns(const T* D, const T* arow, T* acc, long long j0, long long jend,
                                                long long N, bool whole) {
    T a[THIN_LOADS];
#pragma unroll
    for (int u = 0; u < THIN_LOADS; ++u) {
        long long j = j0 + u * WARP;
        a[u] = whole || j < jend ? arow[j] : T(0);
    }
#pragma unroll
    for (int u = 0; u < THIN_LOADS; ++u) {
        long long j = j0 + u * WARP;
        if (whole || j < jend) {
#pragma unroll
            for (int i = 0; i < THIN_M; ++i) acc[i] += D[i * N + j] * a[u];
        }
    }
}

template <typename T>
__device__ void thin_dw(const T* D, const T* A, T* dW, T* partials, long long K, long long N, long long chunk) {
    __shared__ T red[THIN_WARPS][THIN_M][WARP + 1];
    int lane = threadIdx.x % WARP, w = threadIdx.x / WARP;
    long long k = blockIdx.x * (long long)THIN_WARPS + w;
    long long jbeg = blockIdx.y * chunk, jend = jbeg + chunk < N ? jbeg + chunk : N;
    T acc[THIN_M];
#pragma unroll
    for (int i = 0; i < THIN_M; ++i) acc[i] = T(0);
    if (k < K) {
        const T* arow = A + k * N;
        const long long step = WARP * THIN_LOADS;
        long long j0 = jbeg + lane;
        for (; j0 + step - WARP < jend; j0 += step) thin_dw_columns(D, arow, acc, j0, jend, N, true);
        if (j0 < jend) thin_dw_columns(D, arow, acc, j0, jend, N, false);
    }
#pragma unroll
    for (int i = 0; i < THIN_M; ++i) red[w][i][lane] = acc[i];
    __syncthreads();
    for (int e = threadIdx.x; e < THIN_WARPS * THIN_M; e += blockDim.x) {
        int ww = e / THIN_M, i = e % THIN_M;
        long long kk = blockIdx.x * (long long)THIN_WARPS + ww;
        T s = red[ww][i][0];
        for (int l = 1; l < WARP; ++l) s += red[ww][i][l];
        if (kk < K) {
            if (gridDim.y == 1) dW[i * K + kk] = s;
            else partials[(blockIdx.y * THIN_M + i) * K + kk] = s;
        }
    }
}

template <typename T>
__device__ void thin_reduce(const T* partials, T* dW, long long mK, long long splits) {
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < mK;
         e += (long long)gridDim.x * blockDim.x) {
        T s = partials[e];
        for (long long y = 1; y < splits; ++y) s += partials[y * mK + e];
        dW[e] = s;
    }
}

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
extern "C" __global__ void __launch_bounds__(THIN_THREADS) thin_wa_##SUFFIX(                  \
        const T* W, const T* A, T* Z, long long K, long long N) {                            \
    thin_wa<T>(W, A, Z, K, N); }                                                             \
extern "C" __global__ void __launch_bounds__(THIN_THREADS) thin_dw_##SUFFIX(                  \
        const T* D, const T* A, T* dW, T* partials, long long K, long long N,                 \
        long long chunk) { thin_dw<T>(D, A, dW, partials, K, N, chunk); }                    \
extern "C" __global__ void thin_reduce_##SUFFIX(const T* partials, T* dW, long long mK,      \
                                                 long long splits) {                        \
    thin_reduce<T>(partials, dW, mK, splits); }                                              \
extern "C" __global__ void __launch_bounds__(THIN_THREADS, THIN_DELTA_BLOCKS(T)) thin_delta_##SUFFIX( \
        const T* W, const T* D, const T* A, T* out, T* db, double* partials, long long K,     \
        long long N, long long chunk, int kind) {                                            \
    thin_delta<T>(W, D, A, out, db, partials, K, N, chunk, kind); }

INSTANTIATE_THIN(float, f32)
INSTANTIATE_THIN(double, f64)
"""


def options(m):
    """NVRTC's options for the module of width ``m`` (1..MAXM)."""
    if not (type(m) is int and 1 <= m <= MAXM):
        raise ValueError(f"the thin kernels take 1 to {MAXM} rows, got {m!r}")
    return ("--std=c++14", f"-DTHIN_M={m}")


def plan(groups, N, sms):
    """(splits, chunk): the columns N split so that ``groups`` row blocks x splits reach
    about BLOCKS_PER_SM blocks an SM of ``sms``, each split at least MIN_COLUMNS columns
    (a multiple of THREADS) long."""
    want = -(-BLOCKS_PER_SM * sms // groups)
    splits = max(1, min(want, -(-N // MIN_COLUMNS), MAX_SPLITS))
    chunk = -(-N // splits)
    chunk = -(-chunk // THREADS) * THREADS
    return -(-N // chunk), chunk
