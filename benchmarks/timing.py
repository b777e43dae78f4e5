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
    for _ in range(warmup):
        fn()
    reps = calls_per_block(fn, block_s, clock, most)
    samples = [block(fn, reps, clock) * 1e3 for _ in range(blocks)]
    return {"median_ms": statistics.median(samples), "min_ms": min(samples),
            "samples_ms": samples, "reps": reps}
