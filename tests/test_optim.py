"""Optimizers: the flat-buffer update equals a plain per-parameter loop of the paper's formula."""

import math
import tracemalloc

import numpy as np
import pytest

import gpudnn
from gpudnn.data import Standardizer, train_test_split
from gpudnn.errors import ConfigError
from gpudnn.kernels import numba_status
from gpudnn.optim import LAMB, LARS, SGD, Adam, AdamW, RMSprop, clip_grad_norm

# a flat buffer of 9 parameters in three tensors; the middle one starts at zero like a bias
SEGMENTS = [(0, 4), (4, 6), (6, 9)]


def start(rng):
    theta0 = rng.normal(size=9)
    theta0[4:6] = 0.0
    return theta0, [rng.normal(size=9) for _ in range(4)]


# --- plain references, one parameter at a time ------------------------------------------
def momentum_reference(theta, grads, lr, momentum, nesterov, weight_decay, ratio):
    """SGD with momentum (dampening 0) whose step for each segment is scaled by
    ``ratio(theta, g, a, b)``, one parameter at a time, in plain Python."""
    theta = [float(t) for t in theta]
    v = [0.0] * len(theta)
    for g_t in grads:
        for a, b in SEGMENTS:
            r = ratio(theta, g_t, a, b)
            for i in range(a, b):
                g = r * (g_t[i] + weight_decay * theta[i])
                if momentum:
                    v[i] = momentum * v[i] + g
                    g = g + momentum * v[i] if nesterov else v[i]
                theta[i] -= lr * g
    return np.array(theta)


def sgd_reference(theta, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD's rule (Sutskever et al. 2013): no per-layer scaling."""
    return momentum_reference(theta, grads, lr, momentum, nesterov, weight_decay,
                              ratio=lambda theta, g, a, b: 1.0)


def norm(x, a, b):
    return math.sqrt(sum(x[i] ** 2 for i in range(a, b)))


def trust(c, w_norm, n_norm):
    """The trust ratio c·‖θ‖/n, 1 where a norm is zero (LARS and LAMB)."""
    return c * w_norm / n_norm if w_norm > 0 and n_norm > 0 else 1.0


def lars_reference(theta, grads, lr, momentum=0.9, nesterov=False, weight_decay=0.0,
                   trust_coefficient=0.001):
    """You et al. 2017, Algorithm 1, per layer (segment), η outside the momentum:
    r = c‖θ‖ / (‖g‖ + λ‖θ‖) scales g + λθ."""

    def ratio(theta, g, a, b):
        w_norm = norm(theta, a, b)
        return trust(trust_coefficient, w_norm, norm(g, a, b) + weight_decay * w_norm)

    return momentum_reference(theta, grads, lr, momentum, nesterov, weight_decay, ratio)


def adam_reference(theta, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                   decoupled_weight_decay=False, lamb=False):
    """Kingma & Ba 2015 Algorithm 1 (L2 or Loshchilov & Hutter's decoupled decay), or LAMB
    (You et al. 2020, Algorithm 2) when ``lamb``: the same moments, then a trust ratio."""
    (b1, b2), n = betas, len(theta)
    theta, m, v = [float(t) for t in theta], [0.0] * n, [0.0] * n
    for t, g_t in enumerate(grads, start=1):
        u = [0.0] * n
        for i in range(n):
            g = g_t[i]
            if weight_decay and not (decoupled_weight_decay or lamb):
                g += weight_decay * theta[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            u[i] = m_hat / (math.sqrt(v_hat) + eps)
            if lamb:
                u[i] += weight_decay * theta[i]
            elif decoupled_weight_decay:
                theta[i] *= 1 - lr * weight_decay
        for a, b in SEGMENTS if lamb else [(0, n)]:
            r = trust(1.0, norm(theta, a, b), norm(u, a, b)) if lamb else 1.0
            for i in range(a, b):
                theta[i] -= lr * r * u[i]
    return np.array(theta)


def lamb_reference(theta, grads, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0):
    return adam_reference(theta, grads, lr, betas, eps, weight_decay, lamb=True)


def adamw_reference(theta, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
    return adam_reference(theta, grads, lr, betas, eps, weight_decay, decoupled_weight_decay=True)


def rmsprop_reference(theta, grads, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                      centered=False):
    """Tieleman & Hinton 2012 (centered: Graves 2013), as torch.optim.RMSprop."""
    n = len(theta)
    theta, v, g_avg, buf = [float(t) for t in theta], [0.0] * n, [0.0] * n, [0.0] * n
    for g_t in grads:
        for i in range(n):
            g = g_t[i] + weight_decay * theta[i]
            v[i] = alpha * v[i] + (1 - alpha) * g * g
            if centered:
                g_avg[i] = alpha * g_avg[i] + (1 - alpha) * g
                d = math.sqrt(v[i] - g_avg[i] ** 2) + eps
            else:
                d = math.sqrt(v[i]) + eps
            if momentum:
                buf[i] = momentum * buf[i] + g / d
                theta[i] -= lr * buf[i]
            else:
                theta[i] -= lr * g / d
    return np.array(theta)


CASES = [
    (SGD, sgd_reference, dict(lr=0.1)),
    (SGD, sgd_reference, dict(lr=0.1, momentum=0.9)),
    (SGD, sgd_reference, dict(lr=0.05, momentum=0.8, nesterov=True)),
    (SGD, sgd_reference, dict(lr=0.1, weight_decay=0.01)),
    (SGD, sgd_reference, dict(lr=0.03, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    (Adam, adam_reference, dict(lr=0.01)),
    (Adam, adam_reference, dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    (Adam, adam_reference, dict(lr=0.02, weight_decay=0.1, decoupled_weight_decay=True)),
    (AdamW, adamw_reference, dict(lr=0.01)),
    (AdamW, adamw_reference, dict(lr=0.01, weight_decay=0.05)),
    (RMSprop, rmsprop_reference, dict(lr=0.01)),
    (RMSprop, rmsprop_reference, dict(lr=0.01, alpha=0.9, weight_decay=0.01, momentum=0.5)),
    (RMSprop, rmsprop_reference, dict(lr=0.01, centered=True, momentum=0.9, eps=1e-4)),
    (LARS, lars_reference, dict(lr=2.0)),
    (LARS, lars_reference, dict(lr=5.0, momentum=0.0, weight_decay=0.01, trust_coefficient=0.02)),
    (LARS, lars_reference, dict(lr=1.0, nesterov=True, weight_decay=1e-3)),
    (LAMB, lamb_reference, dict(lr=0.01)),
    (LAMB, lamb_reference, dict(lr=0.02, betas=(0.85, 0.98), eps=1e-8, weight_decay=0.1)),
]
IDS = [f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for cls, _, kw in CASES]


@pytest.mark.parametrize("cls,reference,kw", CASES, ids=IDS)
def test_step_matches_the_papers_formula(backend, rng, cls, reference, kw):
    theta0, grads = start(rng)
    opt = cls(**kw)
    theta = backend.asarray(theta0.copy())
    for g in grads:
        opt.step(theta, backend.asarray(g), backend.xp, SEGMENTS)
    want = reference(theta0, grads, **kw)
    np.testing.assert_allclose(backend.to_numpy(theta), want, rtol=1e-12, atol=1e-15)
    assert opt.t == 4 and opt.last_lr == kw["lr"]


@pytest.fixture(scope="module")
def digits():
    X, y = gpudnn.load_digits()
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, seed=0)
    scaler = Standardizer.fit(Xtr)
    return scaler.transform(Xtr), scaler.transform(Xte), ytr, yte


@pytest.mark.parametrize(
    "opt",
    [SGD(lr=0.05, momentum=0.9), Adam(lr=3e-3), AdamW(lr=3e-3), RMSprop(lr=1e-3),
     LARS(lr=2.0), LAMB(lr=0.01)],
    ids=lambda o: type(o).__name__,
)
def test_every_optimizer_trains_the_digits(digits, opt):
    Xtr, Xte, ytr, yte = digits
    net = gpudnn.Network([64, 64, 10], backend="numpy", seed=0)
    net.classes_ = np.arange(10)
    before = net.evaluate(Xte, yte)["loss"]
    h = net.fit(Xtr, ytr, epochs=8, batch_size=64, optimizer=opt, verbose=0)
    after = net.evaluate(Xte, yte)
    assert h["loss"][-1] < h["loss"][0] and after["loss"] < before / 5, (before, after)
    assert after["accuracy"] > 0.9


def test_clip_grad_norm(backend):
    """g · c / (‖g‖ + 10⁻⁶) above the limit c (torch's clip_grad_norm_ rule, its 10⁻⁶
    included: the tolerance is tight enough to see it), g itself below."""
    g = backend.asarray(np.array([3.0, 4.0, 0.0]))
    norm = clip_grad_norm(g, 1.0, backend.xp)
    assert float(norm) == 5.0
    clipped = np.array([3.0, 4.0, 0.0]) / (5.0 + 1e-6)
    np.testing.assert_allclose(backend.to_numpy(g), clipped, rtol=1e-15)
    assert not np.allclose(clipped, [0.6, 0.8, 0.0], rtol=1e-8, atol=0)  # the 10⁻⁶ shows
    assert float(clip_grad_norm(g, 10.0, backend.xp)) == pytest.approx(1.0 / (1.0 + 2e-7), rel=1e-15)
    np.testing.assert_array_equal(backend.to_numpy(g), clipped)  # under the limit: unchanged


def test_state_too_large_for_memory_is_an_out_of_memory_error(monkeypatch):
    """The optimizer's state buffers (Adam: m, v, and scratch) failing to allocate: one
    OutOfMemoryError saying what and how large, and nothing half-made: the next step
    starts the state afresh."""
    from gpudnn.errors import GpudnnError, OutOfMemoryError

    opt, params, grads = Adam(lr=0.1), np.zeros(1000), np.ones(1000)
    with monkeypatch.context() as mp:
        mp.setattr(np, "zeros_like", lambda *a, **k: (_ for _ in ()).throw(MemoryError("simulated")))
        with pytest.raises(OutOfMemoryError, match=r"Adam's state buffers \(one per parameter each: 1,000, about "
                                                   r"7\.45e-06 GiB a buffer\) could not be allocated \(MemoryError: "
                                                   r"simulated\)") as err:
            opt.step(params, grads, np)
    assert isinstance(err.value, GpudnnError) and opt.state is None
    opt.step(params, grads, np)
    assert opt.t == 1 and set(opt.state) == {"m", "v"}


@pytest.mark.parametrize("kernels", ["auto", "generic"])
def test_gradients_of_another_shape_are_refused(kernels):
    """9 gradients for 10 parameters: the fused Numba SGD read past the view's end (into
    whatever followed it), the generic one raised NumPy's broadcasting error."""
    big = np.arange(100.0)
    for g in (big[:9], np.ones((10, 1))):
        params = np.zeros(10)
        with pytest.raises(ConfigError, match=r"gradients of shape .* for parameters of shape \(10,\)"):
            SGD(lr=1.0, kernels=kernels).step(params, g, np)
        assert not params.any()


def test_a_state_that_does_not_fit_changes_nothing_and_hyperparameters_come_first():
    """load_state_dict is all or nothing: an unknown hyperparameter or a buffer of another
    size leaves lr, t and the moments as they were (lr was set, the moments zeroed). And the
    loaded hyperparameters shape the buffers: SGD(momentum=0.9)'s state loads into SGD()."""
    rng = np.random.default_rng(0)
    params, g = rng.normal(size=5), rng.normal(size=5)
    opt = Adam(lr=0.01)
    for _ in range(3):
        opt.step(params, g, np)
    sd = opt.state_dict()
    m = opt.state["m"].copy()
    for bad in ({**sd, "hyper": {**sd["hyper"], "lr": 0.5, "amsgrad": True}},
                {**sd, "hyper": {**sd["hyper"], "lr": 0.5}, "buffers": {"m": np.zeros(4), "v": np.zeros(4)}},
                {**sd, "buffers": {"m": np.zeros(5)}}):
        with pytest.raises(ConfigError):
            opt.load_state_dict(bad, params, np)
        assert opt.lr == 0.01 and opt.t == 3 and opt.state["m"].tobytes() == m.tobytes()
        opt.step(params, g, np)  # and it still steps on its own buffer
        opt.t = 3
        m = opt.state["m"].copy()
    heavy = SGD(lr=0.1, momentum=0.9)
    heavy.step(params, g, np)
    plain = SGD(lr=0.1)
    plain.load_state_dict(heavy.state_dict(), params, np)
    assert plain.momentum == 0.9 and plain.state["v"].tobytes() == heavy.state["v"].tobytes()


@pytest.mark.parametrize("make", [lambda: SGD(lr=0.1, momentum=0.9), lambda: Adam(lr=0.01), lambda: LARS(lr=1.0)])
def test_an_unbound_copy_goes_on_with_the_state_dict_on_another_buffer(make):
    """Optimizer.unbound(): hyperparameters, t and last lr, no state or scratch (nor LARS's
    trust-ratio buffers): loaded with the state_dict onto a copy of the parameters, it
    steps exactly as the original does."""
    rng = np.random.default_rng(0)
    params, g = rng.normal(size=12), rng.normal(size=12)
    opt = make()
    for _ in range(2):
        opt.step(params, g, np, ((0, 8), (8, 12)))
    c = opt.unbound()
    assert c.state is None and c._scratch == () and c.t == 2 and c.last_lr == opt.last_lr
    assert getattr(c, "_trust", None) is None and opt.state is not None
    other = params.copy()
    c.load_state_dict(opt.state_dict(), other, np, ((0, 8), (8, 12)))
    opt.step(params, g, np, ((0, 8), (8, 12)))
    c.step(other, g, np, ((0, 8), (8, 12)))
    np.testing.assert_array_equal(other, params)


def test_optimizer_refuses_a_second_network():
    opt = SGD(lr=0.1)
    opt.step(np.zeros(3), np.ones(3), np)
    with pytest.raises(ConfigError, match="holds the state .* of another network's parameters .* make a new optimizer"):
        opt.step(np.zeros(4), np.ones(4), np)


@pytest.mark.parametrize(
    "cls,kw",
    [(SGD, dict(lr=0)), (SGD, dict(lr=-1)), (SGD, dict(lr="fast")), (SGD, dict(momentum=1.0)),
     (SGD, dict(momentum=-0.1)), (SGD, dict(weight_decay=-1)), (SGD, dict(nesterov=True)),
     (SGD, dict(lr=float("nan"))), (SGD, dict(lr=float("inf"))),
     (SGD, dict(weight_decay=float("inf"))), (SGD, dict(momentum=float("-inf"))),
     (Adam, dict(betas=(0.9, 1.0))), (Adam, dict(betas=0.9)), (AdamW, dict(eps=-1)),
     (RMSprop, dict(alpha=1.5)), (LARS, dict(trust_coefficient=0)), (LAMB, dict(weight_decay=-0.1))],
)
def test_bad_hyperparameters(cls, kw):
    with pytest.raises(ConfigError):
        cls(**kw)


def test_segments_must_tile_the_buffer():
    with pytest.raises(ConfigError, match="tile"):
        LARS().step(np.ones(5), np.ones(5), np, [(0, 2), (3, 5)])


ALL = [SGD(lr=0.1, momentum=0.9, nesterov=True), Adam(lr=0.01, weight_decay=0.1),
       AdamW(lr=0.01), RMSprop(lr=0.01, centered=True, momentum=0.5),
       LARS(lr=3.0, weight_decay=1e-2), LAMB(lr=0.01, weight_decay=0.01)]


@pytest.mark.parametrize("make", [lambda o=o: type(o)(**o.state_dict()["hyper"]) for o in ALL],
                         ids=[type(o).__name__ for o in ALL])
def test_state_dict_round_trip_continues_exactly(rng, make):
    theta0, grads = start(rng)
    a, ta = make(), theta0.copy()
    for g in grads:
        a.step(ta, g, np, SEGMENTS)
    b, tb = make(), theta0.copy()
    for g in grads[:2]:
        b.step(tb, g, np, SEGMENTS)
    saved = b.state_dict()
    saved["buffers"] = {k: v.copy() for k, v in saved["buffers"].items()}
    c = make()
    c.lr = 123.0  # restored from the state
    c.load_state_dict(saved, tb, np, SEGMENTS)
    for g in grads[2:]:
        c.step(tb, g, np, SEGMENTS)
    np.testing.assert_array_equal(ta, tb)
    assert c.t == 4 and c.lr == a.lr


def test_state_dict_refuses_another_optimizer():
    with pytest.raises(ConfigError, match="not SGD"):
        SGD(lr=0.1).load_state_dict({"type": "Adam", "t": 1, "buffers": {}}, np.ones(3), np)


@pytest.mark.parametrize("opt", ALL, ids=lambda o: type(o).__name__)
def test_a_step_allocates_nothing_of_parameter_size(opt):
    P = 200_000
    rng = np.random.default_rng(0)
    theta, g = rng.normal(size=P), rng.normal(size=P)
    segments = [(0, 150_000), (150_000, 150_100), (150_100, P)]
    opt = type(opt)(**opt.state_dict()["hyper"])
    opt.step(theta, g, np, segments)  # makes the state
    tracemalloc.start()
    opt.step(theta, g, np, segments)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < P * 8 / 16, f"{type(opt).__name__} allocated {peak} bytes"


@pytest.mark.skipif(not numba_status()[0], reason="Numba is not installed")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kw", [dict(lr=0.1), dict(lr=0.1, momentum=0.9, weight_decay=0.01),
                                dict(lr=0.05, momentum=0.8, nesterov=True)], ids=["plain", "momentum", "nesterov"])
def test_fused_sgd_equals_its_generic_twin(rng, dtype, kw):
    """The one-pass Numba SGD (no scratch buffer) against the generic passes."""
    theta0 = rng.normal(size=1000).astype(dtype)
    grads = [rng.normal(size=1000).astype(dtype) for _ in range(5)]
    fast, plain = gpudnn.optim.SGD(**kw), gpudnn.optim.SGD(**kw, kernels="generic")
    a, b = theta0.copy(), theta0.copy()
    for g in grads:
        fast.step(a, g, np)
        plain.step(b, g, np)
    assert fast._fused is not None and plain._fused is None
    assert fast._scratch == () and len(plain._scratch) == 1
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == "float32" else dict(rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(a, b, **tol)
