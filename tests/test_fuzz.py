"""The fuzz targets of tests/fuzz_targets.py, run in a subprocess so that a crash (a
segfault in a kernel, an abort) fails this test instead of ending the test run."""

import collections
import os
import subprocess
import sys

import pytest

pytest.importorskip("hypothesis")

TARGETS = os.path.join(os.path.dirname(__file__), "fuzz_targets.py")
# CI draws more cases than a local run.
EXAMPLES = 400 if os.environ.get("CI") else 60


def test_fuzz_targets_in_a_subprocess(tmp_path):
    report = tmp_path / "cases.txt"
    env = dict(os.environ, ANODE_EXT_FUZZ_EXAMPLES=str(EXAMPLES), ANODE_EXT_FUZZ_REPORT=str(report))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TARGETS],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, f"fuzz targets failed (exit {done.returncode}):\n{done.stdout[-6000:]}{done.stderr[-2000:]}"
    counts = collections.Counter(report.read_text().split())
    for target in ("rk_combine", "rda", "odeint", "tableau", "models.create", "anode-train", "anode-bench"):
        assert counts[target] >= EXAMPLES, f"{target}: {counts[target]} cases tried"
    print(f"fuzz cases tried: {sum(counts.values())} ({dict(counts)})")
