"""Array backends: NumPy on the CPU, CuPy on a CUDA GPU.

A :class:`Backend` is chosen per Network (never through a mutable global) and gives the
compute code its array namespace ``xp`` plus the few operations that differ between host
and device: moving arrays across, synchronising, and describing the device.

``import gpudnn`` never imports CuPy; it is imported only when a backend asks for it.
"""

from __future__ import annotations

import numpy as np

from .errors import BackendError, ConfigError

BACKENDS = ("auto", "numpy", "cupy")


class Backend:
    """An array namespace and the host/device operations that go with it.

    Attributes
    ----------
    name : str
        ``"numpy"`` or ``"cupy"``.
    xp : module
        The array namespace compute code uses (``numpy`` or ``cupy``).
    """

    def __init__(self, name: str, xp):
        self.name = name
        self.xp = xp
        self._slots = {}  # dtype -> the _HostScalar read_later reuses
        self._unread = []  # slots replaced while their copy may still be in flight

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"

    def asarray(self, a, dtype=None):
        """Put ``a`` on this backend's device (no copy when it is already there)."""
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        """Bring ``a`` back to the host as a NumPy array."""
        if self.name == "cupy":
            return self.xp.asnumpy(a)
        return np.asarray(a)

    def take_columns(self, M, idx, out):
        """out ← M[:, idx] without a temporary. M: (n, N), idx: (B,) valid indices, out: (n, B).

        NumPy's ``take`` buffers the whole result unless ``mode`` is not "raise" (a 1 MB copy
        per 256x1024 float32 batch); the indices here are a permutation, always in range.
        """
        if self.name == "numpy":
            return np.take(M, idx, axis=1, out=out, mode="clip")
        return self.xp.take(M, idx, axis=1, out=out)

    def device_memory(self) -> tuple[int, int] | None:
        """(free, total) bytes of the device's memory, or None on the CPU (host memory is not
        accounted: data there is in host memory either way).

        free is what ``cudaMemGetInfo`` reports plus what CuPy's default memory pool holds
        without using it (the driver counts those blocks as used, CuPy reuses them, and frees
        them all to retry an allocation that failed).
        """
        if self.name != "cupy":
            return None
        free, total = self.xp.cuda.runtime.memGetInfo()
        return int(free) + int(self.xp.get_default_memory_pool().free_bytes()), int(total)

    def read_later(self, x):
        """A callable that returns ``float(x)``, x a 0-d array, as x is now in stream order.

        NumPy reads x at once. On CuPy the value is copied to pinned host memory on the
        current stream, behind the work queued so far, and an event is recorded after the
        copy; the callable waits for that event only. Work queued after this call (a step's
        backward pass and update) keeps the device busy while the host waits, so the host is
        back to queue the next step before the device runs dry, where ``float(x)`` at the
        step's end leaves the device idle until the next step's first launch reaches it.
        The pinned scalar and the event are kept and reused once their value has been read.
        """
        if self.name != "cupy" or not isinstance(x, self.xp.ndarray):
            value = float(x)
            return lambda: value
        slot = self._slots.get(x.dtype)
        if slot is None or slot.pending:  # another read not taken (yet, or ever): a new slot
            if slot is not None:  # the old one kept until its copy is done: its pinned memory
                self._unread.append(slot)  # must not go back to the pool with a copy in flight
            self._unread = [s for s in self._unread if s.pending and not s.event.done]
            slot = self._slots[x.dtype] = _HostScalar(self.xp, x.dtype)
        return slot.start(x)

    def synchronize(self) -> None:
        """Wait for all queued device work (a no-op on the CPU)."""
        if self.name == "cupy":
            self.xp.cuda.get_current_stream().synchronize()

    def owns(self, a) -> bool:
        """True when ``a`` is an array of this backend's type."""
        return isinstance(a, self.xp.ndarray)

    def rng_state(self, gen) -> dict:
        """The state of ``gen``, a ``xp.random.Generator``, to store in a checkpoint: a dict
        whose "bit_generator" names the generator's class.

        NumPy: ``bit_generator.state``, JSON values (PCG64: 128-bit integers). CuPy:
        {"bit_generator": "XORWOW", "state": a NumPy uint8 array}, the bytes of the cuRAND
        states on the device (one per GPU thread, so tied to the GPU's number of
        multiprocessors), read from CuPy's private ``_state`` as CuPy has no public API for
        it. Untested: no test machine has a GPU.
        """
        bg = gen.bit_generator
        if self.name == "cupy":  # pragma: no cover - needs a GPU
            return {"bit_generator": type(bg).__name__, "state": self.to_numpy(bg._state).view(np.uint8)}
        return bg.state

    def set_rng_state(self, gen, state) -> None:
        """Put ``gen`` back in the state ``rng_state`` gave. Raises ValueError when the state
        is not one of ``gen``'s (another generator, another GPU, malformed)."""
        bg = gen.bit_generator
        if not isinstance(state, dict) or state.get("bit_generator") != type(bg).__name__:
            raise ValueError(f"the state is not one of a {type(bg).__name__} generator")
        if self.name == "cupy":  # pragma: no cover - needs a GPU
            saved = state.get("state")
            if not isinstance(saved, np.ndarray) or saved.dtype != np.uint8 or saved.shape != bg._state.shape:
                raise ValueError(
                    f"the {type(bg).__name__} state is {getattr(saved, 'shape', '?')} bytes, this GPU's "
                    f"is {bg._state.shape}: saved on a GPU with another number of multiprocessors?"
                )
            bg._state[...] = self.xp.asarray(saved).view(bg._state.dtype)
            return
        try:
            bg.state = state
        except (TypeError, KeyError, OverflowError) as exc:
            raise ValueError(f"not a valid {type(bg).__name__} state ({type(exc).__name__}: {exc})") from None

    def tf32_matmuls(self):
        """A reusable context manager under which float32 matmuls run on TF32 tensor cores
        (inputs rounded to a 10-bit mantissa, float32 accumulation: cuBLAS's
        CUBLAS_COMPUTE_32F_FAST_TF32). CuPy's setting is process-wide, so it is switched on
        for the duration of a pass and restored after. Needs CuPy on a GPU of compute
        capability 8.0 or higher (Ampere, Hopper); raises ConfigError otherwise."""
        if self.name != "cupy":
            raise ConfigError("precision='tf32' is a matmul mode of NVIDIA tensor cores: it needs "
                              f"the cupy backend (this network's is {self.name!r}); on the CPU use float32")
        cc = int(self.xp.cuda.Device().compute_capability)
        if cc < 80:
            raise ConfigError(f"precision='tf32' needs a GPU of compute capability 8.0 or higher; "
                              f"this one has {cc // 10}.{cc % 10}")
        from cupy._core import _routines_linalg as linalg  # no public API for it (CUPY_TF32 is read once)

        return _ComputeType(linalg, np.float32, linalg.COMPUTE_TYPE_TF32)

    def describe(self) -> str:
        """One line naming the device."""
        if self.name == "cupy":
            dev = self.xp.cuda.Device()
            props = self.xp.cuda.runtime.getDeviceProperties(dev.id)
            name = props["name"]
            name = name.decode() if isinstance(name, bytes) else name
            return f"cupy {self.xp.__version__} on GPU {dev.id}: {name}"
        return f"numpy {np.__version__} on the CPU"


class _HostScalar:
    """A pinned host scalar and the CUDA event that marks a copy into it done (read_later)."""

    def __init__(self, xp, dtype):
        import cupyx

        self.host = cupyx.empty_pinned((), dtype)
        self.event = xp.cuda.Event(disable_timing=True)
        self.pending = False

    def start(self, x):
        """Queue x's copy into the host scalar and the event; returns the reader."""
        x.get(out=self.host, blocking=False)
        self.event.record()
        self.pending = True
        value = []

        def read():
            if not value:  # the first call waits and takes the value; later ones repeat it
                self.event.synchronize()
                value.append(float(self.host))
                self.pending = False
            return value[0]

        return read


class _ComputeType:
    """Context: CuPy's matmul compute type for ``dtype`` set to ``compute``, restored on exit."""

    def __init__(self, linalg, dtype, compute):
        self.linalg, self.dtype, self.compute, self.saved = linalg, dtype, compute, None

    def __enter__(self):
        self.saved = self.linalg.get_compute_type(self.dtype)
        self.linalg.set_compute_type(self.dtype, self.compute)
        return self

    def __exit__(self, *exc):
        self.linalg.set_compute_type(self.dtype, self.saved)
        return False


def cupy_status() -> tuple[object | None, str]:
    """Import CuPy and check for a usable CUDA device.

    Returns ``(cupy_module, "")`` when a GPU is usable, else ``(None, reason)`` where the
    reason names the missing piece. CuPy imports without a GPU and only fails on the first
    device query (``CUDARuntimeError: cudaErrorInsufficientDriver``); that counts as no GPU.
    """
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the environment
        return None, (
            f"CuPy is not installed ({exc}); install it with "
            "`pip install gpudnn[cuda12]` or `gpudnn[cuda13]`"
        )
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, CUDADriverError, ...
        return None, f"CuPy is installed but no CUDA device is usable ({type(exc).__name__}: {exc})"
    if count < 1:
        return None, "CuPy is installed but found no CUDA device"
    return cupy, ""


def get_backend(name: str | Backend = "auto") -> Backend:
    """Return the backend called ``name``: ``"auto"``, ``"numpy"`` or ``"cupy"``.

    ``"auto"`` picks CuPy when a CUDA device is usable and NumPy otherwise.
    ``"cupy"`` without a usable GPU raises :class:`BackendError` saying what is missing.
    """
    if isinstance(name, Backend):
        return name
    if name not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    if name == "numpy":
        return Backend("numpy", np)
    cupy, reason = cupy_status()
    if cupy is not None:
        return Backend("cupy", cupy)
    if name == "cupy":
        raise BackendError(f"backend='cupy' is not usable: {reason}")
    return Backend("numpy", np)
