"""Shared fixtures for tests/ and benchmarks/: every array case runs once per backend.

CuPy cases are always collected; where CuPy or a CUDA device is missing they are skipped
with the reason ``cupy_status`` gives, and on a GPU machine they run.
"""

import numpy as np
import pytest

from gpudnn.backend import cupy_status, get_backend
from gpudnn.kernels import numba_status

_CUPY, _CUPY_REASON = cupy_status()
CUPY_MARKS = [pytest.mark.cupy, pytest.mark.skipif(_CUPY is None, reason=f"no GPU backend: {_CUPY_REASON}")]
BACKENDS = ["numpy", pytest.param("cupy", marks=CUPY_MARKS)]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """A gpudnn Backend, once for NumPy and once for CuPy."""
    return get_backend(request.param)


_NUMBA_OK, _NUMBA_REASON = numba_status()


@pytest.fixture(params=["generic", "fast"])
def kernels(request, backend):
    """Each kernel set of ``backend``: the generic twins, and the fused set — Numba's on
    NumPy (skipped where Numba is missing), CUDA's on CuPy."""
    if request.param == "generic":
        return "generic"
    if backend.name == "cupy":
        return "cuda"
    if not _NUMBA_OK:
        pytest.skip(_NUMBA_REASON)
    return "numba"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
