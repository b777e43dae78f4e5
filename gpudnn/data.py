"""Datasets: the built-in digits, reading CSV / .npz / .npy files, and checking arrays.

Letters: N = number of samples, F = number of features. Datasets are rows, X: (N, F),
y: (N,) labels or targets, or (N, n_L) targets; the network turns them into columns.

Every check raises :class:`~gpudnn.errors.DataError` (a ValueError) that names the source
and, where one applies, the row and column, before any training starts.
"""

from __future__ import annotations

import csv
import io
import os
from importlib import resources

import numpy as np

from .errors import DataError

DIGITS_FILE = "digits.npz"


def load_digits():
    """The UCI optical handwritten digits (8x8 images, pixel values 0..16, 10 classes).

    Returns ``X``: (1797, 64) float64 and ``y``: (1797,) int64 labels 0..9 — the same data
    as scikit-learn's ``load_digits``. Source and licence: ``gpudnn/datasets/DIGITS.txt``.
    """
    with resources.files("gpudnn.datasets").joinpath(DIGITS_FILE).open("rb") as f:
        with np.load(f, allow_pickle=False) as d:
            return d["X"].astype(np.float64), d["y"].astype(np.int64)


# --- checks ---------------------------------------------------------------------------------
def check_X(X, *, n_features=None, source="X"):
    """X as a finite 2-D float array (N, F); DataError naming ``source`` otherwise."""
    X = _numeric(X, source)
    if X.ndim == 1:
        raise DataError(
            f"{source}: expected a 2-D array (samples, features), got 1-D shape {X.shape}; "
            "use X.reshape(-1, 1) for one feature or X.reshape(1, -1) for one sample"
        )
    if X.ndim != 2:
        raise DataError(f"{source}: expected a 2-D array (samples, features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise DataError(f"{source}: has no samples (shape {X.shape})")
    if X.shape[1] == 0:
        raise DataError(f"{source}: has no features (shape {X.shape})")
    if n_features is not None and X.shape[1] != n_features:
        raise DataError(
            f"{source}: has {X.shape[1]} features per sample but the model expects {n_features}"
        )
    _check_finite(X, source)
    return X


def check_y(y, n_samples, *, source="y"):
    """y as a finite 1-D or 2-D array with ``n_samples`` rows (labels may be strings)."""
    y = np.asarray(y)
    if y.dtype == object:
        raise DataError(f"{source}: object arrays are not accepted; convert to numbers or strings")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 2):
        raise DataError(f"{source}: expected shape ({n_samples},) or ({n_samples}, outputs), got {y.shape}")
    if y.shape[0] != n_samples:
        raise DataError(f"{source}: has {y.shape[0]} entries but X has {n_samples} samples")
    if y.dtype.kind in "fc":
        _check_finite(y, source)
    elif y.dtype.kind not in "biuUS":
        raise DataError(f"{source}: unsupported dtype {y.dtype}")
    return y


def _numeric(X, source):
    X = np.asarray(X)
    if X.dtype == object:
        raise DataError(f"{source}: object arrays are not accepted; convert to a numeric dtype")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{source}: must be numeric, got dtype {X.dtype}")
    return X.astype(np.float64, copy=False) if X.dtype.kind != "f" else X


def _check_finite(X, source):
    bad = ~np.isfinite(X)
    if bad.any():
        idx = np.argwhere(bad)[0]
        where = f"row {idx[0]}" + (f", column {idx[1]}" if len(idx) > 1 else "")
        raise DataError(f"{source}: contains {X[tuple(idx)]} at {where} (0-based); NaN and Inf are not accepted")


# --- files ----------------------------------------------------------------------------------
def read_dataset(path, *, target=None):
    """Read ``(X, y)`` from a .csv (target in the last column unless ``target`` names a
    header column or gives a column index), an .npz holding arrays ``X`` and ``y``, or an
    .npy of shape (N, F+1) with the target last. Nothing is unpickled.

    Returns X: (N, F) float64 and y: (N,) (numbers, or strings for text labels in a CSV).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        X, y = _read_csv(path, target)
    elif ext == ".npz":
        X, y = _read_npz(path)
    elif ext == ".npy":
        X, y = _split_target(_load_npy(path), target, path)
    else:
        raise DataError(f"{path}: unknown file type {ext!r}; use .csv, .npz or .npy")
    X = check_X(X, source=path)
    return X, check_y(y, X.shape[0], source=f"{path} (target)")


def read_features(path, *, n_features=None):
    """Read X: (N, F) for prediction from a .csv, .npz (array ``X``) or .npy file.

    A CSV or .npy with exactly ``n_features + 1`` columns is taken to carry a target in its
    last column, which is dropped.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        with _open_npz(path) as d:
            if "X" not in d.files:
                raise DataError(f"{path}: has no array named 'X' (found {', '.join(d.files) or 'none'})")
            X = d["X"]
    elif ext in (".csv", ".npy"):
        if ext == ".csv":
            header, table, first_line = _read_csv_table(path)
            X = _floats(table, range(table.shape[1]), header, first_line, path)
        else:
            X = _load_npy(path)
        X = check_X(X, source=path)
        if n_features is not None and X.shape[1] == n_features + 1:
            X = X[:, :-1]
    else:
        raise DataError(f"{path}: unknown file type {ext!r}; use .csv, .npz or .npy")
    return check_X(X, n_features=n_features, source=path)


def _load_npy(path):
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: cannot read ({exc}); object arrays are never unpickled") from None
    except Exception as exc:
        raise DataError(f"{path}: not a valid .npy file ({exc})") from None


def _open_npz(path):
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path}: not a valid .npz file ({exc})") from None


def _read_npz(path):
    with _open_npz(path) as d:
        missing = [k for k in ("X", "y") if k not in d.files]
        if missing:
            raise DataError(
                f"{path}: needs arrays 'X' and 'y'; missing {', '.join(missing)} "
                f"(found {', '.join(d.files) or 'none'})"
            )
        try:
            return d["X"], d["y"]
        except ValueError as exc:
            raise DataError(f"{path}: cannot read ({exc}); object arrays are never unpickled") from None


def _read_csv_table(path):
    """Parse a CSV into (header or None, an (N, C) array of str, line number of row 0)."""
    try:
        with open(path, "r", encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: the file is empty")
    header = None
    if not all(_is_number(c) for c in rows[0]):
        header, rows = [c.strip() for c in rows[0]], rows[1:]
        if not rows:
            raise DataError(f"{path}: has a header but no data rows")
    width = len(header) if header else len(rows[0])
    first_data_line = 2 if header else 1
    for i, r in enumerate(rows):
        if len(r) != width:
            raise DataError(
                f"{path}: line {i + first_data_line} has {len(r)} fields, expected {width}"
            )
    return header, np.array([[c.strip() for c in r] for r in rows]), first_data_line


def _read_csv(path, target):
    header, table, first_line = _read_csv_table(path)
    col = _target_column(header, table.shape[1], target, path)
    feat = [j for j in range(table.shape[1]) if j != col]
    X = _floats(table, feat, header, first_line, path)
    y = table[:, col]
    if all(_is_number(c) for c in y):
        y = y.astype(np.float64)
        if np.all(y == np.round(y)) and np.all(np.isfinite(y)):
            y = y.astype(np.int64)
    return X, y


def _floats(table, columns, header, first_line, path):
    """The given columns of a CSV table as floats: (N, len(columns)); DataError at the
    first cell that is not a number, naming its line and column (1-based, as an editor)."""
    X = np.empty((table.shape[0], len(columns)))
    for k, j in enumerate(columns):
        for i, cell in enumerate(table[:, j]):
            try:
                X[i, k] = float(cell)
            except ValueError:
                name = f" ({header[j]!r})" if header else ""
                raise DataError(
                    f"{path}: line {i + first_line}, column {j + 1}{name}: {str(cell)!r} is not a number"
                ) from None
    return X


def _target_column(header, width, target, path):
    if width < 2:
        raise DataError(f"{path}: needs at least two columns (features and a target), found {width}")
    if target is None:
        return width - 1
    if header and target in header:
        return header.index(target)
    try:
        j = int(target)
    except ValueError:
        known = f"; columns are {', '.join(header)}" if header else " (the file has no header)"
        raise DataError(f"{path}: no column named {target!r}{known}") from None
    if not -width <= j < width:
        raise DataError(f"{path}: target column {j} is out of range for {width} columns")
    return j % width


def _split_target(M, target, path):
    M = check_X(M, source=path)
    col = _target_column(None, M.shape[1], target, path)
    y = M[:, col]
    if np.all(y == np.round(y)):
        y = y.astype(np.int64)
    return np.delete(M, col, axis=1), y


def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


# --- preprocessing ------------------------------------------------------------------------
class Standardizer:
    """x ← (x − mean) / scale per feature, fitted on training rows X: (N, F).

    Features with zero variance get scale 1 (they become 0, not NaN).
    """

    def __init__(self, mean, scale):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)

    @classmethod
    def fit(cls, X):
        X = np.asarray(X, dtype=np.float64)
        std = X.std(axis=0)
        return cls(X.mean(axis=0), np.where(std > 0, std, 1.0))

    def transform(self, X):
        return (np.asarray(X, dtype=np.float64) - self.mean) / self.scale

    def to_dict(self):
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d):
        return cls(d["mean"], d["scale"])


def train_test_split(X, y, *, test_size=0.2, seed=0):
    """Shuffle, then split rows into (X_train, X_test, y_train, y_test), stratified by
    label when y holds class labels so every class is in both parts."""
    n = X.shape[0]
    rng = np.random.default_rng(seed)
    if y.ndim == 1 and y.dtype.kind in "biuUS":
        test = []
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            test.extend(idx[: int(round(len(idx) * test_size))])
        test = np.sort(np.array(test, dtype=np.int64))
    else:
        test = np.sort(rng.permutation(n)[: int(round(n * test_size))])
    mask = np.zeros(n, bool)
    mask[test] = True
    return X[~mask], X[mask], y[~mask], y[mask]
