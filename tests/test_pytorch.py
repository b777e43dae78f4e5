"""Models exchanged with PyTorch: the README's loading snippet, and gpudnn.from_torch.

Skipped where PyTorch is not installed (CI installs the CPU build on x86_64 Python 3.11).
"""

import pathlib
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors.torch")
nn = torch.nn

import gpudnn  # noqa: E402
from gpudnn.data import Standardizer  # noqa: E402
from gpudnn.errors import ConfigError  # noqa: E402
from helpers import make  # noqa: E402

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def readme_snippet():
    """The README's PyTorch loading block: the first python block after 'PyTorch reads'."""
    text = README.read_text(encoding="utf-8")
    m = re.search(r"PyTorch reads the file.*?```python\n(.*?)```", text, re.S)
    assert m, "the README lost its PyTorch snippet"
    return m.group(1)


def torch_model_of(path, X, monkeypatch):
    """Run the README snippet on the model file ``path`` for inputs X: (N, n_0).

    Returns its namespace: ``model`` (the nn.Sequential), ``probs`` = model(prepare(X)), ...
    """
    monkeypatch.chdir(path.parent)
    path.rename(path.parent / "model.safetensors")
    ns = {"X": X}
    exec(compile(readme_snippet(), str(README), "exec"), ns)
    return ns


ARCHS = [
    dict(sizes=[5, 7, 3]),
    dict(sizes=[4, 6, 6, 1], activation=["leaky_relu", "tanh"], output="sigmoid"),
    dict(sizes=[3, 8, 5, 2], activation=["sigmoid", "identity"], output="identity"),
    dict(sizes=[6, 4, 3], activation="relu", output="tanh", loss="mse"),
    dict(sizes=[2, 3]),
]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: "-".join(map(str, a["sizes"])))
@pytest.mark.parametrize("scaled", [False, True], ids=["raw", "standardized"])
def test_readme_snippet_gives_our_outputs_in_torch(tmp_path, monkeypatch, arch, scaled):
    arch = dict(arch)
    net = make(arch.pop("sizes"), "numpy", dtype="float64", **arch)
    rng = np.random.default_rng(5)
    X = rng.normal(2.0, 3.0, size=(17, net.sizes[0]))
    if scaled:
        net.scaler = Standardizer.fit(X)
    net.save(tmp_path / "ours.safetensors")
    ns = torch_model_of(tmp_path / "ours.safetensors", X, monkeypatch)
    state = ns["model"].state_dict()
    for l in range(net.n_layers):  # the weights themselves are bit-identical
        assert state[f"{2 * l}.weight"].numpy().tobytes() == net.W[l].tobytes()
        assert state[f"{2 * l}.bias"].numpy().tobytes() == net.b[l].tobytes()
    with torch.no_grad():
        theirs = ns["probs"].numpy()
    assert theirs.dtype == np.float64
    np.testing.assert_allclose(theirs, net.predict_proba(X), rtol=1e-12, atol=1e-12)


def test_readme_snippet_undoes_a_regressions_target_standardisation(tmp_path, monkeypatch):
    net = make([3, 8, 5, 2], "numpy", dtype="float64", activation="tanh", output="identity")
    X = np.random.default_rng(1).normal(size=(9, 3))
    net.scaler = Standardizer.fit(X)
    net.target_scaler = Standardizer(np.array([5000.0, -2.0]), np.array([700.0, 0.5]))
    net.save(tmp_path / "r.safetensors")
    ns = torch_model_of(tmp_path / "r.safetensors", X, monkeypatch)
    with torch.no_grad():
        np.testing.assert_allclose(ns["values"].numpy(), net.predict(X), rtol=1e-12)


def test_readme_snippet_in_float32(tmp_path, monkeypatch):
    net = make([4, 9, 3], "numpy", dtype="float32", activation="tanh")
    X = np.random.default_rng(0).normal(size=(8, 4))
    net.save(tmp_path / "m.safetensors")
    ns = torch_model_of(tmp_path / "m.safetensors", X, monkeypatch)
    assert ns["model"][0].weight.dtype == torch.float32
    with torch.no_grad():
        np.testing.assert_allclose(ns["probs"].numpy(), net.predict_proba(X), rtol=1e-5, atol=1e-6)


def random_sequential(*modules, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(*modules).to(dtype)


TORCH_MODELS = [
    ("relu-softmax", lambda: random_sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3),
                                               nn.Softmax(dim=-1)), {}),
    ("logits", lambda: random_sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6),
                                         nn.LeakyReLU(), nn.Linear(6, 2)), {}),
    ("no-hidden-activation", lambda: random_sequential(nn.Linear(3, 4), nn.Linear(4, 4),
                                                       nn.Sigmoid(), nn.Linear(4, 1), nn.Sigmoid()), {}),
    ("identity-modules", lambda: random_sequential(nn.Linear(3, 5), nn.Identity(), nn.Linear(5, 2),
                                                   nn.Identity()), {}),
    ("no-bias", lambda: random_sequential(nn.Linear(3, 5, bias=False), nn.ReLU(),
                                          nn.Linear(5, 2, bias=False), nn.Tanh()), {}),
    ("float32", lambda: random_sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4),
                                          dtype=torch.float32), {}),
]


@pytest.mark.parametrize("build,kw", [m[1:] for m in TORCH_MODELS], ids=[m[0] for m in TORCH_MODELS])
def test_from_torch_computes_what_torch_computes(backend, build, kw):
    module = build()
    net = gpudnn.from_torch(module, backend=backend, **kw)
    assert net.backend.name == backend.name
    linears = [m for m in module if isinstance(m, nn.Linear)]
    assert net.n_layers == len(linears)
    for l, lin in enumerate(linears):  # copied bit for bit
        assert net.backend.to_numpy(net.W[l]).tobytes() == lin.weight.detach().numpy().tobytes()
        b = np.zeros(lin.out_features) if lin.bias is None else lin.bias.detach().numpy()
        assert net.backend.to_numpy(net.b[l]).ravel().tobytes() == b.astype(net.dtype).tobytes()
    X = np.random.default_rng(1).normal(size=(11, net.sizes[0]))
    with torch.no_grad():
        theirs = module(torch.as_tensor(X, dtype=linears[0].weight.dtype)).numpy()
    ours = net.backend.to_numpy(net.forward(X.T)).T
    tol = 1e-12 if net.dtype == np.float64 else 1e-5
    np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol)


def test_from_torch_logits_as_a_classifier():
    module = random_sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    net = gpudnn.from_torch(module, output="softmax", backend="numpy")
    assert (net.output, net.loss) == ("softmax", "cross_entropy")
    X = np.random.default_rng(2).normal(size=(9, 4))
    with torch.no_grad():
        want = torch.softmax(module(torch.as_tensor(X)), dim=1).numpy()
    np.testing.assert_allclose(net.predict_proba(X), want, rtol=1e-12, atol=1e-15)
    X2, y = X.repeat(4, axis=0), np.arange(36) % 3  # and it trains like any Network
    net.fit(X2, y, epochs=2, verbose=0)


def test_ours_to_torch_and_back_is_bit_exact(tmp_path, monkeypatch):
    net = make([5, 7, 4, 3], "numpy", activation=["tanh", "leaky_relu"])
    net.save(tmp_path / "m.safetensors")
    ns = torch_model_of(tmp_path / "m.safetensors", np.zeros((1, 5)), monkeypatch)
    back = gpudnn.from_torch(ns["model"], backend="numpy")
    assert back.config() == {**net.config(), "seed": back.seed}
    assert back.params.tobytes() == net.params.tobytes()


def test_from_torch_dtypes():
    half = random_sequential(nn.Linear(3, 2), dtype=torch.float16)
    with pytest.raises(ConfigError, match="weights are torch.float16; pass dtype="):
        gpudnn.from_torch(half)
    net = gpudnn.from_torch(half, dtype="float32", backend="numpy")  # exact: f16 fits in f32
    assert net.W[0].tobytes() == half[0].weight.detach().float().numpy().tobytes()
    bf = random_sequential(nn.Linear(3, 2), dtype=torch.bfloat16)
    net = gpudnn.from_torch(bf, dtype="float64", backend="numpy")
    np.testing.assert_array_equal(net.W[0], bf[0].weight.detach().double().numpy())
    mixed = nn.Sequential(nn.Linear(3, 2).double(), nn.Linear(2, 2).float())
    with pytest.raises(ConfigError, match="torch.float32, torch.float64"):
        gpudnn.from_torch(mixed)
    f64 = gpudnn.from_torch(random_sequential(nn.Linear(3, 2)), dtype="float32", backend="numpy")
    assert f64.dtype == np.float32


def _nan_linear():
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight[1, 1] = float("nan")
    return lin


BAD_MODULES = [
    ("not-sequential", lambda: nn.Linear(3, 2), "takes a torch.nn.Sequential .* got Linear"),
    ("empty", lambda: nn.Sequential(), "holds no Linear layer"),
    ("dropout", lambda: nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)),
     r"module 1 \(Dropout\(p=0.5, inplace=False\)\) is not supported"),
    ("batchnorm", lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), "module 1 .BatchNorm1d"),
    ("gelu", lambda: nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2)), "module 1 .GELU"),
    ("nested", lambda: nn.Sequential(nn.Sequential(nn.Linear(3, 2))), "module 0 .Sequential"),
    ("conv", lambda: nn.Sequential(nn.Conv1d(1, 1, 3)), "module 0 .Conv1d"),
    ("slope", lambda: nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.2), nn.Linear(4, 2)),
     r"module 1 \(LeakyReLU\(negative_slope=0.2\)\)"),
    ("softmax-dim0", lambda: nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=0)), r"Softmax\(dim=0\)"),
    ("activation-first", lambda: nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), r"module 0 \(ReLU\(\)\)"),
    ("two-activations", lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Tanh(), nn.Linear(4, 2)),
     r"module 2 \(Tanh\(\)\) follows another activation"),
    ("relu-output", lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU()),
     r"module 1 \(ReLU\(\)\) cannot be the output activation"),
    ("softmax-hidden", lambda: nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=-1), nn.Linear(4, 2)),
     r"module 1 \(Softmax\(dim=-1\)\) is not supported"),
    ("widths", lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2)),
     r"module 2 \(Linear\(in_features=5.*\)\) takes 5 inputs but the layer before it gives 4"),
    ("nan", lambda: nn.Sequential(nn.Linear(2, 3), nn.Tanh(), _nan_linear()),
     r"module 2 \(Linear.*\) has NaN or infinite weights"),
]


@pytest.mark.parametrize("build,match", [m[1:] for m in BAD_MODULES], ids=[m[0] for m in BAD_MODULES])
def test_from_torch_refuses_what_it_cannot_compute(build, match):
    with pytest.raises(ConfigError, match=match):
        gpudnn.from_torch(build(), backend="numpy")


def test_from_torch_output_must_agree_with_the_module():
    module = nn.Sequential(nn.Linear(3, 2), nn.Sigmoid())
    with pytest.raises(ConfigError, match=r"output='softmax' but the module ends in Sigmoid\(\)"):
        gpudnn.from_torch(module, output="softmax")
    assert gpudnn.from_torch(module, output="sigmoid", backend="numpy").output == "sigmoid"
    with pytest.raises(ConfigError, match="needs output='softmax'"):  # Network's own check
        gpudnn.from_torch(nn.Sequential(nn.Linear(3, 2)), loss="cross_entropy")
