"""scripts/compare.py and the contenders it times: each does the work the README says (the
same net, dtype and SGD, no extra passes the others skip), the figures are the right way
round, and the run records its machine. Tiny nets, so CI keeps the script working."""

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("compare", ROOT / "scripts" / "compare.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)

from benchmarks.contenders import TorchStep, machine  # noqa: E402  (compare put ROOT on sys.path)


def test_sklearn_step_is_float32_sgd_on_the_batch_in_place():
    """float32 kept; no shuffle (a copy of the batch each call) and no Nesterov pass (a
    second update pass at momentum 0): work gpudnn's and PyTorch's steps do not do."""
    pytest.importorskip("sklearn")
    step = compare.sklearn_step([6, 16, 3], 32, np.random.default_rng(0))
    clf = step.func.__self__
    assert clf.solver == "sgd" and clf.momentum == 0.0 and clf.alpha == 0.0 and clf.batch_size == 32
    assert clf.shuffle is False and clf.nesterovs_momentum is False
    W0 = clf.coefs_[0].copy()
    step()
    assert all(W.dtype == np.float32 for W in clf.coefs_ + clf.intercepts_)
    assert not np.array_equal(clf.coefs_[0], W0) and clf.n_iter_ == 1


def test_torch_eager_step_drops_its_gradients_as_pytorch_does_by_default(monkeypatch):
    """zero_grad(set_to_none=False) made every step memset the gradients and accumulate into
    them (3-12% of a CPU step): PyTorch's default, set_to_none=True, is what its users run."""
    torch = pytest.importorskip("torch")
    calls = []
    real = torch.optim.SGD.zero_grad
    monkeypatch.setattr(torch.optim.SGD, "zero_grad",
                        lambda self, set_to_none=True: (calls.append(set_to_none), real(self, set_to_none))[1])
    step = TorchStep([6, 16, 3], 32)
    loss = step()
    assert isinstance(loss, float) and calls == [True]
    assert all(p.dtype == torch.float32 for p in step.model.parameters())


def test_machine_records_versions_threads_and_the_variables_that_set_them():
    info = machine()
    assert info["numpy"] and info["python"] and info["gpudnn_kernels"]
    for var in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUPY_TF32"):
        assert var in info
    if "torch" in info:
        assert info["torch_threads"] >= 1


def test_a_quick_run_writes_its_figures_the_right_way_round(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "CONFIGS", [([8, 16, 3], 32), ([8, 16, 16, 3], 64)])
    out = tmp_path / "c"
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch else None
    try:
        assert compare.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    finally:
        if torch:
            torch.set_num_threads(threads)
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["threads"] == 1 and report["machine"]["numpy"]
    if "torch" in report["machine"]:
        assert report["machine"]["torch_threads"] == 1
    md = (tmp_path / "c.md").read_text()
    for row in report["rows"]:
        assert row["floor"] == min(row["floor_C"], row["floor_F"])
        assert row["floor_order"] == ("C" if row["floor_C"] <= row["floor_F"] else "F")
        for k in ("floor_C", "floor_F", "gpudnn", "torch", "sklearn"):
            if k in row:  # each figure is the smallest block mean, in seconds
                assert row[k] == min(row["blocks"][k]) and 0 < row[k] < 1
        # the table: ms, and contender / floor (a slower step has a larger ratio)
        line = next(l for l in md.splitlines() if l.startswith(f"| {row['label']} |"))
        assert f"{row['gpudnn'] * 1e3:.3f} ms ({row['gpudnn'] / row['floor']:.2f}x)" in line
        assert row["peak_bytes"] > 0 and row["expected_bytes"] > 0


def test_the_suites_json_records_blas_and_threads(tmp_path):
    """pytest-benchmark's machine_info holds the CPU and Python alone: a saved run also needs
    the BLAS, its threads and the variables that set them to be compared with another."""
    import subprocess

    out = tmp_path / "b.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/test_bench_train_step.py", "-q", "-p", "no:cacheprovider",
         "-k", "numpy and 64-128-10", "--benchmark-only", "--benchmark-max-time=0.01", f"--benchmark-json={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert len(report["benchmarks"]) == 2
    info = report["machine_info"]["gpudnn"]
    assert info["numpy"] and info["gpudnn_kernels"] and "OPENBLAS_CORETYPE" in info
    assert all(b["num_threads"] >= 1 for b in info.get("blas", []))
