"""Fused CUDA optimizer updates: each rule of :mod:`gpudnn.optim` in one launch over the flat
buffers, and the loss scaler's device-side bookkeeping (:mod:`gpudnn.amp`).

Letters as in :mod:`gpudnn.optim`: P parameters; θ, g: (P,) the flat parameter and gradient
buffers; η the learning rate, λ weight decay, t the step count (1 on the first step). Every
update is one grid-stride launch (at most ``MAX_BLOCKS`` blocks of ``THREADS`` threads), reads
and writes each element of θ and of its state buffers once, and needs no scratch buffer. The
generic twins (the ``xp`` passes of :mod:`gpudnn.optim`) make 2-18 passes and 1-2 P-sized
scratch buffers. Each kernel repeats its twin's arithmetic in the same order and in the
buffer's dtype T (float32 or float64); the scalars are rounded to T on the host exactly as
the twin's NumPy/CuPy scalars are, so on the CPU emulation they agree to the last bits, and
on a GPU to rounding (the CUDA compiler contracts a·b + c into one FMA).

    sgd_<T>       g ← g + λθ;  v ← μ v + g;  θ ← θ − η g − ημ v (Nesterov) | θ − η v | θ − η g
    adam_<T>      g ← g + λθ (L2) or θ ← θ (1 − ηλ) (decoupled);
                  m ← β₁ m + (1 − β₁) g;  v ← β₂ v + (1 − β₂) g²;
                  θ ← θ − η (m / (√v c₂ + ε)) c₁        with c₁ = 1/(1 − β₁ᵗ), c₂ = 1/√(1 − β₂ᵗ)
    lamb_direction_<T>   m, v as Adam's; u ← (m / (√v c₂ + ε)) c₁ + λθ  (θ untouched: the
                  trust ratios are then taken per segment, and sgd_<T> with μ = λ = 0 steps)
    rmsprop_<T>   g ← g + λθ;  v ← α v + (1 − α) g²;  ḡ ← α ḡ + (1 − α) g (centered);
                  d = √(v − ḡ²) + ε or √v + ε;  b ← μ b + g/d, θ ← θ − η b | θ ← θ − η g/d
    nonfinite_<T>  found_inf ← 1 if some g_i is NaN or ±∞ (one launch, no host read)
    amp_update_<T> / amp_set_<T>   the loss scaler's rule on its device state (one thread)

Skipping on the device (mixed precision): every update takes ``skip`` (an int (1,), the
``found_inf`` flag of ``nonfinite``) and leaves θ and its state untouched when it is set, as
PyTorch's fused optimizers take ``found_inf``. It also takes ``step`` (an int64 (2,)) and a
``parity``: with parity ≥ 0 the device counts the steps taken — the count t − 1 before this
step is read from step[parity], and one thread writes it, plus 1 unless skipped, to
step[1 − parity] (the slot nobody reads in this launch; the host flips the parity each
step). Adam then takes c₁ and c₂ of that t on the device (``pow``: on a GPU within an ulp or
two of the host's). With parity −1 the host counts and passes c₁, c₂ as scalars.

The source is kept as text: a CPU-only test compiles it with NVRTC, and tests/cuda_emulator.py
runs it on the CPU through this module's own launches.
"""

from __future__ import annotations

import math

import numpy as np

SOURCE = r"""
// one thread's share of the flat buffer: a grid-stride loop over i = 0..P-1
#define FOR_EACH(i, P)                                                                      \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (P);           \
         i += (long long)gridDim.x * blockDim.x)

// sqrt in T itself (float stays float, as NumPy's and CuPy's float32 sqrt)
__device__ __forceinline__ float sqrt_t(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_t(double x) { return sqrt(x); }

// The bookkeeping of a step, shared by the updates. skip[0] != 0: the step is skipped (θ
// and the state untouched). parity >= 0: the device counts the steps taken, reading the
// count from step[parity]; one thread writes it (+1 unless skipped) to step[1 - parity],
// a slot no thread of this launch reads. parity < 0: the host counts; step is not touched.
__device__ __forceinline__ bool take_step(const int* skip, long long* step, int parity) {
    bool skipped = skip[0] != 0;
    if (parity >= 0 && blockIdx.x == 0 && threadIdx.x == 0)
        step[1 - parity] = step[parity] + (skipped ? 0 : 1);
    return !skipped;
}

// Adam's bias corrections c1 = 1/(1 - beta1^t), c2 = 1/sqrt(1 - beta2^t) of the step
// t = step[parity] + 1 when the device counts (the host's formula, in double); else as given.
template <typename T>
__device__ __forceinline__ void bias_correction(T& c1, T& c2, double beta1, double beta2,
                                                const long long* step, int parity) {
    if (parity < 0) return;
    double t = (double)(step[parity] + 1);
    c1 = (T)(1.0 / (1.0 - pow(beta1, t)));
    c2 = (T)(1.0 / sqrt(1.0 - pow(beta2, t)));
}

template <typename T>
__device__ void sgd(T* theta, const T* g, T* v, long long P, T lr, T momentum, T weight_decay,
                    T lr_momentum, int nesterov, const int* skip, long long* step, int parity) {
    if (!take_step(skip, step, parity)) return;
    FOR_EACH(i, P) {
        T gi = g[i];
        if (weight_decay != T(0)) gi = theta[i] * weight_decay + gi;  // g + lambda theta
        if (momentum != T(0)) {
            T vi = v[i] * momentum + gi;  // v = mu v + g
            v[i] = vi;
            if (nesterov) {  // theta - eta g - (eta mu) v, as the twin's two passes
                theta[i] = (theta[i] - gi * lr) - vi * lr_momentum;
                continue;
            }
            gi = vi;
        }
        theta[i] = theta[i] - gi * lr;
    }
}

// m, v <- moving averages of g, g^2; returns m_hat / (sqrt(v_hat) + eps) = (m / (sqrt(v) c2 + eps)) c1
template <typename T>
__device__ __forceinline__ T adam_direction(T gi, T* m, T* v, long long i, T beta1, T one_minus_beta1,
                                            T beta2, T one_minus_beta2, T eps, T c1, T c2) {
    T mi = m[i] * beta1 + gi * one_minus_beta1;
    T vi = v[i] * beta2 + (gi * gi) * one_minus_beta2;
    m[i] = mi;
    v[i] = vi;
    return (mi / (sqrt_t(vi) * c2 + eps)) * c1;
}

// decay_mode: 0 none, 1 L2 (g + lambda theta), 2 decoupled (theta * decay, decay = 1 - eta lambda)
template <typename T>
__device__ void adam(T* theta, const T* g, T* m, T* v, long long P, T lr, T beta1,
                     T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T weight_decay,
                     T decay, int decay_mode, T c1, T c2, double beta1_d, double beta2_d,
                     const int* skip, long long* step, int parity) {
    bias_correction<T>(c1, c2, beta1_d, beta2_d, step, parity);
    if (!take_step(skip, step, parity)) return;
    FOR_EACH(i, P) {
        T th = theta[i], gi = g[i];
        if (decay_mode == 1) gi = th * weight_decay + gi;
        else if (decay_mode == 2) th = th * decay;
        T u = adam_direction<T>(gi, m, v, i, beta1, one_minus_beta1, beta2, one_minus_beta2,
                                eps, c1, c2);
        theta[i] = th - u * lr;
    }
}

// LAMB's u = Adam's direction + lambda theta into u (theta untouched; the step is counted
// by the sgd launch that applies it)
template <typename T>
__device__ void lamb_direction(T* u, const T* theta, const T* g, T* m, T* v, long long P,
                               T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T eps,
                               T weight_decay, T c1, T c2, double beta1_d, double beta2_d,
                               const int* skip, const long long* step, int parity) {
    bias_correction<T>(c1, c2, beta1_d, beta2_d, step, parity);
    if (skip[0] != 0) return;
    FOR_EACH(i, P) {
        T ui = adam_direction<T>(g[i], m, v, i, beta1, one_minus_beta1, beta2, one_minus_beta2,
                                 eps, c1, c2);
        if (weight_decay != T(0)) ui = ui + theta[i] * weight_decay;
        u[i] = ui;
    }
}

template <typename T>
__device__ void rmsprop(T* theta, const T* g, T* v, T* g_avg, T* buf, long long P, T lr,
                        T alpha, T one_minus_alpha, T eps, T weight_decay, T momentum,
                        int centered, const int* skip, long long* step, int parity) {
    if (!take_step(skip, step, parity)) return;
    FOR_EACH(i, P) {
        T th = theta[i], gi = g[i];
        if (weight_decay != T(0)) gi = th * weight_decay + gi;
        T vi = v[i] * alpha + (gi * gi) * one_minus_alpha;
        v[i] = vi;
        T d;
        if (centered) {
            T ai = g_avg[i] * alpha + gi * one_minus_alpha;
            g_avg[i] = ai;
            d = sqrt_t(vi - ai * ai);
        } else {
            d = sqrt_t(vi);
        }
        T s = gi / (d + eps);
        if (momentum != T(0)) {
            T bi = buf[i] * momentum + s;
            buf[i] = bi;
            s = bi;
        }
        theta[i] = th - s * lr;
    }
}

// found_inf[0] <- 1 if any g_i is NaN or infinite (left as it is otherwise: zeroed by
// amp_update / amp_set). Every writer stores the same value.
template <typename T>
__device__ void nonfinite(const T* g, long long P, int* found_inf) {
    bool bad = false;
    FOR_EACH(i, P) bad |= !isfinite(g[i]);
    if (bad) found_inf[0] = 1;
}

// The loss scaler's rule after a step (gpudnn.amp.LossScaler.update), one thread.
// state: S, growth tracker, skipped, epoch_skipped (doubles: exact counts below 2^53);
// scale: S and 1/S rounded to T (what the passes multiply by); found_inf is consumed (zeroed).
template <typename T>
__device__ void amp_update(double* state, T* scale, int* found_inf, double growth_factor,
                           double backoff_factor, double growth_interval) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    if (found_inf[0] != 0) {
        state[0] *= backoff_factor;
        state[1] = 0.0;
        state[2] += 1.0;
        state[3] += 1.0;
    } else {
        state[1] += 1.0;
        if (state[1] >= growth_interval) {
            state[0] *= growth_factor;
            state[1] = 0.0;
        }
    }
    scale[0] = (T)state[0];
    scale[1] = (T)(1.0 / state[0]);
    found_inf[0] = 0;
}

// the host's values onto the device (no host sync: they travel as kernel arguments)
template <typename T>
__device__ void amp_set(double* state, T* scale, int* found_inf, double s, double tracker,
                        double skipped, double epoch_skipped) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    state[0] = s;
    state[1] = tracker;
    state[2] = skipped;
    state[3] = epoch_skipped;
    scale[0] = (T)s;
    scale[1] = (T)(1.0 / s);
    found_inf[0] = 0;
}

#define INSTANTIATE(T, SUFFIX)                                                                \
extern "C" __global__ void sgd_##SUFFIX(T* theta, const T* g, T* v, long long P, T lr,       \
        T momentum, T weight_decay, T lr_momentum, int nesterov, const int* skip,             \
        long long* step, int parity) {                                                        \
    sgd<T>(theta, g, v, P, lr, momentum, weight_decay, lr_momentum, nesterov, skip, step,     \
           parity); }                                                                         \
extern "C" __global__ void adam_##SUFFIX(T* theta, const T* g, T* m, T* v, long long P, T lr, \
        T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T weight_decay,        \
        T decay, int decay_mode, T c1, T c2, double beta1_d, double beta2_d,                  \
        const int* skip, long long* step, int parity) {                                       \
    adam<T>(theta, g, m, v, P, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,       \
            weight_decay, decay, decay_mode, c1, c2, beta1_d, beta2_d, skip, step, parity); } \
extern "C" __global__ void lamb_direction_##SUFFIX(T* u, const T* theta, const T* g, T* m,    \
        T* v, long long P, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T eps,     \
        T weight_decay, T c1, T c2, double beta1_d, double beta2_d, const int* skip,          \
        const long long* step, int parity) {                                                  \
    lamb_direction<T>(u, theta, g, m, v, P, beta1, one_minus_beta1, beta2, one_minus_beta2,   \
                      eps, weight_decay, c1, c2, beta1_d, beta2_d, skip, step, parity); }     \
extern "C" __global__ void rmsprop_##SUFFIX(T* theta, const T* g, T* v, T* g_avg, T* buf,    \
        long long P, T lr, T alpha, T one_minus_alpha, T eps, T weight_decay, T momentum,     \
        int centered, const int* skip, long long* step, int parity) {                         \
    rmsprop<T>(theta, g, v, g_avg, buf, P, lr, alpha, one_minus_alpha, eps, weight_decay,     \
               momentum, centered, skip, step, parity); }                                     \
extern "C" __global__ void nonfinite_##SUFFIX(const T* g, long long P, int* found_inf) {     \
    nonfinite<T>(g, P, found_inf); }                                                          \
extern "C" __global__ void amp_update_##SUFFIX(double* state, T* scale, int* found_inf,      \
        double growth_factor, double backoff_factor, double growth_interval) {                \
    amp_update<T>(state, scale, found_inf, growth_factor, backoff_factor, growth_interval); } \
extern "C" __global__ void amp_set_##SUFFIX(double* state, T* scale, int* found_inf,         \
        double s, double tracker, double skipped, double epoch_skipped) {                     \
    amp_set<T>(state, scale, found_inf, s, tracker, skipped, epoch_skipped); }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
"""

SUFFIX = {"f": "f32", "d": "f64"}  # by dtype.char
SCALAR = {"f": np.float32, "d": np.float64}
THREADS = 256
# a grid-stride launch of at most this many blocks: 1024 x 256 threads is about one full wave
# on an H100 (132 SMs x 2048 threads); each thread then takes ceil(P / 262144) elements
MAX_BLOCKS = 1024

_i32, _i64, _f64 = np.int32, np.int64, np.float64


def blocks_for(P):
    """Blocks of the grid-stride launch over P elements: (ceil(P / THREADS) up to MAX_BLOCKS)."""
    return max(1, min(-(-P // THREADS), MAX_BLOCKS))


class CudaOptimKernels:
    """The fused updates on the device of ``xp`` (CuPy, or the tests' CPU emulation of it).

    Every array is a C-contiguous (P,) buffer of one dtype T (float32 or float64) unless
    said otherwise; an unused state buffer may be any array of T (``theta[:0]``): it is never
    touched. ``skip``: int32 (1,), ``step``: int64 (2,), ``parity``: see the module's
    docstring. Scalars go to the kernels as NumPy scalars of their C type (T, int32, int64,
    float64): a bare Python number's C type would be CuPy's guess.
    """

    def __init__(self, xp):
        self.xp = xp
        self._module = None  # compiled on first use
        self._functions = {}  # (name, dtype.char) -> kernel: a dict lookup per launch

    def _fn(self, name, dtype):
        key = (name, dtype.char)
        fn = self._functions.get(key)
        if fn is None:
            if self._module is None:
                self._module = self.xp.RawModule(code=SOURCE, options=("--std=c++14",))
            fn = self._functions[key] = self._module.get_function(f"{name}_{SUFFIX[dtype.char]}")
        return fn

    def _launch(self, name, P, args, dtype):
        self._fn(name, dtype)((blocks_for(P),), (THREADS,), args)

    def sgd(self, theta, g, v, lr, momentum, weight_decay, nesterov, skip, step, parity):
        """θ, v ← SGD's step (:class:`gpudnn.optim.SGD`): g ← g + λθ; v ← μ v + g;
        θ ← θ − η g − ημ v if Nesterov, θ − η v with momentum, θ − η g without.
        theta, g, v: (P,); v is untouched when μ = 0."""
        T, P = SCALAR[theta.dtype.char], theta.shape[0]
        args = (theta, g, v, _i64(P), T(lr), T(momentum), T(weight_decay), T(lr * momentum),
                _i32(bool(nesterov)), skip, step, _i32(parity))
        self._launch("sgd", P, args, theta.dtype)

    @staticmethod
    def _betas(T, betas, eps, t):
        """Adam's scalars in T: β₁, 1 − β₁, β₂, 1 − β₂, ε, c₁, c₂ (c of step t; 0 if t = 0)."""
        b1, b2 = betas
        c1 = 1.0 / (1.0 - b1**t) if t else 0.0
        c2 = 1.0 / math.sqrt(1.0 - b2**t) if t else 0.0
        return (T(b1), T(1.0 - b1), T(b2), T(1.0 - b2), T(eps)), (T(c1), T(c2), _f64(b1), _f64(b2))

    def adam(self, theta, g, m, v, lr, betas, eps, weight_decay, decoupled, t, skip, step, parity):
        """θ, m, v ← Adam's step (:class:`gpudnn.optim.Adam`) of step t (host-counted; with
        parity ≥ 0 the device's count is used instead). theta, g, m, v: (P,)."""
        T, P = SCALAR[theta.dtype.char], theta.shape[0]
        mode = 0 if not weight_decay else 2 if decoupled else 1
        head, tail = self._betas(T, betas, eps, t)
        args = (theta, g, m, v, _i64(P), T(lr), *head, T(weight_decay), T(1.0 - lr * weight_decay),
                _i32(mode), *tail, skip, step, _i32(parity))
        self._launch("adam", P, args, theta.dtype)

    def lamb_direction(self, u, theta, g, m, v, betas, eps, weight_decay, t, skip, step, parity):
        """m, v ← Adam's moments; u ← m̂ / (√v̂ + ε) + λθ (LAMB's direction, before the
        trust ratios). θ is read only. u, theta, g, m, v: (P,)."""
        T, P = SCALAR[theta.dtype.char], theta.shape[0]
        head, tail = self._betas(T, betas, eps, t)
        args = (u, theta, g, m, v, _i64(P), *head, T(weight_decay), *tail, skip, step, _i32(parity))
        self._launch("lamb_direction", P, args, theta.dtype)

    def rmsprop(self, theta, g, v, g_avg, buf, lr, alpha, eps, weight_decay, momentum, centered,
                skip, step, parity):
        """θ and the state ← RMSprop's step (:class:`gpudnn.optim.RMSprop`). theta, g, v,
        g_avg (centered only), buf (momentum only): (P,)."""
        T, P = SCALAR[theta.dtype.char], theta.shape[0]
        args = (theta, g, v, g_avg, buf, _i64(P), T(lr), T(alpha), T(1.0 - alpha), T(eps),
                T(weight_decay), T(momentum), _i32(bool(centered)), skip, step, _i32(parity))
        self._launch("rmsprop", P, args, theta.dtype)

    def nonfinite(self, g, found_inf):
        """found_inf ← 1 where some entry of g: (P,) is NaN or infinite (else unchanged).
        found_inf: int32 (1,), zeroed by :meth:`amp_update` after each step."""
        P = g.shape[0]
        self._launch("nonfinite", P, (g, _i64(P), found_inf), g.dtype)

    def amp_update(self, state, scale, found_inf, growth_factor, backoff_factor, growth_interval):
        """The loss scaler's rule on the device, after a step: found_inf set: S ← S ·
        backoff_factor, tracker ← 0, skipped += 1, epoch_skipped += 1; else tracker += 1, and
        S ← S · growth_factor, tracker ← 0 once it reaches growth_interval. Then scale ←
        (S, 1/S) in T and found_inf ← 0. state: float64 (4,) = (S, tracker, skipped,
        epoch_skipped); scale: (2,) of the master dtype T."""
        self._fn("amp_update", scale.dtype)(
            (1,), (1,), (state, scale, found_inf, _f64(growth_factor), _f64(backoff_factor),
                         _f64(growth_interval)))

    def amp_set(self, state, scale, found_inf, s, tracker, skipped, epoch_skipped):
        """The scaler's host values onto the device (as kernel arguments: no host sync)."""
        self._fn("amp_set", scale.dtype)(
            (1,), (1,), (state, scale, found_inf, _f64(s), _f64(tracker), _f64(skipped),
                         _f64(epoch_skipped)))
