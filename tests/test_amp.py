"""Mixed precision (float16 passes, float32 master weights) and dynamic loss scaling, on the
CPU with NumPy's float16 (a GPU run is needed for speed figures)."""

import os

import numpy as np
import pytest

import gpudnn
from gpudnn.amp import LossScaler
from gpudnn.checkpoint import list_checkpoints, read_checkpoint
from gpudnn.data import train_test_split
from gpudnn.errors import ConfigError
from gpudnn.optim import SGD, Adam

from helpers import emulated_cuda_kernels, launched

CASES = [  # hidden activation, output, dropout
    ("relu", "softmax", 0.0),
    ("tanh", "sigmoid", 0.0),
    ("sigmoid", "identity", 0.0),
    ("leaky_relu", "softmax", 0.3),
]


def _batch(rng, net, B=32):
    A0 = rng.normal(size=(net.sizes[0], B))
    n = net.sizes[-1]
    if net.loss == "mse":
        return A0, rng.normal(size=(n, B))
    if net.loss == "binary_cross_entropy":
        return A0, (rng.random((n, B)) > 0.5).astype(float)
    return A0, np.eye(n)[:, rng.integers(0, n, B)]


# float16: 10 mantissa bits, bfloat16: 7 (its rounding error is 8x float16's)
TOL16 = {"float16": 1e-2, "bfloat16": 3e-2}


@pytest.mark.parametrize("kernels", ["generic", "auto", "cuda-emulated"])
@pytest.mark.parametrize("act,out,p", CASES)
@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_unscaled_half_precision_gradients_match_float32(precision, act, out, p, kernels):
    """Also through the CUDA kernels' float16 build, run on the CPU (tests/cuda_emulator.py).
    bfloat16 runs the generic twins (no fused bfloat16 build) and needs ml_dtypes."""
    rng = np.random.default_rng(0)
    emulated = kernels == "cuda-emulated"
    if emulated and precision == "bfloat16":
        pytest.skip("the CUDA kernels have no bfloat16 build: nothing fused to run")
    if precision == "bfloat16":
        pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (the test extra installs it)")
    tol = TOL16[precision]
    kw = dict(activation=act, output=out, seed=2, backend="numpy", kernels="generic" if emulated else kernels, dropout=p)
    n_out = 3 if out == "softmax" else 2
    ref = gpudnn.Network([6, 16, 12, n_out], **kw)
    net = gpudnn.Network([6, 16, 12, n_out], precision=precision, **kw)
    if emulated:
        net.kernels = emulated_cuda_kernels()
    assert net.mixed and net.params.dtype == np.float32 and net.grads.dtype == np.float32
    assert net.W[0].dtype == np.float32 and net.dW[0].base is not None
    np.testing.assert_array_equal(net.params, ref.params)
    A0, Y = _batch(rng, net)
    loss_ref, loss = ref.forward_backward(A0, Y), net.forward_backward(A0, Y)
    assert loss == pytest.approx(loss_ref, rel=tol)
    assert net.grads.dtype == np.float32
    for g, g_ref in zip(net.dW + net.db, ref.dW + ref.db):
        scale = np.abs(g_ref).max() + 1e-6
        assert np.abs(g - g_ref).max() <= tol * scale
    rel = np.linalg.norm(net.grads - ref.grads) / np.linalg.norm(ref.grads)
    assert rel < tol
    # inference too: a^L in the master dtype, close to float32's
    a, a_ref = net.forward(A0), ref.forward(A0)
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, a_ref, atol=tol * (np.abs(a_ref).max() + 1e-3))
    if emulated:  # the float16 builds ran, not the generic fallback
        counts = launched(net.kernels)
        assert counts["bias_act_f16"] >= 2, counts
        # layers 2 and 1 (n_out and 12 units) are thin: each one's whole backward pass in one
        # float16 kernel; with dropout a layer saw ã = a ⊙ m, not a^l, and the two products
        # and act_backward run instead
        thin, hidden = counts.get("thin_backward_f16", 0), counts.get("act_backward_f16", 0)
        assert (thin, hidden >= 1) == ((0, True) if p else (2, False)), counts


def test_the_loss_scale_keeps_small_gradients_from_flushing_to_zero():
    """Residuals of ~1e-6 give gradients below float16's smallest subnormal (6e-8): with
    S = 1 they flush to zero, with the default S = 2**15 they survive (unscaled in float32).
    ∂J/∂b^{L-1} is computed in float32 from the unscaled δ^L and survives either way."""
    rng = np.random.default_rng(3)
    net = gpudnn.Network([4, 8, 1], output="identity", seed=1, backend="numpy", precision="float16")
    A0 = rng.normal(size=(4, 64))
    Y = net.forward(A0) + 1e-6 * rng.normal(size=(1, 64))  # tiny residuals: tiny gradients
    net.forward_backward(A0, Y)
    scaled = net.grads.copy()
    net.loss_scaler.scale = 1.0
    net.forward_backward(A0, Y)
    assert np.count_nonzero(scaled) == net.n_params
    assert np.count_nonzero(net.grads) < net.n_params // 4
    assert float(net.db[1][0, 0]) == pytest.approx(float(scaled[-1]), rel=1e-6)


@pytest.mark.parametrize("optimizer", [lambda: SGD(lr=0.1, momentum=0.9), lambda: Adam(lr=1e-3)])
def test_an_overflow_skips_the_step_and_halves_the_scale(optimizer):
    rng = np.random.default_rng(1)
    net = gpudnn.Network([5, 8, 3], seed=0, backend="numpy", precision="float16")
    opt = optimizer()
    A0, Y = _batch(rng, net)
    net.train_step(A0, Y, opt)  # a clean step first: the optimizer has state
    assert net.loss_scaler.growth_tracker == 1
    params, state = net.params.copy(), opt.state_dict()
    state_arrays = {k: np.array(v, copy=True) for k, v in state.items() if isinstance(v, np.ndarray)}
    net.loss_scaler.scale = 2.0**40  # δ^L · S overflows float16
    loss = net.train_step(A0, Y, opt)
    assert np.isfinite(loss)  # the loss is computed in float32, never scaled
    assert not np.isfinite(net.grads).all()
    np.testing.assert_array_equal(net.params, params)  # bit-identical: the step was skipped
    after = opt.state_dict()
    assert after["t"] == state["t"]
    for k, v in state_arrays.items():
        np.testing.assert_array_equal(after[k], v)
    assert net.loss_scaler.scale == 2.0**39 and net.loss_scaler.skipped == 1
    assert net.loss_scaler.growth_tracker == 0


def test_a_poisoned_input_skips_the_step():
    net = gpudnn.Network([3, 4, 2], seed=0, backend="numpy", precision="float16", output="identity")
    opt = SGD(lr=0.1)
    params = net.params.copy()
    A0 = np.array([[1e6], [0.0], [0.0]])  # beyond float16's range: inf in the passes
    net.train_step(A0, np.zeros((2, 1)), opt)
    np.testing.assert_array_equal(net.params, params)
    assert net.loss_scaler.scale == 2.0**14


def test_the_scale_grows_after_growth_interval_clean_steps():
    rng = np.random.default_rng(2)
    net = gpudnn.Network([5, 8, 3], seed=0, backend="numpy", precision="float16")
    net.loss_scaler = LossScaler(init_scale=8.0, growth_interval=3)
    opt = SGD(lr=0.01)
    scales = []
    for _ in range(7):
        net.train_step(*_batch(rng, net), opt)
        scales.append(net.loss_scaler.scale)
    assert scales == [8, 8, 16, 16, 16, 32, 32]
    assert net.loss_scaler.skipped == 0


def test_loss_scaler_checks_its_settings_and_state():
    for bad in [dict(init_scale=0), dict(growth_factor=0.5), dict(backoff_factor=2.0),
                dict(growth_interval=0), dict(growth_interval=1.5)]:
        with pytest.raises(ConfigError):
            LossScaler(**bad)
    s = LossScaler(growth_interval=5)
    s.update(False)
    s.update(True)
    t = LossScaler(growth_interval=5)
    t.load_state_dict(s.state_dict())
    assert t.state_dict() == s.state_dict() and t.scale == 2.0**14
    with pytest.raises(ValueError, match="hyperparameters"):
        LossScaler(growth_interval=7).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="scale"):
        t.load_state_dict({**s.state_dict(), "scale": float("inf")})


def test_precision_is_checked():
    with pytest.MonkeyPatch.context() as mp:  # without ml_dtypes: a reason, not an ImportError
        mp.setitem(__import__("sys").modules, "ml_dtypes", None)
        with pytest.raises(ConfigError, match="needs the ml_dtypes package"):
            gpudnn.Network([2, 2], precision="bfloat16", backend="numpy")
    with pytest.raises(ConfigError, match="precision must be"):
        gpudnn.Network([2, 2], precision="float64", backend="numpy")
    with pytest.raises(ConfigError, match="precision must be"):
        gpudnn.Network([2, 2], precision="int8", backend="numpy")
    net = gpudnn.Network([2, 2], precision="float32", backend="numpy")
    assert not net.mixed and net.loss_scaler is None and "precision" not in net.config()
    assert "precision='float16'" in repr(gpudnn.Network([2, 2], precision="float16", backend="numpy"))


@pytest.fixture(scope="module")
def digits():
    X, y = gpudnn.load_digits()
    return train_test_split(X, y, test_size=0.2, seed=0)


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_digits_train_in_mixed_precision(digits, tmp_path, precision):
    if precision == "bfloat16":
        pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (the test extra installs it)")
    Xtr, Xte, ytr, yte = digits
    net = gpudnn.Network([64, 64, 10], seed=0, backend="numpy", precision=precision)
    h = net.fit(Xtr, ytr, epochs=8, batch_size=64, optimizer=SGD(lr=0.1, momentum=0.9),
                verbose=0, standardize=True)
    assert net.evaluate(Xte, yte)["accuracy"] >= 0.95
    assert h["skipped_steps"] == [0] * 8 and h["loss_scale"] == [2.0**15] * 8
    assert all(isinstance(v, float) and np.isfinite(v) for v in h["loss"])
    # save writes the float32 master weights; load gives a mixed-precision net again
    net.save(tmp_path / "m.safetensors")
    from gpudnn.io import read_tensors

    _, tensors = read_tensors(str(tmp_path / "m.safetensors"), lambda m: pytest.fail(m))
    assert all(t.dtype == np.float32 for t in tensors.values())
    back = gpudnn.load(tmp_path / "m.safetensors", backend="numpy")
    assert back.mixed and back.precision.name == precision and back.params.dtype == np.float32
    np.testing.assert_array_equal(back.params, net.params)
    np.testing.assert_array_equal(back.predict(Xte), net.predict(Xte))


def test_skipped_steps_are_counted_in_the_history(digits):
    Xtr, _, ytr, _ = digits
    net = gpudnn.Network([64, 16, 10], seed=0, backend="numpy", precision="float16")
    net.loss_scaler = LossScaler(init_scale=2.0**20, growth_interval=10_000)
    h = net.fit(Xtr[:256], ytr[:256], epochs=2, batch_size=32, verbose=0, standardize=True)
    # 2**20 overflows at first; each skip halves S until the gradients fit
    assert h["skipped_steps"][0] >= 1 and h["skipped_steps"][1] == 0
    assert h["loss_scale"][0] == 2.0**20 * 0.5 ** h["skipped_steps"][0]
    assert net.loss_scaler.skipped == h["skipped_steps"][0]


def _fit(X, y, tmp_path, epochs, resume=False):
    net = gpudnn.Network([64, 16, 10], seed=0, backend="numpy", precision="float16", dropout=0.1)
    net.loss_scaler = LossScaler(init_scale=2.0**22, growth_interval=3)  # skips and growths
    h = net.fit(X, y, epochs=epochs, batch_size=32, optimizer=Adam(lr=1e-3), verbose=0,
                checkpoint=tmp_path, checkpoint_every=5, resume=resume)
    return net, h


def test_checkpoints_keep_the_loss_scaler_state_and_resume_bit_for_bit(digits, tmp_path):
    Xtr, _, ytr, _ = digits
    X, y = Xtr[:200], ytr[:200]
    full, h_full = _fit(X, y, tmp_path / "a", 3)
    assert sum(h_full["skipped_steps"]) >= 1
    _fit(X, y, tmp_path / "b", 1)  # one epoch of 7 steps: checkpoints after steps 5 and 7
    found = list_checkpoints(tmp_path / "b")
    assert [step for step, _ in found] == [5, 7]
    os.unlink(found[-1][1])  # resume from the mid-epoch one
    state = read_checkpoint(found[0][1])
    assert state["params"].dtype == np.float32
    assert state["amp"]["skipped"] >= 1 and state["amp"]["epoch_skipped"] == state["amp"]["skipped"]
    net, h = _fit(X, y, tmp_path / "b", 3, resume=True)
    np.testing.assert_array_equal(net.params, full.params)
    assert net.loss_scaler.state_dict() == full.loss_scaler.state_dict()
    assert h["skipped_steps"] == h_full["skipped_steps"] and h["loss"] == h_full["loss"]


def test_resuming_a_mixed_precision_checkpoint_in_float32_is_refused(digits, tmp_path):
    Xtr, _, ytr, _ = digits
    _fit(Xtr[:64], ytr[:64], tmp_path, 1)
    net = gpudnn.Network([64, 16, 10], seed=0, backend="numpy", dropout=0.1)
    with pytest.raises(ConfigError, match="precision"):
        net.fit(Xtr[:64], ytr[:64], epochs=2, batch_size=32, optimizer=Adam(lr=1e-3), verbose=0,
                checkpoint=tmp_path, checkpoint_every=5, resume=True)


def test_cli_precision_flag(capsys, tmp_path):
    from gpudnn.cli import main

    code = main(["train", "--layers", "32", "--epochs", "3", "--precision", "float16", "--quiet",
                 "--backend", "numpy", "--out", str(tmp_path / "m.safetensors")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "precision='float16'" in out
    assert gpudnn.load(tmp_path / "m.safetensors", backend="numpy").mixed
    code = main(["train", "--precision", "float64", "--backend", "numpy", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2 and "precision must be" in err and "Traceback" not in err


def test_micro_batches_accumulate_unscaled_gradients():
    from gpudnn.train import accumulate_gradients

    rng = np.random.default_rng(4)
    net = gpudnn.Network([6, 16, 3], seed=0, backend="numpy", precision="float16")
    A0, Y = _batch(rng, net, B=48)
    loss = accumulate_gradients(net, A0, Y, 1)
    whole = net.grads.copy()
    loss3 = accumulate_gradients(net, A0, Y, 3)
    assert loss3 == pytest.approx(loss, rel=1e-6)
    assert np.linalg.norm(net.grads - whole) / np.linalg.norm(whole) < 1e-2


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_mixed_precision_on_each_backend(backend, precision):
    """The same agreement on the device (the CuPy case runs on a GPU machine: the float16
    CUDA kernels, CuPy's bfloat16 arrays), and a training step that moves the weights."""
    if precision == "bfloat16":
        pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (the test extra installs it)")
    rng = np.random.default_rng(5)
    ref = gpudnn.Network([20, 64, 64, 4], seed=3, backend=backend)
    try:
        net = gpudnn.Network([20, 64, 64, 4], seed=3, backend=backend, precision=precision)
    except ConfigError as exc:  # a CuPy without bfloat16 says so
        assert backend.name == "cupy" and precision == "bfloat16", exc
        pytest.skip(str(exc))
    A0, Y = _batch(rng, net, B=128)
    A0, Y = backend.asarray(A0.astype(np.float32)), backend.asarray(Y.astype(np.float32))
    loss_ref, loss = ref.forward_backward(A0, Y), net.forward_backward(A0, Y)
    assert loss == pytest.approx(loss_ref, rel=TOL16[precision])
    g, g_ref = backend.to_numpy(net.grads), backend.to_numpy(ref.grads)
    assert np.linalg.norm(g - g_ref) < TOL16[precision] * np.linalg.norm(g_ref)
    before = backend.to_numpy(net.params).copy()
    net.train_step(A0, Y, SGD(lr=0.1))
    assert not np.array_equal(backend.to_numpy(net.params), before)


def test_micro_batches_keep_the_whole_batchs_float16_scale():
    """Each micro-batch's share m/B of the batch mean is applied to δ^L before the float16
    backward pass: its values are the whole batch's size, so the loss scale that suits the
    batch suits its micro-batches (each micro-batch's own mean, scaled afterwards, was k times
    larger in float16 and overflowed: steps skipped that the whole batch did not skip)."""
    from gpudnn.data import load_digits

    X, y = load_digits()
    runs = {}
    for k in (1, 4):  # (before: k = 4 skipped 2 steps in the first epoch, the scale fell to 8192)
        net = gpudnn.Network([64, 256, 10], precision="float16", dtype="float64", seed=0, backend="numpy")
        runs[k] = net.fit(X, y, epochs=5, batch_size=32, optimizer=SGD(lr=0.05, momentum=0.9),
                          micro_batches=k, verbose=0, standardize=True)
    assert runs[4]["skipped_steps"] == runs[1]["skipped_steps"] == [0] * 5
    assert runs[4]["loss_scale"] == runs[1]["loss_scale"]
    np.testing.assert_allclose(runs[4]["loss"], runs[1]["loss"], rtol=5e-2)  # float16 rounding drifts


def test_a_mixed_precision_model_loads_without_its_precision(tmp_path, monkeypatch):
    """A model file records its mixed precision; load(precision=None) gives passes in the
    master dtype (the same weights), and a precision this machine cannot run (bfloat16
    without ml_dtypes) is a ModelFileError naming that way out, not a bare 'invalid config'."""
    import gpudnn.network as network
    from gpudnn.errors import ModelFileError

    net = gpudnn.Network([4, 8, 3], seed=0, backend="numpy", precision="float16")
    path = tmp_path / "m.safetensors"
    net.save(path)
    assert gpudnn.load(path, backend="numpy").precision.name == "float16"
    full = gpudnn.load(path, backend="numpy", precision=None)
    assert not full.mixed and full.precision == np.float32
    np.testing.assert_array_equal(full.params, net.params)
    with pytest.raises(ConfigError, match=r"load\(precision='int8'\): precision must be"):
        gpudnn.load(path, backend="numpy", precision="int8")

    def no_bfloat16():
        raise ConfigError("precision='bfloat16' needs the ml_dtypes package")

    monkeypatch.setattr(network, "_bfloat16", no_bfloat16)
    bf = tmp_path / "bf.safetensors"
    meta_net = gpudnn.Network([4, 8, 3], seed=0, backend="numpy")
    meta_net.config = lambda: {**gpudnn.Network.config(meta_net), "precision": "bfloat16"}  # as a bfloat16 run saves it
    meta_net.save(bf)
    with pytest.raises(ModelFileError, match=r"trained with precision='bfloat16', which cannot run here.*"
                                             r"ml_dtypes.*precision=None"):
        gpudnn.load(bf, backend="numpy")
    assert not gpudnn.load(bf, backend="numpy", precision=None).mixed
