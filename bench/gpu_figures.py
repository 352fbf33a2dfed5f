"""The GPU figures of bench/RESULTS.md, measured in one process on one card.

    python bench/gpu_figures.py OUT_DIR

- rk_combine (RK4) at 2^26 float32 and bfloat16 elements, and the RDA ops, as achieved
  bandwidth and as a fraction of a large device-to-device copy timed in the same run;
- the ODE-ResNet at batch 128, Nt = 2 and 8: training-step time and peak memory of anode
  against direct;
- an ODE-ResNet block against torchdiffeq.odeint_adjoint: time ratio and gradient error.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from anode_ext import TABLEAUX, build_info, rda_rhs, rda_rk_step, rk_combine
from anode_ext.bench.blocks import block_benchmark
from anode_ext.bench.models_bench import model_benchmark
from anode_ext.bench.solvers import Solver, solvers
from anode_ext.bench.timing import compare_medians

DEVICE = "cuda"
RK4 = (1 / 6, 1 / 3, 1 / 3, 1 / 6)


def bandwidth(name: str, seconds: float, bytes_moved: int, copy_bandwidth: float) -> dict:
    achieved = bytes_moved / seconds
    return {"op": name, "seconds": seconds, "gb_per_s": achieved / 1e9, "fraction_of_copy": achieved / copy_bandwidth}


def op_bandwidth() -> list[dict]:
    rows = []
    n = 1 << 26
    for dtype in (torch.float32, torch.bfloat16):
        y = torch.randn(n, device=DEVICE, dtype=dtype)
        ks = [torch.randn(n, device=DEVICE, dtype=dtype) for _ in range(4)]
        out = torch.empty_like(y)
        t = compare_medians(
            {
                "copy": lambda: out.copy_(y),
                "rk_combine": lambda: rk_combine(y, ks, RK4, 0.1),
                "rk_combine_out": lambda: rk_combine(y, ks, RK4, 0.1, out=out),
                "eager": lambda: y + 0.1 / 6 * (ks[0] + 2 * ks[1] + 2 * ks[2] + ks[3]),
            },
            DEVICE,
            warmup=3,
            repeats=20,
        )
        size = y.element_size()
        copy_bw = 2 * n * size / t["copy"]
        label = str(dtype).removeprefix("torch.")
        rows.append({"op": f"copy {label}", "gb_per_s": copy_bw / 1e9, "seconds": t["copy"]})
        for name in ("rk_combine", "rk_combine_out", "eager"):
            rows.append(bandwidth(f"{name} RK4 {label} 2^26", t[name], 6 * n * size, copy_bw))
    theta = torch.randn(1024, 1024, 3, 3, device=DEVICE)
    coefficients = torch.randn(4, 1024, device=DEVICE) * 0.1
    out = torch.empty_like(theta)
    t = compare_medians(
        {
            "copy": lambda: out.copy_(theta),
            "rda_rhs": lambda: rda_rhs(theta, coefficients),
            "rda_rk_step": lambda: rda_rk_step(theta, coefficients, TABLEAUX["rk4"], 0.1),
        },
        DEVICE,
        warmup=3,
        repeats=20,
    )
    size = theta.numel() * theta.element_size()
    copy_bw = 2 * size / t["copy"]
    rows.append(bandwidth("rda_rhs 1024x1024x3x3 float32", t["rda_rhs"], 2 * size, copy_bw))
    # Reads theta once, writes the three stage weights and the new weight.
    rows.append(bandwidth("rda_rk_step rk4 1024x1024x3x3 float32", t["rda_rk_step"], 5 * size, copy_bw))
    return rows


def main(out_dir: str) -> int:
    os.makedirs(out_dir, exist_ok=True)
    started = time.time()
    results = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "build_info": build_info(),
        "date": time.strftime("%Y-%m-%d"),
    }
    results["bandwidth"] = op_bandwidth()
    print(json.dumps(results["bandwidth"], indent=1), flush=True)
    results["resnet"] = []
    for steps in (2, 8):
        rows = model_benchmark(
            "resnet", 1.0, 128, 32, steps, "midpoint", DEVICE, repeats=5,
            modes=[("direct", "direct", None, "none"), ("anode", "anode", None, "none")],
        )
        direct, anode = rows
        results["resnet"].append(
            {
                "steps": steps,
                "direct_seconds": direct["seconds"],
                "anode_seconds": anode["seconds"],
                "time_anode_over_direct": anode["seconds"] / direct["seconds"],
                "peak_memory_anode_over_direct": anode["device_peak_bytes"] / direct["device_peak_bytes"],
                "direct_peak_bytes": direct["device_peak_bytes"],
                "anode_peak_bytes": anode["device_peak_bytes"],
            }
        )
        print(json.dumps(results["resnet"][-1]), flush=True)
    chosen = [s for s in solvers((1,)) if s.name in ("direct", "anode", "torchdiffeq odeint_adjoint")]
    if not any(s.library == "torchdiffeq" for s in chosen):
        chosen.append(Solver("torchdiffeq odeint_adjoint", "torchdiffeq", "adjoint"))
    results["resnet_block_vs_torchdiffeq"] = []
    for steps in (2, 8):
        rows = block_benchmark("resnet", 64, 128, 32, "midpoint", steps, chosen, DEVICE, repeats=5)
        by = {r["solver"]: r for r in rows}
        summary = {
            "steps": steps,
            "anode_seconds": by["anode"]["seconds"],
            "torchdiffeq_adjoint_seconds": by["torchdiffeq odeint_adjoint"]["seconds"],
            "time_anode_over_torchdiffeq_adjoint": by["anode"]["seconds"] / by["torchdiffeq odeint_adjoint"]["seconds"],
            "grad_error_anode": by["anode"]["grad_error"],
            "grad_error_torchdiffeq_adjoint": by["torchdiffeq odeint_adjoint"]["grad_error"],
            "rows": rows,
        }
        results["resnet_block_vs_torchdiffeq"].append(summary)
        print(json.dumps({k: v for k, v in summary.items() if k != "rows"}), flush=True)
    results["seconds"] = time.time() - started
    with open(os.path.join(out_dir, "gpu_figures.json"), "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/gpu_figures.py OUT_DIR")
    sys.exit(main(sys.argv[1]))
