"""Where fit's training data lives (gpudnn.batches): on the device, or streamed from host
memory batch by batch. Streaming trains bit for bit as the resident data does; the
asynchronous copies are checked on the CPU against a simulated GPU whose copies run as late
as the events allow, and the CUDA calls against CuPy's own signatures. The CuPy cases run
where there is a GPU."""

import inspect
import sys
import types
import warnings

import numpy as np
import pytest

import gpudnn
from gpudnn import batches
from gpudnn.callbacks import EarlyStopping, LambdaCallback
from gpudnn.errors import ConfigError
from gpudnn.optim import SGD, Adam
from gpudnn.schedules import CosineDecay

from helpers import Crash, crash_at


def problem(kind="classes", N=103, F=6, seed=4):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, F))
    if kind == "classes":
        y = (X[:, 0] > 0).astype(int) + (X[:, 1] + X[:, 2] > 0.5)
        return X, y, [F, 9, 7, 3], {}
    if kind == "binary":
        return X, np.where(X[:, 3] > 0, "yes", "no"), [F, 5, 1], {"output": "sigmoid"}
    y = np.column_stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]])
    return X, y, [F, 8, 2], {"output": "identity", "activation": "tanh"}


# (problem kind, network settings, optimizer, fit settings; callbacks made fresh for each
# run): N = 103 is no multiple of any batch size here, so every epoch ends with a partial batch
CONFIGS = {
    "shuffled": ("classes", {}, lambda: SGD(lr=0.05, momentum=0.9), dict(batch_size=16)),
    "in-order": ("classes", {}, lambda: SGD(lr=0.05), dict(batch_size=16, shuffle=False)),
    "micro-batches": ("classes", {}, lambda: SGD(lr=0.05, momentum=0.9, nesterov=True),
                      dict(batch_size=16, micro_batches=3)),  # 6+6+4, last batch 3+3+1
    "one-batch": ("classes", {}, lambda: SGD(lr=0.1), dict(batch_size=500)),
    "dropout-adam-clip-validation": (
        "classes", {"dropout": 0.3}, lambda: Adam(lr=CosineDecay(0.01, 40)),
        dict(batch_size=10, clip_norm=0.5, validation_split=0.2, standardize=True,
             callbacks=lambda: [EarlyStopping(patience=2)])),
    "binary-labels": ("binary", {}, lambda: SGD(lr=0.1), dict(batch_size=8, micro_batches=2)),
    "regression": ("regression", {}, lambda: Adam(lr=3e-3), dict(batch_size=32)),
    "float16-mixed": ("classes", {"dtype": "float32", "precision": "float16"},
                      lambda: SGD(lr=0.05), dict(batch_size=16, micro_batches=2)),
    "bfloat16-mixed-dropout": ("classes", {"dtype": "float32", "precision": "bfloat16", "dropout": 0.3},
                               lambda: SGD(lr=0.05), dict(batch_size=16, micro_batches=2)),
}


def settings(config):
    """CONFIGS[config], skipped where it needs what is not installed (bfloat16: ml_dtypes)."""
    if CONFIGS[config][1].get("precision") == "bfloat16":
        pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (the test extra installs it)")
    return CONFIGS[config]


def train(config, data_on_device, backend="numpy", epochs=4, **extra):
    kind, net_kw, opt, fit_kw = settings(config)
    X, y, sizes, kw = problem(kind)
    kw = {"dtype": "float64", **kw, **net_kw}
    net = gpudnn.Network(sizes, backend=backend, seed=2, **kw)
    seen = []
    callbacks = [LambdaCallback(on_train_begin=lambda logs: seen.append(logs["data_on_device"]))]
    fit_kw = dict(fit_kw)
    callbacks += fit_kw.pop("callbacks", list)()
    h = net.fit(X, y, epochs=epochs, optimizer=opt(), verbose=0, callbacks=callbacks,
                data_on_device=data_on_device, **fit_kw, **extra)
    return net, h, seen[0]


def without_time(history):
    return {k: v for k, v in history.items() if k != "time"}


def assert_same_training(a, b):
    (net_a, h_a), (net_b, h_b) = a, b
    host = net_a.backend.to_numpy
    np.testing.assert_array_equal(host(net_a.params), host(net_b.params))
    assert without_time(h_a) == without_time(h_b)


@pytest.mark.parametrize("config", CONFIGS)
def test_streamed_trains_bit_for_bit_as_resident(backend, config):
    """The same weights and history, bit for bit: every batch lands in A0 and Y with the
    same values whichever way it came."""
    resident, h_r, where_r = train(config, True, backend)
    streamed, h_s, where_s = train(config, False, backend)
    assert (where_r, where_s) == (True, False)
    assert_same_training((resident, h_r), (streamed, h_s))
    if config == "dropout-adam-clip-validation":
        assert "val_loss" in h_s


# --- resuming across the two modes ------------------------------------------------------------


def train_with(config, data_on_device, epochs, crash=None, **extra):
    """A fresh network and optimizer of ``config`` fitted, crashing at step ``crash``."""
    kind, net_kw, opt, fit_kw = settings(config)
    X, y, sizes, kw = problem(kind)
    net = gpudnn.Network(sizes, backend="numpy", seed=2, **{"dtype": "float64", **kw, **net_kw})
    opt = opt() if crash is None else crash_at(opt(), crash)
    fit_kw = dict(fit_kw, callbacks=fit_kw.get("callbacks", list)())
    h = net.fit(X, y, epochs=epochs, optimizer=opt, verbose=0, data_on_device=data_on_device,
                **fit_kw, **extra)
    return net, h


def test_a_checkpoint_resumes_in_the_other_mode_bit_for_bit(tmp_path):
    """Where the data lives is not part of the configuration: a run checkpointed with the
    data on the device goes on streamed (and back), crashed mid-epoch each time, to the
    weights and history of one straight run."""
    ref = train_with("micro-batches", True, epochs=5)
    for mode, crash in ((True, 9), (False, 8), (True, 13), (False, None)):
        try:
            run = train_with("micro-batches", mode, epochs=5, crash=crash, checkpoint=tmp_path,
                             checkpoint_every=3, resume=True)
        except Crash:
            assert crash is not None
    assert_same_training(ref, run)


# --- the asynchronous copies, simulated --------------------------------------------------------
class Event:
    def __init__(self):
        self.at = 0  # copies queued when it was last recorded on the copy stream


def base(a):
    while a.base is not None:
        a = a.base
    return a


class LazyTransfers:
    """A simulated GPU for StreamedBatches: host and device buffers apart; each queued copy
    runs only when the compute stream reads what it writes, or the host waits for it — as
    late as the events allow — and reads its host buffer then. Compute (NumPy) runs at once.

    It checks the protocol, and raises AssertionError at each hazard: the host rewriting a
    host buffer before it has waited for the copy out of it (on a GPU the compute stream
    having waited proves nothing to the host); the compute stream reading a device buffer
    before it waited for the copy into it; a copy into a device buffer not waiting for the
    compute stream's last read of it."""

    def __init__(self):
        self.pending = []  # (index, device, host, what host held when queued), not yet run
        self.queued = 0  # copies queued so far
        self.host_done = 0  # copies the host has waited for (an event recorded after them)
        self.device_done = 0  # copies the compute stream has waited for
        self.last_from, self.last_into = {}, {}  # id(buffer) -> index of its last copy
        self.reads = {}  # id(device buffer) -> the event marking its last read (None: unmarked)
        self.copies = self.host_waits = self.device_waits = 0

    def buffers(self, shape, dtype):
        return np.full(shape, np.nan, dtype), np.full(shape, np.nan, dtype)

    def event(self):
        return Event()

    def upload(self, pairs, after, done):
        for device, host in pairs:
            D, H = id(base(device)), id(base(host))
            assert self.last_from.get(H, -1) < self.host_done, \
                "the host rewrote a host buffer before waiting for the copy out of it"
            if D in self.reads:
                assert self.reads[D] is not None, "a copy into a device buffer whose read is unmarked"
                assert after is self.reads[D], "a copy into a device buffer not waiting for its last read"
            self.pending.append((self.queued, device, host, host.copy()))
            self.last_from[H] = self.last_into[D] = self.queued
            self.queued += 1
        done.at = self.queued

    def _run(self, upto):
        """Run the copies queued before the upto-th (in order, as one stream does)."""
        while self.pending and self.pending[0][0] < upto:
            _, device, host, then = self.pending.pop(0)
            assert np.array_equal(host, then, equal_nan=True), "a host buffer changed before its copy ran"
            np.copyto(device, host)
            self.copies += 1

    def host_wait(self, event):
        self.host_waits += 1
        self._run(event.at)
        self.host_done = max(self.host_done, event.at)

    def device_wait(self, event):
        self.device_waits += 1  # nothing runs yet: the reads come later on the compute stream
        self.device_done = max(self.device_done, event.at)

    def mark(self, event):
        for key, marked in self.reads.items():
            if marked is None:
                self.reads[key] = event

    def columns(self, out, rows):
        D = id(base(rows))
        assert self.last_into.get(D, -1) < self.device_done, \
            "a device buffer read before the compute stream waited for the copy into it"
        self._run(self.device_done)
        self.reads[D] = None
        np.copyto(out, rows.T)

    def drain(self):
        self._run(self.queued)
        self.host_done = self.queued


@pytest.fixture
def simulated(monkeypatch):
    made = []

    def transfers(backend):
        made.append(LazyTransfers())
        return made[-1]

    monkeypatch.setattr(batches, "_transfers", transfers)
    return made


@pytest.mark.parametrize("config", ["shuffled", "micro-batches", "one-batch", "float16-mixed"])
def test_streaming_through_late_copies_trains_as_resident(simulated, config):
    resident, h_r, _ = train(config, True)
    streamed, h_s, _ = train(config, False)
    assert_same_training((resident, h_r), (streamed, h_s))
    (t,) = simulated
    steps = 4 * -(-103 // min(CONFIGS[config][3]["batch_size"], 103))
    assert t.copies == 2 * steps and t.device_waits == steps and not t.pending


@pytest.mark.parametrize("missing,hazard", [
    ("host_wait", "the host rewrote a host buffer before waiting for the copy out of it"),
    ("device_wait", "a device buffer read before the compute stream waited for the copy"),
])
def test_the_simulation_catches_a_missing_wait(simulated, monkeypatch, missing, hazard):
    """The negative control: without either wait the simulated GPU reports the hazard."""
    monkeypatch.setattr(LazyTransfers, missing, lambda self, event: None)
    with pytest.raises(AssertionError, match=hazard):
        train("shuffled", False)


def test_the_simulation_catches_a_copy_not_waiting_for_the_read(simulated, monkeypatch):
    upload = LazyTransfers.upload
    monkeypatch.setattr(LazyTransfers, "upload", lambda self, pairs, after, done: upload(self, pairs, None, done))
    with pytest.raises(AssertionError, match="not waiting for its last read"):
        train("shuffled", False)


def test_an_exception_mid_epoch_leaves_no_copy_in_flight(simulated):
    """fit stopped between fetching a batch and reading it waits for that copy (close)."""
    with pytest.raises(Crash):
        train_with("shuffled", False, epochs=2, crash=3)
    (t,) = simulated
    assert not t.pending and t.copies == 2 * 4  # batches 1-3 and the one fetched ahead


# --- where "auto" puts the data -------------------------------------------------------------
class Memory:
    def __init__(self, name, memory):
        self.name, self._memory = name, memory

    def device_memory(self):
        return self._memory


@pytest.mark.parametrize("setting,memory,need,expected", [
    (True, (0, 100), 10**9, True),  # asked for: as asked
    (False, (10**12, 10**12), 1, False),
    ("auto", None, 10**15, True),  # NumPy: host memory either way
    ("auto", (1000, 1000), 900, True),  # 900 + 100 (a tenth of the card) <= 1000
    ("auto", (1000, 1000), 901, False),
    ("auto", (500, 80_000), 100, False),  # the tenth of the card is more than what is free
])
def test_auto_keeps_the_data_on_the_device_when_it_fits_with_a_margin(setting, memory, need, expected):
    assert batches.on_device(setting, Memory("cupy", memory), need) is expected


def fake_device(monkeypatch, net, free, total):
    """Make ``net``'s backend report (free, total) bytes of device memory."""
    monkeypatch.setattr(net.backend, "device_memory", lambda: (free, total))


@pytest.mark.parametrize("short,on_device", [(0, True), (1, False)])
def test_fit_auto_streams_when_free_memory_is_too_small(monkeypatch, short, on_device):
    """With a fake memory query (as a GPU would answer it): free memory one byte short of
    the data, training's buffers and a tenth of the card streams, exactly enough keeps the
    data on the device; the training is the same either way."""
    X, y, sizes, _ = problem("classes", N=2000, F=20)
    total = 10**7  # a tenth: exactly 10**6
    results = []
    for setting in ("auto", True):
        net = gpudnn.Network(sizes, backend="numpy", dtype="float64", seed=0)
        need = batches.data_bytes(2000, 20, 3, "float64") + batches.training_bytes(net, 64, 1)
        fake_device(monkeypatch, net, need + total // 10 - short, total)
        seen = []
        h = net.fit(X, y, epochs=2, batch_size=64, verbose=0, data_on_device=setting,
                    callbacks=[LambdaCallback(on_train_begin=lambda logs: seen.append(logs["data_on_device"]))])
        results.append((net, h))
        assert seen == [on_device if setting == "auto" else True]
    assert_same_training(*results)


def test_auto_streams_when_copying_the_data_to_the_device_fails(monkeypatch):
    X, y, sizes, _ = problem()

    def full(cls, net, X, T):
        raise MemoryError("out of memory allocating 123 bytes")

    monkeypatch.setattr(batches.ResidentBatches, "from_rows", classmethod(full))
    net, h, where = train("shuffled", "auto")
    assert where is False
    ref, ref_h, _ = train("shuffled", False)
    assert_same_training((ref, ref_h), (net, h))
    # asked for: the error stands, saying what did not fit and the fix (it was NumPy's or
    # CuPy's bare MemoryError, about an array the user never made)
    with pytest.raises(gpudnn.errors.OutOfMemoryError,
                       match=r"the training set \(\d.* GiB .*\) did not fit .*data_on_device=False.*123 bytes"):
        train("shuffled", True)


def test_training_bytes_count_the_optimizer_state_and_a_workspace():
    net = gpudnn.Network([100, 50, 10], dtype="float32", backend="numpy")
    small = batches.training_bytes(net, 32, 1)
    assert small >= 4 * 4 * net.n_params + 4 * 32 * (100 + 50 + 10)
    assert batches.training_bytes(net, 32, 4) < small  # micro-batches of 8
    assert batches.training_bytes(net, 32, 1, validation=10_000) > small  # 4096-sample chunks


# --- settings ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["yes", "device", "AUTO", 1, 0, None, 1.0, "true"])
def test_bad_data_on_device_is_a_config_error_naming_it(value):
    X, y, sizes, _ = problem()
    net = gpudnn.Network(sizes, backend="numpy")
    with pytest.raises(ConfigError, match=r"data_on_device must be 'auto', True .* or False .*, got"):
        net.fit(X, y, epochs=1, verbose=0, data_on_device=value)


def test_numpy_booleans_are_accepted():
    assert batches.check_data_on_device(np.True_) is True
    assert batches.check_data_on_device(np.bool_(False)) is False


# --- memory ------------------------------------------------------------------------------------
def test_streaming_on_numpy_allocates_no_batch_and_no_copy_of_ready_rows():
    """X already float32 C-ordered rows: streamed, fit keeps X as it is (the resident path
    makes a column copy) and allocates only its two batch buffers, nothing per batch."""
    import tracemalloc

    rng = np.random.default_rng(0)
    X = rng.normal(size=(4096, 1024)).astype(np.float32)  # 16 MiB
    y = rng.integers(0, 10, 4096)
    net = gpudnn.Network([1024, 32, 10], backend="numpy")
    net.fit(X, y, epochs=1, batch_size=512, verbose=0, data_on_device=False)  # workspace made
    tracemalloc.start()
    net.fit(X, y, epochs=1, batch_size=512, verbose=0, data_on_device=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    one_batch = 512 * 1024 * 4  # 2 MiB
    assert peak < 2.5 * one_batch, f"fit allocated {peak} bytes"  # 2 buffers + targets etc.


# --- the CUDA calls, against CuPy's signatures (no GPU needed) --------------------------------
class Pinned(np.ndarray):
    """A host array standing for cupyx.empty_pinned's."""


class DeviceArray(np.ndarray):
    """A "device" array with cupy.ndarray.set's checks (the CuPy 14 source: a NumPy array of
    the same dtype and shape; self C-contiguous), recording each call."""

    calls = []

    def set(self, arr, stream=None):
        assert isinstance(arr, np.ndarray) and arr.dtype == self.dtype and arr.shape == self.shape
        assert self.flags.c_contiguous and arr.flags.c_contiguous  # else a pageable temporary
        DeviceArray.calls.append(("set", isinstance(arr, Pinned), stream))
        np.copyto(self, arr)


def fake_cupy(monkeypatch):
    """Stand-ins for the parts of cupy and cupyx _CudaTransfers uses; each call is bound to
    the real function's signature (inspect), so a wrong name or argument fails here."""
    cupy = pytest.importorskip("cupy")
    cupyx = pytest.importorskip("cupyx")
    calls = DeviceArray.calls = []

    def bound(real, *args, **kwargs):
        return inspect.signature(real).bind(*args, **kwargs).arguments

    class Stream:
        def __init__(self, *args, **kwargs):
            self.args = bound(cupy.cuda.Stream, *args, **kwargs)
            calls.append(("Stream", self.args))

        def wait_event(self, *args, **kwargs):
            event = bound(cupy.cuda.Stream.wait_event, self, *args, **kwargs)["event"]
            assert isinstance(event, Event)
            calls.append(("wait_event", self, event))

        def synchronize(self, *args, **kwargs):
            bound(cupy.cuda.Stream.synchronize, self, *args, **kwargs)
            calls.append(("stream.synchronize", self))

    class Event:
        def __init__(self, *args, **kwargs):
            self.args = bound(cupy.cuda.Event, *args, **kwargs)
            calls.append(("Event", self.args))

        def record(self, *args, **kwargs):
            stream = bound(cupy.cuda.Event.record, self, *args, **kwargs).get("stream")
            assert isinstance(stream, Stream), "record(stream=None) means the current stream: name it"
            calls.append(("record", self, stream))

        def synchronize(self, *args, **kwargs):
            bound(cupy.cuda.Event.synchronize, self, *args, **kwargs)
            calls.append(("event.synchronize", self))

    compute = Stream.__new__(Stream)  # the current stream (not made by the code under test)

    def empty_pinned(*args, **kwargs):
        a = bound(cupyx.empty_pinned, *args, **kwargs)
        return np.empty(a["shape"], a["dtype"]).view(Pinned)

    def empty(shape, dtype=float, order="C"):
        bound(cupy.empty, shape, dtype, order)
        return np.empty(shape, dtype).view(DeviceArray)

    def copyto(*args, **kwargs):
        bound(cupy.copyto, *args, **kwargs)
        calls.append(("copyto",))
        np.copyto(*args, **kwargs)

    def get_current_stream(*args):
        return compute

    fake = types.SimpleNamespace(
        cuda=types.SimpleNamespace(Stream=Stream, Event=Event, get_current_stream=get_current_stream),
        empty=empty, copyto=copyto)
    monkeypatch.setitem(sys.modules, "cupyx", types.SimpleNamespace(empty_pinned=empty_pinned))
    return fake, calls, compute


def test_the_cuda_transfers_call_cupy_as_its_signatures_say(monkeypatch):
    """_CudaTransfers driven through a whole streamed fit with CuPy replaced by recording
    stand-ins: one non-blocking copy stream; every copy from pinned memory on that stream;
    every event recorded on a named stream; the compute stream waits on events; the host
    waits on single events (and the copy stream once, at the end); nothing else."""
    fake, calls, compute = fake_cupy(monkeypatch)
    made = []

    def transfers(backend):
        made.append(batches._CudaTransfers(types.SimpleNamespace(xp=fake)))
        return made[-1]

    monkeypatch.setattr(batches, "_transfers", transfers)
    streamed, h_s, _ = train("micro-batches", False, epochs=2)
    resident, h_r, _ = train("micro-batches", True, epochs=2)
    assert_same_training((resident, h_r), (streamed, h_s))
    (t,) = made
    stream = t.stream
    steps = 2 * -(-103 // 16)
    kinds = [c[0] for c in calls]
    assert kinds.count("Stream") == 1 and calls[0][1] == {"non_blocking": True}
    sets = [c for c in calls if c[0] == "set"]
    assert len(sets) == 2 * steps and all(pinned and s is stream for _, pinned, s in sets)
    records = [c for c in calls if c[0] == "record"]
    assert {s is stream for _, _, s in records} == {True, False}  # copies and reads
    assert sum(s is compute for _, _, s in records) == steps  # a batch's last read
    waits = [c for c in calls if c[0] == "wait_event"]
    assert sum(s is compute for _, s, _ in waits) == steps  # the compute stream, per batch
    assert sum(s is stream for _, s, _ in waits) == steps - 2  # the copy stream, from the 3rd
    assert kinds.count("event.synchronize") == steps - 2  # the host, before reusing a buffer
    assert kinds.count("stream.synchronize") == 1  # close()
    assert [c[1] for c in calls if c[0] == "Event"] == [{"disable_timing": True}] * 4  # 2 slots


# --- on a GPU ---------------------------------------------------------------------------------
def cupy_only(backend):
    if backend.name != "cupy":
        pytest.skip("a CuPy case (the NumPy side is tested above)")


def test_on_a_gpu_streaming_uses_pinned_buffers_and_a_non_blocking_stream(backend):
    cupy_only(backend)
    import cupy

    X, y, sizes, _ = problem()
    net = gpudnn.Network(sizes, backend=backend, dtype="float32")
    from gpudnn.train import encode_targets

    src = batches.StreamedBatches.from_rows(net, X, encode_targets(net, y, fitting=True), 16)
    (hx, dx), (ht, dt) = src.buffers[0]
    assert isinstance(hx.base, cupy.cuda.PinnedMemoryPointer) or isinstance(
        getattr(hx.base, "base", None), cupy.cuda.PinnedMemoryPointer), type(hx.base)
    assert isinstance(dx, cupy.ndarray) and dx.shape == (16, X.shape[1])
    assert src.transfers.stream.is_non_blocking
    src.close()


def test_on_a_gpu_auto_reads_the_free_memory(backend):
    cupy_only(backend)
    free, total = backend.device_memory()
    assert 0 < free <= total
    assert batches.on_device("auto", backend, 1) is True
    assert batches.on_device("auto", backend, total) is False


@pytest.mark.parametrize("data_on_device", [True, False])
def test_on_a_gpu_no_step_synchronises_the_device(backend, data_on_device):
    """No synchronisation CuPy can detect (cupyx.allow_synchronize, which sees ndarray.get
    and the like; not an Event.synchronize) between an epoch's first step and its last."""
    cupy_only(backend)
    import cupyx

    state = {}

    def begin(epoch):
        state["cm"] = cupyx.allow_synchronize(False)
        state["cm"].__enter__()

    def end_of_batch(batch, logs):
        if batch == state["steps"] - 1:
            state.pop("cm").__exit__(None, None, None)

    X, y, sizes, _ = problem(N=640)
    net = gpudnn.Network(sizes, backend=backend, dtype="float32", seed=0)
    hooks = LambdaCallback(on_train_begin=lambda logs: state.update(steps=logs["steps"]),
                           on_epoch_begin=begin, on_batch_end=end_of_batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # allow_synchronize is deprecated (and still works)
        try:
            net.fit(X, y, epochs=2, batch_size=64, verbose=0, callbacks=[hooks],
                    optimizer=SGD(lr=0.05, momentum=0.9), data_on_device=data_on_device)
        finally:  # a DeviceSynchronized mid-epoch must not leave the thread disallowed
            if "cm" in state:
                state.pop("cm").__exit__(None, None, None)
