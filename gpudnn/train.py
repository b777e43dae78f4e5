"""The dataset-level loop: targets, batches, epochs, validation; predict and evaluate.

Letters: N samples, F = n_0 features, n_L outputs, B batch size. Users give rows,
X: (N, F) and y: (N,) labels or targets (or (N, n_L)). The training set is either moved
once to the network's device as columns, XT: (F, N) and YT: (n_L, N), each batch gathered
there, or kept in host memory with each batch gathered on the host and copied to the
device while the previous one trains (``data_on_device``; see :mod:`gpudnn.batches`).
Either way a batch lands in the network's preallocated (F, B) and (n_L, B) buffers:
nothing is allocated per batch.
"""

from __future__ import annotations

import math
import time

import numpy as np

from . import batches as _sources
from .callbacks import Callback, ProgressBar, check_monitors, stops
from .checks import fraction as _check_fraction
from .checks import positive as _positive_number
from .checks import positive_int as _positive_int
from .checkpoint import Checkpointer, Progress, fit_config
from .data import Standardizer, check_X, check_y, some_labels, train_test_split
from .distributed import SINGLE_PROCESS, distributable
from .errors import ConfigError, DataError, TrainingError, allocating
from .history import record_epoch
from .optim import SGD, Optimizer, clip_grad_norm


# --- targets --------------------------------------------------------------------------------
def _class_labels(y, n_out, source):
    """The sorted class labels of training labels y: (N,) for an output of n_out units."""
    if y.dtype.kind in "biu" and y.min() >= 0 and y.max() < max(n_out, 2):
        return np.arange(max(n_out, 2), dtype=y.dtype)  # labels 0..n_out-1, all kept
    classes = np.unique(y)
    if len(classes) > max(n_out, 2):
        raise DataError(
            f"{source}: has {len(classes)} classes but the output layer has {n_out} units"
        )
    if 2 <= len(classes) < n_out:  # a unit with no label: its predictions could not be named
        raise DataError(
            f"{source}: {len(classes)} classes but the output layer has {n_out} units "
            f"({some_labels(classes)}): give the network one output unit per class"
        )
    return classes


def _label_index(classes, y, source):
    """Index of each label of y: (N,) in ``classes``; DataError at the first unseen one."""
    try:
        idx = np.searchsorted(classes, y)
        idx = np.minimum(idx, len(classes) - 1)
        bad = classes[idx] != y
    except TypeError:  # e.g. string labels against integer classes
        raise DataError(
            f"{source}: labels of dtype {y.dtype} do not match the model's classes "
            f"({classes.dtype}: {classes[:5].tolist()}...)"
        ) from None
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}: label {y[i].item()!r} at row {i} was not seen in training "
            f"({some_labels(classes)})"
        )
    return idx


def encode_targets(net, y, *, fitting, source="y"):
    """Targets as rows T: (N, n_L) float64 for the network's loss.

    cross_entropy: y holds class labels, one-hot encoded. binary_cross_entropy: y (N,)
    holds two classes (n_L = 1) or y (N, n_L) holds 0/1 for each output (multi-label).
    mse: y (N,) for n_L = 1 or (N, n_L). When ``fitting`` and the network has no
    ``classes_`` yet, they are taken from y.
    """
    n_out = net.sizes[-1]
    N = y.shape[0]
    if net.loss == "cross_entropy" or (net.loss == "binary_cross_entropy" and y.ndim == 1):
        if y.ndim != 1:
            raise DataError(f"{source}: expected 1-D class labels of shape ({N},), got {y.shape}")
        if net.loss == "binary_cross_entropy" and n_out != 1:
            raise DataError(
                f"{source}: 1-D labels need a sigmoid output of 1 unit, the network has "
                f"{n_out}; give y as (N, {n_out}) 0/1 targets for multi-label"
            )
        if fitting and net.classes_ is None:
            classes = _class_labels(y, n_out, source)
            if len(np.unique(y)) < 2:
                raise DataError(f"{source}: has a single class ({y[0].item()!r}); a classifier needs 2+")
            net.classes_ = classes
        if net.classes_ is None:
            raise DataError("the model has no classes yet: call fit first")
        idx = _label_index(net.classes_, y, source)
        if net.loss == "binary_cross_entropy":
            return idx.astype(np.float64)[:, None]
        T = np.zeros((N, n_out))
        T[np.arange(N), idx] = 1.0
        return T
    if y.dtype.kind not in "biuf":
        raise DataError(f"{source}: targets must be numbers for loss={net.loss!r}, got {y.dtype}")
    T = y.astype(np.float64).reshape(N, -1)
    if T.shape[1] != n_out:
        raise DataError(f"{source}: has {T.shape[1]} target(s) per sample, the network has {n_out} outputs")
    if net.loss == "binary_cross_entropy" and not np.all((T == 0) | (T == 1)):
        raise DataError(f"{source}: multi-label targets must be 0 or 1")
    if net.target_scaler is not None:  # a regression trained on standardised targets
        T = net.target_scaler.transform(T)
    return T


# --- moving data to the device ----------------------------------------------------------------
_columns = _sources._device_columns  # rows (N, k) on the host -> columns (k, N) on the device


def _batch_source(net, X, T, setting, columns, micro_batches, validation):
    """Where the training set lives for fit (see :mod:`gpudnn.batches`): X: (N, F) checked
    and scaled rows, T: (N, n_L) encoded targets; ``setting`` fit's data_on_device;
    ``columns`` the most columns of a batch this process computes; ``validation`` the
    number of validation samples. "auto" that picked the device but finds it full when
    copying the data there (MemoryError) streams instead."""
    data = _sources.data_bytes(*X.shape, T.shape[1], net.dtype)
    need = data + _sources.training_bytes(net, columns, micro_batches, validation)
    if _sources.on_device(setting, net.backend, need):
        try:
            with allocating(f"the training set ({data / 2**30:.3g} GiB in {net.dtype.name}) did not fit on "
                            f"{net.backend.describe()}: stream it from host memory with data_on_device=False "
                            "(CLI: --data-on-device no)"):
                return _sources.ResidentBatches.from_rows(net, X, T)
        except MemoryError:
            if setting is True:
                raise
        # "auto" guessed wrong; out of the except block, so the traceback no longer holds
        # a partial copy on the device
    return _sources.StreamedBatches.from_rows(net, X, T, columns)


def _inputs(net, X, source="X"):
    """X checked (finite, (N, n_0)) and standardised if the network was fitted so; values
    the passes' dtype cannot hold (float32: beyond ±3.4e38; float16 mixed precision, which
    casts the inputs: ±65504) are a DataError."""
    X = check_X(X, n_features=net.sizes[0], source=source)
    X = net.scaler.transform(X) if net.scaler is not None else X
    held = net.precision if net.mixed and net.precision == np.float16 else net.dtype  # bfloat16: float32's range
    top, peak = float(np.finfo(held).max), max(float(X.max()), -float(X.min()))  # no copy of X
    if peak > top:
        hint = "" if net.scaler is not None else ", or standardize the inputs (standardize=True)"
        fix = "passes in the network's dtype (precision=None)" if held != net.dtype else "a float64 network (dtype='float64')"
        raise DataError(f"{source}: has values up to {peak:.3g}, beyond what {np.dtype(held).name} holds "
                        f"(±{top:.3g}): use {fix}{hint}")
    return X


# --- fit --------------------------------------------------------------------------------------
def _check_callbacks(callbacks):
    callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks or ())
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise ConfigError(f"callbacks must be gpudnn.callbacks.Callback objects, got {cb!r}")
    return callbacks


@distributable
def fit(
    net,
    X,
    y,
    *,
    epochs=10,
    batch_size=32,
    optimizer=None,
    shuffle=True,
    validation_data=None,
    validation_split=0.0,
    callbacks=(),
    clip_norm=None,
    micro_batches=1,
    verbose=1,
    standardize=False,
    standardize_targets=False,
    checkpoint=None,
    checkpoint_every=None,
    keep_checkpoints=3,
    resume=False,
    data_on_device="auto",
    distributed=None,
):
    """Train ``net`` by mini-batch gradient descent.

    Parameters
    ----------
    X : array (N, n_0)
        Training inputs, one row per sample.
    y : array (N,) or (N, n_L)
        Class labels for classifiers (one-hot made inside) or targets for regression.
    epochs, batch_size : int
        Passes over the data; samples per step (the last batch of an epoch may be smaller).
    optimizer : gpudnn.optim.Optimizer, default SGD(lr=0.01)
        Its ``lr`` may be a schedule (gpudnn.schedules); the optimizer keeps its state across
        calls, so pass the same one to continue training.
    shuffle : bool
        Reshuffle the samples each epoch, from one generator seeded by ``net.seed`` that
        lives as long as the network: a later ``fit`` goes on with new orders (two fits of
        one epoch train as one fit of two), a fresh or loaded network starts it again.
    validation_data : (X_val, y_val) or None
        Evaluated after each epoch (dropout off).
    validation_split : float in [0, 1)
        Or hold out this fraction of X, y (a shuffled split from ``net.seed``, stratified
        by class for classifiers) as the validation data.
    callbacks : list of gpudnn.callbacks.Callback
        E.g. ``EarlyStopping(patience=5)``; run in order, each epoch and batch.
    clip_norm : float or None
        Clip the batch gradient to this global norm before each step (see
        :func:`gpudnn.optim.clip_grad_norm`).
    micro_batches : int
        Compute each batch's gradient in this many micro-batches of ⌈B / k⌉ samples,
        accumulated into the whole batch's gradient (the same to rounding; the workspace is
        sized for one micro-batch, so a batch too large for memory fits). Dropout masks are
        drawn per micro-batch.
    verbose : int
        0 silent, 1 a tqdm progress bar when stderr is a terminal (else one line per
        epoch), 2 one line per epoch.
    standardize : bool
        Fit a per-feature standardisation on X, keep it in ``net.scaler`` (saved with the
        model) and apply it in fit, predict and evaluate.
    standardize_targets : bool
        Regression (identity output, mse) only: fit a standardisation of the targets (per
        output: mean 0, standard deviation 1), keep it in ``net.target_scaler`` (saved with
        the model) and train on the standardised targets; ``predict`` gives values in the
        targets' units again, while losses (``evaluate``, the history) stay in the
        standardised ones. Targets in the thousands, trained raw, make the squared error's
        gradients large enough to diverge at learning rates that suit classification.
    checkpoint : str or path, optional
        A directory to write checkpoints to (made if missing; see :mod:`gpudnn.checkpoint`),
        one at the end of every epoch. Each holds everything needed to go on bit for bit.
        A directory that holds checkpoints already needs ``resume``.
    checkpoint_every : int, optional
        Also write one every this many steps (counted over the fit).
    keep_checkpoints : int
        Keep the newest this many checkpoints, remove older ones.
    resume : bool
        Go on from the newest checkpoint in ``checkpoint`` (none yet: start afresh). The
        network, optimizer, callbacks, data and settings must be those of the run that
        wrote it (else ConfigError naming what differs); ``epochs`` may be larger.
    data_on_device : "auto", True or False
        Where the training set lives during training. True: on the network's device, each
        batch gathered there. False: in host memory, each batch gathered on the host into
        a (pinned, on CuPy) buffer and copied to the device asynchronously while the
        previous batch trains (see :mod:`gpudnn.batches`). "auto": on the device, unless
        on a GPU the data and training's buffers would not fit in its free memory with a
        tenth of the card to spare. Training is the same bit for bit either way (so it is
        not part of a checkpoint's configuration); callbacks find the choice in
        ``on_train_begin``'s logs as ``data_on_device``. On NumPy both keep the data in
        host memory; False runs the streamed code path there.
    distributed : gpudnn.distributed.DataParallel or None
        Train data-parallel as one rank of an MPI job: each rank computes its shard of every
        global batch of ``batch_size``, the same training as one process (see
        :mod:`gpudnn.distributed`).

    Returns
    -------
    history : dict of lists, one entry per epoch: "loss" (mean training loss over the
        epoch's batches), "accuracy" for classifiers, "val_loss" / "val_accuracy" with
        validation data, "lr" (of the epoch's last step), "time" (seconds), with mixed
        precision "skipped_steps" (steps skipped for a non-finite gradient) and "loss_scale"
        (at the epoch's end; see :mod:`gpudnn.amp`), and any key a
        callback adds to the epoch logs. Also kept as ``net.history``.
    """
    epochs = _positive_int("epochs", epochs)
    batch_size = _positive_int("batch_size", batch_size)
    micro_batches = _positive_int("micro_batches", micro_batches)
    data_on_device = _sources.check_data_on_device(data_on_device)
    validation_split = _check_fraction("validation_split", validation_split)
    if clip_norm is not None:
        clip_norm = _positive_number("clip_norm", clip_norm)
    callbacks = _check_callbacks(callbacks)
    if standardize_targets and not net.is_regressor:
        raise ConfigError("standardize_targets is for regression: a network with output='identity' and "
                          f"loss='mse' (this one has output={net.output!r}, loss={net.loss!r})")
    dp = SINGLE_PROCESS if distributed is None else distributed  # the hooks around each step
    ckpt = None
    try:  # the checkpoint directory's lock is released however the fit ends
        if checkpoint is not None:  # rank 0 alone makes and cleans the directory
            ckpt = Checkpointer(checkpoint, every=checkpoint_every, keep=keep_checkpoints,
                                resume=resume, dp=dp)
        elif checkpoint_every is not None or resume:
            raise ConfigError("checkpoint_every and resume need a checkpoint directory")
        X = check_X(X, n_features=net.sizes[0])
        y = check_y(y, X.shape[0])
        if validation_data is not None and validation_split:
            raise ConfigError("give validation_data or validation_split, not both")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ConfigError("validation_data must be a pair (X_val, y_val)")
            X_val = check_X(validation_data[0], n_features=net.sizes[0], source="validation X")
            y_val = check_y(validation_data[1], X_val.shape[0], source="validation y")
        elif validation_split:
            try:  # stratified for a classifier only: a regression's whole-number targets are values
                X, X_val, y, y_val = train_test_split(X, y, test_size=validation_split, seed=net.seed,
                                                      stratify=net.is_classifier)
            except DataError as exc:  # a part left empty
                raise DataError(f"validation_split: {exc}") from None
        validate = validation_data is not None or validation_split > 0
        optimizer = SGD(lr=0.01) if optimizer is None else optimizer
        if not isinstance(optimizer, Optimizer):
            raise ConfigError(
                f"optimizer must be a gpudnn.optim optimizer such as SGD(lr=0.01), got {optimizer!r}"
            )
        optimizer.check_params(net.params)  # another network's optimizer: refused before any work
        # a monitor of a metric fit will not log ("val_..." without validation data, an
        # accuracy for a regressor) is refused now, not after the first epoch
        check_monitors(callbacks, optimizer.lr, validate, net.is_classifier)
        previous = net.scaler, net.classes_, net.target_scaler
        try:  # a mistake found here leaves the network as it was
            if standardize:
                net.scaler = Standardizer.fit(X)
            if standardize_targets:  # fitted on the targets as given, then applied to them
                net.target_scaler = None
                net.target_scaler = Standardizer.fit(encode_targets(net, y, fitting=True))
            T = encode_targets(net, y, fitting=True)
            X_in = _inputs(net, X)  # scaled, and within the dtype's range
            if validate:  # checked, scaled and encoded once, before training (fails early)
                T_val = encode_targets(net, y_val, fitting=False, source="validation y")
                X_val_in = _inputs(net, X_val, "validation X")
        except Exception:
            net.scaler, net.classes_, net.target_scaler = previous
            raise

        xp, N = net.xp, X.shape[0]
        B = min(batch_size, N)
        source = _batch_source(net, X_in, T, data_on_device, -(-B // dp.size),
                               micro_batches, len(X_val) if validate else 0)
        if net._shuffle_rng is None:  # one generator for the network's life: each fit goes on
            net._shuffle_rng = np.random.default_rng(net.seed)  # where the last one stopped
        rng = net._shuffle_rng
        acc = xp.empty_like(net.grads) if micro_batches > 1 else None
        n_steps = -(-N // B)  # batches per epoch
        step_loss = xp.zeros(n_steps, dtype=xp.float64)  # Σ loss of each batch, kept on the device
        callbacks += [ProgressBar(verbose)] if verbose else []
        for cb in callbacks:
            cb.net = net
            cb.on_train_begin({"epochs": epochs, "steps": n_steps, "data_on_device": source.on_device,
                               "validation": validate})
        batch_hooks = [cb for cb in callbacks if _has_batch_hook(cb)]
        if checkpoint is None:
            ckpt, run = None, Progress()
        else:
            config = fit_config(
                net, optimizer, callbacks, {"X": X, "y": y, "validation X": X_val if validate else None,
                                            "validation y": y_val if validate else None},
                batch_size=batch_size, micro_batches=micro_batches, clip_norm=clip_norm,
                shuffle=shuffle, standardize=standardize, validation_split=validation_split,
                **({"standardize_targets": True} if standardize_targets else {}),
                ranks=dp.size,
            )
            run = ckpt.start(net, optimizer, callbacks, config, rng, step_loss, verbose)
        history = run.history
        scaler = net.loss_scaler if net.mixed else None  # mixed precision's dynamic loss scale

        try:  # streamed: no buffer is freed while a copy to it is in flight
            for epoch in range(run.epoch, run.epoch if run.stopped else epochs):
                t0 = time.perf_counter()
                for cb in callbacks:
                    cb.on_epoch_begin(epoch)
                shuffle_rng = rng.bit_generator.state  # a resumed epoch draws its order again from it
                order = source.order(rng.permutation(N) if shuffle else np.arange(N))
                first, correct = (run.batch, run.correct) if epoch == run.epoch else (0, 0)
                if scaler is not None and first == 0:
                    scaler.epoch_skipped = 0
                upcoming = None  # streamed: the batch fetched while the previous one computed
                # NumPy's overflow warnings off in the steps (CuPy has none): a diverging run
                # is reported once, after the epoch, by the TrainingError below
                with _quiet_floats():
                    for batch in range(first, n_steps):
                        idx = dp.shard(order[batch * B : (batch + 1) * B])  # this rank's columns of the batch
                        current = upcoming if upcoming is not None else source.fetch(idx)
                        loss_sum, n_right = _gradients(net, current, micro_batches, acc)
                        dp.reduce_gradients(net)  # the whole batch's mean gradient (before clipping)
                        step_loss[batch] = loss_sum  # a device copy, no host sync
                        upcoming = None
                        if source.prefetch and batch + 1 < n_steps:  # the next batch's host gather and
                            # copy, while the device computes this one (before the update: mixed
                            # precision's waits for the gradients); after reduce_gradients, which uses
                            # the weight dp.shard keeps (reset by the dp.shard above in the next step)
                            upcoming = source.fetch(dp.shard(order[(batch + 1) * B : (batch + 2) * B]))
                        if scaler is not None:  # mixed precision: skipped when a gradient is not finite
                            # one micro-batch in one process: the gradients as unscale left them
                            scaler.step(net, optimizer, clip_norm, checked=micro_batches == 1 and dp.size == 1)
                        else:
                            if clip_norm is not None:
                                clip_grad_norm(net.grads, clip_norm, xp)
                            optimizer.step(net.params, net.grads, xp, net.segments)
                        correct = correct + n_right
                        if batch_hooks:  # size 0: a rank's empty shard
                            logs = {"size": idx.shape[0], "loss": loss_sum / max(idx.shape[0], 1)}
                            for cb in batch_hooks:
                                cb.on_batch_end(batch, logs)
                        if ckpt is not None and batch + 1 < n_steps and ckpt.due(epoch * n_steps + batch + 1):
                            _save(ckpt, Progress(epoch, batch + 1, correct, history, shuffle_rng), net,
                                  step_loss, optimizer, dp)
                step_loss, correct = dp.reduce_epoch(net, step_loss, correct)  # sums over the ranks
                loss = float(step_loss.sum()) / N  # one host sync per epoch
                if not math.isfinite(loss):
                    error = _diverged(net, step_loss, epoch, n_steps, optimizer, ckpt)
                    for cb in callbacks:  # e.g. EarlyStopping puts the best weights back, bars close
                        cb.on_train_end(history)
                    raise dp.alike(error)  # the loss summed over the ranks
                logs = {"loss": loss}
                if net.is_classifier:
                    logs["accuracy"] = float(correct) / N
                if scaler is not None:
                    logs["skipped_steps"] = scaler.epoch_skipped
                    logs["loss_scale"] = scaler.scale
                if validate:
                    with _quiet_floats():
                        scores = _score(net, X_val_in, T_val)
                    logs.update(("val_" + k, v) for k, v in scores.items())
                logs["lr"] = optimizer.last_lr
                logs["time"] = time.perf_counter() - t0
                stop = [stops(cb.on_epoch_end(epoch, logs)) for cb in callbacks]
                if hasattr(optimizer.lr, "on_epoch_end"):  # after the callbacks: it sees their keys
                    optimizer.lr.on_epoch_end(logs)
                record_epoch(history, logs)  # None where a key is missing: one entry per epoch
                if ckpt is not None:
                    ckpt.save(Progress(epoch + 1, 0, 0, history, rng.bit_generator.state, any(stop)))
                if any(stop):
                    break
        finally:
            source.close()
        net.history = history  # only a run that finished (or stopped early) has a history
        for cb in callbacks:
            cb.on_train_end(history)
        return history
    finally:
        if ckpt is not None:
            ckpt.close()


def _quiet_floats():
    """NumPy's floating-point warnings (overflow, invalid, divide) off inside the block."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def _has_batch_hook(cb):
    """Whether ``cb`` does something after a batch (the batch logs are made only then)."""
    return type(cb).on_batch_end is not Callback.on_batch_end or "on_batch_end" in vars(cb)


def _batch_gradients(net, XT, YT, idx, micro_batches, acc):
    """Fill ``net.grads`` with the gradient of the mean loss over the samples ``idx``: (B,)
    of the device columns XT: (n_0, N), YT: (n_L, N); see :func:`_gradients`."""
    return _gradients(net, _sources.ResidentBatches(net.backend, XT, YT).fetch(idx), micro_batches, acc)


def _gradients(net, batch, micro_batches, acc):
    """Fill ``net.grads`` with the gradient of the mean loss over the B samples of ``batch``
    (a batch of :mod:`gpudnn.batches`, whose ``load`` fills the workspace's A0 and Y).

    With k = ``micro_batches`` > 1 the batch is split into k micro-batches of m_j samples;
    each gives (m_j / B) g_j, g_j the gradient of its own mean loss (the factor applied to
    δ^L before the backward pass: with float16 the values stay the whole batch's size, and
    the loss scale that suits the batch suits each micro-batch), and the batch's gradient
    Σ_j (m_j / B) g_j is summed in ``acc``: (P,). Returns (Σ loss, number right) over the
    batch, 0-d device arrays. B = 0 (a rank's empty shard of a short distributed batch):
    zero gradient, (0, 0).
    """
    xp, B = net.xp, batch.size
    if B == 0:
        net.grads[...] = 0
        return 0, 0
    m = -(-B // min(micro_batches, B))  # samples per micro-batch
    total = correct = 0
    for j, start in enumerate(range(0, B, m)):
        stop = min(start + m, B)
        v = net._views(stop - start, inputs=True)
        A0, Y = v["A"][0], v["Y"]
        batch.load(start, stop, A0, Y)
        total = total + net._forward_backward(A0, Y, (stop - start) / B if m < B else 1.0)
        if net.is_classifier:
            correct = correct + _n_correct(net, v["A"][-1], Y)
        if m < B:  # accumulate the micro-batches' shares of the batch mean
            if j == 0:
                xp.copyto(acc, net.grads)
            elif stop < B:
                acc += net.grads
            else:
                net.grads += acc
    return total, correct


def accumulate_gradients(net, A0, Y, micro_batches):
    """``forward_backward`` over ``micro_batches`` micro-batches: the whole batch's mean
    loss (float) and its gradients in dW, db, with a workspace of one micro-batch.

    A0: (n_0, B), Y: (n_L, B) columns, as for ``Network.forward_backward``.
    """
    A0, Y = net._as_training_batch(A0, Y)
    micro_batches = _positive_int("micro_batches", micro_batches)
    idx = net.xp.arange(A0.shape[1])
    acc = net.xp.empty_like(net.grads) if micro_batches > 1 else None
    total, _ = _batch_gradients(net, A0, Y, idx, micro_batches, acc)
    return float(total) / A0.shape[1]


def _save(ckpt, progress, net, step_loss, optimizer, dp):
    """Write a mid-epoch checkpoint once the batch losses of the epoch so far are known to be
    finite (one host sync per checkpoint): a bad checkpoint is never written.

    Distributed, the checkpoint holds the loss sums and correct count of the whole batches,
    summed over the ranks (one small all-reduce, as at the epoch's end; the ranks keep
    their own for that one), so every rank also takes the same NaN decision."""
    done, correct = dp.reduce_epoch(net, step_loss[: progress.batch].copy(), progress.correct)
    if not math.isfinite(float(done.sum())):
        raise dp.alike(_diverged(net, done, progress.epoch, step_loss.shape[0], optimizer, ckpt))
    progress.correct = correct
    ckpt.save(progress, done)


def _diverged(net, step_loss, epoch, n_steps, optimizer, ckpt=None):
    """The TrainingError for an epoch whose loss is not finite, naming the first step
    (1-based, counted over the whole fit) whose batch loss was NaN or infinite, and the
    last good checkpoint when ``ckpt`` (a Checkpointer) writes them.

    step_loss: (k,) the batch loss sums of the epoch's first k batches, on the device;
    searched only here, after the fact, so the loop itself never waits for the device.
    """
    xp = net.xp
    bad = xp.flatnonzero(~xp.isfinite(step_loss))
    if bad.size == 0:  # every batch finite, their float64 sum overflowed
        where = f"in epoch {epoch + 1} (the sum of its batch losses overflowed)"
        value = math.inf
    else:
        k = int(bad[0])
        value = float(step_loss[k])
        where = f"at step {epoch * n_steps + k + 1} (epoch {epoch + 1}, batch {k + 1} of {n_steps})"
    weights = "still finite" if bool(xp.isfinite(net.params).all()) else "NaN or infinite now"
    kept = f"; {ckpt.kept()}" if ckpt is not None else ""
    targets = "" if net.is_classifier else ", scale the targets (the squared error grows with their size)"
    return TrainingError(
        f"the training loss became {value} {where}; training stopped (the weights are "
        f"{weights}{kept}). Lower the learning rate (optimizer: {optimizer!r}), standardize "
        f"the inputs{targets} or check the data"
    )


def _n_correct(net, A, Y):
    """Samples whose prediction matches the target: A, Y: (n_L, B). A 0-d device array."""
    xp = net.xp
    if net.loss == "cross_entropy":
        return xp.count_nonzero(A.argmax(axis=0) == Y.argmax(axis=0))
    return xp.count_nonzero(((A > 0.5) == (Y > 0.5)).all(axis=0))


# --- inference --------------------------------------------------------------------------------
def _batches(net, X, batch_size):
    """Forward checked, scaled X: (N, n_0) in chunks; yields (start, stop, views) after each."""
    batch_size = _positive_int("batch_size", batch_size)
    for start in range(0, X.shape[0], batch_size):
        stop = min(start + batch_size, X.shape[0])
        A0 = _columns(net, X[start:stop])
        v = net._views(stop - start)
        net._forward(A0, v)
        yield start, stop, v


def predict_outputs(net, X, *, batch_size=4096):
    """a^L for every row of X: (N, n_0) -> (N, n_L) NumPy array."""
    X = _inputs(net, X)
    out = np.empty((X.shape[0], net.sizes[-1]), net.dtype)
    for start, stop, v in _batches(net, X, batch_size):
        out[start:stop] = net.backend.to_numpy(v["A"][-1]).T
    return out


def predict(net, X, *, batch_size=4096):
    """Class labels (N,) for classifiers (0/1 matrix (N, n_L) for multi-label), values
    (N,) or (N, n_L) for regressors (in the targets' units, ``target_scaler`` undone), for
    X: (N, n_0)."""
    out = predict_outputs(net, X, batch_size=batch_size)
    if net.loss == "cross_entropy":
        idx = out.argmax(axis=1)
        return net.classes_[idx] if net.classes_ is not None else idx
    if net.loss == "binary_cross_entropy":
        hit = (out > 0.5).astype(np.int64)
        return net.classes_[hit[:, 0]] if net.classes_ is not None else hit
    if net.target_scaler is not None:  # back in the targets' units (float64)
        out = net.target_scaler.inverse(out)
    return out[:, 0] if net.sizes[-1] == 1 else out


def evaluate(net, X, y, *, batch_size=4096):
    """{"loss": mean loss, "accuracy": fraction right (classifiers only)} on X: (N, n_0)."""
    X = _inputs(net, X)
    y = check_y(y, X.shape[0])
    return _score(net, X, encode_targets(net, y, fitting=False), batch_size)


def _score(net, X, T, batch_size=4096):
    """evaluate's scores for X: (N, n_0) already checked and scaled, T: (N, n_L) encoded."""
    total, correct = 0.0, 0
    for start, stop, v in _batches(net, X, batch_size):
        Y = _columns(net, T[start:stop])
        total += float(net._loss_sum(Y, v))
        if net.is_classifier:  # counted as in fit, on the device: no outputs brought back
            correct = correct + _n_correct(net, v["A"][-1], Y)
    scores = {"loss": total / X.shape[0]}
    if net.is_classifier:
        scores["accuracy"] = float(correct) / X.shape[0]
    return scores
