"""The error types gpudnn raises.

Every error a user can cause is a :class:`GpudnnError`; those about values (a bad name, a
bad shape, bad data, a bad file) are also :class:`ValueError`, as in scikit-learn, so
existing ``except ValueError`` code keeps working. The CLI turns any of them into one line
on stderr and exit status 2.
"""

import contextlib


class GpudnnError(Exception):
    """Base class of every error gpudnn raises on purpose."""


class ConfigError(GpudnnError, ValueError):
    """A network, optimizer or training setting is invalid (unknown name, bad size, ...)."""


class ShapeError(GpudnnError, ValueError):
    """An array has the wrong number of dimensions or the wrong size."""


class DataError(GpudnnError, ValueError):
    """A dataset or data file cannot be used (empty, ragged, non-numeric, NaN, ...)."""


class ModelFileError(GpudnnError, ValueError):
    """A model file is malformed, truncated, inconsistent or hostile."""


class BackendError(GpudnnError, RuntimeError):
    """The requested array backend cannot be used (no CuPy, no CUDA device, ...)."""


class TrainingError(GpudnnError, ArithmeticError):
    """Training cannot go on: the loss became NaN or infinite."""


class DistributedError(GpudnnError, RuntimeError):
    """The ranks of a data-parallel job disagree (settings, data, weights) or one of them
    failed before training; raised alike on every rank."""


class OutOfMemoryError(GpudnnError, MemoryError):
    """Parameters or a batch's buffers do not fit in the memory of the network's device;
    says what was being allocated and how large it is."""


@contextlib.contextmanager
def allocating(what):
    """Running out of memory inside the block (NumPy's MemoryError, CuPy's OutOfMemoryError:
    both MemoryErrors) becomes an OutOfMemoryError saying ``what``, then the cause's first line."""
    try:
        yield
    except MemoryError as exc:
        cause = str(exc).splitlines()[0][:200] if str(exc) else "no details"
        raise OutOfMemoryError(f"{what} ({type(exc).__name__}: {cause})") from None
