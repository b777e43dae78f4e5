"""Fused CUDA kernels for the CuPy backend: each kernel of :mod:`gpudnn.kernels` in one launch.

The generic twin launches one CuPy kernel per array operation (``Z += b``, then σ; σ' into
a scratch buffer, ``δ *= scratch``, a row sum; ten-odd for softmax + cross-entropy); these
do each step in one (two for the output layer: its kernel, then its sums). Arrays are C-contiguous (n, B): element
e = i·B + j is unit i of sample j.

    bias_act_<T>(Z, b, n, B, kind)            Z ← σ(Z + b)        (rows over grid y, columns over x:
                                               no integer division per element)
    act_backward_<T>(delta, A, db, out, partials, n, B, kind)
                                               out ← δ ⊙ σ'(a), db ← Σ_j out  (row i over grid x,
                                               its columns over grid y; out may be delta or A)
    row_sums_<T>(partials, db, n, k)           db ← the rows' k block sums, in order (when k > 1)
    softmax_xent_<T>(Z, b, A, Y, delta, col_loss, n, B)
                                               one thread per column j: logits z = Z + b (kept),
                                               a = softmax(z) (shifted by the column max),
                                               col_loss[j] = −Σ_i y_i log a_i,
                                               δ = (a Σ_i y_i − y)/B  (a − y for one-hot y)
    act_loss_<T>(Z, b, A, Y, delta, col_loss, n, B, kind, bce)
                                               the same for an elementwise head: any σ of KIND
                                               + mean squared error, or (bce) sigmoid + binary
                                               cross-entropy
    unscale_<T>(g16, g, inv_scale, P, found_inf)
                                               mixed precision: g ← g16 · 1/S (float16 to T),
                                               found_inf ← 1 if some g is not finite
    output_sums_<T>(delta, col_loss, db, total, partials, n, B)
                                               the output layer's sums: db ← Σ_j δ (rows
                                               0..n-1), total ← Σ_j col_loss (row n), split
                                               as act_backward's; then output_totals_<T> when
                                               a row is split over blocks

<T> is f32 and f64; the hidden layers' two kernels also have an f16 build for mixed
precision (float16 storage, float arithmetic, one rounding per stored value; converted by
the PTX cvt instructions, as NVRTC has no cuda_fp16.h of its own).

σ and σ' use the same formulas as the generic twin, which the tests compare them with: on a
GPU, and on any machine through tests/cuda_emulator.py, which compiles this source with the
host C++ compiler and runs CupyKernels' own launches on NumPy arrays. A CPU-only test also
compiles it with NVRTC to an sm_90 cubin (so ptxas checks the inline PTX).
"""

from __future__ import annotations

import numpy as np

from . import cuda_thin as thin
from .cuda_optim import blocks_for
from .generic import KIND, GenericKernels  # KIND: the codes the switches below use


PRELUDE = r"""
#define LEAKY_SLOPE 0.01

// float16 storage (mixed precision): arithmetic in float, loads and stores converted by the
// PTX cvt instructions (no cuda_fp16.h: NVRTC has no built-in copy of it). The CPU test
// emulation (tests/cuda_emulator.py) defines GPUDNN_HOST_EMULATION and its own half_t.
#ifndef GPUDNN_HOST_EMULATION
struct __align__(2) half_t { unsigned short bits; };
__device__ __forceinline__ float to_acc(half_t h) {
    float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits)); return f;
}
__device__ __forceinline__ half_t to_half(float f) {
    half_t h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f)); return h;
}
#endif
// the type arithmetic runs in: T itself, float for half_t
template <typename T> struct Acc { typedef T type; };
template <> struct Acc<half_t> { typedef float type; };
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type x) { return x; }
template <> __device__ __forceinline__ half_t from_acc<half_t>(float x) { return to_half(x); }

template <typename C> __device__ __forceinline__ C sigma(int kind, C z) {
    switch (kind) {
    case 1: return z > C(0) || z != z ? z : C(0);  // max(z, 0) as np.maximum: NaN stays NaN, −inf is 0
    case 2: return z > C(0) ? z : C(LEAKY_SLOPE) * z;
    case 3: return C(0.5) + C(0.5) * tanh(C(0.5) * z);
    case 4: return tanh(z);
    default: return z;
    }
}

template <typename C> __device__ __forceinline__ C sigma_prime(int kind, C a) {
    switch (kind) {
    case 1: return a > C(0) ? C(1) : C(0);
    case 2: return a > C(0) ? C(1) : C(LEAKY_SLOPE);
    case 3: return a * (C(1) - a);
    case 4: return C(1) - a * a;
    default: return C(1);
    }
}
"""  # float16 storage, the accumulation type, σ and σ' (the thin kernels' module has them too)

SOURCE = PRELUDE + r"""

// Each thread takes UNROLL elements of a row, blockDim.x apart (so a warp's accesses stay
// coalesced), and loads them all before it stores any: UNROLL loads in flight per thread
// instead of one, which an elementwise kernel needs to approach the card's memory bandwidth
// (one load per thread leaves most of HBM's latency uncovered). Loading a group before
// storing it is also what makes out == delta or out == A safe: each element is read before
// it is written, and groups do not overlap. CupyKernels compiles it with -DUNROLL=its unroll.
#ifndef UNROLL
#define UNROLL 4
#endif
// UNROLL_HALF: the elements a thread takes per pass of 2-byte float16 (-DUNROLL_HALF=,
// CupyKernels' half_unroll: twice UNROLL, at most 16), so that it has as many bytes in flight
// as in float32 (on an H100, float32 ran at 2.3 TB/s with 2 elements a thread and 2.8 with 4;
// float16 at 4 ran at 2.3)
#ifndef UNROLL_HALF
#define UNROLL_HALF 8
#endif
template <typename T> __device__ __forceinline__ constexpr int unroll_of() {
    return sizeof(T) == 2 ? UNROLL_HALF : UNROLL;
}
// BLOCK: the threads per block of bias_act and act_backward (-DBLOCK=, CupyKernels' threads),
// their launch bound: the compiler keeps each thread's registers within the block's share
// (a 1024-thread block of act_backward_f64 at UNROLL 4 needed 71 a thread: more than a block has)
#ifndef BLOCK
#define BLOCK 256
#endif

// s summed over the block (blockDim.x a power of two <= 1024; partial: its shared doubles),
// by a tree in a fixed order: the same bits on every run
__device__ __forceinline__ double block_sum(double* partial, double s) {
    partial[threadIdx.x] = s;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    return partial[0];
}

// rows i over blockIdx.y (grid-stride), columns j over x: no division per element
template <typename T>
__device__ void bias_act(T* Z, const T* b, long long n, long long B, int kind) {
    typedef typename Acc<T>::type C;
    constexpr int U = unroll_of<T>();
    const long long span = (long long)blockDim.x * U;
    for (long long i = blockIdx.y; i < n; i += gridDim.y) {
        C bi = to_acc(b[i]);
        T* row = Z + i * B;
        for (long long j0 = blockIdx.x * span + threadIdx.x; j0 < B; j0 += gridDim.x * span) {
            T z[U];
#pragma unroll
            for (int u = 0; u < U; ++u)
                if (j0 + u * (long long)blockDim.x < B) z[u] = row[j0 + u * (long long)blockDim.x];
#pragma unroll
            for (int u = 0; u < U; ++u)
                if (j0 + u * (long long)blockDim.x < B)
                    row[j0 + u * (long long)blockDim.x] = from_acc<T>(sigma<C>(kind, to_acc(z[u]) + bi));
        }
    }
}

// Row i over blockIdx.x; its columns split over the gridDim.y blocks blockIdx.y (a narrow
// layer with a long batch would otherwise run n blocks only: 64 for a 64-unit layer, on
// a card of 132 SMs). blockDim.x a power of two <= 1024. out may be delta or A (each element
// is read before it is written, UNROLL at a time: no __restrict__). Each block's sum of δ as stored (rounded
// to T) goes to db[i] when the row is one block, else to partials[i * gridDim.y + blockIdx.y]
// for row_sums: a fixed order, so the result is the same on every run.
template <typename T>
__device__ void act_backward(const T* delta, const T* A, T* db, T* out, double* partials,
                             long long n, long long B, int kind) {
    typedef typename Acc<T>::type C;
    __shared__ double partial[1024];
    constexpr int U = unroll_of<T>();
    const long long span = (long long)blockDim.x * U;
    const T* drow = delta + blockIdx.x * B;
    const T* arow = A + blockIdx.x * B;
    T* orow = out + blockIdx.x * B;
    long long i = blockIdx.x;
    double s = 0.0;
    for (long long j0 = blockIdx.y * span + threadIdx.x; j0 < B; j0 += gridDim.y * span) {
        C d[U], a[U];  // the group, loaded before any of it is stored (see UNROLL)
#pragma unroll
        for (int u = 0; u < U; ++u) {
            long long j = j0 + u * (long long)blockDim.x;
            if (j < B) { d[u] = to_acc(drow[j]); a[u] = to_acc(arow[j]); }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            long long j = j0 + u * (long long)blockDim.x;
            if (j < B) {
                T v = from_acc<T>(d[u] * sigma_prime<C>(kind, a[u]));
                orow[j] = v;
                s += (double)to_acc(v);
            }
        }
    }
    s = block_sum(partial, s);
    if (threadIdx.x == 0) {
        if (gridDim.y == 1) db[i] = from_acc<T>((C)s);
        else partials[i * gridDim.y + blockIdx.y] = s;
    }
}

// Σ_c partials[i * k + c], c = 0..k-1 in order
__device__ __forceinline__ double row_total(const double* partials, long long i, long long k) {
    double s = 0.0;
    for (long long c = 0; c < k; ++c) s += partials[i * k + c];
    return s;
}

// db[i] = row i's k block sums; one thread per row
template <typename T>
__device__ void row_sums(const double* partials, T* db, long long n, long long k) {
    typedef typename Acc<T>::type C;
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) db[i] = from_acc<T>((C)row_total(partials, i, k));
}

// The output layer's kernels' buffers, each its own (the workspace's Z, A[L], Y, δ^L and the
// kernel set's col_loss): __restrict__ lets a column's loads run ahead of its stores (a thread
// reads and writes Z[e] itself, which restrict allows)
#define OUTPUT_PARAMS(T) T* __restrict__ Z, const T* __restrict__ b, T* __restrict__ A,        \
    const T* __restrict__ Y, T* __restrict__ delta, double* __restrict__ col_loss, long long n, \
    long long B

template <typename T>
__device__ void softmax_xent(OUTPUT_PARAMS(T)) {
    long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (j >= B) return;
    double m = 0.0, sy = 0.0;  // NVRTC has no INFINITY: start from the first logit (n >= 1)
    for (long long i = 0; i < n; ++i) {
        T z = Z[i * B + j] + b[i];
        Z[i * B + j] = z;
        m = i == 0 ? (double)z : fmax(m, (double)z);
        sy += (double)Y[i * B + j];  // the column's target total (1 for one-hot)
    }
    double s = 0.0;
    for (long long i = 0; i < n; ++i) s += exp((double)Z[i * B + j] - m);
    double lse = m + log(s), loss = 0.0, inv_B = 1.0 / (double)B;
    for (long long i = 0; i < n; ++i) {
        long long e = i * B + j;
        double logp = (double)Z[e] - lse;
        T a = (T)exp(logp);
        A[e] = a;
        loss -= (double)Y[e] * logp;
        delta[e] = (T)(((double)a * sy - (double)Y[e]) * inv_B);
    }
    col_loss[j] = loss;
}

#define INSTANTIATE_HIDDEN(T, SUFFIX)                                                         \
extern "C" __global__ void __launch_bounds__(BLOCK) bias_act_##SUFFIX(T* Z, const T* b,     \
    long long n, long long B, int kind) { bias_act<T>(Z, b, n, B, kind); }                     \
extern "C" __global__ void __launch_bounds__(BLOCK) act_backward_##SUFFIX(const T* delta,     \
                                                  const T* A, T* db, T* out,                  \
                                                  double* partials, long long n, long long B, \
                                                  int kind) {                                 \
    act_backward<T>(delta, A, db, out, partials, n, B, kind); }                                \
extern "C" __global__ void row_sums_##SUFFIX(const double* partials, T* db, long long n,     \
                                              long long k) { row_sums<T>(partials, db, n, k); }

// an output activation σ (its KIND code) and a loss that are elementwise per unit, one
// thread per column j over its n units: z = Z + b (kept), a = σ(z), r = a − y, and
//   bce == 0, mean squared error:  col_loss[j] = ½ Σ_i r², δ = r ⊙ σ'(a) / B (the seed's δ^L)
//   bce == 1, sigmoid + binary cross-entropy:  col_loss[j] = Σ_i max(z, 0) − z y +
//             log(1 + e^{−|z|}) (the twin's softplus form), δ = r / B (σ' cancels)
template <typename T>
__device__ void act_loss(OUTPUT_PARAMS(T), int kind, int bce) {
    long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (j >= B) return;
    double loss = 0.0, inv_B = 1.0 / (double)B;
    for (long long i = 0; i < n; ++i) {
        long long e = i * B + j;
        T z = Z[e] + b[i];
        Z[e] = z;
        T a = sigma<T>(kind, z);
        A[e] = a;
        double zd = (double)z, y = (double)Y[e], r = (double)a - y;
        if (bce) {
            loss += fmax(zd, 0.0) - zd * y + log1p(exp(-fabs(zd)));
            delta[e] = (T)(r * inv_B);
        } else {
            loss += 0.5 * r * r;
            delta[e] = (T)(r * (double)sigma_prime<T>(kind, a) * inv_B);
        }
    }
    col_loss[j] = loss;
}

// The output layer's sums, in double in a fixed order: db[i] = Σ_j delta[i][j] (rows i < n)
// and total[0] = Σ_j col_loss[j] (row n), for both one launch where CuPy's sum took two (and
// its host-side set-up each). Row i over blockIdx.x, its columns split over the gridDim.y
// blocks blockIdx.y as act_backward's, UNROLL loads in flight a thread; each block's sum goes
// to db[i] / total[0] when a row is one block, else to partials[i * gridDim.y + blockIdx.y]
// for output_totals.
template <typename T>
__device__ void output_sums(const T* delta, const double* col_loss, T* db, double* total,
                            double* partials, long long n, long long B) {
    __shared__ double partial[1024];
    const long long span = (long long)blockDim.x * UNROLL;
    long long i = blockIdx.x;
    double s = 0.0;
    for (long long j0 = blockIdx.y * span + threadIdx.x; j0 < B; j0 += gridDim.y * span) {
        double v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            long long j = j0 + u * (long long)blockDim.x;
            v[u] = j >= B ? 0.0 : i < n ? (double)delta[i * B + j] : col_loss[j];
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) s += v[u];
    }
    s = block_sum(partial, s);
    if (threadIdx.x == 0) {
        if (gridDim.y > 1) partials[i * gridDim.y + blockIdx.y] = s;
        else if (i < n) db[i] = (T)s;
        else total[0] = s;
    }
}

// output_sums' second launch when its rows were split: rows i < n into db, row n into total
template <typename T>
__device__ void output_totals(const double* partials, T* db, double* total, long long n, long long k) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) db[i] = (T)row_total(partials, i, k);
    else if (i == n) total[0] = row_total(partials, i, k);
}

// Mixed precision's unscale in one pass over the P gradients: g ← (T) g16 · inv_scale[0]
// (float16 to T is exact, and 1/S a power of 2) and found_inf[0] ← 1 where some g is NaN or
// infinite (left as it is otherwise) — the cast, the scaling and the loss scaler's check,
// each a pass of its own before. A grid-stride loop taking UNROLL_HALF elements a thread a
// pass, all loaded before any is stored (2-byte loads: one at a time would leave HBM idle).
template <typename T>
__device__ void unscale(const half_t* __restrict__ g16, T* __restrict__ g,
                        const T* __restrict__ inv_scale, long long P, int* __restrict__ found_inf) {
    constexpr int U = unroll_of<half_t>();
    const long long stride = (long long)gridDim.x * blockDim.x;
    T s = inv_scale[0];
    bool bad = false;
    for (long long i0 = blockIdx.x * (long long)blockDim.x + threadIdx.x; i0 < P; i0 += U * stride) {
        half_t h[U];
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (i0 + u * stride < P) h[u] = g16[i0 + u * stride];
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (i0 + u * stride < P) {
                T v = (T)to_acc(h[u]) * s;
                g[i0 + u * stride] = v;
                bad |= !isfinite(v);
            }
    }
    if (bad) found_inf[0] = 1;
}

#define INSTANTIATE(T, SUFFIX)                                                                \
INSTANTIATE_HIDDEN(T, SUFFIX)                                                                 \
extern "C" __global__ void unscale_##SUFFIX(const half_t* g16, T* g, const T* inv_scale,     \
        long long P, int* found_inf) { unscale<T>(g16, g, inv_scale, P, found_inf); }         \
extern "C" __global__ void __launch_bounds__(BLOCK) output_sums_##SUFFIX(const T* delta,    \
        const double* col_loss, T* db, double* total, double* partials, long long n,          \
        long long B) { output_sums<T>(delta, col_loss, db, total, partials, n, B); }          \
extern "C" __global__ void output_totals_##SUFFIX(const double* partials, T* db,            \
        double* total, long long n, long long k) { output_totals<T>(partials, db, total, n, k); } \
extern "C" __global__ void act_loss_##SUFFIX(OUTPUT_PARAMS(T), int kind, int bce) {        \
    act_loss<T>(Z, b, A, Y, delta, col_loss, n, B, kind, bce); }                             \
extern "C" __global__ void softmax_xent_##SUFFIX(OUTPUT_PARAMS(T)) {                        \
    softmax_xent<T>(Z, b, A, Y, delta, col_loss, n, B); }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
INSTANTIATE_HIDDEN(half_t, f16)  // mixed precision: the output layer stays in the master dtype
"""

SUFFIX = {"f": "f32", "d": "f64", "e": "f16"}  # by dtype.char (cheap; dtype.name builds a string)
THREADS = 256  # threads per block: a power of two (act_backward's tree reduction needs one)
UNROLL = 4  # the source's UNROLL: the elements of a row each thread takes per pass
SPAN = THREADS * UNROLL  # the columns a block covers per pass (the defaults')
BLOCKS_PER_SM = 4  # act_backward splits a row's columns until n x split reaches this many per SM
MAX_SPLIT = 64


# the output layer's fused (σ, loss) pairs: (kernel, its arguments after n and B)
# OUTPUT_UNITS: the widest output layer they take. One thread runs a column's n units in
# turn, so a wide one leaves the card idle. On an H100 (gpu_bench's tune part, output_width;
# benchmarks/results/gpu_bench_tune_h100.json), softmax + cross-entropy fused / generic twin:
# at B = 512, 10 units 0.029 / 0.354 ms, 256 units 0.173 / 0.347, 512 units 0.361 / 0.343,
# 1024 units 0.74 / 0.45; at B = 8192, 256 units 0.22 / 0.34, 512 units 0.65 / 1.24, 1024 units
# 1.46 / 0.67. Wider layers run the twin.
OUTPUT_UNITS = 512
FUSED_OUTPUT = {
    ("softmax", "cross_entropy"): ("softmax_xent", ()),
    ("sigmoid", "binary_cross_entropy"): ("act_loss", (np.int32(KIND["sigmoid"]), np.int32(1))),
    **{(act, "mse"): ("act_loss", (np.int32(code), np.int32(0))) for act, code in KIND.items()},
}


def _ints(*values):
    """Sizes as the kernels' ``long long`` (a Python int's C type is CuPy's choice)."""
    return tuple(np.int64(v) for v in values)


class CupyKernels(GenericKernels):
    """The fused kernels on a CUDA GPU; anything else falls back to the generic twin."""

    name = "cuda"

    def __init__(self, xp, threads=THREADS, unroll=UNROLL, capture=False, thin=True,
                 output_units=OUTPUT_UNITS):
        """``threads`` (a power of two, 32 to 1024) and ``unroll`` (1 to 16): the hidden
        layers' launch shape, for tuning (scripts/gpu_bench.py's ``tune`` part); results
        are the same bit for bit but for the order db is summed in. ``capture``: kernels
        a CUDA graph may hold (``graphs.CapturedStep``): the loss summed into one buffer
        this set keeps, not a new array each call, which a graph would go on writing after
        the memory pool took it back; each buffer is made by a call before the capture. ``thin``: layer l's
        backward pass (∂J/∂W^l, δ^l = (W^l)ᵀ δ^{l+1} ⊙ σ'(a^l), ∂J/∂b^{l-1}) in one kernel where
        layer l+1 has at most 16 units (:mod:`gpudnn.kernels.cuda_thin`; False: cuBLAS's two
        products, then act_backward). ``output_units``: the widest output layer the fused
        output kernels take (wider ones run the twin; with ``capture`` always the kernels)."""
        super().__init__(xp)
        self.output_units = output_units
        self.capture, self.thin = bool(capture), bool(thin)
        self._thin_modules = {}  # m -> the thin kernels compiled for a layer of m units
        self._total = None  # capture: the 0-d Σ loss every call writes
        if not (type(threads) is int and 32 <= threads <= 1024 and threads & (threads - 1) == 0):
            raise ValueError(f"threads must be a power of two from 32 to 1024, got {threads!r}")
        if not (type(unroll) is int and 1 <= unroll <= 16):
            raise ValueError(f"unroll must be an int from 1 to 16, got {unroll!r}")
        if not (type(output_units) is int and output_units >= 1):
            raise ValueError(f"output_units must be a positive int, got {output_units!r}")
        self.threads, self.unroll, self.span = threads, unroll, threads * unroll
        self.half_unroll = min(2 * unroll, 16)  # float16's elements a thread (the source's UNROLL_HALF)
        # the columns a block covers per pass, by dtype.char
        self._spans = {"f": self.span, "d": self.span, "e": threads * self.half_unroll}
        self._module = None
        self._col_loss = None
        self._partials = None
        try:
            sms = int(xp.cuda.Device().attributes["MultiProcessorCount"])
        except Exception:  # no device to ask (the CPU emulation): an H100's count
            sms = 132
        self._sms, self._target_blocks = sms, BLOCKS_PER_SM * sms

    def _split(self, n, B, dtype):
        """How many blocks share one row of act_backward: enough for the card, each block
        at least a pass of span = threads x unroll columns (twice the unroll for float16)."""
        return max(1, min(-(-self._target_blocks // n), -(-B // self._spans[dtype.char]), MAX_SPLIT))

    def _fn(self, name, dtype):
        if self._module is None:
            self._module = self.xp.RawModule(code=SOURCE, options=("--std=c++14", f"-DUNROLL={self.unroll}",
                                                                   f"-DUNROLL_HALF={self.half_unroll}",
                                                                   f"-DBLOCK={self.threads}"))
        return self._module.get_function(f"{name}_{SUFFIX[dtype.char]}")

    def _thin_fn(self, name, dtype, m):
        """The thin kernel ``name`` for m rows (its module compiled on first use of m)."""
        module = self._thin_modules.get(m)
        if module is None:
            module = self._thin_modules[m] = self.xp.RawModule(code=PRELUDE + thin.SOURCE, options=thin.options(m))
        return module.get_function(f"{name}_{SUFFIX[dtype.char]}")

    def _fusable(self, *arrays, dtypes="fde"):
        """C-contiguous arrays all of one dtype, one of ``dtypes`` (float32, float64, float16:
        the hidden layers' kernels have a float16 build for mixed precision, the output
        layer's not). A kernel is built for one T: a float64 b beside a float32 Z would be
        read as float32 bits."""
        return (all(a.flags.c_contiguous and a.dtype.char in dtypes for a in arrays)
                and len({a.dtype for a in arrays}) == 1)

    def fuses_layer(self, m, dtype, sigma):
        """m at most ``thin.MAXM``, float32, float64 or float16 (mixed precision's passes),
        σ one of KIND (and ``thin``)."""
        return self.thin and 0 < m <= thin.MAXM and sigma.name in KIND and np.dtype(dtype).char in "fde"

    def fuses_layer_backward(self, W, delta, a, sigma, dW, db):
        """Whether :meth:`layer_backward` runs these arrays in one kernel: W and dW (m, n),
        delta (m, B), a (n, B), db (n, 1), all C-contiguous and of one dtype, where
        :meth:`fuses_layer` says so for m, that dtype and σ."""
        return self.fuses_layer(delta.shape[0], a.dtype, sigma) and self._fusable(W, delta, a, dW, db)

    def layer_backward(self, W, delta, a, sigma, dW, db):
        if not self.fuses_layer_backward(W, delta, a, sigma, dW, db):
            return super().layer_backward(W, delta, a, sigma, dW, db)
        (m, B), n = delta.shape, a.shape[0]
        groups = -(-n // thin.rows(m))
        splits, chunk = thin.plan(groups, B, self._sms)
        partials = self._partials_for((m + 1) * n, splits)
        self._thin_fn("thin_backward", a.dtype, m)(
            (groups, splits), (thin.THREADS,),
            (W, delta, a, a, dW, db, partials, *_ints(n, B, chunk), np.int32(KIND[sigma.name])))
        if splits > 1:  # dW's m·n sums, then db's n, each over the splits
            row_sums = self._fn("row_sums", a.dtype)
            for out, rows, first in ((dW, m * n, 0), (db, n, m * n * splits)):
                row_sums((-(-rows // THREADS),), (THREADS,), (partials[first:], out, *_ints(rows, splits)))
        return a

    def _kept(self, name, size):
        """The float64 scratch attribute ``name`` (partial sums, the output layer's per-column
        losses), at least ``size`` long: kept between calls, grown only."""
        buf = getattr(self, name)
        if buf is None or buf.size < size:
            buf = self.xp.empty(size, dtype=self.xp.float64)
            setattr(self, name, buf)
        return buf

    def _partials_for(self, rows, k):
        """The double partial sums of ``rows`` rows split over k blocks each (act_backward,
        thin_backward, output_sums); one unused entry when k is 1 (the kernels take the pointer)."""
        return self._kept("_partials", rows * k if k > 1 else 1)

    def bias_act(self, Z, b, sigma, tmp):
        kind = KIND.get(sigma.name)
        if kind is None or not self._fusable(Z, b):
            return super().bias_act(Z, b, sigma, tmp)
        n, B = Z.shape
        grid = (min(-(-B // self._spans[Z.dtype.char]), 65535), min(n, 65535))  # (columns, rows)
        self._fn("bias_act", Z.dtype)(grid, (self.threads,), (Z, b, *_ints(n, B), np.int32(kind)))
        return Z

    def needs_scratch(self, dtype):
        """The fused hidden-layer kernels use no scratch; other dtypes (bfloat16) fall back
        to the twins, which do."""
        return np.dtype(dtype).char not in "fde"

    def act_backward(self, delta, A, sigma, tmp, db, out=None):
        kind = KIND.get(sigma.name)
        out = delta if out is None else out
        if kind is None or not self._fusable(delta, A, db, out):
            return super().act_backward(delta, A, sigma, tmp, db, out)
        self._act_backward(delta, A, db, out, kind)
        return out

    def _act_backward(self, delta, A, db, out, kind):
        """out ← δ ⊙ σ'(a) for σ of KIND ``kind``, db ← Σ_j out: one launch, two when rows
        are split over blocks. With kind 0 (identity) and out = δ: db ← Σ_j δ, δ unchanged."""
        n, B = delta.shape
        k = self._split(n, B, delta.dtype)
        partials = self._partials_for(n, k)
        self._fn("act_backward", delta.dtype)(
            (n, k), (self.threads,), (delta, A, db, out, partials, *_ints(n, B), np.int32(kind))
        )
        if k > 1:
            self._fn("row_sums", delta.dtype)(
                (-(-n // THREADS),), (THREADS,), (partials, db, *_ints(n, k))
            )

    def fuses_unscale(self, g16, g):
        """float16 g16 and a float32/float64 g, both C-contiguous (P,)."""
        return (g16.dtype.char == "e" and g.dtype.char in "fd" and g16.shape == g.shape
                and g16.flags.c_contiguous and g.flags.c_contiguous)

    def unscale(self, g16, g, inv_scale, found_inf):
        if not (self.fuses_unscale(g16, g) and inv_scale.dtype == g.dtype):
            return super().unscale(g16, g, inv_scale, found_inf)
        P = g.shape[0]
        self._fn("unscale", g.dtype)((blocks_for(P),), (THREADS,), (g16, g, inv_scale, *_ints(P), found_inf))
        return g

    def output_loss_delta(self, Z, b, A, Y, delta, db, sigma, loss, tmp, tmp2):
        kernel, extra = FUSED_OUTPUT.get((sigma.name, loss.name), (None, ()))
        if not (kernel and (Z.shape[0] <= self.output_units or self.capture)
                and self._fusable(Z, b, A, Y, delta, db, dtypes="fd")):
            return super().output_loss_delta(Z, b, A, Y, delta, db, sigma, loss, tmp, tmp2)
        n, B = Z.shape
        col_loss = self._kept("_col_loss", B)[:B]
        blocks = (B + THREADS - 1) // THREADS
        self._fn(kernel, Z.dtype)(
            (blocks,), (THREADS,), (Z, b, A, Y, delta, col_loss, *_ints(n, B), *extra)
        )
        if not self.capture:  # a new 0-d array each step, as CuPy's sum gave
            total = self.xp.empty((), dtype=self.xp.float64)
        else:  # a graph's: one buffer, made by a call before the capture
            if self._total is None:
                self._total = self.xp.empty((), dtype=self.xp.float64)
            total = self._total
        k = self._split(n + 1, B, Z.dtype)
        partials = self._partials_for(n + 1, k)
        self._fn("output_sums", Z.dtype)((n + 1, k), (self.threads,),
                                         (delta, col_loss, db, total, partials, *_ints(n, B)))
        if k > 1:
            self._fn("output_totals", Z.dtype)((-(-(n + 1) // THREADS),), (THREADS,),
                                               (partials, db, total, *_ints(n, k)))
        return total
