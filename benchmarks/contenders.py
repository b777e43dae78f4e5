"""What the benchmark scripts time: one training step of an MLP, built the same way on every
backend and device (``scripts/compare.py`` on the CPU, ``scripts/gpu_bench.py`` on a GPU).

Letters as in :mod:`gpudnn.network`: sizes = [n_0, ..., n_L], L weight layers, B the batch.
Every net has ReLU hidden layers and the output of :func:`head`: softmax + cross-entropy, or
sigmoid + binary cross-entropy when there is one output unit.

    batch(xp, sizes, B, dtype, seed)   A0 (n_0, B) standard normal, Y (n_L, B) valid targets
    GemmFloor(xp, sizes, B, ...)       the 3L − 1 GEMMs of a step alone, on preallocated buffers
    gemm_flops(sizes, B)               the floating-point operations of those GEMMs
    GpudnnStep(sizes, B, ...)          ``net.train_step`` on one fixed batch
    TorchStep(sizes, B, ...)           the same step in PyTorch: nn.Sequential of Linear + ReLU,
                                       the same loss, torch.optim.SGD, eager or torch.compile'd

Each step object is called with no argument and runs one step (the steps return the loss as a
Python float, so both libraries copy it to the host every step: ``train_step`` returns one).
"""

from __future__ import annotations

import os
import platform
import subprocess

import numpy as np

import gpudnn


def label(sizes, B):
    return f"{'-'.join(map(str, sizes))} @ {B}"


def head(sizes):
    """(output, loss) of a net: softmax + cross-entropy, or sigmoid + BCE for one output unit."""
    return ("sigmoid", "binary_cross_entropy") if sizes[-1] == 1 else ("softmax", "cross_entropy")


def labels(xp, sizes, B, seed):
    """B class labels (0/1 for one output unit), drawn on the device of ``xp``."""
    return xp.random.default_rng(seed).integers(0, max(sizes[-1], 2), size=B)


def batch(xp, sizes, B, dtype="float32", seed=0):
    """A0: (n_0, B) standard normal and Y: (n_L, B) one-hot columns (or 0/1 for one output
    unit), drawn on the device of ``xp`` (NumPy or CuPy: no host copy of a large batch)."""
    A0 = xp.random.default_rng(seed).standard_normal((sizes[0], B), dtype=np.float32)
    A0 = A0.astype(dtype, copy=False)
    y = labels(xp, sizes, B, seed + 1)
    Y = xp.zeros((sizes[-1], B), dtype)
    if sizes[-1] == 1:
        Y[0] = y
    else:
        Y[y, xp.arange(B)] = 1
    return A0, Y


def gemm_flops(sizes, B):
    """2 B (3 Σ n_l n_{l+1} − n_0 n_1): the forward, dW and (W^l)ᵀδ GEMMs of one step."""
    pairs = sum(i * o for i, o in zip(sizes[:-1], sizes[1:]))
    return 2 * B * (3 * pairs - sizes[0] * sizes[1])


class GemmFloor:
    """The GEMMs of one training step alone, into preallocated outputs (3L − 1 of them):

        Z[l]   = W[l] @ A[l]       (n_{l+1}, B)      l = 0..L-1   forward
        dW[l]  = D[l] @ A[l]ᵀ      (n_{l+1}, n_l)    l = L-1..0   ∂J/∂W^l = δ^{l+1} (A^l)ᵀ
        P[l-1] = W[l]ᵀ @ D[l]      (n_l, B)          l = L-1..1   (W^l)ᵀ δ^{l+1}

    A[l]: (n_l, B) and D[l] (δ^{l+1}): (n_{l+1}, B) are random, in ``dtype``, in ``order``
    ("C": features x batch row-major, gpudnn's layout; "F": column-major, NumPy only). W and
    dW are fresh unless a network's ``net.W`` / ``net.dW`` views are given. Calling the object
    runs the GEMMs and returns (Z, dW, P); ``flops`` is their operation count.
    """

    def __init__(self, xp, sizes, B, dtype="float32", seed=0, order="C", W=None, dW=None):
        rng = xp.random.default_rng(seed)

        def randn(shape, scale=1.0):
            M = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
            return xp.asarray(M.astype(dtype), order=order)

        def empty(shape):
            return xp.empty(shape, dtype, order=order)

        pairs = list(zip(sizes[:-1], sizes[1:]))
        self.xp = xp
        self.W = list(W) if W is not None else [randn((o, i), 1 / np.sqrt(i)) for i, o in pairs]
        self.dW = list(dW) if dW is not None else [empty(w.shape) for w in self.W]
        self.A = [randn((n, B)) for n in sizes[:-1]]
        self.D = [randn((n, B), 1 / B) for n in sizes[1:]]
        self.Z = [empty((n, B)) for n in sizes[1:]]
        self.P = [empty((n, B)) for n in sizes[1:-1]]
        self.flops = gemm_flops(sizes, B)

    def __call__(self):
        matmul, W, A, D = self.xp.matmul, self.W, self.A, self.D
        for l in range(len(W)):
            matmul(W[l], A[l], out=self.Z[l])
        for l in range(len(W) - 1, -1, -1):
            matmul(D[l], A[l].T, out=self.dW[l])
            if l:
                matmul(W[l].T, D[l], out=self.P[l - 1])
        return self.Z, self.dW, self.P


class GpudnnStep:
    """``net.train_step(A0, Y, SGD(lr, momentum))`` on one fixed batch; returns the loss.

    ``precision`` is Network's (None, "float16", ...); the batch lives on the network's device.
    ``thin=False`` (CuPy): the layer below a thin one as cuBLAS's two products, then
    act_backward (not the one kernel of gpudnn.kernels.cuda_thin).
    """

    def __init__(self, sizes, B, backend="numpy", dtype="float32", precision=None, momentum=0.0,
                 lr=1e-3, seed=0, thin=True):
        output, loss = head(sizes)
        self.net = gpudnn.Network(sizes, activation="relu", output=output, loss=loss, dtype=dtype,
                                  precision=precision, backend=backend, seed=seed)
        if not thin:
            from gpudnn.kernels.cuda import CupyKernels

            self.net.kernels = CupyKernels(self.net.xp, thin=False)
        self.A0, self.Y = batch(self.net.xp, sizes, B, self.net.dtype, seed)
        self.opt = gpudnn.optim.SGD(lr=lr, momentum=momentum)

    def __call__(self):
        return self.net.train_step(self.A0, self.Y, self.opt)


class TorchStep:
    """The same step in PyTorch: zero_grad (set_to_none, the default), forward, loss, backward,
    SGD step, loss.item().

    nn.Sequential of Linear + ReLU (none after the last Linear), CrossEntropyLoss on the
    logits (BCEWithLogitsLoss for one output unit), torch.optim.SGD(lr, momentum) with
    ``impl`` "fused", "foreach" or None (PyTorch's default). ``compile``: None for eager, or
    torch.compile's keyword arguments ({"mode": "reduce-overhead"}, {"backend": "eager"}).
    Inputs are rows X: (B, n_0), PyTorch's layout.
    """

    def __init__(self, sizes, B, device="cpu", momentum=0.0, lr=1e-3, impl=None, compile=None, seed=0):
        import torch

        torch.manual_seed(seed)
        layers = []
        for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(torch.nn.Linear(n_in, n_out))
            if l < len(sizes) - 2:
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers).to(device)
        self.forward = self.model if compile is None else torch.compile(self.model, **compile)
        # zero_grad() drops the gradients (set_to_none=True, PyTorch's default since 2.0):
        # backward then hands its fresh gradients over, where kept .grad tensors cost a memset
        # and an accumulating add per step (3% of the 1024-4096-4096-1024 step and 12% of the
        # 64-128-10 one on a 2-core CPU; gpudnn's backward writes its gradients once, as here).
        # mode="reduce-overhead" needs it too: kept .grad tensors would be read after the next
        # CUDA graph replay overwrote them; that mode also marks each step's beginning
        self._mark_step = None
        if compile and compile.get("mode") == "reduce-overhead":
            self._mark_step = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)
        self.X = torch.randn(B, sizes[0], device=device)
        y = torch.randint(0, max(sizes[-1], 2), (B,), device=device)
        if sizes[-1] == 1:
            self.y, self.loss_fn = y.float().unsqueeze(1), torch.nn.BCEWithLogitsLoss()
        else:
            self.y, self.loss_fn = y, torch.nn.CrossEntropyLoss()
        flags = {impl: True} if impl else {}
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum, **flags)

    def __call__(self):
        if self._mark_step is not None:
            self._mark_step()
        self.opt.zero_grad()  # set_to_none=True
        loss = self.loss_fn(self.forward(self.X), self.y)
        loss.backward()
        self.opt.step()
        return loss.item()


def available(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def machine():
    """The host: Python, NumPy, the CPU, its BLAS and their threads (threadpoolctl), torch and
    its threads, scikit-learn, Numba, gpudnn's CPU kernels, and the environment variables
    that change threads, BLAS kernels or TF32."""
    info = {"python": platform.python_version(), "numpy": np.__version__,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for p in threadpool_info() if p["user_api"] == "blas"
        ]
    except ImportError:
        pass
    if available("torch"):
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()  # intra-op: its GEMMs and kernels
        info["torch_blas"] = "MKL" if torch.backends.mkl.is_available() else "not MKL"
    for name in ("sklearn", "numba"):
        if available(name):
            info[name] = __import__(name).__version__
    # what sets threads, BLAS kernels or TF32 from outside (CUPY_TF32=1 would make CuPy's
    # float32 GEMMs, the GEMM floor's among them, TF32 ones)
    for var in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS", "CUPY_TF32", "NVIDIA_TF32_OVERRIDE"):
        info[var] = os.environ.get(var)
    info["gpudnn_kernels"] = gpudnn.Network([2, 2], backend="numpy").kernels.name
    return info


def source_digest(root=None):
    """BLAKE2b-256 of the gpudnn package's Python and CUDA sources (each file's path and
    bytes, in path order): which code a run measured, where the git HEAD a copied working
    tree carries can be stale (the H200 run's was). Compare with the digest of a commit's
    checkout."""
    import hashlib

    root = root or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")  # the repository
    h = hashlib.blake2b(digest_size=32)
    for folder, dirs, files in sorted(os.walk(os.path.join(root, "gpudnn"))):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                h.update(os.path.relpath(path, root).replace(os.sep, "/").encode() + b"\0")
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


def environment(cupy):
    """The card, driver, CUDA runtime, CuPy, PyTorch, Python and host."""
    env = machine()
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        env["gpudnn_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                              cwd=here, timeout=10).stdout.strip()
        env["gpudnn_tree_dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--", "gpudnn"],
                                                       capture_output=True, text=True, cwd=os.path.join(here, ".."),
                                                       timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    env["gpudnn_source_blake2b"] = source_digest()
    if cupy is not None:
        rt = cupy.cuda.runtime
        props = rt.getDeviceProperties(0)
        name = props["name"]
        env.update({
            "device": name.decode() if isinstance(name, bytes) else name,
            "compute_capability": f"{props['major']}.{props['minor']}",
            "memory_GiB": round(props["totalGlobalMem"] / 2**30, 2),
            "multiprocessors": props.get("multiProcessorCount"),
            "driver": rt.driverGetVersion(), "runtime": rt.runtimeGetVersion(), "cupy": cupy.__version__,
        })
        try:
            q = "name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu,memory.used"
            env["nvidia_smi"] = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv"],
                                               capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            env["nvidia_smi"] = f"not run: {exc}"
    try:
        import torch

        env["torch_cuda"] = torch.version.cuda
        env["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    env["python"] = platform.python_version()
    return env
