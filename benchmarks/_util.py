"""Shape parsing, the reference check and the timing record shared by the benchmarks."""

from __future__ import annotations

import numpy as np

# (backend name, case, kind) -> pytest-benchmark Stats, for the train_step / gemm_floor ratio
_TIMES: dict = {}


def parse_layer(case):
    """"784x1024xB1024" -> (n_in, n_out, B) = (784, 1024, 1024)."""
    dims, B = case.split("xB")
    n_in, n_out = dims.split("x")
    return int(n_in), int(n_out), int(B)


def parse_block(case):
    """"1024xB1024" -> (n, B) = (1024, 1024)."""
    n, B = case.split("xB")
    return int(n), int(B)


def parse_net(case):
    """"784-1024-1024-10xB1024" -> ([784, 1024, 1024, 10], 1024)."""
    sizes, B = case.split("xB")
    return [int(n) for n in sizes.split("-")], int(B)


def assert_close(actual, expected, rtol, what):
    """Max-abs-error check scaled by the size of the reference: |a - e| <= rtol * max|e|.

    ``actual`` is any host array (float32 result), ``expected`` a float64 reference.
    """
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite entries"
    scale = max(float(np.abs(expected).max()), 1e-30)
    err = float(np.abs(actual - expected).max())
    assert err <= rtol * scale, (
        f"{what}: max |err| = {err:.3g} > {rtol:g} * max|ref| = {rtol * scale:.3g}"
    )
