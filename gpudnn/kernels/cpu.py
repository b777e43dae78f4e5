"""Fused CPU kernels (Numba): each kernel of :mod:`gpudnn.kernels` in one pass.

NumPy needs a pass over memory per operation (``Z += b`` then ``max(Z, 0)``; ``σ'`` into a
scratch buffer, ``δ *= scratch``, then a row sum); these loops read and write each element
once. They are serial: parallel loops fought OpenBLAS's spinning threads (see README).
Same formulas as the generic twin (:mod:`gpudnn.kernels.generic`), which the tests
compare them with:

    σ(z):  identity z | relu max(z, 0) | leaky_relu z>0 ? z : 0.01 z   (sigmoid, tanh: generic)
    σ'(a): identity 1 | relu [a > 0] | leaky_relu a>0 ? 1 : 0.01 | sigmoid a(1 − a) | tanh 1 − a²

Compiled on first use for each dtype and cached on disk (``cache=True``).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ..activations import LEAKY_SLOPE
from .generic import KIND, GenericKernels

RELU, LEAKY_RELU, SIGMOID, TANH = (KIND[a] for a in ("relu", "leaky_relu", "sigmoid", "tanh"))
# Numba's scalar tanh is ~50x slower than NumPy's SIMD tanh (9.5 ms against 0.16 ms for
# 1024x1024 float32 here), so sigmoid and tanh keep the generic forward.
FUSED_FORWARD = {"identity", "relu", "leaky_relu"}

_jit = dict(cache=True, nogil=True)


@nb.njit(inline="always")
def _sigma(kind, z):
    """σ(z) for one element, for the kinds in FUSED_FORWARD."""
    if kind == RELU:
        return z if z > 0 or z != z else 0.0  # max(z, 0) as np.maximum: NaN stays NaN, −inf is 0
    if kind == LEAKY_RELU:
        return z if z > 0 else z * LEAKY_SLOPE
    return z


@nb.njit(inline="always")
def _sigma_prime(kind, a):
    """σ'(z) from the output a = σ(z), for one element."""
    if kind == RELU:
        return 1.0 if a > 0 else 0.0
    if kind == LEAKY_RELU:
        return 1.0 if a > 0 else LEAKY_SLOPE
    if kind == SIGMOID:
        return a * (1.0 - a)
    if kind == TANH:
        return 1.0 - a * a
    return 1.0


@nb.njit(**_jit)
def bias_act(Z, b, kind):
    """Z ← σ(Z + b) in one pass, σ one of FUSED_FORWARD. Z: (n, B) C-contiguous; b: (n, 1)."""
    n, B = Z.shape
    for i in range(n):
        bi = b[i, 0]
        for j in range(B):
            Z[i, j] = _sigma(kind, Z[i, j] + bi)


@nb.njit(inline="always", fastmath={"reassoc", "nsz"})
def _act_backward_into(delta, A, kind, db, out):
    """out ← δ ⊙ σ'(a), db ← Σ_batch out, for out = delta or out = A. Inlined into the two
    kernels below, where out is the same variable as one input: compiled as one loop with a
    third, possibly aliasing array it stayed scalar (21 µs instead of 4 for 128x256 float32)."""
    n, B = delta.shape
    for i in range(n):
        s = 0.0
        for j in range(B):
            d = delta[i, j] * _sigma_prime(kind, A[i, j])
            out[i, j] = d
            s += d
        db[i, 0] = s


@nb.njit(fastmath={"reassoc", "nsz"}, **_jit)
def act_backward(delta, A, kind, db):
    """δ ← δ ⊙ σ'(a) and db ← Σ_batch δ in one pass. delta, A: (n, B); db: (n, 1)."""
    _act_backward_into(delta, A, kind, db, delta)


@nb.njit(fastmath={"reassoc", "nsz"}, **_jit)
def act_backward_over_a(delta, A, kind, db):
    """The same written over A: A ← δ ⊙ σ'(a), db ← Σ_batch A (the network's δ^l over a^l)."""
    _act_backward_into(delta, A, kind, db, A)


@nb.njit(**_jit)
def softmax_shift(Z, b, A):
    """Z ← Z + b (the logits, kept); A ← Z − m with m the max of each column, returned: (B,).

    Z, A: (n_L, B); b: (n_L, 1). Row passes, each vectorised over B.
    """
    n, B = Z.shape
    m = np.full(B, -np.inf)
    for i in range(n):
        for j in range(B):
            z = Z[i, j] + b[i, 0]
            Z[i, j] = z
            m[j] = max(m[j], z)
    for i in range(n):
        for j in range(B):
            A[i, j] = Z[i, j] - m[j]
    return m


@nb.njit(**_jit)
def softmax_cross_entropy_finish(Z, A, Y, m, delta, db):
    """After A ← exp(Z − m): normalise A to softmax(z), and return the summed loss
    Σ_j [(m_j + log s_j) Σ_i y_ij − Σ_i y_ij z_ij] (s_j = Σ_i e^{z_ij − m_j}); then
    δ ← (a Σ_i y_i − y) / B (a − y for targets summing to 1) and db ← Σ_batch δ.
    Z, A, Y, delta: (n_L, B); m: (B,); db: (n_L, 1).
    """
    n, B = Z.shape
    s = np.zeros(B)
    for i in range(n):
        for j in range(B):
            s[j] += A[i, j]
    yz = np.zeros(B)
    ys = np.zeros(B)
    for i in range(n):
        for j in range(B):
            A[i, j] /= s[j]
            yz[j] += Y[i, j] * Z[i, j]
            ys[j] += Y[i, j]
    total = 0.0
    for j in range(B):
        total += ys[j] * (m[j] + math.log(s[j])) - yz[j]
    inv_B = 1.0 / B
    for i in range(n):
        acc = 0.0
        for j in range(B):
            d = (A[i, j] * ys[j] - Y[i, j]) * inv_B
            delta[i, j] = d
            acc += d
        db[i, 0] = acc
    return total


@nb.njit(**_jit)
def sgd_update(params, grads, v, lr, momentum, weight_decay, nesterov):
    """SGD in one pass, no scratch (the rule of :class:`gpudnn.optim.SGD`), per element:
    g = ∇ + λθ;  v ← μ v + g;  g ← g + μ v (Nesterov) or v;  θ ← θ − η g.
    params, grads, v: (P,); v is unused (may be empty) when μ = 0."""
    for i in range(params.shape[0]):
        g = grads[i] + weight_decay * params[i]
        if momentum != 0.0:
            vi = momentum * v[i] + g
            v[i] = vi
            g = g + momentum * vi if nesterov else vi
        params[i] -= lr * g


def _fusable(*arrays):
    """Whether the fused loops take these arrays: float32 or float64 (a float16 array, as in
    mixed precision, goes to the generic twin)."""
    # dtype.char, not dtype.name: .name builds a string (~1.5 µs a call, 11 calls a step)
    return all(a.dtype.char in "fd" for a in arrays)


class NumbaKernels(GenericKernels):
    """The fused CPU kernels; anything without a fused version falls back to the twin."""

    name = "numba"

    def bias_act(self, Z, b, sigma, tmp):
        kind = KIND.get(sigma.name)
        if sigma.name not in FUSED_FORWARD or not Z.flags.c_contiguous or not _fusable(Z, b):
            return super().bias_act(Z, b, sigma, tmp)
        bias_act(Z, b, kind)
        return Z

    def act_backward(self, delta, A, sigma, tmp, db, out=None):
        kind = KIND.get(sigma.name)
        over_a = out is A
        if (kind is None or not (out is None or out is delta or over_a)
                or not (delta.flags.c_contiguous and A.flags.c_contiguous) or not _fusable(delta, A, db)):
            return super().act_backward(delta, A, sigma, tmp, db, out)
        (act_backward_over_a if over_a else act_backward)(delta, A, kind, db)
        return A if over_a else delta

    def output_loss_delta(self, Z, b, A, Y, delta, db, sigma, loss, tmp, tmp2):
        if (sigma.name == "softmax" and loss.name == "cross_entropy" and Y.dtype == Z.dtype
                and _fusable(Z, b, A, Y, delta, db)):
            m = softmax_shift(Z, b, A)
            self.xp.exp(A, out=A)  # NumPy's SIMD exp: Numba's scalar one is ~10x slower
            return softmax_cross_entropy_finish(Z, A, Y, m, delta, db)
        return super().output_loss_delta(Z, b, A, Y, delta, db, sigma, loss, tmp, tmp2)
