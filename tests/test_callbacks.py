"""Callbacks in fit: hooks, early stopping that restores the best weights exactly, progress."""

import io

import numpy as np
import pytest

import gpudnn
from gpudnn.callbacks import Callback, EarlyStopping, LambdaCallback, ProgressBar, stops
from gpudnn.errors import ConfigError


@pytest.fixture
def data(rng):
    X = rng.normal(size=(120, 5))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    return X, y


def small_net(**kw):
    return gpudnn.Network([5, 16, 3], backend="numpy", dtype="float64", seed=2, **kw)


class Snapshots(Callback):
    """Keeps the parameters after every epoch."""

    def on_train_begin(self, logs):
        self.params, self.begin = [], logs

    def on_epoch_end(self, epoch, logs):
        self.params.append(self.net.params.copy())


def test_hooks_run_in_order_with_their_logs(data):
    X, y = data
    calls = []
    cb = LambdaCallback(
        on_train_begin=lambda logs: calls.append(("begin", logs)),
        on_epoch_begin=lambda e: calls.append(("epoch_begin", e)),
        on_batch_end=lambda b, logs: calls.append(("batch", b, logs["size"], float(logs["loss"]))),
        on_epoch_end=lambda e, logs: calls.append(("epoch", e, sorted(logs))),
        on_train_end=lambda h: calls.append(("end", len(h["loss"]))),
    )
    small_net().fit(X, y, epochs=2, batch_size=50, callbacks=[cb], verbose=0)
    assert calls[0] == ("begin", {"epochs": 2, "steps": 3, "data_on_device": True, "validation": False})
    assert [c[0] for c in calls[1:6]] == ["epoch_begin", "batch", "batch", "batch", "epoch"]
    assert [c[2] for c in calls[2:5]] == [50, 50, 20] and all(c[3] > 0 for c in calls[2:5])
    assert calls[5] == ("epoch", 0, ["accuracy", "loss", "lr", "time"])
    assert calls[-1] == ("end", 2)


def test_an_epoch_hook_returning_true_stops_training(data):
    X, y = data
    stop = LambdaCallback(on_epoch_end=lambda e, logs: e == 2)
    h = small_net().fit(X, y, epochs=10, callbacks=[stop], verbose=0)
    assert len(h["loss"]) == 3


def test_a_lambda_epoch_hook_returning_a_count_does_not_stop_training(data, tmp_path):
    """A user review: f.write returns the number of characters written, which stopped
    training after one epoch. Only an explicit True stops."""
    X, y = data
    with open(tmp_path / "log.txt", "w") as f:
        cb = LambdaCallback(on_epoch_end=lambda e, logs: f.write(f"{e} {logs['loss']}\n"))
        h = small_net().fit(X, y, epochs=4, callbacks=[cb], verbose=0)
    assert len(h["loss"]) == 4
    assert len((tmp_path / "log.txt").read_text().splitlines()) == 4
    for value in (1, 7, "stop", [1], 1.0, np.int64(1), None, False, np.bool_(False)):
        assert LambdaCallback(on_epoch_end=lambda e, logs: value).on_epoch_end(0, {}) is False
    for value in (True, np.bool_(True)):
        assert LambdaCallback(on_epoch_end=lambda e, logs: value).on_epoch_end(0, {}) is True


def test_only_an_explicit_true_stops():
    assert stops(True) and stops(np.bool_(True))
    for value in (False, np.bool_(False), None, 1, 12, 1.0, "yes", [True], np.array([True]), np.int8(1)):
        assert not stops(value), value


def test_a_callback_may_add_to_the_logs_and_history(data):
    X, y = data
    cb = LambdaCallback(on_epoch_end=lambda e, logs: logs.update(twice=2 * logs["loss"]))
    h = small_net().fit(X, y, epochs=3, callbacks=[cb], verbose=0)
    assert h["twice"] == [2 * v for v in h["loss"]]


def test_early_stopping_restores_the_best_epochs_weights_exactly(data):
    X, y = data
    scores = [5.0, 3.0, 4.0, 2.0, 2.5, 6.0, 7.0, 1.0]  # best at epoch 3, then 3 worse ones
    score = LambdaCallback(on_epoch_end=lambda e, logs: logs.update(score=scores[e]))
    snaps = Snapshots()
    stop = EarlyStopping(monitor="score", mode="min", patience=3)
    h = small_net().fit(X, y, epochs=8, callbacks=[score, snaps, stop], verbose=0)
    assert (stop.best_epoch, stop.best, stop.stopped_epoch) == (3, 2.0, 6)
    assert len(h["loss"]) == 7
    net = stop.net
    assert not np.array_equal(net.params, snaps.params[-1])
    np.testing.assert_array_equal(net.params, snaps.params[3])


def test_early_stopping_on_the_validation_loss(data):
    """Overfit a tiny training set: training stops after the validation loss turns up, and
    the network is the one of the best validation epoch, whose val_loss it reproduces."""
    X, y = data
    snaps = Snapshots()
    stop = EarlyStopping(patience=3)
    net = gpudnn.Network([5, 64, 3], backend="numpy", dtype="float64", seed=0)
    opt = gpudnn.optim.Adam(lr=0.05)
    h = net.fit(X[:30], y[:30], epochs=200, batch_size=10, optimizer=opt,
                validation_data=(X[30:], y[30:]), callbacks=[snaps, stop], verbose=0)
    best = int(np.argmin(h["val_loss"]))
    assert stop.best_epoch == best and stop.stopped_epoch == best + 3 == len(h["loss"]) - 1
    np.testing.assert_array_equal(net.params, snaps.params[best])
    assert net.evaluate(X[30:], y[30:])["loss"] == h["val_loss"][best]


def test_early_stopping_without_validation_watches_the_training_loss(data):
    X, y = data
    stop = EarlyStopping(patience=1, min_delta=1.0)  # nothing improves by 1.0
    h = small_net().fit(X, y, epochs=5, callbacks=[stop], verbose=0)
    assert stop.best_epoch == 0 and len(h["loss"]) == 2
    with pytest.raises(ConfigError, match="cannot monitor 'val_accuracy'"):
        small_net().fit(X, y, epochs=1, callbacks=[EarlyStopping(monitor="val_accuracy")], verbose=0)


@pytest.mark.parametrize("bad", [dict(patience=0), dict(mode="up"), dict(min_delta="x")])
def test_early_stopping_bad_arguments(bad):
    with pytest.raises(ConfigError):
        EarlyStopping(**bad)


def test_callbacks_must_be_callbacks(data):
    with pytest.raises(ConfigError, match="Callback"):
        small_net().fit(*data, callbacks=[lambda e, logs: None], verbose=0)
    with pytest.raises(ConfigError, match="unknown hooks"):
        LambdaCallback(on_step=print)


# --- progress ----------------------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_verbose_0_is_silent(data, capsys):
    small_net().fit(*data, epochs=2, verbose=0)
    assert capsys.readouterr() == ("", "")


def test_no_terminal_means_lines_and_no_bar(data, capsys):
    small_net().fit(*data, epochs=2, verbose=1)
    out, err = capsys.readouterr()
    assert err == "" and len(out.splitlines()) == 2 and "lr 0.01" in out


def test_a_terminal_gets_a_tqdm_bar(data, capsys, monkeypatch):
    pytest.importorskip("tqdm")
    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    small_net().fit(*data, epochs=2, batch_size=40, verbose=1)
    out = capsys.readouterr().out
    assert out == ""  # the bar replaces the lines
    bar = term.getvalue()
    assert "epoch 1/2" in bar and "epoch 2/2" in bar and "3/3" in bar and "loss" in bar
    term2 = Terminal()
    monkeypatch.setattr("sys.stderr", term2)
    small_net().fit(*data, epochs=2, verbose=2)  # verbose=2: lines even on a terminal
    assert term2.getvalue() == "" and len(capsys.readouterr().out.splitlines()) == 2


def test_progress_bar_without_tqdm_falls_back_to_lines(data, capsys, monkeypatch):
    monkeypatch.setattr("sys.stderr", Terminal())
    monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)
    small_net().fit(*data, epochs=2, verbose=1)
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert isinstance(ProgressBar(), Callback)


# --- monitors checked before training ----------------------------------------------------
def test_early_stopping_refuses_a_validation_metric_without_validation_data_at_train_begin():
    """A user review: EarlyStopping(monitor="val_loss") without validation data (or the
    typo "val_los") was reported only after the first epoch had trained."""
    logs = {"epochs": 5, "steps": 2, "data_on_device": True}
    for monitor in ("val_loss", "val_accuracy", ("val_accuracy", "val_loss")):
        with pytest.raises(ConfigError, match="fit has no validation data"):
            EarlyStopping(monitor=monitor).on_train_begin({**logs, "validation": False})
        EarlyStopping(monitor=monitor).on_train_begin({**logs, "validation": True})
        EarlyStopping(monitor=monitor).on_train_begin(logs)  # not known: checked after epoch 1
    # a callback may add a "val_..." key (the scikit-learn wrapper's val_score) or another
    # one: checked against the first epoch's logs (a typo, "val_los", too)
    for monitor in ("auto", "loss", ("val_score", "loss"), "val_score", "val_los", "score"):
        EarlyStopping(monitor=monitor).on_train_begin({**logs, "validation": False})


def test_check_monitors_finds_early_stopping_and_a_wrapped_reduce_lr_on_plateau():
    from gpudnn.callbacks import check_monitors
    from gpudnn.schedules import LinearWarmup, ReduceLROnPlateau

    plateau = LinearWarmup(ReduceLROnPlateau(0.1, monitor="val_loss"), warmup_steps=5)
    with pytest.raises(ConfigError, match="cannot monitor 'val_loss': fit has no validation"):
        check_monitors([], plateau, False)
    with pytest.raises(ConfigError, match="cannot monitor 'val_accuracy'"):
        check_monitors([ProgressBar(), EarlyStopping(monitor="val_accuracy")], 0.1, False)
    check_monitors([EarlyStopping(monitor="val_accuracy")], plateau, True)
    check_monitors([EarlyStopping()], ReduceLROnPlateau(0.1), False)  # "auto"
    check_monitors([], ReduceLROnPlateau(0.1, monitor=("val_score", "loss")), False)


def test_fit_stops_only_on_an_explicit_true(data):
    class Counting(Callback):
        def on_epoch_end(self, epoch, logs):
            return 17  # e.g. what f.write returned

    h = small_net().fit(*data, epochs=3, callbacks=[Counting()], verbose=0)
    assert len(h["loss"]) == 3


def test_fit_refuses_a_validation_monitor_without_validation_data_before_training(data):
    from gpudnn.schedules import ReduceLROnPlateau

    began = []
    spy = LambdaCallback(on_epoch_begin=began.append)
    for cb, lr in ((EarlyStopping(monitor="val_accuracy"), 0.1),
                   (EarlyStopping(monitor="val_loss"), 0.1),
                   (None, ReduceLROnPlateau(0.1, monitor="val_loss"))):
        with pytest.raises(ConfigError, match="fit has no validation data"):
            small_net().fit(*data, epochs=2, optimizer=gpudnn.optim.SGD(lr=lr),
                            callbacks=[spy] + ([cb] if cb else []), verbose=0)
    assert began == []


def test_a_key_logged_in_some_epochs_stays_with_its_epochs(data, tmp_path):
    from gpudnn.history import save_history

    cb = LambdaCallback(on_epoch_end=lambda e, logs: logs.update(odd=e) if e % 2 else None)
    h = small_net().fit(*data, epochs=4, callbacks=[cb], verbose=0)
    assert h["odd"] == [None, 1, None, 3] and len(h["loss"]) == 4
    save_history(h, tmp_path / "h.csv")
    rows = (tmp_path / "h.csv").read_text().splitlines()
    assert [r.split(",")[-1] for r in rows] == ["odd", "", "1", "", "3"]
