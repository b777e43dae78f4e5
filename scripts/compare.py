"""gpudnn's training step against its GEMM floor, PyTorch eager and scikit-learn, in one process.

    python scripts/compare.py                        # the four issue configurations:
                                                     # benchmarks/results/cpu_compare.{md,json,png}
    python scripts/compare.py --quick                # fewer repeats (a smoke run)
    python scripts/compare.py --scaling --blocks 5 --out benchmarks/results/cpu
                                                     # time per sample vs batch size and width:
                                                     # <out>_scaling.{json,png}, here cpu_scaling.*

Needs PyTorch, scikit-learn and matplotlib for every column and the plots (the test extra;
threadpoolctl, which sets the BLAS threads, comes with scikit-learn); without PyTorch or
scikit-learn their columns read n/a.

Every contender trains the same net (ReLU hidden, softmax + cross-entropy, plain SGD) in
float32 with the same thread count. Timings alternate in *blocks* of runs — a library's idle
BLAS/OpenMP threads spin after its last call and steal cores from whatever runs next, so
interleaving single calls would mislead; the order rotates each round, and each block follows
one untimed call — and each contender's figure is the smallest block
mean (the least disturbed block: these machines are shared; the JSON keeps every block). The GEMM floor is the three GEMMs per layer alone (forward W·A,
dW = δ·Aᵀ, Wᵀ·δ; none for the first layer's δ) with preallocated outputs, in whichever
activation order (C: features x batch, or F) the BLAS runs faster.

Writes <out>.md (a markdown table), <out>.json (every figure, the machine) and <out>.png.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import gpudnn  # noqa: E402
from benchmarks.contenders import GemmFloor, GpudnnStep, TorchStep, available, batch, label, machine  # noqa: E402
from benchmarks.timing import HostClock, measure_together  # noqa: E402

CONFIGS = [
    ([784, 1024, 1024, 10], 1024),
    ([1024, 4096, 4096, 1024], 512),
    ([784, 256, 256, 10], 8192),
    ([64, 128, 10], 256),
]


def sklearn_step(sizes, B, rng):
    """One MLPClassifier SGD step = one partial_fit on one batch (what its users call).

    float32 X, which MLPClassifier keeps (its weights and passes are float32 too). Its
    defaults would add work the other contenders do not do: shuffle=True copies the batch
    (fancy indexing) every call, and Nesterov momentum (on by default) takes a second pass
    over every parameter even at momentum 0; both off, the step is the same SGD on the data
    in place. What stays is partial_fit's own per-call work: its input checks (a scan of X
    for non-finite values), the labels' one-hot encoding and the L2 term (computed even at
    alpha=0) — part of what a scikit-learn user pays per step, mostly visible on small nets.
    """
    from sklearn.neural_network import MLPClassifier

    X = rng.standard_normal((B, sizes[0]), dtype=np.float32)
    y = np.arange(B) % sizes[-1]
    clf = MLPClassifier(hidden_layer_sizes=sizes[1:-1], solver="sgd", momentum=0.0,
                        nesterovs_momentum=False, shuffle=False, learning_rate_init=1e-3,
                        batch_size=B, alpha=0.0)
    classes = np.arange(sizes[-1])
    clf.partial_fit(X, y, classes=classes)
    return functools.partial(clf.partial_fit, X, y)


def contenders(sizes, B, rng, with_sklearn=True):
    c = {"floor_C": GemmFloor(np, sizes, B, order="C"), "floor_F": GemmFloor(np, sizes, B, order="F"),
         "gpudnn": GpudnnStep(sizes, B)}
    if available("torch"):
        c["torch"] = TorchStep(sizes, B)
    if with_sklearn and available("sklearn"):
        c["sklearn"] = sklearn_step(sizes, B, rng)
    return c


# --- timing ------------------------------------------------------------------------------------
def time_blocks(fns, blocks, samples_out=None):
    """{name: the smallest over ``blocks`` of the mean time of one call in a block} (s); the
    contenders take turns block by block (measure_together), each block after an untimed call."""
    m = measure_together(fns, HostClock(), warmup=0, blocks=blocks, block_s=0.25, most=2000, absorb=True)
    samples = {k: [t / 1e3 for t in v["samples_ms"]] for k, v in m.items()}
    if samples_out is not None:
        samples_out.update(samples)
    return {k: min(v) for k, v in samples.items()}


def peak_memory(sizes, B):
    """Peak bytes of a first training step (SGD with momentum: one state buffer): the
    network's flat buffers plus what NumPy allocates during the step (tracemalloc), and
    what the design says it should be."""
    tiny = gpudnn.Network([2, 2, 2], backend="numpy")  # load the compiled kernels first
    tiny.train_step(np.ones((2, 1), np.float32), np.eye(2, dtype=np.float32)[:, :1], gpudnn.optim.SGD())
    net = gpudnn.Network(sizes, backend="numpy", dtype="float32")  # its host-side init is not a step
    A0, Y = batch(np, sizes, B, "float32")  # C order, as the timed steps' and fit's batches
    tracemalloc.start()
    net.train_step(A0, Y, gpudnn.optim.SGD(lr=1e-3, momentum=0.9))
    peak = tracemalloc.get_traced_memory()[1] + net.params.nbytes + net.grads.nbytes
    tracemalloc.stop()
    P, f, wide, nL = net.n_params, 4, max(sizes[1:-1]), sizes[-1]
    formula = {  # what the design says a step needs, in the terms plus what we add
        "parameters x (1 + 1 optimizer state: momentum)": 2 * P * f,
        "one activation tensor per layer (A^1..A^L, and the logits)": (sum(sizes[1:]) + nL) * B * f,
        "delta: (W^l)^T delta^{l+1} scratch (widest hidden layer; delta^l is written over a^l) "
        "and delta^L": (wide + nL) * B * f,
        "extra: the gradients (P; the fused SGD needs no scratch, the generic one adds P)": P * f,
        "extra: sigma' scratch (widest hidden layer; the fused CUDA kernels need none) and the "
        "output layer's two": (wide + 2 * nL) * B * f,
    }
    return peak, formula


# --- reporting -----------------------------------------------------------------------------------
def table(rows):
    head = "| net @ batch | GEMM floor | gpudnn | PyTorch eager | scikit-learn |\n|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        floor = r["floor"]

        def cell(k):
            return f"{r[k] * 1e3:.3f} ms ({r[k] / floor:.2f}x)" if k in r else "n/a"

        lines.append(
            f"| {r['label']} | {floor * 1e3:.3f} ms ({r['floor_order']}) | {cell('gpudnn')} | "
            f"{cell('torch')} | {cell('sklearn')} |"
        )
    return head + "\n".join(lines) + "\n"


def bar_chart(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["gpudnn", "torch", "sklearn"]
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(rows))
    for i, k in enumerate(names):
        vals = [r[k] / r["floor"] if k in r else np.nan for r in rows]
        ax.bar(x + (i - 1) * 0.27, vals, 0.27, label={"torch": "PyTorch eager", "sklearn": "scikit-learn"}.get(k, k))
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="GEMM floor")
    ax.set_xticks(x, [r["label"] for r in rows], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("train step time / GEMM floor (log)")
    ax.set_title("One SGD training step, float32, CPU (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def scaling(args):
    """Time per sample of gpudnn's step and of its floor against batch size and width."""
    out = {"batch": [], "width": []}
    for B in (64, 256, 1024, 4096, 16384):
        t = time_blocks({"gpudnn": GpudnnStep([784, 256, 256, 10], B),
                         "floor": GemmFloor(np, [784, 256, 256, 10], B)}, args.blocks)
        out["batch"].append({"B": B, **{k: v / B for k, v in t.items()}})
        print(f"batch {B:6d}: {t['gpudnn'] / B * 1e6:8.3f} us/sample  (floor {t['floor'] / B * 1e6:.3f})")
    for n in (64, 128, 256, 512, 1024, 2048):
        sizes = [784, n, n, 10]
        t = time_blocks({"gpudnn": GpudnnStep(sizes, 1024), "floor": GemmFloor(np, sizes, 1024)}, args.blocks)
        out["width"].append({"n": n, **{k: v / 1024 for k, v in t.items()}})
        print(f"width {n:5d}: {t['gpudnn'] / 1024 * 1e6:8.3f} us/sample  (floor {t['floor'] / 1024 * 1e6:.3f})")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, x, title in ((a, "batch", "B", "784-256-256-10, batch B"),
                              (b, "width", "n", "784-n-n-10 at B=1024")):
        xs = [r[x] for r in out[key]]
        ax.loglog(xs, [r["gpudnn"] * 1e6 for r in out[key]], "o-", label="gpudnn step")
        ax.loglog(xs, [r["floor"] * 1e6 for r in out[key]], "s--", label="GEMM floor")
        ax.set_xlabel(x)
        ax.set_ylabel("µs per sample")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out + "_scaling.png", dpi=110)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/cpu_compare")
    p.add_argument("--blocks", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--scaling", action="store_true")
    p.add_argument("--no-sklearn", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.blocks = 3
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    limiter = None
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(args.threads)
    except ImportError:
        print("threadpoolctl not installed: thread counts are the libraries' defaults")
    if available("torch"):
        import torch

        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    result = {"machine": machine(), "threads": args.threads, "blocks": args.blocks}
    if args.scaling:
        result["scaling"] = scaling(args)
        with open(args.out + "_scaling.json", "w") as f:
            json.dump(result, f, indent=1)
        return 0
    rows = []
    for sizes, B in CONFIGS:
        blocks = {}
        t = time_blocks(contenders(sizes, B, rng, not args.no_sklearn), args.blocks, blocks)
        order = "C" if t["floor_C"] <= t["floor_F"] else "F"
        peak, formula = peak_memory(sizes, B)
        row = {"label": label(sizes, B), "sizes": sizes, "B": B, "floor": min(t["floor_C"], t["floor_F"]),
               "floor_order": order, **t, "peak_bytes": peak, "expected_bytes": sum(formula.values()),
               "expected_parts": formula, "blocks": blocks}
        rows.append(row)
        print(table([row]).splitlines()[-1], f"peak {peak / 2**20:.1f} MiB vs {row['expected_bytes'] / 2**20:.1f} MiB",
              flush=True)
    result["rows"] = rows
    md = table(rows)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    if available("matplotlib"):
        bar_chart(rows, args.out + ".png")
    print(md)
    if limiter is not None:
        limiter.restore_original_limits()
    return 0


if __name__ == "__main__":
    sys.exit(main())
