"""Training steps replayed from a CUDA graph: one launch per step, for small networks.

A small network's step on a GPU is bound by the host: issuing 64-128-10 @ 256's ~15 kernel
launches and GEMM calls took 0.255 ms of Python and CuPy time while the device was busy for
0.104 ms (H200, ``benchmarks/results/gpu_bench_launch_h200.json``). Captured once as a CUDA
graph, the whole step replays as one launch: 0.105 ms with the loss read back, against
0.356 ms for ``train_step`` (``gpu_bench_graphs_h200.json``).

CuPy refuses cuBLAS calls while a stream is captured, so the captured step routes every
product (W a, δ aᵀ, Wᵀ δ) through the tiled GEMM of :mod:`gpudnn.kernels.cuda_gemm`, which is
as fast as cuBLAS on small layers and 2-3x slower on long thin ones (64 x 65536): use this
for small networks, ``train_step``/``fit`` otherwise.

    step = CapturedStep(net, SGD(lr=0.05, momentum=0.9), batch_size=256)
    for A0, Y in batches:          # (n_0, 256), (n_L, 256) columns, as train_step takes
        step(A0, Y)                # copies the batch in, replays the graph: no host sync
    print(step.loss())             # the last step's mean loss (one host sync)

The graph is captured on a stream of its own and replayed on the current stream (CuPy's
null stream unless you choose another), so steps are ordered with everything else there:
``net.predict`` after a step sees its update.

What a graph holds is fixed when it is captured, so a captured step has its own workspace
(activations, δ, the batch's input buffers), its own kernel scratch and GEMM scratch, and
the optimizer's state buffers, all made before the capture: nothing in it allocates (its
kernel set, ``CupyKernels(capture=True)``, sums the loss into a buffer it keeps, not a new
array each step, which the pool would take back and hand out again while the graph still
writes it); the network's ``params``/``grads`` are its flat buffers as
always (never reallocated). Captured: float32/float64 networks without dropout (the masks'
random draws are not captured), with SGD, Adam, AdamW or RMSprop at a constant learning
rate (each a single fused launch; LARS and LAMB take per-layer norms around theirs). SGD's
and RMSprop's updates do not depend on the step count, which the host advances after each
replay. Adam's bias correction does: the device keeps its count (as for mixed precision's
skipped steps, :mod:`gpudnn.kernels.cuda_optim`), in two slots read in turn, so the step is
captured twice, once per slot, and the replays alternate; ``optimizer.t`` reads the count
back (one host sync). Either way checkpoints and ``optimizer.t`` stay right.

On the NumPy backend (no graphs) a CapturedStep runs the same code directly, step after
step: that is how the CPU tests prove it equals ``train_step`` bit for bit. The capture
itself was measured in the H200 study; this class has not yet run on a GPU.
"""

from __future__ import annotations

import contextlib

from .errors import ConfigError


@contextlib.contextmanager
def _uncounted(opt):
    """What runs inside (a warm-up step, a capture: optimizer.step run on the host) is no
    step taken: the optimizer's count and last_lr are put back after it."""
    t, last_lr = opt.t, opt.last_lr  # (a fresh optimizer may have a count: unbound()'s copy)
    try:
        yield
    finally:
        opt.t, opt.last_lr = t, last_lr


class CapturedStep:
    """One training step of ``net`` with ``optimizer`` on batches of ``batch_size`` columns,
    captured as a CUDA graph (CuPy) and replayed by each call.

    Parameters
    ----------
    net : Network
        float32 or float64, no dropout, no mixed precision or TF32.
    optimizer : gpudnn.optim.SGD, Adam, AdamW or RMSprop
        With a constant learning rate; the network's only optimizer from now on. Its
        hyperparameters (lr, momentum, ...) are captured: a call after one has been set
        anew is refused (make a new CapturedStep for the new value). Its state
        buffers (and Adam's device step count) are where the graph writes: once it has been
        given another state (``load_state_dict``, which makes new buffers) this step is
        refused; make a new CapturedStep.
    batch_size : int
        B, the columns of every batch (a last, smaller batch goes through ``train_step``).
    """

    def __init__(self, net, optimizer, batch_size):
        from .checks import positive_int
        from .network import _Workspace
        from .optim import SGD, Adam, AdamW, RMSprop

        self.B = positive_int("batch_size", batch_size)
        if type(optimizer) not in (SGD, Adam, AdamW, RMSprop):
            raise ConfigError("CapturedStep takes SGD, Adam, AdamW or RMSprop (one fused launch each; LARS "
                              f"and LAMB take per-layer norms around theirs); got {type(optimizer).__name__}")
        if callable(optimizer.lr):
            raise ConfigError("CapturedStep needs a constant learning rate: a graph replays the lr it captured")
        if any(net.dropout):
            raise ConfigError("CapturedStep does not take dropout: the masks' random draws are not captured")
        if net.mixed or net.tf32:
            raise ConfigError("CapturedStep runs float32/float64 passes (no mixed precision, no TF32: its "
                              "products go through the tiled GEMM)")
        self.net, self.optimizer, xp = net, optimizer, net.xp
        self.cupy = net.backend.name == "cupy"
        # Adam's update depends on t: on a GPU the device counts (a never-set skip flag)
        device_count = self.cupy and isinstance(optimizer, Adam)
        if device_count and not optimizer.skips_on_device(net.params, xp):
            raise ConfigError("CapturedStep runs Adam through its fused CUDA update, which keeps the step "
                              "count on the device (kernels='auto'); a graph of the generic passes would "
                              "replay the bias correction of one step forever")
        self._skip = xp.zeros(1, xp.int32) if device_count else None
        if self.cupy:
            from .kernels.cuda import CupyKernels
            from .kernels.cuda_gemm import TiledGemm

            self._kernels, self._matmul = CupyKernels(xp, capture=True), TiledGemm(xp)
            self._stream = xp.cuda.Stream(non_blocking=True)
        else:
            self._kernels, self._matmul, self._stream = net.kernels, net._matmul, None
        self._ws = _Workspace(xp, net.sizes, net.dtype, self.B, net.dropout, inputs=True,
                              compute=net.precision, scratch=self._kernels.needs_scratch(net.dtype),
                              scratch_rows=net._scratch_rows, product_rows=net._product_rows(self._kernels))
        self._v = self._ws.views(self.B)
        self.A0, self.Y = self._v["A"][0], self._v["Y"]  # what every replay reads
        self._total = None  # the 0-d Σ loss the latest step wrote
        self._graphs = {}  # the captured step per count slot read (one, None, if the host counts)
        self._totals = {}  # where each graph writes its Σ loss
        self.steps = 0  # steps taken through this object
        self._warm_up()  # (on NumPy too: the same code, so the CPU tests check the undoing)
        self._state = optimizer.state  # the buffers the graph updates (load_state_dict makes new ones)
        self._hyper = self._hyperparameters()  # the lr, momentum, ... the graph replays
        if self.cupy:
            self._capture()

    # --- the step's device work ---------------------------------------------------------
    def _device_step(self):
        """forward, backward and the SGD update on this step's own buffers; returns the 0-d
        Σ loss. The network's kernels and matmul are this step's own while it runs."""
        net = self.net
        saved = net.kernels, net._matmul
        net.kernels, net._matmul = self._kernels, self._matmul
        try:
            net._forward(self.A0, self._v, train=True)
            total = net._output_and_backward(self.A0, self.Y, self._v)
            self.optimizer.step(net.params, net.grads, net.xp, net.segments, found_inf=self._skip)
        finally:
            net.kernels, net._matmul = saved
        return total

    def _warm_up(self):
        """One direct step on the stream on a batch of zeros, undone (θ, ∂J/∂θ and the
        optimizer's state put back): it compiles the kernels and makes every scratch buffer
        and the optimizer's state, none of which a capture may allocate."""
        net, opt, xp = self.net, self.optimizer, self.net.xp
        params, grads = net.params.copy(), net.grads.copy()
        self.A0.fill(0)  # a batch of zeros, not whatever the new buffers held (inf, NaN)
        self.Y.fill(0)
        # the state's values, put back in place after the step (a fresh optimizer's: zeros)
        saved = {k: v.copy() for k, v in (opt.state or {}).items()}
        with _uncounted(opt):
            if self.cupy:
                xp.cuda.Device().synchronize()  # all queued so far, on any stream (θ, the copies above)
                with self._stream:
                    self._device_step()
                self._stream.synchronize()
            else:
                self._device_step()
        net.params[...] = params
        net.grads[...] = grads
        for k, buf in opt.state.items():  # the buffers the graph will write: kept, refilled
            if k in saved:
                buf[...] = saved[k]
            else:
                buf.fill(0)
        if self.cupy:
            xp.cuda.Device().synchronize()  # the put-back done (on the current stream) before a capture

    def _capture(self):
        opt = self.optimizer
        if self._skip is None:  # the host counts: one graph
            with _uncounted(opt):
                self._graphs[None], self._totals[None] = self._capture_once()
            return
        opt._count_on_device()  # the count's launch (if any) before, not inside, the captures
        self.net.xp.cuda.Device().synchronize()
        for _ in range(2):  # step() reads one slot of the count and takes the other in turn
            parity = opt._parity
            self._graphs[parity], self._totals[parity] = self._capture_once()

    def _capture_once(self):
        """(graph, the 0-d array where each replay writes Σ loss) of one captured step."""
        with self._stream:
            self._stream.begin_capture()
            try:
                total = self._device_step()
            finally:
                graph = self._stream.end_capture()
        return graph, total

    # --- use ----------------------------------------------------------------------------
    def __call__(self, A0, Y):
        """One training step on A0: (n_0, B), Y: (n_L, B): the batch copied into the
        step's input buffers, then the graph replayed (CuPy) or the step run (NumPy). Both
        on the current stream, in order with everything else the program does there; no
        host sync, the loss stays on the device (:meth:`loss`)."""
        net = self.net
        self._check_unchanged()
        A0, Y = net._as_training_batch(A0, Y)  # checked, and on the device in the net's dtype
        if A0.shape[1] != self.B:
            raise ConfigError(f"this CapturedStep takes batches of {self.B} columns, got {A0.shape[1]} "
                              "(take a smaller last batch through net.train_step)")
        xp = net.xp
        xp.copyto(self.A0, A0)
        xp.copyto(self.Y, Y)
        if self.cupy:
            opt = self.optimizer
            if self._skip is None:
                key = None
                opt._count_step()  # the host counts the steps the graph takes
            else:  # the graph of the slot the count is in (put back there first if it was read
                opt._count_on_device()  # back to the host meanwhile: a launch before the replay)
                key = opt._next_parity()
            self._graphs[key].launch(xp.cuda.get_current_stream())
            self._total = self._totals[key]
        else:
            self._total = self._device_step()
        self.steps += 1

    def _hyperparameters(self):
        return {k: getattr(self.optimizer, k) for k in self.optimizer.hyperparameters}

    def _check_unchanged(self):
        """ConfigError if the optimizer is no longer what the graph holds: new state buffers,
        or a hyperparameter set since the capture (refused on NumPy too, where the direct
        step would take it, so that a CPU run finds what a GPU would silently ignore)."""
        if self.optimizer.state is not self._state:
            raise ConfigError("this CapturedStep's optimizer has new state buffers since the step was "
                              "captured (load_state_dict, or a fit resumed from a checkpoint, made them); "
                              "its graph would go on updating the old ones: make a new CapturedStep")
        now = self._hyperparameters()
        if now != self._hyper:
            name = next(k for k in now if now[k] != self._hyper[k])
            raise ConfigError(f"this CapturedStep's optimizer changed {name} from {self._hyper[name]!r} to "
                              f"{now[name]!r} since the step was captured; its graph replays the captured "
                              "value: make a new CapturedStep")

    def loss(self):
        """The mean loss of the latest step, before its update (one host sync); None before
        the first step."""
        return None if not self.steps else float(self._total) / self.B
