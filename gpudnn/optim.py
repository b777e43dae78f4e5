"""Update rules over the flat parameter buffer θ and the flat gradient buffer g.

Letters: P = number of parameters; θ, g: (P,) one network's flat buffers; S = number of
segments, the pieces of the flat buffer that are one tensor each (W^0, b^0, W^1, ...:
``Network.segments``); η = the learning rate, t = the step count (1 on the first step).

An optimizer is its hyperparameters, a state made on the first step (buffers shaped like
θ, plus scratch buffers so that a step allocates nothing of size P) and one update rule
applied to the whole flat buffer at once: one pass over every parameter of every layer, no
per-layer Python loop. LARS and LAMB alone also loop over the S segments, to reduce each
to a norm and scale it by its trust ratio (2S small sums and S scalings per step).

    SGD       Sutskever et al. 2013            momentum, Nesterov, L2 weight decay
    Adam      Kingma & Ba 2015                 L2 (or decoupled) weight decay
    AdamW     Loshchilov & Hutter 2019         Adam with decoupled weight decay
    RMSprop   Tieleman & Hinton 2012           momentum, centered (Graves 2013)
    LARS      You, Gitman & Ginsburg 2017      layer-wise trust ratio on SGD with momentum
    LAMB      You et al. 2020                  layer-wise trust ratio on Adam

Keyword names and defaults are PyTorch's but SGD's lr default (0.01, as Keras) (``lr``, ``momentum``, ``nesterov``,
``weight_decay``, ``betas``, ``eps``, ``alpha``, ``centered``); LARS and LAMB, which
PyTorch lacks, take their papers' defaults. ``lr`` may be a number or a
schedule (:mod:`gpudnn.schedules`), evaluated once per step at the 0-based step index t − 1.
``clip_grad_norm`` rescales g to a maximum global norm before a step.

Kernels: ``kernels="auto"`` (the default) runs each rule as one fused launch over the flat
buffer on a CUDA device (:mod:`gpudnn.kernels.cuda_optim`; LARS and LAMB keep their
per-segment norms as generic passes around the fused part) and plain SGD as one Numba pass on
the CPU when Numba is installed; ``kernels="generic"`` forces the ``xp`` passes written
here (their twin, which the tests compare them with). On a CUDA device an optimizer also
takes a mixed-precision step whose skipping is decided on the device
(``step(..., found_inf=flag)``, see :mod:`gpudnn.amp`): the device then counts the steps
taken, and ``t`` (and ``last_lr``) read the count back only when asked.

Checkpoints: ``state_dict()`` gives the step count, the hyperparameters, the schedule's
state and every state buffer; ``load_state_dict`` restores them so that training continues
bit for bit as if it had never stopped.
"""

from __future__ import annotations

import copy
import math

from .checks import number
from .errors import ConfigError, allocating
from .kernels import cuda_updates, fused_sgd


def _check_number(name, value, *, low=0.0, low_open=False, high=None):
    """A finite number with ``low <= value`` (``<`` when low_open) and ``value < high``."""
    return number(name, value, low=low, low_open=low_open, high=high)


def _check_lr(lr):
    """A positive number, or a schedule: anything callable as ``lr(t) -> float``."""
    return lr if callable(lr) else _check_number("lr", lr, low_open=True)


def _check_betas(betas):
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise ConfigError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
    return (_check_number("betas[0]", b1, high=1.0), _check_number("betas[1]", b2, high=1.0))


def _check_segments(segments, size):
    """Segments as a tuple of (start, stop) that tile [0, size) in order; None = one segment."""
    if segments is None:
        return ((0, size),)
    segments = tuple((int(a), int(b)) for a, b in segments)
    ends = [0] + [b for _, b in segments]
    if [a for a, _ in segments] != ends[:-1] or ends[-1] != size or any(a >= b for a, b in segments):
        raise ConfigError(
            f"segments must tile the flat buffer [0, {size}) in order with no gaps; got {segments}"
        )
    return segments


def clip_grad_norm(grads, max_norm, xp):
    """Rescale g so that its global norm is at most ``max_norm``; returns ‖g‖ before clipping.

    Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks"
    (ICML 2013), as ``torch.nn.utils.clip_grad_norm_``:

        g ← g · min(1, c / (‖g‖₂ + 10⁻⁶))          (c = max_norm)

    grads: (P,), changed in place. The norm and the factor stay on the device (0-d arrays):
    no host synchronisation.
    """
    max_norm = _check_number("max_norm", max_norm, low_open=True)
    norm = xp.sqrt(xp.dot(grads, grads))
    grads *= xp.minimum(max_norm / (norm + 1e-6), 1.0)
    return norm


def _l2(grads, params, weight_decay, out, xp):
    """g + λ θ in ``out`` (coupled weight decay, the gradient of λ/2 ‖θ‖²); ``grads``
    itself when λ = 0. grads, params, out: (P,)."""
    if not weight_decay:
        return grads
    xp.multiply(params, weight_decay, out=out)
    out += grads
    return out


def _ema(avg, x, decay, tmp, xp):
    """avg ← decay · avg + (1 − decay) · x in place (an exponential moving average).
    avg, x, tmp: (P,); tmp is scratch and may be x itself."""
    avg *= decay
    xp.multiply(x, 1.0 - decay, out=tmp)
    avg += tmp


def _check_kernels(kernels):
    if kernels not in ("auto", "generic"):
        raise ConfigError(f"kernels must be 'auto' or 'generic', got {kernels!r}")
    return kernels


class Optimizer:
    """Base class: ``step(params, grads, xp, segments=None)`` updates ``params`` in place.

    Subclasses name their ``hyperparameters`` (saved by ``state_dict``, shown by repr), how
    many (P,) ``scratch`` buffers a step needs (``n_scratch``; ``n_scratch_fused`` with the
    fused CUDA update), and implement ``_init_state(params, xp)`` (the persistent buffers),
    ``_update(params, grads, xp, lr)`` (the generic passes) and ``_fused_update(params,
    grads, xp, lr, skip, parity)`` (the CUDA launch, ``self._cuda``; see :meth:`step`).

    kernels: ``"auto"`` (fused where a fused update runs: CUDA on a CUDA device, and for plain
    SGD Numba on the CPU) or ``"generic"`` (the ``xp`` passes, the fused ones' twin).
    """

    hyperparameters = ("lr",)
    n_scratch = 1
    n_scratch_fused = 0

    def __init__(self, lr, kernels="auto"):
        self.lr = _check_lr(lr)
        self.kernels = _check_kernels(kernels)
        self._t = 0  # steps taken (while the host counts them; see the t property)
        self._last_lr = None
        self._unbind()

    def _unbind(self):
        """Bound to no parameter buffer: no state, scratch or device bookkeeping (the first
        step, or load_state_dict, makes them for its buffer)."""
        self.state = None  # {name: array (P,)}, made on the first step
        self._size = None
        self._params = None
        self._scratch = ()
        self.segments = None  # ((start, stop), ...) of the tensors, set on the first step
        self._segments_given = None
        self._cuda = None  # the fused CUDA updates, on a CUDA device (made on the first step)
        # steps whose skipping the device decides (mixed precision): the device counts them in
        # _t_dev (int64 (2,), read from slot _parity; see kernels/cuda_optim.py), under one
        # constant lr _dev_lr that started when _dev_t0 steps had been taken
        self._t_dev = None
        self._parity = 0
        self._t_on_device = False
        self._dev_lr = None
        self._dev_t0 = 0
        self._no_skip = None  # int32 (1,) zero: the skip flag of a step the host decided

    def unbound(self):
        """A copy with this optimizer's hyperparameters (and schedule), step count and last
        lr, bound to no parameter buffer: what travels beside a ``state_dict`` when a trainer
        is pickled or copied (the buffers belong to the network, which a copy rebuilds)."""
        c = copy.copy(self)
        c._t, c._last_lr = self.t, self.last_lr  # (read back from the device, where counted)
        c._unbind()
        return c

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.hyperparameters)
        return f"{type(self).__name__}({args})"

    # --- the step count t and last_lr: on the host, or counted on the device ----------
    @property
    def t(self):
        """The number of steps taken (skipped mixed-precision steps do not count). After
        steps whose skipping the device decided it is read from the device: one host sync,
        only when asked."""
        if self._t_on_device:
            return int(self._t_dev[self._parity])
        return self._t

    @t.setter
    def t(self, value):
        self._settle()
        self._t = int(value)

    @property
    def last_lr(self):
        """The learning rate of the latest step taken (None before the first)."""
        if self._dev_lr is not None and self.t > self._dev_t0:
            return self._dev_lr
        return self._last_lr

    @last_lr.setter
    def last_lr(self, value):
        self._settle()
        self._last_lr = value

    def _settle(self):
        """Bring the device's step count back to the host (one host sync, when there is one)
        and with it last_lr; the host counts again from here."""
        if self._t_on_device:
            self._t = int(self._t_dev[self._parity])
            self._t_on_device = False
        if self._dev_lr is not None:
            if self._t > self._dev_t0:
                self._last_lr = self._dev_lr
            self._dev_lr = None

    def _count_step(self):
        """One step taken, on the host's count: t and last_lr advance (a graph's replay
        counts its step here too: graphs.CapturedStep)."""
        self.t += 1
        self.last_lr = self.lr_at(self.t - 1)

    def lr_at(self, t):
        """The learning rate of the step with 0-based index t (a number or the schedule's)."""
        return float(self.lr(t)) if callable(self.lr) else self.lr

    def skips_on_device(self, params, xp):
        """Whether ``step(..., found_inf=flag)`` can leave the decision to skip to the device:
        the fused CUDA update runs for ``params`` and lr is a number. (A schedule is
        evaluated on the host at the count of steps taken, so the host must know of every
        skip: mixed precision then checks the gradients on the host.)"""
        if callable(self.lr) or self.kernels != "auto":
            return False
        if self.state is not None and params is self._params:
            return self._cuda is not None
        return cuda_updates(params, xp) is not None

    def step(self, params, grads, xp, segments=None, found_inf=None):
        """θ ← update(θ, g). params, grads: (P,) flat buffers of one network.

        segments: the (start, stop) of each tensor in the flat buffer (``net.segments``);
        only LARS and LAMB use them. None treats the whole buffer as one tensor.

        found_inf: a device flag, int32 (1,) (mixed precision: :mod:`gpudnn.amp`), or None.
        When given, the step is taken on the device only if the flag is 0 — θ and the state
        stay bit for bit as they were otherwise, and the device counts the steps taken (t
        does not advance on a skipped one). Needs :meth:`skips_on_device`; the flag is read,
        not cleared.
        """
        if self.state is None:
            self._start(params, xp, segments)
        else:
            self.check_params(params)
            if segments is not None and segments is not self._segments_given:
                self._set_segments(segments, xp)
        if grads.shape != params.shape:  # (a fused loop would read past a short one)
            raise ConfigError(f"gradients of shape {grads.shape} for parameters of shape {params.shape}")
        if self._cuda is not None and (grads.dtype != params.dtype or not grads.flags.c_contiguous):
            grads = self._kernel_gradients(params, grads, xp)
        if found_inf is None:
            self._count_step()
            if self._cuda is None:
                self._update(params, grads, xp, self.last_lr)
            else:
                self._fused_update(params, grads, xp, self.last_lr, self._no_skip, -1)
            return
        if self._cuda is None or callable(self.lr):
            raise ConfigError(
                f"{type(self).__name__}.step(found_inf=...) needs the fused CUDA update and a "
                "constant lr (see skips_on_device)"
            )
        self._count_on_device()
        self._fused_update(params, grads, xp, self.lr, found_inf, self._next_parity())

    def check_params(self, params):
        """ConfigError when this optimizer holds the state of another network's parameters
        than ``params``: (P,) (``step`` asks every step; ``fit`` before training, so that the
        ranks of a distributed fit refuse it alike)."""
        if self.state is not None and params is not self._params:
            raise ConfigError(
                f"this {type(self).__name__} holds the state (step count, buffers) of another "
                f"network's parameters ({self._size:,} of them); a loaded, copied or rebuilt "
                "network has parameter buffers of its own: make a new optimizer for it (a "
                "checkpoint carries the optimizer's state over: gpudnn.checkpoint)"
            )

    def _count_on_device(self):
        """Before a step whose count the device keeps: the host's count onto the device (one
        launch, no sync) unless it is there already, under the current constant lr. A
        captured step (gpudnn.graphs) calls it outside its capture, so no capture holds the
        launch."""
        if self._dev_lr is None or self._dev_lr != self.lr:  # a new run of device-counted steps
            self._settle()  # (a host sync only when lr changed in the middle of one)
            self._dev_lr, self._dev_t0 = self.lr, self._t
        if not self._t_on_device:
            self._t_dev.fill(self._t)
            self._parity = 0
            self._t_on_device = True

    def _next_parity(self):
        """The slot of _t_dev that this device-counted step reads; its count goes to the other,
        which the next step reads."""
        parity = self._parity
        self._parity ^= 1
        return parity

    def _kernel_gradients(self, params, grads, xp):
        """grads (params' shape) as the fused kernels read them: params' dtype and C order (a
        copy where they differ; the flat buffers of a network never do)."""
        return xp.ascontiguousarray(grads, dtype=params.dtype)

    def _start(self, params, xp, segments):
        self._settle()
        self._params = params  # the buffer this state belongs to (one optimizer per network)
        self._size = params.size
        self._cuda = cuda_updates(params, xp) if self.kernels == "auto" else None
        if self._cuda is not None:
            self._t_dev = xp.zeros(2, xp.int64)
            self._no_skip = xp.zeros(1, xp.int32)
        self._scratch, self.state = (), None  # (until made: a failed allocation leaves none)
        with allocating(f"{type(self).__name__}'s state buffers (one per parameter each: {params.size:,}, "
                        f"about {params.nbytes / 2**30:.3g} GiB a buffer) could not be allocated"):
            self._scratch = tuple(xp.zeros_like(params) for _ in range(self._n_scratch()))
            self._set_segments(segments, xp)
            self.state = self._init_state(params, xp)

    def _n_scratch(self):
        """How many (P,) scratch buffers the chosen update needs."""
        return self.n_scratch_fused if self._cuda is not None else self.n_scratch

    def _set_segments(self, segments, xp):
        self._segments_given = segments
        self.segments = _check_segments(segments, self._size)

    def _init_state(self, params, xp):
        return {}

    def _fused_update(self, params, grads, xp, lr, skip, parity):
        """The step as the fused CUDA launch(es): skip: int32 (1,); parity: the slot of the
        device's step count (−1: the host counts; see :mod:`gpudnn.kernels.cuda_optim`)."""
        raise NotImplementedError

    # --- checkpoints: everything a bit-exact resume needs -----------------------------
    def state_dict(self):
        """{"type", "t", "hyper": {name: value}, "schedule": (the lr schedule's state_dict,
        when lr is one), "buffers": {name: array (P,)}} — the step count, hyperparameters
        and every state buffer (not the scratch), as they are on the device (not copies)."""
        d = {"type": type(self).__name__, "t": self.t, "hyper": {}, "buffers": dict(self.state or {})}
        for k in self.hyperparameters:
            if k == "lr" and callable(self.lr):
                if hasattr(self.lr, "state_dict"):
                    d["schedule"] = self.lr.state_dict()
            else:
                d["hyper"][k] = getattr(self, k)
        return d

    def load_state_dict(self, d, params, xp, segments=None):
        """Restore what ``state_dict`` gave, for the flat buffer ``params``: (P,).

        The hyperparameters and the schedule's state are restored too (as PyTorch does),
        the hyperparameters first, so that the state buffers are those they need (momentum's
        v, centered RMSprop's average); ``segments`` as in ``step``. All or nothing: a state
        that does not fit (ConfigError) leaves the optimizer as it was.
        """
        if d.get("type") != type(self).__name__:
            raise ConfigError(f"optimizer state is for {d.get('type')}, not {type(self).__name__}")
        if ("schedule" in d) != (callable(self.lr) and hasattr(self.lr, "state_dict")):
            raise ConfigError("optimizer state and this optimizer disagree on whether lr is a schedule")
        unknown = [k for k in d.get("hyper", {}) if k not in self.hyperparameters]
        if unknown:
            raise ConfigError(f"unknown hyperparameter {unknown[0]!r} for {type(self).__name__}")
        before = dict(self.__dict__)  # (the buffers are made anew: the old ones stay as they are)
        try:
            for k, v in d.get("hyper", {}).items():
                setattr(self, k, tuple(v) if isinstance(v, list) else v)
            self._start(params, xp, segments)
            if d["buffers"] and set(d["buffers"]) != set(self.state):  # none: before any step
                raise ConfigError(f"optimizer state buffers {sorted(d['buffers'])} are not this "
                                  f"{type(self).__name__}'s {sorted(self.state)}")
            for k, v in d["buffers"].items():
                if self.state[k].shape != tuple(v.shape):
                    raise ConfigError(f"optimizer state buffer {k!r} does not fit this network")
                self.state[k][...] = xp.asarray(v)
            t = int(d["t"])
        except Exception:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise
        if "schedule" in d:
            self.lr.load_state_dict(d["schedule"])
        self.t = t


# --- per-segment norms and trust ratios (LARS, LAMB) -----------------------------------
class _TrustRatio:
    """Per-segment trust ratios r_s = c ‖θ_s‖ / (‖u_s‖ + β ‖θ_s‖), 1 where a norm is 0.

    Buffers of length S made once; ``scale(u)`` multiplies each segment of u: (P,) by its
    ratio in place. ``sq`` is a (P,) scratch buffer for the squares.
    """

    def __init__(self, segments, xp, dtype):
        S = len(segments)
        self.segments = segments
        self.theta_norm = xp.empty(S, dtype)
        self.u_norm = xp.empty(S, dtype)
        self.ratio = xp.empty(S, dtype)
        self.zero = xp.empty(S, bool)
        self.zero_u = xp.empty(S, bool)

    def _norms(self, x, sq, out, xp):
        """out[s] = ‖x_s‖₂ for every segment: x, sq: (P,), out: (S,)."""
        xp.multiply(x, x, out=sq)
        for s, (a, b) in enumerate(self.segments):
            sq[a:b].sum(keepdims=True, out=out[s : s + 1])
        xp.sqrt(out, out=out)

    def scale(self, u, params, sq, xp, coefficient=1.0, decay=0.0, norm_of=None):
        """u_s ← r_s u_s with r_s = c ‖θ_s‖ / (‖n_s‖ + β ‖θ_s‖) (n = ``norm_of``, default u).

        u, params, sq: (P,); c = ``coefficient``, β = ``decay``. r_s = 1 where ‖θ_s‖ or
        ‖n_s‖ is 0 (a fresh zero bias, a zero gradient), as every implementation does.
        """
        wn, un, r, zero = self.theta_norm, self.u_norm, self.ratio, self.zero
        self._norms(params, sq, wn, xp)
        self._norms(u if norm_of is None else norm_of, sq, un, xp)
        xp.equal(wn, 0.0, out=zero)
        xp.equal(un, 0.0, out=self.zero_u)
        zero |= self.zero_u
        if decay:
            xp.multiply(wn, decay, out=r)
            un += r
        un += zero  # no division by zero where the ratio is replaced by 1 anyway
        xp.divide(wn, un, out=r)
        if coefficient != 1.0:
            r *= coefficient
        xp.copyto(r, 1.0, where=zero)
        for s, (a, b) in enumerate(self.segments):
            u[a:b] *= r[s : s + 1]


class _LayerwiseTrust:
    """Mixin of LARS and LAMB: a per-segment trust ratio, remade when the segments change."""

    def _set_segments(self, segments, xp):
        super()._set_segments(segments, xp)
        self._trust = _TrustRatio(self.segments, xp, self._scratch[0].dtype)

    def _unbind(self):
        super()._unbind()
        self._trust = None  # (its buffers are the bound network's segments')


# --- SGD and LARS -----------------------------------------------------------------------
class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 decay.

    Same rule and keyword names as ``torch.optim.SGD`` (dampening 0), after Sutskever et al.,
    "On the importance of initialization and momentum in deep learning" (ICML 2013):

        g ← g + λ θ                          (weight_decay λ)
        v ← μ v + g                          (momentum μ; v starts at 0)
        g ← g + μ v  if nesterov  else  v
        θ ← θ − η g                          (lr η)

    Fused (``kernels="auto"``): one CUDA launch on a CUDA device, one Numba pass on the CPU
    when Numba is installed; neither needs a scratch buffer.
    """

    hyperparameters = ("lr", "momentum", "nesterov", "weight_decay")

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, kernels="auto"):
        super().__init__(lr, kernels)
        self.momentum = _check_number("momentum", momentum, high=1.0)
        self.weight_decay = _check_number("weight_decay", weight_decay)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0.0:
            raise ConfigError("nesterov=True needs momentum > 0")

    def _unbind(self):
        super()._unbind()
        self._fused = None  # Numba's one-pass SGD on the CPU (made by the first step)

    def _start(self, params, xp, segments):
        # plain SGD (not LARS) on the CPU with Numba: one pass and no scratch buffer of size P
        self._fused = fused_sgd(params) if self.kernels == "auto" and type(self) is SGD else None
        super()._start(params, xp, segments)

    def _n_scratch(self):
        return 0 if self._fused is not None else super()._n_scratch()

    def _init_state(self, params, xp):
        return {"v": xp.zeros_like(params)} if self.momentum else {}

    def _gradient(self, params, grads, xp):
        """The g to follow: grads itself, or g + λθ in scratch[0]. params, grads: (P,)."""
        return _l2(grads, params, self.weight_decay, self._scratch[0], xp)

    def _update(self, params, grads, xp, lr):
        if self._fused is not None:
            v = self.state["v"] if self.momentum else params[:0]
            self._fused(params, grads, v, lr, self.momentum, self.weight_decay, self.nesterov)
            return
        s = self._scratch[0]
        g = self._gradient(params, grads, xp)
        if self.momentum:
            v = self.state["v"]
            v *= self.momentum
            v += g
            if self.nesterov:  # θ −= η g + η μ v, in two passes with no temporary
                xp.multiply(g, lr, out=s)
                params -= s
                xp.multiply(v, lr * self.momentum, out=s)
                params -= s
                return
            g = v
        xp.multiply(g, lr, out=s)
        params -= s

    def _fused_update(self, params, grads, xp, lr, skip, parity):
        v = self.state["v"] if self.momentum else params[:0]
        self._cuda.sgd(params, grads, v, lr, self.momentum, self.weight_decay, self.nesterov,
                       skip, self._t_dev, parity)


class LARS(_LayerwiseTrust, SGD):
    """Layer-wise Adaptive Rate Scaling: SGD whose step for each tensor is scaled by its
    trust ratio. You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks"
    (arXiv:1708.03888, 2017), Algorithm 1; for every segment s (one weight matrix or bias):

        r_s = c ‖θ_s‖ / (‖g_s‖ + λ ‖θ_s‖)    (trust_coefficient c; r_s = 1 if a norm is 0)
        g_s ← r_s (g_s + λ θ_s)              (weight_decay λ)
        v ← μ v + g                          (momentum μ; v starts at 0)
        θ ← θ − η v                          (lr η)

    The paper writes v ← μ v + η r (g + λθ), θ ← θ − v: the same steps for a constant η. Here
    η multiplies v at the step, as in PyTorch's SGD and the common LARS implementations.
    Nesterov momentum as in :class:`SGD`. Segments come from ``step(..., segments)``.

    Fused on a CUDA device: r_s (g_s + λ θ_s) stays the generic per-segment passes (2S small
    sums, S scalings), then momentum and the step are SGD's one launch (with λ = 0).
    """

    hyperparameters = ("lr", "momentum", "nesterov", "weight_decay", "trust_coefficient")
    n_scratch = 2
    n_scratch_fused = 2

    def __init__(self, lr=1.0, momentum=0.9, nesterov=False, weight_decay=0.0, trust_coefficient=0.001,
                 kernels="auto"):
        super().__init__(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                         kernels=kernels)
        self.trust_coefficient = _check_number("trust_coefficient", trust_coefficient, low_open=True)

    def _gradient(self, params, grads, xp):
        s, sq = self._scratch
        if _l2(grads, params, self.weight_decay, s, xp) is grads:
            xp.copyto(s, grads)  # scaled in place below: not the caller's gradients
        self._trust.scale(s, params, sq, xp, self.trust_coefficient, self.weight_decay, norm_of=grads)
        return s

    def _fused_update(self, params, grads, xp, lr, skip, parity):
        g = self._gradient(params, grads, xp)  # r_s (g_s + λ θ_s): scratch, θ untouched
        v = self.state["v"] if self.momentum else params[:0]
        self._cuda.sgd(params, g, v, lr, self.momentum, 0.0, self.nesterov, skip, self._t_dev, parity)


# --- Adam, AdamW and LAMB ---------------------------------------------------------------
class Adam(Optimizer):
    """Adam: Kingma & Ba, "Adam: A Method for Stochastic Optimization" (ICLR 2015),
    Algorithm 1, with PyTorch's keyword names and defaults:

        g ← g + λ θ                                     (weight_decay λ, L2: the default)
        m ← β₁ m + (1 − β₁) g                           (betas (β₁, β₂); m, v start at 0)
        v ← β₂ v + (1 − β₂) g²
        m̂ = m / (1 − β₁ᵗ),   v̂ = v / (1 − β₂ᵗ)
        θ ← θ − η m̂ / (√v̂ + ε)                          (lr η, eps ε)

    With ``decoupled_weight_decay=True`` the decay is Loshchilov & Hutter's instead
    (see :class:`AdamW`): θ ← θ (1 − η λ) before the step, and g is left alone.

    Computed as θ ← θ − η (m / (√v c₂ + ε)) c₁ with c₁ = 1/(1 − β₁ᵗ), c₂ = 1/√(1 − β₂ᵗ) (the
    same value). Fused on a CUDA device: one launch, no scratch (the twin: 15-17 passes, two
    (P,) scratch buffers); c₁, c₂ are kernel scalars, or computed on the device from its
    step count when it decides the skipping of mixed-precision steps.
    """

    hyperparameters = ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay")
    n_scratch = 2

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, kernels="auto"):
        super().__init__(lr, kernels)
        self.betas = _check_betas(betas)
        self.eps = _check_number("eps", eps)
        self.weight_decay = _check_number("weight_decay", weight_decay)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)

    def _init_state(self, params, xp):
        return {"m": xp.zeros_like(params), "v": xp.zeros_like(params)}

    def _direction(self, g, xp):
        """Update m, v with g: (P,) and return m̂ / (√v̂ + ε) in scratch[0] (g may be it)."""
        s1, s2 = self._scratch
        (b1, b2), m, v = self.betas, self.state["m"], self.state["v"]
        _ema(m, g, b1, s2, xp)
        xp.multiply(g, g, out=s2)
        _ema(v, s2, b2, s2, xp)
        xp.sqrt(v, out=s2)  # √v̂ + ε = √v / √(1 − β₂ᵗ) + ε
        s2 *= 1.0 / math.sqrt(1.0 - b2**self.t)
        s2 += self.eps
        xp.divide(m, s2, out=s1)
        s1 *= 1.0 / (1.0 - b1**self.t)  # m̂ = m / (1 − β₁ᵗ)
        return s1

    def _update(self, params, grads, xp, lr):
        g = grads
        if self.decoupled_weight_decay:
            if self.weight_decay:
                params *= 1.0 - lr * self.weight_decay
        else:
            g = _l2(grads, params, self.weight_decay, self._scratch[0], xp)
        step = self._direction(g, xp)
        step *= lr
        params -= step

    def _fused_update(self, params, grads, xp, lr, skip, parity):
        self._cuda.adam(params, grads, self.state["m"], self.state["v"], lr, self.betas, self.eps,
                        self.weight_decay, self.decoupled_weight_decay, self._t if parity < 0 else 0,
                        skip, self._t_dev, parity)


class AdamW(Adam):
    """Adam with decoupled weight decay: Loshchilov & Hutter, "Decoupled Weight Decay
    Regularization" (ICLR 2019), as ``torch.optim.AdamW``:

        θ ← θ (1 − η λ)                                 (weight_decay λ, default 0.01)
        then Adam's step on the raw gradient g: θ ← θ − η m̂ / (√v̂ + ε)
    """

    hyperparameters = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, kernels="auto"):
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         decoupled_weight_decay=True, kernels=kernels)


class LAMB(_LayerwiseTrust, Adam):
    """Layer-wise Adaptive Moments for Batch training: Adam's direction, decoupled decay and
    a per-tensor trust ratio. You et al., "Large Batch Optimization for Deep Learning:
    Training BERT in 76 minutes" (ICLR 2020), Algorithm 2 with φ(x) = x:

        m, v, m̂, v̂ as in Adam (betas (β₁, β₂), eps ε)
        u = m̂ / (√v̂ + ε) + λ θ                          (weight_decay λ)
        θ_s ← θ_s − η (‖θ_s‖ / ‖u_s‖) u_s                for every segment s (1 if a norm is 0)

    Fused on a CUDA device: m, v and u in one launch (``lamb_direction``), the trust ratios
    as the generic per-segment passes over u, then θ ← θ − η u in one launch (SGD's, μ = λ = 0).
    """

    hyperparameters = ("lr", "betas", "eps", "weight_decay")
    n_scratch_fused = 2

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, kernels="auto"):
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, kernels=kernels)

    def _update(self, params, grads, xp, lr):
        u = self._direction(grads, xp)
        sq = self._scratch[1]
        if self.weight_decay:
            xp.multiply(params, self.weight_decay, out=sq)
            u += sq
        self._trust.scale(u, params, sq, xp)
        u *= lr
        params -= u

    def _fused_update(self, params, grads, xp, lr, skip, parity):
        u, sq = self._scratch
        self._cuda.lamb_direction(u, params, grads, self.state["m"], self.state["v"], self.betas,
                                  self.eps, self.weight_decay, self._t if parity < 0 else 0,
                                  skip, self._t_dev, parity)
        self._trust.scale(u, params, sq, xp)
        self._cuda.sgd(params, u, params[:0], lr, 0.0, 0.0, False, skip, self._t_dev, parity)


# --- RMSprop ------------------------------------------------------------------------------
class RMSprop(Optimizer):
    """RMSprop: Tieleman & Hinton, "Lecture 6.5 — RMSprop" (COURSERA: Neural Networks for
    Machine Learning, 2012); centered as in Graves, "Generating Sequences With Recurrent
    Neural Networks" (arXiv:1308.0850, 2013). As ``torch.optim.RMSprop``:

        g ← g + λ θ                                     (weight_decay λ)
        v ← α v + (1 − α) g²                            (alpha α; v starts at 0)
        centered:  ḡ ← α ḡ + (1 − α) g,   d = √(v − ḡ²) + ε      else  d = √v + ε
        momentum:  b ← μ b + g / d,   θ ← θ − η b                else  θ ← θ − η g / d

    Fused on a CUDA device: one launch, no scratch (the twin: 9-18 passes, two (P,) scratch
    buffers).
    """

    hyperparameters = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")
    n_scratch = 2

    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 kernels="auto"):
        super().__init__(lr, kernels)
        self.alpha = _check_number("alpha", alpha, high=1.0)
        self.eps = _check_number("eps", eps)
        self.weight_decay = _check_number("weight_decay", weight_decay)
        self.momentum = _check_number("momentum", momentum, high=1.0)
        self.centered = bool(centered)

    def _init_state(self, params, xp):
        state = {"v": xp.zeros_like(params)}
        if self.centered:
            state["g_avg"] = xp.zeros_like(params)
        if self.momentum:
            state["b"] = xp.zeros_like(params)
        return state

    def _update(self, params, grads, xp, lr):
        s1, s2 = self._scratch
        a, v = self.alpha, self.state["v"]
        g = _l2(grads, params, self.weight_decay, s1, xp)
        xp.multiply(g, g, out=s2)
        _ema(v, s2, a, s2, xp)
        if self.centered:
            g_avg = self.state["g_avg"]
            _ema(g_avg, g, a, s2, xp)
            xp.multiply(g_avg, g_avg, out=s2)
            xp.subtract(v, s2, out=s2)
            xp.sqrt(s2, out=s2)
        else:
            xp.sqrt(v, out=s2)
        s2 += self.eps
        xp.divide(g, s2, out=s1)  # g / d (g may be s1 itself: elementwise, in place)
        if self.momentum:
            b = self.state["b"]
            b *= self.momentum
            b += s1
            xp.multiply(b, lr, out=s1)
        else:
            s1 *= lr
        params -= s1

    def _fused_update(self, params, grads, xp, lr, skip, parity):
        state, none = self.state, params[:0]
        self._cuda.rmsprop(params, grads, state["v"], state.get("g_avg", none), state.get("b", none),
                           lr, self.alpha, self.eps, self.weight_decay, self.momentum, self.centered,
                           skip, self._t_dev, parity)


OPTIMIZERS = {cls.__name__.lower(): cls for cls in (SGD, Adam, AdamW, RMSprop, LARS, LAMB)}
