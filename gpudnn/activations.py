"""Activation functions σ and their derivatives σ', written as in-place pairs.

Letters: n = units in the layer, B = batch size. Every array is (n, B), one column per
sample, and every function works on the arrays it is given (``out=``), allocating nothing
of size n×B.

The seed's forward step ``a^l = σ(z^l)`` is ``forward(Z, out, tmp)`` (``out`` may be ``Z``;
``tmp`` is scratch of the same shape); the Hadamard factor of
its δ recursion ``δ^l = (W^{l+1})ᵀ δ^{l+1} ⊙ σ'(z^l)`` is ``backward(delta, A, tmp)``,
which multiplies ``delta`` in place by σ'(z) computed from the stored output a = σ(z):

    sigmoid     σ(z) = 1 / (1 + e^{-z})        σ' = a (1 − a)
    tanh        σ(z) = tanh z                   σ' = 1 − a²
    relu        σ(z) = max(z, 0)                σ' = [a > 0]
    leaky_relu  σ(z) = z if z > 0 else 0.01 z   σ' = 1 if a > 0 else 0.01
    identity    σ(z) = z                        σ' = 1
    softmax     a_i = e^{z_i} / Σ_k e^{z_k}     (output only; its δ comes from the loss)

So z^l need not be kept: the activation tensor A^l is the layer's whole memory cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from .errors import ConfigError

LEAKY_SLOPE = 0.01


def _xp(a):
    """The array module of ``a`` (NumPy or CuPy) without importing CuPy."""
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    import numpy

    return numpy


# --- sigmoid ------------------------------------------------------------------------------
def sigmoid_forward(Z, out, tmp=None):
    """out = σ(Z) = ½(1 + tanh(Z/2)): no exp overflow even at |z| = 1e4. Z, out: (n, B)."""
    xp = _xp(Z)
    xp.multiply(Z, 0.5, out=out)
    xp.tanh(out, out=out)
    out += 1.0
    out *= 0.5
    return out


def sigmoid_backward(delta, A, tmp):
    """delta ⊙= a(1 − a). delta, A, tmp: (n, B); tmp is scratch."""
    xp = _xp(A)
    xp.subtract(1.0, A, out=tmp)
    tmp *= A
    delta *= tmp
    return delta


# --- tanh ---------------------------------------------------------------------------------
def tanh_forward(Z, out, tmp=None):
    """out = tanh(Z). Z, out: (n, B)."""
    return _xp(Z).tanh(Z, out=out)


def tanh_backward(delta, A, tmp):
    """delta ⊙= 1 − a². delta, A, tmp: (n, B); tmp is scratch."""
    xp = _xp(A)
    xp.multiply(A, A, out=tmp)
    xp.subtract(1.0, tmp, out=tmp)
    delta *= tmp
    return delta


# --- relu ---------------------------------------------------------------------------------
def relu_forward(Z, out, tmp=None):
    """out = max(Z, 0). Z, out: (n, B)."""
    return _xp(Z).maximum(Z, 0.0, out=out)


def relu_backward(delta, A, tmp):
    """delta ⊙= [a > 0]. delta, A, tmp: (n, B); tmp is scratch."""
    xp = _xp(A)
    xp.greater(A, 0.0, out=tmp)
    delta *= tmp
    return delta


# --- leaky relu ---------------------------------------------------------------------------
def leaky_relu_forward(Z, out, tmp):
    """out = max(Z, 0.01 Z). Z, out, tmp: (n, B); tmp is scratch, out may be Z."""
    xp = _xp(Z)
    xp.multiply(Z, LEAKY_SLOPE, out=tmp)
    return xp.maximum(Z, tmp, out=out)


def leaky_relu_backward(delta, A, tmp):
    """delta ⊙= (1 if a > 0 else 0.01). delta, A, tmp: (n, B); tmp is scratch."""
    xp = _xp(A)
    xp.greater(A, 0.0, out=tmp)
    tmp *= 1.0 - LEAKY_SLOPE
    tmp += LEAKY_SLOPE
    delta *= tmp
    return delta


# --- identity -----------------------------------------------------------------------------
def identity_forward(Z, out, tmp=None):
    """out = Z. Z, out: (n, B)."""
    if out is not Z:
        _xp(Z).copyto(out, Z)
    return out


def identity_backward(delta, A, tmp):
    """delta ⊙= 1 (nothing to do). delta, A: (n, B)."""
    return delta


# --- softmax (output only) ----------------------------------------------------------------
def softmax_forward(Z, out, tmp=None):
    """out = softmax over each column of Z, shifted by the column max (no overflow).

    Z, out: (n_L, B); ``out`` must not be ``Z``'s memory when Z (the logits) is kept.
    """
    xp = _xp(Z)
    xp.subtract(Z, Z.max(axis=0, keepdims=True), out=out)
    xp.exp(out, out=out)
    out /= out.sum(axis=0, keepdims=True)
    return out


@dataclass(frozen=True)
class Activation:
    """A named σ / σ' pair. ``backward`` is None where σ' is folded into the loss."""

    name: str
    forward: Callable
    backward: Optional[Callable]
    hidden: bool = True


ACTIVATIONS = {
    a.name: a
    for a in (
        Activation("sigmoid", sigmoid_forward, sigmoid_backward),
        Activation("tanh", tanh_forward, tanh_backward),
        Activation("relu", relu_forward, relu_backward),
        Activation("leaky_relu", leaky_relu_forward, leaky_relu_backward),
        Activation("identity", identity_forward, identity_backward),
        Activation("softmax", softmax_forward, None, hidden=False),
    )
}
HIDDEN_ACTIVATIONS = tuple(n for n, a in ACTIVATIONS.items() if a.hidden)
OUTPUT_ACTIVATIONS = ("sigmoid", "identity", "tanh", "softmax")


def get_activation(name: str, *, output: bool = False) -> Activation:
    """Look up an activation by name; ``output`` selects the output-layer set."""
    allowed = OUTPUT_ACTIVATIONS if output else HIDDEN_ACTIVATIONS
    if name not in allowed:
        where = "output" if output else "hidden"
        raise ConfigError(
            f"unknown {where} activation {name!r}; choose one of {', '.join(allowed)}"
        )
    return ACTIVATIONS[name]
