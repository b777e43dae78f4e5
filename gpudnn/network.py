"""The Network: flat parameter and gradient buffers, the batched forward and backward pass.

Letters (used in every docstring of this module):
    L      number of weight layers; code indexes them l = 0..L-1, the seed's layer l+2
    n_l    units of activation layer l (n_0 inputs ... n_L outputs); ``sizes = [n_0..n_L]``
    B      batch size: activations are stored as columns, A^l is (n_l, B)
    P      total number of parameters

Seed (layer l+1 in the seed's 1-based numbering is ``A[l]`` here, ``W[l]`` maps A[l] to A[l+1]):

    forward    Z^{l+1} = W^l A^l + b^l,   A^{l+1} = σ(Z^{l+1})      W^l: (n_{l+1}, n_l)
    output     δ^L = ∂J/∂z^L  (from the loss: (a − y) ⊙ σ'(z) for mse, a Σy − y for softmax+CE)
    recursion  δ^l = (W^l)ᵀ δ^{l+1} ⊙ σ'(z^l)
    gradients  ∂J/∂W^l = δ^{l+1} (A^l)ᵀ,   ∂J/∂b^l = Σ_batch δ^{l+1}

All of W and b live in one flat buffer ``params`` of length P (each ``W[l]``, ``b[l]`` a
view into it), the gradients in ``grads`` with the same layout: an optimizer step is one
pass over one array and a checkpoint is one array. The loss is the mean over the batch of
the per-sample loss; the 1/B is applied once, to δ^L.
"""

from __future__ import annotations

import contextlib
import numbers

import numpy as np

from .activations import get_activation
from .backend import get_backend
from .checks import fraction
from .data import refuse_sparse
from .errors import ConfigError, DataError, ShapeError, allocating
from .kernels import get_kernels
from .losses import get_loss
from .optim import Optimizer

DTYPES = ("float32", "float64")
LOW_MEMORY_SPLIT = 8  # low_memory: (W^l)ᵀ δ^{l+1} made in row blocks of 1/8 of the widest layer
_NO_CONTEXT = contextlib.nullcontext()  # reusable: the float32/float64 passes' error state
DROPOUT_STREAM = 0xD50  # mixed into the seed so the dropout masks are not the init's draws
INITS = ("he", "he_normal", "he_uniform", "glorot", "glorot_uniform", "glorot_normal")


def _is_integer(n):
    """True for Python and NumPy integers, False for bools, floats, strings, ..."""
    return isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_))


def _check_sizes(sizes):
    try:
        sizes = list(sizes)
    except TypeError:
        raise ConfigError(f"sizes must be a list of layer widths, got {sizes!r}") from None
    if len(sizes) < 2:
        raise ConfigError(f"sizes needs at least 2 entries [n_inputs, n_outputs], got {sizes}")
    for i, n in enumerate(sizes):
        if not _is_integer(n) or n < 1:
            raise ConfigError(f"every layer width must be an integer >= 1; sizes[{i}] = {n!r}")
    return tuple(int(n) for n in sizes)


def _check_seed(seed):
    if seed is not None and not (_is_integer(seed) and seed >= 0):
        raise ConfigError(f"seed must be a non-negative integer or None, got {seed!r}")
    return None if seed is None else int(seed)


def _check_dtype(dtype):
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        half = {"float16": "float16", "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}.get(
            name or str(dtype).lower())
        fix = (f"; for {half} passes use dtype='float32', precision={half!r} (mixed precision: "
               "float32 master weights)") if half else ""
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}{fix}")
    return np.dtype(name)


def _check_precision(precision, dtype):
    """(compute dtype, tf32): ``dtype`` itself (None or equal), float16 (mixed precision),
    or "tf32" (float32 with TF32 matmuls)."""
    if precision is None:
        return dtype, False
    if isinstance(precision, str) and precision.lower() == "tf32":
        if dtype.name != "float32":
            raise ConfigError(f"precision='tf32' is a mode of float32 matmuls: it needs dtype='float32', "
                              f"got dtype={dtype.name!r}")
        return dtype, True
    if isinstance(precision, str) and precision.lower() in ("bfloat16", "bf16"):
        precision = _bfloat16()
    try:
        name = np.dtype(precision).name
    except TypeError:
        name = None
    if name == "bfloat16":
        return np.dtype(_bfloat16()), False
    if name not in (dtype.name, "float16"):
        raise ConfigError(
            f"precision must be 'float16' or 'bfloat16' (mixed precision), 'tf32' or the dtype "
            f"{dtype.name!r}, got {precision!r}"
        )
    return np.dtype(name), False


def _bfloat16():
    """The bfloat16 dtype, from ml_dtypes (NumPy has none of its own; CuPy 14+ uses it too)."""
    try:
        import ml_dtypes
    except ImportError:
        raise ConfigError("precision='bfloat16' needs the ml_dtypes package (pip install "
                          "gpudnn[bf16]): NumPy has no bfloat16 of its own") from None
    return ml_dtypes.bfloat16


def _check_dropout(dropout, n_hidden):
    """Dropout rates as a tuple of n_hidden floats in [0, 1): one rate for all or one each."""
    if isinstance(dropout, numbers.Real) and not isinstance(dropout, bool):
        if dropout and not n_hidden:  # no hidden layer to drop units of: not silently ignored
            raise ConfigError(f"dropout={dropout} needs a hidden layer; this network has none")
        rates = [dropout] * n_hidden
    else:
        try:
            rates = list(dropout)
        except TypeError:
            raise ConfigError(f"dropout must be a rate or a list of rates, got {dropout!r}") from None
    if len(rates) != n_hidden:
        raise ConfigError(f"dropout lists {len(rates)} rates but the network has {n_hidden} hidden layers")
    return tuple(fraction("dropout rate", p) for p in rates)


def init_weights(sizes, init, seed, dtype):
    """Draw every W^l for ``sizes`` on the host (float64, then cast), b^l = 0.

    he / he_normal: N(0, 2/n_in) (He et al. 2015); he_uniform: U(±√(6/n_in));
    glorot / glorot_uniform: U(±√(6/(n_in+n_out))) (Glorot & Bengio 2010); glorot_normal:
    N(0, 2/(n_in+n_out)). Drawn on the host so both backends start from the same weights.
    Returns a list of (W, b) NumPy pairs, W: (n_{l+1}, n_l), b: (n_{l+1}, 1).
    """
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    rng = np.random.default_rng(seed)
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        fan = n_in if init.startswith("he") else (n_in + n_out) / 2.0
        if init.endswith("uniform") or init == "glorot":
            lim = np.sqrt(3.0 / fan) * (np.sqrt(2.0) if init.startswith("he") else 1.0)
            W = rng.uniform(-lim, lim, size=(n_out, n_in))
        else:
            std = np.sqrt((2.0 if init.startswith("he") else 1.0) / fan)
            W = rng.normal(0.0, std, size=(n_out, n_in))
        layers.append((W.astype(dtype), np.zeros((n_out, 1), dtype=dtype)))
    return layers


_INPUTS = {False: 0, "Y": 1, True: 2}  # a workspace's input buffers: none < Y alone < A[0] and Y


class _Workspace:
    """Activation, δ and scratch buffers for batches of up to ``capacity`` columns.

    Each is a flat array; the (n, B) views for a batch size B are its first n·B entries, so
    one allocation serves every B <= capacity, contiguous, with no copy.
        A[l]    (n_l, B)  l = 1..L: the activations, A[L] the output. In a training step the
                backward pass writes δ^l over a^l (hidden l), which it no longer needs
        A[0], Y (n_0, B), (n_L, B): inputs and targets gathered by ``fit``, or a step's
                strided A0 / Y copied to C order; only with ``inputs`` (True: both; "Y":
                Y alone, the small one), else None (a step reads A0 and Y where they are)
        Z       (n_L, B)  output logits (kept for a stable loss; hidden z^l are not)
        deltaL  (n_L, B)  δ^L (the master dtype)
        dX      (R, B)    (W^l)ᵀ δ^{l+1}, R rows at a time: R = ``product_rows``, the widest
                hidden layer whose backward pass needs it (all but those the kernel set does
                in one pass: below a thin layer on a GPU; none: no dX), or ``scratch_rows``
                when smaller (then the product is made in row blocks)
        tmp     (n_l, B)  hidden l: scratch for σ' (and leaky_relu's forward) of kernels that
                need it (``needs_scratch``; the fused CUDA ones do not: then None)
        tmpL, tmp2 (n_L, B) the output layer's scratch (the master dtype)
        mask[l] (n_l, B)  dropout: the mask m of hidden layer l (entries 0 or 1/(1 − p))
        drop[l] (n_l, B)  dropout: ã = a ⊙ m, what the next layer sees; both None where p = 0
    So a training step's memory per column is Σ_hidden n_l (the activations) + R (+ the
    widest hidden layer again where the kernels need scratch) + a few n_L.
    """

    def __init__(self, xp, sizes, dtype, capacity, dropout=(), inputs=False, compute=None,
                 scratch=True, scratch_rows=None, product_rows=None):
        self.kernels = None  # the kernel set it was sized for (Network._views sets it)
        self.capacity = capacity
        self.sizes = sizes
        self.inputs = inputs
        hidden = sizes[1:-1]
        wide = max(hidden, default=0)
        product = wide if product_rows is None else product_rows
        rows = product if scratch_rows is None else min(product, max(1, scratch_rows))
        self.rows = rows
        rates = (0.0, *dropout, 0.0)  # per activation layer l = 0..L; no dropout on A[0], A[L]
        mixed = compute is not None and compute != dtype
        self.mixed = mixed
        c = compute if mixed else dtype  # hidden activations, δ and scratch
        nL = sizes[-1]

        def buf(n, dt=c):
            return xp.empty(n * capacity, dt) if n else None

        self.flat = {
            "A": [buf(n, dtype if l in (0, len(sizes) - 1) else c) if l or inputs is True else None
                  for l, n in enumerate(sizes)],
            "Z": buf(nL, dtype),
            "Y": buf(nL, dtype) if inputs else None,
            "deltaL": buf(nL, dtype),
            "dX": buf(rows),
            "tmp": buf(wide) if scratch else None,
            "tmpL": buf(nL, dtype),
            "tmp2": buf(nL, dtype),
            # the dropout masks stay in the master dtype (the generators draw no float16)
            "mask": [buf(n, dtype) if p else None for n, p in zip(sizes, rates)],
            "drop": [buf(n) if p else None for n, p in zip(sizes, rates)],
        }
        # mixed precision: the inputs cast to float16, the output layer's float16 product,
        # δ^L · S in float16 (where the backward pass starts) and the unscaled ∂J/∂b^{L-1}
        self.flat["mixed"] = [buf(sizes[0]), buf(nL), buf(nL), xp.empty((nL, 1), dtype)] if mixed else []
        self._views = {}

    def nbytes(self):
        f = self.flat
        arrays = f["A"] + [f[k] for k in ("Z", "Y", "deltaL", "dX", "tmp", "tmpL", "tmp2")]
        arrays += f["mask"] + f["drop"] + f["mixed"]
        return sum(int(a.nbytes) for a in arrays if a is not None)

    def views(self, B):
        """The (n, B) views of every buffer for batch size B (cached for a few B)."""
        v = self._views.get(B)
        if v is None:
            if len(self._views) >= 4:
                self._views.clear()
            f, s, nL = self.flat, self.sizes, self.sizes[-1]

            def view(flat, n):
                return flat[: n * B].reshape(n, B) if flat is not None else None

            hidden = s[1:-1]
            v = {
                "A": [view(a, n) for a, n in zip(f["A"], s)],
                "Z": view(f["Z"], nL),
                "Y": view(f["Y"], nL),
                "deltaL": view(f["deltaL"], nL),
                # per hidden layer l (index l): its (W^l)ᵀ δ^{l+1} block and its scratch
                "dX": [None] + [view(f["dX"], min(n, self.rows)) for n in hidden] + [None],
                "tmp": [None] + [view(f["tmp"], n) for n in hidden] + [view(f["tmpL"], nL)],
                "tmp2": view(f["tmp2"], nL),
                "mask": [view(m, n) for m, n in zip(f["mask"], s)],
                "drop": [view(d, n) for d, n in zip(f["drop"], s)],
            }
            v["Zc"] = v["Z"]  # where the output layer's product goes
            v["delta16"] = v["deltaL"]  # where the backward pass starts
            if self.mixed:
                x16, z16, d16, dbL = f["mixed"]
                v["A0c"] = view(x16, s[0])
                v["Zc"] = view(z16, nL)
                v["delta16"] = view(d16, nL)
                v["dbL"] = dbL
            self._views[B] = v
        return v


class Network:
    """A fully connected network trained by hand-written batched backpropagation.

    Parameters
    ----------
    sizes : list of int
        ``[n_0, n_1, ..., n_L]``: inputs, hidden widths, outputs.
    activation : str or list of str
        Hidden activation, one name for all hidden layers or one per hidden layer:
        ``"sigmoid"``, ``"tanh"``, ``"relu"``, ``"leaky_relu"`` (slope 0.01), ``"identity"``.
    output : str
        Output activation: ``"softmax"``, ``"sigmoid"``, ``"identity"``, ``"tanh"``.
    loss : str or None
        ``"mse"`` (the seed's ½‖a − y‖²), ``"cross_entropy"`` (softmax only),
        ``"binary_cross_entropy"`` (sigmoid only). None picks the natural loss of ``output``.
    init : str
        ``"he"`` (= he_normal), ``"he_uniform"``, ``"glorot"`` (= glorot_uniform), ``"glorot_normal"``.
    dtype : str
        ``"float32"`` or ``"float64"``.
    backend : str
        ``"auto"`` (CuPy when a CUDA device is usable, else NumPy), ``"numpy"`` or ``"cupy"``.
    seed : int
        Seed of the weight initialisation, of the dropout masks and of shuffling in ``fit``.
    kernels : str
        The elementwise kernels: ``"auto"`` (the fused CUDA kernels on CuPy; the fused Numba
        kernels on the CPU when Numba is installed, else the generic ones), ``"generic"``
        (the plain NumPy/CuPy twins), ``"numba"`` or ``"cuda"``. Results agree to rounding;
        see :mod:`gpudnn.kernels`.
    precision : str or None
        The precision of the forward and backward passes: None (= ``dtype``); ``"float16"``:
        mixed precision with ``dtype`` master weights and dynamic loss scaling
        (``net.loss_scaler``, see :mod:`gpudnn.amp`); ``"bfloat16"``: the same with bfloat16
        passes (needs ml_dtypes; on CuPy, a CuPy with bfloat16 arrays, 14+); ``"tf32"`` (CuPy
        on compute capability 8.0+, dtype float32): every matmul on TF32 tensor cores (inputs
        rounded to 10 mantissa bits, float32 sums), the rest float32. Mixed precision is
        part of ``config``: model files and checkpoints record it (``gpudnn.load(path,
        precision=None)`` loads a model without it); TF32, a matmul mode, is not recorded.
    low_memory : bool
        Bound the backward pass's scratch to an eighth of the widest hidden layer (per
        column) instead of all of it, by making (W^l)ᵀ δ^{l+1} in row blocks: the largest
        batch that fits grows (a 3-hidden-layer net of equal widths needs 3 1/8 activation
        tensors instead of 4) for a little GEMM efficiency. A memory setting: ``config``
        and model files do not record it.
    dropout : float or list of float
        Inverted dropout (Srivastava et al. 2014) on the hidden activations, one rate p for
        all hidden layers or one per hidden layer: in training steps each unit is kept with
        probability 1 − p and scaled by 1/(1 − p); ``forward``, ``predict`` and ``evaluate``
        never drop. The masks are drawn on the device, reproducibly from ``seed``.

    Attributes
    ----------
    W, b : tuple of arrays
        ``W[l]``: (n_{l+1}, n_l), ``b[l]``: (n_{l+1}, 1), views into ``params``. Change them
        in place (``net.W[0][...] = M``); the tuples themselves cannot be reassigned.
    dW, db : tuple of arrays
        The gradients, same shapes, views into ``grads``; filled by ``forward_backward``.
    params, grads : array (P,)
        The flat buffers behind them.
    segments : tuple of (start, stop)
        Where each tensor lies in the flat buffers: W[0], b[0], W[1], ... in order.
    """

    def __init__(
        self,
        sizes,
        activation="relu",
        output="softmax",
        loss=None,
        init="he",
        dtype="float32",
        backend="auto",
        seed=0,
        kernels="auto",
        dropout=0.0,
        precision=None,
        low_memory=False,
    ):
        self.sizes = _check_sizes(sizes)
        L = len(self.sizes) - 1
        if isinstance(activation, str):
            hidden = [activation] * (L - 1)
        elif isinstance(activation, (list, tuple)):
            hidden = list(activation)
        else:
            raise ConfigError(f"activation must be a name or a list of names, got {activation!r}")
        if len(hidden) != L - 1:
            raise ConfigError(
                f"activation lists {len(hidden)} names but the network has {L - 1} hidden "
                f"layers (sizes={list(self.sizes)})"
            )
        self.activation = hidden
        self.dropout = _check_dropout(dropout, L - 1)
        self.output = output
        self._sigma = [get_activation(a) for a in hidden] + [get_activation(output, output=True)]
        if output == "softmax" and self.sizes[-1] < 2:
            raise ConfigError(
                f"output='softmax' needs at least 2 output units, got {self.sizes[-1]}; "
                "for two classes use 2 softmax units, or 1 unit with output='sigmoid'"
            )
        self._loss = get_loss(loss, output)
        self.loss = self._loss.name
        self.dtype = _check_dtype(dtype)
        self.precision, self.tf32 = _check_precision(precision, self.dtype)
        self._mixed = self.precision != self.dtype  # read on every pass: kept, not derived
        self.init = init
        self.seed = _check_seed(seed)
        self.backend = get_backend(backend)
        self.xp = self.backend.xp
        self.kernels = get_kernels(kernels, self.backend)
        # the passes' products W a, δ aᵀ, Wᵀ δ: matmul(A, B, out=C). A hook: e.g. the tiled
        # CUDA GEMM (kernels.cuda_gemm.TiledGemm), whose steps can be captured in a CUDA graph
        self._matmul = self.xp.matmul
        if not isinstance(low_memory, (bool, np.bool_)):
            raise ConfigError(f"low_memory must be True or False, got {low_memory!r}")
        self.low_memory = bool(low_memory)
        # the backward's scratch rows: all of the widest hidden layer, or an eighth of it
        wide = max(self.sizes[1:-1], default=0)
        self._scratch_rows = -(-wide // LOW_MEMORY_SPLIT) if self.low_memory else None
        # what every pass runs under: NumPy's float16 warnings off (mixed), TF32 matmuls on
        self._pass_context = _NO_CONTEXT
        if self.tf32:
            self._pass_context = self.backend.tf32_matmuls()

        # flat buffers and their per-layer views
        xp = self.xp
        self._offsets = []  # (start of W^l, start of b^l, end of b^l)
        o = 0
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            self._offsets.append((o, o + n_out * n_in, o + n_out * n_in + n_out))
            o += n_out * n_in + n_out
        self._segments = tuple(seg for w0, b0, b1 in self._offsets for seg in ((w0, b0), (b0, b1)))
        with self._allocating(f"the {o:,} parameters of sizes={list(self.sizes)} (θ and ∂J/∂θ)",
                              2 * o * self.dtype.itemsize):
            self._params = xp.zeros(o, self.dtype)
            self._grads = xp.zeros(o, self.dtype)
            self.W, self.b = self._layer_views(self.params)
            self.dW, self.db = self._layer_views(self.grads)
            for l, (W, b) in enumerate(init_weights(self.sizes, init, seed, self.dtype)):
                self.W[l][...] = self.backend.asarray(W)
                self.b[l][...] = self.backend.asarray(b)

        # the weights and gradients the passes use: the master ones, or float16 copies
        self._Wc, self._bc, self._dWc, self._dbc = self.W, self.b, self.dW, self.db
        self.loss_scaler = None
        if self.mixed:
            from .amp import LossScaler

            with self._allocating(f"the {self.precision.name} copies of the {o:,} parameters (θ and ∂J/∂θ)",
                                  2 * o * self.precision.itemsize):
                try:
                    self._params16 = xp.zeros(o, self.precision)
                except (TypeError, ValueError, NotImplementedError) as exc:  # CuPy without bfloat16
                    raise ConfigError(f"precision={self.precision.name!r} is not supported by "
                                      f"{self.backend.describe()} ({type(exc).__name__}: {exc})") from None
                self._grads16 = xp.zeros(o, self.precision)
            self._Wc, self._bc = self._layer_views(self._params16)
            self._dWc, self._dbc = self._layer_views(self._grads16)
            self.loss_scaler = LossScaler()

        self._ws = None
        self._dropout_rng = None  # made on the first training step with dropout
        self._shuffle_rng = None  # fit's sample orders, made by the first fit (see train.fit)
        self.classes_ = None  # class labels, set by fit for classifiers
        self.scaler = None  # input standardisation, set by fit(standardize=True)
        self.target_scaler = None  # regression targets' standardisation (standardize_targets)
        # the training file's columns (names, target's index), which gpudnn predict reads by
        self.data_columns = None  # (set by gpudnn train; see gpudnn.data.read_features)
        self.history = None

    # --- structure ---------------------------------------------------------------------
    @property
    def params(self):
        """θ: (P,), the flat buffer W and b are views of (change it in place)."""
        return self._params

    @params.setter
    def params(self, value):
        if value is self._params:  # net.params += x: the in-place result assigned back
            return
        raise ConfigError("net.params is the buffer W and b are views of: change it in place "
                          "(net.params[...] = values); a new array would leave them behind")

    @property
    def grads(self):
        """∂J/∂θ: (P,), the flat buffer dW and db are views of."""
        return self._grads

    @grads.setter
    def grads(self, value):
        if value is self._grads:  # net.grads *= k: the in-place result assigned back
            return
        raise ConfigError("net.grads is the buffer dW and db are views of: change it in place "
                          "(net.grads[...] = values); a new array would leave them behind")

    def _allocating(self, what, nbytes):
        """``allocating`` (gpudnn.errors) for ``what``: ``nbytes`` bytes on this device."""
        return allocating(f"{what} need about {nbytes / 2**30:.3g} GiB in {self.dtype.name} on "
                          f"{self.backend.describe()}, more than could be allocated")

    def _layer_views(self, flat):
        W, b = [], []
        for (w0, b0, b1), n_in, n_out in zip(self._offsets, self.sizes[:-1], self.sizes[1:]):
            W.append(flat[w0:b0].reshape(n_out, n_in))
            b.append(flat[b0:b1].reshape(n_out, 1))
        return tuple(W), tuple(b)

    @property
    def mixed(self):
        """Whether the passes run in float16 or bfloat16 on copies of the master weights."""
        return self._mixed

    @property
    def n_layers(self):
        """L, the number of weight layers."""
        return len(self.sizes) - 1

    @property
    def segments(self):
        """((start, stop) of W[0], of b[0], of W[1], ...): each tensor's piece of the flat
        buffers, in order (what LARS and LAMB take their per-layer trust ratios over)."""
        return self._segments

    @property
    def n_params(self):
        """P, the number of parameters."""
        return int(self.params.size)

    @property
    def is_classifier(self):
        return self._loss.classifier

    @property
    def is_regressor(self):
        """An identity output with mse: values, which ``standardize_targets`` may scale."""
        return self.loss == "mse" and self.output == "identity"

    def config(self):
        """The architecture as a JSON-able dict (what ``Network(**config)`` rebuilds)."""
        return {
            "sizes": list(self.sizes),
            "activation": list(self.activation),
            "output": self.output,
            "loss": self.loss,
            "init": self.init,
            "dtype": self.dtype.name,
            "seed": self.seed,
            "dropout": list(self.dropout),
            **({"precision": self.precision.name} if self.mixed else {}),
        }

    def __repr__(self):
        acts = set(self.activation)
        act = self.activation[0] if len(acts) == 1 else self.activation
        drop = set(self.dropout)
        drop = "" if not any(drop) else f", dropout={self.dropout[0] if len(drop) == 1 else list(self.dropout)!r}"
        prec = f", precision={self.precision.name!r}" if self.mixed else ", precision='tf32'" if self.tf32 else ""
        return (
            f"Network({list(self.sizes)}, activation={act!r}, output={self.output!r}, "
            f"loss={self.loss!r}{drop}, dtype={self.dtype.name!r}{prec}, backend={self.backend.name!r})"
        )

    # --- buffers -------------------------------------------------------------------------
    def _views(self, B, inputs=False):
        """Workspace views for batch size B, growing the workspace if B is larger (or if
        the input buffers ``inputs`` asks for are missing: True, the A[0] and Y buffers
        ``fit`` gathers batches into; "Y", the Y buffer alone)."""
        ws, capacity = self._ws, B
        if ws is not None and ws.kernels is not self.kernels:  # its scratch sized for another kernel set:
            capacity = max(B, ws.capacity)  # made again, as large, for this one
        elif ws is not None and B <= ws.capacity and _INPUTS[inputs] <= _INPUTS[ws.inputs]:
            return ws.views(B)
        keep_inputs = max(inputs, ws.inputs if ws is not None else False, key=_INPUTS.get)
        self._ws = ws = None  # the old buffers go before the new ones are made
        rows = self._product_rows(self.kernels)
        per_column = sum(self.sizes[1:]) + rows + 3 * self.sizes[-1]
        with self._allocating(f"the activation buffers of a batch of {capacity:,} columns",
                              capacity * per_column * self.dtype.itemsize):
            self._ws = _Workspace(self.xp, self.sizes, self.dtype, capacity, self.dropout, keep_inputs,
                                  self.precision, self.kernels.needs_scratch(self.precision),
                                  self._scratch_rows, rows)
            self._ws.kernels = self.kernels
        return self._ws.views(B)

    def _product_rows(self, kernels):
        """Rows of the (W^l)ᵀ δ^{l+1} scratch a training step needs with ``kernels``: the
        widest hidden layer l whose backward pass is not one ``layer_backward`` (a thin layer
        l+1, no dropout on layer l, as ``kernels.fuses_layer`` says); 0 when none is."""
        s, sigma = self.sizes, self._sigma
        return max((s[l] for l in range(1, len(s) - 1)
                    if self.dropout[l - 1] or not kernels.fuses_layer(s[l + 1], self.precision, sigma[l - 1])),
                   default=0)

    def _as_batch(self, M, n, what):
        """Check that M is (n, B) and put it on this backend in this dtype (no copy if it is)."""
        shape = getattr(M, "shape", None)
        if shape is None or len(shape) != 2:
            raise ShapeError(
                f"{what} must be a 2-D array of shape ({n}, batch) with one column per sample; "
                f"got {'shape ' + str(tuple(shape)) if shape is not None else type(M).__name__}"
            )
        if shape[0] != n:
            raise ShapeError(
                f"{what} has {shape[0]} rows but the network needs {n} (one row per "
                f"{'input' if what == 'A0' else 'output'} unit, one column per sample); "
                f"got shape {tuple(shape)}"
                + (" — did you pass samples as rows? use A0 = X.T" if shape[1] == n else "")
            )
        if shape[1] < 1:
            raise ShapeError(f"{what} has no columns (batch size 0)")
        refuse_sparse(M, what)
        kind = getattr(getattr(M, "dtype", None), "kind", "f")  # (bfloat16's is "V": a number)
        if kind in "cOUSMm":  # what NumPy would cast all the same: complex (losing its imaginary part), text
            raise DataError(f"{what}: must be real numbers (float, int or bool), got dtype {M.dtype}")
        if self.backend.owns(M):  # cast where it lies (a CuPy float64 array: on the device, no sync)
            return M if M.dtype == self.dtype else M.astype(self.dtype)
        if self.backend.name == "cupy" and not isinstance(M, np.ndarray):
            M = self.backend.to_numpy(M)  # anything else array-like, through the host
        return self.backend.asarray(M, dtype=self.dtype)

    def _as_training_batch(self, A0, Y):
        """A0: (n_0, B) and Y: (n_L, B) checked with ``_as_batch``, B the same in both."""
        A0 = self._as_batch(A0, self.sizes[0], "A0")
        Y = self._as_batch(Y, self.sizes[-1], "Y")
        if Y.shape[1] != A0.shape[1]:
            raise ShapeError(f"A0 has {A0.shape[1]} columns (samples) but Y has {Y.shape[1]}")
        return A0, Y

    # --- forward / backward (the seed's equations) ----------------------------------------
    def _errstate(self):
        """The context of a pass. Mixed precision on NumPy: float16 overflows are expected
        (the loss scaler's business: the step is skipped), so NumPy's warnings about them are
        silenced. precision="tf32": CuPy's float32 matmuls on TF32 tensor cores."""
        return np.errstate(over="ignore", invalid="ignore") if self._mixed else self._pass_context

    def _forward(self, A0, v, train=False, dropout=False):
        """Z^{l+1} = W^l A^l + b^l, A^{l+1} = σ(Z^{l+1}) for l = 0..L-1, in the buffers ``v``.

        A0: (n_0, B). Hidden activations overwrite their z in place; the output keeps its
        logits in ``v["Z"]``. With ``train`` the output layer is left at Z = W^{L-1} a^{L-1}
        (no bias, no σ) for :meth:`_output_and_backward`; else a^L is written to
        ``v["A"][L]`` and returned: (n_L, B). With ``dropout`` the next layer sees
        ã = a ⊙ m (the masks drawn in ``v["mask"]``).
        """
        with self._errstate():
            xp, A, L, k, mm = self.xp, v["A"], self.n_layers, self.kernels, self._matmul
            W, b = self._Wc, self._bc
            a = A0
            if self.mixed:  # float16 copies of the master weights and of the inputs
                xp.copyto(self._params16, self.params, casting="same_kind")
                a = v["A0c"]
                xp.copyto(a, A0, casting="same_kind")
            for l in range(L - 1):
                mm(W[l], a, out=A[l + 1])  # z = W a   (no transpose: W is (out, in))
                a = k.bias_act(A[l + 1], b[l], self._sigma[l], v["tmp"][l + 1])  # a = σ(z + b)
                if dropout and v["mask"][l + 1] is not None:  # ã = a ⊙ m
                    a = xp.multiply(a, v["mask"][l + 1], out=v["drop"][l + 1])
            Z = v["Z"]
            mm(W[L - 1], a, out=v["Zc"])
            if self.mixed:  # the output layer in the master dtype
                xp.copyto(Z, v["Zc"])
            if train:
                return Z
            Z += self.b[L - 1]
            return self._sigma[L - 1].forward(Z, A[L], v["tmp"][L])

    def _output_and_backward(self, A0, Y, v, dropout=False, share=1.0, read=False):
        """The output layer and the whole backward pass, after ``_forward(A0, v, train=True,
        dropout)``. ``share``: the gradients are of ``share`` × the mean loss (a micro-batch's
        share m/B of its batch's mean: applied to δ^L before the backward pass, so that in
        float16 the values are the whole batch's size, not k times larger). ``read``: the
        loss's copy to the host is queued as soon as it is made, ahead of the backward pass
        (``Backend.read_later``), and a callable returning it as a float comes back.

        a^L = σ(z^L); δ^L = ∂J/∂z^L / B (from the loss: (a − y) ⊙ σ'(z) for mse,
        a Σ_i y_i − y for softmax + cross-entropy); then for l = L-1..0:
            ∂J/∂W^l = δ^{l+1} (A^l)ᵀ,   ∂J/∂b^l = Σ_batch δ^{l+1},
            δ^l = (W^l)ᵀ δ^{l+1} ⊙ σ'(z^l).
        With ``dropout``, ∂J/∂W^l = δ^{l+1} (ã^l)ᵀ and δ^l = (W^l)ᵀ δ^{l+1} ⊙ m^l ⊙ σ'(z^l).
        δ^l is written over a^l (A[l]): once ∂J/∂W^l is made, the pass needs a^l only for
        σ'(a^l), read element by element as δ^l is written. (W^l)ᵀ δ^{l+1} goes through the
        scratch ``dX``, in blocks of its R rows when R < n_l (``low_memory``), unless the
        kernel set does the layer in one pass (``layer_backward``: below a thin layer, on a
        GPU), which needs no scratch.
        A0: (n_0, B), Y: (n_L, B). Fills dW, db; returns the summed loss (0-d, no host sync;
        with ``read``, its reader).
        """
        with self._errstate():
            xp, A, L, k, mm = self.xp, v["A"], self.n_layers, self.kernels, self._matmul
            W, dW, db = self._Wc, self._dWc, self._dbc
            delta = v["deltaL"]  # δ^L: (n_L, B)
            dbL = v["dbL"] if self.mixed else self.db[L - 1]
            total = k.output_loss_delta(
                v["Z"], self.b[L - 1], A[L], Y, delta, dbL, self._sigma[L - 1], self._loss,
                v["tmp"][L], v["tmp2"],
            )
            if read:
                total = self.backend.read_later(total)
            if share != 1.0:
                delta *= share
                dbL *= share
            if self.mixed:  # δ^L · S, cast to float16; the inputs as float16
                self.loss_scaler.scale_delta(delta, v["delta16"], xp)  # S may live on the device
                delta, A0 = v["delta16"], v["A0c"]
            for l in range(L - 1, -1, -1):
                a_prev = A0 if l == 0 else A[l]
                if dropout and v["mask"][l] is not None:
                    a_prev = v["drop"][l]  # this layer saw ã = a ⊙ m
                if l > 0 and a_prev is A[l] and k.fuses_layer_backward(W[l], delta, A[l], self._sigma[l - 1],
                                                                       dW[l], db[l - 1]):
                    # below a thin layer: ∂J/∂W^l, δ^l (over a^l) and ∂J/∂b^{l-1} in one pass
                    delta = k.layer_backward(W[l], delta, A[l], self._sigma[l - 1], dW[l], db[l - 1])
                    continue
                mm(delta, a_prev.T, out=dW[l])  # ∂J/∂W = δ aᵀ
                if l > 0:
                    mask = v["mask"][l] if dropout else None
                    X, a, sigma, tmp = v["dX"][l], A[l], self._sigma[l - 1], v["tmp"][l]
                    n, R = a.shape[0], X.shape[0]
                    if R == n:  # the whole product at once
                        self._delta_rows(delta, W[l].T, X, a, mask, sigma, tmp, db[l - 1])
                    else:  # rows r0:r1 of δ^l need only columns r0:r1 of W^l
                        for r0 in range(0, n, R):
                            r1 = min(r0 + R, n)
                            self._delta_rows(delta, W[l][:, r0:r1].T, X[: r1 - r0], a[r0:r1],
                                             None if mask is None else mask[r0:r1], sigma,
                                             None if tmp is None else tmp[r0:r1], db[l - 1][r0:r1])
                    delta = a  # δ^l, where a^l was
            if self.mixed:  # unscale into the master gradients: cast, then · 1/S (exact: S = 2^k)
                self.loss_scaler.unscale(self.grads, self._grads16, xp, k)
                self.db[L - 1][...] = v["dbL"]  # computed unscaled, in the master dtype
                self.loss_scaler.check(self.db[L - 1])  # (written after the unscale's check)
            return total

    def _delta_rows(self, delta, Wt, X, a, mask, sigma, tmp, db):
        """Rows of δ^l = (W^l)ᵀ δ^{l+1} ⊙ m ⊙ σ'(a^l), written over a^l's rows, and their
        ∂J/∂b^{l-1} = Σ_batch δ^l. delta: (n_{l+1}, B); Wt: (r, n_{l+1}), rows of (W^l)ᵀ;
        X: (r, B) scratch; a, mask, tmp: (r, B) rows of A[l], m^l, scratch; db: (r, 1)."""
        self._matmul(Wt, delta, out=X)  # (W^l)ᵀ δ^{l+1}
        if mask is not None:
            X *= mask  # ⊙ m (∂ã/∂a)
        # ⊙ σ'(z^l) from the stored a^l, into a^l's place, and the row sums in the same pass
        self.kernels.act_backward(X, a, sigma, tmp, db, out=a)

    def _loss_sum(self, Y, v):
        """Σ over the batch of the per-sample loss after ``_forward``, as a 0-d array."""
        return self._loss.loss(v["Z"], v["A"][-1], Y, v["tmp"][-1], v["tmp2"])

    def _forward_backward(self, A0, Y, share=1.0, read=False):
        """forward + backward on device arrays A0: (n_0, B), Y: (n_L, B); returns Σ loss
        (0-d), or with ``read`` a callable returning it as a float. The gradients are of
        ``share`` × the mean loss (see ``_output_and_backward``).

        A training step: with dropout, fresh masks are drawn for it. A strided A0 or Y (as
        ``np.eye(n)[:, labels]`` is) is first copied into the workspace's input buffers: the
        fused kernels take C-contiguous arrays only, and would leave the layer to the twins.
        """
        # an input buffer of n_0 rows only when A0 needs it (Y's is small)
        inputs = True if not A0.flags.c_contiguous else "Y" if not Y.flags.c_contiguous else False
        v = self._views(A0.shape[1], inputs=inputs)
        A0, Y = self._contiguous(A0, v["A"][0]), self._contiguous(Y, v["Y"])
        dropout = any(self.dropout)
        if dropout:
            self._draw_dropout_masks(v)
        self._forward(A0, v, train=True, dropout=dropout)
        return self._output_and_backward(A0, Y, v, dropout, share, read)

    def _contiguous(self, M, buf):
        """M itself when C-contiguous, else M copied into ``buf`` (same shape)."""
        if M.flags.c_contiguous:
            return M
        self.xp.copyto(buf, M)
        return buf

    def _draw_dropout_masks(self, v):
        """m = [u ≥ p] / (1 − p), u ~ U[0, 1), into ``v["mask"][l]``: (n_l, B) per hidden layer.

        Inverted dropout (Srivastava et al., JMLR 2014): E[a ⊙ m] = a, so inference needs no
        rescaling. The generator lives on the network's device, seeded from ``seed``.
        """
        rng = self._dropout_generator()
        for m, p in zip(v["mask"][1:-1], self.dropout):
            if p:
                rng.random(size=m.shape, dtype=self.dtype, out=m)
                self.xp.greater_equal(m, p, out=m)
                m *= 1.0 / (1.0 - p)

    def _dropout_generator(self):
        """The generator of the dropout masks, on the device: made on first use, seeded from
        ``seed`` (None: fresh entropy); a checkpoint keeps its state."""
        if self._dropout_rng is None:
            entropy = None if self.seed is None else [self.seed, DROPOUT_STREAM]
            seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
            self._dropout_rng = self.xp.random.default_rng(seed)
        return self._dropout_rng

    # --- public step API ---------------------------------------------------------------
    def forward(self, A0):
        """a^L for a batch of columns. A0: (n_0, B) -> a new array (n_L, B) on this backend."""
        A0 = self._as_batch(A0, self.sizes[0], "A0")
        return self._forward(A0, self._views(A0.shape[1])).copy()

    def forward_backward(self, A0, Y):
        """Forward and backward pass: fills ``dW``, ``db``; returns the mean loss (float).
        A training pass: with dropout, fresh masks are drawn and applied.

        A0: (n_0, B) inputs as columns; Y: (n_L, B) targets (one-hot columns for softmax).
        """
        A0, Y = self._as_training_batch(A0, Y)
        return self._forward_backward(A0, Y, read=True)() / A0.shape[1]

    def train_step(self, A0, Y, optimizer):
        """forward_backward, then ``optimizer.step`` on the flat buffers; returns the mean loss.

        A0: (n_0, B), Y: (n_L, B). The loss is the one before the update. With mixed
        precision the step is skipped when a gradient is not finite (see :mod:`gpudnn.amp`).
        On a GPU the step's one host sync waits for the loss alone: its copy to the host is
        queued right after the output layer, and the backward pass and the update are queued
        before the host waits for it (``Backend.read_later``). So the host returns while the
        device still has the backward pass to run, and the caller's next step is queued
        behind it: the device never idles between steps waiting for the host. What reads the
        results on the same stream (``to_numpy``, ``predict``, the next step) comes after
        them; work on another stream, or a wall-clock timing, must synchronize first
        (``net.backend.synchronize()``).
        """
        if not isinstance(optimizer, Optimizer):
            raise ConfigError(f"train_step needs a gpudnn.optim optimizer such as SGD(lr=0.01), got {optimizer!r}")
        A0, Y = self._as_training_batch(A0, Y)
        loss = self._forward_backward(A0, Y, read=True)  # its copy to the host already queued
        if self.mixed:  # skipped (and the loss scale lowered) when a gradient is not finite
            self.loss_scaler.step(self, optimizer, checked=True)  # the gradients as unscale left them
        else:
            optimizer.step(self.params, self.grads, self.xp, self.segments)
        return loss() / A0.shape[1]

    # --- dataset-level API (the loop lives in train.py) -------------------------------
    def fit(self, X, y, **kwargs):
        """Train on X: (n_samples, n_0) rows and y labels/targets. See :func:`gpudnn.train.fit`."""
        from .train import fit

        return fit(self, X, y, **kwargs)

    def predict(self, X, batch_size=4096):
        """Class labels (classifiers) or values (regressors) for X: (n_samples, n_0)."""
        from .train import predict

        return predict(self, X, batch_size=batch_size)

    def predict_proba(self, X, batch_size=4096):
        """Output activations a^L as rows, (n_samples, n_L), e.g. class probabilities."""
        from .train import predict_outputs

        return predict_outputs(self, X, batch_size=batch_size)

    def evaluate(self, X, y, batch_size=4096):
        """{"loss": mean loss, "accuracy": ... (classifiers only)} on X: (n_samples, n_0)."""
        from .train import evaluate

        return evaluate(self, X, y, batch_size=batch_size)

    def save(self, path):
        """Write the model to ``path`` (safetensors). See :func:`gpudnn.io.save`."""
        from .io import save

        save(self, path)
