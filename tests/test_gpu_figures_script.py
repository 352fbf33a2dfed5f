"""bench/gpu_figures.py at toy sizes on the CPU: a GPU run must not be lost to an error in it."""

import importlib.util
import json
import math
import os
import sys

import pytest

pytest.importorskip("torchdiffeq")

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "gpu_figures.py")


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_figure_is_measured(tmp_path):
    script = load_script()
    returned = script.main(str(tmp_path), "cpu", script.SMOKE)
    with open(tmp_path / "gpu_figures.json") as f:
        written = json.load(f)
    assert written["date"] == returned["date"]
    ops = [row["op"] for row in written["rk_combine"] + written["rda"]]
    for expected in ("rk_combine RK4 bfloat16", "rda_rk_step rk4", "rda_rk_step_backward rk4", "rda_rhs"):
        assert any(op.startswith(expected) for op in ops), expected
    assert all(row["gb_per_s"] > 0 for row in written["rk_combine"] + written["rda"])
    (resnet,) = written["resnet"]
    assert resnet["time_anode_over_direct"] > 0 and resnet["time_coupled_over_anode"] > 0
    (block,) = written["resnet_block_vs_torchdiffeq"]
    assert block["grad_error_anode"] < 1e-6 < block["grad_error_torchdiffeq_adjoint"]
    assert all(math.isfinite(r["seconds"]) for r in block["rows"])
    direct, anode = written["anode_step_profile"]
    assert (direct["mode"], anode["mode"]) == ("direct", "anode")
    assert anode["aten_ops"] > direct["aten_ops"] > 0 and anode["top_host_ops"]
    (gather,) = written["sample_gather"]
    assert gather["gathered_seconds"] > 0 and gather["one_by_one_seconds"] > 0
