"""Timing the benchmark scripts share: clocks, and blocks of back-to-back calls.

A clock has ``start()`` and ``stop() -> seconds since start``. On a GPU the clocks are CUDA
events (CuPy's or PyTorch's, recorded on the current stream; ``stop`` waits for the end
event), so a block's time is the device's time from its first launch to its last kernel's end.
On the CPU the clock is ``time.perf_counter``.
"""

from __future__ import annotations

import statistics
import time


class HostClock:
    def start(self):
        self.t0 = time.perf_counter()

    def stop(self):
        return time.perf_counter() - self.t0


class CupyClock:
    def __init__(self):
        import cupy

        self._cupy = cupy
        self.a, self.b = cupy.cuda.Event(), cupy.cuda.Event()

    def start(self):
        self.a.record()

    def stop(self):
        self.b.record()
        self.b.synchronize()
        return self._cupy.cuda.get_elapsed_time(self.a, self.b) / 1e3


class TorchCudaClock:
    def __init__(self):
        import torch

        self.a, self.b = (torch.cuda.Event(enable_timing=True) for _ in range(2))

    def start(self):
        self.a.record()

    def stop(self):
        self.b.record()
        self.b.synchronize()
        return self.a.elapsed_time(self.b) / 1e3


def block(fn, n, clock):
    """Mean seconds per call of ``n`` back-to-back calls of ``fn``."""
    clock.start()
    for _ in range(n):
        fn()
    return clock.stop() / n


def calls_per_block(fn, budget, clock=None, most=2000):
    """How many calls of ``fn`` fill ``budget`` seconds (1..most), from one timed call after
    a first one (which absorbs compilation and caches)."""
    clock = clock or HostClock()
    fn()
    one = max(block(fn, 1, clock), 1e-7)
    return max(1, min(most, int(budget / one)))


def measure(fn, clock, warmup=3, blocks=7, block_s=0.05, most=200):
    """Warm up, then time ``blocks`` blocks of back-to-back calls (each about ``block_s``).

    Returns {"median_ms", "min_ms": per call, "samples_ms": each block's mean per call,
    "reps": calls per block}.
    """
    return measure_together({"fn": fn}, clock, warmup, blocks, block_s, most)["fn"]


def measure_together(fns, clock, warmup=3, blocks=7, block_s=0.05, most=200, absorb=False, on_error=None):
    """Time several contenders in turns: ``blocks`` rounds, each one block of back-to-back
    calls of every contender, the order rotated by one each round. A drift in the machine's
    speed (a GPU's clock and heat, a neighbour's load) then falls on all of them alike, and
    their ratio can be read round by round (:func:`paired`) instead of from two medians
    taken minutes apart.

    fns: {name: fn}; clock: one clock, or {name: clock} (CUDA events of the library that
    runs the contender). ``absorb``: one untimed call before each block (the first call
    after another library's block pays for the switch: caches, thread pools).
    ``on_error(name, exc)``: a contender that raises gets its return value instead of a
    measurement and leaves the rounds; without it the exception propagates.

    Returns {name: measure()'s dict (samples_ms in round order), or on_error's value}.
    """
    clocks = clock if isinstance(clock, dict) else dict.fromkeys(fns, clock)
    out, live, reps = {}, list(fns), {}

    def attempt(name, run):
        try:
            run()
        except Exception as exc:
            if on_error is None:
                raise
            out[name] = on_error(name, exc)
            live.remove(name)

    def setup(name):
        for _ in range(warmup):
            fns[name]()
        reps[name] = calls_per_block(fns[name], block_s, clocks[name], most)

    for name in list(live):
        attempt(name, lambda: setup(name))
    samples = {name: [] for name in live}
    for r in range(blocks):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for name in order:
            def one(name=name):
                if absorb:
                    fns[name]()
                samples[name].append(block(fns[name], reps[name], clocks[name]) * 1e3)
            attempt(name, one)
    for name in live:
        s = samples[name]
        out[name] = {"median_ms": statistics.median(s), "min_ms": min(s), "samples_ms": s, "reps": reps[name]}
    return {name: out[name] for name in fns}


def paired(a, b):
    """Round-by-round ratios a/b of two contenders of one :func:`measure_together` run:
    {"median_x", "min_x", "max_x", "rounds"}; max_x < 1 means a was faster in every round.
    A figure that is not a measurement (an error's text) is returned as it is."""
    for m in (a, b):
        if not isinstance(m, dict):
            return m
    r = sorted(x / y for x, y in zip(a["samples_ms"], b["samples_ms"]))
    return {"median_x": statistics.median(r), "min_x": r[0], "max_x": r[-1], "rounds": len(r)}


# --- where a training step's time goes ---------------------------------------------------------
class HostMarks:
    """Time marks on the host (the CPU: every op has finished when it returns)."""

    def mark(self):
        return time.perf_counter()

    def elapsed(self, a, b):
        return b - a

    def reset(self):
        pass


class CupyMarks:
    """Time marks as CUDA events on the current stream, from a pool reused after ``reset``
    (call it once the events recorded so far are read)."""

    def __init__(self):
        import cupy

        self._cupy, self._pool, self._used = cupy, [], 0

    def mark(self):
        if self._used == len(self._pool):
            self._pool.append(self._cupy.cuda.Event())
        e = self._pool[self._used]
        self._used += 1
        e.record()
        return e

    def elapsed(self, a, b):
        b.synchronize()
        return self._cupy.cuda.get_elapsed_time(a, b) / 1e3

    def reset(self):
        self._used = 0


def gemm_role(A, B):
    """The seed's name of a step's product from its operands' layout: "W a" (forward),
    "Wᵀ δ" (δ^l's product), "δ aᵀ" (∂J/∂W); with the shapes, as "W a 1024x784·784x8192"."""
    def transposed(M):  # a transposed view (columns adjacent in memory), whole or a block of rows
        return M.ndim == 2 and M.shape[0] > 1 and M.shape[1] > 1 and M.strides[0] < M.strides[1]

    role = "Wᵀ δ" if transposed(A) else "δ aᵀ" if transposed(B) else "W a"
    return f"{role} {A.shape[0]}x{A.shape[1]}·{B.shape[0]}x{B.shape[1]}"


class _TimedKernels:
    """A network's kernel set with every public method timed by ``timeline``."""

    def __init__(self, inner, timeline):
        self._inner, self._timeline = inner, timeline

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name.startswith(("_", "fuses_", "needs_")) or not callable(attr):  # not ops: questions
            return attr
        return self._timeline.timed(name, attr)


class OpTimeline:
    """Where the time of ``net.train_step(A0, Y, optimizer)`` goes, op by op.

    Each product (``net._matmul``, named by :func:`gemm_role`), each method of the network's
    kernel set (bias_act, act_backward, output_loss_delta, ...) and ``optimizer.step``
    (and with mixed precision the loss scaler's ``scale_delta`` and ``unscale``) is
    bracketed by two marks (CUDA events on the stream on a GPU, so the times are the device's,
    host clock on the CPU), an op called inside another counted as the outer one's; so is
    each whole step. ``run(steps)`` takes the steps and returns,
    per step (means): "step_ms" (first op's launch to the loss read back), "ops" {name: {"ms",
    "calls", and "tflops" for a GEMM or "gbs" (GB/s) for an op ``traffic`` maps to a function
    of its arguments giving the bytes it moves}}, "gemm_ms", "other_ops_ms" and "untimed_ms": the step less its timed ops — work
    outside them (the output layer's bias add, copies) and the device idle waiting for the host
    (the loss read-back at the step's end included). The marks cost the host a few µs each:
    use it where the device, not the host, bounds the step.
    """

    def __init__(self, net, optimizer, A0, Y, marks, traffic=None):
        self.net, self.optimizer, self.A0, self.Y, self.marks = net, optimizer, A0, Y, marks
        self.traffic = traffic or {}
        self._records, self._gemms, self._depth = [], set(), 0

    def timed(self, name, fn):
        def call(*args, **kw):
            if self._depth:  # inside another timed op (the loss scaler's unscale calls the
                return fn(*args, **kw)  # kernel set's): its time is the outer op's
            self._depth += 1
            try:
                t0 = self.marks.mark()
                out = fn(*args, **kw)
            finally:
                self._depth -= 1
            label, work = name, None
            if name == "matmul":
                label = gemm_role(*args[:2])
                self._gemms.add(label)
                (m, k), n = args[0].shape, args[1].shape[1]
                work = ("tflops", 2 * m * k * n / 1e12)
            elif name in self.traffic:
                work = ("gbs", self.traffic[name](*args, **kw) / 1e9)
            self._records.append((label, t0, self.marks.mark(), work))
            return out
        return call

    def run(self, steps, warmup=2):
        net, opt = self.net, self.optimizer
        saved = net.kernels, net._matmul
        methods = [(opt, "step", "optimizer.step")]  # timed through a patched bound method
        if getattr(net, "loss_scaler", None) is not None:  # mixed precision's own passes
            methods += [(net.loss_scaler, m, f"loss_scaler.{m}") for m in ("scale_delta", "unscale")]
        net.kernels = _TimedKernels(net.kernels, self)
        net._matmul = self.timed("matmul", net._matmul)
        before = [obj.__dict__.get(attr) for obj, attr, _ in methods]  # an instance's own, if any
        for obj, attr, name in methods:
            setattr(obj, attr, self.timed(name, getattr(obj, attr)))
        ops, totals = {}, []
        try:
            for i in range(warmup + steps):
                self._records.clear()
                self.marks.reset()
                t0 = self.marks.mark()
                net.train_step(self.A0, self.Y, opt)  # reads the loss back: the step has ended
                t1 = self.marks.mark()
                if i < warmup:
                    continue
                totals.append(self.marks.elapsed(t0, t1))
                for label, a, b, work in self._records:
                    o = ops.setdefault(label, {"s": 0.0, "calls": 0, "work": None})
                    o["s"] += self.marks.elapsed(a, b)
                    o["calls"] += 1
                    if work is not None:  # (unit, amount): summed over the calls
                        o["work"] = (work[0], work[1] + (o["work"] or (None, 0.0))[1])
        finally:
            net.kernels, net._matmul = saved
            for (obj, attr, _), own in zip(methods, before):
                if own is None:
                    delattr(obj, attr)  # the class's method again
                else:
                    setattr(obj, attr, own)
        per = {k: {"ms": o["s"] / steps * 1e3, "calls": o["calls"] // steps} for k, o in ops.items()}
        for k, o in ops.items():  # the rate each op ran at: its work over its time
            if o["work"] is not None and o["s"] > 0:
                per[k][o["work"][0]] = o["work"][1] / o["s"]
        step_ms = statistics.mean(totals) * 1e3
        gemm = sum(o["ms"] for k, o in per.items() if k in self._gemms)
        other = sum(o["ms"] for o in per.values()) - gemm
        return {"step_ms": step_ms, "steps": steps, "gemm_ms": gemm, "other_ops_ms": other,
                "untimed_ms": step_ms - gemm - other,
                "ops": dict(sorted(per.items(), key=lambda kv: -kv[1]["ms"]))}
