"""The `gpudnn` command, run as a user runs it: in a subprocess."""

import csv
import json
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
        (["train", "--betas", "0.9,0.99"], "--betas does not apply to --optimizer sgd"),
        (["train", "--optimizer", "adam", "--momentum", "0.9"], "--momentum does not apply"),
        (["train", "--history", "h.txt"], "use a .csv or .json file name"),
        (["train", "--plot", "c.jpg"], "plot file"),
        (["train", "--dropout", "1"], "must be in \\[0, 1\\)"),
        (["train", "--optimizer", "adagrad"], "invalid choice"),
        (["train", "--gamma", "0.5"], "--gamma needs --schedule"),
        (["train", "--schedule", "cosine", "--warmup-epochs", "40"], "leaves no epochs"),
        (["train", "--betas", "0.9"], "expected two numbers"),
        (["train", "--optimizer", "adam", "--betas", "0.9,1.5"], "betas\\[1\\] must be"),
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


def test_train_with_every_training_feature(tmp_path):
    pytest.importorskip("matplotlib")
    r = gpudnn("train", "--optimizer", "adamw", "--lr", "0.003", "--betas", "0.9,0.99",
               "--schedule", "cosine", "--warmup-epochs", "2", "--plateau", "3", "--dropout", "0.1",
               "--clip-norm", "5", "--micro-batches", "2", "--validation-split", "0.2",
               "--early-stopping", "4", "--epochs", "8", "--history", "h.csv", "--plot", "c.png",
               "--init", "glorot", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "1151 training / 287 validation / 359 test samples" in r.stdout
    assert "AdamW(lr=ReduceLROnPlateau(schedule=LinearWarmup(schedule=CosineDecay(lr=0.003" in r.stdout
    with open(tmp_path / "h.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"]
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    assert float(rows[0]["lr"]) == pytest.approx(0.0015) and float(rows[1]["lr"]) == 0.003  # warm-up
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert float(r.stdout.splitlines()[-1].split()[-1]) > 0.9


def test_history_as_json_and_sgd_schedules(tmp_path):
    r = gpudnn("train", "--schedule", "step", "--step-epochs", "1", "--gamma", "0.5", "--epochs", "3",
               "--scale-lr", "64", "--history", "h.json", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    h = json.loads((tmp_path / "h.json").read_text())
    assert h["epoch"] == [1, 2, 3] and len(h["loss"]) == 3
    assert h["lr"] == pytest.approx([0.025, 0.0125, 0.00625])  # 0.05 · 32/64, halved each epoch
