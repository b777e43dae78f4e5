"""Losses J and the output error δ^L = ∂J/∂z^L that starts the backward pass.

Letters: n_L = output units, B = batch size. Z (logits), A = σ(Z), Y (targets) and every
buffer are (n_L, B). A per-sample loss sums over the output units; the batch loss is the
mean over samples (the division by B happens once, in the network, on δ^L).

    mse                   J = ½‖a − y‖²                      δ^L = (a − y) ⊙ σ'(z)   (the seed's)
    cross_entropy         J = −Σ_i y_i log softmax(z)_i       δ^L = a Σ_i y_i − y   (softmax output
                                                             only; a − y when the targets of a
                                                             sample sum to 1: one-hot, smoothed)
    binary_cross_entropy  J = −Σ_i y_i log a_i + (1−y_i) log(1−a_i)
                                                             δ^L = a − y   (sigmoid output only)

The two cross-entropies are computed from the logits Z (log-sum-exp and softplus), so the
loss stays finite and warning-free at |z| = 1e4, where log(a) itself would be log(0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from .activations import Activation, _xp
from .errors import ConfigError


def _total64(xp, M):
    """Σ over all entries of M, accumulated in float64 (the batch total of a loss)."""
    return M.sum(dtype=xp.float64)


# --- mse ----------------------------------------------------------------------------------
def mse_loss(Z, A, Y, tmp, tmp2):
    """Σ over the batch of ½‖a − y‖². Z, A, Y, tmp, tmp2: (n_L, B). Returns a 0-d array."""
    xp = _xp(A)
    xp.subtract(A, Y, out=tmp)
    tmp *= tmp
    return 0.5 * _total64(xp, tmp)


def mse_delta(A, Y, out, sigma: Activation, tmp):
    """out = (a − y) ⊙ σ'(z), the seed's δ^L. A, Y, out, tmp: (n_L, B)."""
    _xp(A).subtract(A, Y, out=out)
    sigma.backward(out, A, tmp)
    return out


# --- cross-entropy with softmax -----------------------------------------------------------
def cross_entropy_loss(Z, A, Y, tmp, tmp2):
    """Σ over the batch of −Σ_i y_i log softmax(z)_i, via log-sum-exp of each column.

    −Σ_i y_i (z_i − m − log Σ_k e^{z_k − m}) with m the column max: no overflow, no log(0).
    Z, A, Y, tmp, tmp2: (n_L, B). Returns a 0-d array.
    """
    xp = _xp(Z)
    xp.subtract(Z, Z.max(axis=0, keepdims=True), out=tmp)  # z − m
    xp.exp(tmp, out=tmp2)
    lse = xp.log(tmp2.sum(axis=0, keepdims=True))  # log Σ e^{z−m}: (1, B)
    tmp -= lse  # log softmax(z)
    tmp *= Y
    return -_total64(xp, tmp)


def softmax_cross_entropy_delta(A, Y, out, sigma: Activation, tmp):
    """out = a Σ_i y_i − y: δ^L of softmax + cross-entropy, ∂/∂z_k of −Σ_i y_i (z_i − log Σ e^z)
    = a_k Σ_i y_i − y_k per column (a − y where the column's targets sum to 1, as one-hot and
    smoothed labels do; soft targets of any total, as distillation's, get their own).
    A, Y, out, tmp: (n_L, B); the column sums go to tmp's first row."""
    xp = _xp(A)
    s = tmp[:1]
    Y.sum(axis=0, keepdims=True, out=s)  # Σ_i y_i: (1, B)
    xp.multiply(A, s, out=out)
    out -= Y
    return out


def binary_cross_entropy_delta(A, Y, out, sigma: Activation, tmp):
    """out = a − y: δ^L of sigmoid + binary cross-entropy, unit by unit (σ' cancels against
    ∂J/∂a). A, Y, out: (n_L, B)."""
    return _xp(A).subtract(A, Y, out=out)


# --- binary cross-entropy with sigmoid ----------------------------------------------------
def binary_cross_entropy_loss(Z, A, Y, tmp, tmp2):
    """Σ of max(z, 0) − z y + log(1 + e^{−|z|}) (the softplus form of −y log a − (1−y) log(1−a)).

    Z, A, Y, tmp, tmp2: (n_L, B). Returns a 0-d array.
    """
    xp = _xp(Z)
    xp.abs(Z, out=tmp)
    xp.negative(tmp, out=tmp)
    xp.exp(tmp, out=tmp)
    xp.log1p(tmp, out=tmp)  # log(1 + e^{−|z|})
    xp.maximum(Z, 0.0, out=tmp2)
    tmp += tmp2
    xp.multiply(Z, Y, out=tmp2)
    tmp -= tmp2
    return _total64(xp, tmp)


@dataclass(frozen=True)
class Loss:
    """A named loss and its δ^L. ``output`` is the one output activation it requires."""

    name: str
    loss: Callable
    delta: Callable
    output: Optional[str] = None
    classifier: bool = False


LOSSES = {
    l.name: l
    for l in (
        Loss("mse", mse_loss, mse_delta),
        Loss("cross_entropy", cross_entropy_loss, softmax_cross_entropy_delta, "softmax", True),
        Loss(
            "binary_cross_entropy",
            binary_cross_entropy_loss,
            binary_cross_entropy_delta,
            "sigmoid",
            True,
        ),
    )
}

# the loss chosen when the user names only the output activation
DEFAULT_LOSS = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy"}


def get_loss(name: Optional[str], output: str) -> Loss:
    """The loss called ``name`` checked against the ``output`` activation.

    ``name=None`` picks cross_entropy for softmax, binary_cross_entropy for sigmoid and
    mse otherwise. Softmax pairs only with cross_entropy and cross_entropy only with
    softmax; binary_cross_entropy only with sigmoid. Anything else is a ConfigError.
    """
    if name is None:
        name = DEFAULT_LOSS.get(output, "mse")
    if not isinstance(name, str) or name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    loss = LOSSES[name]
    if output == "softmax" and name != "cross_entropy":
        other = ("output='sigmoid' (one unit per label)" if name == "binary_cross_entropy"
                 else "output='identity', 'sigmoid' or 'tanh'")
        raise ConfigError(
            f"output='softmax' goes only with loss='cross_entropy', not {name!r}; {name} takes {other}"
        )
    if loss.output is not None and loss.output != output:
        raise ConfigError(
            f"loss={name!r} needs output={loss.output!r}, got output={output!r}"
        )
    return loss
