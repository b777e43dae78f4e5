"""The three GEMMs of one layer, with preallocated outputs, exactly as ``Network`` calls them.

    gemm_forward   Z  = W @ A         W (n_out, n_in), A (n_in, B)       -> Z  (n_out, B)
    gemm_dW        dW = δ @ Aᵀ        δ (n_out, B),    Aᵀ a view of A    -> dW (n_out, n_in)
    gemm_delta     D  = Wᵀ @ δ        Wᵀ a view of W,  δ (n_out, B)      -> D  (n_in, B)

Case ids are ``{n_in}x{n_out}xB{B}``: the layers of the 784-1024-1024-10 net at B=1024 and
of the 64-128-10 net at B=256. Each result is checked against the float64 product.
"""

import numpy as np
import pytest

from benchmarks._util import assert_close, parse_layer

DTYPE = np.float32
CASES = ["784x1024xB1024", "1024x1024xB1024", "1024x10xB1024", "64x128xB256"]
RTOL = 1e-4  # float32 with K <= 1024: the error is ~1e-6 of max|ref|


def _layer(backend, rng, case):
    """Host float64 W, A, δ for one layer and their float32 device copies."""
    n_in, n_out, B = parse_layer(case)
    W = rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / n_in)
    A = rng.standard_normal((n_in, B))
    D = rng.standard_normal((n_out, B)) / B
    W, A, D = (M.astype(DTYPE).astype(np.float64) for M in (W, A, D))  # exact in float32
    dev = [backend.asarray(M, dtype=DTYPE) for M in (W, A, D)]
    return (W, A, D), dev


def _checker(backend, ref, what):
    return lambda out: assert_close(backend.to_numpy(out), ref, RTOL, what)


@pytest.mark.benchmark(group="gemm_forward")
@pytest.mark.parametrize("case", CASES)
def test_gemm_forward(bench, backend, rng, case):
    (W, A, _), (Wd, Ad, _) = _layer(backend, rng, case)
    xp = backend.xp
    Z = xp.empty((W.shape[0], A.shape[1]), DTYPE)
    bench(lambda: xp.matmul(Wd, Ad, out=Z), _checker(backend, W @ A, "W @ A"))


@pytest.mark.benchmark(group="gemm_dW")
@pytest.mark.parametrize("case", CASES)
def test_gemm_dW(bench, backend, rng, case):
    (W, A, D), (_, Ad, Dd) = _layer(backend, rng, case)
    xp = backend.xp
    dW = xp.empty(W.shape, DTYPE)
    bench(lambda: xp.matmul(Dd, Ad.T, out=dW), _checker(backend, D @ A.T, "delta @ A.T"))


@pytest.mark.benchmark(group="gemm_delta")
@pytest.mark.parametrize("case", CASES)
def test_gemm_delta(bench, backend, rng, case):
    (W, A, D), (Wd, _, Dd) = _layer(backend, rng, case)
    xp = backend.xp
    out = xp.empty(A.shape, DTYPE)
    bench(lambda: xp.matmul(Wd.T, Dd, out=out), _checker(backend, W.T @ D, "W.T @ delta"))
