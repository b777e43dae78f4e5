"""gpudnn.sklearn: scikit-learn's own estimator checks, and the estimators at work."""

import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator, parametrize_with_checks  # noqa: E402

import gpudnn  # noqa: E402
from gpudnn.data import train_test_split  # noqa: E402
from gpudnn.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# scikit-learn tests its own MLPs with max_iter=100; the same here, and more settings below
ESTIMATORS = [MLPClassifier(max_iter=100), MLPRegressor(max_iter=100)]


@parametrize_with_checks(ESTIMATORS)
def test_every_sklearn_check(estimator, check):
    """Each of scikit-learn's estimator checks as its own test (readable failures)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@pytest.mark.parametrize(
    "estimator",
    ESTIMATORS + [
        MLPClassifier(max_iter=50, early_stopping=True, dropout=0.1),
        MLPRegressor(max_iter=50, early_stopping=True, solver="lamb", learning_rate_init=0.01),
        MLPClassifier(max_iter=50, solver="sgd", learning_rate="adaptive", learning_rate_init=0.05,
                      early_stopping=True),
        MLPRegressor(max_iter=50, solver="rmsprop", learning_rate_init=0.003),
    ],
    ids=lambda e: repr(e).replace(" ", ""),
)
def test_check_estimator_passes_in_full(estimator):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_estimator(estimator)  # raises at the first failing check


@pytest.fixture(scope="module")
def digits():
    X, y = gpudnn.load_digits()
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, seed=0)
    scaler = StandardScaler().fit(Xtr)
    return scaler.transform(Xtr), scaler.transform(Xte), ytr, yte


@pytest.mark.parametrize("solver", ["adam", "sgd", "adamw", "rmsprop", "lars", "lamb"])
def test_classifier_learns_the_digits(digits, solver):
    Xtr, Xte, ytr, yte = digits
    lr = {"sgd": 0.05, "lars": 1.0}.get(solver, 3e-3)
    clf = MLPClassifier(hidden_layer_sizes=(64,), solver=solver, learning_rate_init=lr, max_iter=30,
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(Xtr, ytr)
    assert clf.score(Xte, yte) > 0.93
    assert clf.n_iter_ == len(clf.loss_curve_) and clf.loss_ == clf.loss_curve_[-1]
    assert [W.shape for W in clf.coefs_] == [(64, 64), (64, 10)]
    assert [b.shape for b in clf.intercepts_] == [(64,), (10,)]
    assert clf.n_layers_ == 3 and clf.n_outputs_ == 10 and clf.out_activation_ == "softmax"
    np.testing.assert_allclose(clf.predict_proba(Xte[:5]).sum(axis=1), 1.0)
    assert clf.t_ == clf.n_iter_ * len(Xtr)


def test_string_labels_and_binary_output(rng):
    X = rng.normal(size=(200, 3))
    y = np.where(X[:, 0] - X[:, 1] > 0, "spam", "ham")
    clf = MLPClassifier(hidden_layer_sizes=(8,), learning_rate_init=0.01, max_iter=200, random_state=0).fit(X, y)
    assert list(clf.classes_) == ["ham", "spam"] and clf.out_activation_ == "logistic"
    assert clf.score(X, y) > 0.95 and clf.predict_proba(X).shape == (200, 2)


def test_early_stopping_keeps_the_best_validation_score(digits):
    Xtr, _, ytr, _ = digits
    clf = MLPClassifier(hidden_layer_sizes=(32,), early_stopping=True, n_iter_no_change=3,
                        learning_rate_init=0.01, max_iter=200, random_state=1).fit(Xtr, ytr)
    assert clf.n_iter_ < 200 and len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_) and clf.best_loss_ is None
    best = int(np.argmax(clf.validation_scores_))
    assert clf.n_iter_ - 1 - best >= 3  # it waited n_iter_no_change + 1 epochs after the best


def test_stopping_on_the_training_loss(rng):
    X = rng.normal(size=(100, 2))
    y = (X[:, 0] > 0).astype(int)
    clf = MLPClassifier(hidden_layer_sizes=(8,), tol=10.0, n_iter_no_change=2, random_state=0).fit(X, y)
    assert clf.n_iter_ == 4  # the first epoch sets the best; 3 = n_iter_no_change + 1 without


def test_partial_fit_and_warm_start(digits):
    Xtr, Xte, ytr, yte = digits
    clf = MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.01, random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(Xtr[:50], ytr[:50])
    clf.partial_fit(Xtr[:100], ytr[:100], classes=np.arange(10))
    chunks = [slice(start, start + 300) for start in range(100, len(Xtr), 300)] * 3
    for chunk in chunks:
        clf.partial_fit(Xtr[chunk], ytr[chunk])
    assert clf.n_iter_ == 1 and clf.t_ == 100 + 3 * (len(Xtr) - 100) and clf.score(Xte, yte) > 0.9
    with pytest.raises(ValueError, match="classes not in"):
        clf.partial_fit(Xtr[:5], ytr[:5] + 100)
    warm = MLPClassifier(hidden_layer_sizes=(32,), max_iter=5, warm_start=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warm.fit(Xtr, ytr)
        first = warm.loss_curve_[-1]
        warm.fit(Xtr, ytr)
    assert warm.n_iter_ == 5 and len(warm.loss_curve_) == 10 and warm.loss_curve_[-1] < first


def test_regressor_fits_a_smooth_function_and_several_outputs(rng):
    X = rng.uniform(-1, 1, size=(400, 2))
    y = np.sin(2 * X[:, 0]) + X[:, 1] ** 2
    reg = MLPRegressor(hidden_layer_sizes=(32,), activation="tanh", learning_rate_init=0.01, max_iter=300,
                       random_state=0).fit(X, y)
    assert reg.score(X, y) > 0.95 and reg.predict(X).shape == (400,)
    multi = MLPRegressor(hidden_layer_sizes=(16,), max_iter=20, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        multi.fit(X, np.column_stack([y, -y]))
    assert multi.predict(X).shape == (400, 2) and multi.predict(X).dtype == np.float64


def test_pipelines_cross_validation_and_pickle(digits):
    Xtr, Xte, ytr, yte = digits
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), max_iter=30,
                                                         learning_rate_init=3e-3, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(pipe, Xtr, ytr, cv=3)
        pipe.fit(Xtr, ytr)
    assert scores.min() > 0.9
    again = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_array_equal(again.predict_proba(Xte), pipe.predict_proba(Xte))


@pytest.mark.parametrize(
    "params,match",
    [(dict(solver="lbfgs"), "no lbfgs"), (dict(activation="softmax"), "activation"),
     (dict(hidden_layer_sizes=(10, 0)), "hidden_layer_sizes"), (dict(max_iter=0), "max_iter"),
     (dict(batch_size=0), "batch_size"), (dict(early_stopping=True, validation_fraction=1.0),
                                          "validation_fraction"), (dict(dropout=1.0), "dropout")],
)
def test_bad_parameters_raise_value_errors_in_fit(params, match):
    with pytest.raises(ValueError, match=match):
        MLPClassifier(**params).fit(np.ones((4, 2)), [0, 1, 0, 1])


@pytest.fixture(scope="module")
def digits16():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_a_copy_of_a_fitted_estimator_trains_on_exactly_as_the_original(digits16, Estimator, solver, how):
    import copy

    X, y = digits16
    est = Estimator(hidden_layer_sizes=(16,), solver=solver, max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    again = pickle.loads(pickle.dumps(est)) if how == "pickle" else copy.deepcopy(est)
    for _ in range(2):
        again.partial_fit(X, y)
        est.partial_fit(X, y)
    for a, b in zip(again.coefs_ + again.intercepts_, est.coefs_ + est.intercepts_):
        np.testing.assert_array_equal(a, b)
    assert again._optimizer.t == est._optimizer.t


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_sparse_input_is_taken_as_its_dense_rows(digits16, fmt):
    import scipy.sparse as sp

    X, y = digits16
    Xs = sp.coo_matrix(X[:300]).asformat(fmt)
    for Estimator in (MLPClassifier, MLPRegressor):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            dense = Estimator(hidden_layer_sizes=(16,), max_iter=3, random_state=0).fit(X[:300], y[:300])
            sparse = Estimator(hidden_layer_sizes=(16,), max_iter=3, random_state=0).fit(Xs, y[:300])
        for a, b in zip(sparse.coefs_, dense.coefs_):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(sparse.predict(Xs), dense.predict(X[:300]))
        sparse.partial_fit(Xs, y[:300])
        dense.partial_fit(X[:300], y[:300])
        np.testing.assert_array_equal(sparse.predict(X[:300]), dense.predict(X[:300]))


@pytest.mark.parametrize("name", ["alpha", "tol", "power_t"])
@pytest.mark.parametrize("value", [np.float32(1e-4), np.float64(1e-4), np.int64(0), 0, 1e-4])
def test_real_parameters_take_numpy_scalars(name, value):
    MLPClassifier(max_iter=2, **{name: value}).fit(np.ones((4, 2)), [0, 1, 0, 1])


@pytest.mark.parametrize(
    "params",
    [dict(alpha=True), dict(tol=-1.0), dict(power_t=float("nan")), dict(alpha="0.1"),
     dict(validation_fraction=1.5), dict(validation_fraction=-0.1), dict(validation_fraction=1.0),
     dict(early_stopping=True, validation_fraction=0.0)],
)
def test_real_parameters_out_of_range_raise(params):
    with pytest.raises(ValueError, match=next(iter(params)) if "early_stopping" not in params
                       else "validation_fraction"):
        MLPClassifier(max_iter=2, **params).fit(np.ones((4, 2)), [0, 1, 0, 1])


@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_partial_fit_refuses_early_stopping(Estimator):
    est = Estimator(early_stopping=True)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping=True"):
        est.partial_fit(np.ones((4, 2)), [0, 1, 0, 1], **({"classes": [0, 1]} if Estimator is MLPClassifier else {}))
    assert not hasattr(est, "partial_fit") and hasattr(Estimator(), "partial_fit")


def test_n_iter_counts_the_epochs_of_the_latest_call(digits16):
    X, y = digits16
    clf = MLPClassifier(hidden_layer_sizes=(16,), random_state=0)
    clf.partial_fit(X, y, classes=np.arange(10))
    clf.partial_fit(X, y)
    assert clf.n_iter_ == 1 and clf.t_ == 2 * len(X) and len(clf.loss_curve_) == 2
    warm = MLPRegressor(hidden_layer_sizes=(16,), max_iter=5, warm_start=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warm.fit(X, y)
        warm.fit(X, y)
    assert warm.n_iter_ == 5 and warm.t_ == 10 * len(X) and len(warm.loss_curve_) == 10


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_outputs_come_in_the_dtype_of_X(digits16, dtype):
    X, y = digits16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=2, random_state=0, dtype=dtype).fit(X, y)
        binary = MLPClassifier(hidden_layer_sizes=(16,), max_iter=2, random_state=0, dtype=dtype).fit(X, y % 2)
        reg = MLPRegressor(hidden_layer_sizes=(16,), max_iter=2, random_state=0, dtype=dtype).fit(X, y)
    for Xp in (X.astype(np.float32), X):
        assert clf.predict_proba(Xp).dtype == Xp.dtype and binary.predict_proba(Xp).dtype == Xp.dtype
        assert clf.predict_log_proba(Xp).dtype == Xp.dtype and reg.predict(Xp).dtype == Xp.dtype
    np.testing.assert_allclose(clf.predict_proba(X.astype(np.float32)), clf.predict_proba(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_estimators_on_each_backend(digits16, backend, Estimator):
    """backend="cupy" trains on the GPU; what the estimator hands out (coefs_, intercepts_,
    predictions, its pickle) is NumPy's, and a pickled copy continues exactly as the original."""
    X, y = digits16
    X, y = X[:400], y[:400]
    est = Estimator(hidden_layer_sizes=(16,), max_iter=3, random_state=0, backend=backend.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    assert est._net.backend.name == backend.name
    assert all(type(a) is np.ndarray for a in est.coefs_ + est.intercepts_)
    assert type(est.predict(X)) is np.ndarray
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict(X), est.predict(X))
    again.partial_fit(X, y)
    est.partial_fit(X, y)
    for a, b in zip(again.coefs_ + again.intercepts_, est.coefs_ + est.intercepts_):
        np.testing.assert_array_equal(a, b)
