"""scripts/gpu_bench.py --smoke: the GPU benchmark script runs whole on the CPU (NumPy backend,
PyTorch's CPU where installed) and writes one JSON in which every figure is a positive number
or the recorded reason it is missing, so the script cannot rot between GPU runs."""

import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

import gpudnn

from nvrtc import assert_compiles

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_bench.py"
spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
gpu_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_bench)

try:
    import torch  # noqa: F401

    HAS_TORCH = True
except ImportError:
    HAS_TORCH = False


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(the JSON, stdout) of one smoke run."""
    out = tmp_path_factory.mktemp("gpu_bench") / "smoke.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


def is_reason(x):
    return isinstance(x, str) and x.startswith(("skipped: ", "error: ")) and len(x) > len("skipped: ")


def walk(node, path="results"):
    """(path, key, value) of every entry of dicts below ``node`` and of lists' items."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", k, v
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield f"{path}[{i}]", None, v
            yield from walk(v, f"{path}[{i}]")


def positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_the_report_is_complete_and_error_free(smoke):
    report, stdout = smoke
    assert report["complete"] is True and report["smoke"] is True and report["backend"] == "numpy"
    assert report["errors"] == [], report["errors"]
    assert set(report["results"]) == set(gpu_bench.PARTS), (report["results"].keys(), report["skipped"])
    assert report["skipped"] == {}
    env = report["environment"]
    assert env["python"] and env["numpy"] and env["gpudnn_kernels"]
    assert report["peak"]["reason"]
    assert positive(report["elapsed_s"]) and positive(report["budget_s"])
    assert "| net @ batch (float32) |" in stdout and "largest batch" in stdout
    assert f"a simulated memory limit of {gpu_bench.SMOKE_MEMORY_LIMIT}" in stdout
    # no part failed quietly either: no error string among the figures, and gpudnn refuses
    # nothing but TF32 (a CPU has none)
    quiet = [(path, v) for path, _, v in walk(report["results"]) if isinstance(v, str)
             and (v.startswith("error: ") or ("refuses" in v and not path.startswith("results.tf32")))]
    assert quiet == [], quiet


def test_every_figure_is_a_positive_number_or_a_reason(smoke):
    report, _ = smoke
    figures = 0
    for path, key, value in walk(report["results"]):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert positive(value), f"{path} = {value!r} is not a positive number"
        if key is not None and key.endswith(gpu_bench.FIGURE) and not isinstance(value, dict):
            if isinstance(value, list):
                assert value and all(positive(v) for v in value), f"{path} = {value!r}"
            else:
                assert positive(value) or is_reason(value), f"{path} = {value!r}: neither a figure nor a reason"
            figures += 1
    assert figures > 100


def test_what_the_cpu_can_measure_is_measured(smoke):
    report, _ = smoke
    r = report["results"]
    torch_figure = positive if HAS_TORCH else is_reason
    assert [row["config"] for row in r["float32"]] == [gpu_bench.label(*c) for c in gpu_bench.SMOKE_CONFIGS]
    for row in r["float32"]:
        assert positive(row["gpudnn_ms"]) and positive(row["floor_ms"]) and positive(row["step_over_floor_x"])
        assert torch_figure(row["torch_eager_ms"]) and torch_figure(row["step_over_torch_x"])
        assert row["timings"]["gpudnn"]["reps"] >= 1 and len(row["timings"]["gpudnn"]["samples_ms"]) == 3
        assert positive(row["gpudnn_sync_end_ms"]) and row["step_over_sync_end_rounds"]["rounds"] == 3
    for row in r["float16"]["rows"]:
        assert positive(row["gpudnn_ms"]) and positive(row["floor_tflops"]) and is_reason(row["floor_peak_frac"])
    for row in r["tf32"]["rows"]:
        assert row["floor_ms"] == "skipped: TF32 GEMMs need CuPy on a GPU"
        assert positive(row["gpudnn_ms"]) or row["gpudnn_ms"].startswith("skipped: gpudnn refuses it")
    assert positive(r["launch"]["train_step_ms"]) and positive(r["launch"]["enqueue_no_readback_ms"])
    assert is_reason(r["launch"]["device_busy_ms"])
    runs = [(c, "float32") for c in gpu_bench.SMOKE_CONFIGS]
    runs += [(c, "float16") for c in gpu_bench.SMOKE_CONFIGS[:gpu_bench.BREAKDOWN_FLOAT16]]
    assert [(row["config"], row["precision"]) for row in r["breakdown"]] == [(gpu_bench.label(*c), p) for c, p in runs]
    for row, ((sizes, _), precision) in zip(r["breakdown"], runs):
        L = len(sizes) - 1
        gemms = {k: o for k, o in row["ops"].items() if k.split(" ")[0] in ("W", "Wᵀ", "δ")}
        assert sum(o["calls"] for o in gemms.values()) == 3 * L - 1, row["ops"]
        assert {"bias_act", "act_backward", "output_loss_delta", "optimizer.step"} <= set(row["ops"])
        if precision == "float16":  # the loss scaler's passes timed too
            assert {"loss_scaler.scale_delta", "loss_scaler.unscale"} <= set(row["ops"])
            assert positive(row["ops"]["loss_scaler.unscale"]["gbs"])
        assert all(positive(o["tflops"]) for o in gemms.values())
        assert all(positive(row["ops"][k]["gbs"]) for k in ("bias_act", "act_backward", "optimizer.step"))
        assert math.isclose(row["gemm_ms"], sum(o["ms"] for o in gemms.values()))
        assert math.isclose(row["gemm_ms"] + row["other_ops_ms"] + row["untimed_ms"], row["step_ms"])
        assert positive(row["step_no_marks_ms"]) and positive(row["floor_ms"])
    # the launch shapes of the fused kernels, through the CPU emulation of their CUDA source
    tune = r["tune"]
    assert tune["mismatches"] == [] and [row["shape"] for row in tune["shapes"]] == [
        f"{n} x {B}" for n, B in gpu_bench.SMOKE_TUNE_SHAPES]
    shapes = {f"{t}x{u}" for t in gpu_bench.SMOKE_TUNE_LAUNCH["threads"] for u in gpu_bench.SMOKE_TUNE_LAUNCH["unroll"]}
    for row in tune["shapes"]:
        for op in ("bias_act", "act_backward"):
            assert set(row[f"{op}_gbs"]) == shapes | {row["default"]} and row[f"{op}_best"] in shapes | {row["default"]}
            assert all(positive(v) for v in row[f"{op}_gbs"].values())
        assert positive(row["copy_gbs"])
    assert [row["blocks_per_row"] for row in tune["output_db"]] == [1, 3]  # (3, 500) and (1, 3000)
    assert all(positive(row["row_sum_ms"]) and float(row["max_abs_diff"]) < 1e-4 for row in tune["output_db"])
    assert [row["shape"] for row in tune["output_width"]] == [f"{n} x {B}" for n, B in gpu_bench.SMOKE_OUTPUT_WIDTHS]
    assert all(positive(row["fused_ms"]) and positive(row["generic_ms"]) and row["loss_rel_diff"] < 1e-5
               for row in tune["output_width"])
    limit = gpu_bench.SMOKE_MEMORY_LIMIT
    for name in ("gpudnn", "torch_eager") if HAS_TORCH else ("gpudnn",):
        search = r["max_batch"][name]
        assert search["converged"] and 0.95 * limit <= search["largest_batch"] <= limit < search["first_failing_batch"]
        assert search["out_of_memory"].startswith("MemoryError: simulated")
    for region in r["graphs"]["regions"].values():
        assert positive(region["direct_ms"]) and is_reason(region["graph_ms"])
    # the whole-step study: the tiled GEMM (its CUDA source emulated on the CPU) inside the
    # small and the narrow net's steps, every product through it, θ and ∂J/∂θ as np.matmul's
    whole = r["graphs"]["whole_step"]
    assert [row["config"] for row in whole] == [gpu_bench.label(*gpu_bench.SMOKE_CONFIGS[i])
                                                for i in (gpu_bench.SMALL, gpu_bench.NARROW)]
    for row, i in zip(whole, (gpu_bench.SMALL, gpu_bench.NARROW)):
        L = len(gpu_bench.SMOKE_CONFIGS[i][0]) - 1
        assert positive(row["direct_cublas_ms"]) and positive(row["direct_tiled_ms"]), row
        assert positive(row["train_step_tiled_ms"]) and row["tiled_gemms_per_step"] == 3 * L - 1
        assert row["tiled_matches_cublas"] is True and float(row["tiled_vs_cublas_max_rel_diff"]) < 1e-4
        assert row["inputs_equal"] is True and float(row["cublas_stream_vs_null_max_rel_diff"]) == 0
        for tensor in row["grads_vs_float64"].values():  # one step in: float32 rounding, both ways
            assert float(tensor["tiled"]) < 1e-5 and float(tensor["cublas"]) < 1e-5, row["grads_vs_float64"]
        assert row["products"] and all(positive(p["tiled_ms"]) and positive(p["cublas_ms"]) for p in row["products"])
        assert all(p["tiled_2_blocks_equal"] is True and positive(p["tiled_2_blocks_ms"]) for p in row["products"])
        assert is_reason(row["graph_ms"]) and is_reason(row["graph_with_loss_ms"])
    if HAS_TORCH:
        compiled = {(row["config"], row["mode"]): row for row in r["compile"]}
        assert len(compiled) == 2 * len(gpu_bench.SMOKE_CONFIGS)
        for (config, mode), row in compiled.items():
            assert positive(row["step_ms"]) if mode == "default" else is_reason(row["step_ms"]), (config, mode)


@pytest.mark.parametrize("low_memory", [False, True])
def test_op_timeline_names_each_product_by_its_role(low_memory):
    """OpTimeline times every GEMM of a step under the seed's name for it (W a forward, δ aᵀ for
    ∂J/∂W, Wᵀ δ for δ^l; low_memory's row blocks of Wᵀ δ too) and leaves the step unchanged."""
    import numpy as np

    from benchmarks.contenders import GpudnnStep
    from benchmarks.timing import HostMarks, OpTimeline

    timed, plain = (GpudnnStep([6, 16, 8, 3], 32, momentum=0.9) for _ in range(2))
    if low_memory:
        for s in (timed, plain):
            s.net = gpudnn.Network([6, 16, 8, 3], seed=0, low_memory=True)
    row = OpTimeline(timed.net, timed.opt, timed.A0, timed.Y, HostMarks()).run(3, warmup=1)
    for _ in range(4):
        plain()
    np.testing.assert_array_equal(timed.net.params, plain.net.params)
    assert "step" not in vars(timed.opt) and type(timed.net.kernels).__name__ != "_TimedKernels"
    # low_memory: (W^l)ᵀ δ^{l+1} in blocks of R = 16 / 8 rows (an eighth of the widest layer)
    R = 2 if low_memory else None
    want = {"W a 16x6·6x32": 1, "W a 8x16·16x32": 1, "W a 3x8·8x32": 1, "δ aᵀ 3x32·32x8": 1,
            "δ aᵀ 8x32·32x16": 1, "δ aᵀ 16x32·32x6": 1,
            f"Wᵀ δ {R or 8}x3·3x32": 8 // (R or 8), f"Wᵀ δ {R or 16}x8·8x32": 16 // (R or 16)}
    assert {k: o["calls"] for k, o in row["ops"].items() if k[0] in "Wδ"} == want
    assert row["ops"]["act_backward"]["calls"] == (12 if low_memory else 2)
    assert row["ops"]["optimizer.step"]["calls"] == 1
    for k, o in row["ops"].items():  # each GEMM's rate is its 2mkn flops per call over its time
        if k[0] in "Wδ":
            left, right = k.split(" ")[-1].split("·")  # "16x6·6x32": (m x k)·(k x n)
            (m, kk), n = map(int, left.split("x")), int(right.split("x")[1])
            assert math.isclose(o["tflops"] * o["ms"] / 1e3, 2 * m * kk * n * o["calls"] / 1e12, rel_tol=1e-9)


def test_op_timeline_counts_an_op_inside_another_as_the_outer_ones():
    """A timed op called inside another (the loss scaler's unscale calls the kernel set's)
    is recorded once, as the outer op: its time is not counted twice; an error inside leaves
    the next op timed again."""
    from benchmarks.timing import HostMarks, OpTimeline

    line = OpTimeline(None, None, None, None, HostMarks())
    inner = line.timed("kernels.unscale", lambda: None)
    outer = line.timed("loss_scaler.unscale", lambda: inner())
    outer()
    inner()
    assert [r[0] for r in line._records] == ["loss_scaler.unscale", "kernels.unscale"]

    def boom():
        raise RuntimeError("inside")

    with pytest.raises(RuntimeError):
        line.timed("failing", lambda: (inner(), boom()))()
    inner()
    assert [r[0] for r in line._records][-1] == "kernels.unscale" and len(line._records) == 3


def test_cupy_marks_reuse_their_events(monkeypatch):
    """CupyMarks (the GPU's marks) against a stand-in for cupy.cuda: events are recorded in
    order, read as milliseconds → seconds, and reused after reset."""
    import types

    from benchmarks.timing import CupyMarks

    clock = iter(range(100))

    class Event:
        made = 0

        def __init__(self):
            Event.made += 1

        def record(self):
            self.t = next(clock)

        def synchronize(self):
            pass

    cuda = types.SimpleNamespace(Event=Event, get_elapsed_time=lambda a, b: 1000.0 * (b.t - a.t))
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    marks = CupyMarks()
    for _ in range(3):
        marks.reset()
        a, b, c = marks.mark(), marks.mark(), marks.mark()
        assert marks.elapsed(a, c) == 2.0 and marks.elapsed(b, c) == 1.0
    assert Event.made == 3


def test_largest_batch_search():
    """Doubling then bisection to 5 %, against a known limit; an error stops the search."""
    def fits_below(limit):
        return lambda B: None if B <= limit else ("out_of_memory", "too big")

    for limit in (100, 777, 8192, 50_000):
        out = gpu_bench.largest_batch(fits_below(limit), 64, seconds=60)
        assert out["converged"] and limit / 1.05 <= out["largest_batch"] <= limit < out["first_failing_batch"]
    out = gpu_bench.largest_batch(fits_below(10), 64, seconds=60)  # the start itself is too big
    assert 10 / 1.05 <= out["largest_batch"] <= 10
    out = gpu_bench.largest_batch(lambda B: ("error", "error: boom") if B > 200 else None, 64, seconds=60)
    assert out["largest_batch"] == 128 and out["stopped_by"] == "error: boom" and not out["converged"]


def test_card_names():
    assert gpu_bench.card("NVIDIA H100 80GB HBM3") == "H100 SXM"
    assert gpu_bench.card("NVIDIA H100 PCIe") == "H100 PCIe"
    assert gpu_bench.card("NVIDIA H100 NVL") == "H100 NVL"
    assert gpu_bench.card("NVIDIA H200") == "H200"
    assert gpu_bench.card("NVIDIA H200 NVL") == "H200 NVL"
    assert gpu_bench.card("NVIDIA A100-SXM4-80GB") is None
    for tf32, fp16 in gpu_bench.PEAKS.values():
        assert tf32 > 0 and abs(fp16 / tf32 - 2) < 0.01  # dense FP16 is twice TF32 on Hopper


def test_spin_kernel_compiles_with_nvrtc():
    """The launch study's spin kernel compiles for Hopper with no GPU present."""
    assert_compiles(gpu_bench.SPIN_SOURCE, ("spin",), "spin.cu")


class FakeStream:
    """cupy.cuda.Stream's capture calls, recorded; end_capture raises ``end_error`` if given."""

    def __init__(self, end_error=None):
        self.calls, self.end_error = [], end_error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def begin_capture(self):
        self.calls.append("begin")

    def end_capture(self):
        self.calls.append("end")
        if self.end_error:
            raise self.end_error
        return "graph"


def test_capture_always_ends_and_reports_the_first_failure():
    s = FakeStream()
    assert gpu_bench.capture(s, lambda: 7) == ("graph", None, 7) and s.calls == ["begin", "end"]

    def refused():
        raise NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")

    s = FakeStream(RuntimeError("cudaErrorStreamCaptureInvalidated"))
    graph, err, _ = gpu_bench.capture(s, refused)
    assert graph is None and err.startswith("NotImplementedError: calling cuBLAS") and s.calls == ["begin", "end"]
    s = FakeStream(RuntimeError("invalidated"))
    assert gpu_bench.capture(s, lambda: 7) == (None, "end_capture: RuntimeError: invalidated", None)


def test_parts_out_of_time_are_listed_as_skipped(tmp_path):
    out = tmp_path / "short.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--budget", "1", "--parts", "float32,launch",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["complete"] and report["results"] == {} and report["errors"] == []
    assert report["skipped"]["float32"].startswith("out of time") and report["skipped"]["launch"].startswith("out of time")
    assert report["skipped"]["compile"] == "not asked for (--parts)"


@pytest.mark.parametrize("args,match", [
    (["--out", "{tmp}/no/such/dir/b.json"], "--out: the directory .* does not exist"),
    (["--out", "{tmp}"], "--out: .* is a directory"),
    (["--budget", "-5", "--out", "{tmp}/b.json"], "--budget: must be > 0"),
    (["--max-batch-seconds", "0", "--out", "{tmp}/b.json"], "--max-batch-seconds: must be > 0"),
])
def test_bad_arguments_are_one_line_before_any_work(tmp_path, capsys, args, match):
    """An --out in a missing directory (or naming one) ended the run with a bare
    FileNotFoundError traceback at its first save, and --budget -5 ran nothing, wrote a JSON of
    skipped parts and exited 0: each is now argparse's one-line usage error (status 2)."""
    with pytest.raises(SystemExit) as exc:
        gpu_bench.main(["--smoke"] + [a.format(tmp=tmp_path) for a in args])
    assert exc.value.code == 2
    assert re.search(match, capsys.readouterr().err)
    assert not any(tmp_path.iterdir())  # nothing written



def test_sigint_keeps_what_was_done(tmp_path):
    """device_check.sh stops the script with SIGINT at its time limit: the JSON then holds
    the parts done, says which part was stopped, and the summary is still printed."""
    import signal
    import time

    out = tmp_path / "stopped.json"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--smoke", "--parts", "float32,breakdown", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:  # the float32 part runs first, then breakdown: stop that one
            lines.append(line)
            if line.startswith("breakdown ("):
                break
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    report = json.loads(out.read_text())
    assert proc.returncode == 130, err[-2000:]
    assert report["complete"] is False and "during the breakdown part" in report["interrupted"]
    assert report["skipped"]["breakdown"].startswith("not run: stopped by SIGINT")
    assert positive(report["results"]["float32"][0]["gpudnn_ms"]) and "breakdown" not in report["results"]
    assert "| net @ batch (float32) |" in rest  # the summary of what was done


def test_device_check_script_parses_and_names_real_flags():
    """scripts/device_check.sh runs once on a lent GPU: a syntax error or a flag the bench
    script does not take would waste that run, so both are checked here."""
    script = ROOT / "scripts" / "device_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text().replace("\\\n", " ")  # continuation lines joined
    calls = [line.split("gpu_bench.py", 1)[1] for line in text.splitlines()
             if "gpu_bench.py" in line and not line.lstrip().startswith("#")]
    flags = {f for call in calls for f in re.findall(r"(?<![\w-])--[a-z][a-z-]*", call)}
    helptext = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True).stdout
    taken = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", helptext))
    assert len(calls) == 2 and {"--out", "--budget", "--parts", "--env-only"} <= flags
    assert flags <= taken, flags - taken


def test_the_report_names_the_code_it_measured(smoke, tmp_path):
    """The device's copy of the tree may carry a stale git HEAD: the JSON also holds a digest
    of the gpudnn sources, which changes with any of them and not with anything else."""
    import shutil

    from benchmarks.contenders import source_digest

    report, _ = smoke
    assert report["environment"]["gpudnn_source_blake2b"] == source_digest()
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "gpudnn", copy / "gpudnn", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (copy / "README.md").write_text("not a source")
    assert source_digest(str(copy)) == source_digest()
    with open(copy / "gpudnn" / "network.py", "a") as f:
        f.write("\n")
    assert source_digest(str(copy)) != source_digest()


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed: max_batch searches gpudnn alone")
def test_each_max_batch_search_starts_with_nothing_of_the_last(tmp_path, monkeypatch):
    """PyTorch's search ran while gpudnn's network still held the workspace of its last try
    (on a GPU, most of the card when that try fitted), so PyTorch's largest batch came out
    a fraction of its real one. No gpudnn workspace may be held when a PyTorch try starts."""
    import gc

    held, real = [], gpu_bench.TorchStep

    def spy(*args, **kwargs):
        gc.collect()
        held.append(sum(type(o) is gpudnn.Network and o._ws is not None for o in gc.get_objects()))
        return real(*args, **kwargs)

    monkeypatch.setattr(gpu_bench, "TorchStep", spy)
    gpu_bench.main(["--smoke", "--parts", "max_batch", "--out", str(tmp_path / "m.json")])
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["results"]["max_batch"]["torch_eager"]["largest_batch"] > 0
    assert held and max(held) == 0, held


def test_the_summary_of_a_max_batch_part_stopped_midway(smoke):
    """A part stopped by SIGINT leaves its partial dict: the summary must still be written."""
    report = json.loads(json.dumps(smoke[0]))
    mb = report["results"]["max_batch"]
    del mb["gpudnn_over_torch_x"], mb["torch_eager"]
    assert "largest batch" in gpu_bench.summary(report)


def test_max_batch_leaves_the_graphs_part_its_time(tmp_path, monkeypatch):
    """max_batch's searches shared out all the time left, so graphs (after it) was skipped
    whenever they ran to their limit; they share what the later parts' estimates leave.
    The script's clock stands still here but for the searches, which use all they are given."""
    import time as real_time

    class Clock:
        now = 0.0

        def perf_counter(self):
            return self.now

        def __getattr__(self, name):
            return getattr(real_time, name)

    clock, given = Clock(), []

    def search(attempt, start, seconds, **kw):
        given.append(seconds)
        clock.now += seconds
        return {"largest_batch": start, "first_failing_batch": 2 * start, "converged": True, "tries": []}

    monkeypatch.setattr(gpu_bench, "time", clock)
    monkeypatch.setattr(gpu_bench, "largest_batch", search)
    gpu_bench.main(["--smoke", "--parts", "max_batch,graphs", "--budget", "60", "--max-batch-seconds", "100",
                    "--out", str(tmp_path / "g.json")])
    report = json.loads((tmp_path / "g.json").read_text())
    assert len(given) == 3 and sum(given) == pytest.approx(60 - gpu_bench.PARTS["graphs"])
    assert "graphs" in report["results"], report["skipped"]
