"""Update rules over the flat parameter buffer θ and the flat gradient buffer g.

An optimizer is its hyperparameters, a state made on the first step (buffers shaped like
θ), and one update rule applied to the whole flat buffer at once: one pass over every
parameter of every layer, no per-layer Python loop. θ and g: (P,), P = number of parameters.
"""

from __future__ import annotations

import math

from .errors import ConfigError


def _check_number(name, value, *, low=0.0, low_open=False, high=None):
    """Raise ConfigError unless ``value`` is finite, ``low <= value`` (``<`` when low_open)
    and ``value < high``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if v in (math.inf, -math.inf):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if v != v or (low_open and v <= low) or v < low or (high is not None and v >= high):
        bound = f"> {low}" if low_open else f">= {low}"
        if high is not None:
            bound += f" and < {high}"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")
    return v


class Optimizer:
    """Base class: ``step(params, grads, xp)`` updates ``params`` in place.

    Subclasses implement ``_init_state(params, xp)`` and ``_update(params, grads, xp)``.
    """

    def __init__(self):
        self.state = None
        self.t = 0  # number of steps taken

    def step(self, params, grads, xp):
        """θ ← update(θ, g). params, grads: (P,) flat buffers of one network."""
        if self.state is None:
            self.state = self._init_state(params, xp)
        elif self.state["size"] != params.size:
            raise ConfigError(
                f"{type(self).__name__} was used with a network of {self.state['size']} "
                f"parameters and now gets one of {params.size}; make one optimizer per network"
            )
        self.t += 1
        self._update(params, grads, xp)

    def _init_state(self, params, xp):
        return {"size": params.size, "scratch": xp.empty_like(params)}

    # --- checkpoints: everything a bit-exact resume needs -----------------------------
    def state_dict(self):
        """{"type", "t", "buffers": {name: array (P,)}} — the step count and every state
        buffer (not the scratch), as they are on the device."""
        buffers = {} if self.state is None else {
            k: v for k, v in self.state.items() if k not in ("size", "scratch")
        }
        return {"type": type(self).__name__, "t": self.t, "buffers": buffers}

    def load_state_dict(self, d, params, xp):
        """Restore what ``state_dict`` gave, for the flat buffer ``params``: (P,)."""
        if d.get("type") != type(self).__name__:
            raise ConfigError(f"optimizer state is for {d.get('type')}, not {type(self).__name__}")
        self.state = self._init_state(params, xp)
        for k, v in d["buffers"].items():
            if k not in self.state or self.state[k].shape != tuple(v.shape):
                raise ConfigError(f"optimizer state buffer {k!r} does not fit this network")
            self.state[k][...] = xp.asarray(v)
        self.t = int(d["t"])


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 decay.

    Same rule and keyword names as ``torch.optim.SGD`` (dampening 0), after Sutskever et al.,
    "On the importance of initialization and momentum in deep learning" (ICML 2013):

        g ← g + λ θ                          (weight_decay λ)
        v ← μ v + g                          (momentum μ; v starts at 0)
        g ← g + μ v  if nesterov  else  v
        θ ← θ − η g                          (lr η)
    """

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__()
        self.lr = _check_number("lr", lr, low_open=True)
        self.momentum = _check_number("momentum", momentum, high=1.0)
        self.weight_decay = _check_number("weight_decay", weight_decay)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0.0:
            raise ConfigError("nesterov=True needs momentum > 0")

    def __repr__(self):
        return (
            f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
            f"weight_decay={self.weight_decay})"
        )

    def _init_state(self, params, xp):
        state = super()._init_state(params, xp)
        if self.momentum:
            state["v"] = xp.zeros_like(params)
        return state

    def _update(self, params, grads, xp):
        s = self.state["scratch"]
        g = grads
        if self.weight_decay:
            xp.multiply(params, self.weight_decay, out=s)
            s += grads
            g = s
        if self.momentum:
            v = self.state["v"]
            v *= self.momentum
            v += g
            if self.nesterov:  # θ −= η g + η μ v, in two passes with no temporary
                xp.multiply(g, self.lr, out=s)
                params -= s
                xp.multiply(v, self.lr * self.momentum, out=s)
                params -= s
                return
            g = v
        xp.multiply(g, self.lr, out=s)
        params -= s
