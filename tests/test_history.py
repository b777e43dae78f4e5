"""Writing the per-epoch history: aligned epochs, NumPy scalars, valid JSON, atomic writes."""

import csv
import json

import numpy as np
import pytest

from gpudnn.errors import DataError
from gpudnn.history import record_epoch, save_history


def _strict_json(path):
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_record_epoch_keeps_one_entry_per_epoch():
    """A key a callback logs only in some epochs holds None in the others, so that every
    list has one entry per epoch and each value stays with its epoch."""
    history = {}
    record_epoch(history, {"loss": 3.0, "only_first": 1})
    record_epoch(history, {"loss": 2.0})
    record_epoch(history, {"loss": 1.0, "late": 7})
    assert history == {"loss": [3.0, 2.0, 1.0], "only_first": [1, None, None],
                       "late": [None, None, 7]}


def test_a_key_logged_in_some_epochs_is_written_in_its_epochs_rows(tmp_path):
    history = {}
    for e in range(4):
        record_epoch(history, {"loss": float(e), **({"extra": 10 * e} if e % 2 else {})})
    save_history(history, tmp_path / "h.csv")
    assert _csv_rows(tmp_path / "h.csv") == [
        ["epoch", "loss", "extra"], ["1", "0.0", ""], ["2", "1.0", "10"], ["3", "2.0", ""],
        ["4", "3.0", "30"]]
    save_history(history, tmp_path / "h.json")
    assert _strict_json(tmp_path / "h.json")["extra"] == [None, 10, None, 30]


def test_lists_of_different_lengths_are_refused_not_misaligned(tmp_path):
    """Before: the CSV row writer zipped the lists, dropping the epochs past the shortest
    and pairing values with the wrong epochs."""
    history = {"loss": [3.0, 2.0, 1.0], "extra": [5.0]}
    for name in ("h.csv", "h.json"):
        with pytest.raises(DataError, match="different lengths.*loss: 3, extra: 1"):
            save_history(history, tmp_path / name)
        assert not (tmp_path / name).exists()


def test_numpy_scalars_are_written_as_numbers(tmp_path):
    """Before: an np.float32 in the logs made the JSON writer raise TypeError, after part
    of the file was written."""
    history = {"loss": [np.float64(0.5), np.float32(0.25)], "n": [np.int64(3), np.int32(4)],
               "ok": [np.bool_(True), True]}
    save_history(history, tmp_path / "h.json")
    assert _strict_json(tmp_path / "h.json") == {
        "epoch": [1, 2], "loss": [0.5, 0.25], "n": [3, 4], "ok": [True, True]}
    save_history(history, tmp_path / "h.csv")
    assert _csv_rows(tmp_path / "h.csv")[1:] == [["1", "0.5", "3", "True"], ["2", "0.25", "4", "True"]]


def test_nan_and_infinity_are_json_null(tmp_path):
    """Before: NaN was written as a bare NaN token, which is not JSON."""
    history = {"loss": [1.0, float("nan")], "val_loss": [float("-inf"), float("inf")]}
    save_history(history, tmp_path / "h.json")
    assert _strict_json(tmp_path / "h.json") == {
        "epoch": [1, 2], "loss": [1.0, None], "val_loss": [None, None]}


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    """The history is written to a temporary file and renamed over the old one: a value
    that cannot be written leaves the old file, not a truncated new one."""
    path = tmp_path / "h.json"
    save_history({"loss": [1.0]}, path)
    old = path.read_text()
    with pytest.raises(TypeError):
        save_history({"loss": [1.0, 2.0], "bad": [object(), object()]}, path)
    assert path.read_text() == old
    assert [p.name for p in tmp_path.iterdir()] == ["h.json"]  # no temporary file left


def test_a_failed_csv_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "h.csv"
    save_history({"loss": [1.0]}, path)
    old = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(Exception, match="No space left"):
        save_history({"loss": [1.0, 2.0]}, path)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["h.csv"]
