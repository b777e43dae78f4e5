"""Plain twins of the engine, written straight from the seed: column vectors, a for-loop
over samples, σ'(z) from z itself (not from the stored output), the δ recursion as written.

    a^1 = x;  z^l = W^l a^{l-1} + b^l;  a^l = σ(z^l)
    δ^L = ∂J/∂z^L;  δ^l = (W^{l+1})ᵀ δ^{l+1} ⊙ σ'(z^l)
    ∂J/∂W^l = δ^l (a^{l-1})ᵀ;  ∂J/∂b^l = δ^l
"""

import numpy as np

SIGMA = {
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
    "identity": lambda z: z,
    "softmax": lambda z: np.exp(z - z.max()) / np.exp(z - z.max()).sum(),
}
SIGMA_PRIME = {
    "sigmoid": lambda z: SIGMA["sigmoid"](z) * (1.0 - SIGMA["sigmoid"](z)),
    "tanh": lambda z: 1.0 - np.tanh(z) ** 2,
    "relu": lambda z: (z > 0).astype(float),
    "leaky_relu": lambda z: np.where(z > 0, 1.0, 0.01),
    "identity": lambda z: np.ones_like(z),
}


def sample_loss(a, y, loss):
    """J for one sample: a, y are (n_L, 1) columns."""
    if loss == "mse":
        return 0.5 * float(np.sum((a - y) ** 2))
    if loss == "cross_entropy":
        return -float(np.sum(y * np.log(a)))
    return -float(np.sum(y * np.log(a) + (1 - y) * np.log(1 - a)))


def per_sample_backprop(Ws, bs, acts, loss, A0, Y):
    """Mean loss and gradients over the columns of A0: (n_0, B), Y: (n_L, B).

    Ws[l]: (n_{l+1}, n_l), bs[l]: (n_{l+1}, 1), acts[l]: σ of layer l (last = output).
    """
    B = A0.shape[1]
    dWs = [np.zeros_like(W) for W in Ws]
    dbs = [np.zeros_like(b) for b in bs]
    total = 0.0
    for i in range(B):
        x, y = A0[:, i : i + 1], Y[:, i : i + 1]
        a, zs, as_ = x, [], [x]
        for W, b, act in zip(Ws, bs, acts):
            z = W @ a + b
            a = SIGMA[act](z)
            zs.append(z)
            as_.append(a)
        total += sample_loss(a, y, loss)
        if loss == "mse":
            delta = (a - y) * SIGMA_PRIME[acts[-1]](zs[-1])
        elif loss == "cross_entropy":  # ∂/∂z_k of −Σ_i y_i log softmax(z)_i: a_k Σ_i y_i − y_k
            delta = a * y.sum() - y
        else:  # sigmoid + binary cross-entropy, unit by unit
            delta = a - y
        for l in range(len(Ws) - 1, -1, -1):
            dWs[l] += delta @ as_[l].T
            dbs[l] += delta
            if l > 0:
                delta = (Ws[l].T @ delta) * SIGMA_PRIME[acts[l - 1]](zs[l - 1])
    return total / B, [d / B for d in dWs], [d / B for d in dbs]
