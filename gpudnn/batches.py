"""Where fit's training data lives, and how each batch reaches the network's input buffers.

Letters: N samples, F = n_0 features, n_L outputs, b the columns this process computes of
one batch (b <= ``capacity``), m the columns of one micro-batch.

fit takes its batches from one of two sources, chosen by ``data_on_device`` (see
:func:`on_device`); both fill the workspace's A0: (F, m) and Y: (n_L, m) with the same
values, so a fit trains bit for bit alike from either, and a checkpoint written by one is
resumed by the other.

``ResidentBatches``: the training set on the network's device as columns, XT: (F, N) and
YT: (n_L, N); each micro-batch is gathered on the device, by a device index array, straight
into A0 and Y (``Backend.take_columns``). Nothing crosses the bus during training.

``StreamedBatches``: the training set stays in host memory as rows, X: (N, F) and
T: (N, n_L) in the network's dtype, and batch k goes through slot s = k mod 2:

    1. host      the b rows of the batch gathered into host buffer s: (b, F), (b, n_L)
                 (pinned memory on CuPy: the copy below is a DMA the host does not wait for)
    2. copy      host buffer s -> device buffer s, queued on a copy stream of its own
                 (non-blocking: it never waits for the compute stream unless told to)
    3. compute   each micro-batch's rows transposed from device buffer s into A0: (F, m),
                 Y: (n_L, m), on the compute stream, then the forward and backward passes

fit fetches (1 and 2) batch k+1 right after it has queued batch k's forward and backward
passes (and before the update: mixed precision's update waits for the gradients), so the
host's gather and the copy run while the device computes batch k. The first batch of an
epoch is fetched when the epoch starts (its order is drawn then), unhidden, as the epoch's
end waits for the device anyway. Three events keep the slots apart, and they are the only
waits: never a device-wide synchronize.

    - the compute stream waits for ``copied[s]`` (recorded after the copy into device
      buffer s) before it reads the batch;
    - the copy stream waits for ``read[s]`` (recorded on the compute stream after the last
      read of device buffer s) before it overwrites that buffer two batches later;
    - the host waits for ``copied[s]`` before it gathers into host buffer s again (the DMA
      out of it must be done). That copy was queued two fetches earlier, so the wait is
      short or none; it also keeps the host at most about two batches ahead of the device.
      Everything that copy depends on is already queued: it cannot deadlock.

Why rows on the host and a transpose on the device: the gather picks b random samples.
From rows (N, F) each is one contiguous run of F values (a memcpy per sample; a partial
batch is a contiguous prefix of the buffer, and a micro-batch a contiguous run of rows).
From columns (F, N) it is F·b scattered reads of one value each, every one a cache miss
once the data is larger than the caches — as it is when it does not fit on the device —
each fetching a 64-byte line for 4 or 8 bytes. The transpose, on the device, is a copy of
the batch at device bandwidth, small next to the first layer's GEMM that reads the same
(F, m) block. (Reasoned, not measured on a GPU.)

On NumPy the streamed path runs the same steps with the "device" buffer being the host
buffer (no copy) and every event complete at once: the mode is exercised on the CPU.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError

#: fit's data_on_device values
CHOICES = ("auto", True, False)
#: the share of the device's total memory "auto" leaves free beyond its estimate of what
#: training allocates (cuBLAS workspaces, the pool's rounding, other kernels' temporaries)
HEADROOM = 0.10
#: the largest validation chunk fit scores at once (train._score's batch size)
_SCORE_CHUNK = 4096


def check_data_on_device(value):
    """fit's ``data_on_device``: "auto", True or False (NumPy booleans too); ConfigError
    naming the argument otherwise."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value == "auto":
        return value
    raise ConfigError(
        f"data_on_device must be 'auto', True (the training set on the device) or False "
        f"(batches streamed from host memory), got {value!r}"
    )


def data_bytes(N, n_in, n_out, dtype):
    """Device bytes of a resident training set: XT (n_in, N), YT (n_out, N) and an epoch's
    order (N,) int64."""
    return N * ((n_in + n_out) * np.dtype(dtype).itemsize + 8)


def training_bytes(net, columns, micro_batches, validation=0):
    """An estimate (on the high side) of the device memory a fit allocates besides the data:
    up to 4 parameter-sized buffers (optimizer state, its scratch, the micro-batch
    accumulator) and the workspace for the larger of a micro-batch of ``columns`` and a
    validation chunk (activations, two δ buffers, scratch, dropout masks)."""
    item = np.dtype(net.dtype).itemsize
    m = -(-columns // min(micro_batches, columns))
    width = max(m, min(validation, _SCORE_CHUNK))
    sizes = net.sizes
    per_column = 3 * sum(sizes) + 3 * max(sizes[1:]) + 3 * sizes[-1]
    return item * (4 * net.n_params + width * per_column)


def on_device(setting, backend, need):
    """Whether fit keeps the training set on the device: ``setting`` itself when it is True
    or False; for "auto", True on NumPy (the data is in host memory either way) and, on a
    GPU, True when ``need`` bytes (the data and the estimate of training's own
    allocations) fit in the free device memory with HEADROOM of the total to spare."""
    if setting != "auto":
        return setting
    memory = backend.device_memory()
    if memory is None:
        return True
    free, total = memory
    return need + HEADROOM * total <= free


# --- the training set on the device ----------------------------------------------------------
class ResidentBatches:
    """The training set as device columns XT: (F, N), YT: (n_L, N); a batch is gathered on
    the device from them."""

    on_device = True
    prefetch = False  # nothing to bring ahead of time

    def __init__(self, backend, XT, YT):
        self.backend, self.XT, self.YT = backend, XT, YT

    @classmethod
    def from_rows(cls, net, X, T):
        """From host rows X: (N, F), T: (N, n_L): one copy each to device columns in the
        network's dtype."""
        return cls(net.backend, _device_columns(net, X), _device_columns(net, T))

    def order(self, perm):
        """An epoch's order (N,) (host integers) where batches are gathered by it: the device."""
        return self.backend.asarray(perm)

    def fetch(self, idx):
        """The batch of samples idx: (b,) (a slice of ``order``), ready to load."""
        return _Gathered(self, idx)

    def close(self):
        """Nothing is in flight."""


class _Gathered:
    __slots__ = ("src", "idx", "size")

    def __init__(self, src, idx):
        self.src, self.idx, self.size = src, idx, idx.shape[0]

    def load(self, lo, hi, A0, Y):
        """A0: (F, hi-lo) ← XT[:, idx[lo:hi]], Y: (n_L, hi-lo) ← YT[:, idx[lo:hi]]."""
        sub = self.idx[lo:hi]
        take = self.src.backend.take_columns
        take(self.src.XT, sub, out=A0)
        take(self.src.YT, sub, out=Y)


def _device_columns(net, M):
    """Rows M: (N, k) on the host -> columns (k, N) on the network's device, its dtype."""
    return net.backend.asarray(np.ascontiguousarray(M.T, dtype=net.dtype))


# --- the training set in host memory -----------------------------------------------------------
class StreamedBatches:
    """The training set as host rows X: (N, F), T: (N, n_L); each batch gathered on the
    host and copied to the device through two slots (see the module's docstring).

    ``capacity``: the most columns of one batch this process computes (b <= capacity).
    ``transfers``: the host/device operations (made from ``backend`` when None; the tests
    give a simulated asynchronous one).
    """

    on_device = False
    prefetch = True  # fit fetches batch k+1 while batch k computes

    def __init__(self, backend, X, T, capacity, transfers=None):
        self.X, self.T = X, T
        t = self.transfers = transfers or _transfers(backend)
        dtype = X.dtype
        self.buffers = [
            (t.buffers((capacity, X.shape[1]), dtype), t.buffers((capacity, T.shape[1]), dtype))
            for _ in range(2)
        ]  # per slot: ((host X, device X), (host T, device T))
        self.copied = [t.event(), t.event()]  # per slot: the copy into the device buffer
        self.read = [t.event(), t.event()]  # per slot: the compute stream's last read of it
        self.copying = [False, False]  # copied[s] recorded
        self.reading = [False, False]  # read[s] recorded
        self.slot = 1

    @classmethod
    def from_rows(cls, net, X, T, capacity, transfers=None):
        """From host rows X: (N, F), T: (N, n_L), kept in the network's dtype (X itself when
        it already is C-ordered rows of that dtype: no copy)."""
        X = np.ascontiguousarray(X, dtype=net.dtype)
        T = np.ascontiguousarray(T, dtype=net.dtype)
        return cls(net.backend, X, T, capacity, transfers)

    def order(self, perm):
        """An epoch's order, kept on the host: the host gathers by it."""
        return perm

    def fetch(self, idx):
        """Gather the batch idx: (b,) (host integers, a slice of ``order``) into the next
        slot's host buffers and queue their copy to its device buffers. Returns the batch."""
        b = idx.shape[0]
        if b == 0:  # a rank's empty shard of a short last batch
            return _Streamed(self, None, 0)
        t = self.transfers
        s = self.slot = 1 - self.slot
        (hx, dx), (ht, dt) = self.buffers[s]
        if self.copying[s]:  # the DMA out of host buffer s (two batches ago) is over
            t.host_wait(self.copied[s])
        np.take(self.X, idx, axis=0, out=hx[:b], mode="clip")  # a permutation: in range
        np.take(self.T, idx, axis=0, out=ht[:b], mode="clip")
        after = self.read[s] if self.reading[s] else None  # device buffer s read (two batches ago)
        t.upload(((dx[:b], hx[:b]), (dt[:b], ht[:b])), after, self.copied[s])
        self.copying[s] = True
        return _Streamed(self, s, b)

    def close(self):
        """Wait for copies still in flight (a fit stopped by an exception between fetching a
        batch and reading it), so no buffer is freed while a copy writes to it."""
        self.transfers.drain()


class _Streamed:
    __slots__ = ("src", "slot", "size")

    def __init__(self, src, slot, size):
        self.src, self.slot, self.size = src, slot, size

    def load(self, lo, hi, A0, Y):
        """A0: (F, hi-lo), Y: (n_L, hi-lo) ← rows lo..hi of the batch, transposed, on the
        compute stream once the batch's copy is done. lo = 0 first, hi = size last."""
        src, s = self.src, self.slot
        t = src.transfers
        (_, dx), (_, dt) = src.buffers[s]
        if lo == 0:
            t.device_wait(src.copied[s])
        t.columns(A0, dx[lo:hi])
        t.columns(Y, dt[lo:hi])
        if hi == self.size:  # the last read of device buffer s for this batch
            t.mark(src.read[s])
            src.reading[s] = True


def _transfers(backend):
    return _CudaTransfers(backend) if backend.name == "cupy" else _HostTransfers()


class _HostTransfers:
    """NumPy: the "device" is host memory. A slot's device buffer is its host buffer, so the
    copy is nothing, and every event is complete when recorded."""

    def buffers(self, shape, dtype):
        """(host, device) buffers of ``shape``: here one array."""
        a = np.empty(shape, dtype)
        return a, a

    def event(self):
        return None

    def upload(self, pairs, after, done):
        """Device ← host for each (device, host) pair (the same arrays here)."""

    def host_wait(self, event):
        pass

    def device_wait(self, event):
        pass

    def mark(self, event):
        pass

    def columns(self, out, rows):
        """out: (k, m) ← rows: (m, k) transposed."""
        np.copyto(out, rows.T)

    def drain(self):
        pass


class _CudaTransfers:  # pragma: no cover - needs a GPU (its calls are checked against CuPy's signatures)
    """CuPy: pinned host buffers, a non-blocking copy stream, events without timing.

    The compute stream is CuPy's current stream when each operation is queued (the one the
    network's kernels and GEMMs run on). The copy stream is non-blocking so that it does not
    serialise with the legacy default stream, which the compute stream usually is.
    """

    def __init__(self, backend):
        import cupyx

        self.cupy = backend.xp
        self.cupyx = cupyx
        self.stream = self.cupy.cuda.Stream(non_blocking=True)

    def buffers(self, shape, dtype):
        """(pinned host, device) buffers of ``shape``."""
        return self.cupyx.empty_pinned(shape, dtype=dtype), self.cupy.empty(shape, dtype=dtype)

    def event(self):
        return self.cupy.cuda.Event(disable_timing=True)

    def upload(self, pairs, after, done):
        """On the copy stream: wait for ``after`` (unless None), cudaMemcpyAsync each
        (device, pinned host) pair, record ``done``. Returns at once."""
        if after is not None:
            self.stream.wait_event(after)
        for device, host in pairs:
            device.set(host, stream=self.stream)
        done.record(self.stream)

    def host_wait(self, event):
        """The host waits until the work before ``event`` is done (this event alone)."""
        event.synchronize()

    def device_wait(self, event):
        """The compute stream's later work waits for ``event``; the host does not wait."""
        self.cupy.cuda.get_current_stream().wait_event(event)

    def mark(self, event):
        """Record ``event`` on the compute stream after the work queued so far."""
        event.record(self.cupy.cuda.get_current_stream())

    def columns(self, out, rows):
        """out: (k, m) ← rows: (m, k) transposed, one copy kernel on the compute stream."""
        self.cupy.copyto(out, rows.T)

    def drain(self):
        """The host waits for the copy stream alone."""
        self.stream.synchronize()
