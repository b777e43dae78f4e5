"""The ``bench`` fixture and the ratio summary (``backend``, ``rng``: the root conftest).

Every benchmark goes through the ``bench`` fixture, which

1. calls the function once (the warm-up) and checks that result against a plain reference,
2. times it with pytest-benchmark, synchronising the device inside the timed call (CuPy),
3. checks the result of the last timed call again (in-place kernels must stay meaningful
   over repeated calls).

Shapes are given as readable strings, parametrised under the name ``case`` in every test, so
``--benchmark-group-by=group,param:case`` splits each group per shape:

    "784x1024xB1024"          a layer n_in=784 -> n_out=1024 at batch B=1024   (GEMMs)
    "1024xB1024"              an (n, B) = (1024, 1024) activation              (elementwise)
    "784-1024-1024-10xB1024"  a network's sizes at batch B=1024                 (train_step)

The train_step group also records its times here, and the terminal summary prints the ratio
train_step / gemm_floor for every network (see README.md).
"""

from __future__ import annotations

import pytest

from benchmarks._util import _TIMES


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
        if record is not None and benchmark.stats is not None:
            case = request.node.callspec.params["case"]
            _TIMES[(backend.name, case, record)] = benchmark.stats.stats
        return out

    return run


def pytest_benchmark_update_machine_info(config, machine_info):
    """The saved JSON's ``machine_info`` (pytest-benchmark: CPU, Python) gains what the
    figures depend on as much: NumPy, its BLAS and threads, the environment variables that
    set them, gpudnn's CPU kernels (``benchmarks.contenders.machine``)."""
    from benchmarks.contenders import machine

    machine_info["gpudnn"] = machine()


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
