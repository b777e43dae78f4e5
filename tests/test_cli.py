"""The `gpudnn` command, run as a user runs it: in a subprocess."""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gpudnn(*args, cwd=None):
    """Run the command of this checkout (not an installed gpudnn, which ``-m`` would find
    first when ``cwd`` is elsewhere)."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "gpudnn.cli", *args], capture_output=True, text=True, cwd=cwd,
        timeout=300, env={**os.environ, "PYTHONPATH": path},
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


def test_a_regression_in_large_units_trains_with_the_defaults(tmp_path):
    """Prices around 50000: the CLI standardises a regression's targets (as its features)
    and takes the regression recipe (lr 0.01), so the defaults train it; predict answers in
    the targets' units. Raw (--no-standardize) the same run diverges with one message."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    price = 50000 + 3700 * (X @ [0.5, 0.3, 0.2]) + rng.normal(size=300) * 100
    np.savetxt(tmp_path / "p.csv", np.c_[X, price], delimiter=",", header="a,b,c,price", comments="")
    model = tmp_path / "p.safetensors"
    r = gpudnn("train", "--data", str(tmp_path / "p.csv"), "--output", "identity", "--epochs", "30",
               "--quiet", "--out", str(model))
    assert r.returncode == 0, r.stderr
    assert "SGD(lr=0.01, momentum=0.9" in r.stdout and "(standardised targets)" in r.stdout
    rmse = float(re.search(r"test RMSE: (\S+) \(in the targets' units\)", r.stdout).group(1))
    assert rmse < 0.2 * price.std()
    np.savetxt(tmp_path / "x.csv", X[:5], delimiter=",")
    p = gpudnn("predict", "--model", str(model), "--data", str(tmp_path / "x.csv"))
    assert p.returncode == 0, p.stderr
    assert np.abs(np.array(p.stdout.split(), float) - price[:5]).max() < 0.3 * price.std()
    r = gpudnn("train", "--data", str(tmp_path / "p.csv"), "--output", "identity", "--epochs", "30",
               "--quiet", "--no-standardize")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "scale the targets" in r.stderr


def test_predict_drops_the_training_files_target_wherever_it_was(tmp_path):
    """Trained with --target a (the first column), the model keeps the training file's
    columns: predict on that file, on one with the columns reordered, and on a headerless
    copy reads the features, not the target (it dropped the last column and fed the target
    in as a feature, exit 0); a file missing a feature is one line."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    a = X @ [1.0, 2.0, 3.0, 4.0] + 5.0
    cols = {"a": a, "b": X[:, 0], "c": X[:, 1], "d": X[:, 2], "price": X[:, 3], "e": X[:, 2]}

    def write(name, keys, header=True):
        np.savetxt(tmp_path / name, np.c_[tuple(cols[k] for k in keys)], delimiter=",",
                   header=",".join(keys) if header else "", comments="")
        return str(tmp_path / name)
    data = write("reg.csv", ["a", "b", "c", "d", "price"])
    model = str(tmp_path / "m.safetensors")
    r = gpudnn("train", "--data", data, "--target", "a", "--output", "identity", "--epochs", "3", "--quiet", "--out", model)
    assert r.returncode == 0, r.stderr
    import gpudnn as api  # (this module's gpudnn() runs the command line)

    want = api.load(model).predict(X)
    for f in (data, write("re.csv", ["price", "d", "a", "c", "b"]), write("noh.csv", ["a", "b", "c", "d", "price"], False)):
        p = gpudnn("predict", "--model", model, "--data", f)
        assert p.returncode == 0, p.stderr
        np.testing.assert_allclose(np.array(p.stdout.split(), float), want, rtol=1e-6, atol=1e-6)
    p = gpudnn("predict", "--model", model, "--data", write("miss.csv", ["a", "b", "c", "e", "price"]))
    assert p.returncode == 2 and "has no column 'd' of the 4 the model was trained on" in p.stderr


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
        (["train", "--data-on-device", "maybe"], r"--data-on-device: invalid choice: 'maybe'"),
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


# --- every flag, in-process (fast): exit 2, one line on stderr, no traceback ---------------
def run_main(capsys, *args):
    """(exit status, stdout, stderr) of ``gpudnn *args`` run in this process."""
    from gpudnn.cli import main

    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse exits on bad flags
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


BAD_FLAGS = [
    # (flag, bad values, words of the message)
    ("--layers", ["0", "-3", "64,0"], "every layer width must be >= 1"),
    ("--layers", ["a", "1.5", "1,,2"], "expected comma-separated widths"),
    ("--activation", ["swish", "softmax", ""], "invalid choice"),
    ("--output", ["relu", "Softmax"], "invalid choice"),
    ("--loss", ["hinge", "MSE"], "invalid choice"),
    ("--lr", ["0", "-1", "-0.0"], "must be > 0"),
    ("--lr", ["nan", "inf", "-inf"], "must be a finite number"),
    ("--lr", ["fast", ""], "expected a number"),
    ("--momentum", ["-0.1"], "must be >= 0"),
    ("--momentum", ["1", "1.5"], "must be < 1"),
    ("--momentum", ["nan"], "must be a finite number"),
    ("--weight-decay", ["-1e-3"], "must be >= 0"),
    ("--weight-decay", ["inf"], "must be a finite number"),
    ("--epochs", ["0", "-2"], "must be > 0"),
    ("--epochs", ["1.5", "ten", "1e3"], "expected an integer"),
    ("--batch-size", ["0", "-32"], "must be > 0"),
    ("--batch-size", ["32.0"], "expected an integer"),
    ("--test-size", ["0", "-0.2"], "must be > 0"),
    ("--test-size", ["1", "1.5"], "must be < 1"),
    ("--backend", ["tpu", "CUDA"], "invalid choice"),
    ("--dtype", ["float16", "int8"], "invalid choice"),
    ("--seed", ["-1"], "must be >= 0"),
    ("--seed", ["x", "1.5"], "expected an integer"),
    ("--dropout", ["1", "1.5"], "must be < 1"),
    ("--dropout", ["-0.1"], "must be >= 0"),
    ("--init", ["zeros"], "invalid choice"),
    ("--optimizer", ["adagrad", "SGD"], "invalid choice"),
    ("--betas", ["0.9", "a,b", "0.9,0.99,0.5"], "expected two numbers"),
    ("--eps", ["0"], "must be > 0"),
    ("--alpha", ["1"], "must be < 1"),
    ("--clip-norm", ["0", "nan"], "must be"),
    ("--schedule", ["linear"], "invalid choice"),
    ("--warmup-epochs", ["0", "1.5"], "must be > 0|expected an integer"),
    ("--plateau-factor", ["1"], "must be < 1"),
    ("--micro-batches", ["0"], "must be > 0"),
    ("--validation-split", ["0", "1"], "must be"),
    ("--early-stopping", ["0"], "must be > 0"),
]


@pytest.mark.parametrize(
    "flag,value,match",
    [(f, v, m) for f, values, m in BAD_FLAGS for v in values],
    ids=[f"{f}={v}" for f, values, _ in BAD_FLAGS for v in values],
)
def test_every_bad_train_flag_exits_2_with_one_line(capsys, flag, value, match):
    code, out, err = run_main(capsys, "train", f"{flag}={value}")
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith("gpudnn train: error: argument " + flag), err
    assert re.search(match, err), err


def _errors(tmp_path):
    """(argv, words) for mistakes found after parsing: files, data and combinations."""
    good = tmp_path / "good.csv"
    good.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20)))
    one = tmp_path / "one.csv"
    one.write_text("a,label\n1,x\n2,x\n3,x\n4,x\n5,x\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,label\n1,0\noops,1\n")
    nan = tmp_path / "nan.csv"
    nan.write_text("a,b\n1,0\nnan,1\n")
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"\x80\x04not a model")
    notzip = tmp_path / "notzip.npz"
    notzip.write_text("hello world")
    return [
        (["train", "--data", str(tmp_path / "nope.csv")], "nope.csv: no such file"),
        (["train", "--data", str(tmp_path)], "is a directory"),
        (["train", "--data", str(bad)], r"bad.csv: line 3, column 1 \('a'\): 'oops' is not a number"),
        (["train", "--data", str(nan)], r"nan.csv: line 3, column 1 \('a'\): 'nan' is not finite"),
        (["train", "--data", str(one)], r"single class \('x'\)"),
        (["train", "--data", str(notzip)], r"notzip.npz: not a valid .npz file \(not a zip archive\)$"),
        (["train", "--data", str(good), "--target", "c"], "no column named 'c'; columns are a, b, label"),
        (["train", "--data", str(good), "--target", "7"], "out of range"),
        (["train", "--target", "label"], r"--target needs --data FILE"),
        (["train", "--output", "identity", "--loss", "cross_entropy"], "needs output='softmax'"),
        (["train", "--output", "softmax", "--loss", "mse"], "goes only with loss='cross_entropy'"),
        (["train", "--output", "sigmoid"],
         r"--output sigmoid is for two classes .*, the target has 10 classes: use --output softmax"),
        (["train", "--out", str(tmp_path / "no" / "m.safetensors")], "does not exist"),
        (["train", "--out", str(tmp_path)], "is a directory"),
        (["train", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["train", "--lr"], "expected one argument"),
        (["predict", "--data", str(good)], "required: --model"),
        (["predict", "--model", str(model)], "required: --data"),
        (["predict", "--model", str(tmp_path / "nope"), "--data", str(good)], "nope: no such file"),
        (["predict", "--model", str(model), "--data", str(good)], "m.safetensors: not a safetensors file"),
        (["predict", "--model", str(model), "--data", str(good), "--backend", "tpu"], "invalid choice"),
        (["predict", "--model", str(model), "--data", str(good), "--out", str(tmp_path / "x" / "p")],
         "does not exist"),
        (["train", "--betas", "0.9,0.99"], "--betas does not apply to --optimizer sgd"),
        (["train", "--optimizer", "adam", "--momentum", "0.9"], "--momentum does not apply"),
        (["train", "--optimizer", "adam", "--betas", "0.9,1.5"], r"betas\[1\] must be"),
        (["train", "--history", str(tmp_path / "h.txt")], "use a .csv or .json file name"),
        (["train", "--history", str(tmp_path / "no" / "h.csv")], "does not exist"),
        (["train", "--plot", str(tmp_path / "c.jpg")], "plot file"),
        (["train", "--gamma", "0.5"], "--gamma applies to --schedule step or exponential, not constant"),
        (["train", "--schedule", "cosine", "--gamma", "0.5"], "--gamma applies to --schedule step or exponential, not cosine"),
        (["train", "--schedule", "exponential", "--step-epochs", "3"], "--step-epochs applies to --schedule step, not exponential"),
        (["train", "--schedule", "step", "--min-lr", "0.001"], "--min-lr applies to --schedule cosine, not step"),
        (["train", "--plateau-factor", "0.5"], "--plateau-factor needs --plateau"),
        (["train", "--schedule", "cosine", "--warmup-epochs", "40"], "leaves no epochs"),
        (["train", "--warmup-epochs", "5", "--epochs", "2"],
         "--warmup-epochs 5 leaves no epochs of --epochs 2 for the constant schedule"),
        (["info", "--bogus"], "unrecognized arguments"),
        ([], "required: command"),
        (["frobnicate"], "invalid choice"),
    ]


def test_every_mistake_exits_2_with_one_line(capsys, tmp_path):
    for argv, match in _errors(tmp_path):
        code, out, err = run_main(capsys, *argv)
        assert code == 2, (argv, code, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (argv, err)
        assert re.search(match, err), (argv, err)


def test_an_output_never_overwrites_an_input_or_another_output(capsys, tmp_path):
    data = tmp_path / "dd.csv"
    data.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20)))
    model = tmp_path / "mm.safetensors"
    __import__("gpudnn").Network([2, 2], backend="numpy").save(model)
    os.symlink(data, tmp_path / "link.csv")
    t = lambda name: str(tmp_path / name)  # noqa: E731
    fit = ["train", "--data", t("dd.csv"), "--epochs", "1"]
    use = ["predict", "--model", t("mm.safetensors"), "--data", t("dd.csv")]
    for argv, flags in [
        ([*fit, "--out", t("dd.csv")], ("--out", "--data")),
        ([*fit, "--history", t("link.csv")], ("--history", "--data")),  # the same file, linked
        ([*fit, "--out", t("x.json"), "--history", t("x.json")], ("--history", "--out")),
        ([*fit, "--out", t("x.png"), "--plot", t("./x.png")], ("--plot", "--out")),
        ([*fit, "--out", t("ckpt"), "--checkpoint", t("ckpt")], ("--checkpoint", "--out")),
        ([*use, "--out", t("mm.safetensors")], ("--out", "--model")),
        ([*use, "--out", t("dd.csv")], ("--out", "--data")),
    ]:
        code, out, err = run_main(capsys, *argv)
        assert code == 2 and len(err.splitlines()) == 1 and out == "", (argv, err)
        assert re.search(f"{flags[0]} .* is the same file as {flags[1]} .*; name another file", err), err
    assert sorted(os.listdir(tmp_path)) == ["dd.csv", "link.csv", "mm.safetensors"]  # none written
    assert data.read_text().startswith("a,b,label\n0,0,0\n")
    assert list(__import__("gpudnn").load(model).sizes) == [2, 2]


def _labelled(tmp_path, y, seed=0):
    """A CSV of 2 features, one informative, and target column y; its path as a str."""
    X = np.random.default_rng(seed).normal(size=(len(y), 2))
    X[:, 0] += 5 * np.unique(y, return_inverse=True)[1].ravel()  # classes far apart
    path = tmp_path / "d.csv"
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header="a,b,label", comments="",
               fmt=["%.6f", "%.6f", "%d"])
    return str(path)


@pytest.mark.parametrize("labels", [(5, 7), (0, 10**9)])
def test_integer_labels_size_the_output_by_their_count(capsys, tmp_path, labels):
    """As the API does: one output per distinct label, the labels kept as classes_ and
    given back by predict (were max(label) + 1 outputs: 8 for 5/7, a 957 GiB layer for 10^9)."""
    y = np.array(labels)[np.arange(60) % 2]
    data, model = _labelled(tmp_path, y), str(tmp_path / "m.safetensors")
    code, out, err = run_main(capsys, "train", "--data", data, "--layers", "4", "--epochs", "20",
                              "--quiet", "--out", model)
    assert code == 0, err
    net = __import__("gpudnn").load(model)
    assert net.sizes[-1] == 2 and net.classes_.tolist() == list(labels)
    code, out, err = run_main(capsys, "predict", "--model", model, "--data", data)
    pred = np.array(out.split(), dtype=np.int64)
    assert code == 0 and set(pred) <= set(labels) and np.mean(pred == y) > 0.9, err


def test_whole_number_values_are_not_taken_for_thousands_of_classes(capsys, tmp_path):
    """Prices ~50000, whole numbers, nearly all distinct: refused with what to pass, not a
    62028-way softmax; with --output identity a regression on an unstratified split."""
    y = 50000 + np.random.default_rng(1).integers(-12000, 12000, size=100)
    data = _labelled(tmp_path, y)
    code, out, err = run_main(capsys, "train", "--data", data, "--epochs", "1", "--quiet")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert re.search(r"the target has \d+ distinct whole-number values in 100 samples, too many "
                     r".*for regression pass --output identity", err), err
    code, out, err = run_main(capsys, "train", "--data", data, "--epochs", "1", "--quiet",
                              "--output", "identity", "--layers", "4")
    assert code == 0, err
    assert "80 training / 20 test samples" in out and "test loss" in out and "accuracy" not in out


def test_predict_feature_count_mismatch(capsys, tmp_path):
    net = __import__("gpudnn").Network([3, 2], backend="numpy")
    net.save(tmp_path / "m.safetensors")
    (tmp_path / "x.csv").write_text("1,2,3,4,5\n")
    code, _, err = run_main(capsys, "predict", "--model", str(tmp_path / "m.safetensors"),
                            "--data", str(tmp_path / "x.csv"))
    assert code == 2 and "x.csv: has 5 features per sample but the model expects 3" in err


@pytest.mark.skipif(__import__("gpudnn").backend.cupy_status()[0] is not None, reason="a GPU is usable")
def test_backend_cupy_without_a_gpu(capsys):
    code, _, err = run_main(capsys, "train", "--backend", "cupy", "--epochs", "1")
    assert code == 2 and len(err.splitlines()) == 1 and "backend='cupy' is not usable" in err


def test_train_and_predict_on_each_backend(capsys, tmp_path, backend):
    """--backend numpy|cupy trains and writes a model; predicting with either backend gives
    the same labels; info names the device."""
    model = str(tmp_path / "m.safetensors")
    code, out, err = run_main(capsys, "train", "--backend", backend.name, "--epochs", "3", "--quiet",
                              "--out", model)
    assert code == 0, err
    assert f"on {backend.name}" in out and "test accuracy: 0.9" in out
    X, _ = __import__("gpudnn").load_digits()
    np.save(tmp_path / "x.npy", X[:300])
    labels = []
    for b in ("numpy", backend.name):
        code, out, err = run_main(capsys, "predict", "--model", model, "--data", str(tmp_path / "x.npy"),
                                  "--backend", b)
        assert code == 0, err
        labels.append(out.split())
    assert len(labels[0]) == 300 and labels[0] == labels[1]
    code, out, err = run_main(capsys, "info")
    assert code == 0 and ("GPU 0:" in out if backend.name == "cupy" else "backend='auto' picks: numpy" in out)


def test_valid_edges_parse():
    from gpudnn.cli import build_parser

    a = build_parser().parse_args(["train", "--layers", "", "--momentum", "0", "--weight-decay", "0",
                                   "--seed", "0", "--test-size", "0.5", "--lr", "1e-9"])
    assert a.layers == [] and a.momentum == 0 and a.seed == 0 and a.debug is False
    assert build_parser().parse_args(["--debug", "info"]).debug is True
    assert build_parser().parse_args(["info", "--debug"]).debug is True


@pytest.mark.parametrize(
    "exc,code,words",
    [(TypeError("a bug\nover two lines"), 1, "internal error, TypeError: a bug over two lines"),
     (MemoryError("Unable to allocate 2 PiB"), 2, "out of memory (Unable to allocate 2 PiB)"),
     (OSError(28, "No space left on device"), 2, "No space left on device"),
     (__import__("gpudnn").TrainingError("the training loss became nan at step 3"), 2, "step 3")],
)
def test_unexpected_errors_are_one_line_too(capsys, monkeypatch, exc, code, words):
    from gpudnn import cli

    def boom(args):
        raise exc

    monkeypatch.setitem(cli.COMMANDS, "info", boom)
    got, _, err = run_main(capsys, "info")
    assert got == code and len(err.splitlines()) == 1 and words in err, err
    for argv in (["info", "--debug"], ["--debug", "info"]):
        with pytest.raises(type(exc)):
            cli.main(argv)


def test_streamed_training_data_writes_the_same_model(tmp_path):
    """--data-on-device no (batches streamed from host memory) trains bit for bit as the
    data kept on the device (here the CPU: both in host memory, through the two code paths)."""
    models = []
    for where in ("yes", "no"):
        models.append(tmp_path / f"{where}.safetensors")
        r = gpudnn("train", "--epochs", "3", "--batch-size", "50", "--quiet", "--backend", "numpy",
                   "--data-on-device", where, "--out", str(models[-1]))
        assert r.returncode == 0, r.stderr
    assert models[0].read_bytes() == models[1].read_bytes()


def test_low_memory_flag_trains_the_same_model(capsys, monkeypatch):
    """--low-memory reaches the network (row blocks of 32 for the 256-wide layer) and trains
    the same digits model to the same accuracy."""
    from gpudnn.cli import main
    from gpudnn.network import Network  # what the CLI imports when it trains

    made = []
    real = Network.__init__

    def spy(self, *a, **kw):
        real(self, *a, **kw)
        made.append(self)

    monkeypatch.setattr(Network, "__init__", spy)
    outs = []
    for flags in ([], ["--low-memory"]):
        assert main(["train", "--epochs", "3", "--backend", "numpy", *flags]) == 0
        outs.append([l for l in capsys.readouterr().out.splitlines() if l.startswith("test ")])
    assert [n.low_memory for n in made] == [False, True]
    assert outs[0] == outs[1] and outs[0]


def test_predict_full_precision_with_a_mixed_precision_model(tmp_path):
    """predict --full-precision: a regression saved in float16 mixed precision predicts with
    float32 passes (its master weights), as gpudnn.load(path, precision=None) does; without
    the flag, with the float16 passes it trained with (the two differ in their values)."""
    import gpudnn as lib  # (gpudnn here is the command)

    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 4))
    net = lib.Network([4, 8, 1], output="identity", backend="numpy", precision="float16", seed=0)
    net.fit(X, X @ [0.5, -1.0, 2.0, 0.1], epochs=2, verbose=0)
    model, data = tmp_path / "m.safetensors", tmp_path / "x.npy"
    net.save(model)
    np.save(data, X)
    mixed, full = net.predict(X), lib.load(model, backend="numpy", precision=None).predict(X)
    assert not np.array_equal(mixed, full)
    for flags, expect in [((), mixed), (("--full-precision",), full)]:
        r = gpudnn("predict", "--model", str(model), "--data", str(data), "--backend", "numpy", *flags)
        assert r.returncode == 0, r.stderr
        np.testing.assert_array_equal(np.array(r.stdout.split(), dtype=np.float32), np.ravel(expect))


def test_a_training_set_too_large_for_the_device_names_the_flag(monkeypatch, capsys):
    """--data-on-device yes with a training set the device cannot hold: one line naming the
    CLI's flag (--data-on-device no), without the generic advice about layers and batch
    size, which would not help; an activation buffer too large keeps that advice."""
    import gpudnn.batches
    from gpudnn.cli import main

    def too_large(cls, net, X, T):
        raise MemoryError("Out of memory allocating 1,234,567,890 bytes")

    monkeypatch.setattr(gpudnn.batches.ResidentBatches, "from_rows", classmethod(too_large))
    assert main(["train", "--epochs", "1", "--layers", "8", "--quiet", "--data-on-device", "yes"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "out of memory (the training set" in err
    assert "(CLI: --data-on-device no)" in err and "try smaller --layers" not in err


def test_a_numpy_distributed_run_leaves_the_gpus_alone(monkeypatch, capsys):
    """Making a GPU current creates its CUDA context: a --backend numpy run under mpiexec
    made one on every rank for nothing."""
    import gpudnn.distributed

    seen = []

    def fake(**kwargs):
        seen.append(kwargs)
        raise gpudnn.ConfigError("stop here")

    monkeypatch.setattr(gpudnn.distributed, "DataParallel", fake)
    for backend in ("numpy", "auto"):
        code, _, err = run_main(capsys, "train", "--distributed", "--backend", backend, "--epochs", "1")
        assert code == 2 and "stop here" in err
    assert seen == [{"device": None}, {"device": "auto"}]
