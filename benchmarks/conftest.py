"""The ``bench`` fixture and the ratio summary (``backend``, ``rng``: the root conftest).

Every benchmark goes through the ``bench`` fixture, which

1. calls the function once (the warm-up) and checks that result against a plain reference,
2. times it with pytest-benchmark, synchronising the device inside the timed call (CuPy):
   the host's wall time per call, launches and the wait included,
3. checks the result of a call after the timed ones again (in-place kernels must stay
   meaningful over repeated calls),
4. on CuPy, times it again with CUDA events (``cupyx.profiler.benchmark``, 50 calls): the
   device's own time per call, in the JSON's ``extra_info["gpu_median_ms"]`` — a small
   kernel's host wall time is mostly Python and launch overhead.

Shapes are given as readable strings, parametrised under the name ``case`` in every test, so
``--benchmark-group-by=group,param:case`` splits each group per shape:

    "784x1024xB1024"          a layer n_in=784 -> n_out=1024 at batch B=1024   (GEMMs)
    "1024xB1024"              an (n, B) = (1024, 1024) activation              (elementwise)
    "784-1024-1024-10xB1024"  a network's sizes at batch B=1024                 (train_step)

The train_step group also records its times here, and the terminal summary prints the ratio
train_step / gemm_floor for every network (see README.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks._util import _TIMES, guard_twins
from gpudnn.backend import cupy_status
from gpudnn.kernels import get_kernels


@pytest.fixture
def kernel_set(kernels, backend, monkeypatch):
    """``get_kernels(kernels, backend)``, its fallbacks to the generic twin guarded
    (``guard_twins``): a "fast" case never times the twin under the fused kernel's name by
    accident (a layout or dtype); fallbacks by design (an output layer wider than
    ``CupyKernels.output_units``, Numba's tanh forward) still run, as a network runs them."""
    return guard_twins(get_kernels(kernels, backend), monkeypatch)


@pytest.fixture
def bench(benchmark, backend, request):
    """``bench(fn, check=None, record=None)``: warm up + check, time, check again.

    fn()          the work to time; returns what ``check`` inspects
    check(out)    raises if ``out`` (the return value of fn) is wrong; called on the warm-up
                  result before timing and on the last timed result after it
    record        a kind ("train_step", "gemm_floor") under which to remember the timing
                  for the ratio summary
    """

    def run(fn, check=None, record=None):
        def timed():
            out = fn()
            backend.synchronize()
            return out

        out = timed()  # warm-up, and the first check
        if check is not None:
            check(out)
        out = benchmark(timed)
        if check is not None:
            check(out)
        if backend.name == "cupy" and benchmark.stats is not None:
            from cupyx.profiler import benchmark as device_time

            # name given: cupyx reads fn.__name__ otherwise, which a callable object (GemmFloor) lacks
            gpu = device_time(fn, n_repeat=50, n_warmup=3, name=request.node.name).gpu_times  # (devices, repeats) s
            benchmark.extra_info["gpu_median_ms"] = float(np.median(gpu[0])) * 1e3
        if record is not None and benchmark.stats is not None:
            case = request.node.callspec.params["case"]
            _TIMES[(backend.name, case, record)] = benchmark.stats.stats
        return out

    return run


def pytest_benchmark_update_machine_info(config, machine_info):
    """The saved JSON's ``machine_info`` (pytest-benchmark: CPU, Python) gains what the
    figures depend on as much: NumPy, its BLAS and threads, the environment variables that
    set them, gpudnn's CPU kernels, a digest of the gpudnn sources, and where a GPU is
    usable the card, driver, CUDA runtime and CuPy (``benchmarks.contenders.environment``,
    as scripts/gpu_bench.py records them)."""
    from benchmarks.contenders import environment

    machine_info["gpudnn"] = environment(cupy_status()[0])


def pytest_terminal_summary(terminalreporter):
    pairs = sorted({(b, c) for b, c, _ in _TIMES})
    rows = []
    for b, c in pairs:
        ts, gf = _TIMES.get((b, c, "train_step")), _TIMES.get((b, c, "gemm_floor"))
        if ts is None or gf is None:
            continue
        rows.append(
            f"  {b:<6} {c:<26} {ts.min * 1e3:10.3f} {gf.min * 1e3:10.3f} {ts.min / gf.min:7.2f}"
            f" {ts.median * 1e3:10.3f} {gf.median * 1e3:10.3f} {ts.median / gf.median:7.2f}"
        )
    if not rows:
        return
    tr = terminalreporter
    tr.write_sep("-", "train_step / gemm_floor (ms; ratio = train_step / gemm_floor)")
    tr.write_line(
        f"  {'backend':<6} {'net':<26} {'step min':>10} {'floor min':>10} {'ratio':>7}"
        f" {'step med':>10} {'floor med':>10} {'ratio':>7}"
    )
    for row in rows:
        tr.write_line(row)
