"""Optimizers: the flat-buffer update equals a plain per-parameter loop of the formula."""

import numpy as np
import pytest

import gpudnn
from gpudnn.errors import ConfigError


def sgd_reference(theta, grads, lr, momentum, nesterov, weight_decay):
    """torch.optim.SGD's rule (dampening 0), one parameter at a time, in plain Python."""
    theta = [float(t) for t in theta]
    v = [0.0] * len(theta)
    for g_t in grads:
        for i in range(len(theta)):
            g = g_t[i] + weight_decay * theta[i]
            if momentum:
                v[i] = momentum * v[i] + g
                g = g + momentum * v[i] if nesterov else v[i]
            theta[i] -= lr * g
    return np.array(theta)


@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=0.1),
        dict(lr=0.1, momentum=0.9),
        dict(lr=0.05, momentum=0.8, nesterov=True),
        dict(lr=0.1, weight_decay=0.01),
        dict(lr=0.03, momentum=0.9, nesterov=True, weight_decay=1e-3),
    ],
    ids=["plain", "momentum", "nesterov", "decay", "all"],
)
def test_sgd_matches_the_formula(backend, rng, kw):
    theta0 = rng.normal(size=7)
    grads = [rng.normal(size=7) for _ in range(4)]
    opt = gpudnn.optim.SGD(**kw)
    theta = backend.asarray(theta0.copy())
    for g in grads:
        opt.step(theta, backend.asarray(g), backend.xp)
    full = dict(momentum=0.0, nesterov=False, weight_decay=0.0) | kw
    want = sgd_reference(theta0, grads, **full)
    np.testing.assert_allclose(backend.to_numpy(theta), want, rtol=1e-13, atol=1e-15)
    assert opt.t == 4


def test_optimizer_refuses_a_second_network():
    opt = gpudnn.optim.SGD(lr=0.1)
    opt.step(np.zeros(3), np.ones(3), np)
    with pytest.raises(ConfigError, match="one optimizer per network"):
        opt.step(np.zeros(4), np.ones(4), np)


@pytest.mark.parametrize(
    "kw", [dict(lr=0), dict(lr=-1), dict(lr="fast"), dict(momentum=1.0), dict(momentum=-0.1),
           dict(weight_decay=-1), dict(nesterov=True), dict(lr=float("nan")), dict(lr=float("inf")),
           dict(weight_decay=float("inf")), dict(momentum=float("-inf"))]
)
def test_bad_hyperparameters(kw):
    with pytest.raises(ConfigError):
        gpudnn.optim.SGD(**kw)


def test_state_dict_round_trip_continues_exactly(rng):
    theta0 = rng.normal(size=5)
    grads = [rng.normal(size=5) for _ in range(4)]
    a = gpudnn.optim.SGD(lr=0.1, momentum=0.9)
    ta = theta0.copy()
    for g in grads:
        a.step(ta, g, np)
    b = gpudnn.optim.SGD(lr=0.1, momentum=0.9)
    tb = theta0.copy()
    for g in grads[:2]:
        b.step(tb, g, np)
    c = gpudnn.optim.SGD(lr=0.1, momentum=0.9)
    c.load_state_dict(b.state_dict(), tb, np)
    for g in grads[2:]:
        c.step(tb, g, np)
    np.testing.assert_array_equal(ta, tb)
    assert c.t == 4
    with pytest.raises(ConfigError, match="not SGD"):
        c.load_state_dict({"type": "Adam", "t": 1, "buffers": {}}, tb, np)
