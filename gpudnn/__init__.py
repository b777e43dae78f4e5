"""gpudnn: fully connected networks trained by hand-written batched backpropagation.

    net = gpudnn.Network([64, 128, 10], activation="relu", output="softmax")
    net.fit(X, y, epochs=20, batch_size=64, optimizer=gpudnn.optim.SGD(lr=0.1))

Optimizers: ``gpudnn.optim``; learning-rate schedules: ``gpudnn.schedules``; callbacks
(early stopping, progress): ``gpudnn.callbacks``; scikit-learn estimators:
``gpudnn.sklearn`` (imported on its own: it needs scikit-learn).

The same code runs on NumPy (CPU) or CuPy (GPU); see ``gpudnn.backend``.
"""

from . import amp, callbacks, distributed, graphs, optim, schedules  # distributed: mpi4py only when used
from .backend import get_backend
from .data import load_digits
from .errors import (
    BackendError,
    ConfigError,
    DataError,
    DistributedError,
    GpudnnError,
    ModelFileError,
    OutOfMemoryError,
    ShapeError,
    TrainingError,
)
from .graphs import CapturedStep
from .network import Network

__version__ = "0.1.0"


def load(path, backend="auto", precision="saved"):
    """Read a model written by ``Network.save``; see :func:`gpudnn.io.load`."""
    from .io import load as _load

    return _load(path, backend=backend, precision=precision)


def from_torch(module, **kwargs):
    """A Network from a ``torch.nn.Sequential``; see :func:`gpudnn.pytorch.from_torch`."""
    from .pytorch import from_torch as _from_torch

    return _from_torch(module, **kwargs)


__all__ = [
    "Network",
    "CapturedStep",
    "load",
    "from_torch",
    "load_digits",
    "get_backend",
    "optim",
    "amp",
    "graphs",
    "schedules",
    "callbacks",
    "distributed",
    "GpudnnError",
    "ConfigError",
    "ShapeError",
    "DataError",
    "ModelFileError",
    "BackendError",
    "TrainingError",
    "DistributedError",
    "OutOfMemoryError",
    "__version__",
]
