"""Datasets: the built-in digits, reading CSV / .npz / .npy files, and checking arrays.

Letters: N = number of samples, F = number of features. Datasets are rows, X: (N, F),
y: (N,) labels or targets, or (N, n_L) targets; the network turns them into columns.

Every check raises :class:`~gpudnn.errors.DataError` (a ValueError) that names the source
and, where one applies, the row and column, before any training starts.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
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
    refuse_sparse(y, source)
    y = np.asarray(on_host(y, source))
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


def some_labels(classes, n=10):
    """Class labels for a message: "classes: [a, b]", or "50 classes: 0, 1, ..., 9, ..."
    when there are more than n."""
    if len(classes) <= n:
        return f"classes: {classes.tolist()}"
    return f"{len(classes)} classes: {', '.join(map(repr, classes[:n].tolist()))}, ..."


def refuse_sparse(X, source):
    """DataError naming a sparse matrix (scipy's, CuPy's): NumPy would wrap one in a 0-d
    object array, or fail on it, with a message that does not say so."""
    if hasattr(X, "toarray") and hasattr(X, "nnz"):
        raise DataError(f"{source}: is a scipy.sparse matrix ({type(X).__name__}); gpudnn computes with "
                        f"dense arrays: pass {source}.toarray() (gpudnn.sklearn's estimators densify it)")


def on_host(X, source):
    """X itself, or a device array's copy on the host: a CuPy array (``.get()``; fit checks,
    shuffles and batches on the host, then copies to the device itself). Another library's
    device array is refused by name (NumPy would fail on it with a TypeError of its own)."""
    if not hasattr(X, "__cuda_array_interface__"):
        return X
    if type(X).__module__.split(".")[0] == "cupy":
        return X.get()
    raise DataError(f"{source}: is a {type(X).__module__}.{type(X).__name__} on a GPU; pass a NumPy or "
                    f"CuPy array (for a torch.Tensor: {source}.cpu().numpy())")


def _numeric(X, source):
    refuse_sparse(X, source)
    X = np.asarray(on_host(X, source))
    if X.dtype == object:
        raise DataError(f"{source}: object arrays are not accepted; convert to a numeric dtype")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{source}: must be numeric, got dtype {X.dtype}")
    return X.astype(np.float64, copy=False) if X.dtype.kind != "f" else X


FINITE_BLOCK = 1 << 22  # elements per block of the finiteness check (4 MiB of booleans)


def first_nonfinite(X):
    """The index (a tuple) of the first NaN or ±inf of X (1-D or 2-D, rows first), or None.
    Checked a block of rows at a time, so that a large (memory-mapped) X needs no
    temporary of its own size."""
    rows = max(1, FINITE_BLOCK // max(1, X[:1].size))
    for r0 in range(0, len(X), rows):
        block = X[r0:r0 + rows]
        if not np.isfinite(block).all():
            idx = np.argwhere(~np.isfinite(block))[0]
            return (r0 + int(idx[0]), *(int(i) for i in idx[1:]))
    return None


def _check_finite(X, source):
    idx = first_nonfinite(X)
    if idx is not None:
        where = f"row {idx[0]}" + (f", column {idx[1]}" if len(idx) > 1 else "")
        raise DataError(f"{source}: contains {X[idx]} at {where} (0-based); NaN and Inf are not accepted")


# --- files ----------------------------------------------------------------------------------
READERS = (".csv", ".npz", ".npy")


def _data_file(path):
    """(path as str, lower-case extension) of an existing data file; DataError otherwise."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not a data file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in READERS:
        raise DataError(f"{path}: unknown file type {ext!r}; use {', '.join(READERS)}")
    return path, ext


def read_dataset(path, *, target=None, columns=False):
    """Read ``(X, y)`` from a .csv (target in the last column unless ``target`` names a
    header column or gives a column index), an .npz holding arrays ``X`` and ``y`` (it has
    no columns: a ``target`` is refused), or an .npy of shape (N, F+1) with the target last
    (or in column ``target``). Nothing is unpickled.

    Returns X: (N, F) float64 and y: (N,) (numbers, or strings for text labels in a CSV)
    or, from an .npz, (N, k). One rule for every format: a 1-D float target whose values
    are all whole numbers (within ±2^53) comes back as int64 class labels. With
    ``columns``, also the file's columns as :func:`read_features` takes them back:
    {"names": the CSV header or None, "target": the target's column} (None for an .npz).
    """
    path, ext = _data_file(path)
    layout = None
    if ext == ".csv":
        X, y, layout = _read_csv(path, target)
    elif ext == ".npz":
        if target is not None:
            raise DataError(f"{path}: an .npz file's target is its array 'y'; a target column "
                            f"({target!r}) applies to .csv and .npy files only")
        X, y = _read_npz(path, ("X", "y"))
    else:
        X, y, layout = _split_target(_read_npy(path), target, path)
    X = check_X(X, source=path)
    y = _integral(check_y(y, X.shape[0], source=f"{path} (target)"))
    return (X, y, layout) if columns else (X, y)


def read_features(path, *, n_features=None, columns=None):
    """Read X: (N, F) for prediction from a .csv, .npz (array ``X``) or .npy file.

    ``columns``: the training file's, as ``read_dataset(..., columns=True)`` gave them (a
    model keeps them as ``data_columns``). A CSV whose header has the training file's
    feature names gives those columns, by name, in training order (the target's and any
    other column left out); one that lacks some of them is a DataError naming them. Else a
    table with exactly ``n_features + 1`` columns is taken to carry the target where the
    training file had it (the last column when ``columns`` is None), and that column is
    dropped.
    """
    path, ext = _data_file(path)
    if ext == ".npz":
        (X,) = _read_npz(path, ("X",))
        return check_X(X, n_features=n_features, source=path)
    if ext == ".csv":  # the target column is dropped unread: it may hold text labels
        table = _read_csv_table(path)
        names = (columns or {}).get("names")
        if names and table.header:
            wanted = [n for j, n in enumerate(names) if j != columns["target"]]
            missing = [n for n in wanted if n not in table.header]
            if missing:
                raise DataError(f"{path}: has no column {missing[0]!r} of the {len(wanted)} the model was "
                                f"trained on ({', '.join(map(repr, wanted[:8]))}{', ...' if len(wanted) > 8 else ''})")
            X = _floats(table, [table.header.index(n) for n in wanted])
        else:
            X = _floats(table, _feature_columns(table.cells.shape[1], n_features, columns))
    else:
        M = check_X(_read_npy(path), source=path)
        X = M[:, _feature_columns(M.shape[1], n_features, columns)]
    return check_X(X, n_features=n_features, source=path)


def _feature_columns(width, n_features, columns=None):
    """The feature columns of a ``width``-column table: all of them, or, when there is
    exactly one more than the model's ``n_features``, all but the training file's target
    column (``columns["target"]``; the last one when that is not known)."""
    if n_features is None or width != n_features + 1:
        return list(range(width))
    target = width - 1 if columns is None else columns["target"]
    return [j for j in range(width) if j != target]


# --- .npy and .npz: the header is checked before any array is made ----------------------
def _array_header(f, size, source):
    """Read and check the .npy header at the start of the binary stream ``f`` of ``size``
    bytes; returns (shape, dtype). Refuses object dtypes (they would need unpickling) and
    shapes needing more bytes than follow, so no array larger than the file is allocated."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, EOFError, SyntaxError, TypeError, OverflowError) as exc:
        raise DataError(f"{source}: not a valid .npy array ({exc})") from None
    if dtype.hasobject:
        raise DataError(
            f"{source}: holds an object array (dtype {dtype}); object arrays are never "
            "unpickled (that could run code from the file); save numbers or strings"
        )
    need, have = math.prod(shape) * dtype.itemsize, size - f.tell()
    if need > have:
        raise DataError(
            f"{source}: its header declares shape {shape} of {dtype} = {need} bytes, but only "
            f"{have} bytes follow (truncated or corrupt)"
        )
    return shape, dtype


# how each file starts: (magic bytes, what a file without them is not)
MAGIC = {".npy": (b"\x93NUMPY", "no .npy header"), ".npz": (b"PK", "not a zip archive")}


def _check_magic(path, ext):
    """DataError unless the file ``path`` starts as an ``ext`` (.npy or .npz) file does.
    np.load would take any other file for a pickle and suggest loading it unsafely."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC[".npy"][0]))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if ext == ".npz" and head.startswith(MAGIC[".npy"][0]):
        raise DataError(f"{path}: is a single .npy array, not an .npz archive of X and y")
    magic, otherwise = MAGIC[ext]
    if not head.startswith(magic):
        why = ("the file is empty" if not head else "it holds a Python pickle, and pickles are "
               "never loaded: they can run code" if head.startswith(b"\x80") else otherwise)
        raise DataError(f"{path}: not a valid {ext} file ({why})")


def _read_npy(path):
    """The array in the .npy file ``path``; never unpickled, header checked first."""
    _check_magic(path, ".npy")
    try:
        with open(path, "rb") as f:
            _array_header(f, os.fstat(f.fileno()).st_size, path)
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a valid .npy file ({exc})") from None


def _read_npz(path, names):
    """The arrays ``names`` of the .npz archive ``path``, each header checked first."""
    _check_magic(path, ".npz")
    try:
        d = np.load(path, allow_pickle=False)  # a zip archive: never unpickles
    except Exception as exc:  # OSError, BadZipFile, EOFError, ...
        raise DataError(f"{path}: not a valid .npz file ({exc})") from None
    with d:
        missing = [k for k in names if k not in d.files]
        if missing:
            raise DataError(
                f"{path}: needs arrays {' and '.join(map(repr, names))}; missing "
                f"{', '.join(missing)} (found {', '.join(d.files) or 'none'})"
            )
        arrays = []
        for k in names:
            source = f"{path} (array {k!r})"
            try:
                member = f"{k}.npy"
                with d.zip.open(member) as f:
                    _array_header(f, d.zip.getinfo(member).file_size, source)
                arrays.append(d[k])
            except DataError:
                raise
            except Exception as exc:  # BadZipFile (bad CRC), zlib.error, EOFError, ...
                raise DataError(f"{source}: cannot read ({exc})") from None
        return arrays


# --- CSV ------------------------------------------------------------------------------------
class _CsvTable:
    """A parsed CSV: ``header`` (list of names or None), ``cells``: (N, C) array of str,
    ``lines``: (N,) the 1-based line of the file each row starts on, and ``path``."""

    def __init__(self, path, header, cells, lines):
        self.path, self.header, self.cells, self.lines = path, header, cells, lines

    def where(self, i, j):
        """'line 7, column 3 ('age')' for row i, column j (both 0-based), as an editor counts."""
        name = f" ({self.header[j]!r})" if self.header else ""
        return f"line {self.lines[i]}, column {j + 1}{name}"


def _read_csv_table(path):
    """Parse a CSV (UTF-8, optional BOM, optional header) into a :class:`_CsvTable`.

    The first row is a header when :func:`_is_header` says so. Blank lines are skipped
    (line numbers still count them). Ragged rows, NUL bytes and the like are DataErrors
    naming the line.
    """
    try:
        with open(path, "r", encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if "\0" in text:  # NumPy strings would drop trailing NULs: "2\0" would read as 2
        line = text.count("\n", 0, text.index("\0")) + 1
        raise DataError(f"{path}: line {line} holds a NUL byte (binary data or a damaged file?)")
    reader = csv.reader(io.StringIO(text))
    rows, lines, line = [], [], 1
    try:
        for r in reader:
            if any(c.strip() for c in r):
                rows.append(r)
                lines.append(line)
            line = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None
    if not rows:
        raise DataError(f"{path}: the file is empty")
    header = None
    if _is_header(rows):
        header, rows, lines = [c.strip() for c in rows[0]], rows[1:], lines[1:]
        if not rows:
            raise DataError(f"{path}: has a header but no data rows")
    first = header or rows[0]
    width = len(first)
    # one field holding ';' or tabs: another separator (commas only separate here)
    other = next((d for d in (";", "\t") if width == 1 and d in first[0]), None)
    if other:
        raise DataError(f"{path}: its first line has no commas but {'semicolons' if other == ';' else 'tabs'}: "
                        "columns must be separated by commas (and decimals written with a point)")
    for r, n in zip(rows, lines):
        if len(r) != width:
            raise DataError(
                f"{path}: line {n} has {len(r)} fields, expected {width}"
                + (" (as in the header)" if header else " (as in the first line)")
            )
    cells = np.array([[c.strip() for c in r] for r in rows], dtype=str).reshape(len(rows), width)
    return _CsvTable(path, header, cells, lines)


def _is_header(rows):
    """Whether the first of the CSV ``rows`` (lists of cells) is a header: it is when one of
    its cells is text (not empty, not a number) that no later row has in the same column.
    "a,b,label" is a header, and so is a lone first row; "1,,0" is data with an empty cell;
    "5.1,3.5,setosa" is data when "setosa" comes again below (a label seen nowhere else
    reads as a name: a class of one sample could not be both trained and tested anyway)."""
    for j, cell in enumerate(c.strip() for c in rows[0]):
        if cell and not _is_number(cell) and not any(
                len(r) > j and r[j].strip() == cell for r in rows[1:]):
            return True
    return False


def _read_csv(path, target):
    """(X, y, columns) of a CSV; columns as read_dataset's."""
    table = _read_csv_table(path)
    col = _target_column(table.header, table.cells.shape[1], target, path)
    X = _floats(table, [j for j in range(table.cells.shape[1]) if j != col])
    return X, _csv_target(table, col), {"names": table.header, "target": col}


def _csv_target(table, col):
    """The target column: (N,) floats or, if any cell is text, string labels. An empty
    cell is a DataError naming its line."""
    y = table.cells[:, col]
    empty = np.flatnonzero(y == "")
    if empty.size:
        raise DataError(f"{table.path}: {table.where(int(empty[0]), col)}: the target is empty")
    if all(_is_number(c) for c in y):
        return _floats(table, [col])[:, 0]
    return y


def _floats(table, columns):
    """The given columns of a CSV table as finite floats: (N, len(columns)); DataError at
    the first cell (by line, then column) that is not a number or is NaN or infinite."""
    columns = list(columns)
    sub = table.cells[:, columns]
    try:
        X = sub.astype(np.float64)  # the same syntax as float(): one pass in C
    except ValueError:
        for i, row in enumerate(sub):
            for k, cell in enumerate(row):
                if not _is_number(cell):
                    raise DataError(
                        f"{table.path}: {table.where(i, columns[k])}: {str(cell)!r} is not a number"
                    ) from None
        raise
    idx = first_nonfinite(X)
    if idx is not None:
        i, k = idx
        raise DataError(
            f"{table.path}: {table.where(i, columns[k])}: {str(sub[i, k])!r} is not finite; "
            "NaN and Inf are not accepted (drop or impute those rows first)"
        )
    return X


def _target_column(header, width, target, path):
    if width < 2:
        raise DataError(f"{path}: needs at least two columns (features and a target), found {width}")
    if target is None:
        return width - 1
    if header and target in header:
        if header.count(target) > 1:
            raise DataError(f"{path}: {header.count(target)} columns are named {target!r}")
        j = header.index(target)
        if isinstance(target, str) and target.lstrip("-").isdigit() and int(target) % width != j \
                and -width <= int(target) < width:
            raise DataError(f"{path}: target {target!r} is both the name of column {j} and the index of "
                            f"column {int(target) % width} ({header[int(target)]!r}): rename the column")
        return j
    try:
        j = int(target)
    except ValueError:
        known = f"; columns are {', '.join(header)}" if header else " (the file has no header)"
        raise DataError(f"{path}: no column named {target!r}{known}") from None
    if not -width <= j < width:
        raise DataError(f"{path}: target column {j} is out of range for {width} columns")
    return j % width


def _split_target(M, target, path):
    """(X, y, columns) of an .npy table; columns as read_dataset's."""
    M = check_X(M, source=path)
    col = _target_column(None, M.shape[1], target, path)
    return np.delete(M, col, axis=1), M[:, col], {"names": None, "target": col}


def _integral(y):
    """Float targets y: (N,) as int64 class labels when every one is a whole number that
    float64 holds exactly (|y| <= 2^53); any other y unchanged (regression targets, labels
    already, 2-D targets). read_dataset types every format's targets here, and only here."""
    whole = y.ndim == 1 and y.dtype.kind == "f" and np.all(y == np.round(y))
    if whole and np.all(np.abs(y) <= 2.0**53):
        return y.astype(np.int64)
    return y


def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


# --- preprocessing ------------------------------------------------------------------------
class Standardizer:
    """x ← (x − mean) / scale per feature, fitted on training rows X: (N, F).

    Features with zero variance get scale 1 (they become 0, not NaN). A variance below
    rounding noise counts as zero (as scikit-learn's StandardScaler does): a column of
    0.1s has a computed std of 1e-17, which must not blow 0.1001 up to 1e13.
    """

    def __init__(self, mean, scale):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)

    @classmethod
    def fit(cls, X):
        X = np.asarray(X, dtype=np.float64)
        mean, std = X.mean(axis=0), X.std(axis=0)
        noise = 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0)
        return cls(mean, np.where(std > noise, std, 1.0))

    def transform(self, X):
        return (np.asarray(X, dtype=np.float64) - self.mean) / self.scale

    def inverse(self, Z):
        """x = z · scale + mean: transform undone (a standardised target's prediction back
        in the target's units)."""
        return np.asarray(Z, dtype=np.float64) * self.scale + self.mean

    def to_dict(self):
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d):
        return cls(d["mean"], d["scale"])


def train_test_split(X, y, *, test_size=0.2, seed=0, stratify=None):
    """Shuffle, then split rows into (X_train, X_test, y_train, y_test), stratified by
    label when y holds class labels, so every class with 2+ samples is in both parts.

    X: (N, F), y: (N,) or (N, k); 0 < test_size < 1. ``stratify``: None takes 1-D labels
    of a label dtype (text, bool, integers) for classes; False splits plainly (a regression
    whose targets are whole numbers: each value a "class" of one would stay in training);
    True stratifies by 1-D y (2-D targets, multi-label 0/1 rows, are split plainly). Both
    parts must get a sample: else a DataError.
    """
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2 or X.shape[0] < 2 or y.shape[:1] != X.shape[:1]:
        raise DataError(
            f"train_test_split needs X of shape (N, F) with N >= 2 and y with N rows; "
            f"got X {X.shape} and y {y.shape}"
        )
    if isinstance(test_size, bool) or not isinstance(test_size, numbers.Real) or not 0 < test_size < 1:
        raise DataError(f"test_size must be a fraction between 0 and 1, got {test_size!r}")
    n = X.shape[0]
    rng = np.random.default_rng(seed)
    if stratify is None:
        stratify = y.dtype.kind in "biuUS"
    stratify = stratify and y.ndim == 1
    if stratify:
        test = []
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            k = int(round(len(idx) * test_size))
            if len(idx) >= 2:
                k = min(max(k, 1), len(idx) - 1)  # at least one on each side
            test.extend(idx[:k])
        test = np.sort(np.array(test, dtype=np.int64))
    else:
        test = np.sort(rng.permutation(n)[: int(round(n * test_size))])
    if not 0 < len(test) < n:
        raise DataError(f"test_size={test_size} splits {n} samples into {n - len(test)} training and "
                        f"{len(test)} test samples{' (stratified by class)' if stratify else ''}: "
                        "each part needs at least one")
    mask = np.zeros(n, bool)
    mask[test] = True
    return X[~mask], X[mask], y[~mask], y[mask]
