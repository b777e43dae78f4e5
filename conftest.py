"""Shared fixtures for tests/ and benchmarks/: every array case runs once per backend.

CuPy cases are always collected; where CuPy or a CUDA device is missing they are skipped
with the reason ``cupy_status`` gives, and on a GPU machine they run.
"""

import numpy as np
import pytest

from gpudnn.backend import cupy_status, get_backend
from gpudnn.kernels import numba_status

_CUPY, _CUPY_REASON = cupy_status()
BACKENDS = [
    "numpy",
    pytest.param(
        "cupy",
        marks=[
            pytest.mark.cupy,
            pytest.mark.skipif(_CUPY is None, reason=f"no GPU backend: {_CUPY_REASON}"),
        ],
    ),
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """A gpudnn Backend, once for NumPy and once for CuPy."""
    return get_backend(request.param)


_NUMBA_OK, _NUMBA_REASON = numba_status()


@pytest.fixture(params=["generic", pytest.param("numba", marks=pytest.mark.skipif(
    not _NUMBA_OK, reason=_NUMBA_REASON))])
def kernels(request, backend):
    """The kernel sets for ``backend``: the generic twins everywhere, Numba's on NumPy."""
    if request.param == "numba" and backend.name != "numpy":
        pytest.skip("the Numba kernels run on the NumPy backend only")
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
