#!/usr/bin/env bash
# The GPU check, run once on the lent GPU machine by the `device` tool (no network there), in
# about 6 minutes. Each step has its own time limit, and a step that fails or runs out of time
# does not stop the next one. What it leaves under $OUT:
#   install.txt      pip's log (the project installed without dependencies: NumPy, CuPy and
#                    PyTorch are the image's)
#   device.json      card, compute capability, memory, driver, CUDA runtime, CuPy, torch, Python
#   tests.txt        the test suite's CuPy cases (-m cupy: every case of the `backend` fixture's
#                    cupy parameter; the CPU cases are CI's); -rs lists every skip, so a CuPy
#                    case that still skips shows up (limit 150 s)
#   gpu_bench.json   scripts/gpu_bench.py: every figure of issue 5 and every error (its
#                    docstring lists them); rewritten after each of its parts, so a timeout
#                    keeps what was done (its own budget 190 s, killed at 250 s)
#   gpu_bench.txt    its progress log and the markdown summary
#   bench.json, bench.txt
#                    only if more than 40 s of 350 are left: the pytest-benchmark cases
#                    on CuPy, kernel by kernel (benchmarks/README.md)
# Usage there: bash scripts/device_check.sh      (OUT defaults to /tmp/out)
#              GPU_BENCH_PARTS=max_batch,float32 bash scripts/device_check.sh   (a subset)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
timeout 120 python3 -m pip install --no-deps --no-build-isolation -e . >"$OUT/install.txt" 2>&1 ||
    export PYTHONPATH=$PWD
timeout 60 python3 scripts/gpu_bench.py --env-only --out "$OUT/device.json"
echo "device exit $?"; cat "$OUT/device.json"
timeout 150 python3 -m pytest tests -m cupy -q -rs -p no:cacheprovider >"$OUT/tests.txt" 2>&1
echo "tests exit $?"; tail -5 "$OUT/tests.txt"
# GPU_BENCH_PARTS=max_batch (say) runs only those parts (comma-separated; see --parts)
timeout 250 python3 scripts/gpu_bench.py --budget 190 ${GPU_BENCH_PARTS:+--parts "$GPU_BENCH_PARTS"} \
    --out "$OUT/gpu_bench.json" >"$OUT/gpu_bench.txt" 2>&1
echo "gpu_bench exit $?"; tail -45 "$OUT/gpu_bench.txt"
left=$((350 - SECONDS))
if [ "$left" -gt 40 ]; then
    timeout "$left" python3 -m pytest benchmarks -q -k cupy --benchmark-only --benchmark-json="$OUT/bench.json" \
        -p no:cacheprovider >"$OUT/bench.txt" 2>&1
    echo "bench exit $?"; tail -8 "$OUT/bench.txt"
fi
echo "device_check: ${SECONDS} s"
