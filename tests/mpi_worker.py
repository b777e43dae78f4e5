"""One rank of the MPI test jobs of ``test_distributed.py``, run as

    mpiexec -n N python tests/mpi_worker.py SCENARIO OUT_DIR

fit        data-parallel fit of ``problem()`` (env GPUDNN_TEST_BATCH, _BACKEND, _VARIANT,
           _DATA_ON_DEVICE: "yes" or "no" for fit's data_on_device True or False, else "auto";
           _NAN as for checkpoint); rank 0 writes OUT_DIR/params.npy, history.json, an error
           raised alike: every rank writes it to OUT_DIR/rank{r}.txt
raise      rank 1 raises in the middle of training (its optimizer's 3rd step)
kill       rank 1 kills itself with SIGKILL there
save-fails rank 0 alone saves the model after each epoch (a callback), to a missing folder:
           a gpudnn error (ModelFileError) on one rank only, in the middle of training
disagree   rank 1 uses another batch size; every rank writes its error to OUT_DIR/rank{r}.txt
fail-early rank 1 fails reading its data before fit; errors written likewise
checkpoint the fit of ``problem()`` (env GPUDNN_TEST_VARIANT) with checkpoints in OUT_DIR/ckpt,
           resumed from there; env GPUDNN_TEST_KILL="r:k": rank r SIGKILLs itself at its
           k-th optimizer step of this run; GPUDNN_TEST_NAN="r:k": rank r's loss of its
           k-th batch is NaN (its gradient stays finite). Any rank but 0 that writes, makes or removes a
           file prints "forbidden write" and fails; rank 0 writes params.npy, history.json
           when done; an error before training: every rank writes it to OUT_DIR/rank{r}.txt
"""

import builtins
import json
import os
import signal
import sys
import traceback

import numpy as np

import gpudnn
from gpudnn.distributed import DataParallel

# float64, 45 samples in global batches of 8: the last batch has 5 columns (3 + 2 on 2
# ranks, uneven); batch_size 4 on 5 ranks and the like gives empty shards
SAMPLES, BATCH, EPOCHS = 45, 8, 3


def problem(batch_size=BATCH, backend="numpy", variant="sgd"):
    """(network, X, y, fit settings) of the equivalence tests, the same on every rank.

    sgd: momentum, weight decay, validation data. features: main's fit features on top —
    Adam on a cosine schedule, micro-batches, gradient clipping, a validation split, early
    stopping. dropout: the features and dropout (not comparable with one process).
    """
    rng = np.random.default_rng(7)
    X = rng.normal(size=(SAMPLES, 5))
    y = rng.integers(0, 3, SAMPLES)
    net = gpudnn.Network([5, 16, 8, 3], activation="tanh", dtype="float64", backend=backend,
                         seed=3, dropout=0.2 if variant == "dropout" else 0.0)
    if variant == "sgd":
        opt = gpudnn.optim.SGD(lr=0.1, momentum=0.9, weight_decay=1e-3)
        return net, X, y, dict(epochs=EPOCHS, batch_size=batch_size, optimizer=opt, verbose=0,
                               standardize=True, validation_data=(X[:10], y[:10]))
    steps = -(-36 // batch_size) * EPOCHS
    opt = gpudnn.optim.Adam(lr=gpudnn.schedules.CosineDecay(0.01, steps, 1e-3))
    return net, X, y, dict(epochs=EPOCHS, batch_size=batch_size, optimizer=opt, verbose=0,
                           micro_batches=2, clip_norm=0.5, validation_split=0.2,
                           callbacks=[gpudnn.callbacks.EarlyStopping(patience=1)])


class FaultAfter(gpudnn.optim.SGD):
    """SGD whose step number ``t`` on rank 1 raises (``how="raise"``) or SIGKILLs the process."""

    def __init__(self, t, how, rank):
        super().__init__(lr=0.1)
        self.fault_at, self.how, self.rank = t, how, rank

    def _update(self, params, grads, xp, lr):
        if self.rank == 1 and self.t == self.fault_at:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("injected fault on rank 1")
        super()._update(params, grads, xp, lr)


def kill_at(opt, k):
    """SIGKILL this process instead of ``opt``'s k-th step of this run (its repr, part of
    the checkpoint's configuration, unchanged)."""
    step, calls = opt.step, iter(range(1, 1 << 30))

    def killing(*args, **kw):
        if next(calls) == k:
            os.kill(os.getpid(), signal.SIGKILL)
        step(*args, **kw)

    opt.step = killing


def nan_at(net, k):
    """Make the loss of this rank's k-th batch NaN."""
    forward_backward, calls = net._forward_backward, iter(range(1, 1 << 30))

    def nan_loss(*args, **kw):
        loss = forward_backward(*args, **kw)
        return loss * np.nan if next(calls) == k else loss

    net._forward_backward = nan_loss


def nan_on_rank(dp, net):
    """env GPUDNN_TEST_NAN="r:k": rank r's loss of its k-th batch is NaN (nan_at)."""
    nan = os.environ.get("GPUDNN_TEST_NAN")
    if nan and dp.rank == int(nan.split(":")[0]):
        nan_at(net, int(nan.split(":")[1]))


REAL_OPEN = builtins.open


def forbid_writes(rank):
    """Make every way gpudnn could write, make or remove a file fail loudly on this rank."""

    def refuse(name, real, writes=lambda *a, **kw: True):
        def check(*args, **kw):
            if writes(*args, **kw):
                print(f"forbidden write on rank {rank}: {name}{args}", file=sys.stderr, flush=True)
                traceback.print_stack()
                raise PermissionError(f"rank {rank} may not {name} {args[0]!r}")
            return real(*args, **kw)
        return check

    for name in ("makedirs", "mkdir", "unlink", "remove", "replace", "rename", "rmdir"):
        setattr(os, name, refuse(name, getattr(os, name)))
    os.open = refuse("open", os.open, lambda path, flags, *a, **kw: flags & (
        os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    builtins.open = refuse("open", REAL_OPEN, lambda file, mode="r", *a, **kw: any(
        c in mode for c in "wax+"))


def checkpointed(dp, out):
    """The ``checkpoint`` scenario."""
    net, X, y, settings = problem(variant=os.environ.get("GPUDNN_TEST_VARIANT", "sgd"))
    settings.update(checkpoint=os.path.join(out, "ckpt"), checkpoint_every=2, keep_checkpoints=2,
                    resume=True)
    kill = os.environ.get("GPUDNN_TEST_KILL")
    if kill and dp.rank == int(kill.split(":")[0]):
        kill_at(settings["optimizer"], int(kill.split(":")[1]))
    nan_on_rank(dp, net)
    if not dp.is_root:
        forbid_writes(dp.rank)
    history = fit_or_report(net, X, y, dp, settings, out, REAL_OPEN)
    if history is None:
        return 3
    if dp.is_root:
        np.save(os.path.join(out, "params.npy"), net.params)
        with open(os.path.join(out, "history.json"), "w") as f:
            json.dump({k: v for k, v in history.items() if k != "time"}, f)
    return 0


def fit_or_report(net, X, y, dp, settings, out, opener=open):
    """net.fit's history on this rank, or None after writing the gpudnn error it raised
    (alike on every rank) to <out>/rank<r>.txt with ``opener``."""
    try:
        return net.fit(X, y, distributed=dp, **settings)
    except gpudnn.GpudnnError as exc:
        with opener(os.path.join(out, f"rank{dp.rank}.txt"), "w") as f:
            f.write(f"{type(exc).__name__}: {exc}")
        return None


def main(scenario, out):
    dp = DataParallel(timeout=120)  # before the Network: it picks this rank's GPU
    if scenario == "fit":
        net, X, y, settings = problem(int(os.environ.get("GPUDNN_TEST_BATCH", BATCH)),
                                      os.environ.get("GPUDNN_TEST_BACKEND", "numpy"),
                                      os.environ.get("GPUDNN_TEST_VARIANT", "sgd"))
        where = os.environ.get("GPUDNN_TEST_DATA_ON_DEVICE")
        if where is not None:
            settings["data_on_device"] = {"yes": True, "no": False}.get(where, "auto")
        nan_on_rank(dp, net)
        history = fit_or_report(net, X, y, dp, settings, out)
        if history is None:
            return 3
        if dp.is_root:
            np.save(os.path.join(out, "params.npy"), net.backend.to_numpy(net.params))
            with open(os.path.join(out, "route.txt"), "w") as f:
                f.write(str(dp.gpu_route))  # CuPy's all-reduce route: "nccl" or "host"
            with open(os.path.join(out, "history.json"), "w") as f:
                json.dump(history, f)
        return 0
    if scenario == "checkpoint":
        return checkpointed(dp, out)
    net, X, y, settings = problem()
    if scenario in ("raise", "kill"):
        settings["optimizer"] = FaultAfter(3, scenario, dp.rank)
        net.fit(X, y, distributed=dp, **settings)
        return 0
    if scenario == "save-fails":
        path = os.path.join(out, "missing", "m.safetensors")
        save = gpudnn.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: dp.is_root and net.save(path))
        net.fit(X, y, distributed=dp, callbacks=[save], **settings)
        return 0
    try:
        with dp.guard():
            if scenario == "disagree" and dp.rank == 1:
                settings["batch_size"] = BATCH + 1
            if scenario == "fail-early" and dp.rank == 1:
                gpudnn.data.read_dataset(os.path.join(out, "missing.csv"))
            net.fit(X, y, distributed=dp, **settings)
    except gpudnn.GpudnnError as exc:
        with open(os.path.join(out, f"rank{dp.rank}.txt"), "w") as f:
            f.write(f"{type(exc).__name__}: {exc}")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
