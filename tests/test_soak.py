"""500 training steps in each gradient mode leave nothing behind: the number of live
tensors is the same after the last step as after the first hundred.

The soak runs in a fresh process: in the test process, objects that earlier tests left
to other threads or to the collector would come and go during it and be counted."""

import json
import subprocess
import sys

from anode_ext.bench.soak import SOAK_MODES

SOAK = "import json; from anode_ext.bench.soak import soak; print(json.dumps(soak(steps=500, every=100, kind='mlp')))"


def test_no_growth_in_live_tensors():
    done = subprocess.run([sys.executable, "-c", SOAK], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert [(r["grad"], r["checkpoints"]) for r in rows] == list(SOAK_MODES)
    for r in rows:
        assert len(r["readings"]) == 5
        assert r["live_tensor_growth"] == 0, f"{r['grad']}: {[x['live_tensors'] for x in r['readings']]}"
