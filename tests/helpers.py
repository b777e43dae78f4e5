"""Small builders shared by the tests."""

import itertools
import numpy as np
import pytest

import gpudnn
from cuda_emulator import COMPILER, EmulatedCupy

NO_COMPILER = "no C++ compiler (g++) to run the CUDA source on the CPU"
needs_compiler = pytest.mark.skipif(COMPILER is None, reason=NO_COMPILER)


def emulated_cupy():
    """The ``cupy`` module as the CUDA launchers see it, its kernels run on the CPU
    (tests/cuda_emulator.py); skips the test where there is no g++."""
    if COMPILER is None:
        pytest.skip(NO_COMPILER)
    return EmulatedCupy()


def emulated_cuda_kernels(**options):
    """The fused CUDA kernel set (CupyKernels, with ``options``) on NumPy arrays, through
    the emulator."""
    from gpudnn.kernels.cuda import CupyKernels

    return CupyKernels(emulated_cupy(), **options)

# every output activation with the losses it may pair with
OUTPUT_LOSS = [
    ("softmax", "cross_entropy"),
    ("sigmoid", "binary_cross_entropy"),
    ("sigmoid", "mse"),
    ("identity", "mse"),
    ("tanh", "mse"),
]
HIDDEN = ["sigmoid", "tanh", "relu", "leaky_relu", "identity"]


def targets(output, loss, n_out, B, rng):
    """Y: (n_out, B) valid for the output/loss pair: one-hot columns, 0/1, or values."""
    if loss == "cross_entropy":
        return np.eye(n_out)[:, rng.integers(0, n_out, B)]
    if output == "sigmoid":
        return rng.integers(0, 2, (n_out, B)).astype(float)
    if output == "tanh":
        return rng.uniform(-0.9, 0.9, (n_out, B))
    return rng.normal(size=(n_out, B))


def batch(net, B, rng):
    """Random inputs A0: (n_0, B) and valid targets Y: (n_L, B) for ``net``."""
    A0 = rng.normal(size=(net.sizes[0], B))
    return A0, targets(net.output, net.loss, net.sizes[-1], B, rng)


def host(net, a):
    return net.backend.to_numpy(a)


def make(sizes, backend, **kw):
    """A float64 network whose biases are random too (b = 0 would hide bias mistakes and
    put every ReLU of a dead layer exactly on its kink, where differences are one-sided)."""
    kw.setdefault("dtype", "float64")
    net = gpudnn.Network(sizes, backend=backend, **kw)
    rng = np.random.default_rng(99)
    for b in net.b:
        b[...] = net.backend.asarray(rng.normal(0.0, 0.5, b.shape))
    return net


class PickleBomb:
    """A pickle payload: unpickling it sets ``PickleBomb.triggered`` (it could as well run
    any code). Readers of model and data files must refuse it without unpickling."""

    triggered = False

    def __reduce__(self):
        return (_explode, ())


def _explode():
    PickleBomb.triggered = True


class Crash(Exception):
    """What a crash looks like in-process: raised instead of the n-th optimizer step."""


def crash_at(opt, n):
    """Make ``opt`` raise Crash instead of its n-th step (its repr, part of a checkpoint's
    configuration, is unchanged). Returns ``opt``."""
    step, calls = opt.step, itertools.count(1)

    def crashing(*args, **kw):
        if next(calls) == n:
            raise Crash
        step(*args, **kw)

    opt.step = crashing
    return opt


def launched(kernels):
    """{kernel name: launches so far} of an emulated CupyKernels, its thin modules' (one per
    width) included; {} on a GPU (CuPy does not count)."""
    counts = {}
    for module in [kernels._module, *kernels._thin_modules.values()]:
        for name, f in getattr(module, "_functions", {}).items():
            counts[name] = counts.get(name, 0) + f.launches
    return counts
