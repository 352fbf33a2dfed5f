#!/usr/bin/env bash
# The GPU verification run (bench/RESULTS.md): on a machine with an NVIDIA GPU and no
# network, build anode_ext against that machine's torch, run the CUDA op tests (with
# their CPU-twin comparisons), then the whole suite, then the GPU figures. Logs and
# gpu_figures.json go to the folder given; the exit status is non-zero if any stage failed.
#
#   bench/gpu_check.sh OUT_DIR        (PYTHON=python3 by default)
set -uo pipefail
OUT="${1:?usage: bench/gpu_check.sh OUT_DIR}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
status=0

stage() {
    local name=$1 limit=$2
    shift 2
    local start
    start=$(date +%s)
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $(($(date +%s) - start)) s"
    tail -n 5 "$OUT/$name.log"
    if [ "$rc" -ne 0 ]; then status=1; fi
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" >"$OUT/torch.txt" 2>&1
stage build 300 env MAX_JOBS="$(nproc)" ANODE_EXT_FORCE_CUDA=1 "$PY" setup.py build_ext --inplace
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
stage cuda_ops 120 "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUT/cuda_ops.xml" \
    tests/test_rk_combine.py tests/test_rk_combine_errors.py tests/test_rk_combine_autograd.py tests/test_rda_ops.py
stage figures 180 "$PY" bench/gpu_figures.py "$OUT"
stage all_tests 240 "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUT/all_tests.xml" tests
exit "$status"
