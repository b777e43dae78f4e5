"""Every gradient proved: central finite differences in float64, and the batched engine
against a plain per-sample loop written from the seed."""

import numpy as np
import pytest
from helpers import HIDDEN, OUTPUT_LOSS, batch, emulated_cuda_kernels, host, launched as launches, make
from reference import per_sample_backprop

from gpudnn.backend import get_backend


def loss_only(net, A0, Y, dropout=False):
    """Mean loss from a forward pass alone (no gradients touched); with ``dropout``, through
    the masks already drawn in the workspace (held fixed, not redrawn)."""
    v = net._views(A0.shape[1])
    net._forward(A0, v, dropout=dropout)
    return float(net._loss_sum(Y, v)) / A0.shape[1]


def finite_difference_grads(net, A0, Y, eps=1e-6, dropout=False):
    """∂J/∂θ_i ≈ (J(θ + ε e_i) − J(θ − ε e_i)) / 2ε for every parameter, as a flat array."""
    theta = net.params
    fd = np.empty(net.n_params)
    for i in range(net.n_params):
        old = float(theta[i])
        theta[i] = old + eps
        up = loss_only(net, A0, Y, dropout)
        theta[i] = old - eps
        down = loss_only(net, A0, Y, dropout)
        theta[i] = old
        fd[i] = (up - down) / (2 * eps)
    return fd


def rel_err(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)


SHAPES = [
    pytest.param([3, 4, 2], 1, id="3-4-2xB1"),
    pytest.param([5, 7, 3], 6, id="5-7-3xB6"),
    pytest.param([4, 6, 5, 4, 5, 3], 3, id="deep6xB3"),
]


def assert_grads_match(net, fd):
    """The engine's dW, db against finite differences fd: (P,), reported per tensor."""
    grads = host(net, net.grads)
    for l in range(net.n_layers):
        (w0, b0, b1) = net._offsets[l]
        assert rel_err(grads[w0:b0], fd[w0:b0]) < 1e-6, f"dW[{l}]"
        assert rel_err(grads[b0:b1], fd[b0:b1]) < 1e-6, f"db[{l}]"


@pytest.mark.parametrize("sizes,B", SHAPES)
@pytest.mark.parametrize("output,loss", OUTPUT_LOSS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_gradients_match_central_differences(backend, kernels, rng, hidden, output, loss, sizes, B):
    net = make(sizes, backend, activation=hidden, output=output, loss=loss, seed=3, kernels=kernels)
    A0, Y = (backend.asarray(M) for M in batch(net, B, rng))
    net.forward_backward(A0, Y)
    assert_grads_match(net, finite_difference_grads(net, A0, Y))


def soft_targets(rng, n, B, kind):
    """Cross-entropy targets that are not one-hot: "smoothed" labels (columns sum to 1),
    "half" one-hot (columns sum to 0.5), "soft" positive weights of any column total."""
    Y = np.eye(n)[:, rng.integers(0, n, B)]
    if kind == "smoothed":
        return 0.9 * Y + 0.1 / n
    if kind == "half":
        return 0.5 * Y
    return rng.uniform(0.0, 1.0, (n, B))


TARGETS = ["smoothed", "half", "soft"]


@pytest.mark.parametrize("kind", TARGETS)
def test_cross_entropy_gradients_for_targets_that_are_not_one_hot(backend, kernels, rng, kind):
    """−Σ y log softmax(z) for any y ≥ 0: δ^L = a Σ_i y_i − y (a − y only where Σ_i y_i = 1),
    on every kernel set: against central differences and the per-sample seed loop."""
    net = make([5, 7, 4], backend, activation="tanh", seed=3, kernels=kernels)
    A0 = rng.standard_normal((5, 6))
    Y = soft_targets(rng, 4, 6, kind)
    got = net.forward_backward(backend.asarray(A0), backend.asarray(Y))
    assert_grads_match(net, finite_difference_grads(net, backend.asarray(A0), backend.asarray(Y)))
    want, dWs, dbs = per_sample_backprop([host(net, W) for W in net.W], [host(net, b) for b in net.b],
                                         ["tanh", "softmax"], "cross_entropy", A0, Y)
    assert abs(got - want) <= 1e-12 * max(1.0, abs(want))
    for l in range(net.n_layers):
        np.testing.assert_allclose(host(net, net.dW[l]), dWs[l], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", TARGETS)
def test_cuda_cross_entropy_for_targets_that_are_not_one_hot(rng, kind):
    """The CUDA softmax + cross-entropy kernel (emulated) with the same targets."""
    net = make([5, 7, 4], "numpy", activation="tanh", seed=3, kernels="generic")
    net.kernels = emulated_cuda_kernels()
    A0, Y = rng.standard_normal((5, 6)), soft_targets(rng, 4, 6, kind)
    net.forward_backward(A0, Y)
    assert net.kernels._module.get_function("softmax_xent_f64").launches == 1
    assert_grads_match(net, finite_difference_grads(net, A0, Y))


@pytest.mark.parametrize("output,loss", OUTPUT_LOSS[:2] + OUTPUT_LOSS[3:4])
@pytest.mark.parametrize("hidden", HIDDEN)
def test_dropout_gradients_match_central_differences_with_the_mask_held(backend, rng, hidden,
                                                                        output, loss):
    """Inverted dropout on every hidden layer: the backward pass uses the forward's mask."""
    net = make([4, 6, 5, 4, 3], backend, activation=hidden, output=output, loss=loss, seed=3,
               dropout=[0.5, 0.3, 0.4])
    A0, Y = (backend.asarray(M) for M in batch(net, 5, rng))
    net.forward_backward(A0, Y)  # draws the masks
    masks = [host(net, m) for m in net._views(5)["mask"][1:-1]]
    for m, p in zip(masks, net.dropout):
        assert set(np.unique(m)) == {0.0, 1.0 / (1.0 - p)}  # some dropped, some kept
    assert_grads_match(net, finite_difference_grads(net, A0, Y, dropout=True))


@pytest.mark.parametrize("sizes,B", SHAPES)
@pytest.mark.parametrize("output,loss", OUTPUT_LOSS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_batched_engine_equals_per_sample_seed_loop(
    backend, kernels, rng, hidden, output, loss, sizes, B
):
    net = make(sizes, backend, activation=hidden, output=output, loss=loss, seed=5, kernels=kernels)
    A0, Y = batch(net, B, rng)
    got = net.forward_backward(backend.asarray(A0), backend.asarray(Y))
    Ws = [host(net, W) for W in net.W]
    bs = [host(net, b) for b in net.b]
    acts = list(net.activation) + [output]
    want, dWs, dbs = per_sample_backprop(Ws, bs, acts, loss, A0, Y)
    assert abs(got - want) <= 1e-12 * max(1.0, abs(want))
    for l in range(net.n_layers):
        np.testing.assert_allclose(host(net, net.dW[l]), dWs[l], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(host(net, net.db[l]), dbs[l], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("thin", [True, False], ids=["thin", "cublas"])
@pytest.mark.parametrize("sizes,B", SHAPES[1:])
@pytest.mark.parametrize("output,loss", OUTPUT_LOSS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_cuda_kernels_emulated_on_the_cpu_give_proved_gradients(rng, hidden, output, loss, sizes, B, thin):
    """The CUDA kernels' source, run on the CPU (tests/cuda_emulator.py) inside a whole
    network: gradients equal central differences and the per-sample seed loop. These
    layers are thin (at most 16 units): with ``thin`` each layer l > 0's backward pass
    (∂J/∂W^l, δ^l = (W^l)ᵀ δ^{l+1} ⊙ σ'(z^l), ∂J/∂b^{l-1}) runs in one kernel (cuda_thin);
    without, the products are matmul's and ⊙ act_backward's."""
    backend = get_backend("numpy")
    net = make(sizes, backend, activation=hidden, output=output, loss=loss, seed=3, kernels="generic")
    net.kernels = emulated_cuda_kernels(thin=thin)
    A0, Y = batch(net, B, rng)
    got = net.forward_backward(A0, Y)
    launched = launches(net.kernels)
    L = net.n_layers
    assert launched["bias_act_f64"] == L - 1, launched  # fused, no fallback
    fused, twin = ("thin_backward_f64", "act_backward_f64") if thin else ("act_backward_f64", "thin_backward_f64")
    assert launched.get(fused, 0) == L - 1 and twin not in launched, launched
    assert_grads_match(net, finite_difference_grads(net, A0, Y))
    want, dWs, dbs = per_sample_backprop(list(net.W), list(net.b), list(net.activation) + [output], loss, A0, Y)
    assert abs(got - want) <= 1e-12 * max(1.0, abs(want))
    for l in range(net.n_layers):
        np.testing.assert_allclose(net.dW[l], dWs[l], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(net.db[l], dbs[l], rtol=1e-12, atol=1e-12)


def test_mixed_hidden_activations_per_layer(backend, rng):
    acts = ["tanh", "relu", "sigmoid", "leaky_relu"]
    net = make([4, 5, 6, 5, 4, 3], backend, activation=acts, seed=1)
    A0, Y = batch(net, 4, rng)
    net.forward_backward(backend.asarray(A0), backend.asarray(Y))
    want, dWs, dbs = per_sample_backprop(
        [host(net, W) for W in net.W], [host(net, b) for b in net.b],
        acts + ["softmax"], "cross_entropy", A0, Y,
    )
    for l in range(net.n_layers):
        np.testing.assert_allclose(host(net, net.dW[l]), dWs[l], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(host(net, net.db[l]), dbs[l], rtol=1e-12, atol=1e-13)


def test_float32_gradients_agree_with_float64(backend, rng):
    """The float32 engine computes the same gradients to float32 accuracy."""
    nets = [make([6, 8, 8, 4], backend, dtype=d, seed=2) for d in ("float64", "float32")]
    A0, Y = batch(nets[0], 16, rng)
    losses = [n.forward_backward(backend.asarray(A0), backend.asarray(Y)) for n in nets]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert rel_err(host(nets[1], nets[1].grads).astype(np.float64), host(nets[0], nets[0].grads)) < 1e-5
