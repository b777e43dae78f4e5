"""A whole training step against the GEMMs it cannot avoid.

    train_step   net.train_step(A0, Y, SGD(lr=0.01)): forward, loss, backward, update
    gemm_floor   only the GEMMs of that step, into preallocated outputs:
                 Z = W @ A for every layer, dW = δ Aᵀ for every layer, Wᵀ δ for every
                 layer but the first (3L − 1 GEMMs, the same shapes and views as Network)

Both are in the group ``train_step`` and share the case id ``{sizes}xB{B}``; the terminal
summary prints train_step / gemm_floor per network (the overhead of everything that is not a
GEMM: bias, activations, σ', loss, sums, the update, Python). Softmax + cross-entropy, ReLU,
float32, as a typical classifier.
"""

import numpy as np
import pytest

import gpudnn
from benchmarks._util import assert_close, parse_net
from benchmarks.contenders import GemmFloor

DTYPE = np.float32
CASES = ["784-1024-1024-10xB1024", "784-256-256-10xB256", "64-128-10xB256"]
RTOL = 1e-4


def _batch(rng, sizes, B):
    """A0: (n_0, B) standard normal inputs, Y: (n_L, B) one-hot columns."""
    A0 = rng.standard_normal((sizes[0], B)).astype(DTYPE)
    Y = np.zeros((sizes[-1], B), DTYPE)
    Y[rng.integers(0, sizes[-1], B), np.arange(B)] = 1.0
    return A0, Y


@pytest.mark.benchmark(group="train_step")
@pytest.mark.parametrize("case", CASES)
def test_train_step(bench, backend, rng, case):
    sizes, B = parse_net(case)
    net = gpudnn.Network(sizes, activation="relu", output="softmax", backend=backend.name, seed=0)
    A0, Y = (backend.asarray(M) for M in _batch(rng, sizes, B))
    opt = gpudnn.optim.SGD(lr=0.01)
    W0 = [backend.to_numpy(W).copy() for W in net.W]

    def check(loss):
        # the step returns the loss before its update: finite and positive; every layer's
        # weights must have moved (they keep moving over the timed rounds, which is harmless)
        assert isinstance(loss, float) and np.isfinite(loss) and loss > 0.0, f"loss {loss!r}"
        assert np.all(np.isfinite(backend.to_numpy(net.params))), "non-finite parameters"
        for l, (W, W_init) in enumerate(zip(net.W, W0)):
            assert not np.array_equal(backend.to_numpy(W), W_init), f"W[{l}] unchanged by the step"

    bench(lambda: net.train_step(A0, Y, opt), check, record="train_step")


@pytest.mark.benchmark(group="train_step")
@pytest.mark.parametrize("case", CASES)
def test_gemm_floor(bench, backend, rng, case):
    sizes, B = parse_net(case)
    xp = backend.xp
    # W and dW are the network's own views into its flat buffers, as in train_step
    net = gpudnn.Network(sizes, activation="relu", output="softmax", backend=backend.name, seed=0)
    floor = GemmFloor(xp, sizes, B, DTYPE, seed=int(rng.integers(2**31)), W=net.W, dW=net.dW)
    L = len(sizes) - 1
    W64, A64, D64 = ([backend.to_numpy(M).astype(np.float64) for M in Ms] for Ms in (net.W, floor.A, floor.D))
    refs = (
        [W64[l] @ A64[l] for l in range(L)],
        [D64[l] @ A64[l].T for l in range(L)],
        [W64[l].T @ D64[l] for l in range(1, L)],
    )

    def check(out):
        for name, got, want in zip(("W @ A", "delta @ A.T", "W.T @ delta"), out, refs):
            assert len(got) == len(want)
            for l, (g, w) in enumerate(zip(got, want)):
                assert_close(backend.to_numpy(g), w, RTOL, f"{name} [{l}]")

    bench(floor, check, record="gemm_floor")
