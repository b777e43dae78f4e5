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
"""

from __future__ import annotations

import math

from .checks import positive, positive_int
from .errors import ConfigError


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
    """

    def __init__(self, init_scale=2.0**15, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        self.init_scale = positive("init_scale", init_scale)
        self.growth_factor = positive("growth_factor", growth_factor)
        self.backoff_factor = positive("backoff_factor", backoff_factor)
        if self.growth_factor <= 1 or self.backoff_factor >= 1:
            raise ConfigError("growth_factor must be > 1 and backoff_factor < 1")
        self.growth_interval = positive_int("growth_interval", growth_interval)
        self.scale = self.init_scale
        self.growth_tracker = 0
        self.skipped = 0
        self.epoch_skipped = 0

    def __repr__(self):
        return (f"LossScaler(init_scale={self.init_scale!r}, growth_factor={self.growth_factor!r}, "
                f"backoff_factor={self.backoff_factor!r}, growth_interval={self.growth_interval!r})")

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

    def step(self, net, optimizer, clip_norm=None):
        """Check ``net.grads`` (unscaled); finite: clip (``clip_norm``) and ``optimizer.step``;
        not: skip. Then :meth:`update`. Returns whether the step was taken."""
        from .optim import clip_grad_norm

        ok = self.finite(net.grads, net.xp)
        if ok:
            if clip_norm is not None:
                clip_grad_norm(net.grads, clip_norm, net.xp)
            optimizer.step(net.params, net.grads, net.xp, net.segments)
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
