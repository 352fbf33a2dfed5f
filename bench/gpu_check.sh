#!/usr/bin/env bash
# The GPU verification run (bench/RESULTS.md), sized for one run of at most 7 minutes
# on a 16-core GPU machine with no network: log the environment, check the
# prerequisites, build anode_ext against that machine's torch for its GPU's
# architecture only, run every CUDA test (each CUDA op against its CPU twin, the
# solver and models on the GPU), then measure the GPU figures. The CPU suite is CI's
# job and is not rerun here.
#
#   bench/gpu_check.sh OUT_DIR        (PYTHON=python3 by default)
#
# OUT_DIR receives environment.txt, one log per stage, cuda_tests.xml,
# gpu_figures.json and summary.json. summary.json is written whatever happens (a
# stage that times out or fails, a missing prerequisite); the exit status is
# non-zero if anything failed.
set -uo pipefail
OUT="${1:?usage: bench/gpu_check.sh OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
SUMMARY_LINES="$OUT/.stages"
: >"$SUMMARY_LINES"
status=0
started=$(date +%s)

write_summary() {
    "$PY" - "$OUT" "$status" "$started" <<'PYEOF' || echo "gpu_check: could not write summary.json"
import json, os, sys, time
out, status, started = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stages = []
with open(os.path.join(out, ".stages")) as f:
    for line in f:
        name, rc, seconds, limit = line.split()
        stages.append({"stage": name, "exit": int(rc), "seconds": int(seconds), "limit": int(limit),
                       "timed_out": int(rc) in (124, 137)})
summary = {"ok": status == 0 and all(s["exit"] == 0 for s in stages), "seconds": int(time.time()) - started,
           "stages": stages}
tests = os.path.join(out, "cuda_tests.xml")
if os.path.exists(tests):
    import xml.etree.ElementTree as ET
    root = ET.parse(tests).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    summary["cuda_tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
figures = os.path.join(out, "gpu_figures.json")
if os.path.exists(figures):
    with open(figures) as f:
        summary["figures"] = json.load(f)
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(f"gpu_check: {'OK' if summary['ok'] else 'FAILED'} in {summary['seconds']} s; {out}/summary.json")
PYEOF
    rm -f "$SUMMARY_LINES"
}
trap write_summary EXIT

fail_fast() {
    echo "gpu_check: $1" | tee -a "$OUT/environment.txt" >&2
    echo "prerequisites 1 0 0" >>"$SUMMARY_LINES"
    status=1
    exit 1
}

stage() {
    local name=$1 limit=$2
    shift 2
    local start rc
    start=$(date +%s)
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "$name $rc $(($(date +%s) - start)) $limit" >>"$SUMMARY_LINES"
    echo "== $name: exit $rc after $(($(date +%s) - start)) s"
    tail -n 15 "$OUT/$name.log"
    if [ "$rc" -ne 0 ]; then status=1; fi
    return "$rc"
}

# The environment, first, so that a failed run still says what it ran on.
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpus: $(nproc)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
    echo "nvcc: $(nvcc --version 2>&1 | grep -i release || echo 'not found')"
    echo "python: $("$PY" --version 2>&1)"
    "$PY" - <<'PYEOF' 2>&1
import importlib, shutil
import torch
print(f"torch: {torch.__version__}, CUDA {torch.version.cuda}, GPU visible: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name()}, capability {torch.cuda.get_device_capability()}")
for name in ("setuptools", "pytest", "torchdiffeq", "hypothesis", "pybind11"):
    try:
        print(f"{name}: {importlib.import_module(name).__version__}")
    except Exception as error:
        print(f"{name}: not importable ({error})")
print(f"ninja: {shutil.which('ninja') or 'not on PATH'}")
PYEOF
} | tee "$OUT/environment.txt"

command -v nvcc >/dev/null || fail_fast "nvcc is not on PATH; expected the CUDA toolkit's compiler"
"$PY" -c "import pytest, setuptools" 2>/dev/null || fail_fast "$PY cannot import pytest and setuptools"
"$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null \
    || fail_fast "torch sees no CUDA GPU (or is not a CUDA build); expected one GPU"
arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
torch_cuda_major=$("$PY" -c "import torch; print(torch.version.cuda.split('.')[0])")
nvcc_major=$(nvcc --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
[ "$torch_cuda_major" = "$nvcc_major" ] \
    || fail_fast "nvcc is CUDA $nvcc_major but torch was built with CUDA $torch_cuda_major; expected the same major version (put the matching toolkit's bin first on PATH)"
command -v ninja >/dev/null || echo "gpu_check: ninja is not on PATH; the build will compile one file at a time" | tee -a "$OUT/environment.txt"

stage build 200 env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST="$arch" ANODE_EXT_FORCE_CUDA=1 \
    "$PY" setup.py build_ext --inplace || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Four pytest-xdist workers where it is installed: a test that crashes its process is
# then one failure among the results rather than the end of the run.
workers=()
"$PY" -c "import xdist" 2>/dev/null && workers=(-n 4)
stage cuda_tests 120 "$PY" -m pytest -q -p no:cacheprovider --durations=10 "${workers[@]}" \
    --junitxml="$OUT/cuda_tests.xml" -k cuda tests
stage figures 120 "$PY" bench/gpu_figures.py "$OUT"
exit "$status"
