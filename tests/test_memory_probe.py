"""scripts/memory_probe.py: the step's memory per batch column, gpudnn against PyTorch
eager, on the CPU. The orders of magnitude the design promises must show: low_memory saves
most of a width (the (W^l)ᵀδ scratch drops to an eighth), and gpudnn needs less than
PyTorch's saved activations plus its backward temporaries."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="the PyTorch side of the comparison needs torch (test extra)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_memory_probe_ranks_the_three(tmp_path):
    out = tmp_path / "m.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "memory_probe.py"), "--batch", "2048",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    env = report["environment"]  # the versions, CPU and BLAS the figures depend on
    assert env["numpy"] and env["torch"] and env["cpu"] and report["child_threads"] == 2
    rows = {r["contender"]: r for r in report["rows"]}
    assert all("error" not in r for r in rows.values()), rows
    w = {k: r["widths"] for k, r in rows.items()}
    # 3 activations + the full scratch (4), + an eighth of it (3 1/8); loose bounds: RSS
    assert 3.6 < w["gpudnn"] < 4.6 and 2.9 < w["gpudnn_low_memory"] < 3.6, w
    assert w["gpudnn_low_memory"] < w["gpudnn"] - 0.5 and w["gpudnn"] < w["torch_eager"], w
