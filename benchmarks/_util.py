"""Shape parsing, the reference check, the fallback guard and the timing record shared by
the benchmarks."""

from __future__ import annotations

import numpy as np

from gpudnn.kernels import GenericKernels

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


def guard_twins(k, monkeypatch):
    """Return kernel set ``k``, each layer kernel it overrides (GUARDED) made to fail where it
    hands a call to GenericKernels' twin for its arguments' sake: an array that is not
    C-contiguous, or arrays of two dtypes (what no fused kernel takes: NumPy's one-hot
    ``eye(n)[:, labels]`` is F-ordered, and until 2026-11-27 the kernel_output cases timed
    CUDA's twin twice). Fallbacks by design still run: an activation a set does not fuse
    (Numba's tanh forward), an output layer wider than ``CupyKernels.output_units``, a method
    a set does not override (the CPU's layer_backward). ``monkeypatch`` undoes it after the
    case."""
    for name in GUARDED:
        twin = getattr(GenericKernels, name)
        if getattr(type(k), name) is not twin:
            monkeypatch.setattr(GenericKernels, name, _guarded(twin, f"{type(k).__name__}.{name}"))
    return k


# the layer kernels, whose arrays are all of one dtype (unscale's are two by design)
GUARDED = ("bias_act", "act_backward", "output_loss_delta", "layer_backward")


def _guarded(twin, where):
    def guarded(self, *args, **kwargs):
        arrays = [a for a in (*args, *kwargs.values()) if hasattr(a, "flags") and a.ndim]
        if any(not a.flags.c_contiguous for a in arrays) or len({a.dtype for a in arrays}) > 1:
            raise AssertionError(
                f"{where} fell back to its generic twin (an array not C-contiguous, or two "
                f"dtypes: {[(a.shape, str(a.dtype), a.flags.c_contiguous) for a in arrays]}); "
                "the case would time the twin under the fused kernel's name")
        return twin(self, *args, **kwargs)
    return guarded
