"""Checkpoints: resume bit for bit after crashes and kill -9, atomic writes, pruning, NaN stops,
refused configuration changes and hostile checkpoint files."""

import contextlib
import io
import itertools
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gpudnn
from gpudnn.callbacks import EarlyStopping, LambdaCallback
from gpudnn.checkpoint import LOCK, Checkpointer, list_checkpoints, read_checkpoint
from gpudnn.cli import main
from gpudnn.errors import ConfigError, DataError, ModelFileError, TrainingError
from gpudnn.io import encode_tensors, read_tensors
from gpudnn.optim import SGD, Adam, RMSprop
from gpudnn.schedules import CosineDecay, LinearWarmup, ReduceLROnPlateau

from helpers import Crash, PickleBomb, crash_at


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(64, 4))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] + X[:, 2] > 0.5)
    return X, y


# Each case: the network's extra settings, the optimizer, the callbacks, fit's settings.
CASES = {
    "sgd-nesterov-dropout-micro-batches": (
        dict(dropout=0.25),
        lambda: SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda: [],
        dict(micro_batches=3, checkpoint_every=4),
    ),
    "adam-warmup-cosine-clipping": (
        dict(dropout=[0.1, 0.3], activation="tanh"),
        lambda: Adam(lr=LinearWarmup(CosineDecay(0.02, 60), 10)),
        lambda: [],
        dict(clip_norm=0.5, checkpoint_every=3),
    ),
    "rmsprop-plateau-early-stopping-epoch-ends": (
        dict(),
        lambda: RMSprop(lr=ReduceLROnPlateau(0.05, patience=1, factor=0.5), momentum=0.5),
        lambda: [EarlyStopping(patience=2, min_delta=0.01)],
        dict(validation_split=0.25, checkpoint_every=None),
    ),
}
EPOCHS, BATCH = 9, 8


def make(case, kernels="generic", sizes=(4, 7, 5, 3), seed=1, backend="numpy"):
    net_kw, opt, callbacks, fit_kw = CASES[case]
    kw = {"activation": "relu", **net_kw}
    net = gpudnn.Network(list(sizes), dtype="float64", backend=backend, seed=seed, kernels=kernels, **kw)
    return net, opt(), callbacks(), dict(fit_kw)


def run(case, X, y, directory=None, kernels="generic", crash=None, epochs=EPOCHS, backend="numpy", **extra):
    """A fresh network and optimizer (as a new process would make) fitted on X, y, resuming
    from ``directory``; with ``crash``, crashing at that step of this run.
    Returns (net, history, callbacks), history None after a crash."""
    net, opt, callbacks, kw = make(case, kernels, backend=backend)
    if directory is None:
        kw.pop("checkpoint_every")
    else:
        kw.update(checkpoint=directory, resume=True)
    if crash is not None:
        crash_at(opt, crash)
    try:
        h = net.fit(X, y, epochs=epochs, batch_size=BATCH, optimizer=opt, callbacks=callbacks,
                    verbose=0, **kw, **extra)
    except Crash:
        return net, None, callbacks
    return net, h, callbacks


def without_time(history):
    return {k: v for k, v in history.items() if k != "time"}


@pytest.mark.parametrize("case", CASES)
def test_resume_after_crashes_is_bit_exact(tmp_path, data, backend, kernels, case):
    """Crashes at a few steps, each followed by a fresh network and optimizer resuming from
    the newest checkpoint, end with exactly the weights and history of one straight run.
    (On CuPy this resumes the cuRAND dropout states: run only where there is a GPU.)"""
    X, y = data
    on = dict(kernels=kernels, backend=backend)
    ref, ref_h, ref_cb = run(case, X, y, **on)
    for crash in (5, 11, 4, None):  # the step of each run (a resumed run counts from 1)
        net, h, callbacks = run(case, X, y, tmp_path, crash=crash, **on)
        assert (h is None) == (crash is not None)
    np.testing.assert_array_equal(backend.to_numpy(net.params), backend.to_numpy(ref.params))
    assert without_time(h) == without_time(ref_h)
    for a, b in zip(callbacks, ref_cb):
        assert (a.best_epoch, a.stopped_epoch, a.best) == (b.best_epoch, b.stopped_epoch, b.best)
    again, h_again, _ = run(case, X, y, tmp_path, **on)  # finished (or stopped): as is
    np.testing.assert_array_equal(backend.to_numpy(again.params), backend.to_numpy(ref.params))
    assert without_time(h_again) == without_time(ref_h)


def test_the_cases_exercise_what_they_name(data):
    """Early stopping does stop, the plateau does reduce the learning rate, dropout masks
    are drawn: the bit-exact test resumes each of these states, not a trivial one."""
    X, y = data
    _, h, (stopper,) = run("rmsprop-plateau-early-stopping-epoch-ends", X, y)
    assert stopper.stopped_epoch is not None and len(h["loss"]) < EPOCHS
    assert len(set(h["lr"])) > 1
    net, _, _ = run("sgd-nesterov-dropout-micro-batches", X, y)
    assert net._dropout_rng is not None


def test_a_finished_run_resumes_to_train_longer(tmp_path, data):
    X, y = data
    case = "sgd-nesterov-dropout-micro-batches"
    longer, longer_h, _ = run(case, X, y, epochs=6)
    net, h, _ = run(case, X, y, tmp_path, epochs=4)
    again, h_again, _ = run(case, X, y, tmp_path, epochs=4)  # finished: nothing to do
    np.testing.assert_array_equal(again.params, net.params)
    assert without_time(h_again) == without_time(h)
    net, h, _ = run(case, X, y, tmp_path, epochs=6)
    np.testing.assert_array_equal(net.params, longer.params)
    assert without_time(h) == without_time(longer_h)


def test_a_checkpoint_holds_the_state_documented(tmp_path, data):
    """The file is plain safetensors (the safetensors package reads it) with the JSON state."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    X, y = data
    net, _, _ = run("adam-warmup-cosine-clipping", X, y, tmp_path, crash=7)
    (step, path), = [c for c in list_checkpoints(tmp_path) if c[0] == 6]
    state = read_checkpoint(path)
    assert set(state) == {"config", "config_sha256", "progress", "params", "optimizer",
                          "step_loss", "rng", "callbacks"}
    assert state["progress"]["step"] == 6 and state["progress"]["batch"] == 6 % (64 // BATCH)
    assert state["optimizer"]["t"] == 6 and set(state["optimizer"]["buffers"]) == {"m", "v"}
    assert state["rng"]["shuffle"]["bit_generator"] == "PCG64"
    assert state["rng"]["dropout"]["bit_generator"] == "PCG64"
    assert state["config"]["network"]["sizes"] == [4, 7, 5, 3]
    tensors = safetensors_numpy.load_file(path)
    assert set(tensors) == {"params", "optimizer.buffers.m", "optimizer.buffers.v", "step_loss"}
    np.testing.assert_array_equal(tensors["params"], state["params"])


def test_pruning_keeps_the_newest(tmp_path, data):
    X, y = data
    run("adam-warmup-cosine-clipping", X, y, tmp_path / "a", epochs=2)
    assert [s for s, _ in list_checkpoints(tmp_path / "a")] == [12, 15, 16]  # 8 steps an epoch
    run("adam-warmup-cosine-clipping", X, y, tmp_path / "b", epochs=2, keep_checkpoints=1)
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [16]
    assert sorted(os.listdir(tmp_path / "b")) == [LOCK, "checkpoint-000000016.safetensors"]  # no temporaries


def test_a_directory_with_checkpoints_needs_resume(tmp_path, data):
    X, y = data
    run("adam-warmup-cosine-clipping", X, y, tmp_path, epochs=1)
    net, opt, _, _ = make("adam-warmup-cosine-clipping")
    with pytest.raises(ConfigError, match="already holds checkpoints .* resume"):
        net.fit(X, y, optimizer=opt, checkpoint=tmp_path, verbose=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        net.fit(X, y, checkpoint=tmp_path / "file", verbose=0)
    with pytest.raises(ConfigError, match="need a checkpoint directory"):
        net.fit(X, y, resume=True, verbose=0)
    for bad in ({"checkpoint_every": 0}, {"keep_checkpoints": -1}):
        with pytest.raises(ConfigError, match="positive integer"):
            net.fit(X, y, checkpoint=tmp_path / "new", **bad, verbose=0)


# --- resuming under another configuration ----------------------------------------------------
@pytest.fixture(scope="module")
def written(tmp_path_factory, data):
    """A checkpoint directory of an interrupted run of the Adam case."""
    directory = tmp_path_factory.mktemp("ckpt")
    run("adam-warmup-cosine-clipping", *data, directory, crash=5)
    return directory


CHANGES = {
    "batch size": (dict(batch_size=16), r"batch_size: 8 in the checkpoint, 16 now"),
    "layer width": (dict(sizes=(4, 9, 5, 3)), r"network\.sizes: \[4, 7, 5, 3\] in the checkpoint, \[4, 9, 5, 3\] now"),
    "seed": (dict(seed=2), r"network\.seed: 1 in the checkpoint, 2 now"),
    "dropout": (dict(dropout=0.5), r"network\.dropout: \[0\.1, 0\.3\] in the checkpoint, \[0\.5, 0\.5\] now"),
    "learning rate": (dict(opt=Adam(lr=LinearWarmup(CosineDecay(0.03, 60), 10))), r"optimizer: 'Adam\(lr=LinearWarmup\(schedule=CosineDecay\(lr=0\.02.* now"),
    "optimizer": (dict(opt=SGD(lr=0.1)), r"optimizer: 'Adam\(.*in the checkpoint, 'SGD\(lr=0\.1, .*now"),
    "data": (dict(X=lambda X: X + (np.arange(X.size) == 7).reshape(X.shape)), r"data\.X: '64x4 <f8 [0-9a-f]+' in the checkpoint, '64x4 <f8 [0-9a-f]+' now"),
    "fewer samples": (dict(X=lambda X: X[:-1], y=lambda y: y[:-1]), r"data\.X: '64x4 .*'63x4"),
    "micro-batches": (dict(micro_batches=2), r"micro_batches: 1 in the checkpoint, 2 now"),
    "callbacks": (dict(callbacks=[EarlyStopping()]), r"callbacks: \[\] in the checkpoint, \[.EarlyStopping\(monitor='auto', patience=10"),
    "kernels": (dict(kernels="numba"), r"kernels: 'generic' in the checkpoint, 'numba' now"),
}


@pytest.mark.parametrize("change", CHANGES)
def test_resuming_with_another_configuration_is_refused(written, data, change):
    if change == "kernels":
        pytest.importorskip("numba")
    X, y = data
    new, message = CHANGES[change]
    net_kw = {k: new[k] for k in ("sizes", "seed", "kernels") if k in new}
    net, opt, _, kw = make("adam-warmup-cosine-clipping", **net_kw)
    if "dropout" in new:
        net = gpudnn.Network([4, 7, 5, 3], dtype="float64", backend="numpy", seed=1,
                             activation="tanh", dropout=new["dropout"], kernels="generic")
    kw.update(batch_size=BATCH, micro_batches=new.get("micro_batches", 1))
    if "batch_size" in new:
        kw["batch_size"] = new["batch_size"]
    X, y = new.get("X", lambda X: X)(X), new.get("y", lambda y: y)(y)
    before = sorted(os.listdir(written))
    with pytest.raises(ConfigError, match=r"cannot resume from .*checkpoint-0+3\.safetensors: it "
                                          r"was written by a run with another configuration") as err:
        net.fit(X, y, epochs=EPOCHS, optimizer=new.get("opt", opt), callbacks=new.get("callbacks", []),
                verbose=0, checkpoint=written, resume=True, **kw)
    assert re.search(message, str(err.value)), str(err.value)
    differing = 2 if change == "fewer samples" else 1  # data.X and data.y
    assert str(err.value).count(" in the checkpoint, ") == differing  # only what differs is named
    assert sorted(os.listdir(written)) == before


def test_a_one_process_checkpoint_is_not_resumed_by_more_ranks(written, data):
    """The configuration holds the rank count of a distributed fit (checked first, naming
    both counts); 2-rank jobs against this are in test_distributed.py."""
    ckpt = Checkpointer(written, resume=True)
    ckpt.config = {**read_checkpoint(ckpt.last)["config"], "ranks": 2}
    with pytest.raises(ConfigError, match=r"checkpoint-0+3\.safetensors: it was written by a run "
                                          r"of 1 rank\(s\), this run has 2\. Resume in one process"):
        ckpt._check_config(ckpt.last, read_checkpoint(ckpt.last))


# --- NaN ---------------------------------------------------------------------------------------
def poison_at(net, step):
    """A callback that sets one weight to NaN after the given step (1-based, over the fit)."""
    steps = itertools.count(1)

    def hook(batch, logs):
        if next(steps) == step:
            net.W[0][0, 0] = np.nan

    return LambdaCallback(on_batch_end=hook)


@pytest.mark.parametrize("every, poisoned, message, good", [
    # the loss of step 11 is NaN; found before writing the checkpoint due after step 12
    (3, 10, r"the training loss became nan at step 11 \(epoch 2, batch 3 of 8\)", 9),
    # the weights are NaN when the checkpoint after step 6 is written: its loss was finite
    (3, 6, r"params became NaN or infinite by step 6 \(epoch 1, batch 6 of 8\)", 3),
    # epoch-end checkpoints only: found at the end of epoch 2
    (None, 11, r"the training loss became nan at step 12 \(epoch 2, batch 4 of 8\)", 8),
])
def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data, every, poisoned, message, good):
    X, y = data
    net, opt, _, _ = make("sgd-nesterov-dropout-micro-batches")
    with pytest.raises(TrainingError, match=message) as err:
        net.fit(X, y, epochs=3, batch_size=BATCH, optimizer=opt, callbacks=[poison_at(net, poisoned)],
                verbose=0, checkpoint=tmp_path, checkpoint_every=every)
    newest = os.path.join(tmp_path, f"checkpoint-{good:09d}.safetensors")
    assert f"the last good checkpoint is {newest}" in str(err.value)
    assert list_checkpoints(tmp_path)[-1] == (good, newest)
    state = read_checkpoint(newest)
    assert np.isfinite(state["params"]).all() and state["progress"]["step"] == good


# --- hostile and damaged checkpoint files ----------------------------------------------------------
def rewrite(path, state=None, tensors=None, meta=None):
    """Write the checkpoint at ``path`` back with its JSON state, tensors or metadata changed."""
    m, t = read_tensors(path, lambda msg: pytest.fail(msg))
    s = json.loads(m["state"])
    if state:
        state(s)
    if tensors:
        tensors(t)
    m["state"] = json.dumps(s)
    if meta:
        meta(m)
    with open(path, "wb") as f:
        f.write(b"".join(encode_tensors(t, m)))


def _set(path, value):
    """A function setting s[a][b]... = value for path "a.b...": for ``rewrite``."""
    def go(s):
        *keys, last = path.split(".")
        for k in keys:
            s = s[k]
        s[last] = value
    return go


def overwrite_in(tensor):
    """Flip the lowest bit of the first byte of ``tensor``'s data in place (a finite value
    stays finite): the file stays well-formed, only the digest sees it."""
    def go(p):
        raw = bytearray(p.read_bytes())
        n = int.from_bytes(raw[:8], "little")
        raw[8 + n + json.loads(raw[8 : 8 + n])[tensor]["data_offsets"][0]] ^= 1
        p.write_bytes(bytes(raw))
    return go


DAMAGE = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-20]), "spans|truncated|runs past"),
    "trailing garbage": (lambda p: p.write_bytes(p.read_bytes() + b"x" * 8), "more bytes"),
    "pickle": (lambda p: p.write_bytes(pickle.dumps(PickleBomb())), "header|too short"),
    "empty": (lambda p: p.write_bytes(b""), "too short"),
    "lying header length": (lambda p: p.write_bytes((2**40).to_bytes(8, "little") + p.read_bytes()[8:]), "header length"),
    "a model file": (None, "not a gpudnn checkpoint"),
    "newer format": (lambda p: rewrite(p, meta=_set("format_version", "9")), "unknown checkpoint format_version '9'"),
    "state not JSON": (lambda p: rewrite(p, meta=_set("state", "{nope")), "state is not valid JSON"),
    "config edited": (lambda p: rewrite(p, state=_set("config.batch_size", 4)), "does not match its hash"),
    "batch past the epoch": (lambda p: rewrite(p, state=_set("progress.batch", 99)), "not a position"),
    "step disagrees": (lambda p: rewrite(p, state=_set("progress.step", 5)), "not a position"),
    "history too short": (lambda p: rewrite(p, state=_set("progress.history", {"loss": [1.0]})), "history"),
    "tensor missing": (lambda p: rewrite(p, tensors=lambda t: t.pop("optimizer.buffers.m")), "does not hold"),
    "tensor extra": (lambda p: rewrite(p, tensors=lambda t: t.update(extra=np.zeros(3))), "not part of the state"),
    "params shape": (lambda p: rewrite(p, tensors=lambda t: t.update(params=t["params"][:-1])), "params must be"),
    "params byte": (overwrite_in("params"), r"data damaged \(digest mismatch\)"),
    "optimizer byte": (overwrite_in("optimizer.buffers.v"), r"data damaged \(digest mismatch\)"),
    "params NaN": (lambda p: rewrite(p, tensors=lambda t: t["params"].__setitem__(3, np.nan)), "params has NaN"),
    "params int": (lambda p: rewrite(p, tensors=lambda t: t.update(params=t["params"].astype(np.int64))), "params must be"),
    "shuffle state": (lambda p: rewrite(p, state=_set("rng.shuffle.state", {"state": "x"})), "cannot restore"),
    "dropout state": (lambda p: rewrite(p, state=_set("rng.dropout", {"bit_generator": "MT19937"})), "cannot restore"),
    "optimizer buffer": (lambda p: rewrite(p, tensors=lambda t: t.update({"optimizer.buffers.v": np.zeros(3)})), "cannot restore"),
    "optimizer hyper": (lambda p: rewrite(p, state=_set("optimizer.hyper.eps", 1.0)), "hyperparameters disagree"),
    "optimizer t": (lambda p: rewrite(p, state=_set("optimizer.t", "4")), "step count"),
    "callbacks": (lambda p: rewrite(p, state=_set("callbacks", [{}])), "callbacks must hold 0"),
    "nested deep": (lambda p: rewrite(p, state=_set("callbacks", json.loads("[" * 900 + "]" * 900))), "nested more than 32"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_or_hostile_checkpoint_is_refused_naming_the_file(tmp_path, written, data, damage):
    (step, path), = list_checkpoints(written)[-1:]
    target = tmp_path / os.path.basename(path)
    target.write_bytes(open(path, "rb").read())
    do, message = DAMAGE[damage]
    if do is None:
        gpudnn.Network([4, 3], backend="numpy").save(target)
    else:
        do(target)
    net, opt, _, kw = make("adam-warmup-cosine-clipping")
    kw.pop("checkpoint_every")
    PickleBomb.triggered = False
    with pytest.raises(ModelFileError) as err:
        net.fit(*data, epochs=EPOCHS, batch_size=BATCH, optimizer=opt, verbose=0,
                checkpoint=tmp_path, resume=True, **kw)
    assert str(err.value).startswith(f"{target}: "), str(err.value)
    assert re.search(message, str(err.value)), str(err.value)
    assert not PickleBomb.triggered


def test_a_checkpoint_written_before_digests_resumes_unchecked(tmp_path, data):
    """Checkpoints without the digest (an earlier gpudnn's) resume as before."""
    case = "adam-warmup-cosine-clipping"
    run(case, *data, tmp_path, crash=7)
    (_, path), = list_checkpoints(tmp_path)[-1:]
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    del header["__metadata__"][gpudnn.io.DIGEST]
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    net, h, _ = run(case, *data, tmp_path)
    ref, ref_h, _ = run(case, *data)
    np.testing.assert_array_equal(net.params, ref.params)
    assert without_time(h) == without_time(ref_h)


# --- kill -9 -----------------------------------------------------------------------------------------
CLI = ["train", "--layers", "12", "--epochs", "25", "--batch-size", "8", "--dtype", "float64",
       "--dropout", "0.1", "--optimizer", "adam", "--lr", "0.01", "--warmup-epochs", "2",
       "--schedule", "cosine", "--quiet", "--seed", "3"]


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 6))
    path = tmp_path_factory.mktemp("cli") / "d.npz"
    np.savez(path, X=X, y=(X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.5))
    return str(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cli_data):
    """The uninterrupted run (in-process): its weights and history."""
    d = tmp_path_factory.mktemp("ref")
    out, hist = d / "ref.safetensors", d / "ref.json"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*CLI, "--data", cli_data, "--out", str(out), "--history", str(hist)]) == 0
    return gpudnn.load(out).params, json.loads(hist.read_text())


def newest_step(directory):
    return list_checkpoints(directory)[-1][0] if os.path.isdir(directory) and list_checkpoints(directory) else -1


def test_killed_at_random_moments_the_cli_resumes_to_the_same_weights(tmp_path, cli_data, reference):
    """`gpudnn train --checkpoint D --checkpoint-every 4 --resume` killed with SIGKILL three
    times at random moments (a random number of steps into each run, plus a random delay
    of up to 10 ms: in a step, a checkpoint write or a pruning), then run until it
    finishes, ends with the weights and history of an uninterrupted run, bit for bit."""
    ref, ref_history = reference
    ckpt, out, hist = tmp_path / "ckpt", tmp_path / "out.safetensors", tmp_path / "h.json"
    command = [sys.executable, "-m", "gpudnn.cli", *CLI, "--data", cli_data, "--checkpoint", str(ckpt),
               "--checkpoint-every", "4", "--resume", "--out", str(out), "--history", str(hist)]
    chance, kills = random.Random(6), 0
    for _ in range(3):  # the run is 500 steps long
        target = newest_step(ckpt) + chance.randint(1, 80)
        p = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while p.poll() is None and newest_step(ckpt) < target and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(chance.uniform(0.0, 0.01))
        p.send_signal(signal.SIGKILL)
        _, err = p.communicate(timeout=60)
        assert p.returncode in (0, -signal.SIGKILL), err
        kills += p.returncode == -signal.SIGKILL
    assert kills == 3  # each in the middle of training
    r = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(gpudnn.load(out).params, ref)
    assert without_time(json.loads(hist.read_text())) == without_time(ref_history)


KILL_IN_WRITE = """
import os, signal, sys
replace, calls = os.replace, [0]
def dying_replace(src, dst):  # the 3rd checkpoint is written and fsync'ed, never renamed
    calls[0] += 1
    if calls[0] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    replace(src, dst)
os.replace = dying_replace
from gpudnn.cli import main
main(sys.argv[1:])
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, cli_data, reference, capsys):
    ref, ref_history = reference
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.safetensors"
    args = [*CLI, "--data", cli_data, "--checkpoint", str(ckpt), "--checkpoint-every", "10",
            "--resume", "--out", str(out)]
    r = subprocess.run([sys.executable, "-c", KILL_IN_WRITE, *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    names = sorted(set(os.listdir(ckpt)) - {LOCK})
    assert names[0].startswith(".checkpoint-000000030.safetensors.") and names[0].endswith(".tmp")
    assert names[1:] == ["checkpoint-000000010.safetensors", "checkpoint-000000020.safetensors"]
    assert read_checkpoint(ckpt / names[-1])["progress"]["step"] == 20
    loud = [a for a in args if a != "--quiet"]  # says where it resumes from
    assert main([*loud, "--history", str(tmp_path / "h.json")]) == 0
    assert f"resuming from {ckpt / names[-1]} (step 20: epoch 1 done)" in capsys.readouterr().out
    assert not any(n.endswith(".tmp") for n in os.listdir(ckpt))  # the leftover is removed
    np.testing.assert_array_equal(gpudnn.load(out).params, ref)
    assert without_time(json.loads((tmp_path / "h.json").read_text())) == without_time(ref_history)


def test_cli_checkpoint_mistakes_are_one_line_errors(tmp_path, cli_data, capsys):
    assert main(["train", "--data", cli_data, "--resume"]) == 2
    assert "--resume need --checkpoint DIR" in capsys.readouterr().err
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit):
        main(["train", "--data", cli_data, "--checkpoint", str(tmp_path / "f")])
    assert "is a file; name a directory" in capsys.readouterr().err
    args = [*CLI, "--data", cli_data, "--epochs", "3", "--checkpoint", str(tmp_path / "c")]
    assert main(args) == 0
    assert main([*args, "--resume", "--lr", "0.02"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "optimizer: 'Adam(lr=LinearWarmup(" in err
    # the same directory without --resume: refused before the data is read or a model made
    assert main([*args[:args.index("--data") + 1], str(tmp_path / "missing.csv"),
                 *args[args.index("--data") + 2:]]) == 2
    out, err = capsys.readouterr()
    assert "already holds checkpoints" in err and "--resume" in err and out == ""


# --- one run at a time ---------------------------------------------------------------------------
def test_a_directory_in_use_is_refused_until_its_run_ends(tmp_path):
    first = Checkpointer(tmp_path)
    for resume in (False, True):
        with pytest.raises(ConfigError, match=f"checkpoint directory {re.escape(str(tmp_path))} is in "
                                              "use by another run"):
            Checkpointer(tmp_path, resume=resume)
    first.close()
    second = Checkpointer(tmp_path, resume=True)
    del second  # garbage collected: released too
    Checkpointer(tmp_path).close()


def test_release_directory_unlocks_then_closes(tmp_path, monkeypatch):
    """The lock is released explicitly before its descriptor is closed (Windows frees a
    closed file's byte lock only later), and the directory can be locked again at once."""
    from gpudnn import checkpoint

    calls = []
    real_close = os.close
    monkeypatch.setattr(checkpoint.os, "close", lambda fd: (calls.append("close"), real_close(fd)))
    if checkpoint.fcntl is not None:
        real_flock = checkpoint.fcntl.flock
        monkeypatch.setattr(checkpoint.fcntl, "flock", lambda fd, op: (
            calls.append("unlock") if op == checkpoint.fcntl.LOCK_UN else None, real_flock(fd, op)))
    fd = checkpoint.lock_directory(str(tmp_path))
    checkpoint.release_directory(fd)
    assert calls[-2:] == ["unlock", "close"] if checkpoint.fcntl is not None else calls[-1:] == ["close"]
    checkpoint.release_directory(checkpoint.lock_directory(str(tmp_path)))


def test_a_refused_or_failed_start_releases_the_directory(written, data):
    """A run refused at start (here: another configuration) does not keep the directory."""
    net, opt, _, kw = make("adam-warmup-cosine-clipping")
    with pytest.raises(ConfigError, match="another configuration") as err:
        net.fit(*data, epochs=EPOCHS, batch_size=BATCH + 1, optimizer=opt, verbose=0,
                checkpoint=written, resume=True, checkpoint_every=3)
    Checkpointer(written, resume=True).close()  # while err still holds the failed fit's frames
    del err


def test_a_fit_that_fails_before_checkpointing_releases_the_directory(tmp_path, data):
    """A fit that stops on something outside the checkpointer (here bad inputs, found after
    the directory was taken) releases it at once, not when its frames are collected (which
    in a notebook keeping the traceback is never)."""
    net, opt, _, kw = make("adam-warmup-cosine-clipping")
    X, y = data
    with pytest.raises(DataError) as err:
        net.fit(X[:, :2], y, epochs=1, optimizer=opt, verbose=0, checkpoint=tmp_path)
    Checkpointer(tmp_path).close()  # while err still holds the failed fit's frames
    del err


def test_the_cli_refuses_a_second_run_and_a_sigkill_frees_the_directory(tmp_path, cli_data, capsys):
    """The reviewer's case: two `gpudnn train` on one directory destroyed each other's
    checkpoints (the second died on a file the first had pruned). The second is refused
    at start with one line and writes nothing; a run killed with SIGKILL leaves the
    directory free."""
    ckpt = tmp_path / "ckpt"
    args = [*CLI, "--epochs", "400", "--data", cli_data, "--checkpoint", str(ckpt),
            "--checkpoint-every", "5", "--resume"]
    first = subprocess.Popen([sys.executable, "-m", "gpudnn.cli", *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while first.poll() is None and newest_step(ckpt) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.poll() is None, first.communicate()[1]
        assert main([*args[:-1], "--lr", "0.05"]) == 2  # another run, fresh
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"checkpoint directory {ckpt} is in use by another run" in err
        assert main([*args, "--batch-size", "16"]) == 2  # another run, resuming
        assert "is in use by another run" in capsys.readouterr().err
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    ckpt_files = list_checkpoints(ckpt)
    assert ckpt_files and read_checkpoint(ckpt_files[-1][1])["config"]["batch_size"] == 8
    Checkpointer(ckpt, resume=True).close()  # the kill released the lock


def test_a_regression_on_standardised_targets_resumes_bit_exact(tmp_path):
    """standardize_targets is part of the run's configuration: a crashed regression resumes
    to the weights of one straight run (the targets' standardisation fitted again from the
    same y), and resuming without it is refused."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(48, 4))
    y = 5000.0 + 800.0 * (X @ [1.0, -2.0, 0.5, 0.0])  # far from mean 0, std 1

    def go(directory=None, crash=None, **kw):
        net = gpudnn.Network([4, 6, 1], output="identity", dtype="float64", backend="numpy", seed=4)
        opt = SGD(lr=0.01, momentum=0.9)
        if crash is not None:
            crash_at(opt, crash)
        ckpt = dict(checkpoint=directory, resume=True, checkpoint_every=2) if directory else {}
        try:
            net.fit(X, y, epochs=4, batch_size=8, optimizer=opt, verbose=0, standardize=True,
                    **{"standardize_targets": True, **kw}, **ckpt)
        except Crash:
            return None
        return net

    ref = go()
    assert ref.target_scaler.mean == pytest.approx([y.mean()]) and ref.target_scaler.scale == pytest.approx([y.std()])
    assert go(tmp_path, crash=9) is None
    net = go(tmp_path)
    np.testing.assert_array_equal(net.params, ref.params)
    np.testing.assert_array_equal(net.predict(X), ref.predict(X))
    with pytest.raises(ConfigError, match=r"standardize_targets: True in the checkpoint, '\(absent\)' now"):
        go(tmp_path, standardize_targets=False)


def test_a_run_on_a_directory_in_use_is_told_so_before_what_it_holds(tmp_path, data):
    """A second run on a directory another run is writing (and which holds checkpoints) is
    refused as "in use by another run", by the API as by the CLI's early probe, not as
    "already holds checkpoints" (the refusal its own run, resumed, would not get)."""
    from gpudnn.checkpoint import probe_directory

    net, opt, _, kw = make("adam-warmup-cosine-clipping")
    net.fit(*data, epochs=1, batch_size=BATCH, optimizer=opt, verbose=0, checkpoint=tmp_path, **kw)
    first = Checkpointer(tmp_path, resume=True)
    try:
        for attempt in (lambda: Checkpointer(tmp_path), lambda: probe_directory(str(tmp_path), False)):
            with pytest.raises(ConfigError, match="is in use by another run"):
                attempt()
    finally:
        first.close()
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        probe_directory(str(tmp_path), False)
