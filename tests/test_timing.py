"""benchmarks.timing.measure_together: contenders timed in turns, ratios read round by round."""

import pytest

from benchmarks.timing import measure, measure_together, paired


class VirtualMachine:
    """A machine whose speed drifts: each call of a contender costs ``work`` units, at a
    slowdown that grows with every call made so far (a GPU heating up, a neighbour's load)."""

    def __init__(self, drift=0.01):
        self.now, self.calls, self.drift, self.log = 0.0, 0, drift, []

    def contender(self, name, work):
        def fn():
            self.calls += 1
            self.now += work * (1 + self.drift * self.calls)
            self.log.append(name)
        return fn

    def start(self):  # the clock
        self.t0 = self.now

    def stop(self):
        return self.now - self.t0


def test_rounds_rotate_the_order():
    m = VirtualMachine(drift=0)
    fns = {k: m.contender(k, 1.0) for k in "abc"}
    measure_together(fns, m, warmup=0, blocks=3, block_s=1.0)  # a block is one call
    timed = m.log[-9:]  # after each contender's calibration (two calls)
    assert timed == list("abc" "bca" "cab")


def test_ratios_hold_round_by_round_under_drift():
    m = VirtualMachine(drift=0.01)
    fns = {"fast": m.contender("fast", 1.0), "slow": m.contender("slow", 2.0)}
    t = measure_together(fns, m, warmup=0, blocks=5, block_s=10.0)
    r = paired(t["fast"], t["slow"])
    assert r["rounds"] == 5
    assert 0.45 < r["min_x"] <= r["median_x"] <= r["max_x"] < 0.55
    # timed one after the other, the drift shows in the ratio of the medians
    m2 = VirtualMachine(drift=0.01)
    seq = {k: measure(m2.contender(k, w), m2, warmup=0, blocks=5, block_s=10.0)
           for k, w in (("fast", 1.0), ("slow", 2.0))}
    assert seq["fast"]["median_ms"] / seq["slow"]["median_ms"] < 0.45


def test_a_contender_that_fails_leaves_the_rounds_the_others_finish():
    m = VirtualMachine(drift=0)
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("out of memory")
        m.now += 1.0

    fns = {"ok": m.contender("ok", 1.0), "flaky": flaky}
    errors = []
    t = measure_together(fns, m, warmup=0, blocks=4, block_s=1.0,
                         on_error=lambda k, exc: errors.append(k) or f"error: {exc}")
    assert t["flaky"] == "error: out of memory" and errors == ["flaky"]
    assert len(t["ok"]["samples_ms"]) == 4
    assert paired(t["ok"], t["flaky"]) == "error: out of memory"
    with pytest.raises(RuntimeError, match="out of memory"):
        calls["n"] = 0
        measure_together(fns, m, warmup=0, blocks=4, block_s=1.0)


def test_absorb_makes_one_untimed_call_before_each_block():
    m = VirtualMachine(drift=0)
    fns = {"a": m.contender("a", 1.0)}
    t = measure_together(fns, m, warmup=0, blocks=3, block_s=2.0, absorb=True)
    assert t["a"]["reps"] == 2
    assert len(m.log) == 2 + 3 * (1 + 2)  # calibration, then per block an untimed call and two timed
    assert t["a"]["samples_ms"] == [1e3] * 3
