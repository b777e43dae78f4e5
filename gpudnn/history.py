"""The per-epoch training history: writing it as CSV or JSON and plotting its curves.

A history is what ``fit`` returns: a dict of equal-length lists, one entry per epoch —
"loss", "accuracy" (classifiers), "val_loss" / "val_accuracy" (with validation data),
"lr", "time" and any key a callback added. Plotting needs matplotlib (the optional
``plot`` extra); it is imported only by :func:`plot_history`.
"""

from __future__ import annotations

import csv
import json
import os

from .errors import ConfigError

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


def save_history(history, path):
    """Write ``history`` to ``path``: .csv (a header "epoch,loss,...", one row per epoch,
    epochs counted from 1) or .json (``{"epoch": [1, 2, ...], "loss": [...], ...}``)."""
    ext = check_history_path(path)
    n = len(next(iter(history.values()), []))
    columns = {"epoch": list(range(1, n + 1)), **history}
    if ext == ".json":
        with open(path, "w") as f:
            json.dump(columns, f, indent=1)
            f.write("\n")
        return
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(zip(*columns.values()))


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
