"""Memory of one training step, gpudnn against PyTorch eager, measured on the CPU.

What the largest trainable batch on a GPU comes down to: the memory a step needs per column
of the batch, counted in "widths" (one 4096 x B float32 array). Each contender runs in a
process of its own: parameters, gradients and the optimizer's momentum are made (and their
pages touched) first; the baseline is the process's resident memory then; the figure is the
peak resident memory of one SGD step (momentum 0.9) above it, divided by one width. The
784-4096-4096-4096-10 net of issue 5, float32.

Usage: python scripts/memory_probe.py [--batch 16384] [--out benchmarks/results/cpu_memory.json]
(each run is one full step: about 30 s per contender at B = 16384 on 2 cores).
"""

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys

SIZES = [784, 4096, 4096, 4096, 10]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _gpudnn(B, low_memory, A0, labels):
    import numpy as np

    sys.path.insert(0, ROOT)
    import gpudnn

    warm = gpudnn.Network([4, 8, 8, 8, 3], backend="numpy", dtype="float32", low_memory=True)
    warm.train_step(np.ones((4, 2), np.float32), np.eye(3, dtype=np.float32)[:, :2], gpudnn.optim.SGD(momentum=0.9))
    net = gpudnn.Network(SIZES, backend="numpy", dtype="float32", low_memory=low_memory)
    opt = gpudnn.optim.SGD(lr=1e-3, momentum=0.9)
    Y = np.zeros((SIZES[-1], B), np.float32)
    Y[labels, np.arange(B)] = 1
    opt.step(net.params, net.grads, np, net.segments)  # the momentum buffer
    net.grads[...] = 0.0  # np.zeros' pages count once written: write them before the baseline
    gc.collect()
    base = _resident()
    net.train_step(A0, Y, opt)
    return base


def _torch(B, A0, labels):
    import torch

    torch.set_num_threads(2)

    def make(sizes):
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(torch.nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(torch.nn.ReLU())
        return torch.nn.Sequential(*layers)

    warm = make([4, 8, 8, 8, 3])
    torch.nn.functional.cross_entropy(warm(torch.ones(2, 4)), torch.tensor([0, 1])).backward()
    model = make(SIZES)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.from_numpy(A0.T.copy()), torch.from_numpy(labels)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # resident, as a GPU's caching allocator keeps them
    opt.step()
    opt.zero_grad(set_to_none=False)
    gc.collect()
    base = _resident()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return base


def child(which, B):
    import numpy as np

    rng = np.random.default_rng(0)
    A0 = rng.standard_normal((SIZES[0], B), dtype=np.float32)
    labels = rng.integers(0, SIZES[-1], B)
    base = _torch(B, A0, labels) if which == "torch_eager" else _gpudnn(B, which == "gpudnn_low_memory", A0, labels)
    width = 4096 * B * 4
    print(json.dumps({"contender": which, "step_bytes": _peak() - base, "widths": (_peak() - base) / width}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16384)
    p.add_argument("--out", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.batch)
    rows = []
    for which in ("gpudnn", "gpudnn_low_memory", "torch_eager"):
        out = subprocess.run([sys.executable, __file__, "--child", which, "--batch", str(args.batch)],
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
        if out.returncode:
            rows.append({"contender": which, "error": out.stderr[-2000:]})
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{which}: {rows[-1]['widths']:.2f} widths ({rows[-1]['step_bytes'] / 2**20:.0f} MiB)", flush=True)
    w = {r["contender"]: r.get("widths") for r in rows}
    sys.path.insert(0, ROOT)
    from benchmarks.contenders import machine  # noqa: E402

    report = {"net": "-".join(map(str, SIZES)), "batch": args.batch, "dtype": "float32",
              "width": "one 4096 x B float32 array", "machine": platform.processor() or platform.machine(),
              "python": platform.python_version(),
              # the versions, CPU and BLAS (this process's; each contender ran in a child with
              # OMP_NUM_THREADS=2 and PyTorch at 2 threads)
              "environment": machine(), "child_threads": 2, "rows": rows}
    if w.get("torch_eager") and w.get("gpudnn"):
        report["torch_over_gpudnn_x"] = w["torch_eager"] / w["gpudnn"]
    if w.get("torch_eager") and w.get("gpudnn_low_memory"):
        report["torch_over_gpudnn_low_memory_x"] = w["torch_eager"] / w["gpudnn_low_memory"]
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
