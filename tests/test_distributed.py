"""Data-parallel training (gpudnn.distributed).

In-process tests check the arithmetic (shards, their weights, the notes the ranks compare).
The MPI tests run real jobs, ``mpiexec -n 2 python tests/mpi_worker.py ...`` or the
``gpudnn`` command, in subprocesses bounded by a timeout: a job that hangs fails its test.
They use the mpiexec installed beside this Python by the ``mpich`` wheel (the test and dist
extras), the MPI mpi4py was built against, and are skipped with the reason where it is missing.
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpudnn
from gpudnn.backend import cupy_status
from gpudnn.checkpoint import LOCK, list_checkpoints
from gpudnn.distributed import _digest, disagreement, rank_dropout_stream, shard_bounds
from gpudnn.errors import ConfigError
from gpudnn.train import _batch_gradients
from helpers import batch
from mpi_worker import BATCH, problem

HERE = Path(__file__).parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"
JOB_TIMEOUT = 60  # seconds: every job, failing ones included, must end within this


def _mpi_missing():
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install -e '.[dist]')"
    if not MPIEXEC.exists():
        return f"no mpiexec beside {sys.executable} (pip install -e '.[dist]' installs MPICH's)"
    return None


def mpi_job(test):
    """Mark a test that runs MPI jobs; skipped, with the reason, where MPI is missing."""
    missing = _mpi_missing()
    return pytest.mark.mpi(pytest.mark.skipif(missing is not None, reason=str(missing))(test))


def mpirun(*ranks, env=None, cwd=None):
    """Run an MPI job: each of ``ranks`` is (n, argv); several make an MPMD job
    (``mpiexec -n 1 a : -n 1 b``). Killed, with every process it started, after
    JOB_TIMEOUT seconds (then the test fails). Returns the CompletedProcess."""
    cmd = [str(MPIEXEC)]
    for i, (n, argv) in enumerate(ranks):
        cmd += ([":"] if i else []) + ["-n", str(n), *argv]
    # one BLAS thread per rank: 2 ranks on 2 cores, as the scaling study runs them; the
    # gpudnn of this checkout, not the one installed (a script's directory comes first on
    # its sys.path, not the working directory)
    path = os.pathsep.join(p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": path,
           **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=JOB_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # mpiexec's session: the job's own processes
        out, err = proc.communicate()
        pytest.fail(f"the MPI job did not end within {JOB_TIMEOUT} s\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def worker(n, scenario, out, env=None):
    return mpirun((n, [sys.executable, str(HERE / "mpi_worker.py"), scenario, str(out)]), env=env)


def the_error_of_both_ranks(out):
    """The error both ranks of a worker job wrote (to out/rank{r}.txt), the same."""
    errors = [(out / f"rank{r}.txt").read_text() for r in range(2)]
    assert errors[0] == errors[1]
    return errors[0]


# --- the arithmetic, in one process ---------------------------------------------------------
def test_shards_tile_every_batch():
    for N in range(1, 7):
        for B in range(0, 20):
            bounds = [shard_bounds(B, r, N) for r in range(N)]
            assert bounds[0][0] == 0 and bounds[-1][1] == B
            assert all(hi == lo2 for (_, hi), (lo2, _) in zip(bounds, bounds[1:]))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("micro_batches", [1, 2])
@pytest.mark.parametrize("N,B", [(2, 8), (2, 5), (3, 7), (5, 3), (2, 1)])
def test_weighted_shard_means_are_the_batch_mean(backend, rng, N, B, micro_batches):
    """Σ_r (b_r/B) g_r, with g_r the mean gradient of shard r (fit's _batch_gradients, also
    in micro-batches), is the gradient of the whole batch; empty shards (B < N) give a zero
    gradient and no loss."""
    net = gpudnn.Network([4, 6, 3], activation="tanh", dtype="float64", backend=backend, seed=1)
    A0, Y = (net.backend.asarray(M) for M in batch(net, B, rng))
    acc = net.xp.empty_like(net.grads)
    idx = net.xp.arange(B)
    _batch_gradients(net, A0, Y, idx, micro_batches, acc)
    whole = net.backend.to_numpy(net.grads).copy()
    total = np.zeros_like(whole)
    for r in range(N):
        lo, hi = shard_bounds(B, r, N)
        loss, _ = _batch_gradients(net, A0, Y, idx[lo:hi], micro_batches, acc)
        if hi == lo:
            assert float(loss) == 0.0 and not net.backend.to_numpy(net.grads).any()
        total += (hi - lo) / B * net.backend.to_numpy(net.grads)
    np.testing.assert_allclose(total, whole, rtol=1e-12, atol=1e-15)


def note(at="start of fit", error=None, **facts):
    return {"at": at, "facts": facts, "error": error}


def test_disagreement_names_ranks_and_values():
    same = [note(batch_size=8, seed=0)] * 3
    assert disagreement(same) is None
    msg = disagreement([note(batch_size=8), note(batch_size=9), note(batch_size=9)])
    assert msg.startswith("the 3 ranks disagree at the start of fit on batch_size (rank 0: 8; ranks 1,2: 9)")
    assert disagreement([note(), note(error="DataError: x.csv: no such file")]) == (
        "rank 1 of 2 failed: DataError: x.csv: no such file")
    assert "rank 0 at the end of the job; rank 1 at the start of fit" in disagreement(
        [note("end of the job"), note()])
    many = disagreement([note(a=1, b=1, c=1, d=1, e=1), note(a=2, b=2, c=2, d=2, e=2)])
    assert "on a (" in many and "and 2 more" in many and "d (" not in many


def test_digests_compare_values():
    X = np.arange(12.0).reshape(3, 4)
    assert _digest(X) == _digest(X.copy()) == _digest(np.asfortranarray(X))
    Y = X.copy()
    Y[2, 3] += 1e-12
    assert _digest(Y) != _digest(X)
    assert _digest(X.tolist()) == _digest(X)
    assert _digest(np.array(["a", None], dtype=object)) == _digest(np.array(["a", None], dtype=object))
    assert _digest(object()) == {"type": "object"}


def test_nccl_is_chosen_only_where_every_rank_can_use_it(monkeypatch):
    """NCCL refuses two ranks on one GPU and is missing from CuPy's pip wheels unless its
    library is installed: both used to abort the job in the first step. Each is a reason
    to all-reduce through the host instead, chosen before the first step. Ranks given
    their own CUDA_VISIBLE_DEVICES all see "device 0": GPUs are told apart by host and bus."""
    import types

    import gpudnn.backend
    from gpudnn.distributed import nccl_unusable, shared_gpu

    monkeypatch.setattr(gpudnn.backend, "cupy_status", lambda: (None, "no CUDA device"))
    assert nccl_unusable() == "no GPU backend (no CUDA device)"
    nccl = types.SimpleNamespace(available=True)
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(nccl=nccl))
    monkeypatch.setattr(gpudnn.backend, "cupy_status", lambda: (fake, None))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setitem(sys.modules, "cupy.cuda", fake.cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", nccl)
    assert nccl_unusable() is None
    nccl.available = False
    assert nccl_unusable().startswith("CuPy finds no NCCL library")
    assert shared_gpu(["a 0000:01:00.0", "a 0000:02:00.0", "b 0000:01:00.0"]) is None
    assert shared_gpu(["a 0000:01:00.0", "a 0000:02:00.0", "a 0000:01:00.0"]) == (
        "ranks 0 and 2 share the GPU a 0000:01:00.0; NCCL takes one rank per GPU")


def test_distributed_must_be_a_DataParallel():
    net = gpudnn.Network([2, 2], backend="numpy")
    with pytest.raises(ConfigError, match="distributed must be a gpudnn.distributed.DataParallel"):
        net.fit(np.ones((4, 2)), np.arange(4) % 2, distributed=True)


# --- real MPI jobs ----------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size,variant", [(BATCH, "sgd"), (4, "sgd"), (BATCH, "features")])
@pytest.mark.parametrize("backend", [
    "numpy",
    # on one GPU both ranks share it and all-reduce through the host; on two, through NCCL
    pytest.param("cupy", marks=[pytest.mark.cupy, pytest.mark.skipif(
        cupy_status()[0] is None, reason=f"no GPU backend: {cupy_status()[1]}")]),
])
@mpi_job
def test_two_ranks_train_like_one_process(tmp_path, backend, batch_size, variant):
    """float64, 45 samples: batch 8 ends each epoch with 5 columns (3 + 2: uneven shards),
    batch 4 with 1 (rank 0's shard is empty); shuffled, momentum and weight decay,
    standardised, with validation data; and with Adam on a schedule, micro-batches,
    clipping, a validation split and early stopping (see mpi_worker.problem)."""
    job = worker(2, "fit", tmp_path, env={"GPUDNN_TEST_BATCH": str(batch_size),
                                          "GPUDNN_TEST_BACKEND": backend,
                                          "GPUDNN_TEST_VARIANT": variant})
    assert job.returncode == 0, job.stderr
    net, X, y, settings = problem(batch_size, backend, variant)
    history = net.fit(X, y, **settings)
    np.testing.assert_allclose(np.load(tmp_path / "params.npy"), net.backend.to_numpy(net.params),
                               rtol=0, atol=1e-9)
    dist = json.loads((tmp_path / "history.json").read_text())
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(dist[key], history[key], rtol=1e-9)
    route = (tmp_path / "route.txt").read_text()
    if backend == "numpy":
        assert route == "None"
    elif cupy_status()[0].cuda.runtime.getDeviceCount() < 2:
        assert route == "host"  # the two ranks share one GPU: NCCL would refuse them
    else:
        assert route in ("nccl", "host")


@pytest.mark.parametrize("batch_size,variant", [(4, "sgd"), (BATCH, "features")])
@mpi_job
def test_two_ranks_streaming_their_batches_train_as_with_the_data_on_the_device(tmp_path, batch_size, variant):
    """Each rank gathers and copies only its shard (an empty one at batch 4), micro-batches
    and all: bit for bit the job with the data on the device."""
    params = {}
    for where in ("yes", "no"):
        out = tmp_path / where
        out.mkdir()
        job = worker(2, "fit", out, env={"GPUDNN_TEST_BATCH": str(batch_size), "GPUDNN_TEST_VARIANT": variant,
                                         "GPUDNN_TEST_DATA_ON_DEVICE": where})
        assert job.returncode == 0, job.stderr
        params[where] = np.load(out / "params.npy")
        history = json.loads((out / "history.json").read_text())
        history.pop("time")
        params[where + " history"] = history
    np.testing.assert_array_equal(params["yes"], params["no"])
    assert params["yes history"] == params["no history"]


@mpi_job
def test_dropout_over_two_ranks_keeps_the_weights_alike(tmp_path):
    """Masks are drawn per rank; the weights still move only by the all-reduced gradient
    (fit's closing agreement compares them bit for bit, or fails the job)."""
    job = worker(2, "fit", tmp_path, env={"GPUDNN_TEST_VARIANT": "dropout"})
    assert job.returncode == 0, job.stderr
    assert np.isfinite(np.load(tmp_path / "params.npy")).all()


def test_each_rank_draws_its_own_dropout_masks():
    nets = [gpudnn.Network([3, 8, 2], dropout=0.5, backend="numpy", seed=0) for _ in range(3)]
    for rank, net in enumerate(nets):
        rank_dropout_stream(net, rank % 2)
    first = [net._dropout_rng.random(4) for net in nets]
    assert not np.array_equal(first[0], first[1])
    np.testing.assert_array_equal(first[0], first[2])  # seeded: rank 0 is rank 0
    rank_dropout_stream(nets[0], 0)  # made once per network: a second fit goes on with it
    again = nets[0]._dropout_rng.random(4)
    np.testing.assert_array_equal(again, nets[2]._dropout_rng.random(4))
    assert not np.array_equal(again, first[0])


@mpi_job
@pytest.mark.parametrize("scenario,message", [
    ("disagree", f"DistributedError: the 2 ranks disagree at the start of fit on batch_size "
                 f"(rank 0: {BATCH}; rank 1: {BATCH + 1})"),
    ("fail-early", "DistributedError: rank 1 of 2 failed: DataError: "),  # rank 1's data is missing
])
def test_before_training_every_rank_stops_with_the_same_error(tmp_path, scenario, message):
    job = worker(2, scenario, tmp_path)
    assert job.returncode == 3, job.stderr
    assert the_error_of_both_ranks(tmp_path).startswith(message)


@mpi_job
def test_a_rank_that_raises_mid_training_ends_the_job(tmp_path):
    job = worker(2, "raise", tmp_path)  # bounded: a hang fails after JOB_TIMEOUT
    assert job.returncode != 0
    assert "gpudnn: rank 1 of 2 failed (RuntimeError: injected fault on rank 1); aborting" in job.stderr
    assert "Traceback" in job.stderr


@mpi_job
def test_a_gpudnn_error_on_one_rank_mid_training_ends_the_job(tmp_path):
    """Rank 0 alone fails to save the model in a callback (ModelFileError): not an error
    every rank raises, so the job is aborted at once; rank 1 is not left waiting in the
    next all-reduce until the timeout (120 s in the worker, 300 s by default)."""
    job = worker(2, "save-fails", tmp_path)  # bounded: a hang fails after JOB_TIMEOUT
    assert job.returncode != 0
    assert "gpudnn: rank 0 of 2 failed (ModelFileError: " in job.stderr, job.stderr


def _script(tmp_path, body):
    """A job script in tmp_path: ``body`` after a DataParallel dp (timeout 30 s) and a small
    problem X, y; a gpudnn error prints "rank r: Type after s: message" and exits 3."""
    path = tmp_path / "job.py"
    path.write_text(
        "import sys, time\nimport numpy as np\nimport gpudnn\nimport gpudnn.batches as batches\n"
        "from gpudnn.distributed import DataParallel\n"
        "dp = DataParallel(timeout=30)\n"
        "rng = np.random.default_rng(0)\nX = rng.normal(size=(40, 4)); y = rng.integers(0, 2, 40)\n"
        "t0 = time.monotonic()\ntry:\n" + "".join(f"    {line}\n" for line in body.splitlines()) +
        "except gpudnn.GpudnnError as exc:\n"
        "    print(f'rank {dp.rank}: {type(exc).__name__} after {time.monotonic() - t0:.0f} s: {exc}', flush=True)\n"
        "    sys.exit(3)\n")
    return [sys.executable, str(path)]


def _outcomes(job):
    """{rank: (error type, seconds)} of a _script job (the two ranks' lines may interleave)."""
    return {int(r): (kind, int(sec)) for r, kind, sec in re.findall(r"rank (\d): (\w+) after (\d+) s", job.stdout)}


@mpi_job
def test_one_rank_out_of_memory_before_the_first_step_stops_both_at_once(tmp_path):
    """Rank 1 alone cannot hold the training set (two ranks on one GPU, say): its
    OutOfMemoryError reaches rank 0, waiting in the first step's agreement, and both raise
    the same error at once, instead of rank 0 waiting out the timeout in the first
    all-reduce (on a GPU, in NCCL's set-up, which has none)."""
    body = """real = batches.ResidentBatches.from_rows.__func__
def from_rows(cls, net, X, T):
    if dp.rank == 1:
        raise MemoryError("Out of memory allocating 123 bytes")
    return real(cls, net, X, T)
batches.ResidentBatches.from_rows = classmethod(from_rows)
net = gpudnn.Network([4, 8, 2], dtype="float64", backend="numpy", seed=1)
net.fit(X, y, epochs=1, batch_size=8, verbose=0, data_on_device=True, distributed=dp)"""
    job = mpirun((2, _script(tmp_path, body)))
    assert job.returncode == 3 and _outcomes(job) == {0: ("DistributedError", 0), 1: ("DistributedError", 0)}, \
        job.stdout + job.stderr
    assert job.stdout.count("OutOfMemoryError") == 2  # each names rank 1's error


@mpi_job
def test_a_guard_around_one_process_fits_still_stops_every_rank(tmp_path):
    """A sweep: each rank fits a model of its own (no distributed=) inside dp.guard(); rank
    1's diverges. Its TrainingError is its own (not marked raised on every rank), so the
    guard tells rank 0, and both stop at once with the same error."""
    body = """with dp.guard("sweep"):
    net = gpudnn.Network([4, 8, 1], output="identity", dtype="float64", backend="numpy", seed=dp.rank)
    net.fit(X, y * 1e3, epochs=2, batch_size=8, verbose=0,
            optimizer=gpudnn.optim.SGD(lr=1e3 if dp.rank == 1 else 1e-4))"""
    job = mpirun((2, _script(tmp_path, body)))
    assert job.returncode == 3 and _outcomes(job) == {0: ("DistributedError", 0), 1: ("DistributedError", 0)}, \
        job.stdout + job.stderr
    assert job.stdout.count("rank 1 of 2 failed: TrainingError: the training loss became inf") == 2


@mpi_job
@pytest.mark.parametrize("mistake", ["monitor", "optimizer"])
def test_a_mistake_every_rank_makes_is_refused_before_training(tmp_path, mistake):
    """An accuracy monitored on a regressor, an optimizer bound to another network: found
    before training on every rank alike (a clean ConfigError everywhere), not at the first
    epoch's end or step, where an error is taken for one rank's and aborts the job."""
    body = {"monitor": """net = gpudnn.Network([4, 8, 1], output="identity", dtype="float64", backend="numpy", seed=1)
net.fit(X, y * 1.0, epochs=2, batch_size=8, verbose=0, validation_split=0.25, distributed=dp,
        callbacks=[gpudnn.callbacks.EarlyStopping(monitor="val_accuracy")])""",
            "optimizer": """opt = gpudnn.optim.SGD(lr=0.1)
other = gpudnn.Network([4, 8, 2], dtype="float64", backend="numpy", seed=2)
other.fit(X, y, epochs=1, batch_size=8, verbose=0, optimizer=opt)
net = gpudnn.Network([4, 8, 2], dtype="float64", backend="numpy", seed=1)
net.fit(X, y, epochs=1, batch_size=8, verbose=0, optimizer=opt, distributed=dp)"""}[mistake]
    job = mpirun((2, _script(tmp_path, body)))
    assert job.returncode == 3 and "aborting" not in job.stderr, job.stdout + job.stderr
    assert _outcomes(job) == {0: ("ConfigError", 0), 1: ("ConfigError", 0)}, job.stdout


@mpi_job
def test_a_rank_killed_mid_training_ends_the_job(tmp_path):
    job = worker(2, "kill", tmp_path)
    assert job.returncode != 0, job.stdout


def _dataset(path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 4))
    y = (X[:, 0] + X[:, 1] ** 2 > 1).astype(int)
    np.savetxt(path, np.column_stack([X, y]), delimiter=",")
    return path


@mpi_job
def test_cli_two_ranks_write_the_model_one_process_writes(tmp_path):
    data = _dataset(tmp_path / "d.csv")
    args = ["--data", str(data), "--layers", "8", "--epochs", "4", "--batch-size", "25",
            "--dtype", "float64", "--backend", "numpy"]
    gpudnn_cmd = [sys.executable, "-m", "gpudnn.cli", "train"]
    job = mpirun((2, gpudnn_cmd + args + ["--distributed", "--out", str(tmp_path / "two.safetensors")]))
    assert job.returncode == 0, job.stderr
    lines = job.stdout.splitlines()
    assert lines[0] == "distributed: 2 MPI ranks share every batch of 25"
    assert sum(l.startswith("test accuracy:") for l in lines) == 1  # rank 0 alone prints
    assert sum(l.startswith("epoch ") for l in lines) == 4
    one = subprocess.run(gpudnn_cmd + args + ["--out", str(tmp_path / "one.safetensors")],
                         capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert one.returncode == 0, one.stderr
    def scores(text):
        return [l for l in text.splitlines() if l.startswith("test ")]

    assert scores(one.stdout) == scores(job.stdout)  # the same test loss and accuracy
    a, b = (gpudnn.load(tmp_path / f, backend="numpy") for f in ("one.safetensors", "two.safetensors"))
    np.testing.assert_allclose(a.params, b.params, rtol=0, atol=1e-9)


@mpi_job
def test_cli_under_mpiexec_without_distributed_is_warned(tmp_path):
    """``mpiexec -n 2 gpudnn train`` without --distributed trains the whole model in each
    process: each says so on stderr, naming --distributed. It is not refused: a sweep that
    gives each process its own seed and outputs is a legitimate use of the launcher."""
    cmd = [sys.executable, "-m", "gpudnn.cli", "train", "--layers", "4", "--epochs", "1", "--quiet"]
    job = mpirun((2, ["sh", "-c", " ".join(cmd) + f" --seed $PMI_RANK --out {tmp_path}/m$PMI_RANK.safetensors"]))
    assert job.returncode == 0, job.stderr
    # one warning per process (two processes writing one pipe: their lines may interleave)
    warning = "gpudnn train: warning: this process is one of 2 started by an MPI launcher"
    assert job.stderr.count(warning) == 2 and "add --distributed" in job.stderr, job.stderr
    assert (tmp_path / "m0.safetensors").exists() and (tmp_path / "m1.safetensors").exists()


@mpi_job
def test_cli_ranks_with_other_flags_stop_with_one_error_line(tmp_path):
    """An MPMD job gives the two ranks different seeds: both stop, status 2, and rank 0
    alone prints the one-line error naming the difference."""
    data = str(_dataset(tmp_path / "d.csv"))
    cmd = [sys.executable, "-m", "gpudnn.cli", "train", "--distributed", "--data", data,
           "--layers", "4", "--epochs", "1"]
    job = mpirun((1, cmd + ["--seed", "0"]), (1, cmd + ["--seed", "1"]))
    assert job.returncode == 2
    errors = [l for l in job.stderr.splitlines() if "error" in l]
    assert len(errors) == 1, job.stderr
    assert errors[0].startswith("gpudnn train: error: the 2 ranks disagree at the start of fit "
                                "on network seed (rank 0: 0; rank 1: 1)")


def checkpointed(n, tmp_path, variant, kill=None, nan=None):
    """An ``n``-rank job of mpi_worker's checkpoint scenario (resuming from tmp_path/ckpt)."""
    job = worker(n, "checkpoint", tmp_path, env={"GPUDNN_TEST_VARIANT": variant,
                                                 "GPUDNN_TEST_KILL": kill or "",
                                                 "GPUDNN_TEST_NAN": nan or ""})
    assert "forbidden write" not in job.stderr, job.stderr  # only rank 0 touches files
    return job


@mpi_job
@pytest.mark.parametrize("variant,kills", [("sgd", ["1:5"]), ("dropout", ["1:5", "0:3"])])
def test_two_ranks_resumed_after_kills_end_bit_for_bit(tmp_path, variant, kills):
    """Jobs of 2 ranks, each SIGKILLed (a rank killed ends the job) at a step after a
    checkpoint, then resumed by 2 ranks until done, end with exactly the weights and
    history of one uninterrupted 2-rank job (and within 1e-9 of one process, without
    dropout). sgd: momentum, weight decay, validation data; dropout: each rank's own masks,
    with Adam on a cosine schedule, micro-batches, clipping, a validation split and early
    stopping. Rank 1 never writes a file (mpi_worker.forbid_writes)."""
    straight = tmp_path / "straight"
    straight.mkdir()
    assert checkpointed(2, straight, variant).returncode == 0
    for kill in kills:
        job = checkpointed(2, tmp_path, variant, kill)
        assert job.returncode != 0 and not (tmp_path / "params.npy").exists(), job.stderr
    left = tmp_path / "ckpt" / ".checkpoint-000000002.safetensors.99.ab.tmp"
    left.write_bytes(b"cut short by a kill")  # rank 0 cleans it
    job = checkpointed(2, tmp_path, variant)
    assert job.returncode == 0, job.stderr
    params = np.load(tmp_path / "params.npy")
    np.testing.assert_array_equal(params, np.load(straight / "params.npy"))
    assert (tmp_path / "history.json").read_text() == (straight / "history.json").read_text()
    steps = [s for s, _ in list_checkpoints(tmp_path / "ckpt")]
    assert sorted(set(os.listdir(tmp_path / "ckpt")) - {LOCK}) == [f"checkpoint-{s:09d}.safetensors" for s in steps]
    assert len(steps) == 2  # keep_checkpoints
    if variant == "sgd":
        net, X, y, settings = problem(variant=variant)
        net.fit(X, y, **settings)
        np.testing.assert_allclose(params, net.params, rtol=0, atol=1e-9)
    else:  # a damaged checkpoint: the same error on both ranks
        newest = tmp_path / "ckpt" / f"checkpoint-{steps[-1]:09d}.safetensors"
        newest.write_bytes(newest.read_bytes()[:-100])
        job = checkpointed(2, tmp_path, variant)
        assert job.returncode == 3, job.stderr
        assert the_error_of_both_ranks(tmp_path).startswith(f"ModelFileError: {newest}: ")


@mpi_job
def test_a_nan_on_one_rank_stops_every_rank_before_the_checkpoint(tmp_path):
    """Rank 1's loss of its 3rd batch is NaN (rank 0's all finite): at the checkpoint due
    after step 4 both ranks see the summed losses and stop with the same error, naming the
    step and the last good checkpoint (each rank deciding alone, rank 0 would wait in the
    checkpoint's collectives until the timeout)."""
    job = checkpointed(2, tmp_path, "sgd", nan="1:3")
    assert job.returncode == 3, job.stderr
    assert the_error_of_both_ranks(tmp_path).startswith(
        "TrainingError: the training loss became nan at step 3 (epoch 1, batch 3 of 6); training "
        "stopped (the weights are still finite; the last good checkpoint is "
        f"{tmp_path / 'ckpt'}/checkpoint-000000002.safetensors)")
    assert [s for s, _ in list_checkpoints(tmp_path / "ckpt")] == [2]


@mpi_job
def test_a_nan_on_one_rank_stops_every_rank_at_the_epoch_end(tmp_path):
    """Without checkpoints the NaN is found in the epoch's all-reduced losses: the same
    TrainingError on both ranks (raised normally, not an abort of the job)."""
    job = worker(2, "fit", tmp_path, env={"GPUDNN_TEST_NAN": "1:3"})
    assert job.returncode == 3, job.stderr
    assert the_error_of_both_ranks(tmp_path).startswith(
        "TrainingError: the training loss became nan at step 3 (epoch 1, batch 3 of 6)")


@mpi_job
def test_cli_checkpoints_of_two_ranks_resume_only_with_two(tmp_path):
    """The command line: 2 ranks write checkpoints (rank 0 alone prints); a resume by
    ``mpiexec -n 1`` is refused with one error line naming both counts; -n 2 goes on."""
    data = str(_dataset(tmp_path / "d.csv"))
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "gpudnn.cli", "train", "--distributed", "--data", data,
           "--layers", "4", "--checkpoint", str(ckpt), "--resume", "--epochs"]
    job = mpirun((2, cmd + ["2"]))
    assert job.returncode == 0, job.stderr
    assert [s for s, _ in list_checkpoints(ckpt)] == [4, 8]  # 2 epochs of 4 steps
    job = mpirun((1, cmd + ["2"]))
    assert job.returncode == 2
    errors = [l for l in job.stderr.splitlines() if "error" in l]
    assert len(errors) == 1, job.stderr
    assert errors[0].startswith(f"gpudnn train: error: cannot resume from {ckpt}/checkpoint-"
                                "000000008.safetensors: it was written by a run of 2 rank(s), "
                                "this run has 1")
    job = mpirun((2, cmd + ["3"]))
    assert job.returncode == 0, job.stderr
    assert "resuming from" in job.stdout and job.stdout.count("epoch 3") == 1
