"""The plain kernels, written once with the array namespace ``xp`` (NumPy or CuPy).

Each is a short composition of the σ / σ' pairs of :mod:`gpudnn.activations` and the
losses of :mod:`gpudnn.losses`; shapes as in :mod:`gpudnn.kernels`.
"""

from __future__ import annotations


# the hidden activations' codes in the fused kernels (Numba's loops, the CUDA source)
KIND = {"identity": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4}


class GenericKernels:
    name = "generic"

    def __init__(self, xp):
        self.xp = xp

    def fuses_layer(self, m, dtype, sigma):
        """Whether :meth:`layer_backward` is one pass below a layer of m units for arrays of
        ``dtype`` and σ: asked before any array is made, so that a step's workspace leaves
        out the (W^l)ᵀ δ^{l+1} scratch no layer uses."""
        return False

    def fuses_layer_backward(self, W, delta, a, sigma, dW, db):
        """Whether :meth:`layer_backward` runs these arrays in one pass (a fused set's
        question; the network otherwise runs its matmuls, then act_backward)."""
        return False

    def layer_backward(self, W, delta, a, sigma, dW, db):
        """Layer l's backward pass: dW ← δ aᵀ (∂J/∂W^l = δ^{l+1} (a^l)ᵀ), then a ← (Wᵀ δ) ⊙ σ'(a)
        (the recursion δ^l = (W^l)ᵀ δ^{l+1} ⊙ σ'(z^l), written over a^l) and db ← Σ_batch of
        it (∂J/∂b^{l-1}). W, dW: (m, n); delta: (m, B); a: (n, B); db: (n, 1). Returns a.
        The twin of the fused kernel: the two products into new arrays, then act_backward."""
        xp = self.xp
        xp.matmul(delta, a.T, out=dW)
        X = xp.matmul(W.T, delta)
        return self.act_backward(X, a, sigma, xp.empty_like(X), db, out=a)

    def fuses_unscale(self, g16, g):
        """Whether :meth:`unscale` is one pass for these arrays (a fused set's question: the
        loss scaler otherwise casts, multiplies and lets the step check)."""
        return False

    def unscale(self, g16, g, inv_scale, found_inf):
        """Mixed precision: g ← g16 · inv_scale (cast to g's dtype first: exact for float16
        and bfloat16), found_inf ← 1 where some g is NaN or infinite (else unchanged), with no
        host sync. g16, g: (P,); inv_scale: (1,) of g's dtype (1/S); found_inf: int32 (1,).
        Returns g."""
        xp = self.xp
        xp.copyto(g, g16, casting="same_kind")
        g *= inv_scale
        xp.maximum(found_inf, xp.logical_not(xp.isfinite(g).all()), out=found_inf)
        return g

    def bias_act(self, Z, b, sigma, tmp):
        """Z ← σ(Z + b). Z, tmp: (n, B); b: (n, 1)."""
        Z += b
        return sigma.forward(Z, Z, tmp)

    def act_backward(self, delta, A, sigma, tmp, db, out=None):
        """out ← δ ⊙ σ'(a) (σ' from the stored output a), then db ← Σ_batch out.

        ``out`` defaults to ``delta``; it may be ``A`` (the network writes δ^l over a^l,
        which the backward pass no longer needs). delta, A, tmp, out: (n, B); db: (n, 1)."""
        sigma.backward(delta, A, tmp)
        if out is not None and out is not delta:
            self.xp.copyto(out, delta)
            delta = out
        delta.sum(axis=1, keepdims=True, out=db)
        return delta

    def needs_scratch(self, dtype):
        """Whether the hidden layers' kernels use ``tmp`` for arrays of ``dtype`` (the twins do)."""
        return True

    def output_loss_delta(self, Z, b, A, Y, delta, db, sigma, loss, tmp, tmp2):
        """The output layer of a training step, after Z = W^{L-1} a^{L-1}:

        a^L = σ(Z + b) into A, the batch's summed loss (returned, 0-d, no host sync),
        δ^L = ∂J/∂z^L / B into delta (the batch mean, applied once) and db = Σ_batch δ^L.
        Z, A, Y, delta, tmp, tmp2: (n_L, B); b, db: (n_L, 1). Z keeps the logits.
        """
        Z += b
        sigma.forward(Z, A, tmp)
        total = loss.loss(Z, A, Y, tmp, tmp2)
        loss.delta(A, Y, delta, sigma, tmp)
        delta *= 1.0 / Z.shape[1]
        delta.sum(axis=1, keepdims=True, out=db)
        return total
