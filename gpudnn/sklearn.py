"""scikit-learn estimators on gpudnn's engine: :class:`MLPClassifier` and :class:`MLPRegressor`.

They take the parameters of ``sklearn.neural_network``'s estimators of the same names
(hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate,
learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose, warm_start,
momentum, nesterovs_momentum, early_stopping, validation_fraction, beta_1, beta_2, epsilon,
n_iter_no_change), set the same fitted attributes (classes_, loss_, best_loss_,
loss_curve_, validation_scores_, best_validation_score_, t_, coefs_, intercepts_, n_iter_,
n_layers_, n_outputs_, out_activation_, n_features_in_, feature_names_in_) and have
``partial_fit``; and they add ``backend`` ("auto": a CUDA GPU through CuPy when there is
one), ``dtype`` and ``dropout``, and the solvers "adamw", "rmsprop", "lars" and "lamb".
They pass scikit-learn's ``check_estimator``.

Letters: N samples, F features, K outputs. X: (N, F); y: (N,) labels or targets, (N, K)
for multi-label classification or multi-output regression.

Where they differ from scikit-learn's: no "lbfgs" solver and no sample_weight; sparse X
(scipy.sparse) is densified, whole for fitting, 4096 rows at a time for prediction; the weights
start from Glorot-uniform draws of gpudnn (not scikit-learn's); ``alpha`` is applied as
weight decay α / batch_size on every parameter, biases included (scikit-learn adds
α/2 ‖W‖² / batch_size to the loss, weights only; it is the decoupled coefficient for
"adamw" and "lamb"), and ``loss_curve_`` holds the data loss without that penalty;
"invscaling" decays with the samples seen per step, not per epoch; stopping on ``tol``
counts an epoch as an improvement only when it beats the best by more than tol (Keras's
rule). As in scikit-learn 1.9, ``n_iter_`` is the epochs of the latest fit/partial_fit
call (``t_`` and ``loss_curve_`` run on across calls), and partial_fit refuses
early_stopping=True (a ValueError; ``hasattr(est, "partial_fit")`` is then False too, so
scikit-learn's checks skip it). Needs scikit-learn >= 1.6 (the ``sklearn`` extra); ``import gpudnn`` does not
import this module.
"""

from __future__ import annotations

import functools
import numbers
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from . import optim
from .callbacks import EarlyStopping, LambdaCallback
from .network import Network
from .schedules import ReduceLROnPlateau, Schedule

# scikit-learn's activation names -> gpudnn's (gpudnn's own names are accepted too)
ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
               "sigmoid": "sigmoid", "leaky_relu": "leaky_relu"}
SOLVERS = ("sgd", "adam", "adamw", "rmsprop", "lars", "lamb")
LEARNING_RATES = ("constant", "invscaling", "adaptive")
SPARSE = ("csr", "csc", "coo")  # scipy.sparse X is accepted (and densified; csr rows for prediction)
OUTPUT_NAMES = {"softmax": "softmax", "sigmoid": "logistic", "identity": "identity"}


class _InverseScaling(Schedule):
    """η(t) = lr / (1 + t·B)^power_t: scikit-learn's "invscaling", t·B the samples seen."""

    fields = ("lr", "batch_size", "power_t")

    def __init__(self, lr, batch_size, power_t):
        self.lr, self.batch_size, self.power_t = lr, batch_size, power_t

    def __call__(self, t):
        return self.lr / (1.0 + t * self.batch_size) ** self.power_t


class _NoPartialFit(AttributeError, ValueError):
    """partial_fit asked of an estimator with early_stopping=True: scikit-learn's ValueError,
    and an AttributeError so that ``hasattr(est, "partial_fit")`` is False for it (what
    scikit-learn's own checks, and incremental-learning code, look at)."""


class _unless_early_stopping:
    """A method decorator: the method is there only while ``early_stopping`` is False."""

    def __init__(self, fn):
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __get__(self, obj, owner=None):
        if obj is not None and obj.early_stopping:
            raise _NoPartialFit("partial_fit does not support early_stopping=True")
        return self.fn.__get__(obj, owner)


class _BaseMLP(BaseEstimator):
    """What the classifier and the regressor share: parameters, the network, training."""

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        dropout=0.0,
        backend="auto",
        dtype="float64",
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dropout = dropout
        self.backend = backend
        self.dtype = dtype

    # --- checks -------------------------------------------------------------------------
    def _check_params(self):
        """ValueError for a parameter outside its domain (scikit-learn checks them in fit)."""
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if np.ndim(sizes) == 0 else list(sizes)
        if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}")
        choices = dict(activation=ACTIVATIONS, solver=SOLVERS, learning_rate=LEARNING_RATES)
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}"
                                 + ("; gpudnn has no lbfgs" if getattr(self, name) == "lbfgs" else ""))
        positive_ints = dict(max_iter=self.max_iter, n_iter_no_change=self.n_iter_no_change)
        for name, v in positive_ints.items():
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        bs = self.batch_size
        if bs != "auto" and (isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1):
            raise ValueError(f"batch_size must be 'auto' or a positive integer, got {bs!r}")
        for name in ("alpha", "tol", "power_t"):  # any real number (NumPy's too), not a bool
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        vf = self.validation_fraction  # scikit-learn checks it whether or not early_stopping
        if isinstance(vf, bool) or not isinstance(vf, numbers.Real) or not 0 <= vf < 1:
            raise ValueError(f"validation_fraction must be a number in [0, 1), got {vf!r}")
        if self.early_stopping and not vf > 0:
            raise ValueError(f"validation_fraction must be in (0, 1) with early_stopping, got {vf!r}")
        return tuple(int(n) for n in sizes)

    def _validate_input(self, X, y, reset):
        X, y = validate_data(self, X, y, multi_output=True, dtype=(np.float64, np.float32),
                             y_numeric=not is_classifier(self), reset=reset, accept_sparse=SPARSE)
        if sp.issparse(X):  # the network trains on dense rows: densified whole
            X = X.toarray()
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    # --- the network and the optimizer --------------------------------------------------
    def _initialize(self, hidden, n_features, n_outputs, output):
        self._seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        self._net = Network(
            [n_features, *hidden, n_outputs],
            activation=ACTIVATIONS[self.activation],
            output=output,
            init="glorot_uniform",
            dtype=self.dtype,
            backend=self.backend,
            seed=self._seed,
            dropout=self.dropout,
        )
        self._net.classes_ = np.arange(max(n_outputs, 2))  # targets are given as codes
        self._optimizer = None
        self.n_outputs_ = n_outputs
        self.n_layers_ = len(hidden) + 2
        self.out_activation_ = OUTPUT_NAMES[output]
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_curve_ = []
        self.best_loss_ = np.inf
        self.validation_scores_ = [] if self.early_stopping else None
        self.best_validation_score_ = -np.inf if self.early_stopping else None

    def _make_optimizer(self, batch_size):
        lr = float(self.learning_rate_init)
        l2 = self.alpha / batch_size  # scikit-learn's α/2 ‖W‖² / B penalty as weight decay
        betas = (self.beta_1, self.beta_2)
        if self.solver == "sgd":
            if self.learning_rate == "invscaling":
                lr = _InverseScaling(lr, batch_size, self.power_t)
            elif self.learning_rate == "adaptive":
                lr = ReduceLROnPlateau(lr, monitor=("val_score", "loss"), factor=0.2, min_delta=self.tol,
                                       patience=self.n_iter_no_change + 1)
            nesterov = bool(self.nesterovs_momentum) and self.momentum > 0
            return optim.SGD(lr=lr, momentum=self.momentum, nesterov=nesterov, weight_decay=l2)
        if self.solver == "adam":
            return optim.Adam(lr=lr, betas=betas, eps=self.epsilon, weight_decay=l2)
        if self.solver == "adamw":
            return optim.AdamW(lr=lr, betas=betas, eps=self.epsilon, weight_decay=self.alpha)
        if self.solver == "lamb":
            return optim.LAMB(lr=lr, betas=betas, eps=self.epsilon, weight_decay=self.alpha)
        if self.solver == "rmsprop":
            return optim.RMSprop(lr=lr, eps=self.epsilon, weight_decay=l2)
        return optim.LARS(lr=lr, momentum=self.momentum, weight_decay=l2)

    def _validation_split(self, X, targets, y):
        """(X, X_val, targets, y_val): validation_fraction of the rows held out, stratified
        by class where every class can have a row on both sides."""
        split = dict(test_size=self.validation_fraction, random_state=self.random_state)
        if is_classifier(self) and type_of_target(y) in ("binary", "multiclass"):
            try:
                X, X_val, targets, _, _, y_val = train_test_split(X, targets, y, stratify=y, **split)
                return X, X_val, targets, y_val
            except ValueError:  # too few rows of some class: an unstratified split
                pass
        X, X_val, targets, _, _, y_val = train_test_split(X, targets, y, **split)
        return X, X_val, targets, y_val

    def _stopping(self, X_val, y_val):
        """The callbacks of scikit-learn's stopping rules (none for partial_fit)."""
        callbacks = []
        if X_val is not None:  # early_stopping: the validation score after every epoch
            callbacks.append(LambdaCallback(
                on_epoch_end=lambda epoch, logs: logs.update(val_score=self.score(X_val, y_val))))
        patience = self.n_iter_no_change + 1  # scikit-learn stops after n_iter_no_change + 1
        if self.solver == "sgd" and self.learning_rate == "adaptive":
            # the lr is divided by 5 on a plateau (the schedule); stop once it is tiny
            callbacks.append(LambdaCallback(on_epoch_end=lambda epoch, logs: logs["lr"] <= 1e-6))
            patience = self.max_iter + 1  # the EarlyStopping below then only keeps the best
        monitor = "val_score" if X_val is not None else "loss"
        callbacks.append(EarlyStopping(monitor=monitor, patience=patience, min_delta=self.tol,
                                       restore_best_weights=X_val is not None))
        return callbacks

    # --- training -------------------------------------------------------------------------
    def _fit(self, X, y, *, incremental, classes=None):
        hidden = self._check_params()
        if incremental and self.early_stopping:  # (no validation split of one partial epoch)
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not hasattr(self, "_net") or not (self.warm_start or incremental)
        X, y = self._validate_input(X, y, reset=first)
        targets, output = self._targets(y, first=first, classes=classes)
        X_val = y_val = None
        if self.early_stopping and not incremental:
            X, X_val, targets, y_val = self._validation_split(X, targets, y)
        n = X.shape[0]
        if first:
            n_outputs = targets.shape[1] if targets.ndim == 2 else (
                len(self.classes_) if output == "softmax" else 1)
            self._initialize(hidden, X.shape[1], n_outputs, output)
        batch_size = min(200, n) if self.batch_size == "auto" else self.batch_size
        if batch_size > n:
            warnings.warn("Got `batch_size` larger than sample size. It is going to be clipped")
            batch_size = n
        if not incremental or self._optimizer is None:
            self._optimizer = self._make_optimizer(batch_size)
        stopping = [] if incremental else self._stopping(X_val, y_val)
        history = self._net.fit(
            X, targets, epochs=1 if incremental else self.max_iter, batch_size=batch_size,
            optimizer=self._optimizer, shuffle=self.shuffle, callbacks=stopping,
            verbose=2 if self.verbose else 0,
        )
        epochs = len(history["loss"])
        self.n_iter_ = epochs  # the epochs of this call (scikit-learn's); t_ counts them all
        self.t_ += epochs * n
        self.loss_curve_ += history["loss"]
        self.loss_ = self.loss_curve_[-1]
        if self.early_stopping and "val_score" in history:
            self.validation_scores_ += history["val_score"]
            self.best_validation_score_ = max(self.validation_scores_)
            self.best_loss_ = None
        else:
            self.best_loss_ = min(history["loss"] + [np.inf if self.best_loss_ is None else self.best_loss_])
        if not incremental and stopping[-1].stopped_epoch is None and epochs == self.max_iter:
            warnings.warn(
                f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                "optimization hasn't converged yet.", ConvergenceWarning)
        return self

    def fit(self, X, y):
        """Fit the model to X: (N, F) and y: (N,) or (N, K). Returns self."""
        return self._fit(X, y, incremental=False)

    def _outputs(self, X):
        """a^L for X: (N, F) as rows (N, K) of X's dtype (float32 or float64, as scikit-learn's)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32), accept_sparse=SPARSE)
        if sp.issparse(X):  # densified a chunk of rows at a time
            X, chunk = X.tocsr(), 4096
            return np.concatenate([self._net.predict_proba(X[i:i + chunk].toarray()).astype(X.dtype)
                                   for i in range(0, X.shape[0], chunk)])
        return self._net.predict_proba(X).astype(X.dtype, copy=False)

    # --- the network's weights, as scikit-learn lays them out ---------------------------
    @property
    def coefs_(self):
        """Weight matrices (n_l, n_{l+1}) per layer: scikit-learn's layout, Wᵀ (copies)."""
        return [self._net.backend.to_numpy(W).T.copy() for W in self._net.W]

    @property
    def intercepts_(self):
        """Bias vectors (n_{l+1},) per layer (copies)."""
        return [self._net.backend.to_numpy(b).ravel().copy() for b in self._net.b]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    # --- pickling: the network is rebuilt from its config and parameters ----------------
    # The optimizer's state (step count, moment buffers) belongs to the network's parameter
    # buffer, which a copy does not share: it travels as a state_dict (NumPy buffers) beside
    # the optimizer bound to none (Optimizer.unbound), and is loaded back onto the rebuilt
    # network's buffer.

    def __getstate__(self):
        state = dict(super().__getstate__())
        net = state.pop("_net", None)
        if net is not None:
            shuffle = None if net._shuffle_rng is None else net._shuffle_rng.bit_generator.state
            state["_net_state"] = (net.config(), net.backend.to_numpy(net.params).copy(), shuffle)
        opt = state.get("_optimizer")
        if opt is not None and opt.state is not None:
            d = opt.state_dict()
            d["buffers"] = {k: np.array(net.backend.to_numpy(v), copy=True) for k, v in d["buffers"].items()}
            state["_optimizer"] = opt.unbound()
            state["_optimizer_state"] = d
        return state

    def __setstate__(self, state):
        state = dict(state)
        saved = state.pop("_net_state", None)
        opt_state = state.pop("_optimizer_state", None)
        super().__setstate__(state)
        if saved is not None:
            config, params, shuffle = saved if len(saved) == 3 else (*saved, None)
            self._net = Network(**config, backend=self.backend)
            self._net.params[...] = self._net.backend.asarray(params)
            if shuffle is not None:  # fit's sample orders go on where the original's were
                self._net._shuffle_rng = np.random.default_rng()
                self._net._shuffle_rng.bit_generator.state = shuffle
            self._net.classes_ = np.arange(max(self.n_outputs_, 2))
            if opt_state is not None and getattr(self, "_optimizer", None) is not None:
                self._optimizer.load_state_dict(opt_state, self._net.params, self._net.xp,
                                                self._net.segments)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier, scikit-learn's API on gpudnn's engine.

    Softmax and cross-entropy for several classes, a sigmoid unit and binary cross-entropy
    for two, sigmoid units for multi-label y (N, K) of 0/1. See the module docstring for
    the parameters; ``predict_proba`` gives (N, n_classes), or (N, K) for multi-label.
    """

    def _targets(self, y, *, first, classes=None):
        """(targets, output σ): class indices (N,) or 0/1 indicators (N, K) of y.

        On the first fit the classes are y's (or ``classes``, partial_fit's); later ones
        must use them: the same set for warm_start, a subset for partial_fit.
        """
        check_classification_targets(y)
        if first:
            multilabel = type_of_target(y).startswith("multilabel")
            self._label_binarizer = LabelBinarizer().fit(y if classes is None or multilabel else classes)
            self.classes_ = self._label_binarizer.classes_
        elif self.warm_start and classes is None and set(unique_labels(y)) != set(self.classes_):
            raise ValueError("warm_start can only be used where `y` has the same classes as in the "
                             f"previous call to fit. Previously got {self.classes_}, `y` has {unique_labels(y)}")
        elif len(np.setdiff1d(unique_labels(y), self.classes_)):
            raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                             f"{self.classes_}. 'y' has {unique_labels(y)}.")
        if len(self.classes_) < 2:
            raise ValueError("Classifier can't train when only one class is present.")
        if self._label_binarizer.y_type_.startswith("multilabel"):
            return self._label_binarizer.transform(y).astype(np.int64), "sigmoid"
        codes = np.searchsorted(self.classes_, column_or_1d(y))
        return codes, "softmax" if len(self.classes_) > 2 else "sigmoid"

    @_unless_early_stopping
    def partial_fit(self, X, y, classes=None):
        """One epoch over X: (N, F) and y; ``classes`` (every label there will be) is needed
        on the first call. Returns self."""
        if not hasattr(self, "_net") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if hasattr(self, "_net") and classes is not None and not np.array_equal(
                self.classes_, unique_labels(classes)):
            raise ValueError(f"`classes={classes!r}` is not the same as on last call to "
                             f"partial_fit, was: {self.classes_!r}")
        return self._fit(X, y, incremental=True, classes=classes)

    def predict(self, X):
        """Class labels (N,) for X: (N, F), or a 0/1 matrix (N, K) for multi-label."""
        out = self._outputs(X)
        return self._label_binarizer.inverse_transform(out[:, 0] if out.shape[1] == 1 else out)

    def predict_proba(self, X):
        """Class probabilities (N, n_classes) in the order of ``classes_``; (N, K) for
        multi-label (the probability of each label)."""
        out = self._outputs(X)
        if out.shape[1] == 1:
            return np.hstack([1.0 - out, out])
        return out

    def predict_log_proba(self, X):
        """log(predict_proba(X))."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor, scikit-learn's API on gpudnn's engine: identity
    output units and the squared error ½‖a − y‖² (its mean over each batch)."""

    def _targets(self, y, *, first, classes=None):
        return y.astype(np.float64), "identity"

    @_unless_early_stopping
    def partial_fit(self, X, y):
        """One epoch over X: (N, F), y: (N,) or (N, K)."""
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        """Predictions (N,) for one output, (N, K) for several, in X's dtype (float32 or float64)."""
        out = self._outputs(X)
        return out[:, 0] if self.n_outputs_ == 1 else out
