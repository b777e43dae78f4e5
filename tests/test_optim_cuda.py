"""The fused CUDA optimizer updates (gpudnn/kernels/cuda_optim.py) equal their generic twins,
and mixed precision's device-side skip flag leaves θ, the optimizer's state and count, and
the loss scaler's numbers exactly as the host's rule does — with no host read in a step.

Every case runs on the CPU through tests/cuda_emulator.py (the CUDA source compiled by g++,
run by the optimizers' own launch code on NumPy arrays, each argument's C type checked) and,
on a GPU machine, on CuPy. There the twin is the generic CuPy passes. On the emulator the
kernels repeat their twin's operations in the same order and dtype, so where the host
compiler does not contract a·b + c into an FMA (x86-64 without -march) they agree bit for bit
and the tests say so; elsewhere (a GPU: nvcc contracts) to rounding.
"""

import os
import platform
import types

import numpy as np
import pytest

import gpudnn
from gpudnn.amp import LossScaler
from gpudnn.backend import get_backend
from gpudnn.data import train_test_split
from gpudnn.errors import ConfigError
from gpudnn.kernels import cuda_optim, cuda_updates, get_kernels
from gpudnn.optim import LAMB, LARS, SGD, Adam, AdamW, Optimizer, RMSprop
from gpudnn.schedules import CosineDecay

from conftest import CUPY_MARKS
from cuda_emulator import EmulatedCupy, EmulatedRawModule
from helpers import emulated_cuda_kernels, emulated_cupy, launched, needs_compiler
from nvrtc import assert_compiles

P = 1000
SEGMENTS = ((0, 600), (600, 620), (620, 1000))  # as a network's W^0, b^0, W^1: LARS and LAMB use them
EXACT_HOST = platform.machine() in ("x86_64", "AMD64")  # g++ emits no FMA there by default
TOL = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-14)}

CASES = [
    (SGD, dict(lr=0.1)),
    (SGD, dict(lr=0.1, weight_decay=0.01)),
    (SGD, dict(lr=0.05, momentum=0.9)),
    (SGD, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3)),
    (Adam, dict(lr=0.01)),
    (Adam, dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    (Adam, dict(lr=0.02, weight_decay=0.1, decoupled_weight_decay=True)),
    (AdamW, dict(lr=0.01)),
    (RMSprop, dict(lr=0.01)),
    (RMSprop, dict(lr=0.01, alpha=0.9, weight_decay=0.01, momentum=0.5)),
    (RMSprop, dict(lr=0.01, centered=True, eps=1e-4)),
    (RMSprop, dict(lr=0.01, centered=True, momentum=0.9, weight_decay=0.01)),
    (LARS, dict(lr=2.0)),
    (LARS, dict(lr=5.0, momentum=0.0, weight_decay=0.01, trust_coefficient=0.02)),
    (LARS, dict(lr=1.0, nesterov=True, weight_decay=1e-3)),
    (LAMB, dict(lr=0.01)),
    (LAMB, dict(lr=0.02, betas=(0.85, 0.98), eps=1e-8, weight_decay=0.1)),
]
IDS = [f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'}" for cls, kw in CASES]
NO_SCRATCH = (SGD, Adam, AdamW, RMSprop)  # one launch and nothing else: no (P,) scratch


class Device:
    """Where the fused updates run (xp), where their twins run (twin_xp), and the copies."""

    def __init__(self, name):
        self.name = name
        if name == "cuda-emulated":
            self.xp, self.twin_xp, self.exact = emulated_cupy(), np, EXACT_HOST
            self.put, self.get = (lambda a: np.array(a, copy=True)), (lambda a: np.array(a, copy=True))
        else:
            backend = get_backend("cupy")
            self.xp = self.twin_xp = backend.xp
            self.exact = False
            self.put, self.get = backend.asarray, backend.to_numpy

    def close(self, actual, expected, dtype):
        """Fused against twin: bit for bit where the emulator is exact, else to rounding."""
        actual, expected = self.get(actual), self.get(expected)
        if self.exact:
            np.testing.assert_array_equal(actual, expected)
        else:
            np.testing.assert_allclose(actual, expected, **TOL[dtype])


@pytest.fixture(params=["cuda-emulated", pytest.param("cuda", marks=CUPY_MARKS)])
def device(request):
    return Device(request.param)


def _problem(rng, dtype, steps=5):
    theta = rng.normal(size=P).astype(dtype)
    theta[600:620] = 0.0  # a fresh zero bias: LARS and LAMB take a ratio of 1 there
    return theta, [rng.normal(size=P).astype(dtype) for _ in range(steps)]


def _no_generic_passes(monkeypatch, cls):
    """The fused optimizer must not fall back to its generic ``_update``."""

    def fail(*args, **kwargs):
        raise AssertionError(f"{cls.__name__} ran its generic passes instead of the fused update")

    for klass in cls.__mro__:
        if "_update" in vars(klass):
            monkeypatch.setattr(klass, "_update", fail)


def _launches(opt):
    module = opt._cuda._module
    if not isinstance(module, EmulatedRawModule):  # CuPy's RawModule: not counted
        return None
    return {name: f.launches for name, f in module._functions.items()}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
def test_fused_update_equals_its_generic_twin(device, rng, monkeypatch, cls, kw, dtype):
    theta0, grads = _problem(rng, dtype)
    twin = cls(**kw, kernels="generic")
    tb = device.put(theta0) if device.twin_xp is not np else theta0.copy()
    for g in grads:
        twin.step(tb, device.put(g) if device.twin_xp is not np else g, device.twin_xp, SEGMENTS)
    fused, ta = cls(**kw), device.put(theta0)
    with monkeypatch.context() as mp:
        _no_generic_passes(mp, cls)
        for g in grads:
            fused.step(ta, device.put(g), device.xp, SEGMENTS)
    assert fused._cuda is not None and twin._cuda is None
    if cls in NO_SCRATCH:
        assert fused._scratch == () and len(twin._scratch) >= 1
    device.close(ta, tb, dtype)
    assert fused.state.keys() == twin.state.keys()
    for k in fused.state:
        device.close(fused.state[k], twin.state[k], dtype)
    assert fused.t == twin.t == len(grads) and fused.last_lr == twin.last_lr == kw["lr"]
    counts = _launches(fused)
    if counts is not None:  # one update launch per step (LAMB: its direction, then the step)
        kernel = {SGD: "sgd", LARS: "sgd", Adam: "adam", AdamW: "adam", RMSprop: "rmsprop"}.get(cls)
        suffix = "f32" if dtype == "float32" else "f64"
        if cls is LAMB:
            assert counts == {f"lamb_direction_{suffix}": len(grads), f"sgd_{suffix}": len(grads)}
        else:
            assert counts == {f"{kernel}_{suffix}": len(grads)}


def _flag(device, value):
    f = device.put(np.array([value], np.int32))
    return f


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
def test_the_skip_flag_leaves_everything_untouched(device, rng, cls, kw, dtype):
    """Steps with found_inf set (their gradients NaN and infinite, as after an overflow)
    change nothing, bit for bit, and do not count; the others equal the twin's steps, which
    only sees the steps taken. Host-decided steps (no flag) before and after check that the
    step count moves between host and device exactly."""
    theta0, grads = _problem(rng, dtype, steps=9)
    #        host  dev  dev  dev  dev  dev  dev  host host
    skips = [None, 1,   0,   1,   1,   0,   0,   None, None]
    for i, s in enumerate(skips):
        if s:
            grads[i][::7] = np.inf
            grads[i][3::11] = np.nan
    fused, ta = cls(**kw), device.put(theta0)
    twin, tb = cls(**kw, kernels="generic"), theta0.copy()
    for g, s in zip(grads, skips):
        before = device.get(ta), {k: device.get(v) for k, v in (fused.state or {}).items()}
        if s is None:
            fused.step(ta, device.put(g), device.xp, SEGMENTS)
        else:
            with np.errstate(invalid="ignore", over="ignore"):  # LARS's norms of NaN (NumPy only)
                fused.step(ta, device.put(g), device.xp, SEGMENTS, found_inf=_flag(device, s))
        if s:
            np.testing.assert_array_equal(device.get(ta), before[0])
            for k, v in before[1].items():
                np.testing.assert_array_equal(device.get(fused.state[k]), v)
        else:
            twin.step(tb, g, np, SEGMENTS)
    taken = sum(1 for s in skips if not s)
    assert fused.t == twin.t == taken and fused.last_lr == kw["lr"]
    np.testing.assert_allclose(device.get(ta), tb, **TOL[dtype])
    if device.exact:
        np.testing.assert_array_equal(ta, tb)
        for k in fused.state:
            np.testing.assert_array_equal(fused.state[k], twin.state[k])


def test_the_step_count_stays_on_the_device_until_asked(device, rng):
    """Adam's bias corrections on the device follow its count of steps taken; state_dict
    reads it (one sync), and a resumed optimizer continues exactly."""
    theta0, grads = _problem(rng, "float64", steps=6)
    opt, theta = Adam(lr=0.01), device.put(theta0)
    for g, s in zip(grads, [0, 1, 0, 0, 1, 0]):
        opt.step(theta, device.put(g), device.xp, found_inf=_flag(device, s))
        assert opt._t_on_device
    assert opt.t == 4 and opt.last_lr == 0.01
    saved = opt.state_dict()
    assert saved["t"] == 4
    saved["buffers"] = {k: device.put(device.get(v)) for k, v in saved["buffers"].items()}
    theta_copy = device.put(device.get(theta))
    resumed = Adam(lr=0.01)
    resumed.load_state_dict(saved, theta_copy, device.xp)
    more = [device.put(rng.normal(size=P)) for _ in range(3)]
    for g in more:
        opt.step(theta, g, device.xp, found_inf=_flag(device, 0))
        resumed.step(theta_copy, g, device.xp, found_inf=_flag(device, 0))
    np.testing.assert_array_equal(device.get(theta), device.get(theta_copy))
    assert opt.t == resumed.t == 7
    copy = opt.unbound()  # what a pickled trainer carries: the count read back, nothing bound
    assert (copy.t, copy.last_lr) == (7, 0.01) and opt._t_on_device
    assert copy._t_dev is None and not copy._t_on_device and copy.state is None


def test_last_lr_counts_only_steps_taken(device, rng):
    theta0, grads = _problem(rng, "float64", steps=3)
    opt, theta = SGD(lr=0.1), device.put(theta0)
    opt.step(theta, device.put(grads[0]), device.xp, found_inf=_flag(device, 1))
    assert opt.t == 0 and opt.last_lr is None  # as the host's rule: no step taken yet
    opt.lr = 0.2
    opt.step(theta, device.put(grads[1]), device.xp, found_inf=_flag(device, 0))
    assert opt.t == 1 and opt.last_lr == 0.2
    opt.lr = 0.3
    opt.step(theta, device.put(grads[2]), device.xp, found_inf=_flag(device, 1))
    assert opt.t == 1 and opt.last_lr == 0.2


def test_who_may_skip_on_the_device(device):
    theta = device.put(np.zeros(10))
    assert SGD().skips_on_device(theta, device.xp)
    assert not SGD(kernels="generic").skips_on_device(theta, device.xp)
    assert not Adam(lr=CosineDecay(1e-3, 100)).skips_on_device(theta, device.xp)  # lr(t) on the host
    assert not SGD().skips_on_device(np.zeros(10), np)
    assert cuda_updates(np.zeros(10), np) is None
    assert cuda_updates(device.put(np.zeros(10, np.float16)), device.xp) is None
    with pytest.raises(ConfigError, match="found_inf"):
        SGD(kernels="generic").step(theta, theta, device.xp, found_inf=_flag(device, 0))
    with pytest.raises(ConfigError, match="kernels must be"):
        RMSprop(kernels="cuda")


def test_gradients_the_kernels_cannot_read_are_copied_or_refused(device, rng):
    """A strided or float32 gradient for float64 parameters is copied for the kernel into a
    contiguous float64 one; a wrong size is refused, not read past."""
    theta0, grads = _problem(rng, "float64", steps=2)
    wide = [np.repeat(g, 2).astype(np.float32) for g in grads]  # g[::2] is strided float32
    fused, twin = Adam(lr=0.01), Adam(lr=0.01, kernels="generic")
    ta, tb = device.put(theta0), theta0.copy()
    for w in wide:
        fused.step(ta, device.put(w)[::2], device.xp)
        twin.step(tb, w[::2].astype(np.float64), np)
    np.testing.assert_allclose(device.get(ta), tb, **TOL["float64"])
    with pytest.raises(ConfigError, match="shape"):
        fused.step(ta, device.put(grads[0][:-1]), device.xp)


# --- the loss scaler with the flag on the device ---------------------------------------------
SCALER_CASES = [(SGD, dict(lr=0.1, momentum=0.9)), (Adam, dict(lr=1e-2)), (LAMB, dict(lr=1e-2, weight_decay=0.01)),
                (RMSprop, dict(lr=1e-2, centered=True))]


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("cls,kw", SCALER_CASES, ids=[c.__name__ for c, _ in SCALER_CASES])
def test_loss_scaler_on_the_device_equals_the_host_rule(device, rng, monkeypatch, cls, kw, clip):
    """LossScaler.step on a device (flag, fused update, scaler rule: three launches) against
    the host's (a host check, the generic update): the same S, counters, step count and θ —
    and during the steps the host reads nothing back from the device."""
    theta0, grads = _problem(rng, "float32", steps=12)
    bad = {1, 2, 6, 10}  # non-finite gradients: skipped steps
    for i in bad:
        grads[i][5] = np.inf if i % 2 else np.nan

    def net_on(xp, put):
        return types.SimpleNamespace(params=put(theta0), grads=put(grads[0]), xp=xp, segments=SEGMENTS)

    host_net, dev_net = net_on(np, lambda a: a.copy()), net_on(device.xp, device.put)
    host_scaler, dev_scaler = (LossScaler(init_scale=8.0, growth_interval=3) for _ in range(2))
    host_opt, dev_opt = cls(**kw, kernels="generic"), cls(**kw)
    reads = {"pull": 0, "t": 0, "finite": 0}
    t_property = Optimizer.t

    def count_t(opt):
        if opt._t_on_device:
            reads["t"] += 1
        return t_property.fget(opt)

    for i, g in enumerate(grads):
        host_net.grads[...] = g
        with np.errstate(invalid="ignore"):
            taken = host_scaler.step(host_net, host_opt, clip)
        assert taken is (i not in bad)
        dev_net.grads[...] = device.put(g)
        with monkeypatch.context() as mp:
            mp.setattr(LossScaler, "_pull", lambda self: reads.__setitem__("pull", reads["pull"] + 1))
            mp.setattr(LossScaler, "finite", staticmethod(lambda *a: reads.__setitem__("finite", 1)))
            mp.setattr(Optimizer, "t", property(count_t, t_property.fset))
            with np.errstate(invalid="ignore", over="ignore"):
                assert dev_scaler.step(dev_net, dev_opt, clip) is None  # decided on the device
    assert reads == {"pull": 0, "t": 0, "finite": 0}
    assert dev_scaler._on_device
    assert dev_scaler.state_dict() == host_scaler.state_dict()  # reads them back: one sync
    assert dev_scaler.skipped == len(bad) and dev_opt.t == host_opt.t == len(grads) - len(bad)
    np.testing.assert_allclose(device.get(dev_net.params), host_net.params, **TOL["float32"])
    if device.exact:
        np.testing.assert_array_equal(dev_net.params, host_net.params)


def _half(device, precision):
    """The dtype of the passes: float16, or bfloat16 (ml_dtypes; here on the emulator only)."""
    if precision == "float16":
        return np.dtype(np.float16)
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (the test extra installs it)")
    if device.name != "cuda-emulated":
        pytest.skip("bfloat16 on CuPy is checked by tests/test_amp.py's own cases")
    return np.dtype(ml_dtypes.bfloat16)


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_scale_and_unscale_use_the_devices_scale(device, precision):
    """What the passes multiply by: the host's float S, or its copy on the device, give the
    same bits; setting a number hands it back to the host until the next step."""
    half = _half(device, precision)
    scaler = LossScaler(init_scale=3.0)  # not a power of 2: 1/S is rounded
    delta = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5) / 7
    g16 = ((np.arange(6, dtype=np.float32) - 2.5) * 1000).astype(half)
    host = [np.empty((3, 4), half), np.empty(6, np.float32)]
    scaler.scale_delta(delta, host[0], np)
    scaler.unscale(host[1], g16, np)
    grads = device.put(np.zeros(6, np.float32))
    scaler._device(device.xp, grads)  # the numbers onto the device
    assert scaler._on_device
    dev = [device.put(np.empty((3, 4), half)), grads]
    scaler._fresh = False  # as after a step the device decided: reading S would copy it back
    scaler._pull = lambda: pytest.fail("a pass read S back from the device")
    scaler.scale_delta(device.put(delta), dev[0], device.xp)
    scaler.unscale(dev[1], device.put(g16), device.xp)  # the cast and multiply
    for d, h in zip(dev, host):
        np.testing.assert_array_equal(device.get(d), h)
    from gpudnn.kernels.cuda import CupyKernels

    fused = CupyKernels(device.xp)  # float16: its one pass, with the check; bfloat16: as above
    again = device.put(np.zeros(6, np.float32))
    scaler.unscale(again, device.put(g16), device.xp, fused)
    np.testing.assert_array_equal(device.get(again), host[1])
    assert scaler._checked == (precision == "float16") and device.get(scaler._dev.found_inf).tolist() == [0]
    del scaler._pull
    scaler._fresh = True
    scaler.epoch_skipped = 0
    assert not scaler._on_device and scaler.scale == 3.0


@pytest.mark.parametrize("master", ["float32", "float64"])
def test_unscale_kernel_equals_its_twin_and_flags_what_is_not_finite(device, rng, master):
    """CupyKernels.unscale (one pass: g ← g16 · 1/S and the finite check) against the twin
    (cast, multiply, isfinite), bit for bit (a float16 cast and a power of 2 are exact): a
    finite g16 leaves found_inf as it was, 0 or 1 (the scaler zeroes it first); an infinite
    or NaN entry anywhere, the grid-stride loop's second pass included, sets it."""
    from gpudnn.kernels.cuda import CupyKernels
    from gpudnn.kernels.generic import GenericKernels

    fused, twin = CupyKernels(device.xp), GenericKernels(np)
    P = 8 * 262144 + 777  # past one grid-stride pass: 1024 blocks x 256 threads x 8 elements
    with np.errstate(over="ignore"):
        g16 = (rng.standard_normal(P) * 3e4).astype(np.float16)  # some overflow float16: ±inf
    finite = np.where(np.isfinite(g16), g16, np.float16(1.0))
    inv = np.array([2.0**-15], master)
    for g16_case, flag0, bad in [(finite, 0, False), (finite, 1, True), (g16, 0, True)]:
        late = finite.copy()
        for case in ([g16_case] if g16_case is g16 else [g16_case, late]):
            if case is late:
                late[-5] = np.nan  # in the loop's second pass only
            want_g, want_f = np.empty(P, master), np.array([flag0], np.int32)
            twin.unscale(case, want_g, inv, want_f)
            g, f = device.put(np.zeros(P, master)), device.put(np.array([flag0], np.int32))
            assert fused.unscale(device.put(case), g, device.put(inv), f) is g
            np.testing.assert_array_equal(device.get(g), want_g)
            assert device.get(f).tolist() == want_f.tolist() == [int(bad or case is late)]
    # what the kernel does not take (bfloat16 or a strided g16) goes to the twin, as correct
    g, f = device.put(np.zeros(g16[::2].shape, master)), device.put(np.zeros(1, np.int32))
    fused.unscale(device.put(g16)[::2], g, device.put(inv), f)
    np.testing.assert_array_equal(device.get(g), g16[::2].astype(master) * inv[0])
    assert device.get(f).tolist() == [1]


def test_the_unscales_check_stands_only_for_a_step_told_checked(device):
    """An unscale that met an infinite gradient leaves found_inf set. A step told checked
    (the gradients as that unscale left them) is skipped on it; a step not told so (summed
    micro-batches, all-reduced gradients, or gradients the caller set since) decides on the
    gradients it is given: here made finite after the unscale, so it is taken."""
    from gpudnn.kernels.cuda import CupyKernels

    scaler, kernels = LossScaler(init_scale=4.0), CupyKernels(device.xp)
    net = types.SimpleNamespace(params=device.put(np.zeros(P, np.float32)), grads=device.put(np.zeros(P, np.float32)),
                                xp=device.xp, segments=SEGMENTS)
    opt = SGD(lr=0.5)
    scaler._device(device.xp, net.grads)  # the numbers onto the device
    bad = device.put(np.full(P, np.inf, np.float16))
    for checked, skipped, theta in [(False, 0, -0.5), (True, 1, -0.5)]:
        scaler.unscale(net.grads, bad, device.xp, kernels)
        assert device.get(scaler._dev.found_inf).tolist() == [1]
        net.grads[...] = 1.0  # finite now
        with np.errstate(invalid="ignore", over="ignore"):
            assert scaler.step(net, opt, checked=checked) is None
        assert scaler.skipped == skipped and np.all(device.get(net.params) == theta)


# --- whole mixed-precision runs: a network whose optimizer decides skips on the device -----
def _mixed_net(backend, device=None, precision="float16", dtype="float32", kernels="generic"):
    """The same passes (generic kernels unless said) for every run: only the step differs."""
    net = gpudnn.Network([64, 16, 10], seed=0, backend=backend, precision=precision, dropout=0.1,
                         kernels="generic", dtype=dtype)
    if device is not None and device.name == "cuda-emulated":
        net.xp = device.xp  # the optimizer and the scaler see a CUDA device: the emulated one
        if kernels == "cuda":
            net.kernels = emulated_cuda_kernels()
    elif kernels == "cuda":
        net.kernels = get_kernels("cuda", net.backend)
    net.loss_scaler = LossScaler(init_scale=2.0**22, growth_interval=3)  # skips and growths
    return net


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_fit_with_the_unscale_kernels_check_equals_the_host_run(device, digits, monkeypatch, micro_batches):
    """The passes' CUDA kernels: the unscale pass checks the gradients itself, and with one
    micro-batch the step makes no check of its own over all of them (only the output layer's
    ∂J/∂b, written after the unscale, is checked on its own); with two, whose sum the unscales
    never saw, it checks them all. Either way the skips, the scale and the weights are the
    host-decided run's."""
    X, y = digits
    backend = "numpy" if device.name == "cuda-emulated" else "cupy"
    kw = dict(epochs=2, batch_size=32, verbose=0, micro_batches=micro_batches)
    host = _mixed_net(backend)
    h_host = host.fit(X, y, optimizer=Adam(lr=1e-3, kernels="generic"), **kw)
    net, opt = _mixed_net(backend, device, kernels="cuda"), Adam(lr=1e-3)
    checked = []  # the sizes nonfinite checked
    nonfinite = cuda_optim.CudaOptimKernels.nonfinite
    monkeypatch.setattr(cuda_optim.CudaOptimKernels, "nonfinite",
                        lambda self, g, flag: (checked.append(g.shape[0]), nonfinite(self, g, flag))[1])
    h = net.fit(X, y, optimizer=opt, **kw)
    assert sum(h_host["skipped_steps"]) >= 2
    assert h["skipped_steps"] == h_host["skipped_steps"] and h["loss_scale"] == h_host["loss_scale"]
    assert net.loss_scaler.state_dict() == host.loss_scaler.state_dict()
    np.testing.assert_allclose(device.get(net.params), device.get(host.params), rtol=1e-3, atol=1e-4)
    # fit hands the scaler to the host at each epoch's start (epoch_skipped = 0): that step's
    # unscales are the host's, and its check the step's own
    epochs, steps, P = 2, 2 * 7, net.n_params
    fused = (steps - epochs) * micro_batches  # the unscales that checked
    assert checked.count(P) == (epochs if micro_batches == 1 else steps)
    assert checked.count(10) == fused and len(checked) == checked.count(P) + fused  # db^{L-1}: 10 entries
    if device.name == "cuda-emulated":
        assert launched(net.kernels)["unscale_f32"] == fused


@pytest.fixture(scope="module")
def digits():
    X, y = gpudnn.load_digits()
    Xtr, _, ytr, _ = train_test_split(X, y, test_size=0.2, seed=0)
    return Xtr[:200], ytr[:200]


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_fit_with_device_skips_equals_the_host_run(device, digits, tmp_path, precision):
    """fit in mixed precision with Adam: the history (loss, skipped steps, loss scale), the
    scaler and the optimizer's count as the host-decided run (generic Adam) gives them, and
    the weights bit for bit on the exact emulator. A run checkpointed, stopped and resumed
    mid-epoch with the decisions on the device ends where the uninterrupted one does."""
    X, y = digits
    _half(device, precision)
    backend = "numpy" if device.name == "cuda-emulated" else "cupy"
    kw = dict(epochs=3, batch_size=32, verbose=0)
    host = _mixed_net(backend, precision=precision)
    h_host = host.fit(X, y, optimizer=Adam(lr=1e-3, kernels="generic"), **kw)
    net, opt = _mixed_net(backend, device, precision), Adam(lr=1e-3)
    h = net.fit(X, y, optimizer=opt, **kw)
    assert opt._cuda is not None and net.loss_scaler._dev is not None
    if precision == "float16":  # (bfloat16 has float32's range: S = 2^22 never overflows it)
        assert sum(h_host["skipped_steps"]) >= 2
    assert h["skipped_steps"] == h_host["skipped_steps"] and h["loss_scale"] == h_host["loss_scale"]
    assert net.loss_scaler.state_dict() == host.loss_scaler.state_dict()
    assert opt.t == 3 * 7 - sum(h_host["skipped_steps"])
    if device.exact:
        np.testing.assert_array_equal(net.params, host.params)
        assert h["loss"] == h_host["loss"]
    else:
        np.testing.assert_allclose(device.get(net.params), device.get(host.params), rtol=1e-3, atol=1e-4)

    # checkpoints every 5 steps; the first run stops after one epoch, is resumed from step 5
    from gpudnn.checkpoint import list_checkpoints

    ckpt = dict(checkpoint=tmp_path / "run", checkpoint_every=5)
    _mixed_net(backend, device, precision).fit(X, y, optimizer=Adam(lr=1e-3), **{**kw, "epochs": 1}, **ckpt)
    found = list_checkpoints(tmp_path / "run")
    assert [s for s, _ in found] == [5, 7]
    os.unlink(found[-1][1])  # resume from the mid-epoch one
    again, opt2 = _mixed_net(backend, device, precision), Adam(lr=1e-3)
    h2 = again.fit(X, y, optimizer=opt2, **kw, **ckpt, resume=True)
    np.testing.assert_array_equal(device.get(again.params), device.get(net.params))
    assert again.loss_scaler.state_dict() == net.loss_scaler.state_dict() and opt2.t == opt.t
    assert h2["skipped_steps"] == h["skipped_steps"] and h2["loss"] == h["loss"]


def test_float64_master_weights_with_device_skips_equal_the_host_run(device, digits):
    """float16 passes on float64 master weights: the float64 builds of the scaler's kernels
    (amp_set, nonfinite, amp_update) and of the fused Adam decide as the host does."""
    X, y = digits
    backend = "numpy" if device.name == "cuda-emulated" else "cupy"
    kw = dict(epochs=2, batch_size=32, verbose=0)
    host = _mixed_net(backend, dtype="float64")
    h_host = host.fit(X, y, optimizer=Adam(lr=1e-3, kernels="generic"), **kw)
    net, opt = _mixed_net(backend, device, dtype="float64"), Adam(lr=1e-3)
    h = net.fit(X, y, optimizer=opt, **kw)
    assert opt._cuda is not None and net.loss_scaler._dev.dtype == np.float64
    assert sum(h_host["skipped_steps"]) >= 2
    assert h["skipped_steps"] == h_host["skipped_steps"] and h["loss_scale"] == h_host["loss_scale"]
    assert net.loss_scaler.state_dict() == host.loss_scaler.state_dict()
    if device.exact:
        np.testing.assert_array_equal(net.params, host.params)
    else:
        np.testing.assert_allclose(device.get(net.params), device.get(host.params), rtol=1e-3, atol=1e-4)


def test_one_scaler_carried_from_a_float32_to_a_float64_network(device, digits):
    """The scaler's device state is remade for the new master dtype, loaded with the numbers
    the first network left: S and the counters follow the host's rule across both."""
    X, y = digits
    backend = "numpy" if device.name == "cuda-emulated" else "cupy"
    kw = dict(epochs=1, batch_size=32, verbose=0)
    on_device, on_host = (LossScaler(init_scale=2.0**22, growth_interval=3) for _ in range(2))
    for dtype in ("float32", "float64"):
        net, host = _mixed_net(backend, device, dtype=dtype), _mixed_net(backend, dtype=dtype)
        net.loss_scaler, host.loss_scaler = on_device, on_host
        net.fit(X, y, optimizer=Adam(lr=1e-3), **kw)
        host.fit(X, y, optimizer=Adam(lr=1e-3, kernels="generic"), **kw)
        assert on_device._dev.dtype == dtype
        assert on_device.state_dict() == on_host.state_dict()
    assert on_host.skipped >= 2


# --- the source itself ----------------------------------------------------------------------
def _adam_run(source, monkeypatch, rng, flags):
    """θ after Adam steps through the emulated kernels compiled from ``source``, and the
    twin's θ (the steps with flag 0 only), with the device counting."""
    monkeypatch.setattr(cuda_optim, "SOURCE", source)
    theta0, grads = _problem(rng, "float64", steps=len(flags))
    fused, twin = AdamW(lr=0.01), AdamW(lr=0.01, kernels="generic")
    ta, tb = theta0.copy(), theta0.copy()
    for g, f in zip(grads, flags):
        fused.step(ta, g, EmulatedCupy(), found_inf=np.array([f], np.int32))
        if not f:
            twin.step(tb, g, np)
    return (ta, fused.t), (tb, twin.t)


MUTATIONS = [
    ("if (!take_step(skip, step, parity)) return;\n    FOR_EACH(i, P) {\n        T th = theta[i], gi = g[i];\n        if (decay_mode",
     "take_step(skip, step, parity);\n    FOR_EACH(i, P) {\n        T th = theta[i], gi = g[i];\n        if (decay_mode"),
    ("step[parity] + (skipped ? 0 : 1)", "step[parity] + 1"),  # a skipped step counted
    ("double t = (double)(step[parity] + 1);", "double t = (double)step[parity];"),  # c of t − 1
    ("T vi = v[i] * beta2 + (gi * gi) * one_minus_beta2;", "T vi = v[i] * beta2 + gi * one_minus_beta2;"),
    ("else if (decay_mode == 2) th = th * decay;", "else if (decay_mode == 2) th = th;"),
]


@needs_compiler
@pytest.mark.parametrize("mutation", MUTATIONS, ids=["skip-ignored", "skip-counted", "bias-t", "v-of-g", "decoupled"])
def test_a_broken_kernel_fails_the_comparison(rng, monkeypatch, mutation):
    """The real source matches the twin with the device counting and skipping; each mutant
    of it does not."""
    flags = [0, 1, 0, 0, 1, 0]
    (ta, t_fused), (tb, t_twin) = _adam_run(cuda_optim.SOURCE, monkeypatch, np.random.default_rng(5), flags)
    np.testing.assert_allclose(ta, tb, **TOL["float64"])
    assert t_fused == t_twin == 4
    old, new = mutation
    assert cuda_optim.SOURCE.count(old) == 1
    (ta, t_fused), (tb, t_twin) = _adam_run(cuda_optim.SOURCE.replace(old, new), monkeypatch,
                                            np.random.default_rng(5), flags)
    assert not (np.allclose(ta, tb, rtol=1e-6) and t_fused == t_twin)


SGD_MUTATIONS = [
    ("theta[i] = (theta[i] - gi * lr) - vi * lr_momentum;", "theta[i] = (theta[i] - gi * lr) - vi * lr;"),
    ("T vi = v[i] * momentum + gi;", "T vi = v[i] + gi;"),
    ("if (weight_decay != T(0)) gi = theta[i] * weight_decay + gi;  // g + lambda theta",
     "if (weight_decay != T(0)) gi = theta[i] + gi;  // g + lambda theta"),
]


@needs_compiler
@pytest.mark.parametrize("mutation", SGD_MUTATIONS, ids=["nesterov", "momentum", "decay"])
def test_a_broken_sgd_kernel_fails_the_comparison(rng, monkeypatch, mutation):
    kw = dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-2)
    old, new = mutation
    assert cuda_optim.SOURCE.count(old) == 1
    monkeypatch.setattr(cuda_optim, "SOURCE", cuda_optim.SOURCE.replace(old, new))
    theta0, grads = _problem(rng, "float64")
    fused, twin = SGD(**kw), SGD(**kw, kernels="generic")
    ta, tb = theta0.copy(), theta0.copy()
    for g in grads:
        fused.step(ta, g, EmulatedCupy())
        twin.step(tb, g, np)
    assert not np.allclose(ta, tb, rtol=1e-6)


def test_cuda_optim_source_compiles_with_nvrtc():
    """The fused updates compile and assemble for Hopper (sm_90) with no GPU, through NVRTC."""
    assert_compiles(cuda_optim.SOURCE, [f"{k}_{t}" for k in ("sgd", "adam", "lamb_direction", "rmsprop",
                                                             "nonfinite", "amp_update", "amp_set")
                                        for t in ("f32", "f64")], "gpudnn_optim.cu")