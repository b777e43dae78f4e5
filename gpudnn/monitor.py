"""Watching one per-epoch metric for improvement: the best value so far and the epochs since.

Shared by :class:`gpudnn.callbacks.EarlyStopping` and
:class:`gpudnn.schedules.ReduceLROnPlateau`. A metric is a key of the epoch logs that
``fit`` builds ("loss", "accuracy", "val_loss", "val_accuracy", or one a callback adds), or
a sequence of keys of which the first one present counts; "auto" is ("val_loss", "loss"):
the validation loss when there is validation data, else the training loss. Losses improve
downwards, accuracies and scores upwards ("auto" mode).
"""

from __future__ import annotations

import math

from .errors import ConfigError

MODES = ("auto", "min", "max")


def metric_key(monitor, logs):
    """The logs key that ``monitor`` names: a key, or a sequence of keys of which the first
    present one counts ("auto" is ("val_loss", "loss"))."""
    keys = ("val_loss", "loss") if monitor == "auto" else (monitor,) if isinstance(monitor, str) else monitor
    for key in keys:
        if key in logs:
            return key
    raise ConfigError(f"cannot monitor {monitor!r}: the epoch logs have only {', '.join(logs)}")


class Plateau:
    """The best value of a metric and ``wait``, the epochs since it last improved.

    A value improves on the best when it is lower by more than ``min_delta`` (mode "min")
    or higher by more than ``min_delta`` (mode "max"); "auto" picks "max" for names ending
    in "accuracy" or "score" and "min" otherwise. NaN never improves.
    """

    def __init__(self, mode="auto", min_delta=0.0):
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        try:
            self.min_delta = abs(float(min_delta))
        except (TypeError, ValueError):
            raise ConfigError(f"min_delta must be a number, got {min_delta!r}") from None
        self.mode = mode
        self.reset()

    def reset(self):
        self.best = None
        self.wait = 0

    def _sign(self, key):
        if self.mode == "auto":
            return -1.0 if key.endswith(("accuracy", "score")) else 1.0
        return 1.0 if self.mode == "min" else -1.0

    def update(self, key, value):
        """Record this epoch's ``value`` of metric ``key``; True when it is a new best."""
        value = float(value)
        sign = self._sign(key)
        if not math.isnan(value) and (self.best is None or sign * (self.best - value) > self.min_delta):
            self.best, self.wait = value, 0
            return True
        self.wait += 1
        return False

    def state_dict(self):
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, d):
        best, wait = d["best"], d["wait"]
        if not (best is None or _is_number(best)) or not (_is_number(wait) and wait == int(wait) >= 0):
            raise ValueError(f"a plateau state needs best: a number or None and wait: a count, got {best!r}, {wait!r}")
        self.best, self.wait = best, int(wait)


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)
