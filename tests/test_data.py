"""The built-in digits and the dataset readers."""

import io
import pickle
import re
import zipfile

import numpy as np
import pytest

import gpudnn
from gpudnn.data import Standardizer, check_X, read_dataset, read_features, train_test_split
from gpudnn.errors import DataError
from helpers import PickleBomb


def test_digits_are_the_uci_set():
    X, y = gpudnn.load_digits()
    assert X.shape == (1797, 64) and y.shape == (1797,)
    assert X.min() == 0 and X.max() == 16 and np.all(X == np.round(X))
    assert sorted(np.unique(y)) == list(range(10))
    assert np.bincount(y).min() >= 170  # about 180 of each digit


def test_csv_with_header_bom_and_named_target(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("\ufeffa,label,b\n1,x,2\n3,y,4\n5,x,6\n", encoding="utf-8")
    X, y = read_dataset(p, target="label")
    np.testing.assert_array_equal(X, [[1, 2], [3, 4], [5, 6]])
    assert list(y) == ["x", "y", "x"]


def test_csv_without_header_target_last(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("1,2,0\n3,4,1\n")
    X, y = read_dataset(p)
    assert X.shape == (2, 2) and y.dtype.kind == "i" and list(y) == [0, 1]


@pytest.mark.parametrize(
    "text,header,rows",
    [("5.1,3.5,setosa\n4.9,3.0,setosa\n7.0,3.2,versicolor\n", None, 3),  # text labels, no header
     ("a,b,label\n5.1,3.5,setosa\n4.9,3.0,setosa\n", ["a", "b", "label"], 2),
     ("a,b,label\n1,2,0\n3,4,1\n", ["a", "b", "label"], 2),
     ("0,1,label\n1,2,x\n3,4,y\n", ["0", "1", "label"], 2),  # numeric names, text labels
     ("1,,0\n", None, 1)],  # an empty cell is not text (and then not a number: below)
)
def test_csv_header_is_told_from_data_by_the_rows_below(tmp_path, text, header, rows):
    from gpudnn.data import _read_csv_table

    p = tmp_path / "d.csv"
    p.write_text(text)
    table = _read_csv_table(p)
    assert table.header == header and table.cells.shape[0] == rows
    if header is None and rows == 3:  # the reviewer's file: every row read
        X, y = read_dataset(p)
        assert X.shape == (3, 2) and y.tolist() == ["setosa", "setosa", "versicolor"]


def test_npz_and_npy(tmp_path):
    X = np.arange(12.0).reshape(4, 3)
    y = np.array([0, 1, 0, 1])
    np.savez(tmp_path / "d.npz", X=X, y=y)
    X2, y2 = read_dataset(tmp_path / "d.npz")
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    np.save(tmp_path / "d.npy", np.column_stack([X, y]))
    X3, y3 = read_dataset(tmp_path / "d.npy")
    np.testing.assert_array_equal(X3, X)
    np.testing.assert_array_equal(y3, y)
    np.testing.assert_array_equal(read_features(tmp_path / "d.npy", n_features=3), X)


# (id, file text, words of the message): lines and columns counted from 1, as an editor does
BAD_CSV = [
    ("empty", "", "the file is empty"),
    ("blank-lines", "\n  \n\t\n", "the file is empty"),
    ("bom-only", "\ufeff", "the file is empty"),
    ("commas-only", ",,\n,\n", "the file is empty"),
    ("header-only", "a,b\n", "header but no data rows"),
    ("header-and-blanks", "a,b\n\n\n", "header but no data rows"),
    ("ragged", "1,2,3\n4,5\n", r"line 2 has 2 fields, expected 3 \(as in the first line\)"),
    ("ragged-after-blanks", "1,2,3\n\n\n4,5\n", "line 4 has 2 fields, expected 3"),
    ("ragged-long", "a,b,c\n1,2,3\n4,5,6,7\n", r"line 3 has 4 fields, expected 3 \(as in the header\)"),
    ("text-cell", "x,y,t\n1,oops,0\n", r"line 2, column 2 \('y'\): 'oops' is not a number"),
    ("text-no-header", "1,2,0\n3,x,1\n", r"line 2, column 2: 'x' is not a number"),
    ("empty-cell", "1,,0\n", r"line 1, column 2: '' is not a number"),
    ("comma-decimal", "a,t\n\"1,5\",0\n", r"line 2, column 1 \('a'\): '1,5' is not a number"),
    ("nan", "1,nan,0\n", r"line 1, column 2: 'nan' is not finite; NaN and Inf are not accepted"),
    ("NaN-header", "a,b,t\n1,2,0\n1,NaN,1\n", r"line 3, column 2 \('b'\): 'NaN' is not finite"),
    ("inf", "a,b,t\n\n1,2,0\n-inf,2,1\n", r"line 4, column 1 \('a'\): '-inf' is not finite"),
    ("overflow", "1e999,2,0\n", r"line 1, column 1: '1e999' is not finite"),
    ("nan-target", "1,2,0\n1,2,nan\n", r"line 2, column 3: 'nan' is not finite"),
    ("empty-target", "a,t\n1,x\n2,\n", r"line 3, column 2 \('t'\): the target is empty"),
    ("multi-line-field", "x,t\n\"1\n2\",0\n3,x\n", r"line 2, column 1 \('x'\): '1\\n2' is not a number"),
    ("after-multi-line", "x,t\n\"1\",\"a\nb\"\n3 4,x\n", r"line 4, column 1 \('x'\): '3 4' is not a number"),
    ("nul-byte", "a,b,t\n1,2\x00,0\n", "line 2 holds a NUL byte"),
    ("huge-field", "a,t\n\"" + "x" * 200_000 + "\",0\n", "line 2: not valid CSV"),
    ("one-column", "1\n2\n", "at least two columns"),
]


@pytest.mark.parametrize("text,match", [c[1:] for c in BAD_CSV], ids=[c[0] for c in BAD_CSV])
def test_bad_csv_files_name_the_line_and_column(tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text, encoding="utf-8", newline="")
    with pytest.raises(DataError, match=match) as err:
        read_dataset(p)
    assert str(err.value).startswith(f"{p}: "), err.value
    if "line" in match:  # predicting reads the same cells (every column a feature)
        with pytest.raises(DataError, match=f"^{re.escape(str(p))}: line "):
            read_features(p)


def test_csv_crlf_and_quoted_cells(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes(b'a,"b",label\r\n" 1 ",2.5,"x, y"\r\n3,-4e-3,z\r\n')
    X, y = read_dataset(p, target="label")
    np.testing.assert_array_equal(X, [[1, 2.5], [3, -4e-3]])
    assert list(y) == ["x, y", "z"]


@pytest.mark.parametrize(
    "target,match",
    [("nope", "no column named 'nope'; columns are a, b, a"), ("a", "2 columns are named 'a'"),
     ("5", "target column 5 is out of range for 3 columns"), ("-4", "out of range")],
)
def test_csv_bad_target_column(tmp_path, target, match):
    p = tmp_path / "d.csv"
    p.write_text("a,b,a\n1,2,3\n")
    with pytest.raises(DataError, match=match):
        read_dataset(p, target=target)


def test_csv_not_utf8_and_directories(tmp_path):
    p = tmp_path / "latin1.csv"
    p.write_bytes("a,é\n1,2\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text .* at byte 2"):
        read_dataset(p)
    (tmp_path / "dir.csv").mkdir()
    for reader in (read_dataset, read_features):
        with pytest.raises(DataError, match="is a directory"):
            reader(tmp_path / "dir.csv")


def test_integral_targets_become_labels_only_when_exact(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("1,3\n2,-1\n")
    assert read_dataset(p)[1].dtype == np.int64
    p.write_text("1,1e19\n2,1\n")  # whole numbers, but past 2^53 (and int64): values
    y = read_dataset(p)[1]
    assert y.dtype == np.float64 and y[0] == 1e19
    np.save(tmp_path / "d.npy", np.array([[1.0, 2.0**60], [2.0, 0.0]]))
    assert read_dataset(tmp_path / "d.npy")[1].dtype == np.float64


def test_whole_number_targets_are_labels_in_every_format(tmp_path):
    """One rule, whatever the file: 0.0/1.0 targets are class labels, 0.5 a value."""
    X = np.arange(8.0).reshape(4, 2)
    for y, dtype in (([0.0, 1.0, 1.0, 0.0], np.int64), ([0.0, 0.5, 1.0, 0.0], np.float64)):
        np.savetxt(tmp_path / "d.csv", np.column_stack([X, y]), delimiter=",")
        np.save(tmp_path / "d.npy", np.column_stack([X, y]))
        np.savez(tmp_path / "d.npz", X=X, y=np.array(y))
        for name in ("d.csv", "d.npy", "d.npz"):
            got = read_dataset(tmp_path / name)[1]
            assert got.dtype == dtype and got.tolist() == y, name


def test_object_arrays_are_never_unpickled(tmp_path):
    payload = np.array([PickleBomb(), None], dtype=object)
    np.save(tmp_path / "o.npy", payload, allow_pickle=True)
    np.savez(tmp_path / "x.npz", X=payload, y=np.array([0, 1]))
    np.savez(tmp_path / "y.npz", X=np.ones((2, 1)), y=payload)
    (tmp_path / "p.npy").write_bytes(pickle.dumps(PickleBomb()))
    (tmp_path / "p.npz").write_bytes(pickle.dumps(PickleBomb()))
    for name, match in [("o.npy", "never unpickled"), ("x.npz", r"array 'X'.*never unpickled"),
                        ("y.npz", r"array 'y'.*never unpickled"), ("p.npy", "not a valid .npy"),
                        ("p.npz", r"not a valid .npz file \(it holds a Python pickle, and pickles "
                                  "are never loaded")]:
        with pytest.raises(DataError, match=match):
            read_dataset(tmp_path / name)
        if name != "y.npz":  # predicting reads X alone
            with pytest.raises(DataError, match=match):
                read_features(tmp_path / name)
    assert not PickleBomb.triggered


def _npy_claiming(shape, dtype="<f8"):
    """The bytes of a .npy file whose header declares ``shape`` but holds only 16 bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue() + b"\0" * 16


def test_npy_and_npz_headers_are_checked_before_allocating(tmp_path):
    """A 144-byte .npy declaring a terabyte, or truncated: refused before NumPy allocates."""
    import tracemalloc

    (tmp_path / "big.npy").write_bytes(_npy_claiming((10**6, 10**6)))
    np.savez(tmp_path / "ok.npz", X=np.ones((3, 2)), y=np.arange(3))
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as z:
        z.writestr("X.npy", _npy_claiming((10**6, 10**6)))
        z.writestr("y.npy", _npy_claiming((10**6,)))
    good = np.lib.format
    buf = io.BytesIO()
    good.write_array(buf, np.ones((50, 3)))
    (tmp_path / "cut.npy").write_bytes(buf.getvalue()[:-8])
    tracemalloc.start()
    try:
        for name, match in [("big.npy", r"declares shape \(1000000, 1000000\) of float64 = "
                             r"8000000000000 bytes, but only 16 bytes follow"),
                            ("big.npz", r"big.npz \(array 'X'\): its header declares shape"),
                            ("cut.npy", "truncated or corrupt")]:
            with pytest.raises(DataError, match=match):
                read_dataset(tmp_path / name)
        assert tracemalloc.get_traced_memory()[1] < 2**20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "arrays,match",
    [
        (dict(X=np.ones((4, 2)), y=np.arange(3)), r"\(target\): has 3 entries but X has 4 samples"),
        (dict(X=np.ones(4), y=np.arange(4)), "expected a 2-D array .* got 1-D shape"),
        (dict(X=np.ones((4, 2, 1)), y=np.arange(4)), r"got shape \(4, 2, 1\)"),
        (dict(X=np.ones((4, 2)), y=np.ones((4, 2, 2))), r"\(target\): expected shape"),
        (dict(X=np.ones((0, 2)), y=np.arange(0)), "has no samples"),
        (dict(X=np.ones((3, 0)), y=np.arange(3)), "has no features"),
        (dict(X=np.array([[1.0, np.inf]]), y=np.arange(1)), r"inf at row 0, column 1 \(0-based\)"),
        (dict(X=np.ones((2, 1)), y=np.array([0.0, np.nan])), r"\(target\): contains nan at row 1"),
        (dict(X=np.array([["a"], ["b"]]), y=np.arange(2)), "must be numeric, got dtype <U1"),
        (dict(X=np.ones((2, 2), complex), y=np.arange(2)), "must be numeric"),
        (dict(X=np.ones((2, 1))), "missing y"),
        (dict(x=np.ones((2, 1)), Y=np.arange(2)), r"missing X, y \(found x, Y\)"),
    ],
)
def test_bad_npz_files(tmp_path, arrays, match):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    with pytest.raises(DataError, match=match) as err:
        read_dataset(p)
    assert str(err.value).startswith(str(p))


@pytest.mark.parametrize(
    "array,match",
    [
        (np.arange(4.0), "got 1-D shape"),
        (np.ones((2, 2, 2)), r"got shape \(2, 2, 2\)"),
        (np.ones((0, 3)), "has no samples"),
        (np.array([[1.0, 2.0], [np.nan, 0.0]]), r"nan at row 1, column 0 \(0-based\)"),
        (np.array([["1", "2"]]), "must be numeric"),
        (np.ones((3, 1)), "at least two columns"),
    ],
)
def test_bad_npy_files(tmp_path, array, match):
    p = tmp_path / "d.npy"
    np.save(p, array)
    with pytest.raises(DataError, match=match) as err:
        read_dataset(p)
    assert str(err.value).startswith(str(p))


def test_files_that_are_not_what_they_say(tmp_path):
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "empty.npz").write_bytes(b"")
    np.save(tmp_path / "array.npy", np.ones((2, 2)))
    (tmp_path / "array.npz").write_bytes((tmp_path / "array.npy").read_bytes())
    np.savez(tmp_path / "zip.npz", X=np.ones((2, 2)), y=np.arange(2))
    (tmp_path / "zip.npy").write_bytes((tmp_path / "zip.npz").read_bytes())
    raw = bytearray((tmp_path / "zip.npz").read_bytes())
    raw[60] ^= 0xFF  # inside X's data: the zip CRC no longer matches
    (tmp_path / "crc.npz").write_bytes(bytes(raw))
    (tmp_path / "text.npz").write_text("hello world")
    (tmp_path / "text.npy").write_text("hello world")
    for name, match in [("empty.npy", r"not a valid .npy file \(the file is empty\)"),
                        ("empty.npz", "not a valid .npz"),
                        ("text.npz", r"text.npz: not a valid .npz file \(not a zip archive\)$"),
                        ("text.npy", r"text.npy: not a valid .npy file \(no .npy header\)$"),
                        ("array.npz", "single .npy array, not an .npz archive"),
                        ("zip.npy", "not a valid .npy"), ("crc.npz", "cannot read")]:
        with pytest.raises(DataError, match=match) as err:
            read_dataset(tmp_path / name)
        assert str(err.value).startswith(str(tmp_path / name))
        assert "allow_pickle" not in str(err.value)  # never advice to load unsafely


def test_feature_count_at_predict_time(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(DataError, match=r"x.csv: has 2 features per sample but the model expects 3"):
        read_features(p, n_features=3)
    np.testing.assert_array_equal(read_features(p, n_features=1), [[1], [3]])  # target dropped
    p.write_text("a,b,label\n1,2,cat\n3,4,dog\n")  # the training file itself: labels unread
    np.testing.assert_array_equal(read_features(p, n_features=2), [[1, 2], [3, 4]])
    with pytest.raises(DataError, match=r"line 2, column 3 \('label'\): 'cat' is not a number"):
        read_features(p, n_features=3)
    np.savez(tmp_path / "x.npz", X=np.ones((2, 5)))
    with pytest.raises(DataError, match="has 5 features per sample but the model expects 4"):
        read_features(tmp_path / "x.npz", n_features=4)
    with pytest.raises(DataError, match="needs arrays 'X'; missing X"):
        np.savez(tmp_path / "y.npz", y=np.ones(2))
        read_features(tmp_path / "y.npz")


@pytest.mark.parametrize("name,match", [("missing.csv", "no such file"), ("d.txt", "unknown file type")])
def test_bad_paths(tmp_path, name, match):
    (tmp_path / "d.txt").write_text("1,2\n")
    with pytest.raises(DataError, match=match):
        read_dataset(tmp_path / name)


def test_a_target_column_for_an_npz_is_refused_not_ignored(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((2, 2)), y=np.arange(2))
    with pytest.raises(DataError, match=r"d.npz: an .npz file's target is its array 'y'; a "
                                         r"target column \('label'\) applies to .csv and .npy"):
        read_dataset(tmp_path / "d.npz", target="label")


def test_npz_without_y(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((2, 2)))
    with pytest.raises(DataError, match="missing y"):
        read_dataset(tmp_path / "d.npz")


def test_standardizer_and_split():
    X, y = gpudnn.load_digits()
    s = Standardizer.fit(X)
    Z = s.transform(X)
    assert np.all(np.isfinite(Z))  # constant pixels get scale 1, not a division by 0
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-12)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, seed=0)
    assert len(Xte) == pytest.approx(0.2 * len(X), abs=10) and len(Xtr) + len(Xte) == len(X)
    assert set(yte) == set(range(10))  # stratified


def test_near_constant_features_are_not_blown_up():
    X = np.column_stack([np.full(50, 0.1), np.arange(50.0)])
    s = Standardizer.fit(X)
    assert s.scale[0] == 1.0
    assert abs(s.transform(np.array([[0.1001, 3.0]]))[0, 0]) < 1e-3


@pytest.mark.parametrize("test_size", [0, 1, 2, -0.5, "0.2", True])
def test_split_refuses_bad_fractions(test_size):
    with pytest.raises(DataError, match="test_size"):
        train_test_split(np.ones((10, 2)), np.arange(10) % 2, test_size=test_size)


def test_split_puts_every_class_on_both_sides_and_takes_lists():
    X = [[float(i)] for i in range(12)]
    y = [0] * 10 + [1, 1]  # a class of 2: 20% of 2 rounds to 0, still one goes to test
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, seed=0)
    assert set(ytr) == set(yte) == {0, 1}
    with pytest.raises(DataError, match="N rows"):
        train_test_split(np.ones((4, 2)), np.arange(3))


def test_split_stratifies_labels_not_values_and_never_leaves_a_part_empty():
    """stratify=False splits whole-number regression targets plainly (as classes of one sample
    each they all stayed in training: 3 of 1000 held out); no split leaves a part empty; a
    NumPy float is a fraction too."""
    rng = np.random.default_rng(0)
    X, prices = rng.normal(size=(1000, 3)), rng.integers(0, 100000, 1000)
    assert len(train_test_split(X, prices, test_size=0.2, stratify=False)[1]) == 200
    assert len(train_test_split(X, prices, test_size=0.2)[1]) < 20  # taken for labels: stratified
    Xte = train_test_split(X, prices % 3, test_size=np.float32(0.2), stratify=True)[1]
    assert 190 <= len(Xte) <= 210
    multi = rng.integers(0, 2, (1000, 4))  # multi-label 0/1 rows: split plainly, stratify or not
    assert len(train_test_split(X, multi, test_size=0.2, stratify=True)[1]) == 200
    for y, size in ((rng.normal(size=10), 0.99), (rng.normal(size=10), 0.01), (np.arange(10), 0.2)):
        with pytest.raises(DataError, match="each part needs at least one"):
            train_test_split(X[:10], y, test_size=size)


@pytest.mark.parametrize("text,sep", [("a;b;c\n1,5;2;0\n3;4;1\n", "semicolons"), ("a\tb\tc\n1\t2\t0\n", "tabs"),
                                      ("1;2;0\n3;4;1\n", "semicolons")])
def test_another_separator_is_named(tmp_path, text, sep):
    """A semicolon- or tab-separated file said "needs at least two columns, found 1" (or,
    with decimal commas, that line 2 had 3 fields): now what is wrong."""
    path = tmp_path / "d.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=f"its first line has no commas but {sep}: columns must be separated by commas"):
        read_dataset(path)


def test_a_target_that_names_one_column_and_indexes_another_is_refused(tmp_path):
    """Header "2,0,1,label": target "0" named column 1 but indexes column 0 (as --target 0
    passes it): refused, not silently the named one. Unambiguous names and indices work."""
    path = tmp_path / "d.csv"
    path.write_text("2,0,1,label\n1,2,3,a\n4,5,6,b\n7,8,9,a\n")
    with pytest.raises(DataError, match=r"target '0' is both the name of column 1 and the index of column 0 \('2'\)"):
        read_dataset(path, target="0")
    assert read_dataset(path, target="label")[1].tolist() == ["a", "b", "a"]
    assert read_dataset(path, target=3)[1].tolist() == ["a", "b", "a"]


def test_a_sparse_matrix_is_named_not_called_an_object_array():
    """fit/predict/evaluate on a scipy.sparse X were told 'object arrays are not accepted'
    (np.asarray wraps the matrix in a 0-d object array): the error names the sparse matrix
    and the fix, and gpudnn.sklearn, which densifies it."""
    sp = pytest.importorskip("scipy.sparse")
    X = sp.csr_matrix(np.eye(4))
    with pytest.raises(DataError, match=r"X: is a scipy.sparse matrix \(csr_matrix\).*X.toarray\(\)"):
        check_X(X)
    net = gpudnn.Network([4, 3], backend="numpy")
    with pytest.raises(DataError, match="validation X: is a scipy.sparse matrix"):
        net.fit(np.eye(4), [0, 1, 2, 0], validation_data=(X, [0, 1, 2, 0]), verbose=0)
    with pytest.raises(DataError, match="sparse"):
        net.predict(X)


@pytest.mark.parametrize("at", [(0, 0), (1234, 7), (2999, 9)])
def test_the_finite_check_goes_block_by_block(monkeypatch, at):
    """check_X finds the first NaN/inf across blocks of rows (its row and column named) with
    no temporary of the data's size (a memory-mapped X stays as large as it was)."""
    import tracemalloc

    from gpudnn import data

    monkeypatch.setattr(data, "FINITE_BLOCK", 1000)  # 100 rows of 10 a block
    X = np.zeros((3000, 10), np.float32)
    tracemalloc.start()
    try:
        assert data.check_X(X) is X
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < X.nbytes / 10  # (a whole-array isfinite took X.size bytes: 2.5x this bound)
    X[at] = np.inf
    X[-1, -1] = np.nan  # a later one: the first is named
    with pytest.raises(DataError, match=rf"contains inf at row {at[0]}, column {at[1]} \(0-based\)"
                       if at != (2999, 9) else r"contains nan at row 2999, column 9"):
        data.check_X(X)


def test_fit_predict_and_evaluate_take_the_backends_arrays(backend):
    """CuPy X and y given to fit, predict or evaluate raised CuPy's bare TypeError (implicit
    conversion to NumPy); they are copied to the host, where fit checks and batches them."""
    X, y = gpudnn.load_digits()
    X, y = X[:200], y[:200]
    runs = []
    for data in ((X, y), (backend.asarray(X), backend.asarray(y))):
        net = gpudnn.Network([64, 16, 10], backend=backend, seed=0)
        net.fit(*data, epochs=2, batch_size=50, standardize=True, verbose=0)
        runs.append((backend.to_numpy(net.params).copy(), net.predict(data[0]), net.evaluate(*data)))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][2] == runs[1][2]


class _DeviceTensor:
    """Another library's GPU array: it has the CUDA array interface, and NumPy fails on it."""

    __cuda_array_interface__ = {"shape": (3, 2), "typestr": "<f4", "data": (0, False), "version": 3}

    def __array__(self, *a, **k):
        raise TypeError("can't convert cuda:0 device type tensor to numpy")


def test_another_librarys_device_array_is_named():
    with pytest.raises(DataError, match=r"X: is a .*_DeviceTensor on a GPU; pass a NumPy or CuPy array"):
        check_X(_DeviceTensor())
    net = gpudnn.Network([2, 3, 2], backend="numpy")
    with pytest.raises(DataError, match=r"^y: is a .*_DeviceTensor on a GPU"):
        net.fit(np.zeros((3, 2)), _DeviceTensor(), epochs=1)
