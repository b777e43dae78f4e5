"""Callbacks: code that ``fit`` runs at the start and end of training, of each epoch and
after each batch (the Keras hooks, by the same names).

    class Callback:
        net                                 the Network being trained (set by fit)
        on_train_begin(logs)                logs: {"epochs": E, "steps": steps per epoch,
                                            "data_on_device": where fit keeps the training
                                            set (False: streamed from host memory),
                                            "validation": whether fit has validation data}
        on_epoch_begin(epoch)               epoch: 0-based
        on_batch_end(batch, logs)           logs: {"size": samples, "loss": mean batch loss}
        on_epoch_end(epoch, logs) -> bool   logs: "loss", "accuracy", "val_loss",
                                            "val_accuracy", "lr", "time"; add keys to log
                                            more; return True to stop training (only an
                                            explicit True, a Python or NumPy bool, stops:
                                            None, counts, strings... are ignored)
        on_train_end(history)
        state_dict() -> dict                what a checkpoint keeps of the callback: JSON
                                            values and arrays (default: nothing)
        load_state_dict(d)                  put it back, on resume (after on_train_begin)

The batch loss is a 0-d array on the network's device: ``float(logs["loss"])`` reads it
(and waits for the device), so a batch callback that does not need it costs nothing.

Here: :class:`LambdaCallback` (functions as hooks), :class:`EarlyStopping` (stop when the
validation loss stops improving and restore the best weights) and :class:`ProgressBar`
(what ``verbose`` turns on: a tqdm bar on a terminal, one line per epoch otherwise).
"""

from __future__ import annotations

import sys

import numpy as np

from .checks import positive_int
from .errors import ConfigError
from .monitor import Plateau, metric_key
from .schedules import ReduceLROnPlateau, Schedule


def stops(result):
    """Whether ``result``, what an ``on_epoch_end`` returned, asks ``fit`` to stop: only an
    explicit True (a Python or NumPy bool). Anything else — None, the count ``f.write``
    returns, a list — does not stop training."""
    return isinstance(result, (bool, np.bool_)) and bool(result)


class Callback:
    """Base class: every hook does nothing. ``net`` is set by ``fit`` before training."""

    net = None

    def on_train_begin(self, logs):
        pass

    def on_epoch_begin(self, epoch):
        pass

    def on_batch_end(self, batch, logs):
        pass

    def on_epoch_end(self, epoch, logs):
        return False

    def on_train_end(self, history):
        pass

    def state_dict(self):
        """What a checkpoint must keep for training to resume exactly: a dict of JSON values
        (nested dicts and lists allowed) and arrays. A callback with no state between
        epochs keeps nothing."""
        return {}

    def load_state_dict(self, d):
        """Restore what ``state_dict`` gave (called by ``fit`` on resume, after
        ``on_train_begin``)."""


class LambdaCallback(Callback):
    """Hooks given as functions, e.g. ``LambdaCallback(on_epoch_end=lambda e, logs: ...)``.

    As in Keras, what the functions return is ignored, with one exception: an
    ``on_epoch_end`` function that returns an explicit True (a Python or NumPy bool, e.g.
    ``lambda e, logs: logs["loss"] < 0.01``) stops training. Any other value — None, the
    count ``f.write`` returns, ``list.append``'s None — never stops it.
    """

    HOOKS = ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_epoch_end", "on_train_end")

    def __init__(self, **hooks):
        unknown = sorted(set(hooks) - set(self.HOOKS))
        if unknown:
            raise ConfigError(f"unknown hooks {unknown}; choose from {', '.join(self.HOOKS)}")
        for name, fn in hooks.items():
            if fn is not None:
                if name == "on_epoch_end":
                    fn = _epoch_end(fn)
                setattr(self, name, fn)


def _epoch_end(fn):
    """``fn`` as an on_epoch_end hook that answers True (stop) or False, nothing else."""

    def on_epoch_end(epoch, logs):
        return stops(fn(epoch, logs))

    return on_epoch_end


class EarlyStopping(Callback):
    """Stop training when a metric has not improved for ``patience`` epochs, and put back
    the weights of its best epoch.

    monitor: "auto" (val_loss with validation data, else loss) or any epoch logs key;
    improvement means better by more than ``min_delta`` (lower for losses, higher for
    accuracies and scores; ``mode`` "min" or "max" to say otherwise). With
    ``restore_best_weights`` the parameters of the best epoch are copied aside (one copy of
    the flat buffer, on the device) and copied back at the end of training, bit for bit.
    After training: ``best_epoch`` (0-based), ``best`` (its value), ``stopped_epoch``
    (None if training ran all its epochs).
    """

    def __init__(self, monitor="auto", patience=10, min_delta=0.0, mode="auto",
                 restore_best_weights=True):
        self.monitor, self.patience = monitor, positive_int("patience", patience)
        self.restore_best_weights = bool(restore_best_weights)
        self._plateau = Plateau(mode, min_delta)
        self._best_params = None

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, "
                f"min_delta={self._plateau.min_delta}, mode={self._plateau.mode!r}, "
                f"restore_best_weights={self.restore_best_weights})")

    @property
    def best(self):
        return self._plateau.best

    def on_train_begin(self, logs):
        net = getattr(self, "net", None)  # (set by fit; a loop of one's own may not)
        check_monitor(self.monitor, logs.get("validation"), getattr(net, "is_classifier", None))
        self._plateau.reset()
        self.best_epoch = self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs):
        key = metric_key(self.monitor, logs)
        if self._plateau.update(key, logs[key]):
            self.best_epoch = epoch
            if self.restore_best_weights:
                params = self.net.params
                if self._best_params is None or self._best_params.shape != params.shape:
                    self._best_params = self.net.xp.empty_like(params)
                self.net.xp.copyto(self._best_params, params)
            return False
        if self._plateau.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, history):
        if self.restore_best_weights and self.best_epoch is not None:
            self.net.xp.copyto(self.net.params, self._best_params)

    def state_dict(self):
        """The watched metric's best value and wait, best_epoch, stopped_epoch and the best
        weights (the flat buffer, (P,), when they are kept)."""
        d = {**self._plateau.state_dict(), "best_epoch": self.best_epoch,
             "stopped_epoch": self.stopped_epoch}
        if self.restore_best_weights and self.best_epoch is not None:
            d["best_params"] = self._best_params
        return d

    def load_state_dict(self, d):
        self._plateau.load_state_dict(d)
        for key in ("best_epoch", "stopped_epoch"):
            if d[key] is not None and (isinstance(d[key], bool) or not isinstance(d[key], int)):
                raise ValueError(f"{key} must be an epoch number or None, got {d[key]!r}")
        self.best_epoch, self.stopped_epoch = d["best_epoch"], d["stopped_epoch"]
        if "best_params" in d:
            params = self.net.params
            if tuple(d["best_params"].shape) != params.shape:
                raise ValueError(f"best_params of shape {tuple(d['best_params'].shape)}, "
                                 f"the network has {params.shape}")
            self._best_params = self.net.xp.empty_like(params)
            self._best_params[...] = self.net.backend.asarray(d["best_params"])


VALIDATION_KEYS = ("val_loss", "val_accuracy")  # what fit logs with validation data
ACCURACY_KEYS = ("accuracy", "val_accuracy")  # what fit logs for classifiers only


def check_monitor(monitor, validation, classifier=None):
    """Before training: ConfigError when ``monitor`` names only metrics of fit's that it
    will not log: the validation ones ("val_loss", "val_accuracy") when ``validation`` is
    False (no validation data), the accuracies ("accuracy", "val_accuracy") when
    ``classifier`` is False (a regressor's logs have none). None: not known, nothing
    checked. Other names — a typo such as "val_los", or a key a callback adds, such as
    scikit-learn wrapper's "val_score" — can only be checked against the first epoch's logs."""
    if monitor == "auto":
        return
    keys = (monitor,) if isinstance(monitor, str) else tuple(monitor)
    if validation is False and keys and all(key in VALIDATION_KEYS for key in keys):
        raise ConfigError(f"cannot monitor {monitor!r}: fit has no validation data "
                          "(give validation_data or validation_split, or monitor 'loss')")
    if classifier is False and keys and all(key in ACCURACY_KEYS for key in keys):
        raise ConfigError(f"cannot monitor {monitor!r}: a regressor's fit logs no accuracy "
                          "(monitor 'val_loss' or 'loss')")


def check_monitors(callbacks, lr, validation, classifier=None):
    """``check_monitor`` for each EarlyStopping in ``callbacks`` and each ReduceLROnPlateau
    in the learning-rate schedule ``lr`` (or wrapped in it): for ``fit`` to call before
    training, so that a metric fit will not log is refused at once (on every rank of a
    distributed fit alike, not after the first epoch)."""
    watchers = [cb for cb in callbacks if isinstance(cb, EarlyStopping)]
    while isinstance(lr, Schedule):
        if isinstance(lr, ReduceLROnPlateau):
            watchers.append(lr)
        lr = getattr(lr, "schedule", None)
    for w in watchers:
        check_monitor(w.monitor, validation, classifier)


def epoch_line(epoch, epochs, logs):
    """"epoch  3/40  loss 0.1234  accuracy 0.9700  ...  lr 0.05  12.3 ms" for ``logs``."""
    parts = [f"epoch {epoch + 1:>{len(str(epochs))}}/{epochs}"]
    for key, value in logs.items():
        if key == "lr":
            parts.append(f"lr {value:.3g}")
        elif key != "time" and isinstance(value, float):
            parts.append(f"{key} {value:.4f}")
    if "time" in logs:
        parts.append(f"{logs['time'] * 1e3:.1f} ms")
    return "  ".join(parts)


class ProgressBar(Callback):
    """What ``fit(verbose=...)`` shows: with verbose=1 on a terminal a tqdm bar per epoch
    (over its batches, on stderr; tqdm is the optional ``progress`` extra), ending with the
    epoch's metrics; otherwise (output not a terminal, no tqdm, or verbose=2) one line per
    epoch on stdout. verbose=0 adds no ProgressBar: silent.
    """

    def __init__(self, verbose=1):
        self.verbose = verbose
        self._bar = None

    def _tqdm(self):
        """tqdm's class when a bar should be drawn, else None."""
        if self.verbose != 1 or not getattr(sys.stderr, "isatty", lambda: False)():
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm

    def on_train_begin(self, logs):
        self.epochs, self.steps = logs["epochs"], logs["steps"]
        self._make_bar = self._tqdm()
        vars(self).pop("on_batch_end", None)
        if self._make_bar is not None:  # a batch hook only with a bar to advance
            self.on_batch_end = self._advance

    def on_epoch_begin(self, epoch):
        if self._make_bar is not None:
            self._bar = self._make_bar(
                total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                leave=True, file=sys.stderr, dynamic_ncols=True,
            )

    def _advance(self, batch, logs):
        self._bar.update(1)

    def on_epoch_end(self, epoch, logs):
        line = epoch_line(epoch, self.epochs, logs)
        if self._bar is not None:
            self._bar.set_postfix_str(line.split("  ", 1)[1], refresh=True)
            self._bar.close()
            self._bar = None
        else:
            print(line, flush=True)
        return False
