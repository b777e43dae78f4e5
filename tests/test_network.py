"""The Network's structure, its numerical stability, its buffers and its errors."""

import tracemalloc
import warnings

import numpy as np
import pytest
from helpers import batch, host, make

import gpudnn
from gpudnn.errors import ConfigError, ShapeError
from gpudnn.kernels.generic import GenericKernels


def test_parameters_are_views_of_one_flat_buffer(backend):
    net = make([5, 7, 3], backend)
    xp = backend.xp
    assert net.n_params == 5 * 7 + 7 + 7 * 3 + 3
    assert [W.shape for W in net.W] == [(7, 5), (3, 7)]
    assert [b.shape for b in net.b] == [(7, 1), (3, 1)]
    assert [d.shape for d in net.dW] == [(7, 5), (3, 7)]
    for views, flat in ((net.W + net.b, net.params), (net.dW + net.db, net.grads)):
        for v in views:
            assert xp.shares_memory(v, flat)
    net.params[...] = 0
    assert float(abs(net.W[1]).sum()) == 0.0
    net.W[0][2, 3] = 4.5  # writing a view writes the flat buffer
    assert float(net.params[2 * 5 + 3]) == 4.5
    with pytest.raises(TypeError):
        net.W[0] = xp.zeros((7, 5))  # the tuple of views cannot be rebound


def test_forward_is_z_equals_W_a_plus_b_without_transpose(backend, rng):
    net = make([4, 6, 3], backend, activation="tanh", output="identity")
    A0 = rng.normal(size=(4, 5))
    W0, b0, W1, b1 = (host(net, p) for p in (net.W[0], net.b[0], net.W[1], net.b[1]))
    want = W1 @ np.tanh(W0 @ A0 + b0) + b1
    np.testing.assert_allclose(host(net, net.forward(backend.asarray(A0))), want, rtol=1e-13)


def test_forward_returns_a_new_array(backend, rng):
    net = make([4, 3], backend, output="identity")
    A0 = backend.asarray(rng.normal(size=(4, 2)))
    first = net.forward(A0)
    keep = host(net, first).copy()
    net.forward(A0 * 2)
    np.testing.assert_array_equal(host(net, first), keep)


@pytest.mark.parametrize("init", ["he", "he_uniform", "glorot", "glorot_normal"])
def test_init_is_reproducible_and_scaled(init):
    a = gpudnn.Network([300, 200, 10], init=init, seed=7, backend="numpy")
    b = gpudnn.Network([300, 200, 10], init=init, seed=7, backend="numpy")
    c = gpudnn.Network([300, 200, 10], init=init, seed=8, backend="numpy")
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)
    fan = 300 if init.startswith("he") else 250
    want_std = np.sqrt((2.0 if init.startswith("he") else 1.0) / fan)
    assert a.W[0].std() == pytest.approx(want_std, rel=0.05)
    assert not a.b[0].any()


@pytest.mark.parametrize(
    "init,alias,bound",
    [("he_uniform", None, lambda n_in, n_out: np.sqrt(6 / n_in)),
     ("glorot", "glorot_uniform", lambda n_in, n_out: np.sqrt(6 / (n_in + n_out)))],
)
def test_uniform_inits_fill_their_interval(init, alias, bound):
    net = gpudnn.Network([300, 200, 10], init=init, seed=1, backend="numpy", dtype="float64")
    for W in net.W:
        lim = bound(W.shape[1], W.shape[0])
        assert np.abs(W).max() <= lim and np.abs(W).max() > 0.99 * lim
    if alias:
        np.testing.assert_array_equal(net.params, gpudnn.Network(
            [300, 200, 10], init=alias, seed=1, backend="numpy", dtype="float64").params)
    same = [gpudnn.Network([30, 20], init=i, seed=1, backend="numpy").params for i in ("he", "he_normal")]
    np.testing.assert_array_equal(*same)
    assert "dropout=0.5" in repr(gpudnn.Network([3, 4, 2], dropout=0.5))


def test_train_step_updates_by_sgd(backend, rng):
    net = make([4, 5, 3], backend)
    A0, Y = (backend.asarray(M) for M in batch(net, 8, rng))
    before = host(net, net.params).copy()
    loss = net.train_step(A0, Y, gpudnn.optim.SGD(lr=0.5))
    np.testing.assert_allclose(host(net, net.params), before - 0.5 * host(net, net.grads), rtol=1e-14)
    assert net.forward_backward(A0, Y) < loss  # a small step downhill


@pytest.mark.parametrize("precision", [None, "float16"])
def test_train_step_queues_the_loss_copy_before_the_backward_pass_and_waits_after_the_update(
        rng, monkeypatch, precision):
    """The loss's copy to the host is queued as soon as the output layer has made it, and the
    host waits for it only after the backward pass and the update are queued: on a GPU the
    device has that work in hand while the host waits, and never idles between steps."""
    net = make([4, 5, 3], "numpy", dtype="float32", precision=precision)
    A0, Y = batch(net, 8, rng)
    want = gpudnn.Network.forward_backward(net, A0, Y)
    events = []
    read_later, matmul = net.backend.read_later, net._matmul

    def queue_copy(total):
        events.append("copy")
        read = read_later(total)
        return lambda: (events.append("wait"), read())[1]

    monkeypatch.setattr(net.backend, "read_later", queue_copy)
    monkeypatch.setattr(net, "_matmul", lambda *a, **k: (events.append("matmul"), matmul(*a, **k))[1])
    opt = gpudnn.optim.SGD(lr=0.1)
    step = opt.step
    monkeypatch.setattr(opt, "step", lambda *a, **k: (events.append("update"), step(*a, **k))[1])
    assert net.train_step(A0, Y, opt) == want
    copy = events.index("copy")
    # forward: W^0 a^0, W^1 a^1; backward: ∂J/∂W^1, (W^1)ᵀ δ^2, ∂J/∂W^0
    assert events[:copy] == ["matmul"] * 2 and events[copy + 1:] == ["matmul"] * 3 + ["update", "wait"]


def test_running_out_of_memory_says_what_and_how_much(monkeypatch):
    """Parameters or a batch's buffers too large for the device: an OutOfMemoryError (a
    GpudnnError and a MemoryError, so the CLI's "out of memory" line still applies) that
    names what was allocated and its size, not NumPy's bare MemoryError."""
    from gpudnn.errors import GpudnnError, OutOfMemoryError

    with pytest.raises(OutOfMemoryError, match=r"the 75,000,000,000,010 parameters of sizes=\[64, 1000000000000, 10\] "
                                              r"\(θ and ∂J/∂θ\) need about 5\.59e\+05 GiB in float32") as err:
        gpudnn.Network([64, 10**12, 10], backend="numpy")
    assert isinstance(err.value, GpudnnError) and isinstance(err.value, MemoryError)
    net = gpudnn.Network([4, 8, 3], backend="numpy")
    net.forward(np.zeros((4, 2)))

    def refuse(*args, **kw):
        raise MemoryError("simulated")

    monkeypatch.setattr(gpudnn.network, "_Workspace", refuse)
    with pytest.raises(OutOfMemoryError, match=r"a batch of 1,000 columns need about .* GiB .*MemoryError: simulated"):
        net.forward(np.zeros((4, 1000)))


def test_running_out_of_device_memory_is_an_out_of_memory_error(backend):
    """CuPy's own out-of-memory error (its pool at a limit) becomes gpudnn's, naming what
    was allocated, for the parameters and for a batch's buffers."""
    if backend.name != "cupy":
        pytest.skip("the device's out-of-memory error (NumPy's: the test above)")
    from gpudnn.errors import OutOfMemoryError

    pool = backend.xp.get_default_memory_pool()
    A0 = backend.xp.zeros((64, 200_000), dtype=backend.xp.float32)  # 51 MB, made before the limit
    limit = pool.get_limit()
    pool.set_limit(size=pool.used_bytes() + (64 << 20))
    try:
        with pytest.raises(OutOfMemoryError, match=r"parameters of sizes=\[1024, 20000, 10\]"):
            gpudnn.Network([1024, 20000, 10], backend=backend)
        net = gpudnn.Network([64, 256, 10], backend=backend)
        with pytest.raises(OutOfMemoryError, match=r"a batch of 200,000 columns"):
            net.forward(A0)
        net.forward(A0[:, :1000])  # and the network still works
    finally:
        pool.set_limit(size=limit)


def test_a_growing_workspace_frees_the_old_one_first():
    """A larger batch's buffers are made after the smaller batch's are let go: the peak is
    the new workspace, not old + new (on a GPU, the difference between fitting and not)."""
    import tracemalloc

    net = gpudnn.Network([100, 1000, 10], backend="numpy", kernels="generic")
    small, large = (np.zeros((100, B), np.float32) for B in (2000, 4000))
    tracemalloc.start()  # (it sees only what is allocated after it starts)
    net.forward(small)
    old = net._ws.nbytes()
    tracemalloc.reset_peak()
    net.forward(large)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    new = net._ws.nbytes()
    assert old >= 0.45 * new and new <= peak < new + 0.25 * old, (peak, old, new)  # not old + new


def test_params_and_grads_are_changed_in_place_not_replaced():
    """A new array assigned to net.params left W and b on the old buffer: forward used the
    old weights, save the new ones. Refused; in place works."""
    net = gpudnn.Network([3, 4, 2], backend="numpy")
    for name in ("params", "grads"):
        with pytest.raises(ConfigError, match=f"net.{name} is the buffer .* change it in place"):
            setattr(net, name, np.zeros(net.n_params, np.float32))
    net.params[...] = 0
    net.params += 1  # in place, assigned back to itself: fine
    assert (net.W[0] == 1).all() and (net.b[1] == 1).all()


def test_train_step_refuses_what_is_not_an_optimizer(rng):
    net = make([4, 5, 3], "numpy")
    A0, Y = batch(net, 8, rng)
    for opt in (None, 0.1, "sgd"):
        with pytest.raises(ConfigError, match=f"train_step needs a gpudnn.optim optimizer such as SGD\\(lr=0.01\\), got {opt!r}"):
            net.train_step(A0, Y, opt)


EXTREME = 1e4


@pytest.mark.parametrize(
    "output,loss,Y,want",
    [
        # logits (+1e4, −1e4) per column; loss per sample
        ("softmax", "cross_entropy", [[1.0], [0.0]], 0.0),
        ("softmax", "cross_entropy", [[0.0], [1.0]], 2 * EXTREME),
        ("sigmoid", "binary_cross_entropy", [[1.0], [0.0]], 0.0),
        ("sigmoid", "binary_cross_entropy", [[0.0], [1.0]], 2 * EXTREME),
        ("sigmoid", "mse", [[1.0], [0.0]], 0.0),
        ("tanh", "mse", [[-1.0], [1.0]], 4.0),
    ],
)
def test_extreme_logits_are_stable(backend, output, loss, Y, want):
    """Logits of ±1e4: finite loss and gradients, no overflow warnings."""
    net = make([1, 2], backend, output=output, loss=loss)
    net.W[0][...] = backend.asarray(np.array([[EXTREME], [-EXTREME]]))
    net.b[0][...] = 0
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        got = net.forward_backward(backend.asarray(np.ones((1, 1))), backend.asarray(np.array(Y)))
    assert got == pytest.approx(want, abs=1e-9)
    assert np.all(np.isfinite(host(net, net.grads)))


@pytest.mark.parametrize("kernels", ["generic", "auto"])
@pytest.mark.parametrize(
    "dropout,make_opt",
    [(0.0, lambda: gpudnn.optim.SGD(lr=0.01, momentum=0.9, weight_decay=1e-4)),
     (0.0, lambda: gpudnn.optim.SGD(lr=0.01, kernels="generic")),
     (0.5, lambda: gpudnn.optim.LAMB(lr=0.01, weight_decay=1e-4))],
    ids=["sgd", "sgd-generic", "dropout-lamb"],
)
def test_training_step_allocates_nothing_of_batch_size(kernels, dropout, make_opt):
    """Once the buffers for a batch size exist, a step allocates nothing as large as the
    output block (n_L, B), let alone a hidden one."""
    B = 4096
    net = gpudnn.Network([64, 512, 512, 10], backend="numpy", dtype="float32", kernels=kernels,
                         dropout=dropout)
    rng = np.random.default_rng(0)
    A0 = rng.normal(size=(64, B)).astype(np.float32)
    Y = np.eye(10, dtype=np.float32)[:, rng.integers(0, 10, B)]
    opt = make_opt()
    net.train_step(A0, Y, opt)  # makes the buffers and the optimizer state
    tracemalloc.start()
    net.train_step(A0, Y, opt)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # what remains is O(1) or O(B): NumPy's casting buffer for the float64 loss sum, (1, B) rows
    assert peak < 10 * B * 4, f"a step allocated {peak} bytes"


def test_workspace_is_reused_for_smaller_batches(rng):
    net = gpudnn.Network([8, 16, 4], backend="numpy")
    net.forward(rng.normal(size=(8, 64)))
    ws = net._ws
    net.forward(rng.normal(size=(8, 10)))
    assert net._ws is ws
    net.forward(rng.normal(size=(8, 100)))
    assert net._ws is not ws and net._ws.capacity == 100


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(output="softmax", loss="mse"), "softmax.*cross_entropy.*mse takes output='identity', 'sigmoid' or 'tanh'"),
        (dict(output="softmax", loss="binary_cross_entropy"),
         "softmax.*cross_entropy.*binary_cross_entropy takes output='sigmoid'"),
        (dict(output="identity", loss="cross_entropy"), "needs output='softmax'"),
        (dict(output="tanh", loss="binary_cross_entropy"), "needs output='sigmoid'"),
        (dict(output="relu"), "unknown output activation"),
        (dict(activation="softmax"), "unknown hidden activation"),
        (dict(activation="swish"), "unknown hidden activation 'swish'"),
        (dict(activation=["relu"]), "1 names but the network has 2 hidden"),
        (dict(loss="hinge"), "unknown loss 'hinge'"),
        (dict(dtype="int8"), "dtype"),
        (dict(init="zeros"), "unknown init"),
        (dict(backend="tpu"), "backend must be one of"),
        (dict(activation=5), "activation must be a name or a list of names, got 5"),
        (dict(activation=["relu", None]), "unknown hidden activation None"),
        (dict(seed=-1), "seed must be a non-negative integer or None, got -1"),
        (dict(seed=1.5), "seed must be"),
        (dict(seed="0"), "seed must be"),
        (dict(dtype="float16"), "dtype must be one of float32, float64, got 'float16'"),
        # half-precision weights: the fix (mixed precision) is named
        (dict(dtype="float16"), r"dtype='float32', precision='float16' \(mixed precision"),
        (dict(dtype="bfloat16"), r"dtype='float32', precision='bfloat16' \(mixed precision"),
        (dict(dtype=np.float16), r"precision='float16'"),
    ],
)
def test_bad_configuration_is_refused_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gpudnn.Network([4, 5, 6, 3], **kwargs)


@pytest.mark.parametrize(
    "sizes,match",
    [([4], "at least 2 entries"), ([4, 0, 3], r"sizes\[1\] = 0"), ("abc", r"sizes\[0\] = 'a'"),
     ([4, -1], r"sizes\[1\] = -1"), (4, "list of layer widths"),
     ([4.7, 3], r"sizes\[0\] = 4.7"), ([4, True], r"sizes\[1\] = True"), (["4", 3], "'4'")],
)
def test_bad_sizes_are_refused(sizes, match):
    """Widths must be integers: 4.7 is not silently truncated to 4, nor True taken as 1."""
    with pytest.raises(ConfigError, match=match):
        gpudnn.Network(sizes)


def test_numpy_spellings_are_accepted():
    net = gpudnn.Network(np.array([4, 3]), dtype=np.float64, seed=np.int64(3), backend="numpy")
    assert net.sizes == (4, 3) and net.dtype == np.float64 and net.seed == 3
    assert type(net.sizes[0]) is int and type(net.seed) is int  # JSON-able config


def test_default_loss_follows_the_output():
    assert gpudnn.Network([2, 3]).loss == "cross_entropy"
    assert gpudnn.Network([2, 1], output="sigmoid").loss == "binary_cross_entropy"
    assert gpudnn.Network([2, 1], output="identity").loss == "mse"


def test_bad_batches_get_shape_errors(backend, rng):
    net = make([4, 5, 3], backend)
    with pytest.raises(ShapeError, match="did you pass samples as rows"):
        net.forward(backend.asarray(rng.normal(size=(6, 4))))
    with pytest.raises(ShapeError, match="2-D"):
        net.forward(backend.asarray(rng.normal(size=4)))
    with pytest.raises(ShapeError, match="Y has 2 rows"):
        net.forward_backward(backend.asarray(rng.normal(size=(4, 2))), backend.asarray(np.ones((2, 2))))
    with pytest.raises(ShapeError, match="columns"):
        net.forward_backward(backend.asarray(rng.normal(size=(4, 2))), backend.asarray(np.ones((3, 3))))


def test_inputs_of_another_dtype_are_converted(rng):
    net = gpudnn.Network([4, 3], backend="numpy", dtype="float32")
    A0 = rng.normal(size=(4, 5))  # float64
    out = net.forward(A0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, net.forward(A0.astype(np.float32)))


def test_a_device_array_of_another_dtype_is_cast_where_it_lies(backend, rng, monkeypatch):
    """A CuPy float64 batch given to a float32 network went device -> host -> device (a
    blocking copy each way, a host sync in a step that promises none): it is cast on the
    device now. The backend's own arrays never pass through the host."""
    net = gpudnn.Network([4, 3, 2], backend=backend, dtype="float32", seed=0)
    A0, Y = rng.normal(size=(4, 5)), np.eye(2)[:, [0, 1, 0, 1, 1]]
    want = net.forward_backward(A0.astype(np.float32), Y.astype(np.float32))
    dW = backend.to_numpy(net.dW[0]).copy()

    def no_host(*a):
        raise AssertionError("the batch went through the host")

    monkeypatch.setattr(net.backend, "to_numpy", no_host)
    assert net.forward_backward(backend.asarray(A0), backend.asarray(Y)) == want
    monkeypatch.undo()
    np.testing.assert_array_equal(backend.to_numpy(net.dW[0]), dW)


def test_segments_are_each_tensor_in_order(backend):
    net = make([5, 7, 3], backend)
    assert net.segments == ((0, 35), (35, 42), (42, 63), (63, 66))
    for (a, b), t in zip(net.segments, [net.W[0], net.b[0], net.W[1], net.b[1]]):
        assert backend.xp.shares_memory(net.params[a:b], t) and b - a == t.size


# --- dropout ------------------------------------------------------------------------------
def test_dropout_masks_are_reproducible_from_the_seed(backend, rng):
    A0, Y = (backend.asarray(M) for M in batch(make([6, 50, 50, 3], backend), 40, rng))

    def grads(seed):
        net = make([6, 50, 50, 3], backend, dropout=0.5, seed=seed)
        net.forward_backward(A0, Y)
        first = host(net, net.grads).copy()
        net.forward_backward(A0, Y)  # the next step draws new masks
        return first, host(net, net.grads)

    a, b, c = grads(1), grads(1), grads(2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[0], c[0])


def test_dropout_keeps_each_unit_with_probability_1_minus_p(backend, rng):
    net = make([4, 400, 3], backend, dropout=0.25)
    net.forward_backward(*(backend.asarray(M) for M in batch(net, 300, rng)))
    m = host(net, net._views(300)["mask"][1])
    assert set(np.unique(m)) == {0.0, 1 / 0.75}
    assert np.mean(m > 0) == pytest.approx(0.75, abs=0.01)
    assert m.mean() == pytest.approx(1.0, abs=0.02)  # inverted: E[m] = 1


def test_dropout_is_off_for_inference(backend, rng):
    plain = make([4, 8, 8, 3], backend, seed=4)
    drop = make([4, 8, 8, 3], backend, seed=4, dropout=[0.5, 0.2])
    A0 = backend.asarray(rng.normal(size=(4, 6)))
    drop.forward_backward(A0, backend.asarray(np.eye(3)[:, [0, 1, 2, 0, 1, 2]]))
    np.testing.assert_array_equal(host(plain, plain.forward(A0)), host(drop, drop.forward(A0)))


def test_dropout_is_part_of_the_config(tmp_path):
    net = gpudnn.Network([4, 5, 6, 3], dropout=[0.1, 0.2], backend="numpy")
    assert net.config()["dropout"] == [0.1, 0.2]
    net.save(tmp_path / "m.safetensors")
    assert gpudnn.load(tmp_path / "m.safetensors").dropout == (0.1, 0.2)
    assert gpudnn.Network([4, 5, 6, 3], dropout=0.3).dropout == (0.3, 0.3)


@pytest.mark.parametrize("dropout", [1.0, -0.1, "half", [0.1], [0.1, 0.2, 0.3], True])
def test_bad_dropout_is_refused(dropout):
    with pytest.raises(ConfigError, match="dropout"):
        gpudnn.Network([4, 5, 6, 3], dropout=dropout)


def test_dropout_without_a_hidden_layer_is_refused():
    """A rate with no hidden layer to apply it to was silently ignored; 0 is no dropout."""
    with pytest.raises(ConfigError, match=r"dropout=0.5 needs a hidden layer; this network has none"):
        gpudnn.Network([64, 10], dropout=0.5)
    assert gpudnn.Network([64, 10], dropout=0.0).dropout == ()


# --- memory: δ^l over a^l, the backward's scratch, low_memory -----------------------------
def _emulated_cuda(net):
    from helpers import emulated_cuda_kernels

    net.kernels = emulated_cuda_kernels()
    return net


@pytest.mark.parametrize("kernels", ["generic", "auto", "cuda-emulated"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_low_memory_row_blocks_give_the_same_gradients(rng, kernels, dropout):
    """Widths not divisible by the split: 17 rows in blocks of 3 (the last of 2), 20 in 3 (the
    last of 2). Below the 3-unit layer the CUDA kernels make δ^2 in one pass, with no
    scratch (without dropout): their scratch is then 17 rows."""
    kw = dict(seed=4, dtype="float64", backend="numpy", activation=["tanh", "relu"],
              kernels="generic" if kernels == "cuda-emulated" else kernels, dropout=dropout)
    nets = [gpudnn.Network([5, 17, 20, 3], low_memory=low, **kw) for low in (False, True)]
    if kernels == "cuda-emulated":
        nets = [_emulated_cuda(n) for n in nets]
    A0 = rng.standard_normal((5, 11))
    Y = np.eye(3)[:, rng.integers(0, 3, 11)]
    losses = [n.forward_backward(A0, Y) for n in nets]
    assert nets[1]._ws.rows == 3 and nets[0]._ws.rows == (17 if kernels == "cuda-emulated" and not dropout else 20)
    assert losses[1] == losses[0]  # the same forward pass (and dropout masks)
    np.testing.assert_allclose(nets[1].grads, nets[0].grads, rtol=1e-12, atol=1e-14)


def test_low_memory_is_checked_and_not_part_of_the_architecture():
    with pytest.raises(gpudnn.ConfigError, match="low_memory must be True or False"):
        gpudnn.Network([3, 4, 2], low_memory="yes", backend="numpy")
    net = gpudnn.Network([3, 4, 2], low_memory=True, backend="numpy")
    assert "low_memory" not in net.config()


def test_a_training_step_costs_the_activations_plus_one_scratch_block():
    """With the fused CUDA kernels (emulated here; they need no σ' scratch) the workspace of
    784-4096-4096-4096-10 is, per column: the 3 hidden activations (δ^l is written over
    them), the (W^l)ᵀ δ^{l+1} scratch (all 4096 rows, or 512 with low_memory) and five
    n_L-row buffers (logits, a^L, δ^L, the output layer's two scratch). The twins need σ'
    scratch of the widest layer on top."""
    sizes, B = [784, 4096, 4096, 4096, 10], 2

    def bytes_per_column(low, cuda):
        net = gpudnn.Network(sizes, low_memory=low, backend="numpy", kernels="generic")
        if cuda:
            _emulated_cuda(net)
        net._views(B)
        return net._ws.nbytes() // (4 * B)

    assert bytes_per_column(False, True) == 3 * 4096 + 4096 + 5 * 10
    assert bytes_per_column(True, True) == 3 * 4096 + 512 + 5 * 10
    assert bytes_per_column(True, False) == 3 * 4096 + 512 + 4096 + 5 * 10


def test_one_thin_pass_below_needs_no_scratch_and_a_new_kernel_set_gets_its_own(rng):
    """8-40-10 with the CUDA kernels (emulated): the hidden layer's backward pass is one
    layer_backward, so a step's workspace is the activations alone, 40 + 5 x 10 a column
    (the twins: + 40 of (W^l)ᵀ δ^{l+1} scratch + 40 of σ' scratch). Swapping the kernel set
    makes the workspace again, sized for the new one, and the gradients do not change."""
    sizes, B = [8, 40, 10], 3
    net = _emulated_cuda(gpudnn.Network(sizes, backend="numpy", kernels="generic", seed=0))
    A0, Y = rng.standard_normal((8, B)), np.ascontiguousarray(np.eye(10)[:, rng.integers(0, 10, B)])
    grads = []
    for kernels in ("cuda", "generic", "cuda"):
        if kernels == "generic":
            net.kernels = GenericKernels(np)
        elif grads:
            _emulated_cuda(net)
        net.forward_backward(A0, Y)
        grads.append(net.grads.copy())
        per_column = net._ws.nbytes() // (4 * B)
        assert per_column == (40 + 5 * 10 if kernels == "cuda" else 3 * 40 + 5 * 10), kernels
        assert (net._views(B)["dX"][1] is None) == (kernels == "cuda")
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(grads[2], grads[0])


def test_a_strided_target_still_takes_the_fused_kernels(rng, monkeypatch):
    """Y = np.eye(n)[:, labels] is not C-contiguous; the batch is made C-contiguous on the
    way in, so the output layer keeps its fused kernel (here CUDA's, emulated) instead of
    falling back to the generic twins' dozen launches."""
    from gpudnn.kernels.generic import GenericKernels

    net = _emulated_cuda(gpudnn.Network([5, 8, 3], backend="numpy", kernels="generic", dtype="float64"))
    Y = np.eye(3)[:, rng.integers(0, 3, 16)]
    assert not Y.flags.c_contiguous
    ref = gpudnn.Network([5, 8, 3], backend="numpy", kernels="generic", dtype="float64")
    A0 = rng.standard_normal((5, 16))
    want = ref.forward_backward(A0, Y)

    def fell_back(*a, **k):
        raise AssertionError("the output layer fell back to the generic twin")

    monkeypatch.setattr(GenericKernels, "output_loss_delta", fell_back)
    assert net.forward_backward(A0, Y) == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(net.grads, ref.grads, rtol=1e-12, atol=1e-14)
    # only Y is copied: no buffer of A0's size (n_0 rows; 25 MiB at 784 x 8192) for it
    assert net._ws.flat["A"][0] is None and net._ws.flat["Y"] is not None
    net.forward_backward(np.asfortranarray(A0), Y)  # a strided A0 too: now both buffers
    assert net._ws.flat["A"][0] is not None
    np.testing.assert_allclose(net.grads, ref.grads, rtol=1e-12, atol=1e-14)


def test_step_arrays_that_are_not_real_numbers_are_refused(rng):
    """A0/Y that NumPy can cast but that are not numbers were taken: complex columns lost
    their imaginary part (a ComplexWarning at most), strings were parsed. Each is a
    DataError naming the argument, for the step API and CapturedStep alike."""
    net = gpudnn.Network([4, 3], backend="numpy")
    A0, Y = rng.normal(size=(4, 5)), np.eye(3)[:, [0, 1, 2, 0, 1]]
    step = gpudnn.CapturedStep(net, gpudnn.optim.SGD(), 5)
    for bad, what in [(A0 + 1j, "complex128"), (A0.astype(str), "<U"), (A0.astype(object), "object")]:
        with pytest.raises(gpudnn.errors.DataError, match=f"A0: must be real numbers.*{what}"):
            net.forward(bad)
        with pytest.raises(gpudnn.errors.DataError, match=f"A0: must be real numbers.*{what}"):
            step(bad, Y)
    with pytest.raises(gpudnn.errors.DataError, match="Y: must be real numbers"):
        net.train_step(A0, Y.astype(complex), gpudnn.optim.SGD())
    assert net.forward(A0.astype(np.int8)).shape == (3, 5)  # integers and bools are numbers


def test_a_sparse_step_array_is_named(rng):
    """A scipy.sparse A0 raised NumPy's bare 'setting an array element with a sequence'."""
    sp = pytest.importorskip("scipy.sparse")
    net = gpudnn.Network([4, 3], backend="numpy")
    A0, Y = rng.normal(size=(4, 5)), np.eye(3)[:, [0, 1, 2, 0, 1]]
    with pytest.raises(gpudnn.errors.DataError, match=r"A0: is a scipy.sparse matrix.*A0.toarray\(\)"):
        net.forward_backward(sp.csr_matrix(A0), Y)


def test_every_error_type_is_exported():
    """Each error gpudnn raises can be caught by its name on the package (gpudnn.X), as the
    README's error table names them."""
    import inspect

    from gpudnn import errors

    raised = {name for name, obj in vars(errors).items()
              if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == errors.__name__}
    assert "OutOfMemoryError" in raised
    for name in raised:
        assert getattr(gpudnn, name) is getattr(errors, name) and name in gpudnn.__all__
