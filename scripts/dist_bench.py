"""Time data-parallel training steps: the numbers behind docs/distributed.md.

    mpiexec -n 2 .venv/bin/python scripts/dist_bench.py --out two.json    # N = 2 ranks
    .venv/bin/python scripts/dist_bench.py --out one.json                 # N = 1

For each network [784, W, W, 10] (float32) and global batch B it reports, on rank 0:

    step_ms       a whole training step of ``net.fit`` (epoch time / steps, best epoch):
                  gather, forward, backward, the all-reduce, the SGD update
    compute_ms    forward + backward of this rank's shard (B/N columns) alone
    allreduce_ms  the gradient all-reduce alone (weighting + one all-reduce of P floats)

each the best of a few repeats (the machine is shared: minima are the least disturbed).
BLAS threads are whatever the environment gives (OMP_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import gpudnn
from gpudnn.distributed import DataParallel

WIDTHS = (256, 1024, 2048)
BATCHES = (32, 128, 512)


def best_ms(f, repeats, comm):
    best = float("inf")
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def measure(dp, W, B, steps, repeats):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(B * steps, 784))
    y = rng.integers(0, 10, B * steps)
    net = gpudnn.Network([784, W, W, 10], dtype="float32", backend="numpy", seed=0)
    history = net.fit(X, y, epochs=repeats + 1, batch_size=B, verbose=0,
                      optimizer=gpudnn.optim.SGD(lr=1e-3), distributed=dp)
    step = min(history["time"][1:]) / steps * 1e3  # the first epoch warms up
    lo, hi = (B * dp.rank // dp.size, B * (dp.rank + 1) // dp.size)
    A0 = np.ascontiguousarray(X[lo:hi].T, dtype=np.float32)
    Y = np.eye(10, dtype=np.float32)[:, y[lo:hi]]
    net._forward_backward(A0, Y)
    compute = best_ms(lambda: net._forward_backward(A0, Y), repeats * 3, dp.comm)
    dp.shard(np.arange(B))
    allreduce = best_ms(lambda: dp.reduce_gradients(net), repeats * 3, dp.comm)
    return {"W": W, "B": B, "P": net.n_params, "ranks": dp.size, "step_ms": step,
            "compute_ms": compute, "allreduce_ms": allreduce}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="write the rows as JSON here (rank 0)")
    p.add_argument("--steps", type=int, default=8, help="steps per epoch")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    dp = DataParallel()
    rows = []
    for W in WIDTHS:
        for B in BATCHES:
            row = measure(dp, W, B, args.steps, args.repeats)
            rows.append(row)
            if dp.is_root:
                print("  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in row.items()), flush=True)
    if dp.is_root and args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
