"""Data parallelism: the N ranks of an MPI job train one network as one process would.

    mpiexec -n 2 gpudnn train --distributed ...              # the command line
    dp = gpudnn.distributed.DataParallel()                   # a script run under mpiexec
    net.fit(X, y, epochs=10, batch_size=256, distributed=dp)

Letters: N ranks, r = 0..N-1 this rank, B the global batch size (what one process would
use), b_r the columns of it that rank r computes (Σ_r b_r = B), P the number of parameters.

**Sharding.** Every rank holds the whole training set and draws the same permutation each
epoch (from ``net.seed``). Of each global batch of sample indices (B,) rank r takes the
contiguous slice [⌊rB/N⌋, ⌊(r+1)B/N⌋): shards differ by at most one column, and a shard is
empty when B < N (a short last batch).

**One all-reduce per step.** A rank's forward/backward gives the mean gradient of its shard,
g_r (the engine applies 1/b_r to δ^L, its one place for the batch mean). The step needs the
mean over the global batch,

    g = (1/B) Σ_r Σ_{i in shard r} ∇J_i = Σ_r (b_r/B) g_r,

so each rank scales its flat buffer ``net.grads``: (P,) once by b_r/B and one in-place
all-reduce (sum) of that buffer leaves g on every rank: the sum of per-sample gradients,
scaled once by 1/B, as one process computes it. (Scaling after the sum cannot weight
uneven shards; scaling before costs the same single pass over P.) Every rank then applies
the same optimizer step to the same g, so the weights stay identical; ``fit`` checks that
they are bit for bit at the end.

**With fit's other features.** Clipping sees the all-reduced gradient; micro-batches
split each shard; callbacks and schedules run on every rank and see the same epoch logs
(global loss, validation on every rank), so early stopping stops every rank alike; batch
logs describe this rank's shard (size 0 and loss 0 when it is empty). Dropout masks are
drawn per rank from its own stream (:func:`rank_dropout_stream`).

**Losses.** Each rank keeps its shard's loss sum per step on its device; once per epoch one
small all-reduce adds them over the ranks, together with the count of correct predictions,
so the history, the printed lines and the NaN check are those of one process.

**Agreement.** Before the first step the ranks compare notes (:meth:`DataParallel.agree`):
gpudnn version, the network's config and seed, its initial weights, the optimizer, every
fit setting and the shape, dtype and a digest of X, y and the validation data. Any
difference, or an error on any rank before that point, stops every rank with the same
:class:`~gpudnn.errors.DistributedError` naming the ranks and values.

**Faults.** Once training runs, the peers of a failing rank wait inside a collective, so an
exception on one rank prints its traceback and aborts the job (``MPI_Abort``). Errors every
rank raises alike (gpudnn's own checks on agreed inputs, a NaN loss, which is all-reduced)
are raised normally on every rank. A rank that dies is noticed by ``mpiexec``, which ends
the job. Every collective also waits at most ``timeout`` seconds, then aborts the job, so
a rank that is stuck cannot hang the others forever. Uncaught exceptions in a script abort
the job too (``sys.excepthook``).

**Output.** Only rank 0 (``is_root``) prints and writes files: the CLI writes the model,
history and plot there.

**Checkpoints** (``fit(checkpoint=...)``): rank 0 alone makes, cleans, reads, writes and
prunes the directory, through :meth:`DataParallel.on_root` (its result or its error reaches
every rank by one broadcast); on resume every rank parses the bytes rank 0 read. A
mid-epoch checkpoint holds the loss sums and correct count summed over the ranks (the
epoch's reduction, done early on a copy), which rank 0 alone takes back on resume; the
dropout state is every rank's (:meth:`DataParallel.gather`); the configuration holds the
rank count, and a resume by another count is refused naming both.

**Overlap** of the all-reduce with the backward pass (buckets of the flat buffer) is not
built: on CPUs sharing their cores between compute and MPI it cannot pay, as
docs/distributed.md measures; it also says where the hook would go.

**GPU.** With CuPy and CUDA devices, each rank uses the GPU (its rank on the node mod the
GPU count) and the gradient all-reduce goes through NCCL (``cupyx.distributed``) where
every rank has a GPU of its own and CuPy finds an NCCL library, else through MPI on a host
copy of the gradients (two copies a step; rank 0 warns why). fit chooses before its first
step, alike on every rank. The agreement and the per-epoch sums go through MPI on the host.
NCCL calls have no timeout. Not yet run on a GPU: no GPU was available when it was written.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import time
import traceback
import warnings

import numpy as np

from . import errors
from .data import on_host
from .errors import ConfigError, DistributedError, GpudnnError
from .optim import Optimizer, _check_number

DEFAULT_TIMEOUT = 300.0  # seconds a rank waits in one collective before the job is aborted


def mpi_status():
    """(mpi4py's MPI module, "") when MPI is usable here, else (None, the reason)."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as exc:  # RuntimeError: mpi4py without an MPI library
        return None, (f"mpi4py or an MPI library is missing ({exc}); install them with "
                      "`pip install gpudnn[dist]`")
    return MPI, ""


def launched_ranks():
    """The number of processes an MPI launcher started alongside this one, read from the
    environment it sets (MPICH's and Intel MPI's PMI_SIZE, Open MPI's OMPI_COMM_WORLD_SIZE),
    without starting MPI; 1 when none did."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def shard_bounds(B, r, N):
    """(lo, hi): rank r's slice [lo, hi) of a global batch of B columns split over N ranks."""
    return B * r // N, B * (r + 1) // N


# --- what is raised alike on every rank ------------------------------------------------------
FIRST_STEP = "the first step of fit"  # where the ranks agree that training starts


def _on_every_rank(exc):
    """Mark ``exc`` as raised alike on every rank (so no rank needs to abort the job)."""
    exc.gpudnn_on_every_rank = True
    return exc


def raised_on_every_rank(exc):
    """True for an exception every rank of the job raised alike."""
    return getattr(exc, "gpudnn_on_every_rank", False)


def _describe(exc):
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}".rstrip(": ")


# --- notes the ranks compare ------------------------------------------------------------------
def _digest(a):
    """{"shape", "dtype", "blake2b"} of an array-like (by value; object arrays by repr);
    {"type": name} for what is not one."""
    try:
        a = np.asarray(a)
        if a.dtype.kind == "O" and a.ndim == 0:  # not an array: its repr may hold an address
            raise TypeError
        data = (repr(a.tolist()).encode() if a.dtype.kind == "O"
                else np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    except Exception:
        return {"type": type(a.item() if isinstance(a, np.ndarray) else a).__name__}
    return {"shape": list(a.shape), "dtype": a.dtype.str,
            "blake2b": hashlib.blake2b(data, digest_size=16).hexdigest()}


def _summary(value):
    """A JSON-able stand-in of a fit argument, equal on two ranks when the values are."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Optimizer):
        return {"optimizer": repr(value), "steps taken": value.t}
    if isinstance(value, (tuple, list)):
        return [_digest(v) for v in value]  # validation_data: (X_val, y_val)
    return {"type": type(value).__name__}  # e.g. a callback: only its kind can be compared


def fingerprint(net, X, y, settings):
    """The facts every rank must agree on before a fit: {name: JSON-able}, causes before
    consequences (a different seed is named before the weights it draws)."""
    from . import __version__

    host = net.backend.to_numpy
    facts = {"gpudnn version": __version__, "backend": net.backend.name}
    facts.update((f"network {k}", v) for k, v in net.config().items())
    facts.update((k, _summary(v)) for k, v in settings.items() if k != "verbose")  # rank-local
    if net.scaler is not None:
        facts["scaler"] = [_digest(net.scaler.mean), _digest(net.scaler.scale)]
    facts["X"] = _digest(on_host(X, "X"))  # (a CuPy array's digest is its values', whatever the backend)
    facts["y"] = _digest(on_host(y, "y"))
    facts["initial weights"] = _digest(host(net.params))
    return facts


def _show(value):
    if isinstance(value, dict) and "blake2b" in value:
        return f"{value['dtype']} {tuple(value['shape'])} #{value['blake2b'][:8]}"
    return json.dumps(value, default=str)


def _ranks(rs):
    return f"rank {rs[0]}" if len(rs) == 1 else "ranks " + ",".join(map(str, rs))


def disagreement(notes):
    """What is wrong with the ranks' notes [{"at", "facts", "error"}, ...] (one per rank,
    by rank), or None when they agree."""
    N = len(notes)
    failed = [r for r, n in enumerate(notes) if n["error"]]
    if failed:
        r = failed[0]
        also = f" (and {_ranks(failed[1:])})" if len(failed) > 1 else ""
        return f"rank {r} of {N} failed{also}: {notes[r]['error']}"
    places = sorted({n["at"] for n in notes})
    if len(places) > 1:
        where = "; ".join(f"{_ranks([r for r, n in enumerate(notes) if n['at'] == at])} at the "
                          f"{at}" for at in places)
        return f"the {N} ranks are out of step: {where}"
    diffs = []
    keys = dict.fromkeys(k for n in notes for k in n["facts"])  # rank 0's order first
    for key in keys:
        values = [json.dumps(n["facts"].get(key), sort_keys=True) for n in notes]
        if len(set(values)) > 1:
            groups = {}
            for r, v in enumerate(values):
                groups.setdefault(v, []).append(r)
            diffs.append(f"{key} (" + "; ".join(
                f"{_ranks(rs)}: {_show(json.loads(v))}" for v, rs in groups.items()) + ")")
    if diffs:
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        return (f"the {N} ranks disagree at the {places[0]} on " + ", ".join(diffs[:3]) + more
                + "; every rank must run the same program with the same settings and data")
    return None


# --- the hooks fit calls ----------------------------------------------------------------------
class SingleProcess:
    """The hooks ``gpudnn.train.fit`` calls around each step, for one process alone.

    :class:`DataParallel` implements the same three for N ranks: ``shard`` (this rank's
    part of a global batch), ``reduce_gradients`` (the global batch's mean gradient, before
    the optimizer step) and ``reduce_epoch`` (the epoch's sums over the ranks).
    """

    rank, size, is_root = 0, 1, True

    def shard(self, batch):
        """The columns this process computes of a global batch: batch (B,) -> (b_r,)."""
        return batch

    def reduce_gradients(self, net):
        """Make ``net.grads``: (P,) the gradient of the whole global batch (here it is)."""

    def reduce_epoch(self, net, step_loss, correct):
        """The epoch's per-step loss sums step_loss: (n_steps,) float64 on net's device and
        the correct-prediction count, summed over the ranks (here: as they are)."""
        return step_loss, correct

    def alike(self, exc):
        """``exc`` as fit raises it after checking what the ranks summed (here: as it is;
        across ranks it is marked raised alike, see DataParallel.alike)."""
        return exc

    # --- what checkpoints need: rank 0 works on files, every rank learns the outcome -------
    def on_root(self, fn, what, raw=False):
        """``fn()`` run on rank 0 alone, its result (JSON-able; bytes with ``raw``) returned
        on every rank; an exception it raises is raised on every rank alike."""
        return fn()

    def gather(self, data):
        """[bytes of rank 0, of rank 1, ...]: every rank's ``data``, on every rank."""
        return [data]


SINGLE_PROCESS = SingleProcess()


class DataParallel(SingleProcess):
    """This rank's part in data-parallel training over an MPI communicator.

    Parameters
    ----------
    comm : mpi4py communicator, default ``MPI.COMM_WORLD``
    timeout : float
        Seconds any collective may wait for the other ranks; then the job is aborted.
    device : "auto" or None
        "auto": where CuPy sees CUDA devices, make this rank's GPU (its rank on the node mod
        the GPU count) the current device — create the DataParallel before the Network.
        None: leave the device alone; use it for a NumPy job on a node with GPUs (making a
        device current creates its CUDA context, some hundreds of MB of GPU memory a rank).

    Use: ``net.fit(..., distributed=dp)``; ``dp.is_root`` says whether this rank prints and
    writes files; ``with dp.guard(): ...`` around the rest of a script makes a failure on
    one rank before or after fit stop every rank alike.
    """

    def __init__(self, comm=None, *, timeout=DEFAULT_TIMEOUT, device="auto"):
        MPI, reason = mpi_status()
        if MPI is None:
            raise ConfigError(f"distributed training needs MPI: {reason}")
        if device not in ("auto", None):
            raise ConfigError(f"device must be 'auto' or None, got {device!r}")
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.is_root = self.rank == 0
        self.timeout = _check_number("timeout", timeout, low_open=True)
        self._weight = 1.0  # b_r / B of the last shard
        self._stepping = False  # whether fit has taken its first step
        self._nccl = None  # the NCCL communicator, when fit chose it (``_choose_gpu_route``)
        self.gpu_route = None  # on GPUs: "nccl" or "host" (MPI on a host copy), chosen by fit
        self._host_grads = None  # the host route's copy of the gradients
        local_rank = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()  # collective
        if device == "auto":
            _use_gpu(local_rank)
        _abort_on_uncaught_exceptions(self)

    def __repr__(self):
        return f"DataParallel(rank {self.rank} of {self.size}, timeout={self.timeout:g} s)"

    def alike(self, exc):
        """``exc``, marked as raised alike on every rank (fit's checks of what the ranks
        summed): to be raised normally, not to abort the job."""
        return _on_every_rank(exc)

    # --- the step hooks ------------------------------------------------------------------
    def shard(self, batch):
        """This rank's slice of a global batch, batch (B,) -> (b_r,), see shard_bounds;
        remembers b_r / B, its weight in the batch mean, for ``reduce_gradients``."""
        if not self._stepping:  # fit's first step: every rank got here, or all learn who did not
            self.agree(FIRST_STEP)
            self._stepping = True  # from now on a gpudnn error may be this rank's alone
        B = batch.shape[0]
        lo, hi = shard_bounds(B, self.rank, self.size)
        self._weight = (hi - lo) / B
        return batch[lo:hi]

    def reduce_gradients(self, net):
        """net.grads: (P,) ← Σ_r (b_r/B) g_r, the global batch's mean gradient: one pass
        weights this rank's shard mean g_r, one in-place all-reduce sums over the ranks."""
        if self.size == 1:
            return
        g = net.grads
        g *= self._weight
        if net.backend.name != "cupy":
            self._allreduce(g, "the gradient all-reduce")
        elif self._nccl is not None:
            self._nccl.all_reduce(g, g, "sum")  # on the current stream; no timeout
        else:  # through the host: a copy down, MPI, a copy up
            if self._host_grads is None or self._host_grads.shape != g.shape or self._host_grads.dtype != g.dtype:
                self._host_grads = np.empty(g.shape, g.dtype)
            g.get(out=self._host_grads)
            self._allreduce(self._host_grads, "the gradient all-reduce")
            g.set(self._host_grads)

    def reduce_epoch(self, net, step_loss, correct):
        """Sum the per-step loss sums step_loss: (n_steps,) (float64, on net's device) and
        the correct count over the ranks: one small all-reduce per epoch."""
        host = np.empty(step_loss.shape[0] + 1)
        host[:-1] = net.backend.to_numpy(step_loss)
        host[-1] = float(correct)
        self._allreduce(host, "the epoch's loss sums")
        step_loss[...] = net.backend.asarray(host[:-1])
        return step_loss, host[-1]

    def on_root(self, fn, what, raw=False):
        """``fn()`` run on rank 0 alone, its result (JSON-able; bytes with ``raw``) sent to
        every rank. An exception there is raised on every rank alike: one of gpudnn's as
        the same type and message, any other as a DistributedError naming it and ``what``."""
        error = None
        if self.is_root:
            try:
                result = fn()
                payload = b"R" + (bytes(result) if raw else json.dumps(result).encode())
            except Exception as exc:
                error = exc
                payload = b"E" + json.dumps([type(exc).__name__, str(exc)]).encode()
        payload = self._broadcast(payload if self.is_root else None, what)
        if payload[:1] == b"R":
            return result if self.is_root else payload[1:] if raw else json.loads(payload[1:])
        name, message = json.loads(payload[1:])
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, GpudnnError):
            raise _on_every_rank(error if self.is_root else cls(message))
        raise _on_every_rank(DistributedError(
            f"rank 0 of {self.size} failed {what} ({name}: {message})")) from error

    def gather(self, data, what="the agreement"):
        """[bytes of rank 0, of rank 1, ...]: every rank's ``data``, on every rank."""
        lengths = np.empty(self.size, np.int64)
        self._wait(self.comm.Iallgather(np.array([len(data)], np.int64), lengths), what)
        rows = np.zeros((self.size, max(int(lengths.max()), 1)), np.uint8)
        send = np.zeros(rows.shape[1], np.uint8)
        send[: len(data)] = np.frombuffer(data, np.uint8)
        self._wait(self.comm.Iallgather(send, rows), what)
        return [row[:n].tobytes() for row, n in zip(rows, lengths)]

    # --- fit ---------------------------------------------------------------------------------
    def fit(self, fit, net, X, y, **settings):
        """Run ``fit`` (:func:`gpudnn.train.fit`) as this rank's part of one training.

        The ranks agree first (or every rank raises the same error); errors of fit every
        rank raises alike propagate, any other aborts the job; at the end the ranks check
        that their weights are identical. Non-root ranks run with verbose=0.
        """
        try:
            facts = fingerprint(net, X, y, settings)
        except Exception as exc:
            self.agree("start of fit", error=exc)
        self.agree("start of fit", facts)
        if settings.get("shuffle", True) and net.seed is None:
            raise _on_every_rank(ConfigError(
                "distributed training shuffles alike on every rank from net.seed, which is "
                "None; give the Network a seed"))
        if not self.is_root:
            settings["verbose"] = 0
        if any(getattr(net, "dropout", ())):
            rank_dropout_stream(net, self.rank)
        if net.backend.name == "cupy" and self.size > 1:
            self._choose_gpu_route()
        self._stepping = False
        try:
            history = fit(net, X, y, distributed=self, **settings)
        except GpudnnError as exc:
            # raised alike on every rank when marked so (the all-reduced loss, rank 0's file
            # work). Before the first step the peers wait for this rank in that step's
            # agreement (``shard``): it joins them there with its error, and every rank raises
            # the same one (one rank out of memory while copying the data, say). After it,
            # any other (a callback's on one rank) would leave the peers waiting in a
            # collective: it aborts the job
            if raised_on_every_rank(exc):
                raise
            if self._stepping:
                self.abort(exc)
            self.agree(FIRST_STEP, error=exc)
            raise _on_every_rank(exc)
        except BaseException as exc:
            self.abort(exc)
        self.agree("end of fit", {"weights": _digest(net.backend.to_numpy(net.params))})
        return history

    # --- agreement, guard, abort -------------------------------------------------------------
    def agree(self, at, facts=None, error=None):
        """Compare notes with every rank: all return, or all raise the same error.

        at: where this rank is (ranks at different places are out of step); facts: {name:
        JSON-able} every rank must have equal; error: the exception this rank stopped with,
        reported to all. When every rank failed with the same error, each raises its own
        (the original type); else every rank raises the same DistributedError.
        """
        mine = {"at": at, "facts": facts or {}, "error": None if error is None else _describe(error)}
        notes = self._allgather_json(mine)
        problem = disagreement(notes)
        if problem is None:
            return
        if error is not None and all(n["error"] == mine["error"] for n in notes):
            raise _on_every_rank(error)
        raise _on_every_rank(DistributedError(problem)) from error

    @contextlib.contextmanager
    def guard(self, what="job"):
        """Run a block every rank runs (e.g. reading data, evaluating, saving): an exception
        on some ranks is reported to all at the next agreement (the peers' next ``agree``,
        or the one this guard makes at its end), and every rank raises the same error."""
        try:
            yield self
        except BaseException as exc:
            if not raised_on_every_rank(exc):
                self.agree(f"end of the {what}", error=exc)
            raise
        self.agree(f"end of the {what}")

    def abort(self, exc, status=1):
        """Print one line naming this rank and ``exc``, then its traceback, then end every
        rank of the job with ``status``. Alone (N = 1) it just raises ``exc``."""
        if self.size == 1:
            raise exc
        print(f"gpudnn: rank {self.rank} of {self.size} failed ({_describe(exc)}); "
              "aborting every rank", file=sys.stderr, flush=True)
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        _abort(self.comm, status)

    # --- collectives with a timeout ----------------------------------------------------------
    def _wait(self, request, what):
        """Complete a non-blocking collective, or abort the job after ``timeout`` seconds."""
        deadline = time.monotonic() + self.timeout
        while not request.Test():
            if time.monotonic() > deadline:
                self.abort(DistributedError(
                    f"{what} waited {self.timeout:g} s for the other ranks; one is stuck or gone"))

    def _allreduce(self, buf, what):
        """buf ← Σ over the ranks of buf (a contiguous host array), in place."""
        if self.size > 1:
            self._wait(self.comm.Iallreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM), what)

    def _allgather_json(self, obj):
        """[obj of rank 0, obj of rank 1, ...] for a JSON-able obj."""
        return [json.loads(b) for b in self.gather(json.dumps(obj, default=str).encode())]

    def _broadcast(self, data, what):
        """Rank 0's bytes ``data`` on every rank (the others pass None)."""
        n = np.array([len(data) if self.is_root else 0], np.int64)
        self._wait(self.comm.Ibcast(n, root=0), what)
        buf = np.frombuffer(data, np.uint8).copy() if self.is_root else np.empty(int(n[0]), np.uint8)
        if buf.size:
            self._wait(self.comm.Ibcast(buf, root=0), what)
        return data if self.is_root else buf.tobytes()

    def _choose_gpu_route(self):
        """How a CuPy network's gradients are all-reduced, chosen alike on every rank before
        fit's first step (once per DataParallel): NCCL, device to device, where every rank
        can use it, else MPI on a host copy of the gradients (slower: two copies a step),
        with a warning from rank 0 saying why. The communicator is made here, not in the
        first step, so that a set-up failure every rank meets falls back (one on some ranks
        only leaves the others in NCCL's set-up, which has no timeout: this rank's collective
        timeout then aborts the job)."""
        if self.gpu_route is not None:
            return
        why = None if self.comm == self._MPI.COMM_WORLD else "NCCL runs on MPI.COMM_WORLD only"
        why = why or nccl_unusable()
        notes = self._allgather_json({"why": why, "gpu": None if why else gpu_identity()})
        why = next((f"rank {r}: {n['why']}" for r, n in enumerate(notes) if n["why"]), None)
        why = why or shared_gpu([n["gpu"] for n in notes])
        if why is None:  # every rank can: make the communicator (collective)
            error = None
            try:
                from cupyx.distributed import init_process_group

                self._nccl = init_process_group(self.size, self.rank, use_mpi=True)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            failed = [f"rank {r}: NCCL set-up failed ({e})" for r, e in enumerate(self._allgather_json(error)) if e]
            why = failed[0] if failed else None
        if why is not None:
            self._nccl = None
            if self.is_root:
                warnings.warn(f"gradients all-reduced through the host over MPI, not NCCL ({why})", stacklevel=4)
        self.gpu_route = "host" if why else "nccl"


ABORT_GRACE = 0.25  # seconds for mpiexec to forward a failing rank's last words


def _abort(comm, status):
    """MPI_Abort, then leave at once. Never returns.

    Output is flushed and given ABORT_GRACE to reach mpiexec first: it stops forwarding
    when it tears the job down (seen: tracebacks cut off). MPICH's MPI_Abort returns while
    that happens, and a rank that ran on would meet its peers' collectives in the wrong
    order (seen: garbage agreement lengths), hence os._exit.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(ABORT_GRACE)
    comm.Abort(status)
    os._exit(status)


def rank_dropout_stream(net, rank):
    """Give this rank dropout masks of its own: the network's mask generator seeded from
    (seed, stream, rank), made once per network. With the shared generator every rank would
    draw the same masks for its shard. (So a run with dropout is not the single-process
    run: its masks are drawn per shard, independently.)"""
    from .network import DROPOUT_STREAM

    if getattr(net, "_dropout_rank", None) != rank:
        seed = np.random.SeedSequence([net.seed, DROPOUT_STREAM, rank]).generate_state(1)[0]
        net._dropout_rng = net.xp.random.default_rng(int(seed))  # CuPy's takes an int
        net._dropout_rank = rank


def nccl_unusable():
    """Why this rank cannot use NCCL, or None where it can: no usable CuPy, or CuPy
    without an NCCL library."""
    from .backend import cupy_status

    cupy, reason = cupy_status()
    if cupy is None:
        return f"no GPU backend ({reason})"
    try:
        from cupy.cuda import nccl
    except Exception as exc:
        return f"CuPy's NCCL module failed to load ({type(exc).__name__}: {exc})"
    if not nccl.available:
        return "CuPy finds no NCCL library (install it, e.g. pip install nvidia-nccl-cu12 for CUDA 12)"
    return None


def gpu_identity():
    """This rank's GPU, the same text on every rank that uses it: "host PCI-bus-id" (device
    numbers differ between ranks given their own CUDA_VISIBLE_DEVICES)."""
    import socket

    from .backend import cupy_status

    cupy, _ = cupy_status()
    return f"{socket.gethostname()} {cupy.cuda.Device().pci_bus_id}"


def shared_gpu(gpus):
    """Why NCCL cannot run ranks on these GPUs (gpus[r]: rank r's ``gpu_identity``): two
    ranks on one GPU, which NCCL refuses; or None."""
    first = {}
    for r, gpu in enumerate(gpus):
        if gpu in first:
            return f"ranks {first[gpu]} and {r} share the GPU {gpu}; NCCL takes one rank per GPU"
        first[gpu] = r
    return None


def _use_gpu(local_rank):
    """Make GPU local_rank mod count current, where CuPy sees CUDA devices (UNTESTED)."""
    from .backend import cupy_status

    cupy, _ = cupy_status()
    if cupy is not None:
        cupy.cuda.Device(local_rank % cupy.cuda.runtime.getDeviceCount()).use()


def _abort_on_uncaught_exceptions(dp):
    """An uncaught exception on one rank would leave its peers waiting in a collective:
    after Python prints it, abort the job (unless every rank raised it alike)."""
    previous = sys.excepthook
    if getattr(previous, "gpudnn", False):
        return

    def hook(etype, value, tb):
        previous(etype, value, tb)
        if dp.size > 1 and not raised_on_every_rank(value):
            _abort(dp.comm, 1)

    hook.gpudnn = True
    sys.excepthook = hook


def distributable(fit):
    """Decorator of :func:`gpudnn.train.fit`: ``distributed=dp`` (a DataParallel) runs it
    as this rank's part of a data-parallel fit (:meth:`DataParallel.fit`); without, it is
    called as it is and uses the single-process hooks."""

    @functools.wraps(fit)
    def run(net, X, y, *, distributed=None, **settings):
        if distributed is None:
            return fit(net, X, y, **settings)
        if not isinstance(distributed, DataParallel):
            raise ConfigError(f"distributed must be a gpudnn.distributed.DataParallel or None, "
                              f"got {distributed!r}")
        return distributed.fit(fit, net, X, y, **settings)

    return run
