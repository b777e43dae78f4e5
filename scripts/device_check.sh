#!/usr/bin/env bash
# The GPU check, run on the lent GPU machine by the `device` tool (no network there):
#   install the project without dependencies, run the whole test suite with the CuPy
#   cases active, time the GPU benchmarks, and leave everything under $OUT:
#     $OUT/device.json      card, driver, CUDA, CuPy, torch versions
#     $OUT/tests.txt        the pytest summary (CuPy cases must pass, not skip)
#     $OUT/bench.txt        the benchmark table (train_step / gemm_floor ratios at the end)
#     $OUT/bench.json       pytest-benchmark JSON of the CuPy benchmark cases
# Budget: about 6 minutes. Usage there: bash scripts/device_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
python3 -m pip install --no-deps --no-build-isolation -e . >"$OUT/install.txt" 2>&1 || export PYTHONPATH=$PWD
python3 - >"$OUT/device.json" <<'PY'
import json, cupy, platform
rt = cupy.cuda.runtime
props = rt.getDeviceProperties(0)
name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
info = {"device": name, "cc": f"{props['major']}.{props['minor']}",
        "memory_GiB": round(props["totalGlobalMem"] / 2**30, 1),
        "driver": rt.driverGetVersion(), "runtime": rt.runtimeGetVersion(),
        "cupy": cupy.__version__, "python": platform.python_version()}
try:
    import torch
    info["torch"] = torch.__version__
except ImportError:
    pass
print(json.dumps(info, indent=1))
PY
cat "$OUT/device.json"
# the whole suite: the CuPy cases run here, the rest guards against GPU-only regressions;
# -rs lists every skip so a CuPy case that still skips shows up
timeout 240 python3 -m pytest tests -q -rs -p no:cacheprovider >"$OUT/tests.txt" 2>&1
echo "tests exit $?"; tail -5 "$OUT/tests.txt"
timeout 150 python3 -m pytest benchmarks -q -k cupy --benchmark-only --benchmark-json="$OUT/bench.json" \
    -p no:cacheprovider >"$OUT/bench.txt" 2>&1
echo "bench exit $?"; tail -15 "$OUT/bench.txt"
