"""Learning-rate schedules: η as a function of the 0-based step index t.

A schedule is passed as an optimizer's ``lr``; the optimizer evaluates it once per step
(t = 0 for the first update, so a schedule counts optimizer steps, not epochs: an epoch of
N samples in batches of B is ⌈N / B⌉ steps). They compose: a warm-up wraps any schedule,
and reduce-on-plateau multiplies any schedule by the factor it has reached.

    Constant(lr)                                η(t) = lr
    StepDecay(lr, step_size, gamma=0.1)         η(t) = lr · γ^⌊t / step_size⌋
    ExponentialDecay(lr, gamma, step_size=1)    η(t) = lr · γ^(t / step_size)
    CosineDecay(lr, total_steps, min_lr=0)      η(t) = min_lr + ½ (lr − min_lr)(1 + cos(π min(t, T) / T))
    LinearWarmup(schedule, warmup_steps)        η(t) = schedule(0) · (t + 1) / w  for t < w,
                                                       schedule(t − w)            after
    ReduceLROnPlateau(schedule, factor=0.1, patience=10, ...)
                                                η(t) = schedule(t) · factor^k after k plateaus
    linear_scaling(lr, batch_size, base_batch_size=256) = lr · B / B_base

Cosine decay is Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts"
(ICLR 2017) without restarts; the warm-up and the linear scaling rule are Goyal et al.,
"Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour" (2017).

Every schedule has ``state_dict()`` / ``load_state_dict()``: together with the optimizer's
step count (which the optimizer's own state_dict holds) they resume a schedule exactly.
"""

from __future__ import annotations

import math

from .checks import fraction, integer, number, positive, positive_int
from .errors import ConfigError
from .monitor import Plateau, metric_key


def _positive(name, value, *, integer=False):
    return positive_int(name, value) if integer else positive(name, value)


def _fraction(name, value):
    return fraction(name, value, zero=False)


def as_schedule(lr):
    """A schedule for ``lr``: itself if it is one, else Constant(lr)."""
    return lr if isinstance(lr, Schedule) else Constant(lr)


class Schedule:
    """Base class: ``schedule(t) -> float``, the learning rate of step t (0-based).

    Subclasses list their constructor arguments in ``fields`` (shown by repr) and
    implement ``__call__``. Stateful ones (reduce-on-plateau) extend the state_dict.
    """

    fields = ()

    def __call__(self, t):
        raise NotImplementedError

    def on_epoch_end(self, logs):
        """Called by ``fit`` after every epoch with its logs; only plateau schedules use it."""

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.fields)
        return f"{type(self).__name__}({args})"

    def state_dict(self):
        """{"type": name} plus whatever state the schedule keeps between epochs."""
        return {"type": type(self).__name__}

    def load_state_dict(self, d):
        if d.get("type") != type(self).__name__:
            raise ConfigError(f"schedule state is for {d.get('type')}, not {type(self).__name__}")


class Constant(Schedule):
    """η(t) = lr."""

    fields = ("lr",)

    def __init__(self, lr):
        self.lr = _positive("lr", lr)

    def __call__(self, t):
        return self.lr


class StepDecay(Schedule):
    """η(t) = lr · γ^⌊t / step_size⌋: multiply by ``gamma`` every ``step_size`` steps."""

    fields = ("lr", "step_size", "gamma")

    def __init__(self, lr, step_size, gamma=0.1):
        self.lr = _positive("lr", lr)
        self.step_size = _positive("step_size", step_size, integer=True)
        self.gamma = _positive("gamma", gamma)

    def __call__(self, t):
        return self.lr * self.gamma ** (t // self.step_size)


class ExponentialDecay(Schedule):
    """η(t) = lr · γ^(t / step_size): a smooth decay by ``gamma`` per ``step_size`` steps."""

    fields = ("lr", "gamma", "step_size")

    def __init__(self, lr, gamma, step_size=1):
        self.lr = _positive("lr", lr)
        self.gamma = _positive("gamma", gamma)
        self.step_size = _positive("step_size", step_size)

    def __call__(self, t):
        return self.lr * self.gamma ** (t / self.step_size)


class CosineDecay(Schedule):
    """η(t) = min_lr + ½ (lr − min_lr)(1 + cos(π min(t, T) / T)), T = ``total_steps``:
    from lr down to min_lr over T steps, then min_lr (SGDR without restarts)."""

    fields = ("lr", "total_steps", "min_lr")

    def __init__(self, lr, total_steps, min_lr=0.0):
        self.lr = _positive("lr", lr)
        self.total_steps = _positive("total_steps", total_steps, integer=True)
        if not isinstance(min_lr, (int, float)) or not 0 <= min_lr <= self.lr:
            raise ConfigError(f"min_lr must be a number in [0, lr], got {min_lr!r}")
        self.min_lr = float(min_lr)

    def __call__(self, t):
        progress = min(t, self.total_steps) / self.total_steps
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))


class _Wrapper(Schedule):
    """A schedule around another one (``schedule``): state_dict nests the inner one's."""

    def on_epoch_end(self, logs):
        self.schedule.on_epoch_end(logs)

    def state_dict(self):
        return {**super().state_dict(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, d):
        super().load_state_dict(d)
        self.schedule.load_state_dict(d["schedule"])


class LinearWarmup(_Wrapper):
    """Linear warm-up in front of any schedule (a number means a constant one):

        η(t) = schedule(0) · (t + 1) / w    for t < w  (w = warmup_steps)
        η(t) = schedule(t − w)              afterwards (the wrapped schedule starts after it)
    """

    fields = ("schedule", "warmup_steps")

    def __init__(self, schedule, warmup_steps):
        self.schedule = as_schedule(schedule)
        self.warmup_steps = _positive("warmup_steps", warmup_steps, integer=True)

    def __call__(self, t):
        w = self.warmup_steps
        return self.schedule(0) * (t + 1) / w if t < w else self.schedule(t - w)


class ReduceLROnPlateau(_Wrapper):
    """Multiply the learning rate by ``factor`` when a metric stops improving (as Keras's
    callback and ``torch.optim.lr_scheduler.ReduceLROnPlateau``), around any schedule:

        η(t) = schedule(t) · s,   s = 1 until the first reduction, then
        η(t) = max(schedule(t) · s, min_lr)

    After each epoch ``fit`` calls ``on_epoch_end(logs)``; when ``monitor`` ("auto":
    val_loss with validation data, else loss) has not improved by more than ``min_delta``
    for ``patience`` epochs, s ← s · factor; the ``cooldown`` epochs after a reduction
    are not counted.
    """

    fields = ("schedule", "monitor", "factor", "patience", "min_delta", "cooldown", "min_lr")

    def __init__(self, schedule, monitor="auto", factor=0.1, patience=10, min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        self.schedule = as_schedule(schedule)
        self.monitor = monitor
        self.factor = _fraction("factor", factor)
        self.patience = _positive("patience", patience, integer=True)
        self.cooldown = integer("cooldown", cooldown, low=0)
        self.min_lr = number("min_lr", min_lr, low=0)
        self.min_delta = min_delta
        self._plateau = Plateau("auto", min_delta)
        self.scale = 1.0
        self.cooldown_left = 0

    def __call__(self, t):
        lr = self.schedule(t) * self.scale
        return lr if self.scale == 1.0 else max(lr, self.min_lr)

    def on_epoch_end(self, logs):
        super().on_epoch_end(logs)
        key = metric_key(self.monitor, logs)
        improved = self._plateau.update(key, logs[key])
        if self.cooldown_left > 0:  # the epochs of a cooldown do not count
            self.cooldown_left -= 1
            self._plateau.wait = 0
        elif not improved and self._plateau.wait >= self.patience:
            self.scale *= self.factor
            self.cooldown_left = self.cooldown
            self._plateau.wait = 0

    def state_dict(self):
        return {**super().state_dict(), **self._plateau.state_dict(), "scale": self.scale,
                "cooldown_left": self.cooldown_left}

    def load_state_dict(self, d):
        super().load_state_dict(d)
        self._plateau.load_state_dict(d)
        self.scale, self.cooldown_left = float(d["scale"]), int(d["cooldown_left"])


def linear_scaling(lr, batch_size, base_batch_size=256):
    """The linear scaling rule (Goyal et al. 2017): lr · batch_size / base_batch_size.

    "When the minibatch size is multiplied by k, multiply the learning rate by k": give the
    learning rate that works at ``base_batch_size``; pair it with a LinearWarmup.
    """
    return _positive("lr", lr) * _positive("batch_size", batch_size, integer=True) / _positive(
        "base_batch_size", base_batch_size, integer=True
    )


SCHEDULES = {
    "constant": Constant,
    "step": StepDecay,
    "exponential": ExponentialDecay,
    "cosine": CosineDecay,
}
