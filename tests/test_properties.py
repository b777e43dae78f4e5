"""Property-based tests (hypothesis): save/load round trips over architectures, dtypes,
extreme weights and batch sizes; the data readers over shapes, dtypes and CSV spellings."""

import csv
import io as _io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gpudnn
from gpudnn import io
from gpudnn.data import Standardizer, read_dataset, read_features
from gpudnn.errors import DataError
from helpers import HIDDEN, OUTPUT_LOSS

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def finite(dtype, **kw):
    """Every finite value of ``dtype``: subnormals, ±0, the largest magnitudes."""
    return st.floats(allow_nan=False, allow_infinity=False, width=np.dtype(dtype).itemsize * 8, **kw)


# --- model files ------------------------------------------------------------------------------
@st.composite
def networks(draw):
    """A Network of random architecture, dtype, activations, weights and metadata."""
    sizes = draw(st.lists(st.integers(1, 9), min_size=2, max_size=5))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    output, loss = draw(st.sampled_from(OUTPUT_LOSS))
    if output == "softmax" and sizes[-1] == 1:
        sizes[-1] = 2
    hidden = draw(st.lists(st.sampled_from(HIDDEN), min_size=len(sizes) - 2, max_size=len(sizes) - 2))
    net = gpudnn.Network(sizes, activation=hidden, output=output, loss=loss, dtype=dtype,
                         backend="numpy", seed=draw(st.integers(0, 2**32)))
    net.params[...] = draw(hnp.arrays(net.dtype, net.n_params, elements=finite(dtype)))
    if draw(st.booleans()):
        net.scaler = Standardizer(draw(hnp.arrays(np.float64, sizes[0], elements=finite("float64"))),
                                  draw(hnp.arrays(np.float64, sizes[0],
                                                  elements=finite("float64").filter(bool))))
    if net.is_classifier and (output == "softmax" or sizes[-1] == 1) and draw(st.booleans()):
        # as fit makes them: a label per softmax unit (two for one sigmoid unit), sorted;
        # one type (NumPy would turn mixed ones into strings), no NUL (U arrays drop it)
        labels = draw(st.sampled_from([st.integers(-(2**63), 2**63 - 1),
                                       st.text(st.characters(exclude_characters="\x00"), max_size=8)]))
        n = max(sizes[-1], 2)
        net.classes_ = np.sort(draw(st.lists(labels, min_size=n, max_size=n, unique=True)))
    return net


@SETTINGS
@given(net=networks(), B=st.integers(1, 64), data=st.data())
def test_save_load_round_trip_is_bit_exact(tmp_path, net, B, data):
    path = tmp_path / "m.safetensors"
    net.save(path)
    back = io.load(path, backend="numpy")
    assert back.config() == net.config()
    assert back.params.dtype == net.params.dtype
    assert back.params.tobytes() == net.params.tobytes()  # -0.0 and subnormals included
    if net.classes_ is None:
        assert back.classes_ is None
    else:
        assert back.classes_.dtype == net.classes_.dtype
        assert back.classes_.tolist() == net.classes_.tolist()
    if net.scaler is None:
        assert back.scaler is None
    else:
        assert back.scaler.mean.tobytes() == net.scaler.mean.tobytes()
        assert back.scaler.scale.tobytes() == net.scaler.scale.tobytes()
    A0 = data.draw(hnp.arrays(np.float64, (net.sizes[0], B), elements=st.floats(-3, 3)))
    with np.errstate(all="ignore"):  # extreme weights may overflow: identically in both
        assert back.forward(A0).tobytes() == net.forward(A0).tobytes()


@SETTINGS
@given(net=networks(), cut=st.integers(0, 10**6), flip=st.integers(1, 255))
def test_any_damage_gives_a_model_or_a_model_file_error(tmp_path, net, cut, flip):
    """Truncated at any byte or with any byte changed: a model, or ModelFileError naming
    the file; never another exception, never a crash."""
    path = tmp_path / "m.safetensors"
    raw = io.to_bytes(net)
    buf = bytearray(raw)
    buf[cut % len(raw)] ^= flip
    for blob in (raw[: cut % len(raw)], bytes(buf)):
        path.write_bytes(blob)
        try:
            back = io.load(path, backend="numpy")
        except gpudnn.ModelFileError as exc:
            assert str(exc).startswith(str(path))
        else:
            assert np.isfinite(back.params).all()


# --- data readers -----------------------------------------------------------------------------
label_text = st.text(alphabet="abcXYZ _-\n", min_size=1, max_size=6).filter(
    lambda s: s.strip() and s.strip() == s  # the reader strips cells: keep labels stripped
)


@st.composite
def datasets(draw):
    """(X: (N, F), y: (N,) numbers or strings) to write as a file."""
    N, F = draw(st.integers(1, 12)), draw(st.integers(1, 5))
    xdtype = draw(st.sampled_from(["float64", "float32"]))
    X = draw(hnp.arrays(xdtype, (N, F), elements=finite(xdtype)))
    kind = draw(st.sampled_from(["int", "float", "text"]))
    if kind == "int":
        y = np.array(draw(st.lists(st.integers(-(2**53), 2**53), min_size=N, max_size=N)))
    elif kind == "float":
        y = draw(hnp.arrays(np.float64, N, elements=finite("float64")))
    else:
        y = np.array(draw(st.lists(label_text, min_size=N, max_size=N)))
    return X, y


def write_csv(X, y, *, header, target_col, bom, newline, quoting, blanks):
    """CSV text of X with y inserted as column ``target_col``; floats written exactly
    (repr), strings in X as they are. Returns (text, line of each data row as an editor counts them)."""
    out = _io.StringIO()
    w = csv.writer(out, lineterminator=newline, quoting=quoting)
    F = X.shape[1]
    if header:
        names = [f"c{j}" for j in range(F)]
        names.insert(target_col, "label")
        w.writerow(names)
    lines = []
    for i in range(X.shape[0]):
        for _ in range(blanks[i % len(blanks)]):
            out.write(newline)
        lines.append(out.getvalue().count("\n") + 1)
        row = [v if isinstance(v, str) else repr(float(v)) for v in X[i]]
        row.insert(target_col, y[i] if y.dtype.kind == "U" else repr(y[i].item()))
        w.writerow(row)
    return ("\ufeff" if bom else "") + out.getvalue(), lines


csv_styles = st.fixed_dictionaries(dict(
    header=st.booleans(), bom=st.booleans(), newline=st.sampled_from(["\n", "\r\n"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
    blanks=st.lists(st.integers(0, 2), min_size=1, max_size=4),
))


@SETTINGS
@given(data=datasets(), style=csv_styles, where=st.floats(0, 1))
def test_csv_written_then_read_equals_the_arrays(tmp_path, data, style, where):
    X, y = data
    col = round(where * X.shape[1])  # the target anywhere, last by default
    if y.dtype.kind == "U" and not style["header"]:
        style["header"] = True  # a first row of only text would be taken for a header
    text, _ = write_csv(X, y, target_col=col, **style)
    path = tmp_path / "d.csv"
    path.write_bytes(text.encode("utf-8"))
    target = "label" if style["header"] else (None if col == X.shape[1] else str(col))
    X2, y2 = read_dataset(path, target=target)
    assert X2.dtype == np.float64 and X2.shape == X.shape
    assert np.array_equal(X2, X.astype(np.float64))
    if y.dtype.kind == "U":
        assert y2.tolist() == y.tolist()
    else:
        assert np.array_equal(y2, y)  # whole numbers within 2^53 come back as int64
        assert y2.dtype == (np.int64 if np.all(y == np.round(y)) and np.all(np.abs(y) <= 2.0**53)
                            else np.float64)
    if col == X.shape[1] and y.dtype.kind != "U":  # predict drops a numeric target column
        assert np.array_equal(read_features(path, n_features=X.shape[1]), X.astype(np.float64))


@SETTINGS
@given(data=datasets(), style=csv_styles, pick=st.tuples(st.integers(0), st.integers(0)),
       bad=st.sampled_from(["nan", "-inf", "Infinity", "1e999", "x", "", "1,5", "0x10", "--1"]))
def test_a_bad_cell_anywhere_is_named_by_line_and_column(tmp_path, data, style, pick, bad):
    X, y = data
    style["header"] = True  # so a bad first row is still data
    i, j = pick[0] % X.shape[0], pick[1] % X.shape[1]
    X_text = X.astype(object)
    X_text[i, j] = bad
    text, lines = write_csv(X_text, y, target_col=X.shape[1], **style)
    path = tmp_path / "d.csv"
    path.write_bytes(text.encode("utf-8"))
    with pytest.raises(DataError) as err:
        read_dataset(path)
    assert str(err.value).startswith(f"{path}: line {lines[i]}, column {j + 1} ('c{j}'): "), err.value


def numeric_arrays(shape):
    """Arrays of ``shape`` (a strategy) in every dtype a reader accepts, values finite."""
    floats = st.sampled_from(["float16", "float32", "float64"]).flatmap(
        lambda d: hnp.arrays(d, shape, elements=dict(allow_nan=False, allow_infinity=False)))
    others = st.sampled_from(["int8", "int64", "uint16", "bool"]).flatmap(lambda d: hnp.arrays(d, shape))
    return st.one_of(floats, others)


@SETTINGS
@given(X=numeric_arrays(hnp.array_shapes(min_dims=2, max_dims=2, max_side=8)), data=st.data())
def test_npz_and_npy_written_then_read_equal_the_arrays(tmp_path, X, data):
    N = X.shape[0]
    y = data.draw(numeric_arrays(st.sampled_from([(N,), (N, 2)])))
    np.savez(tmp_path / "d.npz", X=X, y=y)
    X2, y2 = read_dataset(tmp_path / "d.npz")
    assert X2.dtype.kind == "f" and np.array_equal(X2, X)
    labels = y.ndim == 1 and y.dtype.kind == "f" and np.all(y == np.round(y)) and np.all(
        np.abs(y) <= 2.0**53)  # whole numbers: class labels, as from a CSV
    assert y2.dtype == (np.int64 if labels else y.dtype) and np.array_equal(y2, y)
    np.testing.assert_array_equal(read_features(tmp_path / "d.npz", n_features=X.shape[1]), X)
    target = y.reshape(N, -1)[:, 0].astype(np.float64)
    np.save(tmp_path / "d.npy", np.column_stack([X.astype(np.float64), target]))
    X3, y3 = read_dataset(tmp_path / "d.npy")  # the target is the last column
    assert np.array_equal(X3, X) and np.array_equal(y3, target)
