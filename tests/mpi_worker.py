"""One rank of the MPI test jobs of ``test_distributed.py``, run as

    mpiexec -n N python tests/mpi_worker.py SCENARIO OUT_DIR

fit        data-parallel fit of ``problem()`` (env GPUDNN_TEST_BATCH, _BACKEND, _VARIANT);
           rank 0 writes OUT_DIR/params.npy, history.json
raise      rank 1 raises in the middle of training (its optimizer's 3rd step)
kill       rank 1 kills itself with SIGKILL there
disagree   rank 1 uses another batch size; every rank writes its error to OUT_DIR/rank{r}.txt
fail-early rank 1 fails reading its data before fit; errors written likewise
"""

import json
import os
import signal
import sys

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


def main(scenario, out):
    dp = DataParallel(timeout=120)  # before the Network: it picks this rank's GPU
    if scenario == "fit":
        net, X, y, settings = problem(int(os.environ.get("GPUDNN_TEST_BATCH", BATCH)),
                                      os.environ.get("GPUDNN_TEST_BACKEND", "numpy"),
                                      os.environ.get("GPUDNN_TEST_VARIANT", "sgd"))
        history = net.fit(X, y, distributed=dp, **settings)
        if dp.is_root:
            np.save(os.path.join(out, "params.npy"), net.backend.to_numpy(net.params))
            with open(os.path.join(out, "history.json"), "w") as f:
                json.dump(history, f)
        return 0
    net, X, y, settings = problem()
    if scenario in ("raise", "kill"):
        settings["optimizer"] = FaultAfter(3, scenario, dp.rank)
        net.fit(X, y, distributed=dp, **settings)
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
