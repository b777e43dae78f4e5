"""CapturedStep (gpudnn.graphs): a training step captured as a CUDA graph and replayed. On
NumPy it runs the same code directly, which must equal train_step bit for bit; the CuPy case
(a GPU machine) replays a real graph and must match train_step to float32 rounding (its
products go through the tiled GEMM instead of cuBLAS)."""

import numpy as np
import pytest

import gpudnn
from gpudnn.errors import ConfigError
from gpudnn.graphs import CapturedStep
from gpudnn.optim import LAMB, LARS, SGD, Adam, AdamW, RMSprop
from gpudnn.schedules import CosineDecay

CASES = {  # (the network's keywords, the optimizer and its keywords)
    "relu-softmax-momentum": (dict(activation="relu"), SGD, dict(lr=0.05, momentum=0.9)),
    "tanh-sigmoid-nesterov-wd": (dict(activation="tanh", output="sigmoid"), SGD,
                                 dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "leaky-plain-low-memory": (dict(activation="leaky_relu", low_memory=True), SGD, dict(lr=0.1)),
    # Adam's bias correction depends on t: on a GPU two graphs, the device counting the steps
    "relu-adam": (dict(activation="relu"), Adam, dict(lr=0.01)),
    "tanh-adamw": (dict(activation="tanh"), AdamW, dict(lr=0.01, weight_decay=0.01)),
    "sigmoid-rmsprop-centered": (dict(activation="sigmoid"), RMSprop,
                                 dict(lr=0.01, centered=True, momentum=0.5)),
}


def batches(rng, net, B, n):
    out = []
    for _ in range(n):
        A0 = rng.standard_normal((net.sizes[0], B)).astype(net.dtype)
        if net.output == "softmax":
            Y = np.eye(net.sizes[-1], dtype=net.dtype)[:, rng.integers(0, net.sizes[-1], B)]
        else:
            Y = (rng.random((net.sizes[-1], B)) > 0.5).astype(net.dtype)
        out.append((A0, Y))
    return out


def pair(backend, case, dtype="float64"):
    net_kw, opt_cls, opt_kw = CASES[case]
    nets = [gpudnn.Network([6, 17, 9, 3], backend=backend, dtype=dtype, seed=2, **net_kw) for _ in range(2)]
    return nets, [opt_cls(**opt_kw) for _ in range(2)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("warm", [False, True], ids=["fresh-optimizer", "used-optimizer"])
def test_captured_steps_equal_train_steps(backend, rng, case, warm):
    dtype = "float64" if backend.name == "numpy" else "float32"
    (ref, net), (opt_ref, opt) = pair(backend, case, dtype)
    data = batches(rng, net, 8, 6)
    if warm:  # a step taken before the capture: its state must survive the warm-up
        for n, o in ((ref, opt_ref), (net, opt)):
            n.train_step(*data[0], o)
    before = backend.to_numpy(net.params).copy()
    step = CapturedStep(net, opt, 8)
    np.testing.assert_array_equal(backend.to_numpy(net.params), before)  # the warm-up was undone
    assert opt.t == (1 if warm else 0) and step.loss() is None
    for A0, Y in data[1:]:
        loss_ref = ref.train_step(A0, Y, opt_ref)
        step(A0, Y)
        if backend.name == "numpy":
            assert step.loss() == loss_ref
        else:
            assert step.loss() == pytest.approx(loss_ref, rel=1e-5)
    assert opt.t == opt_ref.t and step.steps == 5
    assert set(opt.state) == set(opt_ref.state)
    for got, want in [(net.params, ref.params)] + [(opt.state[k], opt_ref.state[k]) for k in opt.state]:
        got, want = backend.to_numpy(got), backend.to_numpy(want)
        if backend.name == "numpy":
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # the count survives what reads it back: a checkpoint's state_dict, then more steps
    assert opt.state_dict()["t"] == opt_ref.t == 5 + warm
    step(*data[1])
    ref.train_step(*data[1], opt_ref)
    assert opt.t == opt_ref.t == 6 + warm
    np.testing.assert_allclose(backend.to_numpy(net.params), backend.to_numpy(ref.params), rtol=1e-4, atol=1e-6)


def test_the_step_keeps_its_own_buffers(rng):
    """The network used elsewhere meanwhile (a bigger batch reallocates its workspace) does
    not disturb the captured step, whose graph holds its own buffers."""
    (ref, net), (opt_ref, opt) = pair("numpy", "relu-softmax-momentum")
    step = CapturedStep(net, opt, 8)
    for i, (A0, Y) in enumerate(batches(rng, net, 8, 4)):
        ref.train_step(A0, Y, opt_ref)
        step(A0, Y)
        net.forward(rng.standard_normal((6, 50 + i)))  # a new, larger workspace each time
    np.testing.assert_array_equal(net.params, ref.params)


def test_what_cannot_be_captured_is_refused(rng):
    def make(**kw):
        return gpudnn.Network([4, 5, 2], backend="numpy", **kw)

    for opt in (LARS(), LAMB()):
        with pytest.raises(ConfigError, match="takes SGD, Adam, AdamW or RMSprop"):
            CapturedStep(make(), opt, 4)
    with pytest.raises(ConfigError, match="constant learning rate"):
        CapturedStep(make(), SGD(lr=CosineDecay(0.1, 100)), 4)
    with pytest.raises(ConfigError, match="dropout"):
        CapturedStep(make(dropout=0.2), SGD(), 4)
    with pytest.raises(ConfigError, match="mixed precision"):
        CapturedStep(make(precision="float16"), SGD(), 4)
    with pytest.raises(ConfigError, match="batch_size"):
        CapturedStep(make(), SGD(), 0)
    step = CapturedStep(make(), SGD(), 4)
    with pytest.raises(ConfigError, match="batches of 4 columns, got 3"):
        step(np.zeros((4, 3)), np.zeros((2, 3)))
    with pytest.raises(gpudnn.errors.ShapeError):
        step(np.zeros((5, 4)), np.zeros((2, 4)))


def test_adam_without_its_fused_update_is_refused_on_a_gpu(backend):
    """On CuPy a graph of Adam's generic passes would freeze the bias correction of one step:
    refused (the fused update keeps the count on the device). On NumPy no graph is made."""
    net = gpudnn.Network([4, 5, 2], backend=backend)
    if backend.name == "numpy":
        assert CapturedStep(net, Adam(kernels="generic"), 4).steps == 0
        return
    with pytest.raises(ConfigError, match="fused CUDA update"):
        CapturedStep(net, Adam(kernels="generic"), 4)


def test_the_warm_up_runs_on_zeros_and_puts_the_gradients_back(rng):
    """The capture's warm-up step reads the step's new input buffers: zeros, not what the
    memory held (here 3e38s left by freed arrays, which overflowed and left non-finite
    ∂J/∂θ behind); θ, ∂J/∂θ and the optimizer's state are as before it."""
    import warnings

    net, opt = pair("numpy", "relu-softmax-momentum")[0][0], SGD(lr=0.1)
    A0, Y = batches(rng, net, 16, 1)[0]
    net.forward_backward(A0, Y)
    params, grads = net.params.copy(), net.grads.copy()
    junk = [np.full(k, 3e38) for k in (96, 128, 153, 48, 16, 200) * 5]
    del junk
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CapturedStep(net, opt, 16)
    np.testing.assert_array_equal(net.params, params)
    np.testing.assert_array_equal(net.grads, grads)


def test_a_count_set_before_the_first_step_survives_the_warm_up(backend, rng):
    """An optimizer with a step count but no state yet (``unbound()``'s copy, or t set by
    hand) steps on from that count in train_step; the capture's warm-up reset it to 0, so
    Adam's bias correction started over and the steps differed from train_step's."""
    dtype = "float64" if backend.name == "numpy" else "float32"
    (ref, net), (opt_ref, opt) = pair(backend, "relu-adam", dtype)
    for o in (opt_ref, opt):
        o.t = 7
    step = CapturedStep(net, opt, 8)
    assert opt.t == 7 and opt.last_lr is None
    for A0, Y in batches(rng, net, 8, 3):
        ref.train_step(A0, Y, opt_ref)
        step(A0, Y)
    assert opt.t == opt_ref.t == 10
    np.testing.assert_allclose(backend.to_numpy(net.params), backend.to_numpy(ref.params), rtol=1e-5, atol=1e-7)


def test_an_optimizer_given_new_state_is_refused_until_captured_again(backend, rng):
    """load_state_dict (a resumed fit calls it too) gives the optimizer new state buffers; a
    graph goes on reading and writing the ones it captured, so the loaded state was ignored
    and state_dict() reported buffers no step touched, silently, on a GPU (on NumPy the
    direct step hid it). Both backends refuse the step; a new CapturedStep takes it."""
    dtype = "float64" if backend.name == "numpy" else "float32"
    (ref, net), (opt_ref, opt) = pair(backend, "relu-adam", dtype)
    data = batches(rng, net, 8, 4)
    step = CapturedStep(net, opt, 8)
    step(*data[0])
    ref.train_step(*data[0], opt_ref)
    opt.load_state_dict(opt_ref.state_dict(), net.params, backend.xp, net.segments)
    with pytest.raises(ConfigError, match=r"new state buffers.*make a new CapturedStep"):
        step(*data[1])
    assert step.steps == 1 and opt.t == 1
    step = CapturedStep(net, opt, 8)
    for A0, Y in data[1:]:
        ref.train_step(A0, Y, opt_ref)
        step(A0, Y)
    assert opt.t == opt_ref.t == 4
    np.testing.assert_allclose(backend.to_numpy(net.params), backend.to_numpy(ref.params), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("change", [dict(lr=0.005), dict(momentum=0.5), dict(momentum=0.0), dict(weight_decay=1e-2)])
def test_a_hyperparameter_changed_after_the_capture_is_refused(backend, change):
    """A graph replays the lr (and momentum, decay) it captured: ``opt.lr = 0.005`` after
    the capture (a hand-made decay) was silently ignored on a GPU, and taken on NumPy, so the
    two backends trained differently. Both refuse it, naming the setting."""
    net = gpudnn.Network([4, 5, 2], backend=backend)
    opt = SGD(lr=0.05, momentum=0.9)
    step = CapturedStep(net, opt, 4)
    A0, Y = np.zeros((4, 4)), np.eye(2)[:, [0, 1, 0, 1]]
    step(A0, Y)
    (name, value), = change.items()
    setattr(opt, name, value)
    with pytest.raises(ConfigError, match=f"changed {name} from.*make a new CapturedStep"):
        step(A0, Y)
    assert step.steps == 1
    CapturedStep(net, opt, 4)(A0, Y)  # the new step takes the new value (momentum 0 too)


def test_the_warm_up_puts_a_used_optimizer_back_as_it_was(backend, rng):
    """Capturing with an optimizer that has stepped (and whose lr was then changed) leaves
    its count, last_lr and state values as they were: the warm-up step is undone in place
    (not through load_state_dict, which made new buffers and refused a state the changed
    settings no longer make)."""
    net = gpudnn.Network([4, 5, 2], backend=backend, seed=0)
    opt = SGD(lr=0.1, momentum=0.9)
    A0, Y = batches(rng, net, 4, 1)[0]
    net.train_step(A0, Y, opt)
    opt.lr = 0.05
    before = {k: backend.to_numpy(v).copy() for k, v in opt.state.items()}
    theta = backend.to_numpy(net.params).copy()
    buffers = dict(opt.state)
    step = CapturedStep(net, opt, 4)
    assert (opt.t, opt.last_lr) == (1, 0.1)
    assert all(opt.state[k] is buffers[k] for k in buffers)  # the same buffers, refilled
    for k, v in before.items():
        np.testing.assert_array_equal(backend.to_numpy(opt.state[k]), v)
    np.testing.assert_array_equal(backend.to_numpy(net.params), theta)
    step(A0, Y)  # a replay is a step taken at the new lr
    assert (opt.t, opt.last_lr) == (2, 0.05)


class FakeCaptureStream:
    """Stands in for a CUDA stream: "captures" by running the step directly."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def begin_capture(self):
        pass

    def end_capture(self):
        return "graph"


def test_the_capture_itself_is_not_a_step_taken(rng):
    """Capturing runs the step's code once on the host (optimizer.step included, which counts
    a step and sets last_lr): the count and last_lr are put back after it. (On NumPy nothing
    is captured, so the capture is driven here with a stand-in stream; a GPU ran the real one
    and kept the capture's lr as last_lr.)"""
    net = gpudnn.Network([4, 5, 2], backend="numpy", seed=0)
    opt = SGD(lr=0.1, momentum=0.9)
    A0, Y = batches(rng, net, 4, 1)[0]
    net.train_step(A0, Y, opt)
    opt.lr = 0.05
    step = CapturedStep(net, opt, 4)
    step._stream = FakeCaptureStream()
    step._capture()
    assert (opt.t, opt.last_lr) == (1, 0.1)
