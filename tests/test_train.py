"""fit, predict and evaluate on whole datasets."""

import re
import time
import warnings

import numpy as np
import pytest

import gpudnn
from gpudnn.data import train_test_split
from gpudnn.errors import ConfigError, DataError, TrainingError


@pytest.fixture(scope="module")
def digits():
    X, y = gpudnn.load_digits()
    return train_test_split(X, y, test_size=0.2, seed=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_digits_reach_97_percent_within_seconds(backend, digits, seed):
    Xtr, Xte, ytr, yte = digits
    net = gpudnn.Network([64, 256, 10], backend=backend, seed=seed)
    opt = gpudnn.optim.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3)
    t0 = time.perf_counter()
    history = net.fit(Xtr, ytr, epochs=40, batch_size=32, optimizer=opt, verbose=0, standardize=True)
    seconds = time.perf_counter() - t0
    scores = net.evaluate(Xte, yte)
    assert scores["accuracy"] >= 0.97, scores
    assert history["loss"][-1] < history["loss"][0] / 10
    assert np.mean(net.predict(Xte) == yte) == pytest.approx(scores["accuracy"])
    assert seconds < 30  # "a few seconds"; measured 0.3 s on a 2-core CPU


def test_history_and_validation(digits):
    Xtr, Xte, ytr, yte = digits
    net = gpudnn.Network([64, 32, 10], backend="numpy")
    h = net.fit(Xtr, ytr, epochs=3, batch_size=64, optimizer=gpudnn.optim.SGD(lr=0.01),
                validation_data=(Xte, yte), verbose=0, standardize=True)
    assert set(h) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"}
    assert all(len(v) == 3 for v in h.values())
    assert h["val_loss"][-1] == pytest.approx(net.evaluate(Xte, yte)["loss"])
    assert net.history is h


def test_fit_prints_one_line_per_epoch(digits, capsys):
    Xtr, _, ytr, _ = digits
    gpudnn.Network([64, 10], backend="numpy").fit(Xtr, ytr, epochs=2, verbose=1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [l.split()[:2] for l in lines] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert "accuracy" in lines[0]


def test_fit_is_reproducible(digits):
    Xtr, _, ytr, _ = digits
    runs = []
    for _ in range(2):
        net = gpudnn.Network([64, 16, 10], backend="numpy", seed=3)
        net.fit(Xtr, ytr, epochs=2, batch_size=50, verbose=0)
        runs.append(net.params.copy())
    np.testing.assert_array_equal(*runs)


def test_full_batch_fit_equals_train_steps(rng):
    """fit with one batch per epoch and no shuffle is exactly train_step on the columns."""
    X = rng.normal(size=(20, 3))
    y = rng.integers(0, 4, 20)
    a = gpudnn.Network([3, 5, 4], backend="numpy", dtype="float64", seed=1)
    b = gpudnn.Network([3, 5, 4], backend="numpy", dtype="float64", seed=1)
    a.fit(X, y, epochs=3, batch_size=20, shuffle=False, optimizer=gpudnn.optim.SGD(lr=0.1), verbose=0)
    opt = gpudnn.optim.SGD(lr=0.1)
    for _ in range(3):
        b.train_step(X.T, np.eye(4)[y].T, opt)
    np.testing.assert_allclose(a.params, b.params, rtol=1e-14)


def test_regression_with_mse(rng):
    X = rng.uniform(-1, 1, size=(400, 2))
    y = np.sin(2 * X[:, 0]) + X[:, 1] ** 2
    net = gpudnn.Network([2, 32, 1], activation="tanh", output="identity", backend="numpy", seed=0)
    base = net.evaluate(X, y)["loss"]
    net.fit(X, y, epochs=100, batch_size=32, optimizer=gpudnn.optim.SGD(lr=0.05, momentum=0.9), verbose=0)
    scores = net.evaluate(X, y)
    assert set(scores) == {"loss"}
    assert scores["loss"] < base / 20
    pred = net.predict(X)
    assert pred.shape == (400,)
    assert np.mean((pred - y) ** 2) / 2 == pytest.approx(scores["loss"], rel=1e-4)


def test_multi_output_regression_shapes(rng):
    X = rng.normal(size=(30, 4))
    Y = rng.normal(size=(30, 2))
    net = gpudnn.Network([4, 8, 2], output="identity", backend="numpy")
    net.fit(X, Y, epochs=2, verbose=0)
    assert net.predict(X).shape == (30, 2)


def test_binary_classification_with_string_labels(rng):
    X = rng.normal(size=(200, 2))
    y = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    net = gpudnn.Network([2, 8, 1], output="sigmoid", backend="numpy", seed=0)
    net.fit(X, y, epochs=50, batch_size=20, optimizer=gpudnn.optim.SGD(lr=0.1), verbose=0)
    assert list(net.classes_) == ["no", "yes"]
    assert net.evaluate(X, y)["accuracy"] > 0.95
    assert set(net.predict(X)) <= {"no", "yes"}
    with pytest.raises(DataError, match="label 'maybe' at row 0 was not seen"):
        net.evaluate(X[:1], np.array(["maybe"]))


def test_softmax_with_text_labels_maps_back(rng):
    X = rng.normal(size=(60, 3))
    y = np.array(["cat", "dog", "emu"])[rng.integers(0, 3, 60)]
    net = gpudnn.Network([3, 3], backend="numpy")
    net.fit(X, y, epochs=1, verbose=0)
    assert list(net.classes_) == ["cat", "dog", "emu"]
    assert net.predict(X).dtype.kind == "U"
    assert net.predict_proba(X).shape == (60, 3)
    np.testing.assert_allclose(net.predict_proba(X).sum(axis=1), 1, rtol=1e-5)


def test_multilabel_sigmoid(rng):
    X = rng.normal(size=(200, 3))
    Y = (X[:, :2] > 0).astype(int)  # two independent 0/1 labels per sample
    net = gpudnn.Network([3, 16, 2], output="sigmoid", backend="numpy", seed=0)
    net.fit(X, Y, epochs=60, batch_size=20, optimizer=gpudnn.optim.SGD(lr=0.5), verbose=0)
    pred = net.predict(X)
    assert pred.shape == (200, 2) and set(np.unique(pred)) <= {0, 1}
    exact = np.mean(np.all(pred == Y, axis=1))  # subset accuracy, as scikit-learn counts it
    assert net.evaluate(X, Y)["accuracy"] == pytest.approx(exact)
    assert exact > 0.9


@pytest.mark.parametrize(
    "X,y,match",
    [
        (np.ones((5, 3)), np.arange(5) % 2, "3 features per sample but the model expects 4"),
        (np.ones(4), np.arange(1), "1-D"),
        (np.ones((5, 4)), np.arange(4), "4 entries but X has 5 samples"),
        (np.full((5, 4), np.nan), np.arange(5) % 2, "nan at row 0, column 0"),
        (np.ones((5, 4)), np.zeros(5, int), "single class"),
        (np.ones((5, 4)), np.arange(5) + 7, "5 classes but the output layer has 3"),
        (np.array([["a"] * 4] * 5), np.arange(5) % 2, "must be numeric"),
        (np.ones((0, 4)), np.arange(0), "no samples"),
    ],
)
def test_bad_data_is_refused_before_training(X, y, match):
    net = gpudnn.Network([4, 3], backend="numpy")
    before = net.params.copy()
    with pytest.raises(DataError, match=match):
        net.fit(X, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(net.params, before)  # nothing the user had is lost


@pytest.mark.parametrize("kw", [dict(epochs=0), dict(batch_size=-1), dict(epochs=1.5),
                                dict(validation_data=np.ones(3))])
def test_bad_fit_settings(kw):
    with pytest.raises(ConfigError):
        gpudnn.Network([4, 3], backend="numpy").fit(np.ones((6, 4)), np.arange(6) % 3, **kw)


@pytest.mark.parametrize("kernels", ["generic", "auto"])
def test_diverging_training_stops_with_one_clear_error(rng, kernels):
    """The run's only word is the TrainingError: NumPy's overflow warnings on the way to
    inf stay quiet (as CuPy's do), and a regression is told to scale its targets too."""
    X = rng.normal(size=(64, 4)) * 1e3
    y = rng.normal(size=64) * 1e3
    net = gpudnn.Network([4, 64, 1], output="identity", backend="numpy", kernels=kernels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would fail the fit before the TrainingError
        with pytest.raises(TrainingError, match=r"loss became (inf|nan) at step \d+ \(epoch \d+, batch.*"
                                                r"scale the targets"):
            net.fit(X, y, epochs=20, optimizer=gpudnn.optim.SGD(lr=10.0), verbose=0,
                    validation_split=0.2)


def test_fewer_classes_than_softmax_units_are_refused(rng):
    """Labels that leave units unnamed (3 string labels for 5 units): predict could not name
    what those units say, and the model could not be saved. Labels 0..n-1 name every unit,
    seen or not."""
    X = rng.normal(size=(30, 4))
    net = gpudnn.Network([4, 8, 5], backend="numpy")
    with pytest.raises(DataError, match=r"y: 3 classes but the output layer has 5 units \(classes: \['a', 'b', 'c'\]\): "
                                        "give the network one output unit per class"):
        net.fit(X, np.array(["a", "b", "c"] * 10), epochs=1, verbose=0)
    net.fit(X, np.arange(30) % 3, epochs=1, verbose=0)  # 0, 1, 2 of 0..4: all units named
    assert net.classes_.tolist() == [0, 1, 2, 3, 4]


def test_inputs_beyond_the_dtype_are_refused(rng):
    """float32 holds ±3.4e38: larger inputs would be inf in the first layer, and the run
    would end as a divergence blaming the learning rate."""
    X, y = rng.normal(size=(20, 3)) * 1e39, rng.integers(0, 2, 20)
    net = gpudnn.Network([3, 4, 2], backend="numpy")
    with pytest.raises(DataError, match=r"X: has values up to 2.*e\+39, beyond what float32 holds .*dtype='float64'"):
        net.fit(X, y, verbose=0)
    with pytest.raises(DataError, match="beyond what float32 holds"):
        net.predict(X)
    gpudnn.Network([3, 4, 2], backend="numpy", dtype="float64").fit(X, y, epochs=1, verbose=0, standardize=True)
    net.fit(X, y, epochs=1, verbose=0, standardize=True)  # scaled first: fine in float32
    half = gpudnn.Network([3, 4, 2], backend="numpy", precision="float16")  # casts its inputs: ±65504
    with pytest.raises(DataError, match=r"1e\+05, beyond what float16 holds .*precision=None"):
        half.fit(np.where(np.arange(3) == 0, 1e5, X[:, :3] * 1e-39), y, verbose=0)


def test_a_fit_refused_for_its_inputs_leaves_the_network_as_it_was(rng):
    """The range check comes before anything of the network changes: its classes, its
    input and target standardisations stay as they were (None here), so the next fit with
    other labels or without standardize_targets is not bound by the refused one's."""
    X = rng.normal(size=(20, 3))
    bad = X.copy()
    bad[0, 0] = 1e39
    net = gpudnn.Network([3, 4, 2], backend="numpy")
    with pytest.raises(DataError, match="beyond what float32 holds"):
        net.fit(bad, np.array(["a", "b"])[np.arange(20) % 2], verbose=0)
    assert net.classes_ is None and net.scaler is None
    net.fit(X, np.array(["cat", "dog"])[np.arange(20) % 2], epochs=1, verbose=0)
    reg = gpudnn.Network([3, 4, 1], output="identity", backend="numpy")
    with pytest.raises(DataError, match="beyond what float32 holds"):
        reg.fit(bad, 5000.0 + X[:, 0], verbose=0, standardize_targets=True)
    assert reg.target_scaler is None


# --- validation split, schedules, clipping, accumulation, dropout --------------------------
def test_validation_split_holds_out_a_stratified_part(digits):
    Xtr, _, ytr, _ = digits
    net = gpudnn.Network([64, 32, 10], backend="numpy")
    h = net.fit(Xtr, ytr, epochs=2, validation_split=0.2, verbose=0, standardize=True)
    assert len(h["val_loss"]) == len(h["val_accuracy"]) == 2
    _, Xv, _, yv = train_test_split(Xtr, ytr, test_size=0.2, seed=net.seed)
    assert net.evaluate(Xv, yv)["loss"] == pytest.approx(h["val_loss"][-1], rel=1e-12)
    with pytest.raises(ConfigError, match="not both"):
        net.fit(Xtr, ytr, validation_split=0.1, validation_data=(Xtr, ytr), verbose=0)
    with pytest.raises(ConfigError, match="validation_split"):
        net.fit(Xtr, ytr, validation_split=1.0, verbose=0)


def test_history_records_the_scheduled_lr(rng):
    X, y = rng.normal(size=(40, 3)), rng.integers(0, 2, 40)
    sched = gpudnn.schedules.StepDecay(0.1, step_size=4, gamma=0.5)  # 4 steps = 2 epochs
    net = gpudnn.Network([3, 4, 2], backend="numpy")
    h = net.fit(X, y, epochs=5, batch_size=20, optimizer=gpudnn.optim.SGD(lr=sched), verbose=0)
    assert h["lr"] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_reduce_on_plateau_in_fit(rng):
    X, y = rng.normal(size=(40, 3)), rng.integers(0, 2, 40)
    sched = gpudnn.schedules.ReduceLROnPlateau(0.1, patience=1, min_delta=10.0, factor=0.5)
    h = gpudnn.Network([3, 4, 2], backend="numpy").fit(
        X, y, epochs=4, optimizer=gpudnn.optim.SGD(lr=sched), verbose=0)
    assert h["lr"] == pytest.approx([0.1, 0.1, 0.05, 0.025])  # decided after each epoch


def test_clip_norm_bounds_every_step(rng):
    X, y = rng.normal(size=(30, 3)) * 50, rng.integers(0, 3, 30)
    net = gpudnn.Network([3, 8, 3], backend="numpy", dtype="float64", seed=1)
    before = net.params.copy()
    ref = gpudnn.Network([3, 8, 3], backend="numpy", dtype="float64", seed=1)
    ref.forward_backward(X.T, np.eye(3)[:, y])  # the step's gradient g, to know ‖g‖
    g = np.linalg.norm(ref.grads)
    assert g > 1.0  # far above the limit
    net.fit(X, y, epochs=1, batch_size=30, optimizer=gpudnn.optim.SGD(lr=0.5), clip_norm=0.01, verbose=0)
    # one step of length η c ‖g‖ / (‖g‖ + 10⁻⁶): the clipping rule's 10⁻⁶ included
    assert np.linalg.norm(net.params - before) == pytest.approx(0.5 * 0.01 * g / (g + 1e-6), rel=1e-12)
    with pytest.raises(ConfigError, match="clip_norm"):
        net.fit(X, y, clip_norm=0, verbose=0)


@pytest.mark.parametrize("k", [2, 3, 7, 100])
def test_micro_batches_give_the_whole_batch_gradients(backend, rng, k):
    """Gradient accumulation over k micro-batches (the last one smaller) is the batch's."""
    a = gpudnn.Network([6, 10, 8, 4], backend=backend, dtype="float64", seed=3)
    b = gpudnn.Network([6, 10, 8, 4], backend=backend, dtype="float64", seed=3)
    A0 = rng.normal(size=(6, 50))
    Y = np.eye(4)[:, rng.integers(0, 4, 50)]
    whole = a.forward_backward(backend.asarray(A0), backend.asarray(Y))
    micro = gpudnn.train.accumulate_gradients(b, backend.asarray(A0), backend.asarray(Y), k)
    assert micro == pytest.approx(whole, rel=1e-12)
    np.testing.assert_allclose(backend.to_numpy(b.grads), backend.to_numpy(a.grads), rtol=1e-12, atol=1e-12)
    assert b._ws.capacity == -(-50 // min(k, 50))  # the workspace of one micro-batch


def test_fit_with_micro_batches_trains_the_same(rng):
    X, y = rng.normal(size=(64, 5)), rng.integers(0, 3, 64)
    runs = []
    for k in (1, 4):
        net = gpudnn.Network([5, 12, 3], backend="numpy", dtype="float64", seed=5)
        h = net.fit(X, y, epochs=3, batch_size=32, micro_batches=k, verbose=0,
                    optimizer=gpudnn.optim.Adam(lr=0.01))
        runs.append((net.params.copy(), h["loss"], h["accuracy"]))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-10, atol=1e-12)
    assert runs[0][1] == pytest.approx(runs[1][1], rel=1e-12) and runs[0][2] == runs[1][2]


def test_dropout_training_is_reproducible_and_inference_deterministic(digits):
    Xtr, Xte, ytr, yte = digits
    runs = []
    for _ in range(2):
        net = gpudnn.Network([64, 64, 10], backend="numpy", dropout=0.3, seed=7)
        net.fit(Xtr, ytr, epochs=5, batch_size=32, optimizer=gpudnn.optim.Adam(lr=3e-3),
                verbose=0, standardize=True)
        runs.append(net.params.copy())
    np.testing.assert_array_equal(*runs)
    assert net.evaluate(Xte, yte) == net.evaluate(Xte, yte)
    assert net.evaluate(Xte, yte)["accuracy"] > 0.9


class PoisonAfter(gpudnn.optim.SGD):
    """SGD that writes NaN into one weight after its step number ``t``. (It wraps ``step``,
    not the generic ``_update``: on CuPy the fused update runs instead, and a poisoned
    ``_update`` never fired there — found by the first GPU run.)"""

    def __init__(self, t):
        super().__init__(lr=0.01)
        self.poison_at, self.calls = t, 0

    def step(self, params, grads, xp, *args, **kw):
        super().step(params, grads, xp, *args, **kw)
        self.calls += 1
        if self.calls == self.poison_at:
            params[0] = xp.nan


@pytest.mark.parametrize("t,where", [(23, "step 24 (epoch 3, batch 4 of 10)"),
                                     (9, "step 10 (epoch 1, batch 10 of 10)"),
                                     (10, "step 11 (epoch 2, batch 1 of 10)")])
def test_nan_mid_run_names_the_step(backend, rng, t, where):
    """Losses stay on the device, checked once per epoch; the failing epoch is then
    searched for the first bad batch, so the message names the step, not just the epoch."""
    X = rng.normal(size=(100, 4))
    y = rng.integers(0, 3, 100)
    net = gpudnn.Network([4, 8, 3], backend=backend, seed=0)
    with pytest.raises(TrainingError, match=re.escape(f"loss became nan at {where}")) as err:
        with np.errstate(invalid="ignore"):
            net.fit(X, y, epochs=5, batch_size=10, optimizer=PoisonAfter(t), verbose=0)
    assert "the weights are NaN or infinite now" in str(err.value)
    assert net.history is None  # no history of a failed run


def test_history_loss_is_the_mean_of_the_batch_losses(rng):
    """The per-step loss buffer adds up to what the batches gave (float64 on the device)."""
    X = rng.normal(size=(30, 3))
    y = rng.integers(0, 2, 30)
    a = gpudnn.Network([3, 4, 2], backend="numpy", dtype="float64", seed=2)
    b = gpudnn.Network([3, 4, 2], backend="numpy", dtype="float64", seed=2)
    h = a.fit(X, y, epochs=1, batch_size=7, shuffle=False, optimizer=gpudnn.optim.SGD(lr=0.1), verbose=0)
    opt, total = gpudnn.optim.SGD(lr=0.1), 0.0
    for s in range(0, 30, 7):
        total += b.train_step(X[s : s + 7].T, np.eye(2)[y[s : s + 7]].T, opt) * len(X[s : s + 7])
    assert h["loss"][0] == pytest.approx(total / 30, rel=1e-13)


def test_labels_and_features_checked_against_the_trained_model(rng):
    X = rng.normal(size=(40, 4))
    y = np.array(["cat", "dog"])[rng.integers(0, 2, 40)]
    net = gpudnn.Network([4, 2], backend="numpy")
    with pytest.raises(DataError, match="validation y: label 'emu' at row 1 was not seen in training"):
        net.fit(X, y, epochs=1, verbose=0, validation_data=(X[:2], np.array(["cat", "emu"])))
    net.fit(X, y, epochs=1, verbose=0)
    with pytest.raises(DataError, match="X: has 5 features per sample but the model expects 4"):
        net.predict(np.ones((2, 5)))
    with pytest.raises(DataError, match=r"label 0 at row 0 was not seen in training \(classes: \['cat', 'dog'\]\)"):
        net.evaluate(X[:3], np.array([0, 1, 0]))
    wide = gpudnn.Network([4, 50], backend="numpy")
    wide.fit(X, np.arange(40) % 50, epochs=1, verbose=0)
    with pytest.raises(DataError, match=r"label 99 at row 0 was not seen in training \(50 classes: 0, 1, .*, 9, \.\.\.\)"):
        wide.evaluate(X[:1], np.array([99]))
    with pytest.raises(DataError, match=r"single class \('cat'\); a classifier needs 2\+"):
        gpudnn.Network([4, 2], backend="numpy").fit(X, np.full(40, "cat"), epochs=1, verbose=0)


def test_a_refused_fit_leaves_the_network_as_it_was(rng):
    X = rng.normal(size=(30, 4))
    y = np.array(["cat", "dog", "emu"])[np.arange(30) % 3]
    net = gpudnn.Network([4, 3], backend="numpy")
    with pytest.raises(DataError, match="not seen in training"):
        net.fit(X, y, validation_data=(X[:3], np.array(["gnu"] * 3)), standardize=True, verbose=0)
    assert net.classes_ is None and net.scaler is None
    y3 = np.array(["cat", "dog", "gnu"])[np.arange(30) % 3]
    net.fit(X, y3, epochs=1, verbose=0)  # the classes were not fixed by the refused fit
    assert list(net.classes_) == ["cat", "dog", "gnu"]


@pytest.mark.parametrize("optimizer", ["adam", gpudnn.optim.SGD])
def test_fit_refuses_what_is_not_an_optimizer(optimizer):
    with pytest.raises(ConfigError, match="optimizer must be"):
        gpudnn.Network([4, 3], backend="numpy").fit(np.ones((6, 4)), np.arange(6) % 3, optimizer=optimizer)


def test_one_callback_need_not_be_in_a_list(rng):
    from gpudnn.callbacks import LambdaCallback

    seen = []
    cb = LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))
    gpudnn.Network([4, 3], backend="numpy").fit(rng.normal(size=(9, 4)), np.arange(9) % 3,
                                               epochs=2, callbacks=cb, verbose=0)
    assert seen == [0, 1]


def test_divergence_still_ends_the_callbacks(rng):
    """A NaN stops the run, and EarlyStopping still puts its best weights back."""
    from gpudnn.callbacks import EarlyStopping, LambdaCallback

    X = rng.normal(size=(64, 4))
    y = rng.normal(size=64)
    net = gpudnn.Network([4, 16, 1], output="identity", backend="numpy", dtype="float64")
    es = EarlyStopping(monitor="loss", patience=100, restore_best_weights=True)

    def poison(epoch, logs):  # after EarlyStopping has kept epoch 2's weights
        if epoch == 1:
            net.params[3] = np.nan

    with pytest.raises(TrainingError, match="epoch 3"):
        net.fit(X, y, epochs=5, callbacks=[es, LambdaCallback(on_epoch_end=poison)], verbose=0)
    assert es.best_epoch == 1 and np.all(np.isfinite(net.params))


def test_fit_gathers_batches_without_copies():
    """The fit loop's batch gathering allocates no (n, B) array (np.take buffers unless told)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    X = rng.normal(size=(8192, 256)).astype(np.float32)
    y = rng.integers(0, 10, 8192)
    net = gpudnn.Network([256, 64, 10], backend="numpy")
    net.fit(X[:4096], y[:4096], epochs=1, batch_size=4096, verbose=0)  # buffers exist now
    tracemalloc.start()
    net.fit(X[:4096], y[:4096], epochs=1, batch_size=4096, verbose=0, shuffle=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    one_batch = 256 * 4096 * 4  # 4 MiB: a copy of the gathered inputs would show
    # what fit itself holds: the data as columns on the device (a copy of X, 4 MiB) and Y
    assert peak < one_batch * 1.6, f"fit allocated {peak} bytes"


def test_standardised_targets_train_a_regression_in_any_units(rng):
    """Targets around 50000 (prices): trained raw they diverge at an lr that suits
    standardised ones; with standardize_targets the network learns z = (y − mean) / std,
    predict answers in the targets' units, evaluate in the standardised ones."""
    X = rng.normal(size=(300, 3))
    y = 50000.0 + 3700.0 * (X @ [0.5, 0.3, 0.2]) + rng.normal(size=300) * 100.0
    opt = lambda: gpudnn.optim.SGD(lr=0.01, momentum=0.9)  # noqa: E731
    raw = gpudnn.Network([3, 32, 1], output="identity", backend="numpy", dtype="float64")
    with pytest.raises(TrainingError, match="scale the targets"):
        raw.fit(X, y, epochs=5, optimizer=opt(), verbose=0)
    net = gpudnn.Network([3, 32, 1], output="identity", backend="numpy", dtype="float64")
    net.fit(X, y, epochs=30, optimizer=opt(), verbose=0, standardize_targets=True)
    s = net.target_scaler
    assert s.mean == pytest.approx([y.mean()], rel=1e-12) and s.scale == pytest.approx([y.std()], rel=1e-12)
    pred = net.predict(X)
    assert pred.shape == (300,) and np.sqrt(np.mean((pred - y) ** 2)) < 0.1 * y.std()
    import gpudnn.train as training

    z = training.predict_outputs(net, X)[:, 0]  # the network's own output: standardised
    np.testing.assert_allclose(pred, z * y.std() + y.mean(), rtol=1e-12)
    assert net.evaluate(X, y)["loss"] == pytest.approx(0.5 * np.mean(((y - y.mean()) / y.std() - z) ** 2), rel=1e-9)
    for bad in (gpudnn.Network([3, 4, 2], backend="numpy"),
                gpudnn.Network([3, 4, 1], output="sigmoid", loss="mse", backend="numpy")):
        with pytest.raises(ConfigError, match="standardize_targets is for regression"):
            bad.fit(X, (y > y.mean()).astype(int), verbose=0, standardize_targets=True)


@pytest.mark.parametrize("kw", [{}, dict(micro_batches=2, validation_split=0.2)])
def test_two_fits_of_one_epoch_train_as_one_fit_of_two(rng, kw):
    """The shuffling generator lives with the network: a second fit reshuffles on from where
    the first stopped (each call used to start again from the seed, so fit(epochs=1) in a
    loop, or partial_fit, saw one order for ever)."""
    X, y = rng.normal(size=(40, 4)), rng.integers(0, 3, 40)
    once, twice = (gpudnn.Network([4, 6, 3], backend="numpy", dtype="float64", seed=2) for _ in range(2))
    opt_once, opt_twice = (gpudnn.optim.SGD(lr=0.1, momentum=0.9) for _ in range(2))
    once.fit(X, y, epochs=2, batch_size=8, optimizer=opt_once, verbose=0, **kw)
    orders = []
    for _ in range(2):
        state = twice._shuffle_rng.bit_generator.state if twice._shuffle_rng is not None else None
        orders.append(state)
        twice.fit(X, y, epochs=1, batch_size=8, optimizer=opt_twice, verbose=0, **kw)
    np.testing.assert_array_equal(twice.params, once.params)
    assert orders[0] is None and orders[1] != twice._shuffle_rng.bit_generator.state


def test_a_regressions_validation_split_holds_out_its_fraction(rng, monkeypatch):
    """Whole-number regression targets (prices read from a CSV come back as int64) are values:
    fit's validation_split holds out 20 % of them, not the few values seen twice."""
    X = rng.normal(size=(1000, 3))
    y = (50000 + 20000 * X[:, 0] + rng.normal(size=1000) * 1000).round().astype(int)
    import gpudnn.train as training

    seen = []
    score = training._score
    monkeypatch.setattr(training, "_score", lambda net, X, T, *a: (seen.append(len(X)), score(net, X, T, *a))[1])
    net = gpudnn.Network([3, 16, 1], output="identity", seed=0, backend="numpy")
    net.fit(X, y, epochs=1, validation_split=0.2, standardize_targets=True, verbose=0)
    assert seen == [200]
