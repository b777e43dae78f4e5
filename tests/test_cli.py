"""The `gpudnn` command, run as a user runs it: in a subprocess."""

import re
import subprocess
import sys

import numpy as np
import pytest


def gpudnn(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "gpudnn.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_train_with_no_arguments_reaches_97_percent(tmp_path):
    r = gpudnn("train", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert sum(l.startswith("epoch ") for l in lines) == 40  # progress per epoch
    m = re.fullmatch(r"test accuracy: (0\.9\d{3})", lines[-1])
    assert m, lines[-1]
    assert float(m.group(1)) >= 0.97


def test_train_save_then_predict(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    y = (X[:, 0] > 0).astype(int)
    data = tmp_path / "d.csv"
    np.savetxt(data, np.column_stack([X, y]), delimiter=",", header="a,b,c,label", comments="")
    model = tmp_path / "m.safetensors"
    r = gpudnn("train", "--data", str(data), "--target", "label", "--layers", "8", "--epochs", "30",
               "--lr", "0.1", "--quiet", "--out", str(model), "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert "epoch" not in r.stdout and "test accuracy:" in r.stdout
    r = gpudnn("predict", "--model", str(model), "--data", str(data))
    assert r.returncode == 0, r.stderr
    pred = np.array(r.stdout.split(), dtype=int)
    assert pred.shape == (120,) and np.mean(pred == y) > 0.9


def test_regression_from_npz(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 2))
    np.savez(tmp_path / "r.npz", X=X, y=X[:, 0] * 0.5 + 0.1)
    r = gpudnn("train", "--data", str(tmp_path / "r.npz"), "--layers", "4", "--epochs", "5", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "test loss:" in r.stdout and "accuracy" not in r.stdout


def test_info_names_versions_backends_and_blas():
    r = gpudnn("info")
    assert r.returncode == 0, r.stderr
    assert "gpudnn 0." in r.stdout and "BLAS:" in r.stdout and "backend='auto' picks:" in r.stdout


@pytest.mark.parametrize(
    "args,match",
    [
        (["train", "--layers", "0"], "every layer width must be >= 1"),
        (["train", "--lr", "-1"], "must be > 0"),
        (["train", "--epochs", "0"], "must be > 0"),
        (["train", "--activation", "swish"], "invalid choice"),
        (["train", "--data", "nope.csv"], "nope.csv: no such file"),
        (["train", "--output", "identity", "--loss", "cross_entropy"], "needs output='softmax'"),
        (["predict", "--model", "nope.safetensors", "--data", "x.csv"], "nope.safetensors"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_mistakes_exit_2_with_one_line(tmp_path, args, match):
    r = gpudnn(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert re.search(match, r.stderr), r.stderr
    assert "Traceback" not in r.stderr


def test_debug_shows_the_traceback(tmp_path):
    r = gpudnn("train", "--data", "nope.csv", "--debug", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr
