"""Learning-rate schedules: known values, composition, use as an optimizer's lr, exact resume."""

import math

import numpy as np
import pytest

from gpudnn.errors import ConfigError
from gpudnn.optim import SGD
from gpudnn.schedules import (
    Constant,
    CosineDecay,
    ExponentialDecay,
    LinearWarmup,
    ReduceLROnPlateau,
    StepDecay,
    linear_scaling,
)


def values(schedule, n):
    return [schedule(t) for t in range(n)]


def test_known_values():
    assert values(Constant(0.3), 3) == [0.3] * 3
    assert values(StepDecay(0.1, step_size=3, gamma=0.5), 7) == pytest.approx(
        [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025], rel=1e-15)
    assert values(ExponentialDecay(1.0, gamma=0.5, step_size=2), 5) == pytest.approx(
        [1.0, math.sqrt(0.5), 0.5, math.sqrt(0.125), 0.25], rel=1e-15)
    cos = CosineDecay(1.0, total_steps=10, min_lr=0.1)
    assert [cos(0), cos(5), cos(10), cos(20)] == pytest.approx([1.0, 0.55, 0.1, 0.1], rel=1e-15)
    assert cos(2) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 5)), rel=1e-15)
    assert linear_scaling(0.1, 1024) == pytest.approx(0.4) and linear_scaling(0.1, 64, 32) == pytest.approx(0.2)


def test_warmup_composes_with_any_schedule():
    w = LinearWarmup(CosineDecay(1.0, total_steps=10), warmup_steps=4)
    assert values(w, 6) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, CosineDecay(1.0, 10)(1)], rel=1e-15)
    assert w(4 + 5) == pytest.approx(0.5, rel=1e-15) and w(100) == 0.0
    assert values(LinearWarmup(0.2, 2), 4) == pytest.approx([0.1, 0.2, 0.2, 0.2])  # a number: constant
    stepped = LinearWarmup(StepDecay(0.1, step_size=2), 1)
    assert values(stepped, 4) == pytest.approx([0.1, 0.1, 0.1, 0.01])


def epochs(schedule, losses, key="val_loss"):
    """Feed one epoch's logs per loss; the learning rate (at t = 0) after each epoch."""
    out = []
    for v in losses:
        schedule.on_epoch_end({"loss": 9.0, key: v})
        out.append(schedule(0))
    return out


def test_reduce_on_plateau_waits_patience_epochs_then_multiplies():
    s = ReduceLROnPlateau(1.0, factor=0.5, patience=2, min_delta=0.0)
    got = epochs(s, [5, 4, 4, 4.5, 3, 3, 3, 3, 3])
    assert got == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.125]


def test_reduce_on_plateau_cooldown_min_lr_and_monitor():
    s = ReduceLROnPlateau(1.0, factor=0.1, patience=1, cooldown=2, min_lr=0.05, min_delta=0.0)
    # no improvement ever after the first epoch: reduce, wait out 2 cooldown epochs, reduce
    assert epochs(s, [1, 1, 1, 1, 1, 1]) == [1, 0.1, 0.1, 0.1, 0.05, 0.05]
    t = ReduceLROnPlateau(0.2, monitor="loss", patience=1, factor=0.5)
    assert epochs(t, [1, 0, 0]) == [0.2, 0.1, 0.05]  # "loss" is 9.0 every epoch: a plateau
    auto = ReduceLROnPlateau(1.0, patience=1, factor=0.5)
    auto.on_epoch_end({"loss": 2.0})
    auto.on_epoch_end({"loss": 2.0})  # no val_loss: "auto" watches the training loss
    assert auto(0) == 0.5


def test_schedule_as_an_optimizer_lr():
    opt = SGD(lr=LinearWarmup(StepDecay(0.4, step_size=2, gamma=0.5), warmup_steps=2))
    theta, seen = np.zeros(2), []
    for _ in range(6):
        opt.step(theta, np.ones(2), np)
        seen.append(opt.last_lr)
    assert seen == pytest.approx([0.2, 0.4, 0.4, 0.4, 0.2, 0.2])
    assert theta == pytest.approx(-np.full(2, sum(seen)))
    assert "LinearWarmup" in repr(opt)


def test_state_dicts_resume_a_plateau_schedule_exactly():
    def make():
        return SGD(lr=LinearWarmup(ReduceLROnPlateau(CosineDecay(0.5, 40), patience=1, factor=0.5), 3),
                   momentum=0.9)

    rng = np.random.default_rng(0)
    grads = [rng.normal(size=4) for _ in range(12)]
    losses = [3, 2, 2, 2, 1, 1]

    def run(opt, theta, span):
        for e in span:
            for g in grads[2 * e : 2 * e + 2]:
                opt.step(theta, g, np)
            opt.lr.on_epoch_end({"loss": float(losses[e])})

    a, ta = make(), np.ones(4)
    run(a, ta, range(6))
    b, tb = make(), np.ones(4)
    run(b, tb, range(3))
    saved = b.state_dict()
    saved["buffers"] = {k: v.copy() for k, v in saved["buffers"].items()}
    c = make()
    c.load_state_dict(saved, tb, np)
    run(c, tb, range(3, 6))
    np.testing.assert_array_equal(ta, tb)
    assert c.lr.schedule.scale == a.lr.schedule.scale < 1
    with pytest.raises(ConfigError, match="disagree"):
        SGD(lr=0.1).load_state_dict(saved, tb, np)
    with pytest.raises(ConfigError, match="for LinearWarmup, not Constant"):
        Constant(0.1).load_state_dict(saved["schedule"])


@pytest.mark.parametrize(
    "make",
    [lambda: Constant(0), lambda: StepDecay(0.1, 0), lambda: StepDecay(0.1, 1.5),
     lambda: ExponentialDecay(0.1, -1), lambda: CosineDecay(0.1, 10, min_lr=1.0),
     lambda: LinearWarmup(0.1, 0), lambda: ReduceLROnPlateau(0.1, factor=1.0),
     lambda: ReduceLROnPlateau(0.1, cooldown=-1), lambda: linear_scaling(0.1, 0),
     lambda: Constant(float("inf"))],
)
def test_bad_arguments(make):
    with pytest.raises(ConfigError):
        make()
