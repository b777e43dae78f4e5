"""The built-in digits and the dataset readers."""

import numpy as np
import pytest

import gpudnn
from gpudnn.data import Standardizer, read_dataset, read_features, train_test_split
from gpudnn.errors import DataError


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


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "empty"),
        ("a,b\n", "header but no data rows"),
        ("1,2,3\n4,5\n", "line 2 has 2 fields, expected 3"),
        ("x,y,t\n1,oops,0\n", r"line 2, column 2 \('y'\): 'oops' is not a number"),
        ("1,nan,0\n", "nan at row 0, column 1"),
        ("1\n2\n", "at least two columns"),
    ],
)
def test_bad_csv_files_name_the_place(tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(DataError, match=match) as err:
        read_dataset(p)
    assert str(p) in str(err.value)


def test_object_arrays_are_never_unpickled(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="never unpickled"):
        read_dataset(tmp_path / "o.npy")
    np.savez(tmp_path / "o.npz", X=np.array([[1], [2]], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DataError, match="never unpickled"):
        read_dataset(tmp_path / "o.npz")


@pytest.mark.parametrize("name,match", [("missing.csv", "no such file"), ("d.txt", "unknown file type")])
def test_bad_paths(tmp_path, name, match):
    (tmp_path / "d.txt").write_text("1,2\n")
    with pytest.raises(DataError, match=match):
        read_dataset(tmp_path / name)


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
