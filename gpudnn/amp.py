"""Mixed precision: float16 compute with float32 master weights and dynamic loss scaling.

``Network(sizes, dtype="float32", precision="float16")`` keeps the master weights and
gradients in ``params`` / ``grads`` (the network's dtype: what ``W``, ``b``, ``dW``, ``db``
view, what the optimizers step, what checkpoints and ``save`` write) and runs the hidden
layers' forward and backward passes in float16 on copies: the weights are cast to float16
at the start of each forward pass, activations and δ are float16. The output layer's
activation, the loss and δ^L are computed in the master dtype (the loss reported is never
scaled nor rounded to float16).

Dynamic loss scaling (Micikevicius et al., "Mixed Precision Training", ICLR 2018; the rule
of ``torch.cuda.amp.GradScaler``): δ^L is multiplied by the scale S before it is cast to
float16, so that small gradients do not flush to zero; after the backward pass the float16
gradients are cast to the master dtype and multiplied by 1/S (S is a power of 2: exact).
If any unscaled gradient is NaN or infinite the step is skipped (weights and optimizer
state untouched) and S ← S · ``backoff_factor``; after ``growth_interval`` consecutive clean
steps S ← S · ``growth_factor``.

Who decides a skip: on NumPy the host (``LossScaler.finite``: a host check costs nothing
there). On CuPy, when the optimizer's fused CUDA update runs (every optimizer of
:mod:`gpudnn.optim` with ``kernels="auto"`` and a constant lr), the device does, with no host
sync in the step: one launch sets a device flag found_inf if any gradient is not finite, the
fused update takes the flag (as PyTorch's fused optimizers take found_inf) and leaves θ and
its state untouched when it is set, and one single-thread launch applies the rule above to
S and the counters kept on the device. The host reads them back only when asked (``fit``
at the end of an epoch and at each checkpoint). S, the counters and the optimizer's step
count are the host rule's, bit for bit, and a skipped step leaves θ and the optimizer's
state bit for bit as they were.
"""

from __future__ import annotations

import math

from .checks import positive, positive_int
from .errors import ConfigError


class _DeviceState:
    """The scaler's numbers on the device, where it decides skips itself (see LossScaler.step).

    state: float64 (4,) = S, growth tracker, skipped, epoch_skipped; scale: (2,) S and 1/S in
    the master dtype (what the passes multiply by); found_inf: int32 (1,), the step's flag.
    """

    def __init__(self, kernels, xp, dtype):
        self.kernels = kernels
        self.dtype = dtype
        self.state = xp.zeros(4, xp.float64)
        self.scale = xp.zeros(2, dtype)
        self.found_inf = xp.zeros(1, xp.int32)


class LossScaler:
    """The dynamic loss scale S of a mixed-precision network (``net.loss_scaler``).

    Parameters
    ----------
    init_scale : float
        S at the start (2**15).
    growth_factor, backoff_factor : float
        S is multiplied by these after ``growth_interval`` clean steps / a skipped step.
    growth_interval : int
        Consecutive steps with finite gradients before S grows.

    Attributes
    ----------
    scale : float            S now.
    growth_tracker : int     clean steps since S last changed.
    skipped : int            steps skipped over the scaler's life.
    epoch_skipped : int      steps skipped in the current epoch of ``fit`` (reset by it).

    Where the optimizer's fused CUDA update runs (a CuPy network, a constant lr: see
    ``Optimizer.skips_on_device``) these numbers live on the device and :meth:`step` never
    waits for it: reading an attribute copies them back (one host sync, when asked: ``fit``
    at the end of an epoch and at a checkpoint), setting one puts the host in charge again
    until the next step.
    """

    def __init__(self, init_scale=2.0**15, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        self.init_scale = positive("init_scale", init_scale)
        self.growth_factor = positive("growth_factor", growth_factor)
        self.backoff_factor = positive("backoff_factor", backoff_factor)
        if self.growth_factor <= 1 or self.backoff_factor >= 1:
            raise ConfigError("growth_factor must be > 1 and backoff_factor < 1")
        self.growth_interval = positive_int("growth_interval", growth_interval)
        self._values = [self.init_scale, 0, 0, 0]  # scale, growth_tracker, skipped, epoch_skipped
        self._dev = None  # _DeviceState, made on the first step the device decides
        self._on_device = False  # the device holds the numbers (the host's may be stale)
        self._fresh = True  # the host's copy equals the device's
        self._checked = False  # found_inf holds the latest unscale's check (see unscale)

    def _field(index, doc):  # noqa: N805 (a property factory, used in the class body)
        def get(self):
            if self._on_device and not self._fresh:
                self._pull()
            return self._values[index]

        def set(self, value):
            if self._on_device:
                if not self._fresh:
                    self._pull()
                self._on_device = False  # the host decides until the next device step
            self._values[index] = value

        return property(get, set, doc=doc)

    scale = _field(0, "S now (a float).")
    growth_tracker = _field(1, "Clean steps since S last changed.")
    skipped = _field(2, "Steps skipped over the scaler's life.")
    epoch_skipped = _field(3, "Steps skipped in the current epoch of fit (reset by it).")
    del _field

    def _pull(self):
        """The device's numbers to the host: one copy, one host sync."""
        s, tracker, skipped, epoch_skipped = self._dev.state.tolist()
        self._values = [s, int(tracker), int(skipped), int(epoch_skipped)]
        self._fresh = True

    def _device(self, xp, grads):
        """The device state for a step the device decides: made on first use, and loaded
        with the host's numbers when the host held them (a launch, no sync)."""
        dev = self._dev
        if dev is None or dev.dtype != grads.dtype:
            from .kernels import cuda_updates

            if dev is not None and self._on_device and not self._fresh:
                self._pull()
            dev = self._dev = _DeviceState(cuda_updates(grads, xp), xp, grads.dtype)
            self._on_device = False
        if not self._on_device:
            dev.kernels.amp_set(dev.state, dev.scale, dev.found_inf, *self._values)  # found_inf ← 0
            self._on_device, self._fresh, self._checked = True, True, False
        return dev

    def __repr__(self):
        return (f"LossScaler(init_scale={self.init_scale!r}, growth_factor={self.growth_factor!r}, "
                f"backoff_factor={self.backoff_factor!r}, growth_interval={self.growth_interval!r})")

    # --- what the passes multiply by -------------------------------------------------------
    def scale_delta(self, delta, out, xp):
        """out ← δ^L · S, cast to out's dtype (float16). delta: (n_L, B) in the master dtype;
        out: (n_L, B). S is the host's float, or the device's copy in the master dtype (the
        same value: a float is rounded to the array's dtype as NumPy and CuPy round it)."""
        s = self._dev.scale[0:1] if self._on_device else self.scale
        xp.multiply(delta, s, out=out, casting="same_kind")

    def unscale(self, grads, grads16, xp, kernels=None):
        """g ← g16 · (1/S): the float16 gradients cast to the master ``grads``: (P,) and
        unscaled (exact for S a power of 2). grads16: (P,) float16.

        Where the device decides skips and a kernel set is given, the same pass checks the
        result (``kernels.unscale``: found_inf, zeroed first, ← 1 if some g is not finite):
        a :meth:`step` told ``checked`` then makes no check of its own."""
        if self._on_device and kernels is not None and kernels.fuses_unscale(grads16, grads):
            dev = self._dev
            dev.found_inf.fill(0)  # this unscale's check alone (a stale flag would skip a step)
            kernels.unscale(grads16, grads, dev.scale[1:2], dev.found_inf)
            self._checked = True
            return
        xp.copyto(grads, grads16, casting="same_kind")
        grads *= self._dev.scale[1:2] if self._on_device else 1.0 / self.scale  # (no host read)

    def check(self, g):
        """Where the latest unscale checked the gradients on the device: ``g``, a part of them
        written after it in the master dtype (the output layer's ∂J/∂b), joins that check (a
        launch over g alone). Otherwise nothing: the step checks them all."""
        if self._checked:
            self._dev.kernels.nonfinite(g.reshape(-1), self._dev.found_inf)

    @staticmethod
    def finite(grads, xp):
        """Whether every entry of ``grads`` is finite (one host sync)."""
        return bool(xp.isfinite(grads).all())

    def update(self, finite):
        """After a step: ``finite`` False (the step was skipped) halves S, else count a clean
        step and grow S after ``growth_interval`` of them. Returns ``finite``."""
        if finite:
            self.growth_tracker += 1
            if self.growth_tracker >= self.growth_interval:
                self.scale *= self.growth_factor
                self.growth_tracker = 0
        else:
            self.scale *= self.backoff_factor
            self.growth_tracker = 0
            self.skipped += 1
            self.epoch_skipped += 1
        return finite

    def step(self, net, optimizer, clip_norm=None, checked=False):
        """Check ``net.grads`` (unscaled); finite: clip (``clip_norm``) and ``optimizer.step``;
        not: skip. Then :meth:`update`. Returns whether the step was taken — or None where
        the device decided it (read ``skipped`` to know). ``checked``: the gradients are as
        :meth:`unscale` left them (no micro-batches summed, no all-reduce since), so the
        check it made on the device stands and none is made here (Network.train_step; fit
        with one micro-batch in one process).

        On the host (NumPy; a generic optimizer or an lr schedule on CuPy): ``finite``, one
        host sync. On a CUDA device with the optimizer's fused update: three launches and no
        sync (two when ``checked``) — ``nonfinite`` sets the device flag found_inf, the fused update leaves θ and
        its state untouched where it is set (the device counts the steps taken: the
        optimizer's t does not advance), and ``amp_update`` applies :meth:`update`'s rule to
        the device's numbers and clears the flag. Clipping then runs on every step (on a
        skipped one it only changes gradients nobody uses).
        """
        from .optim import clip_grad_norm

        xp = net.xp
        if optimizer.skips_on_device(net.params, xp):
            dev = self._device(xp, net.grads)  # (where it loads the host's numbers: _checked False)
            if not (checked and self._checked):  # the gradients as they are now decide
                dev.found_inf.fill(0)
                dev.kernels.nonfinite(net.grads, dev.found_inf)
            self._checked = False  # a check stands for one step
            if clip_norm is not None:
                clip_grad_norm(net.grads, clip_norm, xp)
            optimizer.step(net.params, net.grads, xp, net.segments, found_inf=dev.found_inf)
            dev.kernels.amp_update(dev.state, dev.scale, dev.found_inf, self.growth_factor,
                                   self.backoff_factor, self.growth_interval)
            self._fresh = False
            return None
        self._checked = False
        ok = self.finite(net.grads, xp)
        if ok:
            if clip_norm is not None:
                clip_grad_norm(net.grads, clip_norm, xp)
            optimizer.step(net.params, net.grads, xp, net.segments)
        return self.update(ok)

    def state_dict(self):
        return {"scale": self.scale, "growth_tracker": self.growth_tracker,
                "skipped": self.skipped, "epoch_skipped": self.epoch_skipped,
                "hyperparameters": [self.init_scale, self.growth_factor, self.backoff_factor,
                                    self.growth_interval]}

    def load_state_dict(self, state):
        if not isinstance(state, dict):
            raise ValueError("the loss scaler's state must be an object")
        hyper = [self.init_scale, self.growth_factor, self.backoff_factor, self.growth_interval]
        if state.get("hyperparameters") != hyper:
            raise ValueError(f"the loss scaler's saved hyperparameters {state.get('hyperparameters')} "
                             f"differ from this one's {hyper}")
        scale = state.get("scale")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"loss scale must be a positive finite number, got {scale!r}")
        counts = [state.get(k) for k in ("growth_tracker", "skipped", "epoch_skipped")]
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise ValueError(f"loss scaler counts must be non-negative integers, got {counts}")
        self.scale = float(scale)
        self.growth_tracker, self.skipped, self.epoch_skipped = counts
