"""Can the gradient all-reduce run while a rank computes? (docs/distributed.md, "Overlap")

    mpiexec -n 2 .venv/bin/python scripts/overlap_probe.py
    MPIR_CVAR_ASYNC_PROGRESS=1 mpiexec -n 2 .venv/bin/python scripts/overlap_probe.py

For networks [784, W, W, 10] (float32) at b columns per rank it times, best of 15 each:
compute (forward + backward), allreduce (one blocking all-reduce of P floats), sequential
(the two in turn, what gpudnn does) and overlapped (a non-blocking all-reduce posted before
the compute and waited for after it: the most overlap bucketing could ever give).
"""

import time

import numpy as np
from mpi4py import MPI

import gpudnn

CONFIGS = ((1024, 64), (2048, 16), (2048, 64))  # (W, b)


def best_ms(comm, f, repeats=15):
    times = []
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def probe(comm, W, b):
    rng = np.random.default_rng(0)
    net = gpudnn.Network([784, W, W, 10], dtype="float32", backend="numpy", seed=0)
    A0 = rng.normal(size=(784, b)).astype(np.float32)
    Y = np.eye(10, dtype=np.float32)[:, rng.integers(0, 10, b)]
    g = net.grads

    def compute():
        net._forward_backward(A0, Y)

    def allreduce():
        comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)

    def sequential():
        compute()
        allreduce()

    def overlapped():
        request = comm.Iallreduce(MPI.IN_PLACE, g, op=MPI.SUM)
        compute()
        request.Wait()

    return {f.__name__: best_ms(comm, f) for f in (compute, allreduce, sequential, overlapped)}


def main():
    comm = MPI.COMM_WORLD
    for W, b in CONFIGS:
        ms = probe(comm, W, b)
        if comm.rank == 0:
            print(f"W {W} b {b}: " + "  ".join(f"{k} {v:.2f} ms" for k, v in ms.items()), flush=True)


if __name__ == "__main__":
    main()
