"""500 training steps in each gradient mode leave nothing behind: the number of live
tensors is the same after the last step as after the first hundred."""

from anode_ext.bench.soak import SOAK_MODES, soak


def test_no_growth_in_live_tensors():
    rows = soak(steps=500, every=100, kind="mlp")
    assert [(r["grad"], r["checkpoints"]) for r in rows] == list(SOAK_MODES)
    for r in rows:
        assert len(r["readings"]) == 5
        assert r["live_tensor_growth"] == 0, f"{r['grad']}: {[x['live_tensors'] for x in r['readings']]}"
