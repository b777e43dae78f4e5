"""The per-epoch training history: writing it as CSV or JSON and plotting its curves.

A history is what ``fit`` returns: a dict of equal-length lists, one entry per epoch —
"loss", "accuracy" (classifiers), "val_loss" / "val_accuracy" (with validation data),
"lr", "time" and any key a callback added. :func:`record_epoch` appends an epoch's logs,
keeping the lists aligned: a key that a callback logs only in some epochs holds None in
the others. Plotting needs matplotlib (the optional ``plot`` extra); it is imported only
by :func:`plot_history`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os

from .errors import ConfigError, DataError
from .io import write_atomic

HISTORY_FORMATS = (".csv", ".json")
PLOT_FORMATS = (".png", ".pdf", ".svg")


def _extension(path, allowed, what):
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in allowed:
        raise ConfigError(f"{what} {os.fspath(path)!r}: use a {' or '.join(allowed)} file name")
    return ext


def check_history_path(path):
    """Raise ConfigError unless ``path`` ends in .csv or .json (before any training)."""
    return _extension(path, HISTORY_FORMATS, "history file")


def record_epoch(history, logs):
    """Append one epoch's ``logs`` to ``history`` (a dict of lists, one entry per finished
    epoch), keeping every list one entry per epoch: a key first logged in a later epoch
    gets None for the epochs before it, a key missing from this epoch's logs gets None."""
    n = max((len(values) for values in history.values()), default=0)
    for key, value in logs.items():
        history.setdefault(key, [None] * n).append(value)
    for values in history.values():
        if len(values) == n:
            values.append(None)


def _plain(value):
    """A NumPy (or CuPy) scalar or 0-d array as the Python number it holds."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    return value


def _json_value(value):
    """``_plain(value)``, with NaN and ±inf as None (JSON has no such numbers)."""
    value = _plain(value)
    return None if isinstance(value, float) and not math.isfinite(value) else value


def save_history(history, path):
    """Write ``history`` to ``path``: .csv (a header "epoch,loss,...", one row per epoch,
    epochs counted from 1; an epoch without a value for a key, None, has an empty cell) or
    .json (``{"epoch": [1, 2, ...], "loss": [...], ...}``; None, NaN and ±inf are null).

    NumPy scalars (e.g. a callback's np.float32) are written as Python numbers. Every list
    must have one entry per epoch, as ``fit`` makes them (:func:`record_epoch`): lists of
    different lengths raise DataError, since which epochs they belong to cannot be told.
    The file is written atomically (:func:`gpudnn.io.write_atomic`): a failure leaves the
    old file, or none, never a part of the new one.
    """
    ext = check_history_path(path)
    lengths = {key: len(values) for key, values in history.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(
            f"history lists of different lengths ({', '.join(f'{k}: {n}' for k, n in lengths.items())}): "
            "cannot tell which epochs each value belongs to; pad the missing epochs with None"
        )
    n = next(iter(lengths.values()), 0)
    columns = {"epoch": list(range(1, n + 1)), **history}
    if ext == ".json":
        plain = {key: [_json_value(v) for v in values] for key, values in columns.items()}
        text = json.dumps(plain, indent=1, allow_nan=False) + "\n"  # before anything is written
    else:
        buffer = io.StringIO(newline="")
        w = csv.writer(buffer)
        w.writerow(columns)
        w.writerows(zip(*([_plain(v) for v in values] for values in columns.values())))
        text = buffer.getvalue()
    write_atomic(path, [text.encode("utf-8")])


def check_plot_path(path):
    """Raise ConfigError unless ``path`` is an image file name and matplotlib is installed."""
    _extension(path, PLOT_FORMATS, "plot file")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(
            "plotting needs matplotlib: pip install 'gpudnn[plot]' (or matplotlib)"
        ) from None


def plot_history(history, path, title=None):
    """Draw the loss curves (and accuracy curves for classifiers) per epoch into ``path``
    (.png, .pdf or .svg): training solid, validation dashed, the learning rate below
    when it changed during training."""
    check_plot_path(path)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = [("loss", "loss")]
    if "accuracy" in history:
        panels.append(("accuracy", "accuracy"))
    lr = history.get("lr", [])
    if len(set(lr)) > 1:
        panels.append(("lr", "learning rate"))
    fig = Figure(figsize=(4 * len(panels), 3.2), dpi=100, layout="constrained")
    epochs = range(1, len(history["loss"]) + 1)
    for ax, (key, label) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        ax.plot(epochs, history[key], label="train" if key != "lr" else None, color="C0")
        if "val_" + key in history:
            ax.plot(epochs, history["val_" + key], "--", label="validation", color="C1")
            ax.legend()
        if key == "loss":
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.savefig(path)
