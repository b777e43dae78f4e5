#!/usr/bin/env bash
# The GPU check, run once on the lent GPU machine by the `device` tool (no network there), in
# about 6 minutes. Each step has its own time limit, and a step that fails or runs out of time
# does not stop the next one. What it leaves under $OUT:
#   install.txt      pip's log (the project installed without dependencies: NumPy, CuPy and
#                    PyTorch are the image's)
#   device.json      card, compute capability, memory, driver, CUDA runtime, CuPy, torch, Python
#   tests.txt        the test suite's CuPy cases (-m cupy: every case of the `backend` fixture's
#                    cupy parameter; the CPU cases are CI's); -rs lists every skip, so a CuPy
#                    case that still skips shows up; the 15 slowest listed (limit 150 s: then
#                    SIGINT, so pytest still prints its failures and summary)
#   tests_graphs.txt tests/test_graphs.py's CuPy cases in a process of their own, after the
#                    rest (CUDA graph capture is the newest GPU code: a sticky CUDA error there
#                    must not fail every later case; limit 40 s)
#   gpu_bench.json   scripts/gpu_bench.py: every figure of issue 5 and every error (its
#                    docstring lists them); rewritten after each of its parts, so a timeout
#                    keeps what was done (its own budget 200 s, stopped at 260 s)
# Worst case 45 + 30 + 165 + 50 + 260 s, about 9 minutes: give the device tool's run a
# timeout_s of 560; the usual run is about 6 minutes.
#   gpu_bench.txt    its progress log and the markdown summary
#   bench.json, bench.txt
#                    only if more than 40 s of 420 are left: the pytest-benchmark cases
#                    on CuPy, kernel by kernel (benchmarks/README.md), 0.3 s each; the JSON
#                    keeps each case's statistics (host wall time; extra_info gpu_median_ms,
#                    the device's) and the card, not every round
# Usage there: bash scripts/device_check.sh      (OUT defaults to /tmp/out)
#              GPU_BENCH_PARTS=max_batch,float32 bash scripts/device_check.sh   (a subset)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# no network there: pip must not wait on an index
timeout 45 python3 -m pip install --no-deps --no-build-isolation --no-index --disable-pip-version-check \
    -e . >"$OUT/install.txt" 2>&1 || export PYTHONPATH=$PWD
timeout 30 python3 scripts/gpu_bench.py --env-only --out "$OUT/device.json"
echo "device exit $?"; cat "$OUT/device.json"
# SIGINT at the limit (SIGKILL 15 s later): pytest then prints what failed before it stopped
timeout -s INT -k 15 150 python3 -m pytest tests -m cupy --ignore=tests/test_graphs.py -q -rs \
    --durations=15 -p no:cacheprovider >"$OUT/tests.txt" 2>&1
echo "tests exit $?"; tail -5 "$OUT/tests.txt"
timeout -s INT -k 10 40 python3 -m pytest tests/test_graphs.py -m cupy -q -rs -p no:cacheprovider \
    >"$OUT/tests_graphs.txt" 2>&1
echo "tests_graphs exit $?"; tail -5 "$OUT/tests_graphs.txt"
# GPU_BENCH_PARTS=max_batch (say) runs only those parts (comma-separated; see --parts)
timeout -s INT -k 10 250 python3 scripts/gpu_bench.py --budget 200 ${GPU_BENCH_PARTS:+--parts "$GPU_BENCH_PARTS"} \
    --out "$OUT/gpu_bench.json" >"$OUT/gpu_bench.txt" 2>&1
echo "gpu_bench exit $?"; tail -50 "$OUT/gpu_bench.txt"
left=$((420 - SECONDS))
if [ "$left" -gt 40 ]; then
    timeout -s INT -k 10 "$left" python3 -m pytest benchmarks -q -k cupy --benchmark-only --benchmark-max-time=0.3 \
        --benchmark-json="$OUT/bench.json" -p no:cacheprovider >"$OUT/bench.txt" 2>&1
    echo "bench exit $?"; tail -8 "$OUT/bench.txt"
    # every round's time (tens of thousands a case) makes bench.json tens of MB, past what the
    # device tool brings back (16 MiB): keep each case's statistics, drop the raw rounds
    timeout 30 python3 -c 'import json, sys; d = json.load(open(sys.argv[1]))
for b in d["benchmarks"]: b["stats"].pop("data", None)
json.dump(d, open(sys.argv[1], "w"), indent=1)' "$OUT/bench.json"
    echo "bench.json $(wc -c <"$OUT/bench.json") bytes"
fi
echo "device_check: ${SECONDS} s"
