"""Elementwise kernels of the hidden layers: σ (activation_forward) and δ ⊙= σ'(z) (hadamard).

Case ids are ``{n}xB{B}``: an (n, B) block, a hidden layer of the 784-1024-1024-10 net at
B=1024 (memory bound, 4 MiB per float32 array) and one of the 64-128-10 net at B=256 (call
overhead bound). Every hidden activation of ``gpudnn.activations`` is benchmarked; one
without a reference formula below fails, so a new activation gets one.

``backward(delta, A, tmp)`` multiplies delta in place, so the timed call first copies a fixed
δ into the buffer: every round does the same work on the same data. The ``copy`` twin in the
hadamard group times that copy alone; hadamard − copy is the cost of σ' and the product.
"""

import numpy as np
import pytest

from benchmarks._util import assert_close, parse_block
from gpudnn.activations import ACTIVATIONS, HIDDEN_ACTIVATIONS, LEAKY_SLOPE

DTYPE = np.float32
CASES = ["1024xB1024", "128xB256"]
RTOL = 1e-6  # of max|ref|: float32 rounding (σ from tanh, 1 − a near a = 1), not a formula error


def _sigmoid64(z):
    return 1.0 / (1.0 + np.exp(-z))


# direct float64 formulas of σ(z) and σ'(z), written from z (the kernels work from a = σ(z))
FORWARD = {
    "sigmoid": _sigmoid64,
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "leaky_relu": lambda z: np.where(z > 0, z, LEAKY_SLOPE * z),
    "identity": lambda z: z,
}
DERIVATIVE = {
    "sigmoid": lambda z: _sigmoid64(z) * _sigmoid64(-z),
    "tanh": lambda z: 1.0 / np.cosh(z) ** 2,
    "relu": lambda z: (z > 0).astype(np.float64),
    "leaky_relu": lambda z: np.where(z > 0, 1.0, LEAKY_SLOPE),
    "identity": np.ones_like,
}


def _reference(table, name):
    if name not in table:
        pytest.fail(f"no reference formula for hidden activation {name!r}; add it to {__name__}")
    return table[name]


def _block(backend, rng, case):
    """Host float64 Z (pre-activations) and δ, both exactly representable in float32."""
    n, B = parse_block(case)
    Z = (rng.standard_normal((n, B)) * 3.0).astype(DTYPE).astype(np.float64)
    D = rng.standard_normal((n, B)).astype(DTYPE).astype(np.float64)
    return Z, D


@pytest.mark.benchmark(group="activation_forward")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("act", HIDDEN_ACTIVATIONS)
def test_activation_forward(bench, backend, rng, act, case):
    """A = σ(Z) into a separate buffer (Network runs it in place on Z; same traffic pattern)."""
    ref = _reference(FORWARD, act)
    sigma = ACTIVATIONS[act]
    xp = backend.xp
    Z, _ = _block(backend, rng, case)
    Zd = backend.asarray(Z, dtype=DTYPE)
    A, tmp = xp.empty_like(Zd), xp.empty_like(Zd)
    expected = ref(Z)
    bench(
        lambda: sigma.forward(Zd, A, tmp),
        lambda out: assert_close(backend.to_numpy(out), expected, RTOL, f"{act}(Z)"),
    )


@pytest.mark.benchmark(group="hadamard")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("act", HIDDEN_ACTIVATIONS)
def test_hadamard(bench, backend, rng, act, case):
    """delta ⊙= σ'(z) via backward(delta, A, tmp), after restoring delta from a fixed δ."""
    ref = _reference(DERIVATIVE, act)
    sigma = ACTIVATIONS[act]
    xp = backend.xp
    Z, D = _block(backend, rng, case)
    Zd = backend.asarray(Z, dtype=DTYPE)
    A = sigma.forward(Zd, xp.empty_like(Zd), xp.empty_like(Zd))  # a = σ(z), as the net has it
    D0 = backend.asarray(D, dtype=DTYPE)
    delta, tmp = xp.empty_like(D0), xp.empty_like(D0)
    expected = D * ref(Z)

    def step():
        xp.copyto(delta, D0)
        return sigma.backward(delta, A, tmp)

    def check(out):
        assert out is delta, f"{act}.backward must work in place and return delta"
        assert_close(backend.to_numpy(out), expected, RTOL, f"delta * {act}'(Z)")

    bench(step, check)


@pytest.mark.benchmark(group="hadamard")
@pytest.mark.parametrize("case", CASES)
def test_hadamard_copy(bench, backend, rng, case):
    """The reference twin: the copy of δ into the buffer that every hadamard call starts with."""
    xp = backend.xp
    _, D = _block(backend, rng, case)
    D0 = backend.asarray(D, dtype=DTYPE)
    delta = xp.empty_like(D0)

    def step():
        xp.copyto(delta, D0)
        return delta

    bench(step, lambda out: assert_close(backend.to_numpy(out), D, 0.0, "copy of delta"))
