"""Issue 5's GPU benchmarks in one run: every figure in one JSON, a markdown summary on stdout.

    python scripts/gpu_bench.py --out gpu_bench.json                # a CUDA GPU; ~3 minutes
    python scripts/gpu_bench.py --out gpu_bench.json --parts launch,graphs --budget 60
    python scripts/gpu_bench.py --smoke --out smoke.json            # NumPy + PyTorch CPU, tiny nets
    python scripts/gpu_bench.py --env-only --out device.json        # the card and versions alone

Nets (CONFIGS): ReLU hidden layers, softmax + cross-entropy (sigmoid + binary cross-entropy
for the one-output net), float32, SGD with momentum 0.9. Parts, in the order they run:

  float32    per net: gpudnn's ``train_step``; its GEMM floor (the step's 3L − 1 GEMMs alone,
             preallocated, float32); PyTorch eager (SGD fused and foreach, the faster kept);
             ratios step / floor and step / PyTorch; and two gpudnn variants in the same
             turns: without the thin kernel (``CupyKernels(thin=False)``: what it buys) and
             with the loss read at the step's end (what ``Backend.read_later`` buys)
  tf32       step and floor with TF32 GEMMs (``Network(precision="tf32")``; the floor under
             CuPy's ``set_compute_type(float32, COMPUTE_TYPE_TF32)``): the GEMMs' TFLOP/s and
             the fraction of the card's dense TF32 tensor-core peak (PEAKS)
  float16    the same with ``Network(precision="float16")`` and a float16 floor
  breakdown  per net: where one train_step's time goes, op by op (benchmarks.timing.OpTimeline:
             CUDA events around each GEMM, each fused kernel and the optimizer's update): the
             GEMMs, the other kernels, and what is left (work outside them and the device idle
             waiting for the host); beside the step timed without the events and the floor
  tune       the fused hidden-layer kernels (bias_act, act_backward; float32 ReLU) at every
             launch shape (threads per block x elements per thread) on the issue's layer
             sizes, GB/s beside a device copy's, each shape first checked bit for bit against
             the default; and the output layer's db: CuPy's row sum against the split kernel
  launch     the small net: host time per step (with and without the loss read back) against
             the device's busy time (the steps queued behind a spin kernel, CUDA events)
  compile    torch.compile'd PyTorch steps: mode "default", then "reduce-overhead"; the small
             and narrow nets first, the wide ones if time is left (keeping max_batch's share)
  max_batch  784-4096-4096-4096-10 float32: the largest batch at which one train step
             succeeds, gpudnn and PyTorch eager (doubling, then bisection to 5 %); the GEMMs
             run in TF32 there to save time (steps at B ~ 1M take seconds in float32): the
             arrays are float32 either way, and memory is what is measured. After the other
             goals' parts, so that whatever huge arrays may break cannot spoil them
  graphs     the small net: its elementwise kernels (and the SGD update) captured in a CUDA
             graph, replay against direct launches; whether a whole train_step can be captured
             with cuBLAS (CuPy refuses); then the small and the narrow net with every GEMM
             routed to the tiled CUDA GEMM (gpudnn.kernels.cuda_gemm, ``net._matmul``): the
             step's device work direct with cuBLAS, direct with the tiled GEMM, and captured
             whole and replayed (with and without the loss read back), θ, ∂J/∂θ and the loss
             of one step compared across the three (``whole_step``). Last: its CUDA graph
             captures are the newest GPU code, and a sticky CUDA error there must not cost
             the goals' figures

Timing: warm-up calls, then 7 blocks of back-to-back calls (each about 50 ms), CUDA events
around each block; a figure is the median block's time per call (every block is kept under
"timings"). The contenders of one net in the float32, tf32 and float16 parts (gpudnn, the
floor, PyTorch) are built together and take turns, a block each per round, so that a drift
of the card's clocks falls on all alike: ``*_rounds`` give their ratio round by round
(median, min, max over the 7 rounds; max_x < 1: faster in every round); the compile part
times gpudnn's step in turns with each compiled one. Both libraries copy the loss to the
host every step (``train_step`` returns a
float; the PyTorch step calls ``loss.item()``). A part starts only if the time budget left
covers its estimate, else it is listed under "skipped". A figure that could not be measured
holds a string "skipped: why" or "error: Type: message" (also listed under "errors") and the
next figure is tried; the JSON is rewritten after every part, so a crash keeps what was done.

--smoke runs every part on the NumPy backend and PyTorch's CPU in seconds (tiny nets; the
maximum batch against a simulated memory limit; torch.compile with its "eager" backend,
Dynamo only); what needs a GPU is recorded as skipped. tests/test_gpu_bench.py runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import json
import os
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import gpudnn  # noqa: E402
from benchmarks.contenders import (  # noqa: E402
    GemmFloor, GpudnnStep, TorchStep, batch, environment, gemm_flops, head, label,
)
from benchmarks.timing import (  # noqa: E402
    CupyClock, CupyMarks, HostClock, HostMarks, OpTimeline, TorchCudaClock, block, measure, measure_together,
    paired,
)
from gpudnn.backend import cupy_status  # noqa: E402
from gpudnn.errors import ConfigError  # noqa: E402

CONFIGS = [  # issue 5's nets: two wide, one small, one narrow with a huge batch
    ([784, 4096, 4096, 4096, 10], 8192),
    ([784, 1024, 1024, 10], 8192),
    ([64, 128, 10], 256),
    ([64, 64, 64, 64, 1], 65536),
]
SMOKE_CONFIGS = [([32, 64, 64, 64, 10], 64), ([32, 48, 48, 10], 64), ([16, 32, 10], 32), ([8, 8, 8, 8, 1], 256)]
SMALL, NARROW = 2, 3  # indexes into the configs: the launch and graph studies use SMALL
MAX_BATCH_NET = 0  # the net whose largest trainable batch is searched
SMOKE_MEMORY_LIMIT = 1000  # smoke mode: a batch above this "runs out of memory"

# dense (no 2:4 sparsity) tensor-core peaks in TFLOP/s: NVIDIA's datasheets give them with
# sparsity, "specifications 1/2 lower without sparsity"; FP16 is with FP32 accumulation,
# which CuPy's float16 GEMMs use (CUBLAS_COMPUTE_32F)
PEAK_SOURCE = ("NVIDIA H100 Tensor Core GPU datasheet (SXM, NVL and PCIe columns) and NVIDIA H200 "
               "datasheet: the TF32 and FP16 tensor-core figures, given with sparsity, halved")
PEAKS = {  # card: (TF32, FP16) dense TFLOP/s
    "H100 SXM": (989 / 2, 1979 / 2),
    "H100 NVL": (835 / 2, 1671 / 2),
    "H100 PCIe": (756 / 2, 1513 / 2),
    "H200": (989 / 2, 1979 / 2),
    "H200 NVL": (835 / 2, 1671 / 2),
}
# the parts, in order, with the seconds each is expected to take on an H100 (estimated from
# the sizes, not yet measured; smoke mode expects 10 s each)
PARTS = {"float32": 20, "tf32": 10, "float16": 10, "breakdown": 14, "tune": 12, "launch": 5, "compile": 45, "max_batch": 40,
         "graphs": 15}
FIGURE = ("_ms", "_s", "_x", "_tflops", "_frac", "_batch")  # key suffixes of figures

SPIN_SOURCE = r"""
extern "C" __global__ void spin(long long cycles) {
    long long t0 = clock64();
    while (clock64() - t0 < cycles) {}
}
"""


def card(name):
    """The PEAKS entry for a CUDA device name ("NVIDIA H100 80GB HBM3" -> "H100 SXM"), or None."""
    n = name.upper()
    for chip in ("H200", "H100"):
        if chip in n:
            if "NVL" in n:
                return f"{chip} NVL"
            if chip == "H200":
                return "H200"
            if "PCIE" in n:
                return "H100 PCIe"
            if "HBM3" in n or "SXM" in n:
                return "H100 SXM"
    return None


def ratio(a, b):
    """a / b for two figures, or the first one's skip or error text."""
    for x in (a, b):
        if not isinstance(x, (int, float)):
            return x
    return a / b


def ms(m):
    """The figure of a measurement: its median in ms, or its skip/error text."""
    return m["median_ms"] if isinstance(m, dict) else m


class Bench:
    """The run: the backend, clocks, configs, time budget and the report being written."""

    def __init__(self, args, cupy):
        self.args, self.smoke = args, args.smoke
        self.parts = args.parts  # the names asked for
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + args.budget
        self.configs = SMOKE_CONFIGS if self.smoke else CONFIGS
        self.cupy = None if self.smoke else cupy  # CuPy with a usable GPU, or None: NumPy
        self.backend = "numpy" if self.smoke else "cupy"
        self.xp = self.cupy or np
        self.clock = HostClock() if self.smoke else CupyClock()
        self.torch, self.torch_reason = None, None
        try:
            import torch

            if not self.smoke and not torch.cuda.is_available():
                self.torch_reason = "skipped: PyTorch sees no CUDA device"
            else:
                self.torch = torch
                torch.set_float32_matmul_precision("highest")  # float32 GEMMs, no TF32
                if self.smoke:
                    torch.set_num_threads(1)  # no idle OpenMP threads spinning against the others
        except ImportError as exc:
            self.torch_reason = f"skipped: PyTorch is not installed ({exc})"
        self.device = "cpu" if self.smoke else "cuda"
        self.torch_clock = HostClock() if self.smoke else (TorchCudaClock() if self.torch else None)
        self.timing = dict(warmup=1, blocks=3, block_s=0.005) if self.smoke else {}
        self.report = {"tool": "scripts/gpu_bench.py", "schema": 1, "smoke": self.smoke,
                       "argv": sys.argv[1:], "started": datetime.datetime.now().isoformat(timespec="seconds"),
                       "budget_s": args.budget, "backend": self.backend, "complete": False,
                       "environment": environment(self.cupy), "results": {}, "skipped": {},
                       "errors": []}
        self.report["peak"] = self.peak()

    # --- bookkeeping ---------------------------------------------------------------------
    def left(self):
        return self.deadline - time.perf_counter()

    def spare(self, part):
        """The time left once the estimates of the parts asked for after ``part`` are set aside."""
        later = list(PARTS)[list(PARTS).index(part) + 1:]
        return self.left() - sum(PARTS[p] for p in later if p in self.parts)

    def error(self, where, exc):
        """Record an exception; returns the figure that stands for it ("error: ..."), or
        "skipped: ..." for a ConfigError (gpudnn refusing a configuration it does not support)."""
        text = f"{type(exc).__name__}: {exc}"[:1000]
        if isinstance(exc, ConfigError):
            return f"skipped: gpudnn refuses it: {text}"
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-4:])
        self.report["errors"].append({"where": where, "error": text, "traceback": tb[-3000:]})
        print(f"  error in {where}: {text}", flush=True)
        return f"error: {text}"

    def save(self):
        self.report["elapsed_s"] = time.perf_counter() - self.t0
        tmp = self.args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.report, f, indent=1, default=float)
        os.replace(tmp, self.args.out)

    def free(self, collect=True):
        """Give cached device memory back (CuPy's pools, PyTorch's cache) once arrays are
        dropped; ``collect``: run the garbage collector first (arrays held in cycles; a
        fraction of a second with PyTorch loaded, so not on the CPU, where memory is no issue)."""
        if self.cupy is None:
            return
        if collect:
            gc.collect()
        try:
            self.cupy.get_default_memory_pool().free_all_blocks()
            self.cupy.get_default_pinned_memory_pool().free_all_blocks()
            if self.torch is not None:
                self.torch.cuda.empty_cache()
        except Exception as exc:  # a sticky CUDA error (raised again by whatever runs next):
            print(f"  (freeing memory failed: {type(exc).__name__}: {exc})", flush=True)  # not here, in a finally

    def sync(self):
        if self.cupy is not None:
            self.cupy.cuda.Device().synchronize()

    def guard(self, where, fn):
        """fn(), or the text of what it raised (recorded by ``error``)."""
        try:
            return fn()
        except Exception as exc:
            return self.error(where, exc)

    def time_together(self, where, makers):
        """Build every contender, then time them in turns (``measure_together``: a round is
        one block of each), so that their ratios hold round by round (``paired``). makers:
        {name: make() -> the step, or a figure's text where there is none}; a name starting
        "torch" is timed with PyTorch's CUDA events. Returns {name: measurement or text};
        the steps are dropped and memory given back afterwards."""
        made = {}
        try:
            for name, make in makers.items():
                made[name] = make if isinstance(make, str) else self.guard(f"{where} {name}", make)
            fns = {k: v for k, v in made.items() if not isinstance(v, str)}
            clocks = {k: self.torch_clock if k.startswith("torch") else self.clock for k in fns}
            t = measure_together(fns, clocks, on_error=lambda k, exc: self.error(f"{where} {k}", exc), **self.timing)
            return {k: t.get(k, made[k]) for k in makers}
        finally:
            made = fns = None
            self.free()

    def peak(self):
        if self.cupy is None:
            return {"reason": "no GPU (NumPy backend): no tensor-core peak"}
        name = self.report["environment"]["device"]
        c = card(name)
        if c is None:
            return {"reason": f"no dense peak known for the card {name!r} (known: {', '.join(PEAKS)})"}
        tf32, fp16 = PEAKS[c]
        return {"card": c, "tf32_dense_tflops": tf32, "fp16_dense_tflops": fp16, "source": PEAK_SOURCE}

    def peak_of(self, precision):
        """The dense peak (TFLOP/s) for "tf32" or "float16", or why there is none."""
        key = {"tf32": "tf32_dense_tflops", "float16": "fp16_dense_tflops"}[precision]
        return self.report["peak"].get(key, "skipped: " + self.report["peak"].get("reason", ""))

    def row(self, part, lbl):
        """The row of ``part`` for the net ``lbl`` (an earlier part's), or {}."""
        rows = self.report["results"].get(part)
        rows = rows.get("rows") if isinstance(rows, dict) else rows  # tf32, float16: {"rows": [...]}
        return next((r for r in rows if r.get("config") == lbl), {}) if isinstance(rows, list) else {}


# --- parts ------------------------------------------------------------------------------------
def part_float32(b):
    rows = []
    for sizes, B in b.configs:
        lbl, output_loss = label(sizes, B), "+".join(head(sizes))
        print(f"  float32 {lbl}", flush=True)
        torch = {f"torch_{impl}": b.torch_reason if b.torch is None else functools.partial(
            TorchStep, sizes=sizes, B=B, device=b.device, momentum=0.9, impl=impl) for impl in ("fused", "foreach")}
        # gpudnn with thin=False: the layer below a thin one as cuBLAS's two products, then
        # act_backward (not gpudnn.kernels.cuda_thin's one kernel): what it buys, in the same turns
        cublas = ("skipped: the thin kernel is CUDA's (no GPU)" if b.cupy is None else
                  lambda: GpudnnStep(sizes, B, backend=b.backend, momentum=0.9, thin=False))
        t = b.time_together(f"float32 {lbl}", {
            "gpudnn": lambda: GpudnnStep(sizes, B, backend=b.backend, momentum=0.9),
            "floor": lambda: GemmFloor(b.xp, sizes, B), "gpudnn_cublas": cublas,
            "gpudnn_sync_end": lambda: sync_at_end(GpudnnStep(sizes, B, backend=b.backend, momentum=0.9)),
            **torch})
        eager = [k for k in torch if isinstance(t[k], dict)]
        best = min(eager, key=lambda k: t[k]["median_ms"]) if eager else "torch_fused"
        step, floor, torch_ms = ms(t["gpudnn"]), ms(t["floor"]), ms(t[best])
        flops = gemm_flops(sizes, B)
        rows.append({
            "config": lbl, "sizes": sizes, "B": B, "output_loss": output_loss,
            "gpudnn_ms": step, "floor_ms": floor, "torch_eager_ms": torch_ms,
            "torch_eager_impl": best.split("_")[1],
            "torch_fused_ms": ms(t["torch_fused"]), "torch_foreach_ms": ms(t["torch_foreach"]),
            "step_over_floor_x": ratio(step, floor), "step_over_torch_x": ratio(step, torch_ms),
            # the same ratios round by round (the contenders timed in turns): max_x < 1 means
            # gpudnn was faster in every round
            "step_over_floor_rounds": paired(t["gpudnn"], t["floor"]),
            "step_over_torch_rounds": paired(t["gpudnn"], t[best]),
            "gpudnn_cublas_ms": ms(t["gpudnn_cublas"]),  # the step without the thin kernel
            "step_over_cublas_rounds": paired(t["gpudnn"], t["gpudnn_cublas"]),
            # the step with its loss read at its end (the device idle from there to the next
            # step's first launch): what Backend.read_later buys
            "gpudnn_sync_end_ms": ms(t["gpudnn_sync_end"]),
            "step_over_sync_end_rounds": paired(t["gpudnn"], t["gpudnn_sync_end"]),
            "floor_tflops": ratio(flops / 1e9, floor), "step_tflops": ratio(flops / 1e9, step),
            "timings": t,
        })
    return rows


# the bytes an elementwise op reads and writes, from its arguments (OpTimeline's GB/s): bias_act
# reads and writes Z; act_backward reads δ and a, writes δ ⊙ σ'; the SGD-with-momentum update
# reads θ, g, v and writes θ, v (its db row sums and output-layer reductions are left out)
TRAFFIC = {
    "bias_act": lambda Z, *a, **k: 2 * Z.nbytes,
    "act_backward": lambda delta, *a, **k: 3 * delta.nbytes,
    # the thin kernel's δ aᵀ and (Wᵀ δ) ⊙ σ'(a): a read and written, δ^{l+1} read
    "layer_backward": lambda W, delta, a, *r, **k: 2 * a.nbytes + delta.nbytes,
    "optimizer.step": lambda params, *a, **k: 5 * params.nbytes,
    # mixed precision: the float16 gradients cast into the master ones and scaled by 1/S
    # (read 2P, write 4P bytes; one pass with the finite check where the device decides skips)
    "loss_scaler.unscale": lambda grads, grads16, *a, **k: grads16.nbytes + grads.nbytes,
}
BREAKDOWN_FLOAT16 = 2  # the first nets (the wide ones) are broken down in float16 too


def part_breakdown(b):
    """Per net: one float32 train_step op by op (OpTimeline), 10 steps after 2 of warm-up;
    then the wide nets' float16 mixed-precision step (its casts and finite check untimed)."""
    rows = []
    runs = [(c, "float32") for c in b.configs] + [(c, "float16") for c in b.configs[:BREAKDOWN_FLOAT16]]
    for (sizes, B), precision in runs:
        lbl = label(sizes, B)
        print(f"  breakdown {lbl} {precision}", flush=True)

        def one():
            s = GpudnnStep(sizes, B, backend=b.backend, momentum=0.9,
                           precision=None if precision == "float32" else precision)
            marks = HostMarks() if b.cupy is None else CupyMarks()
            row = OpTimeline(s.net, s.opt, s.A0, s.Y, marks, TRAFFIC).run(10)
            row["step_no_marks_ms"] = ms(measure(s, b.clock, **b.timing))
            return row

        try:
            row = b.guard(f"breakdown {lbl} {precision}", one)
        finally:
            b.free()
        if isinstance(row, dict):
            floor = b.row(precision, lbl).get("floor_ms")  # from the part that timed this precision
            row["floor_ms"] = floor if floor is not None else f"skipped: the {precision} part did not run"
            row["outside_floor_ms"] = (row["step_ms"] - floor if isinstance(floor, float) and row["step_ms"] > floor
                                       else "skipped: no floor below the step to compare with")
        rows.append({"config": lbl, "precision": precision, **(row if isinstance(row, dict) else {"step_ms": row})})
    return rows


# tune: the hidden layers' (n, B) in the issue's nets (784-4096..., 784-1024..., 64-64-64-64-1)
# and the launch shapes tried; smoke mode: small arrays through the CPU emulation
TUNE_SHAPES = [(4096, 8192), (1024, 8192), (64, 65536)]
SMOKE_TUNE_SHAPES = [(6, 700), (2, 3000)]
TUNE_LAUNCH = {"threads": (128, 256, 512), "unroll": (1, 2, 4, 8)}
SMOKE_TUNE_LAUNCH = {"threads": (32, 64), "unroll": (1, 4)}
# the output layers' db = Σ_j δ^L (n_L, B): CuPy's row sum against the split act_backward
OUTPUT_DB_SHAPES = [(10, 8192), (1, 65536)]
SMOKE_OUTPUT_DB_SHAPES = [(3, 500), (1, 3000)]
# softmax + cross-entropy output layers (n_L, B): the fused kernels against the generic twin,
# to place kernels.cuda.OUTPUT_UNITS (one thread a column: a wide layer leaves the card idle)
OUTPUT_WIDTHS = [(10, 512), (64, 512), (128, 512), (256, 512), (512, 512), (1024, 512),
                 (10, 8192), (128, 8192), (256, 8192), (512, 8192), (1024, 8192)]
SMOKE_OUTPUT_WIDTHS = [(3, 50), (20, 300)]


def tune_kernels(xp, clock, shapes, launch, db_shapes, timing, widths=()):
    """The fused hidden-layer kernels at every launch shape (threads per block x elements
    per thread, ``CupyKernels(xp, threads, unroll)``), float32, ReLU, in place as a step runs
    them, on each (n, B) of ``shapes``: GB/s of each shape, the default's and the best, beside
    a device copy of the same array (the bandwidth a kernel that reads and writes it once
    could reach). Every shape's a and δ are first checked equal, bit for bit, to the default
    shape's (a mismatch is listed and the shape not timed); the shapes of one op are timed
    in turns (``measure_together``), as the row sum and the split kernel below are. Then, for the output layer's
    db = Σ_j δ^L on each of ``db_shapes``: CuPy's row sum (what output_loss_delta ran until
    its own output_sums kernel, split the same way, took both the db and the loss sums)
    against act_backward with σ = identity (its rows split over blocks, two launches; it
    reads δ twice (once from cache) and writes it back unchanged, about 2x the row sum's
    memory traffic: what a CUDA graph's kernel set ran before output_sums). Then, for
    softmax + cross-entropy on each (n_L, B) of ``widths``: the fused output kernels (no
    width bound) against the generic twin, in turns, their losses checked equal
    (``output_width``)."""
    from gpudnn.activations import ACTIVATIONS
    from gpudnn.kernels.cuda import THREADS, UNROLL, CupyKernels

    relu, ident, f32 = ACTIVATIONS["relu"], ACTIVATIONS["identity"], np.float32
    rng, host = np.random.default_rng(0), getattr(xp, "asnumpy", np.array)  # a copy on the host
    default = f"{THREADS}x{UNROLL}"
    rows, mismatches = [], []
    kernels = {f"{t}x{u}": CupyKernels(xp, threads=t, unroll=u) for t in launch["threads"] for u in launch["unroll"]}
    kernels.setdefault(default, CupyKernels(xp))

    def gbs(nbytes, m):  # GB/s of a measurement m of calls moving nbytes each
        return nbytes / 1e9 / (ms(m) / 1e3)

    for n, B in shapes:
        Z0 = xp.asarray(rng.standard_normal((n, B), dtype=f32))
        bias = xp.asarray(rng.standard_normal((n, 1), dtype=f32))
        D0 = xp.asarray(rng.standard_normal((n, B), dtype=f32))
        Z, D, db = xp.empty_like(Z0), xp.empty_like(D0), xp.empty((n, 1), f32)
        ref = None
        row = {"shape": f"{n} x {B}", "bytes_per_array": int(Z0.nbytes), "default": default}
        checked = {}  # the shapes whose results equal the default's
        for name in [default] + [k for k in kernels if k != default]:
            k = kernels[name]
            xp.copyto(Z, Z0)
            xp.copyto(D, D0)
            k.bias_act(Z, bias, relu, None)
            k.act_backward(D, Z, relu, None, db)
            got = host(Z), host(D)
            if ref is None:
                ref = got
            elif not (np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])):
                mismatches.append(f"{name} on {n} x {B}: a or δ differs from {default}'s")
                continue
            checked[name] = k
        # in place, repeated: a = relu(a + b) and δ = δ ⊙ relu'(a) move the same bytes every
        # call; the shapes of one op timed in turns, so that a drift of the clock cannot pick one
        for op, X, call in (("bias_act", Z, lambda k: k.bias_act(Z, bias, relu, None)),
                            ("act_backward", D, lambda k: k.act_backward(D, Z, relu, None, db))):
            m = measure_together({name: functools.partial(call, k) for name, k in checked.items()}, clock, **timing)
            row[f"{op}_gbs"] = {name: gbs(TRAFFIC[op](X), m[name]) for name in checked}
        row["copy_gbs"] = gbs(2 * Z.nbytes, measure(lambda: xp.copyto(D, Z), clock, **timing))
        for op in ("bias_act", "act_backward"):
            rates = row[f"{op}_gbs"]
            if rates:
                best = max(rates, key=rates.get)
                row[f"{op}_best"] = best
                row[f"{op}_best_over_default_x"] = rates[best] / rates[default]
                row[f"{op}_best_over_copy_x"] = rates[best] / row["copy_gbs"]
        rows.append(row)
        Z0 = D0 = Z = D = None
    out_db = []
    k = kernels[default]
    for n, B in db_shapes:
        D = xp.asarray(rng.standard_normal((n, B), dtype=f32))
        db, db2 = xp.empty((n, 1), f32), xp.empty((n, 1), f32)
        D.sum(axis=1, keepdims=True, out=db)
        k.act_backward(D, D, ident, None, db2)  # σ' = 1: δ written back unchanged
        m = measure_together({"row_sum_ms": lambda: D.sum(axis=1, keepdims=True, out=db),
                              "split_kernel_ms": lambda: k.act_backward(D, D, ident, None, db2)}, clock, **timing)
        sums = {key: ms(v) for key, v in m.items()}
        diff = float(np.abs(host(db) - host(db2)).max())
        out_db.append({"shape": f"{n} x {B}", **sums, "split_over_row_sum_x": sums["split_kernel_ms"] / sums["row_sum_ms"],
                       "max_abs_diff": f"{diff:.3g}", "blocks_per_row": k._split(n, B, D.dtype)})
    return {"shapes": rows, "output_db": out_db, "output_width": output_width(xp, clock, widths, timing, rng, host),
            "mismatches": mismatches}


def output_width(xp, clock, widths, timing, rng, host):
    """softmax + cross-entropy's output layer, fused (``CupyKernels`` without its width
    bound) against the generic twin, at each (n, B) of ``widths``: ms per call of each (the
    host's launches included, as a step pays them), their losses' relative difference."""
    from gpudnn.activations import ACTIVATIONS
    from gpudnn.kernels.cuda import CupyKernels
    from gpudnn.kernels.generic import GenericKernels
    from gpudnn.losses import LOSSES

    sets = {"fused_ms": CupyKernels(xp, output_units=1 << 30), "generic_ms": GenericKernels(xp)}
    softmax, xent, f32, out = ACTIVATIONS["softmax"], LOSSES["cross_entropy"], np.float32, []
    for n, B in widths:
        Z = xp.asarray(rng.standard_normal((n, B), dtype=f32))
        Y = xp.asarray(np.ascontiguousarray(np.eye(n, dtype=f32)[:, rng.integers(0, n, B)]))
        b = xp.zeros((n, 1), f32)  # Z ← Z + b leaves Z as it was: each call the same work
        A, delta, t1, t2 = (xp.empty_like(Z) for _ in range(4))
        db = xp.empty((n, 1), f32)

        def call(k):
            return k.output_loss_delta(Z, b, A, Y, delta, db, softmax, xent, t1, t2)

        losses = {name: float(call(k)) for name, k in sets.items()}
        m = measure_together({name: functools.partial(call, k) for name, k in sets.items()}, clock, **timing)
        row = {"shape": f"{n} x {B}", **{name: ms(v) for name, v in m.items()}}
        row["fused_over_generic_x"] = row["fused_ms"] / row["generic_ms"]
        row["loss_rel_diff"] = abs(losses["fused_ms"] - losses["generic_ms"]) / abs(losses["generic_ms"])
        out.append(row)
    return out


def part_tune(b):
    """The fused kernels' launch shapes on the issue's layer sizes (``tune_kernels``)."""
    xp = cuda_module(b)
    small = dict(warmup=1, blocks=3, block_s=0.002) if b.smoke else dict(warmup=2, blocks=3, block_s=0.01)
    return tune_kernels(xp, b.clock, SMOKE_TUNE_SHAPES if b.smoke else TUNE_SHAPES,
                        SMOKE_TUNE_LAUNCH if b.smoke else TUNE_LAUNCH,
                        SMOKE_OUTPUT_DB_SHAPES if b.smoke else OUTPUT_DB_SHAPES, small,
                        SMOKE_OUTPUT_WIDTHS if b.smoke else OUTPUT_WIDTHS)


@contextlib.contextmanager
def tf32_gemms(torch=None):
    """CuPy's float32 GEMMs in TF32 (CUBLAS_COMPUTE_32F_FAST_TF32, through gpudnn's own
    switch: Backend.tf32_matmuls) inside the block, and PyTorch's too if given; both
    restored afterwards."""
    if torch is not None:
        old_torch = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
    try:
        with gpudnn.get_backend("cupy").tf32_matmuls():
            yield
    finally:
        if torch is not None:
            torch.set_float32_matmul_precision(old_torch)


def part_precision(b, precision):
    """gpudnn's step and its floor with TF32 or float16 GEMMs: TFLOP/s and share of the peak."""
    peak = b.peak_of(precision)
    rows = []
    for sizes, B in b.configs:
        lbl, flops = label(sizes, B), gemm_flops(sizes, B)
        print(f"  {precision} {lbl}", flush=True)
        makers = {"gpudnn": lambda: GpudnnStep(sizes, B, backend=b.backend, precision=precision, momentum=0.9)}
        gemms = contextlib.nullcontext()
        if precision == "float16":
            makers["floor"] = lambda: GemmFloor(b.xp, sizes, B, "float16")
        elif b.cupy is None:
            makers["floor"] = "skipped: TF32 GEMMs need CuPy on a GPU"
        else:
            makers["floor"] = lambda: GemmFloor(b.xp, sizes, B)
            gemms = tf32_gemms()  # the floor's GEMMs in TF32 (the step switches its own)
        with gemms:
            t = b.time_together(f"{precision} {lbl}", makers)
        step, floor = t["gpudnn"], t["floor"]
        floor_tflops = ratio(flops / 1e9, ms(floor))
        f32 = b.row("float32", lbl).get("gpudnn_ms", "skipped: no float32 figure")
        rows.append({
            "config": lbl, "sizes": sizes, "B": B, "gemm_gflop": flops / 1e9,
            "gpudnn_ms": ms(step), "floor_ms": ms(floor),
            "step_over_floor_x": ratio(ms(step), ms(floor)),
            "step_over_floor_rounds": paired(step, floor),
            "floor_tflops": floor_tflops, "step_tflops": ratio(flops / 1e9, ms(step)),
            "floor_peak_frac": ratio(floor_tflops, peak),
            "speedup_over_float32_x": ratio(f32, ms(step)),
            "timings": {"gpudnn": step, "floor": floor},
        })
    return {"peak_tflops": peak, "rows": rows}


def forward_backward_update(s):
    """One step of ``GpudnnStep`` s without reading the loss back: no host synchronisation.
    Returns the summed loss (0-d, on the device)."""
    net = s.net
    total = net._forward_backward(s.A0, s.Y)  # the pass train_step runs, before it converts the loss
    s.opt.step(net.params, net.grads, net.xp, net.segments)
    return total


def sync_at_end(s):
    """``GpudnnStep`` s whose train_step reads its loss after the update is queued (``float``
    of the device's Σ loss, as before Backend.read_later): the device idles from the step's
    end until the next step's first launch reaches it. The same calls otherwise (train_step's
    checks included), so the ratio is the read's alone. s's network has a Backend of its own."""
    s.net.backend.read_later = lambda total: (lambda: float(total))
    return s


def elementwise_kernels(s, update):
    """The step's kernels that are not GEMMs, on the network's own buffers (Network's
    _forward and _output_and_backward without their matmuls): bias + σ per hidden layer, the
    output layer's loss and δ^L, δ ⊙ σ' with the bias sums per hidden layer (below a thin
    layer the kernel set's one pass, ``layer_backward``, its products included, as the step
    runs it), and the SGD update if ``update``. What a CUDA graph could hold of a step, given
    that CuPy refuses cuBLAS calls in a capture. Returns the summed loss (0-d, on the device)."""
    net, Y = s.net, s.Y
    v, k, L, sigma = net._views(Y.shape[1]), net.kernels, net.n_layers, net._sigma
    for l in range(L - 1):
        k.bias_act(v["A"][l + 1], net.b[l], sigma[l], v["tmp"][l + 1])
    total = k.output_loss_delta(v["Z"], net.b[L - 1], v["A"][L], Y, v["deltaL"], net.db[L - 1],
                                sigma[L - 1], net._loss, v["tmp"][L], v["tmp2"])
    for l in range(L - 1, 0, -1):  # δ^l from the scratch (W^l)ᵀ δ^{l+1}, written over a^l
        delta = v["deltaL"] if l == L - 1 else v["A"][l + 1]
        layer = (net.W[l], delta, v["A"][l], sigma[l - 1], net.dW[l], net.db[l - 1])
        if k.fuses_layer_backward(*layer):  # one pass, as the step asks (Network._output_and_backward)
            k.layer_backward(*layer)
        else:
            k.act_backward(v["dX"][l], v["A"][l], sigma[l - 1], v["tmp"][l], net.db[l - 1], out=v["A"][l])
    if update:
        s.opt.step(net.params, net.grads, net.xp, net.segments)
    return total


def host_enqueue(fn, n, sync):
    """Host seconds per call to issue ``n`` calls of ``fn`` (the device finishes afterwards)."""
    sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    t = time.perf_counter() - t
    sync()
    return t / n


def part_launch(b):
    """Small net: what the host spends per step against what the device does."""
    sizes, B = b.configs[SMALL]
    s = GpudnnStep(sizes, B, backend=b.backend, momentum=0.9)
    s()  # compiles the kernels, makes the workspace and the optimizer state
    out = {"config": label(sizes, B), "train_step_ms": ms(measure(s, HostClock(), **b.timing))}
    n = 20
    enqueue = min(host_enqueue(lambda: forward_backward_update(s), n, b.sync) for _ in range(5))
    out["enqueue_no_readback_ms"] = enqueue * 1e3
    if b.cupy is None:
        out["device_busy_ms"] = "skipped: needs a GPU"
    else:
        busy = b.guard("launch: device busy time", lambda: device_busy(b, lambda: forward_backward_update(s),
                                                                       n, enqueue))
        out.update(busy if isinstance(busy, dict) else {"device_busy_ms": busy})
        out["host_over_device_x"] = ratio(enqueue * 1e3, out["device_busy_ms"])
    return out


def device_busy(b, fn, n, enqueue):
    """The device's own time per call of ``fn``: ``n`` calls queued behind a spin kernel that
    lasts several times what the host needs to issue them (``enqueue`` seconds each), so the
    device never waits for a launch; CUDA events around the n calls, best of 5 rounds."""
    spin = b.cupy.RawKernel(SPIN_SOURCE, "spin")
    cycles = 10**7
    spin((1,), (1,), (np.int64(cycles),))  # compile; then calibrate the SM clock's cycles per second
    rate = cycles / block(lambda: spin((1,), (1,), (np.int64(cycles),)), 1, b.clock)
    ahead = max(0.05, 5 * n * enqueue)
    busy, issued = [], []
    for _ in range(5):
        b.sync()
        spin((1,), (1,), (np.int64(ahead * rate),))
        b.clock.start()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        issued.append(time.perf_counter() - t)
        busy.append(b.clock.stop() / n)
    # the spin's length is calibrated at the clock of the moment: a heuristic check
    return {"device_busy_ms": min(busy) * 1e3, "spin_ahead_s": ahead, "queue_stayed_ahead": max(issued) < ahead}


def capture(stream, fn):
    """Capture fn() on ``stream`` into a CUDA graph: (graph, None, what fn returned), or
    (None, "Type: message" of the first failure, None). The stream always leaves capture mode.

    Keep what fn returned while the graph is used: arrays it allocated during the capture
    are where the graph's replays write. Temporaries freed inside fn (a CuPy reduction's CUB
    scratch and output) go back to the pool while the graph still writes them: the steps
    captured here use ``capture_kernels``, which make none."""
    graph, err, result = None, None, None
    with stream:
        try:
            stream.begin_capture()
        except Exception as exc:
            return None, f"begin_capture: {type(exc).__name__}: {exc}", None
        try:
            result = fn()
        except Exception as exc:
            err = f"{type(exc).__name__}: {exc}"
        try:
            graph = stream.end_capture()
        except Exception as exc:
            err = err or f"end_capture: {type(exc).__name__}: {exc}"
    return (None, err, None) if err else (graph, None, result)


def capture_kernels(b, s):
    """On a GPU, the kernel set gpudnn.CapturedStep's graphs hold for step s's network
    (``CupyKernels(capture=True)``: the output layer summed by its own kernels, no CuPy
    reduction allocating inside a capture); on the CPU the network's own."""
    if b.cupy is not None:
        from gpudnn.kernels.cuda import CupyKernels

        s.net.kernels = CupyKernels(b.cupy, capture=True)


def cuda_module(b):
    """What gpudnn's CUDA kernels launch through: CuPy on a GPU; in smoke mode the CPU
    emulation of CUDA source on NumPy arrays (tests/cuda_emulator.py, needs g++)."""
    if b.cupy is not None:
        return b.cupy
    tests = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from cuda_emulator import COMPILER, EmulatedCupy

    if COMPILER is None:
        raise ConfigError("no C++ compiler (g++) to emulate CUDA kernels on the CPU")
    return EmulatedCupy()


def tiled_gemm(b):
    """The tiled GEMM (gpudnn.kernels.cuda_gemm) for the bench's arrays (``cuda_module``)."""
    from gpudnn.kernels.cuda_gemm import TiledGemm

    return TiledGemm(cuda_module(b))


def snapshot(s):
    """Copies of what a step changes (θ and SGD's velocity), made on the null stream."""
    return [x.copy() for x in (s.net.params, *s.opt.state.values())]


def restore(s, snap):
    for x, saved in zip((s.net.params, *s.opt.state.values()), snap):
        x[...] = saved


def host_result(b, s, total):
    """(θ, ∂J/∂θ, mean loss) on the host after a step of ``s`` that returned ``total``."""
    to_host = (lambda x: b.cupy.asnumpy(x)) if b.cupy is not None else np.array
    return to_host(s.net.params), to_host(s.net.grads), float(total) / s.Y.shape[1]


def max_rel_diff(x, y):
    """max |x − y| / max |y| over the entries of the pairs of arrays (floats for the loss)."""
    return max(float(np.max(np.abs(np.asarray(u, np.float64) - v)) / max(float(np.max(np.abs(v))), 1e-300))
               for u, v in zip(x, y))


def whole_step(b, i, stream):
    """Net ``i``: its step's device work (``forward_backward_update``: forward, backward, the
    fused SGD update, no loss read back) with cuBLAS, then with every product routed to the
    tiled GEMM (``net._matmul``), then that step captured whole in a CUDA graph and replayed.

    One state (one step in), three steps from it: cuBLAS direct, tiled direct, graph replay
    (and the same step in float64 on NumPy, per tensor: ``grads_vs_float64``); their θ, ∂J/∂θ
    and loss are compared (the largest relative difference as text: 0 is a possible value,
    and every number in the report is a positive figure) — the tiled step against cuBLAS to
    float32 rounding, the replay against the tiled direct step bit for bit (the same
    kernels). Timed on ``stream``: each direct step, the replay, the replay with its loss
    read back (``float``, as ``train_step`` and the PyTorch steps do), and ``train_step``
    itself with each GEMM."""
    sizes, B = b.configs[i]
    out = {"config": label(sizes, B)}
    ref = GpudnnStep(sizes, B, backend=b.backend, momentum=0.9)  # the same seed: the same θ and batch
    s = GpudnnStep(sizes, B, backend=b.backend, momentum=0.9)
    s.net._matmul = gemm = tiled_gemm(b)
    capture_kernels(b, s)
    step_ref, step = (lambda: forward_backward_update(ref)), (lambda: forward_backward_update(s))
    b.sync()  # θ and the batch are written on the null stream, which a non-blocking stream does not wait for
    with stream:  # one step each: kernels compiled, SGD's velocity made, the GEMM's scratch
        step_ref(), step()
    b.sync()
    # the comparisons start from here, one step from the initial weights. After the thousands
    # of timed steps on one batch, float32 and float64 gave W0 gradients of 64-128-10 that
    # differed by 0.24 (cuBLAS) and 0.32 (tiled GEMM) of their largest entry, and the two
    # float32 steps by 0.08-0.16 (H200 run, 2026-11-26), while W1 agreed to 1e-6: that state's
    # hidden-layer gradient is ill-conditioned (ReLU kinks within rounding, we think; not
    # checked). One step in, the two agree to 4e-7
    start = snapshot(s)
    results = {}
    for name, t, fn in (("cublas", ref, step_ref), ("tiled", s, step)):
        restore(t, start)
        b.sync()
        launches = gemm.launches
        with stream:
            total = fn()
        b.sync()
        results[name] = host_result(b, t, total)
    out["tiled_gemms_per_step"] = gemm.launches - launches  # 3L − 1: every product
    diff = max_rel_diff(results["tiled"], results["cublas"])
    out["tiled_vs_cublas_max_rel_diff"] = f"{diff:.3g}"
    out["diff_by_array"] = {k: f"{max_rel_diff([x], [y]):.3g}" for k, x, y in
                            zip(("params", "grads", "loss"), results["tiled"], results["cublas"])}
    restore(ref, start)  # the cuBLAS step again, on the null stream (is the stream the difference?)
    b.sync()
    total = step_ref()
    b.sync()
    again = host_result(b, ref, total)
    out["cublas_stream_vs_null_max_rel_diff"] = f"{max_rel_diff(results['cublas'], again):.3g}"
    out["tiled_vs_cublas_null_max_rel_diff"] = f"{max_rel_diff(results['tiled'], again):.3g}"
    to_host = (lambda x: b.cupy.asnumpy(x)) if b.cupy is not None else np.asarray
    out["inputs_equal"] = bool(np.array_equal(to_host(s.A0), to_host(ref.A0))
                               and np.array_equal(to_host(s.Y), to_host(ref.Y)))
    # the truth: the same step's gradients in float64 on the NumPy backend, per tensor
    host = gpudnn.Network(sizes, activation="relu", output=s.net.output, loss=s.net.loss, dtype="float64",
                          backend="numpy", seed=0, kernels="generic")
    host.params[...] = to_host(start[0])
    host.forward_backward(to_host(s.A0).astype(np.float64), to_host(s.Y).astype(np.float64))
    names = [f"{t}{l}" for l in range(host.n_layers) for t in ("W", "b")]
    out["grads_vs_float64"] = {
        name: {k: f"{max_rel_diff([results[k][1][a:z]], [host.grads[a:z]]):.3g}" for k in ("tiled", "cublas")}
        for name, (a, z) in zip(names, host.segments)}
    out["tiled_matches_cublas"] = diff < 1e-4  # θ after one step, ∂J/∂θ, loss: float32 rounding
    with stream:  # (the stream's pool is warm for the capture below)
        out["direct_cublas_ms"] = ms(measure(step_ref, b.clock, **b.timing))
        out["direct_tiled_ms"] = ms(measure(step, b.clock, **b.timing))
        out["train_step_cublas_ms"] = ms(measure(ref, b.clock, **b.timing))
        out["train_step_tiled_ms"] = ms(measure(s, b.clock, **b.timing))
    b.sync()
    out["products"] = b.guard(f"graphs products {out['config']}", lambda: products(b, s, gemm, stream))
    out["captured_step"] = b.guard(f"graphs CapturedStep {out['config']}", lambda: captured_step(b, sizes, B))
    if b.cupy is None:
        out["graph_ms"] = out["graph_with_loss_ms"] = "skipped: CUDA graphs need CuPy on a GPU"
        return out
    graph, err, kept = capture(stream, step)  # kept: the 0-d loss the replays write
    out["captured"] = graph is not None
    if graph is None:
        out["graph_ms"] = out["graph_with_loss_ms"] = f"error: capture failed: {err}"
        b.report["errors"].append({"where": f"graphs whole step {out['config']}", "error": err})
        return out
    restore(s, start)
    b.sync()
    graph.launch(stream)
    stream.synchronize()
    replay = host_result(b, s, kept)
    diff = max_rel_diff(replay, results["tiled"])
    out["replay_vs_direct_max_rel_diff"] = f"{diff:.3g}"
    out["replay_matches_direct"] = diff < 1e-6
    with stream:
        out["graph_ms"] = ms(measure(lambda: graph.launch(stream), b.clock, **b.timing))
        out["graph_with_loss_ms"] = ms(measure(lambda: (graph.launch(stream), float(kept)), b.clock, **b.timing))
    out["direct_cublas_over_graph_x"] = ratio(out["direct_cublas_ms"], out["graph_ms"])
    out["train_step_over_graph_with_loss_x"] = ratio(out["train_step_cublas_ms"], out["graph_with_loss_ms"])
    b.sync()
    return out


def captured_step(b, sizes, B):
    """gpudnn.CapturedStep (the library's captured step) timed on the current stream: each
    call (the batch copied in, the graph replayed), and with the loss read back."""
    s = GpudnnStep(sizes, B, backend=b.backend, momentum=0.9)
    step = gpudnn.CapturedStep(s.net, s.opt, B)
    out = {"step_ms": ms(measure(lambda: step(s.A0, s.Y), b.clock, **b.timing))}
    out["step_with_loss_ms"] = ms(measure(lambda: (step(s.A0, s.Y), step.loss()), b.clock, **b.timing))
    out["train_step_ms"] = ms(measure(s, b.clock, **b.timing))
    out["train_step_over_step_with_loss_x"] = ratio(out["train_step_ms"], out["step_with_loss_ms"])
    return out


def products(b, s, gemm, stream):
    """Each distinct product of net s's step alone, tiled GEMM against cuBLAS (direct launches
    on ``stream``, short blocks): where the tiled step's time goes; and the tiled GEMM
    compiled for two blocks an SM (``TiledGemm(min_blocks=2)``), its result checked equal."""
    net, xp = s.net, s.net.xp
    gemm2 = type(gemm)(gemm.xp, min_blocks=2)
    v, B = net._views(s.Y.shape[1]), s.Y.shape[1]
    seen, rows = set(), []
    for l in range(net.n_layers):
        n_in, n_out = net.sizes[l], net.sizes[l + 1]
        a = s.A0 if l == 0 else v["A"][l]
        delta = v["deltaL"] if l == net.n_layers - 1 else v["A"][l + 1]
        prods = [("W a", net.W[l], a, (n_out, B)), ("δ aᵀ", delta, a.T, (n_out, n_in))]
        if l > 0:
            prods.append(("Wᵀ δ", net.W[l].T, delta, (n_in, B)))
        for name, A, Bm, shape in prods:
            key = (name, A.shape, Bm.shape)
            if key in seen:
                continue
            seen.add(key)
            C, C2 = xp.empty(shape, dtype=net.dtype), xp.empty(shape, dtype=net.dtype)
            timing = dict(b.timing) if b.smoke else dict(blocks=3, block_s=0.02)
            with stream:
                gemm(A, Bm, out=C)
                gemm2(A, Bm, out=C2)
                same = bool((C == C2).all())  # the same code and order of sums: equal
                m = measure_together({"tiled": lambda: gemm(A, Bm, out=C), "tiled_2_blocks": lambda: gemm2(A, Bm, out=C2),
                                      "cublas": lambda: xp.matmul(A, Bm, out=C)}, b.clock, **timing)  # in turns
                t, t2, c = (ms(m[k]) for k in ("tiled", "tiled_2_blocks", "cublas"))
            rows.append({"product": f"{name} layer {l}: ({A.shape[0]}x{A.shape[1]}) @ ({Bm.shape[0]}x{Bm.shape[1]})",
                         "tiled_ms": t, "cublas_ms": c, "tiled_over_cublas_x": ratio(t, c),
                         "tiled_2_blocks_ms": t2, "tiled_2_blocks_over_tiled_x": ratio(t2, t),
                         "tiled_2_blocks_equal": same})
    b.sync()
    return rows


def part_graphs(b):
    """Small net: the elementwise kernels of a step as a CUDA graph against direct launches."""
    sizes, B = b.configs[SMALL]
    s = GpudnnStep(sizes, B, backend=b.backend, momentum=0.9)
    capture_kernels(b, s)
    s()
    out = {"config": label(sizes, B), "regions": {}}
    stream = b.cupy.cuda.Stream(non_blocking=True) if b.cupy is not None else contextlib.nullcontext()
    regions = {"elementwise": lambda: elementwise_kernels(s, False),
               "elementwise_and_sgd_update": lambda: elementwise_kernels(s, True)}
    for name, fn in regions.items():
        out["regions"][name] = b.guard(f"graphs {name}", lambda: direct_and_replayed(b, stream, fn))
    # every product through the tiled GEMM: the whole step in one graph, small and narrow nets
    out["whole_step"] = [b.guard(f"graphs whole step {label(*b.configs[i])}", lambda: whole_step(b, i, stream))
                         for i in (SMALL, NARROW)]
    b.free()
    if b.cupy is None:
        out["whole_step_capture"] = "skipped: CUDA graphs need CuPy on a GPU"
        return out
    whole = {}  # with cuBLAS (CuPy refuses it in a capture: the refusal is recorded)
    for name, fn in (("train_step", s), ("forward_backward_update", lambda: forward_backward_update(s))):
        graph, err, _ = capture(stream, fn)
        whole[name] = {"captured": graph is not None, "refused_with": err}
        if graph is not None:  # should CuPy ever allow cuBLAS in a capture: what it buys
            whole[name]["timings"] = b.guard(f"graphs {name}", lambda: direct_and_replayed(b, stream, fn))
    out["whole_step_capture"] = whole
    b.sync()
    return out


def direct_and_replayed(b, stream, fn):
    """fn's direct launches on ``stream`` against the replay of its CUDA graph (events)."""
    out = {}
    with stream:  # the direct launches also warm the stream's memory pool for the capture
        out["direct_ms"] = ms(measure(fn, b.clock, **b.timing))
    if b.cupy is None:
        out["graph_ms"] = "skipped: CUDA graphs need CuPy on a GPU"
        return out
    graph, err, kept = capture(stream, fn)  # kept alive while the graph replays
    if graph is None:
        out["graph_ms"] = f"error: capture failed: {err}"
        return out
    with stream:
        out["graph_ms"] = ms(measure(lambda: graph.launch(stream), b.clock, **b.timing))
    out["direct_over_graph_x"] = ratio(out["direct_ms"], out["graph_ms"])
    return out


def largest_batch(attempt, start, seconds, tol=0.05, most=2**24):
    """Double B from ``start`` until a step fails, then bisect until hi − lo <= tol · lo.

    attempt(B) -> None if one train step at batch B succeeds, else ("out_of_memory" or
    "error", message); an error ends the search. Stops after ``seconds``. Returns the figures
    and every try.
    """
    t0, lo, hi, tries = time.perf_counter(), 0, None, []
    out = {"out_of_memory": None, "stopped_by": None}
    B = start
    while hi is None or hi - lo > max(tol * lo, 1):
        if time.perf_counter() - t0 > seconds or B > most:
            out["stopped_by"] = "the time limit" if B <= most else f"the largest batch tried ({most})"
            break
        t = time.perf_counter()
        failed = attempt(B)
        tries.append({"B": B, "fits": failed is None, "seconds": time.perf_counter() - t})
        if failed is not None:
            kind, msg = failed
            if kind == "error":
                out["stopped_by"] = msg
                break
            hi, out["out_of_memory"] = B, msg
        else:
            lo = B
        B = 2 * B if hi is None else (lo + hi) // 2
    out.update(largest_batch=lo if lo else "error: no batch fits", first_failing_batch=hi or "skipped: none failed",
               converged=hi is not None and hi - lo <= max(tol * lo, 1), search_s=time.perf_counter() - t0,
               tries=tries)
    return out


def out_of_memory(exc):
    """Whether ``exc`` says the device (or, in smoke mode, the simulated limit) ran out of memory."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "alloc_failed" in text


def part_max_batch(b):
    sizes = b.configs[MAX_BATCH_NET][0]
    start = 64 if b.smoke else 8192
    limit = SMOKE_MEMORY_LIMIT if b.smoke else None

    def trial(name, step_at):
        def attempt(B):
            try:
                if limit is not None and B > limit:
                    raise MemoryError(f"simulated: smoke mode allows batches up to {limit}")
                step_at(B)
                b.sync()
                return None
            except Exception as exc:
                if out_of_memory(exc):
                    return "out_of_memory", f"{type(exc).__name__}: {exc}"[:500]
                return "error", b.error(f"max_batch {name} at B={B}", exc)
            finally:
                b.free()
        return attempt

    output, loss = head(sizes)
    made = {}  # the network (and its optimizer) of the search running, dropped after it

    def gpudnn_at(B, low=True):
        if low not in made:
            made.clear()
            made[low] = (gpudnn.Network(sizes, activation="relu", output=output, loss=loss, dtype="float32",
                                        backend=b.backend, seed=0, low_memory=low),
                         gpudnn.optim.SGD(lr=1e-3, momentum=0.9))
        net, opt = made[low]
        net._ws = None  # drop the last try's workspace first, so that two never coexist
        b.free(collect=False)
        A0, Y = batch(net.xp, sizes, B, "float32")
        net.train_step(A0, Y, opt)

    impl = b.row("float32", label(*b.configs[MAX_BATCH_NET])).get("torch_eager_impl", "fused")

    def torch_at(B):
        TorchStep(sizes, B, device=b.device, momentum=0.9, impl=impl)()

    out = {"config": "-".join(map(str, sizes)) + " float32", "tolerance": 0.05}
    if limit is not None:
        out["simulated_limit_batch"] = limit
    out["gemms"] = "float32 (NumPy)" if b.cupy is None else "TF32 (float32 arrays: the same memory)"
    out["torch_eager"] = b.torch_reason
    b.report["results"]["max_batch"] = out  # saved after each search
    # gpudnn with low_memory=True (the setting for the largest batch) against PyTorch, then
    # gpudnn's default if time is left
    searches = {"gpudnn": gpudnn_at, **({"torch_eager": torch_at} if b.torch else {}),
                "gpudnn_default": lambda B: gpudnn_at(B, low=False)}
    out["gpudnn_setting"] = "Network(..., low_memory=True); gpudnn_default: low_memory=False"
    gemms = contextlib.nullcontext() if b.cupy is None else tf32_gemms(b.torch)
    if b.torch is not None:
        b.torch._dynamo.reset()  # the compile part's last models (and their CUDA graph pools) let go
        b.free()
    with gemms:
        for i, (name, step_at) in enumerate(searches.items()):
            seconds = min(b.args.max_batch_seconds, max(b.spare("max_batch"), 5) / (len(searches) - i))
            print(f"  max_batch {name} (up to {seconds:.0f} s)", flush=True)
            out[name] = largest_batch(trial(name, step_at), start, seconds)
            made.clear()  # nothing of one search (its last workspace: most of the card) in the next
            b.free()
            b.save()
    out["gpudnn_over_torch_x"] = ratio(*largest(out))
    return out


def largest(mb):
    """(gpudnn's, PyTorch's) largest batch of a max_batch report (or what stands for one)."""
    return tuple(mb[k]["largest_batch"] if isinstance(mb.get(k), dict) else mb.get(k) for k in ("gpudnn", "torch_eager"))


def part_compile(b):
    """torch.compile'd steps; an item starts only if the budget left (less the later parts'
    share) covers 1.5x the longest compile so far (45 s before the first)."""
    if b.torch is None:
        return b.torch_reason
    modes = {"default": {"backend": "eager"} if b.smoke else {}, "reduce-overhead": {"mode": "reduce-overhead"}}
    wide = [i for i in range(len(b.configs)) if i not in (SMALL, NARROW)]
    items = [(m, i) for nets in ((SMALL, NARROW), wide) for m in modes for i in nets]
    rows, longest = [], None
    for mode, i in items:
        sizes, B = b.configs[i]
        lbl = label(sizes, B)
        row = {"config": lbl, "mode": mode, "options": modes[mode]}
        rows.append(row)
        if b.smoke and mode == "reduce-overhead":
            row["step_ms"] = "skipped: smoke mode compiles with the eager backend only (no Inductor, no CUDA graphs)"
            continue
        need = 45 if longest is None else 1.5 * longest
        if not b.smoke and b.spare("compile") < need:
            row["step_ms"] = (f"skipped: out of time ({b.spare('compile'):.0f} s left for compiles, "
                              f"one may take {need:.0f} s)")
            continue
        print(f"  compile {mode} {lbl}", flush=True)
        eager = b.row("float32", lbl)
        try:
            b.torch._dynamo.reset()  # a fresh model each time: no recompile limit, no stale guards
            step = TorchStep(sizes, B, device=b.device, momentum=0.9, impl=eager.get("torch_eager_impl", "fused"),
                             compile=modes[mode])
            t = time.perf_counter()
            step()  # compiles the forward and the backward graphs
            if not b.smoke:
                b.torch.cuda.synchronize()
            row["compile_s"] = time.perf_counter() - t
            longest = max(longest or 0, row["compile_s"])
            # gpudnn's step timed in turns with the compiled one (the float32 part's figure
            # came from another minute: on the small net 0.318 and 0.526 ms in two H200 runs)
            t = b.time_together(f"compile {mode} {lbl}", {
                "gpudnn": lambda: GpudnnStep(sizes, B, backend=b.backend, momentum=0.9),
                "torch_compiled": lambda: step})
            m = t["torch_compiled"]
            row["step_ms"], row["gpudnn_ms"] = ms(m), ms(t["gpudnn"])
            row["gpudnn_over_compiled_x"] = ratio(ms(t["gpudnn"]), ms(m))
            row["gpudnn_over_compiled_rounds"] = paired(t["gpudnn"], m)
            row["eager_over_compiled_x"] = ratio(eager.get("torch_eager_ms", "skipped: no eager figure"), ms(m))
            row["timings"] = t
        except Exception as exc:
            row["step_ms"] = b.error(f"compile {mode} {lbl}", exc)
        finally:
            step = None
            b.free()
        b.save()
    return rows


def run_part(b, name):
    if name == "float32":
        return part_float32(b)
    if name in ("tf32", "float16"):
        return part_precision(b, name)
    return {"breakdown": part_breakdown, "tune": part_tune, "launch": part_launch, "max_batch": part_max_batch, "graphs": part_graphs,
            "compile": part_compile}[name](b)


# --- the summary ---------------------------------------------------------------------------
def fmt(x, unit=""):
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "—" if x is None else str(x).split(":")[0]
    return f"{x:.3g}{unit}" if abs(x) < 100 else f"{x:.0f}{unit}"


def spread(rounds):
    """A ``paired`` figure as "median (min–max)", e.g. "0.997x (0.994–1.001)"."""
    if not isinstance(rounds, dict):
        return fmt(rounds)
    return f"{rounds['median_x']:.3f}x ({rounds['min_x']:.3f}–{rounds['max_x']:.3f})"


def summary(report):
    r, lines = report["results"], []
    env = report["environment"]
    lines.append(f"gpudnn GPU benchmarks on {env.get('device', 'the CPU (smoke)')}, "
                 f"CuPy {env.get('cupy', '-')}, torch {env.get('torch', '-')}\n")
    f32 = r.get("float32")
    if isinstance(f32, list):
        comp = {(row["config"], row["mode"]): row.get("step_ms") for row in r.get("compile", []) or []
                if isinstance(row, dict)}
        lines += ["| net @ batch (float32) | GEMM floor | gpudnn train_step | PyTorch eager | gpudnn / eager, "
                  "by round | torch.compile | reduce-overhead |",
                  "|---|---|---|---|---|---|---|"]
        for row in f32:
            c = row["config"]
            lines.append(
                f"| {c} | {fmt(row['floor_ms'], ' ms')} | {fmt(row['gpudnn_ms'], ' ms')} "
                f"({fmt(row['step_over_floor_x'], 'x')} floor) | {fmt(row['torch_eager_ms'], ' ms')} "
                f"({row['torch_eager_impl']}) | {spread(row.get('step_over_torch_rounds'))} | "
                f"{fmt(comp.get((c, 'default')), ' ms')} | {fmt(comp.get((c, 'reduce-overhead')), ' ms')} |")
        lines.append("thin kernel (gpudnn / gpudnn with that layer's products on cuBLAS, by round): " + "; ".join(
            f"{row['config']} {spread(row.get('step_over_cublas_rounds'))}" for row in f32))
        lines.append("loss read (gpudnn / gpudnn waiting at the step's end, by round): " + "; ".join(
            f"{row['config']} {spread(row.get('step_over_sync_end_rounds'))}" for row in f32))
    for p in ("tf32", "float16"):
        part = r.get(p)
        if isinstance(part, dict):
            lines += ["", f"| net @ batch ({p}) | gpudnn | floor | floor TFLOP/s | of dense peak | vs float32 |",
                      "|---|---|---|---|---|---|"]
            for row in part["rows"]:
                lines.append(f"| {row['config']} | {fmt(row['gpudnn_ms'], ' ms')} | {fmt(row['floor_ms'], ' ms')} | "
                             f"{fmt(row['floor_tflops'])} | {fmt(row['floor_peak_frac'])} | "
                             f"{fmt(row['speedup_over_float32_x'], 'x')} |")
    for row in r.get("breakdown") or []:
        if isinstance(row, dict) and isinstance(row.get("ops"), dict):
            top = ", ".join(f"{k} {fmt(o['ms'], ' ms')}" + (f" ({fmt(o['gbs'])} GB/s)" if "gbs" in o else "")
                            for k, o in list(row["ops"].items())[:6])
            lines.append(f"breakdown ({row['config']} {row['precision']}): step {fmt(row['step_ms'], ' ms')} = GEMMs "
                         f"{fmt(row['gemm_ms'], ' ms')} + other kernels {fmt(row['other_ops_ms'], ' ms')} + untimed "
                         f"{fmt(row['untimed_ms'], ' ms')} (floor {fmt(row['floor_ms'], ' ms')}); largest: {top}")
    tu = r.get("tune")
    if isinstance(tu, dict):
        for row in tu["shapes"]:
            ops = "; ".join(f"{op} {row['default']} {fmt(row[f'{op}_gbs'].get(row['default']))}, best "
                            f"{row.get(f'{op}_best', '—')} {fmt(row[f'{op}_gbs'].get(row.get(f'{op}_best')))}"
                            for op in ("bias_act", "act_backward"))
            lines.append(f"tune ({row['shape']}, GB/s): copy {fmt(row['copy_gbs'])}; {ops}")
        for row in tu["output_db"]:
            lines.append(f"output db ({row['shape']}): CuPy row sum {fmt(row['row_sum_ms'], ' ms')}, split kernel "
                         f"{fmt(row['split_kernel_ms'], ' ms')}")
        if tu.get("output_width"):
            lines.append("output layer softmax + cross-entropy, fused / generic: " + "; ".join(
                f"{row['shape']} {fmt(row['fused_ms'], ' ms')} / {fmt(row['generic_ms'], ' ms')}"
                for row in tu["output_width"]))
        if tu["mismatches"]:
            lines.append("tune mismatches: " + "; ".join(tu["mismatches"]))
    la = r.get("launch")
    if isinstance(la, dict):
        lines.append(f"\nlaunch ({la['config']}): train_step {fmt(la['train_step_ms'], ' ms')}, issuing a step "
                     f"{fmt(la['enqueue_no_readback_ms'], ' ms')}, device busy {fmt(la['device_busy_ms'], ' ms')}")
    mb = r.get("max_batch")
    if isinstance(mb, dict):
        g, t = largest(mb)
        simulated = f"; smoke: a simulated memory limit of {mb['simulated_limit_batch']}" if "simulated_limit_batch" in mb else ""
        lines.append(f"largest batch ({mb['config']}): gpudnn {fmt(g)}, PyTorch eager {fmt(t)} "
                     f"({fmt(mb.get('gpudnn_over_torch_x'), 'x')}{simulated})")
    gr = r.get("graphs")
    if isinstance(gr, dict):
        for name, reg in gr["regions"].items():
            reg = reg if isinstance(reg, dict) else {"direct_ms": reg, "graph_ms": reg}
            lines.append(f"graph ({name}): direct {fmt(reg['direct_ms'], ' ms')}, replay {fmt(reg['graph_ms'], ' ms')}")
        comp = {(row["config"], row["mode"]): row.get("step_ms") for row in r.get("compile", []) or []
                if isinstance(row, dict)}
        for row in gr.get("whole_step", []):
            if not isinstance(row, dict):
                lines.append(f"whole step: {fmt(row)}")
                continue
            c = row["config"]
            lines.append(
                f"whole step ({c}, no loss read): cuBLAS {fmt(row['direct_cublas_ms'], ' ms')}, tiled GEMM "
                f"{fmt(row['direct_tiled_ms'], ' ms')}, graph {fmt(row['graph_ms'], ' ms')}; with the loss read: "
                f"train_step {fmt(row['train_step_cublas_ms'], ' ms')}, graph {fmt(row['graph_with_loss_ms'], ' ms')}, "
                f"torch.compile {fmt(comp.get((c, 'default')), ' ms')} / reduce-overhead "
                f"{fmt(comp.get((c, 'reduce-overhead')), ' ms')}; tiled = cuBLAS {row['tiled_matches_cublas']}, "
                f"replay = direct {row.get('replay_matches_direct', '—')}")
    if report["skipped"]:
        lines.append("\nskipped: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items()))
    if report["errors"]:
        lines.append(f"errors: {len(report['errors'])} (see the JSON)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--budget", type=float, default=180.0, help="seconds for the whole run (default 180)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--max-batch-seconds", type=float, default=40.0, help="time limit of each largest-batch search")
    p.add_argument("--smoke", action="store_true", help="NumPy and PyTorch CPU, tiny nets, seconds")
    p.add_argument("--env-only", action="store_true", help="write the environment alone")
    args = p.parse_args(argv)
    for flag in ("budget", "max_batch_seconds"):  # (NaN fails the comparison too)
        if not getattr(args, flag) > 0:
            p.error(f"--{flag.replace('_', '-')}: must be > 0 seconds, got {getattr(args, flag)}")
    folder = os.path.dirname(os.path.abspath(args.out))
    if os.path.isdir(args.out):
        p.error(f"--out: {args.out} is a directory; name the JSON file to write")
    if not os.path.isdir(folder):  # found now, not at the first save after the setup
        p.error(f"--out: the directory {folder} does not exist")
    args.parts = parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    cupy, reason = cupy_status()
    if args.env_only or not (cupy or args.smoke):
        out = environment(cupy)
        if not args.env_only:
            out = {"environment": out, "complete": False, "errors": [{"where": "start", "error": reason}]}
            print(f"gpu_bench: {reason}; --smoke runs it on the CPU", file=sys.stderr)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
        return 0 if args.env_only else 2
    b = Bench(args, cupy)
    b.save()
    for name in PARTS:
        if name not in parts:
            b.report["skipped"][name] = "not asked for (--parts)"
            continue
        need = 10 if b.smoke else PARTS[name]
        if name != "compile" and b.left() < need:  # compile checks its own items
            b.report["skipped"][name] = f"out of time: {b.left():.0f} s of the budget left, the part needs about {need} s"
            continue
        print(f"{name} ({b.left():.0f} s left)", flush=True)
        try:
            b.report["results"][name] = run_part(b, name)
        except KeyboardInterrupt:  # SIGINT (device_check.sh's time limit): keep what was done
            b.report["interrupted"] = f"stopped by SIGINT (Ctrl-C or a time limit) during the {name} part"
            print(b.report["interrupted"], flush=True)
            break
        except Exception as exc:
            b.report["results"][name] = b.error(name, exc)
        finally:
            b.free()
            b.save()
    if "interrupted" in b.report:  # the parts after the stopped one: listed, not lost
        for name in PARTS:
            if name in parts and name not in b.report["results"] and name not in b.report["skipped"]:
                b.report["skipped"][name] = "not run: " + b.report["interrupted"]
    b.report["complete"] = "interrupted" not in b.report
    b.save()
    try:
        print(summary(b.report))
    except Exception as exc:  # the JSON is written: a summary that trips on an odd figure must not hide it
        print(f"(no summary: {type(exc).__name__}: {exc}; the figures are in {args.out})")
    return 0 if b.report["complete"] else 130


if __name__ == "__main__":
    sys.exit(main())
