"""Models from PyTorch: ``from_torch(nn.Sequential(...))`` -> a Network with the same weights.

The other direction needs no code of ours: a model file is a safetensors file whose tensors
are named like a ``torch.nn.Sequential`` of ``Linear`` layers each followed by one activation
module (see :mod:`gpudnn.io` and the README), so ``load_state_dict`` reads it.

Letters: L weight layers, l = 0..L-1; ``W[l]``: (n_{l+1}, n_l) is ``nn.Linear.weight``
as it is (both are (out, in)), ``b[l]``: (n_{l+1}, 1) is ``nn.Linear.bias``: (n_{l+1},).

PyTorch is imported only when ``from_torch`` is called; gpudnn never needs it otherwise.
"""

from __future__ import annotations

import numpy as np

from .activations import LEAKY_SLOPE, OUTPUT_ACTIVATIONS
from .errors import ConfigError

_TORCH_DTYPES = {"torch.float32": "float32", "torch.float64": "float64"}


def _activation_name(module, nn):
    """The gpudnn name of an activation module, or None if gpudnn has no such activation."""
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.Tanh):
        return "tanh"
    if isinstance(module, nn.Sigmoid):
        return "sigmoid"
    if isinstance(module, nn.Identity):
        return "identity"
    if isinstance(module, nn.LeakyReLU) and module.negative_slope == LEAKY_SLOPE:
        return "leaky_relu"
    if isinstance(module, nn.Softmax) and module.dim in (1, -1, None):  # over the features
        return "softmax"
    return None


def _unsupported(i, module):
    return ConfigError(
        f"from_torch: module {i} ({module!r}) is not supported; the Sequential may hold "
        f"Linear layers, each followed by at most one of ReLU, Tanh, Sigmoid, "
        f"LeakyReLU(negative_slope={LEAKY_SLOPE}), Identity, and Softmax(dim=-1) last"
    )


def _layers(module, nn):
    """Split a Sequential into [(index, Linear, activation name or None), ...]."""
    if not isinstance(module, nn.Sequential):
        raise ConfigError(
            f"from_torch takes a torch.nn.Sequential of Linear layers and activations, "
            f"got {type(module).__name__}"
        )
    layers = []
    for i, m in enumerate(module):
        if isinstance(m, nn.Linear):
            layers.append([i, m, None])
            continue
        name = _activation_name(m, nn)
        if name is None or not layers:
            raise _unsupported(i, m)
        if layers[-1][2] is not None:
            raise ConfigError(
                f"from_torch: module {i} ({m!r}) follows another activation; gpudnn has one "
                "activation per layer"
            )
        layers[-1][2] = name
    if not layers:
        raise ConfigError("from_torch: the Sequential holds no Linear layer")
    return layers


def from_torch(module, *, output=None, loss=None, dtype=None, backend="auto"):
    """A :class:`~gpudnn.Network` computing what ``module`` computes, weights copied exactly.

    Parameters
    ----------
    module : torch.nn.Sequential
        ``Linear`` layers, each followed by at most one activation module: ``ReLU``,
        ``Tanh``, ``Sigmoid``, ``LeakyReLU(0.01)`` or ``Identity`` (none: identity) between
        layers; after the last one ``Softmax(dim=-1)``, ``Sigmoid``, ``Tanh``, ``Identity``
        or nothing. Anything else is a ConfigError naming the module.
    output : str or None
        The output activation when the module ends in a bare ``Linear`` (logits): e.g.
        ``"softmax"`` for a classifier trained with ``nn.CrossEntropyLoss``. None means
        ``"identity"``. It must agree with the module's own last activation if it has one.
    loss : str or None
        As for ``Network``; None picks the output's natural loss.
    dtype : "float32", "float64" or None
        None keeps the weights' dtype (which must then be float32 or float64).
    backend : "auto", "numpy" or "cupy"

    Returns a Network with ``W[l]`` = ``Linear.weight``: (n_{l+1}, n_l) and ``b[l]`` =
    ``Linear.bias`` reshaped to (n_{l+1}, 1) (zeros for ``bias=False``), bit for bit when
    ``dtype`` is the weights' own.
    """
    from torch import nn  # only here: gpudnn does not depend on PyTorch

    from .network import Network

    layers = _layers(module, nn)
    sizes = [layers[0][1].in_features]
    for i, lin, _ in layers:
        if lin.in_features != sizes[-1]:
            raise ConfigError(
                f"from_torch: module {i} ({lin!r}) takes {lin.in_features} inputs but the "
                f"layer before it gives {sizes[-1]}"
            )
        sizes.append(lin.out_features)
    hidden = [act or "identity" for _, _, act in layers[:-1]]
    last = layers[-1][2]
    if last is not None and last not in OUTPUT_ACTIVATIONS:
        i = layers[-1][0] + 1
        raise ConfigError(
            f"from_torch: module {i} ({module[i]!r}) cannot be the output activation; "
            f"gpudnn outputs are {', '.join(OUTPUT_ACTIVATIONS)}"
        )
    if last is not None and output is not None and output != last:
        raise ConfigError(
            f"from_torch: output={output!r} but the module ends in {module[len(module) - 1]!r}"
        )
    if "softmax" in hidden:
        i = next(i for i, _, act in layers[:-1] if act == "softmax") + 1
        raise _unsupported(i, module[i])
    weights = [(i, lin.weight, lin.bias) for i, lin, _ in layers]
    if dtype is None:
        found = {str(w.dtype) for _, w, _ in weights}
        if len(found) != 1 or not found <= set(_TORCH_DTYPES):
            raise ConfigError(
                f"from_torch: the weights are {', '.join(sorted(found))}; pass "
                "dtype='float32' or 'float64' to convert them"
            )
        dtype = _TORCH_DTYPES[found.pop()]

    net = Network(sizes, activation=hidden, output=last or output or "identity", loss=loss,
                  dtype=dtype, backend=backend)
    for l, (i, W, b) in enumerate(weights):
        W = _host(W, net.dtype)
        b = np.zeros((sizes[l + 1], 1), net.dtype) if b is None else _host(b, net.dtype)
        if not (np.isfinite(W).all() and np.isfinite(b).all()):
            raise ConfigError(f"from_torch: module {i} ({module[i]!r}) has NaN or infinite weights")
        net.W[l][...] = net.backend.asarray(W)
        net.b[l][...] = net.backend.asarray(b.reshape(-1, 1))
    return net


def _host(t, dtype):
    """A torch tensor as a NumPy array of ``dtype`` on the host (its own copy)."""
    t = t.detach().cpu()
    if str(t.dtype) not in _TORCH_DTYPES:  # e.g. bfloat16, which NumPy cannot hold
        import torch

        t = t.to(torch.float64)
    return np.array(t.numpy(), dtype=dtype)
