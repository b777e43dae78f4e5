"""The hot elementwise kernels of a training step, in interchangeable sets.

Letters: n units of a layer, B batch size, n_L output units. Every kernel works in place
on the buffers it is given (outputs first, then inputs) and allocates nothing of size n×B.

    bias_act(Z, b, sigma, tmp)                 Z ← σ(Z + b)                   the forward step
    act_backward(delta, A, sigma, tmp, db, out=None)
                                               out ← δ ⊙ σ'(a);  db ← Σ_batch out  the recursion's ⊙
                                               (out defaults to delta; may be A)
    output_loss_delta(Z, b, A, Y, delta, db, sigma, loss, tmp, tmp2)
                                               a^L = σ(Z + b), Σ loss, δ^L = ∂J/∂z / B, db
                                               (Z, A, Y, delta: four arrays that do not overlap)
    unscale(g16, g, inv_scale, found_inf)     g ← g16 · 1/S, found_inf ← 1 if some g is not
                                               finite: mixed precision's unscale and check
    layer_backward(W, delta, a, sigma, dW, db)
                                               dW ← δ aᵀ;  a ← (Wᵀ δ) ⊙ σ'(a);  db ← Σ_batch a:
                                               a layer's backward pass in one, where
                                               fuses_layer_backward(...) says so

:class:`~gpudnn.kernels.generic.GenericKernels` composes them from ``activations`` and
``losses`` with the array namespace (NumPy or CuPy): the plain twin every fused set is
tested against. :class:`~gpudnn.kernels.cpu.NumbaKernels` fuses each into one pass on the
CPU when Numba is installed (``pip install gpudnn[fast]``); :class:`~gpudnn.kernels.cuda.
CupyKernels` into one launch on a CUDA GPU, where a layer's backward pass (both products and
the ⊙) is one kernel below a layer of at most 16 units (:mod:`gpudnn.kernels.cuda_thin`).

The optimizers' updates have fused sets too: one Numba pass for plain SGD on the CPU
(:func:`fused_sgd`), and one CUDA launch per step for every rule of :mod:`gpudnn.optim` on a
CUDA GPU (:func:`cuda_updates`, :mod:`gpudnn.kernels.cuda_optim`).
"""

from __future__ import annotations

from ..errors import ConfigError
from .generic import GenericKernels

KERNELS = ("auto", "generic", "numba", "cuda")


def numba_status():
    """(available, text): whether the fused CPU kernels can be used here; the text gives
    Numba's version, or why not."""
    try:
        import numba
    except ImportError:
        return False, "Numba is not installed (pip install gpudnn[fast])"
    return True, f"Numba {numba.__version__}"


def fused_sgd(params):
    """The one-pass SGD update for the flat buffer ``params`` — Numba's on a NumPy float
    array when Numba is installed — or None (then SGD runs its generic passes)."""
    if type(params).__module__ != "numpy" or params.dtype.name not in ("float32", "float64"):
        return None
    if not numba_status()[0]:
        return None
    from .cpu import sgd_update

    return sgd_update


def cuda_updates(params, xp):
    """The fused CUDA optimizer updates (:class:`~gpudnn.kernels.cuda_optim.CudaOptimKernels`)
    for the flat buffer ``params`` when ``xp`` compiles CUDA source (CuPy; also the tests' CPU
    emulation of it) and params is float32 or float64 and contiguous — else None (the
    optimizers then run their generic passes)."""
    if getattr(xp, "RawModule", None) is None or params.dtype.char not in "fd":
        return None
    if not params.flags.c_contiguous:
        return None
    from .cuda_optim import CudaOptimKernels

    return CudaOptimKernels(xp)


def get_kernels(name, backend):
    """The kernel set called ``name`` ("auto", "generic", "numba", "cuda") for ``backend``.

    "auto" picks the fused CUDA kernels on the CuPy backend, the fused Numba kernels on the
    NumPy backend when Numba is installed, and the generic ones otherwise.
    """
    if name not in KERNELS:
        raise ConfigError(f"kernels must be one of {', '.join(KERNELS)}; got {name!r}")
    if name == "generic":
        return GenericKernels(backend.xp)
    wanted = {"numpy": "numba", "cupy": "cuda"}[backend.name]
    if name not in ("auto", wanted):
        raise ConfigError(f"kernels={name!r} does not run on the {backend.name} backend; "
                          f"use 'auto', 'generic' or {wanted!r}")
    if backend.name == "cupy":
        from .cuda import CupyKernels

        return CupyKernels(backend.xp)
    ok, reason = numba_status()
    if not ok:
        if name == "numba":
            raise ConfigError(f"kernels='numba' is not usable: {reason}")
        return GenericKernels(backend.xp)
    from .cpu import NumbaKernels

    return NumbaKernels(backend.xp)
