"""Layer l's whole backward pass in one CUDA kernel where layer l+1 is thin (at most MAXM
units: an output layer of 10 classes, or of one value):

    ∂J/∂W^l = δ^{l+1} (a^l)ᵀ,   δ^l = (W^l)ᵀ δ^{l+1} ⊙ σ'(a^l),   ∂J/∂b^{l-1} = Σ_batch δ^l.

Through cuBLAS that is three passes over a^l's size: δ aᵀ reads a^l, the product writes
(W^l)ᵀ δ^{l+1}, act_backward reads it back with a^l and writes δ^l. Here a^l is read once and
δ^l written once: each element of δ^l is the short sum x_kj = Σ_i W[i][k] δ[i][j] (i in
order) made where it is stored, and the same a[k][j] and δ[i][j] feed a thread's running sums
of ∂J/∂W^l[i][k]:

    thin_backward_<T>(W, D, A, out, dW, db, partials, K, N, chunk, kind)
        dW (m, K) ← D Aᵀ, then out (K, N) ← (Wᵀ D) ⊙ σ'(A), db (K) ← Σ_j out: block (x, y)
        takes THIN_ROWS rows of A (:func:`rows`) over split y's columns [y·chunk,
        (y+1)·chunk), one column a thread, each column's m values of δ loaded once for its
        rows; the rows' W^l in shared memory. out may be A (each element read before it is
        written, by the thread that writes it). T is float32, float64 or float16 (mixed
        precision: loaded into float, δ^l, dW and db rounded once on store). A thread sums
        its columns in T's arithmetic type; the block's
        sums are each warp's (shuffles), then the warps' in order, in double: a fixed order
        (no atomics: the same bits every run), into dW and db, or into partials[(i·K + k) ·
        splits + y] (dW[i][k]; db[k] at i = m) summed by kernels.cuda's row_sums when the
        columns are split.

m is fixed when the source is compiled (``-DTHIN_M=m``: :func:`options`; CupyKernels keeps a
module per width it meets, usually one).

Measured on an H100 (float32, 2026-11-27; benchmarks/results/gpu_bench_thin_h100.json), the
first kernel here, δ^l and db only (8 rows a block): 784-1024-1024-10 at a batch of 8192,
δ^2 in 0.031 ms at 2.2 TB/s, where cuBLAS's product (0.022 ms) and act_backward (0.038 ms)
took 0.060; on 784-4096-4096-4096-10, 0.12 ms where they took 0.20. A kernel for δ aᵀ alone,
reading a^l once more, ran 10x8192·8192x1024 in 0.030 ms against cuBLAS's 0.042 and
10x8192·8192x4096 in 0.18 against 0.10 (δ re-read from L2 by each block of rows); one for
W a alone ran 0.094 ms against 0.025 and was dropped. With δ aᵀ folded into this pass, which
reads a^l and δ anyway (the kernel as it now is; gpu_bench_h100.json, same card), the whole
backward pass below the output layer takes 0.051 ms on the 1024-wide net, where the first
kernel and cuBLAS's δ aᵀ took 0.031 + 0.042, and 0.153 ms on the 4096-wide one, where they
took 0.12 + 0.10; the 1024-wide step is 0.97x the same step with these products on cuBLAS,
round by round. Its float16 build (mixed precision) ran the 4096-wide net's pass in 0.178 ms
at 755 GB/s, about what cuBLAS's two float16 products and act_backward took (2-byte loads, one
column a thread: fewer bytes in flight than float32's; gpu_bench_f16thin_h100.json). A first
build with m a runtime bound ran 2-7x slower: each load and FMA sat behind a branch of its own.

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
#define THIN_WARPS (THIN_THREADS / 32)
#define THIN_SUMS (THIN_ROWS * (THIN_M + 1))  // a block's sums: per row, its m entries of ∂J/∂W, its db

// v summed over the 32 lanes of a warp, into lane 0: a fixed tree (the same bits every run)
template <typename C>
__device__ __forceinline__ C warp_sum(C v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// Ws is read through a volatile pointer: loaded from shared memory at each use, not held in
// registers across the column loop (rows x m more of them: spills at 10 units). T is the
// storage type, C = Acc<T> the arithmetic's (float for float16: each value converted once on
// load, δ^l rounded once on store)
template <typename T, typename C>
__device__ __forceinline__ void thin_column(const volatile C (*Ws)[THIN_M], const T* D, const T* A, T* out,
                                            C (*g)[THIN_M], C* s, long long k0, long long K,
                                            long long N, long long j, int kind, bool whole) {
    C d[THIN_M], a[THIN_ROWS];  // all loaded before any is stored (out may be A)
#pragma unroll
    for (int i = 0; i < THIN_M; ++i) d[i] = to_acc(D[i * N + j]);
#pragma unroll
    for (int r = 0; r < THIN_ROWS; ++r) a[r] = whole || k0 + r < K ? to_acc(A[(k0 + r) * N + j]) : C(0);
#pragma unroll
    for (int r = 0; r < THIN_ROWS; ++r) {
        if (whole || k0 + r < K) {
            C x = C(0);
#pragma unroll
            for (int i = 0; i < THIN_M; ++i) {
                x += Ws[r][i] * d[i];     // ((W^l)ᵀ δ^{l+1})[k][j]
                g[r][i] += d[i] * a[r];   // ∂J/∂W^l[i][k] += δ^{l+1}[i][j] a^l[k][j]
            }
            C v = x * sigma_prime<C>(kind, a[r]);
            out[(k0 + r) * N + j] = from_acc<T>(v);
            s[r] += v;
        }
    }
}

template <typename T>
__device__ void thin_backward(const T* W, const T* D, const T* A, T* out, T* dW, T* db,
                              double* partials, long long K, long long N, long long chunk,
                              int kind) {
    typedef typename Acc<T>::type C;
    __shared__ C Ws[THIN_ROWS][THIN_M];  // W[i][k0 + r]: this block's columns of W
    __shared__ double sums[THIN_WARPS][THIN_SUMS];  // each warp's share of the block's sums
    long long k0 = blockIdx.x * (long long)THIN_ROWS;
    for (int e = threadIdx.x; e < THIN_ROWS * THIN_M; e += blockDim.x) {
        int r = e / THIN_M, i = e % THIN_M;
        Ws[r][i] = k0 + r < K ? to_acc(W[i * K + k0 + r]) : C(0);
    }
    __syncthreads();
    long long jbeg = blockIdx.y * chunk, jend = jbeg + chunk < N ? jbeg + chunk : N;
    bool whole = k0 + THIN_ROWS <= K;  // the block's rows all in a^l (all blocks but the last)
    C g[THIN_ROWS][THIN_M];
    C s[THIN_ROWS];
#pragma unroll
    for (int r = 0; r < THIN_ROWS; ++r) {
        s[r] = C(0);
#pragma unroll
        for (int i = 0; i < THIN_M; ++i) g[r][i] = C(0);
    }
    for (long long j = jbeg + threadIdx.x; j < jend; j += blockDim.x) {
        if (whole) thin_column(Ws, D, A, out, g, s, k0, K, N, j, kind, true);
        else thin_column(Ws, D, A, out, g, s, k0, K, N, j, kind, false);
    }
    // the block's sums: each warp's by shuffles, then the warps' in order, in double
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int r = 0; r < THIN_ROWS; ++r) {
#pragma unroll
        for (int i = 0; i < THIN_M; ++i) {
            C v = warp_sum(g[r][i]);
            if (lane == 0) sums[warp][r * (THIN_M + 1) + i] = (double)v;
        }
        C v = warp_sum(s[r]);
        if (lane == 0) sums[warp][r * (THIN_M + 1) + THIN_M] = (double)v;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < THIN_SUMS; e += blockDim.x) {
        int r = e / (THIN_M + 1), i = e % (THIN_M + 1);
        long long k = k0 + r;
        if (k >= K) continue;
        double t = 0.0;
        for (int w = 0; w < THIN_WARPS; ++w) t += sums[w][e];
        long long at = (long long)i * K + k;  // i < m: dW[i][k]; i == m: db[k], after dW
        if (gridDim.y > 1) partials[at * gridDim.y + blockIdx.y] = t;
        else if (i < THIN_M) dW[at] = from_acc<T>((C)t);
        else db[k] = from_acc<T>((C)t);
    }
}

// the launch bound: two blocks an SM in float32 and float16 (128 registers a thread: both
// compute in float), one in float64
#define THIN_BLOCKS(T) (sizeof(T) == 8 ? 1 : 2)

#define INSTANTIATE_THIN(T, SUFFIX)                                                           \
extern "C" __global__ void __launch_bounds__(THIN_THREADS, THIN_BLOCKS(T)) thin_backward_##SUFFIX( \
        const T* W, const T* D, const T* A, T* out, T* dW, T* db, double* partials,          \
        long long K, long long N, long long chunk, int kind) {                               \
    thin_backward<T>(W, D, A, out, dW, db, partials, K, N, chunk, kind); }

INSTANTIATE_THIN(float, f32)
INSTANTIATE_THIN(double, f64)
INSTANTIATE_THIN(half_t, f16)  // mixed precision: float16 storage, float arithmetic
"""


def rows(m):
    """Rows of a^l a block for a width m (the source's THIN_ROWS): as many as keep a thread's
    m x rows sums of ∂J/∂W^l, its column's m values of δ and rows values of a^l in registers
    (ptxas, float32 at the 128-register bound: no spills for any m, tests/test_cuda_thin.py),
    at most 16. More rows a block read δ^{l+1} fewer times from L2: 7 for 10 units."""
    return min(16, 84 // (m + 2))


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
