"""The fused kernels of a step beside their generic twins, and the optimizer update.

Groups (case ids ``{n}xB{B}``, one per kernel set: ``generic`` = the NumPy/CuPy twin,
``fast`` = the fused kernels: Numba's on the CPU, CUDA's on CuPy):

    kernel_bias_act       Z ← σ(Z + b)                  (one pass fused, 2+ passes generic)
    kernel_act_backward   δ ← δ ⊙ σ'(a), db ← Σ_batch δ (one pass fused, 3 passes generic)
    kernel_output         softmax + cross-entropy: a^L, Σ loss, δ^L / B, db
    kernel_layer_backward below a thin layer: ∂J/∂W = δ aᵀ, δ ← (Wᵀ δ) ⊙ σ'(a), db (one CUDA
                          pass; two products and act_backward generic, and on the CPU)
    optimizer_update      SGD on the flat buffer of 784-1024-1024-10 (1.86 M parameters)

Every case is checked against a float64 formula before and after it is timed. The in-place
kernels restore their input from a fixed copy inside the timed call (same work each round).
"""

import numpy as np
import pytest

import gpudnn
from benchmarks._util import assert_close, parse_block
from gpudnn.activations import ACTIVATIONS, LEAKY_SLOPE
from gpudnn.losses import LOSSES

DTYPE = np.float32
CASES = ["1024xB1024", "128xB256"]
RTOL = 2e-6
SIGMA = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh,
         "leaky_relu": lambda z: np.where(z > 0, z, LEAKY_SLOPE * z)}
SIGMA_PRIME_OF_A = {"relu": lambda a: (a > 0) * 1.0, "tanh": lambda a: 1 - a * a,
                    "leaky_relu": lambda a: np.where(a > 0, 1.0, LEAKY_SLOPE)}


def _data(rng, case):
    n, B = parse_block(case)
    as32 = lambda M: M.astype(DTYPE).astype(np.float64)  # noqa: E731 (exact in float32)
    return n, B, as32(rng.standard_normal((n, B)) * 2), as32(rng.standard_normal((n, 1)))


@pytest.mark.benchmark(group="kernel_bias_act")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("act", sorted(SIGMA))
def test_bias_act(bench, backend, kernel_set, rng, act, case):
    k = kernel_set
    n, B, Z, b = _data(rng, case)
    Z0, bd = backend.asarray(Z, dtype=DTYPE), backend.asarray(b, dtype=DTYPE)
    buf, tmp = backend.xp.empty_like(Z0), backend.xp.empty_like(Z0)
    expected = SIGMA[act](Z + b)

    def step():
        backend.xp.copyto(buf, Z0)
        return k.bias_act(buf, bd, ACTIVATIONS[act], tmp)

    bench(step, lambda out: assert_close(backend.to_numpy(out), expected, RTOL, f"{act}(Z + b)"))


@pytest.mark.benchmark(group="kernel_act_backward")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("act", sorted(SIGMA))
def test_act_backward(bench, backend, kernel_set, rng, act, case):
    k = kernel_set
    n, B, D, _ = _data(rng, case)
    A = SIGMA[act](rng.standard_normal((n, B))).astype(DTYPE).astype(np.float64)
    D0, Ad = backend.asarray(D, dtype=DTYPE), backend.asarray(A, dtype=DTYPE)
    delta, tmp = backend.xp.empty_like(D0), backend.xp.empty_like(D0)
    db = backend.xp.empty((n, 1), DTYPE)
    expected = D * SIGMA_PRIME_OF_A[act](A)

    def step():
        backend.xp.copyto(delta, D0)
        return k.act_backward(delta, Ad, ACTIVATIONS[act], tmp, db)

    def check(out):
        assert_close(backend.to_numpy(out), expected, RTOL, f"δ ⊙ {act}'")
        assert_close(backend.to_numpy(db), expected.sum(axis=1, keepdims=True), 1e-5, "db")

    bench(step, check)


@pytest.mark.benchmark(group="kernel_output")
@pytest.mark.parametrize("case", ["10xB1024", "10xB256", "1024xB512"])
def test_softmax_cross_entropy_output(bench, backend, kernel_set, rng, case):
    k = kernel_set
    n, B, Z, b = _data(rng, case)
    Y = np.ascontiguousarray(np.eye(n)[:, rng.integers(0, n, B)])  # C order, as fit's buffers
    z = Z + b
    logp = z - z.max(axis=0) - np.log(np.exp(z - z.max(axis=0)).sum(axis=0))
    want_loss, want_delta = -(Y * logp).sum(), (np.exp(logp) - Y) / B
    Z0, bd, Yd = (backend.asarray(M, dtype=DTYPE) for M in (Z, b, Y))
    Zb, A, delta, t1, t2 = (backend.xp.empty_like(Z0) for _ in range(5))
    db = backend.xp.empty((n, 1), DTYPE)

    def step():
        backend.xp.copyto(Zb, Z0)
        return k.output_loss_delta(Zb, bd, A, Yd, delta, db, ACTIVATIONS["softmax"],
                                   LOSSES["cross_entropy"], t1, t2)

    def check(total):
        assert float(total) == pytest.approx(want_loss, rel=1e-5)
        assert_close(backend.to_numpy(delta), want_delta, 1e-5, "δ^L")

    bench(step, check)


@pytest.mark.benchmark(group="kernel_layer_backward")
@pytest.mark.parametrize("case", ["10x1024xB1024", "10x1024xB8192"])
def test_layer_backward(bench, backend, kernel_set, rng, case):
    """Below a layer of m units: dW = δ aᵀ, δ^l = (Wᵀ δ) ⊙ relu'(a) over a, db = Σ_batch δ^l."""
    m, block = case.split("x", 1)
    (n, B), m = parse_block(block), int(m)
    k = kernel_set
    as32 = lambda M: M.astype(DTYPE).astype(np.float64)  # noqa: E731 (exact in float32)
    W, D = as32(rng.standard_normal((m, n)) / np.sqrt(m)), as32(rng.standard_normal((m, B)) / B)
    A = as32(np.maximum(rng.standard_normal((n, B)), 0))
    want_dW, want = D @ A.T, (W.T @ D) * (A > 0)
    Wd, Dd, A0 = (backend.asarray(M, dtype=DTYPE) for M in (W, D, A))
    a, dW, db = backend.xp.empty_like(A0), backend.xp.empty((m, n), DTYPE), backend.xp.empty((n, 1), DTYPE)

    def step():
        backend.xp.copyto(a, A0)  # δ^l is written over a^l
        return k.layer_backward(Wd, Dd, a, ACTIVATIONS["relu"], dW, db)

    def check(out):
        assert_close(backend.to_numpy(out), want, RTOL, "δ^l")
        assert_close(backend.to_numpy(dW), want_dW, 1e-5, "∂J/∂W^l")
        assert_close(backend.to_numpy(db), want.sum(axis=1, keepdims=True), 1e-5, "db")

    bench(step, check)


@pytest.mark.benchmark(group="optimizer_update")
@pytest.mark.parametrize("kw", [dict(lr=0.01), dict(lr=0.01, momentum=0.9)], ids=["sgd", "sgd_momentum"])
def test_optimizer_update(bench, backend, rng, kw):
    P = gpudnn.Network([784, 1024, 1024, 10], backend="numpy").n_params
    theta0 = rng.standard_normal(P).astype(DTYPE)
    g = backend.asarray(rng.standard_normal(P).astype(DTYPE))
    theta_start = backend.asarray(theta0)
    theta = theta_start.copy()
    opt = gpudnn.optim.SGD(**kw)
    xp = backend.xp

    def step():  # one update from the same θ0 each round; the momentum v keeps growing
        xp.copyto(theta, theta_start)
        opt.step(theta, g, xp)
        return theta

    def check(out):  # after t calls with a constant g: v_t = (Σ_{i<t} μ^i) g, θ = θ0 − lr v_t
        mu, t = kw.get("momentum", 0.0), opt.t
        factor = sum(mu**i for i in range(t)) if mu else 1.0
        want = theta0.astype(np.float64) - kw["lr"] * factor * backend.to_numpy(g)
        assert_close(backend.to_numpy(out), want, 1e-4, "θ")

    bench(step, check)
