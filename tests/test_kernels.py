"""Every fused kernel equals its plain twin (gpudnn.kernels.generic) on the same buffers:
Numba's on the NumPy backend; CUDA's on the CuPy backend (a GPU machine) and, on every
machine with a C++ compiler, CUDA's source run on the CPU by tests/cuda_emulator.py
(through CupyKernels' own launch code, with each argument's C type checked)."""

import numpy as np
import pytest

from gpudnn.activations import ACTIVATIONS
from gpudnn.backend import get_backend
from gpudnn.errors import ConfigError
from gpudnn.kernels import get_kernels, numba_status
from gpudnn.kernels.generic import GenericKernels
from gpudnn.kernels import cuda
from gpudnn.kernels.cuda import CupyKernels
from gpudnn.losses import LOSSES

from conftest import CUPY_MARKS
from helpers import emulated_cuda_kernels, emulated_cupy
from nvrtc import assert_compiles

HIDDEN = ["sigmoid", "tanh", "relu", "leaky_relu", "identity"]
SHAPES = [(1, 1), (3, 1), (1, 7), (17, 33), (128, 256), (3, 5000)]  # (3, 5000): CUDA splits rows
TOL = {"float32": dict(rtol=2e-6, atol=2e-6), "float64": dict(rtol=1e-13, atol=1e-14),
       # float16 (mixed precision's hidden layers): the fused kernels round once, the twin
       # after each NumPy operation: a few float16 ulps (2^-10) apart
       "float16": dict(rtol=4e-3, atol=2e-3)}
HIDDEN_DTYPES = ["float32", "float64", "float16"]


@pytest.fixture(params=["numba", "cuda-emulated", pytest.param("cuda", marks=CUPY_MARKS)])
def fused(request):
    """Which fused set: Numba's, CUDA's emulated on the CPU, CUDA's on a GPU."""
    return request.param


@pytest.fixture
def backend(fused):
    """The backend the fused set runs on (this module's cases are per fused set)."""
    return get_backend("cupy" if fused == "cuda" else "numpy")


@pytest.fixture
def pair(fused, backend):
    """(generic twin, fused set) on ``backend``."""
    if fused == "numba" and not numba_status()[0]:
        pytest.skip(numba_status()[1])
    if fused == "cuda-emulated":
        return GenericKernels(np), emulated_cuda_kernels()
    return GenericKernels(backend.xp), get_kernels(fused, backend)


def has_build(pair, dtype):
    """Skip float16 for Numba's set: it has no float16 build (mixed precision runs the
    generic twin on the CPU); CUDA's has one."""
    if dtype == "float16" and pair[1].name == "numba":
        pytest.skip("the Numba kernels have no float16 build: nothing fused to compare")


def fused_forward(pair, act):
    """Skip where this set keeps the generic forward for ``act`` (Numba: sigmoid, tanh)."""
    if pair[1].name != "numba":
        return
    from gpudnn.kernels.cpu import FUSED_FORWARD  # needs Numba, which the fixture checked

    if act not in FUSED_FORWARD:
        pytest.skip(f"Numba keeps NumPy's SIMD forward for {act}: nothing fused to compare")


def both(pair, backend, fn, *host_arrays, forbid_fallback=True):
    """Run fn(kernel_set, *device copies) with the twin, then with the fused set while the
    twin's methods raise (so a silent fallback cannot pass for the fused path); return the
    host copies of the arrays after each. Copies keep the memory order (order="K")."""
    results = []
    for i, k in enumerate(pair):
        dev = [backend.asarray(np.array(a, order="K", copy=True)) for a in host_arrays]
        with pytest.MonkeyPatch.context() as mp:
            if i == 1 and forbid_fallback:
                for name in ("bias_act", "act_backward", "output_loss_delta"):
                    mp.setattr(GenericKernels, name, _fell_back)
            out = fn(k, *dev)
        results.append(([backend.to_numpy(a) for a in dev], out))
    return results


def _fell_back(*args, **kwargs):
    raise AssertionError("the fused set fell back to the generic twin")


@pytest.mark.parametrize("dtype", HIDDEN_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("act", HIDDEN)
def test_bias_act_equals_twin(pair, backend, rng, act, shape, dtype):
    has_build(pair, dtype)
    fused_forward(pair, act)
    Z = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal((shape[0], 1)).astype(dtype)
    (r1, _), (r2, _) = both(pair, backend, lambda k, Z, b, t: k.bias_act(Z, b, ACTIVATIONS[act], t),
                            Z, b, np.empty_like(Z))
    np.testing.assert_allclose(r2[0], r1[0], **TOL[dtype])


@pytest.mark.parametrize("dtype", HIDDEN_DTYPES)
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "identity"])
def test_bias_act_edge_values_equal_twin(pair, backend, act, dtype):
    """±inf, NaN and ±0 as np.maximum takes them: relu(−inf) = 0 (z·0 would make it NaN,
    which a float16 overflow to −inf would turn into a skipped step forever), NaN stays NaN."""
    has_build(pair, dtype)
    fused_forward(pair, act)
    Z = np.array([[-np.inf, np.inf, np.nan, -0.0, 0.0, -1.5, 2.0]], dtype)
    b = np.zeros((1, 1), dtype)
    (r1, _), (r2, _) = both(pair, backend, lambda k, Z, b, t: k.bias_act(Z, b, ACTIVATIONS[act], t),
                            Z, b, np.empty_like(Z))
    np.testing.assert_array_equal(r2[0], r1[0])  # NaN where NaN: assert_array_equal's rule


@pytest.mark.parametrize("dtype", HIDDEN_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("act", HIDDEN)
def test_act_backward_equals_twin(pair, backend, rng, act, shape, dtype):
    has_build(pair, dtype)
    D = rng.standard_normal(shape).astype(dtype)
    A = rng.standard_normal(shape).astype(dtype)
    ACTIVATIONS[act].forward(A, A, np.empty_like(A))  # a real σ(z) output
    db = np.empty((shape[0], 1), dtype)
    (r1, _), (r2, _) = both(
        pair, backend, lambda k, d, a, t, db: k.act_backward(d, a, ACTIVATIONS[act], t, db),
        D, A, np.empty_like(A), db,
    )
    np.testing.assert_allclose(r2[0], r1[0], **TOL[dtype])  # δ
    tol = {k: v * shape[1] for k, v in TOL[dtype].items()}
    np.testing.assert_allclose(r2[3], r1[3], **tol)  # db


def test_cuda_act_backward_splits_narrow_rows_over_blocks(rng):
    """A narrow layer with a long batch: each row's columns spread over several blocks whose
    sums row_sums adds in a fixed order (emulated; the CuPy case of the twin test above runs
    the same shapes on a GPU)."""
    k = emulated_cuda_kernels()
    f64 = np.dtype(np.float64)
    assert k._split(64, 65536, f64) == 9 and k._split(4096, 8192, f64) == 1 and k._split(3, 5000, f64) == 5
    D, A = rng.standard_normal((3, 5000)), np.abs(rng.standard_normal((3, 5000)))
    db, db0, d0 = np.empty((3, 1)), np.empty((3, 1)), D.copy()
    k.act_backward(D, A, ACTIVATIONS["relu"], None, db)
    GenericKernels(np).act_backward(d0, A, ACTIVATIONS["relu"], np.empty_like(A), db0)
    assert k._module.get_function("row_sums_f64").launches == 1
    np.testing.assert_array_equal(D, d0)
    np.testing.assert_allclose(db, db0, rtol=1e-13)


@pytest.mark.parametrize("dtype", ["float64", "float16"])
@pytest.mark.parametrize("out", ["new", "over_delta", "over_A"])
def test_cuda_act_backward_takes_several_groups_per_thread(rng, out, dtype):
    """One block per row (as the wide layers get) and rows longer than a block's pass of
    THREADS x UNROLL columns (twice UNROLL in float16): each thread loads and stores several
    groups, the last one cut short; the result is the twin's, in place or not, and bias_act's
    too (emulated)."""
    k = emulated_cuda_kernels()
    k._target_blocks = 1
    span = cuda.SPAN * (2 if dtype == "float16" else 1)
    shape = (5, 2 * span + 452)
    assert k._split(*shape, np.dtype(dtype)) == 1 and k._spans[np.dtype(dtype).char] == span
    D, A = rng.standard_normal(shape).astype(dtype), np.abs(rng.standard_normal(shape)).astype(dtype)
    d0, db0 = D.copy(), np.empty((5, 1), dtype)
    GenericKernels(np).act_backward(d0, A, ACTIVATIONS["tanh"], np.empty_like(A), db0)
    db = np.empty((5, 1), dtype)
    b, z0 = rng.standard_normal((5, 1)).astype(dtype), A.copy()
    dst = {"new": np.empty_like(D), "over_delta": D, "over_A": A}[out]
    assert k.act_backward(D, A, ACTIVATIONS["tanh"], None, db, out=dst) is dst
    if dtype == "float64":
        np.testing.assert_array_equal(dst, d0)
        np.testing.assert_allclose(db, db0, rtol=1e-13)
    else:  # the twin computes in float16, the kernel in float with one rounding
        np.testing.assert_allclose(dst.astype(float), d0.astype(float), rtol=2e-3, atol=1e-3)
        np.testing.assert_allclose(db.astype(float), db0.astype(float), rtol=2e-3, atol=0.5)
    z, z_twin = z0.copy(), z0.copy()
    k.bias_act(z, b, ACTIVATIONS["tanh"], None)
    GenericKernels(np).bias_act(z_twin, b, ACTIVATIONS["tanh"], np.empty_like(z0))
    np.testing.assert_allclose(z.astype(float), z_twin.astype(float), rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize("threads,unroll", [(32, 1), (64, 3), (128, 8), (1024, 2)], ids=str)
def test_cuda_launch_shapes_give_the_same_results(rng, threads, unroll):
    """CupyKernels(xp, threads, unroll), the launch shapes gpu_bench's tune part times: the
    default shape's σ(z + b) and δ ⊙ σ'(a) bit for bit, with each row one block and split
    over blocks; db to rounding (its sum's order is the shape's); the twin's to 1e-13 (emulated)."""
    xp = emulated_cupy()
    k, default = CupyKernels(xp, threads=threads, unroll=unroll), CupyKernels(xp)
    assert k.span == threads * unroll
    for shape, blocks in [((4, 3 * k.span + 5), 1), ((3, 2 * k.span + 7), None)]:
        k._target_blocks = blocks or 100  # 1: each row one block; else 2 to 3 blocks a row
        assert (k._split(*shape, np.dtype(np.float64)) == 1) == (blocks == 1)
        Z0, b, D0 = rng.standard_normal(shape), rng.standard_normal((shape[0], 1)), rng.standard_normal(shape)
        out = {}
        for name, kern in [("variant", k), ("default", default), ("twin", GenericKernels(np))]:
            Z, D, db = Z0.copy(), D0.copy(), np.empty((shape[0], 1))
            tmp = np.empty_like(Z)
            kern.bias_act(Z, b, ACTIVATIONS["tanh"], tmp)
            assert kern.act_backward(D, Z, ACTIVATIONS["tanh"], tmp, db) is D  # in place over δ
            out[name] = Z, D, db
        for i in range(2):  # a, δ
            np.testing.assert_array_equal(out["variant"][i], out["default"][i])
            np.testing.assert_allclose(out["variant"][i], out["twin"][i], rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(out["variant"][2], out["twin"][2], rtol=1e-12)


class _NoReduction(np.ndarray):
    """An array whose CuPy-style reductions are refused: inside a CUDA graph they would
    allocate (CUB's scratch and output) memory the graph keeps using."""

    def sum(self, *args, **kwargs):
        raise AssertionError("a capture=True kernel set called .sum()")


@pytest.mark.parametrize("capture", [True, False], ids=["capture", "direct"])
@pytest.mark.parametrize("B", [5, 3000])  # shorter and longer than a block of the sums kernel
@pytest.mark.parametrize("output,loss", [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"),
                                         ("tanh", "mse")])
def test_output_sums_without_reductions(rng, output, loss, B, capture):
    """db^L and the loss are summed by CupyKernels' own kernel, never by a CuPy reduction,
    and equal the twin's. capture=True, what CapturedStep's graph holds: the loss into one
    buffer, made on the first call (the warm-up) and reused; otherwise a new array each call,
    which a caller may keep (emulated)."""
    xp = emulated_cupy()

    class NoReductionXp(type(xp)):
        def empty(self, *args, **kwargs):
            return np.empty(*args, **kwargs).view(_NoReduction)

    k = CupyKernels(NoReductionXp(), capture=capture)
    n = 4 if output != "sigmoid" else 1
    Z = rng.standard_normal((n, B))
    b = rng.standard_normal((n, 1))
    Y = np.ascontiguousarray(np.eye(n)[:, rng.integers(0, n, B)]) if loss == "cross_entropy" else rng.uniform(0, 1, (n, B))
    twin = GenericKernels(np)
    out, totals = {}, {}
    for name, kern in [("twin", twin), ("first", k), ("again", k)]:
        Zc, A, delta, db = Z.copy(), np.empty((n, B)), np.empty((n, B)), np.empty((n, 1))
        if name != "twin":
            Zc, A, delta, db = (x.view(_NoReduction) for x in (Zc, A, delta, db))
        totals[name] = kern.output_loss_delta(Zc, b, A, Y, delta, db, ACTIVATIONS[output], LOSSES[loss],
                                              np.empty((n, B)), np.empty((n, B)))
        out[name] = float(totals[name]), np.asarray(delta), np.asarray(db)
    for name in ("first", "again"):
        assert out[name][0] == pytest.approx(out["twin"][0], rel=1e-12)
        np.testing.assert_allclose(out[name][1], out["twin"][1], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(out[name][2], out["twin"][2], rtol=1e-10, atol=1e-13)
    assert out["first"][0] == out["again"][0] and totals["first"].shape == ()
    if capture:  # the same buffer, reused
        assert totals["first"] is totals["again"] is k._total
    else:
        assert totals["first"] is not totals["again"] and k._total is None


@pytest.mark.parametrize("bad", [dict(threads=48), dict(threads=16), dict(threads=2048), dict(threads=True),
                                 dict(unroll=0), dict(unroll=17), dict(unroll=2.0)], ids=str)
def test_cuda_launch_shape_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        CupyKernels(np, **bad)


@pytest.mark.parametrize("dtype", HIDDEN_DTYPES)
@pytest.mark.parametrize("act", HIDDEN)
def test_act_backward_written_over_A_equals_twin(pair, backend, rng, act, dtype):
    """out=A, as the backward pass writes δ^l over a^l: each element read before written."""
    has_build(pair, dtype)
    D = rng.standard_normal((17, 33)).astype(dtype)
    A = rng.standard_normal((17, 33)).astype(dtype)
    ACTIVATIONS[act].forward(A, A, np.empty_like(A))
    db = np.empty((17, 1), dtype)
    (r1, o1), (r2, o2) = both(
        pair, backend, lambda k, d, a, t, db: k.act_backward(d, a, ACTIVATIONS[act], t, db, out=a) is a,
        D, A, np.empty_like(A), db,
    )
    assert o1 and o2  # both return the array written, a's
    np.testing.assert_allclose(r2[1], r1[1], **TOL[dtype])  # δ, where a was
    np.testing.assert_allclose(r2[3], r1[3], **{k: v * 33 for k, v in TOL[dtype].items()})  # db


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (10, 256), (3, 5), (300, 7)], ids=str)
@pytest.mark.parametrize("scale", [1.0, 1e4], ids=["normal", "extreme"])
@pytest.mark.parametrize("output,loss", [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"),
                                         ("identity", "mse"), ("sigmoid", "mse"), ("tanh", "mse")])
def test_output_loss_delta_equals_twin(pair, backend, rng, output, loss, shape, dtype, scale):
    """The fused pairs: softmax + cross-entropy (Numba, CUDA); sigmoid + binary cross-entropy
    and any σ + mse (CUDA)."""
    if output != "softmax" and pair[1].name == "numba":
        pytest.skip("Numba fuses softmax + cross-entropy only: nothing fused to compare")
    n, B = shape
    if isinstance(pair[1], CupyKernels):  # the kernels at every width, whatever OUTPUT_UNITS is
        pair[1].output_units = n          # (the bound: test_a_wide_output_layer_runs_the_twin_unless_captured)
    Z = (rng.standard_normal(shape) * scale).astype(dtype)
    b = rng.standard_normal((n, 1)).astype(dtype)
    if loss == "cross_entropy":
        Y = np.ascontiguousarray(np.eye(n, dtype=dtype)[:, rng.integers(0, n, B)])  # as fit's buffers
    else:
        Y = rng.uniform(0, 1, shape).astype(dtype)
    E = np.empty_like(Z)

    def run(k, Z, b, A, Y, delta, db, t1, t2):
        return float(k.output_loss_delta(Z, b, A, Y, delta, db, ACTIVATIONS[output], LOSSES[loss], t1, t2))

    (r1, t1), (r2, t2) = both(pair, backend, run, Z, b, E, Y, E, np.empty((n, 1), dtype), E, E)
    assert np.isfinite(t2)
    assert t2 == pytest.approx(t1, rel=TOL[dtype]["rtol"] * 10, abs=TOL[dtype]["atol"] * B * n * scale)
    for i in (0, 2, 4, 5):  # the logits Z + b, a^L, δ^L, db
        np.testing.assert_allclose(r2[i], r1[i], rtol=TOL[dtype]["rtol"] * 4,
                                   atol=TOL[dtype]["atol"] * max(n, B))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(3, 5), (10, 256)], ids=str)
def test_softmax_cross_entropy_with_soft_targets_equals_twin(pair, backend, rng, shape, dtype):
    """Targets that are not one-hot (columns summing to anything): δ^L = (a Σ_i y_i − y)/B."""
    n, B = shape
    Z = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal((n, 1)).astype(dtype)
    Y = rng.uniform(0, 1, shape).astype(dtype)
    E = np.empty_like(Z)

    def run(k, Z, b, A, Y, delta, db, t1, t2):
        return float(k.output_loss_delta(Z, b, A, Y, delta, db, ACTIVATIONS["softmax"],
                                         LOSSES["cross_entropy"], t1, t2))

    (r1, t1), (r2, t2) = both(pair, backend, run, Z, b, E, Y, E, np.empty((n, 1), dtype), E, E)
    assert t2 == pytest.approx(t1, rel=TOL[dtype]["rtol"] * 10)
    A = r1[2]
    want = (A * Y.sum(axis=0) - Y) / B  # the twin's δ^L, from its own a^L
    np.testing.assert_allclose(r1[4], want, rtol=TOL[dtype]["rtol"] * 4, atol=TOL[dtype]["atol"])
    for i in (2, 4, 5):  # a^L, δ^L, db
        np.testing.assert_allclose(r2[i], r1[i], rtol=TOL[dtype]["rtol"] * 4, atol=TOL[dtype]["atol"] * max(n, B))


def test_non_contiguous_buffers_fall_back_to_the_twin(pair, backend, rng):
    Z = np.asfortranarray(rng.standard_normal((6, 4)))  # F-ordered: not C-contiguous
    b = rng.standard_normal((6, 1))

    def run(k, Z, b, t):
        assert not Z.flags.c_contiguous
        return k.bias_act(Z, b, ACTIVATIONS["relu"], t)

    (r1, _), (r2, _) = both(pair, backend, run, Z, b, np.empty_like(Z), forbid_fallback=False)
    np.testing.assert_array_equal(r1[0], r2[0])


def test_kernel_selection():
    b = get_backend("numpy")
    assert get_kernels("auto", b).name == ("numba" if numba_status()[0] else "generic")
    assert get_kernels("generic", b).name == "generic"
    with pytest.raises(ConfigError, match="kernels must be one of"):
        get_kernels("fastest", b)
    with pytest.raises(ConfigError, match="does not run on the numpy backend"):
        get_kernels("cuda", b)


@pytest.mark.parametrize("shape", [None, (128, 1), (512, 8), (1024, 16)], ids=str)
def test_cuda_source_compiles_with_nvrtc(shape):
    """The CUDA kernels compile and assemble for Hopper (sm_90) with no GPU present: NVRTC
    to a cubin runs ptxas too, so the inline PTX (float16 conversions) is checked; with the
    source's own launch shape and with the -DBLOCK= -DUNROLL= a tuned CupyKernels passes
    (the launch bound keeps even 1024 x 16 within a block's registers, by spilling)."""
    from gpudnn.kernels.cuda import SOURCE

    options = ("--std=c++14",) + (() if shape is None else (f"-DBLOCK={shape[0]}", f"-DUNROLL={shape[1]}"))
    assert_compiles(SOURCE, ("bias_act_f32", "act_backward_f64", "softmax_xent_f32", "bias_act_f16",
                             "act_backward_f16", "row_sums_f16", "act_loss_f32", "act_loss_f64",
                             "output_sums_f32", "output_totals_f64", "unscale_f32", "unscale_f64"),
                    "gpudnn_kernels.cu", options)

def test_arrays_of_mixed_dtypes_take_the_generic_twins(rng):
    """A CUDA kernel is built for one dtype: a float64 b (or db) beside float32 arrays would
    be read as float32 bits. Mixed dtypes go to the generic twins."""
    k = emulated_cuda_kernels()
    relu = ACTIVATIONS["relu"]
    Z = rng.normal(size=(3, 40)).astype(np.float32)
    b = rng.normal(size=(3, 1))  # float64
    want = GenericKernels(np).bias_act(Z.copy(), b, relu, np.empty_like(Z))
    np.testing.assert_array_equal(k.bias_act(Z.copy(), b, relu, np.empty_like(Z)), want)
    A, delta = np.maximum(Z, 0), rng.normal(size=(3, 40)).astype(np.float32)
    db, db_want = np.empty((3, 1)), np.empty((3, 1))  # float64
    out = k.act_backward(delta.copy(), A, relu, np.empty_like(Z), db)
    want = GenericKernels(np).act_backward(delta.copy(), A, relu, np.empty_like(Z), db_want)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(db, db_want)


def test_benchmark_guard_fails_a_fused_case_that_falls_back_to_its_twin(monkeypatch, rng):
    """benchmarks' ``kernel_set``: CUDA's output kernel given an F-ordered Y (NumPy's
    ``eye(n)[:, labels]``) hands the call to its twin, and the guard fails the case; given a
    C-ordered Y it runs. float16, which the output kernel has no build for, is a fallback by
    design: C-ordered, it runs under the guard."""
    from benchmarks._util import guard_twins

    k = guard_twins(emulated_cuda_kernels(), monkeypatch)
    n, B = 10, 64
    labels = rng.integers(0, n, B)

    def run(Y):
        Z, b = rng.standard_normal((n, B)).astype(Y.dtype), np.zeros((n, 1), Y.dtype)
        E = lambda: np.empty_like(Z)  # noqa: E731
        return float(k.output_loss_delta(Z, b, E(), Y, E(), np.empty((n, 1), Y.dtype),
                                         ACTIVATIONS["softmax"], LOSSES["cross_entropy"], E(), E()))

    for dtype in (np.float32, np.float16):
        assert np.isfinite(run(np.ascontiguousarray(np.eye(n, dtype=dtype)[:, labels])))
    with pytest.raises(AssertionError, match="output_loss_delta fell back to its generic twin"):
        run(np.eye(n, dtype=np.float32)[:, labels])


def test_a_wide_output_layer_runs_the_twin_unless_captured(rng):
    """The fused output kernels run a column's units in one thread: an output layer wider
    than ``output_units`` runs the generic twin (same loss and δ^L), a narrower one the
    kernels; a graph's kernel set (``capture``) keeps the kernels at any width (the twin's
    new arrays each call would not survive a replay)."""
    from helpers import launched

    n, B = 6, 40
    Z, Y = rng.standard_normal((n, B)).astype(np.float32), np.eye(n, dtype=np.float32)[:, rng.integers(0, n, B)]
    Y, b = np.ascontiguousarray(Y), np.zeros((n, 1), np.float32)

    def run(k):
        outs = [np.empty_like(Z) for _ in range(4)]
        total = k.output_loss_delta(Z.copy(), b, outs[0], Y, outs[1], np.empty((n, 1), np.float32),
                                    ACTIVATIONS["softmax"], LOSSES["cross_entropy"], outs[2], outs[3])
        return float(total), outs[1], launched(k).get("softmax_xent_f32", 0) if isinstance(k, CupyKernels) else 0

    want, want_delta, _ = run(GenericKernels(np))
    cases = {(n, False): 1, (n - 1, False): 0, (n - 1, True): 1}
    for (units, capture), fused in cases.items():
        got, delta, launches = run(emulated_cuda_kernels(output_units=units, capture=capture))
        assert launches == fused, (units, capture)
        assert got == pytest.approx(want, rel=1e-6)
        np.testing.assert_allclose(delta, want_delta, rtol=1e-5, atol=1e-7)
    assert CupyKernels(emulated_cupy()).output_units == cuda.OUTPUT_UNITS
    for bad in (0, None, 2.0):
        with pytest.raises(ValueError, match="output_units must be a positive int"):
            CupyKernels(emulated_cupy(), output_units=bad)
