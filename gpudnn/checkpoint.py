"""Checkpoints: what ``fit`` writes so that a run killed at any moment goes on, when resumed,
exactly as if it had never stopped (bit for bit: the same weights, losses and history).

Letters: P parameters (the flat buffer), n steps per epoch (⌈N / B⌉), b batches of the
current epoch done.

A checkpoint directory holds ``checkpoint-{step:09d}.safetensors`` files, ``step`` being
the optimizer steps of the fit done (epoch · n + b); the newest is the one resumed, and
after each write all but the newest ``keep`` are removed; a run holds the lock on its
``.lock`` file throughout (:func:`lock_directory`), so a second run is refused. Each file
is one safetensors file (:func:`gpudnn.io.encode_tensors`; the ``safetensors`` package
reads it too, and the metadata's ``blake2b`` digest is checked on reading), written
atomically by :func:`gpudnn.io.write_atomic` (a temporary file in the same directory,
fsync, ``os.replace``, directory fsync), so a kill at any moment leaves every earlier
checkpoint whole. Its metadata holds ``format``, ``format_version``, ``gpudnn_version``
and ``state``, a JSON object in which each array is replaced by ``{"__tensor__": name}``:

    config, config_sha256   the run's configuration (:func:`fit_config`) and its hash
    progress                epoch (0-based, the one in progress), batch (b), step,
                            correct (right predictions of the epoch so far), stopped (an
                            epoch callback ended training), history (the finished epochs)
    params                  tensor (P,): the weights, in the network's dtype
    optimizer               its state_dict: step count, hyperparameters, the schedule's
                            state, tensors (P,) per state buffer (momentum, Adam's m, v, ...)
    step_loss               tensor (b,) float64: the loss sum of each batch of the epoch so far
    rng.shuffle             the shuffling generator's state at the start of the epoch, from
                            which its order is drawn again (a NumPy PCG64 state)
    rng.dropout             the dropout generator's state (null until it is first used):
                            NumPy's as JSON, CuPy's as a uint8 tensor (see Backend.rng_state);
                            in a distributed fit, each rank's, [rank 0's, rank 1's, ...]
    callbacks               each callback's state_dict (EarlyStopping: the best value, its
                            wait and epoch, and the best weights as a tensor (P,))
    amp                     mixed precision only: the loss scaler's state_dict (scale,
                            clean-step count, skipped steps; see :mod:`gpudnn.amp`)

Reading checks the file as :func:`gpudnn.load` checks a model (any problem is a
ModelFileError naming the file), then every field before it is used. Resuming with another
configuration is a ConfigError naming each setting that differs (another number of ranks
first, naming both counts).

In a distributed fit rank 0 alone works on the directory and the files; a checkpoint holds
the loss sums and correct count over all the ranks (see :mod:`gpudnn.distributed`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np

from .backend import Backend
from .callbacks import ProgressBar
from .distributed import SINGLE_PROCESS
from .errors import ConfigError, ModelFileError, TrainingError
from .io import _open, encode_tensors, read_tensors, write_atomic

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # not Windows
    msvcrt = None

FORMAT = "gpudnn-checkpoint"
FORMAT_VERSION = "1"
PREFIX = "checkpoint-"
SUFFIX = ".safetensors"
_FILE = re.compile(r"checkpoint-([0-9]{9,18})\.safetensors")
_TEMPORARY = re.compile(r"\.checkpoint-[0-9]{9,18}\.safetensors\..*\.tmp")  # left by a kill
LOCK = ".lock"  # the file whose lock a run holds on its directory (see lock_directory)
_BUSY = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK}  # someone holds it
_TENSOR = "__tensor__"
MAX_DEPTH = 32  # a state nests 5 levels; callbacks' states get the rest
_NUMPY = Backend("numpy", np)  # the shuffling generator is always NumPy's


@dataclass
class Progress:
    """Where a fit is: ``batch`` batches of epoch ``epoch`` (0-based) done, ``correct``
    predictions right in them, the ``history`` of the finished epochs; ``stopped`` when a
    callback ended training; ``shuffle_rng``, the shuffling generator's state at the start
    of ``epoch`` (None: as a fresh fit seeds it)."""

    epoch: int = 0
    batch: int = 0
    correct: int = 0
    history: dict = field(default_factory=dict)
    shuffle_rng: dict | None = None
    stopped: bool = False


# --- the configuration a checkpoint must match ------------------------------------------------
def describe(obj):
    """repr(obj) without memory addresses (a lambda's repr holds one): stable across runs."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


def fingerprint(a):
    """"shape dtype blake2b-hex" of array ``a``: changes when any value does."""
    a = np.asarray(a)
    h = hashlib.blake2b(digest_size=16)
    if a.dtype.kind == "O":  # object labels: their reprs (the bytes would be pointers)
        h.update(repr(a.tolist()).encode())
    else:
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return f"{'x'.join(map(str, a.shape))} {a.dtype.str} {h.hexdigest()}"


def fit_config(net, optimizer, callbacks, data, ranks=1, **settings):
    """The configuration a checkpoint is resumed under, JSON-able: the network's config,
    backend and kernel set, the optimizer with its hyperparameters and schedule, the
    callbacks, a fingerprint of each array of ``data`` ({name: array}), the number of
    ranks of a distributed fit (``ranks``; absent for one process) and ``settings``
    (fit's batch size, micro-batches, clipping, ...). The number of epochs is not part of
    it: a finished run may be resumed to train longer."""
    config = {
        "network": net.config(),
        "backend": net.backend.name,
        "kernels": net.kernels.name,
        "optimizer": describe(optimizer),
        "callbacks": [describe(cb) for cb in callbacks if not isinstance(cb, ProgressBar)],
        "data": {name: fingerprint(a) for name, a in data.items() if a is not None},
        **({"ranks": ranks} if ranks != 1 else {}),
        **settings,
    }
    return json.loads(json.dumps(config))  # as it reads back: tuples are lists


def _sha256(config):
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _differences(saved, now, prefix=""):
    """"key: A in the checkpoint, B now" for every setting that differs (nested keys dotted)."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key, "(absent)"), now.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} in the checkpoint, {b!r} now")
    return out


# --- arrays in and out of the JSON state --------------------------------------------------------
def _pack(tree, tensors, to_host, name=""):
    """``tree`` with each array (NumPy or the device's) moved to ``tensors`` {name: host
    array} under its dotted path and replaced by {"__tensor__": name}; tuples become lists."""
    if isinstance(tree, dict):
        return {k: _pack(v, tensors, to_host, f"{name}.{k}" if name else str(k)) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_pack(v, tensors, to_host, f"{name}.{i}") for i, v in enumerate(tree)]
    if isinstance(tree, np.generic):
        return tree.item()
    if hasattr(tree, "__array__") and hasattr(tree, "shape"):
        tensors[name] = to_host(tree)
        return {_TENSOR: name}
    return tree


def _unpack(tree, tensors, fail, depth=0):
    """The inverse of ``_pack``: each {"__tensor__": name} becomes its array, taken out of
    ``tensors``; a missing or twice-used name fails, and so does nesting deeper than ours
    ever is (MAX_DEPTH)."""
    if depth > MAX_DEPTH:
        fail(f"state is nested more than {MAX_DEPTH} levels deep")
    if isinstance(tree, dict):
        if set(tree) == {_TENSOR}:
            name = tree[_TENSOR]
            if not isinstance(name, str) or name not in tensors:
                fail(f"state refers to a tensor {name!r} the file does not hold (or twice)")
            return tensors.pop(name)
        return {k: _unpack(v, tensors, fail, depth + 1) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_unpack(v, tensors, fail, depth + 1) for v in tree]
    return tree


def _json_value(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"a {type(o).__name__} cannot be stored in a checkpoint")


def _write(path, tree, tensors):
    """Write a checkpoint atomically: ``tree``, the state as ``_pack`` left it, as the JSON
    metadata and ``tensors`` {name: host array} as the tensors."""
    from . import __version__

    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "gpudnn_version": __version__,
            "state": json.dumps(tree, default=_json_value)}
    write_atomic(path, encode_tensors(tensors, meta))


def read_checkpoint(path, data=None):
    """The state a checkpoint file holds, its arrays as NumPy arrays. Raises ModelFileError,
    naming the file, for one that is missing, truncated, malformed or hostile (checked as
    :func:`gpudnn.io.read_tensors` checks: nothing is unpickled or evaluated). With
    ``data``, the file's bytes read before, these are parsed instead."""
    path = os.fspath(path)

    def fail(msg):
        raise ModelFileError(f"{path}: {msg}")

    meta, tensors = read_tensors(path, fail, data)
    if meta.get("format") != FORMAT:
        fail(f"metadata format is {meta.get('format')!r}, not {FORMAT!r}: not a gpudnn checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        fail(f"unknown checkpoint format_version {meta.get('format_version')!r}; this gpudnn "
             f"reads version {FORMAT_VERSION}")
    try:
        tree = json.loads(meta.get("state", ""))
    except (ValueError, RecursionError) as exc:
        fail(f"state is not valid JSON ({exc})")
    if not isinstance(tree, dict):
        fail("state must be a JSON object")
    state = _unpack(tree, tensors, fail)
    if tensors:
        fail(f"tensors {sorted(tensors)[:5]} are not part of the state")
    return state


def _read_bytes(path):
    """The whole content of the file ``path``; ModelFileError naming it when it cannot be read."""
    def fail(msg):
        raise ModelFileError(f"{path}: {msg}")

    try:
        with _open(path, fail) as f:
            return f.read()
    except OSError as exc:
        fail(f"cannot read ({exc.strerror or exc})")


def _state_bytes(obj):
    """A JSON-able ``obj`` whose leaves may be NumPy arrays as bytes (a safetensors file)."""
    tensors = {}
    tree = _pack({"state": obj}, tensors, np.asarray)
    return b"".join(encode_tensors(tensors, {"state": json.dumps(tree, default=_json_value)}))


def _bytes_state(data, what):
    """The inverse of :func:`_state_bytes`."""
    def fail(msg):
        raise ModelFileError(f"{what}: {msg}")

    meta, tensors = read_tensors(what, fail, data)
    return _unpack(json.loads(meta["state"]), tensors, fail)["state"]


# --- the directory ----------------------------------------------------------------------------
def list_checkpoints(directory):
    """[(step, path)] of the checkpoints in ``directory``, oldest first (temporary files
    left by a kill are not checkpoints)."""
    found = []
    for name in os.listdir(directory):
        m = _FILE.fullmatch(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    return sorted(found)


def lock_directory(directory):
    """Take the exclusive lock on ``directory``'s LOCK file (made if missing, never removed)
    and return its file descriptor: the lock lasts until that is closed, or the process
    ends however it ends (a SIGKILL included: the OS releases it). fcntl.flock, msvcrt's
    byte lock on Windows; where locking is unsupported (neither, or a file system without
    locks) a warning says that nothing stops another run. ConfigError when another run,
    or another Checkpointer of this process, holds it."""
    path = os.path.join(directory, LOCK)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise ConfigError(f"cannot use checkpoint directory {directory}: cannot make its lock "
                          f"file {path} ({exc.strerror or exc})") from None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        elif msvcrt is not None:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            warnings.warn(f"cannot lock {path} on this platform: nothing stops another run "
                          f"from writing to {directory} at the same time")
    except OSError as exc:
        if exc.errno in _BUSY:
            os.close(fd)
            raise ConfigError(
                f"checkpoint directory {directory} is in use by another run (it holds the lock "
                f"on {path}): wait for that run to end or use another directory") from None
        warnings.warn(f"cannot lock {path} ({exc.strerror or exc}): nothing stops another "
                      f"run from writing to {directory} at the same time")
    return fd


def release_directory(fd):
    """Release the lock ``lock_directory`` took and close its descriptor ``fd``: unlocked
    first, as Windows releases a closed file's byte lock only at some later time (a run
    started right after could find its own directory "in use")."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        elif msvcrt is not None:
            os.lseek(fd, 0, os.SEEK_SET)  # the byte locked: the first, where the lock was taken
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    except OSError:  # not locked (no locking there): closing is all there is to do
        pass
    os.close(fd)


def _is_count(x, low=0):
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def _refuse_file(directory):
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ConfigError(f"checkpoint directory {directory} is a file")


def check_directory(directory, resume):
    """The checkpoints in ``directory`` (``list_checkpoints``; [] where it does not exist
    yet); ConfigError where it is a file, or holds checkpoints and ``resume`` is False (two
    runs must never write one directory). Asked by a Checkpointer once it holds the
    directory's lock, after the lock's own refusal (another run writing there)."""
    _refuse_file(directory)
    found = list_checkpoints(directory) if os.path.isdir(directory) else []
    if found and not resume:
        raise ConfigError(f"{directory} already holds checkpoints (the newest {found[-1][1]}): "
                          "resume that run (resume=True, --resume) or use another directory")
    return found


def probe_directory(directory, resume):
    """What a Checkpointer on ``directory`` would refuse, in its order, found without making
    or keeping anything (the CLI asks before it reads any data): another run holding the
    directory, a file in its place, checkpoints without ``resume``."""
    if os.path.isdir(directory):
        release_directory(lock_directory(directory))
    check_directory(directory, resume)


class Checkpointer:
    """The checkpoints of one fit in ``directory``: written every ``every`` steps (None:
    only at epoch ends) and at the end of every epoch; the newest ``keep`` are kept.

    With ``resume`` the newest one is loaded by :meth:`start` (none yet: a fresh start);
    without, a directory that already holds checkpoints is refused, so that two runs never
    mix. Made before training, so these mistakes cost nothing.

    It holds the directory's lock (:func:`lock_directory`) from its making until
    :meth:`close`, a failure in :meth:`start` or :meth:`save` (the fit ends), its garbage
    collection or the end of the process: a second run on the directory meanwhile is
    refused at once with a ConfigError.

    In a distributed fit (``dp``, the fit's hooks: a DataParallel) rank 0 alone makes,
    locks, cleans, reads, writes and prunes the directory; the other ranks learn each
    outcome from it (which checkpoint to resume, its bytes, the path written, or the same
    error).
    """

    def __init__(self, directory, every=None, keep=3, resume=False, dp=SINGLE_PROCESS):
        self.directory = os.fspath(directory)
        if every is not None and not _is_count(every, 1):
            raise ConfigError(f"checkpoint_every must be a positive integer or None, got {every!r}")
        if not _is_count(keep, 1):
            raise ConfigError(f"keep_checkpoints must be a positive integer, got {keep!r}")
        self.every, self.keep, self.resume, self.dp = every, keep, bool(resume), dp
        self._unlock = None  # rank 0: closes the lock's file descriptor
        self.last = dp.on_root(self._prepare, "preparing the checkpoint directory")

    def _prepare(self):
        """Make, lock and clean the directory; the newest checkpoint in it (None: none)."""
        _refuse_file(self.directory)
        os.makedirs(self.directory, exist_ok=True)
        self._unlock = weakref.finalize(self, release_directory, lock_directory(self.directory))
        with self._released_on_error():
            found = check_directory(self.directory, self.resume)
            for name in os.listdir(self.directory):
                if _TEMPORARY.fullmatch(name):  # a write a kill cut short: never a checkpoint
                    os.unlink(os.path.join(self.directory, name))
            return found[-1][1] if found else None

    def close(self):
        """Release the directory for another run (at once; calling it again does nothing)."""
        if self._unlock is not None:
            self._unlock()

    @contextlib.contextmanager
    def _released_on_error(self):
        """Release the directory when what runs inside fails: the fit is over."""
        try:
            yield
        except BaseException:
            self.close()
            raise

    def due(self, step):
        """Whether a checkpoint is due after ``step`` (1-based, counted over the fit)."""
        return self.every is not None and step % self.every == 0

    # --- resume ---------------------------------------------------------------------------
    def start(self, net, optimizer, callbacks, config, rng, step_loss, verbose=0):
        """Begin checkpointing a fit of ``net`` (``config`` from :func:`fit_config`): with
        ``resume`` and a checkpoint in the directory, put back the weights, the optimizer,
        the callbacks' states, the dropout and shuffling generators (``rng``) and the batch
        losses of the epoch so far (into ``step_loss``: (n,)), and return the Progress to
        go on from; else a fresh Progress."""
        self.net, self.optimizer, self.step_loss = net, optimizer, step_loss
        self.callbacks = [cb for cb in callbacks if not isinstance(cb, ProgressBar)]
        self.config, self.config_sha256 = config, _sha256(config)
        if not (self.resume and self.last):
            return Progress()
        path = self.last
        with self._released_on_error():
            if self.dp.size == 1:
                state = read_checkpoint(path)
            else:  # the same bytes on every rank: the same state, or the same error
                state = read_checkpoint(path, self.dp.on_root(
                    lambda: _read_bytes(path), "reading the checkpoint", raw=True))
            self._check_config(path, state)
            progress = self._restore(path, state, rng)
        if verbose:
            n, e, b = len(step_loss), progress.epoch, progress.batch
            where = f"epoch {e + 1}, batch {b} of {n}" if b else f"epoch {e}"
            stopped = "; training had stopped early" if progress.stopped else ""
            print(f"resuming from {path} (step {e * n + b}: {where} done{stopped})", flush=True)
        return progress

    def _check_config(self, path, state):
        saved = state.get("config")
        if not isinstance(saved, dict) or state.get("config_sha256") != _sha256(saved):
            raise ModelFileError(f"{path}: the configuration does not match its hash (damaged file?)")
        ranks, now = saved.get("ranks", 1), self.config.get("ranks", 1)
        if ranks != now:
            how = "in one process" if ranks == 1 else f"with mpiexec -n {ranks} ... --distributed"
            raise ConfigError(
                f"cannot resume from {path}: it was written by a run of {ranks} rank(s), this run "
                f"has {now}. Resume {how}: the checkpoint holds each rank's dropout stream, and "
                "the gradient sums round alike only at the same count"
            )
        if state["config_sha256"] != self.config_sha256:
            raise ConfigError(
                f"cannot resume from {path}: it was written by a run with another configuration "
                f"({'; '.join(_differences(saved, self.config))}). Resume with the same "
                "settings and data, or start afresh in another directory"
            )

    def _restore(self, path, state, rng):
        net, xp, n = self.net, self.net.xp, len(self.step_loss)

        def fail(msg):
            raise ModelFileError(f"{path}: {msg}")

        p, params = state.get("progress"), state.get("params")
        if not isinstance(p, dict) or set(p) != {"epoch", "batch", "step", "correct", "stopped", "history"}:
            fail("progress must hold epoch, batch, step, correct, stopped and history")
        if not (_is_count(p["epoch"]) and _is_count(p["batch"]) and p["batch"] < n
                and p["step"] == p["epoch"] * n + p["batch"] and _is_count(p["correct"])
                and isinstance(p["stopped"], bool)):
            fail(f"progress {dict((k, v) for k, v in p.items() if k != 'history')} is not a "
                 f"position in epochs of {n} steps")
        history = p["history"]
        if not (isinstance(history, dict) and all(isinstance(v, list) and len(v) == p["epoch"]
                                                  for v in history.values())):
            fail(f"history must hold a list of {p['epoch']} values per key")
        if not (isinstance(params, np.ndarray) and params.shape == (net.n_params,) and params.dtype == net.dtype):
            fail(f"params must be a {net.dtype.name} tensor of shape ({net.n_params},)")
        step_loss = state.get("step_loss")
        if not (isinstance(step_loss, np.ndarray) and step_loss.shape == (p["batch"],)
                and step_loss.dtype == np.float64):
            fail(f"step_loss must be a float64 tensor of shape ({p['batch']},)")
        rngs, saved_callbacks = state.get("rng"), state.get("callbacks")
        if not isinstance(rngs, dict) or set(rngs) != {"shuffle", "dropout"}:
            fail("rng must hold the shuffle and dropout generators' states")
        if not isinstance(saved_callbacks, list) or len(saved_callbacks) != len(self.callbacks):
            fail(f"callbacks must hold {len(self.callbacks)} states")
        opt = state.get("optimizer")
        if not isinstance(opt, dict) or not _is_count(opt.get("t")):
            fail("optimizer must be a state_dict with a step count t")
        amp = state.get("amp")
        if net.mixed and not isinstance(amp, dict):
            fail("amp must hold the loss scaler's state (a mixed-precision run)")
        before = describe(self.optimizer)
        try:
            if net.mixed:
                net.loss_scaler.load_state_dict(amp)
            _NUMPY.set_rng_state(rng, rngs["shuffle"])
            dropout = rngs["dropout"]
            if isinstance(dropout, list):  # a distributed fit's: one per rank
                if len(dropout) != self.dp.size:
                    raise ValueError(f"{len(dropout)} dropout states for {self.dp.size} ranks")
                dropout = dropout[self.dp.rank]
            if dropout is None:
                net._dropout_rng = None
            else:
                net.backend.set_rng_state(net._dropout_generator(), dropout)
            self.optimizer.load_state_dict(opt, net.params, xp, net.segments)
            for cb, d in zip(self.callbacks, saved_callbacks):
                if not isinstance(d, dict):
                    raise ValueError(f"the state of {describe(cb)} is not an object")
                cb.load_state_dict(d)
        except (ValueError, TypeError, KeyError) as exc:
            fail(f"cannot restore the state ({type(exc).__name__}: {exc})")
        if describe(self.optimizer) != before:
            fail("the optimizer's saved hyperparameters disagree with the configuration")
        net.params[...] = net.backend.asarray(params)
        # the loss sums and count are over every rank: rank 0 takes them, the others start
        # from 0, so the epoch's all-reduce gives them once
        root = self.dp.is_root
        self.step_loss[: p["batch"]] = xp.asarray(step_loss) if root else 0
        correct = p["correct"] if root else 0
        return Progress(p["epoch"], p["batch"], correct, history, rngs["shuffle"], p["stopped"])

    # --- write ----------------------------------------------------------------------------
    def save(self, progress, step_loss=None):
        """Write the checkpoint of ``progress`` (the shuffling state at the start of its
        epoch in ``shuffle_rng``) and ``step_loss`` (the epoch's batch loss sums so far,
        (progress.batch,); with ``correct``, summed over the ranks), then remove all but
        the newest ``keep``. Every rank calls it; rank 0 alone writes.

        The caller has checked the batch losses; here every float tensor is checked finite
        on the host: a NaN or infinite weight or optimizer state stops training with a
        TrainingError naming the step (on every rank), and the last good checkpoint stays
        the newest.
        """
        with self._released_on_error():
            dropout = self._dropout_states()  # collective: every rank's
            write = functools.partial(self._write, progress, step_loss, dropout)
            self.last = self.dp.on_root(write, "writing a checkpoint")

    def _dropout_states(self):
        """The dropout generator's state (None until first used); in a distributed fit,
        every rank's [rank 0's, rank 1's, ...] (None when no rank has one): each rank
        draws its own masks."""
        net, dp = self.net, self.dp
        mine = None if net._dropout_rng is None else net.backend.rng_state(net._dropout_rng)
        if dp.size == 1:
            return mine
        states = [_bytes_state(b, f"rank {r}'s dropout state")
                  for r, b in enumerate(dp.gather(_state_bytes(mine)))]
        return None if all(st is None for st in states) else states

    def _write(self, progress, step_loss, dropout):
        """Check and write the checkpoint, prune; its path."""
        net, n = self.net, len(self.step_loss)
        step = progress.epoch * n + progress.batch
        if step_loss is None:
            step_loss = self.step_loss[: progress.batch]
        state = {
            "config": self.config,
            "config_sha256": self.config_sha256,
            "progress": {"epoch": progress.epoch, "batch": progress.batch, "step": step,
                         "correct": int(progress.correct), "stopped": bool(progress.stopped),
                         "history": progress.history},
            "params": net.params,
            "optimizer": self.optimizer.state_dict(),
            "step_loss": step_loss,
            "rng": {"shuffle": progress.shuffle_rng, "dropout": dropout},
            "callbacks": [cb.state_dict() for cb in self.callbacks],
        }
        if net.mixed:
            state["amp"] = net.loss_scaler.state_dict()
        tensors = {}
        tree = _pack(state, tensors, net.backend.to_numpy)
        for name, a in tensors.items():
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                where = (f"step {step} (epoch {progress.epoch + 1}, batch {progress.batch} of {n})"
                         if progress.batch else f"step {step} (the end of epoch {progress.epoch})")
                raise TrainingError(
                    f"{name} became NaN or infinite by {where}; training stopped without "
                    f"writing a checkpoint ({self.kept()})"
                )
        path = os.path.join(self.directory, f"{PREFIX}{step:09d}{SUFFIX}")
        try:
            _write(path, tree, tensors)
        except TypeError as exc:  # e.g. a callback's state or a history value
            raise ConfigError(f"cannot write checkpoint {path}: {exc}") from None
        for _, old in list_checkpoints(self.directory)[: -self.keep]:
            os.unlink(old)
        return path

    def kept(self):
        """The words naming the last good checkpoint, for a TrainingError."""
        return f"the last good checkpoint is {self.last}" if self.last else "no checkpoint was written yet"
