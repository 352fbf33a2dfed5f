"""The GPU figures of bench/RESULTS.md, measured in one process on one card.

    python bench/gpu_figures.py OUT_DIR [--device cpu --smoke]

- rk_combine (RK4) at 2^26 float32 and bfloat16 elements, and the RDA ops (q, the fused
  RK4 weight step and its backward), as achieved bandwidth and as a fraction of a large
  device-to-device copy timed in the same run;
- the ODE-ResNet at batch 128, Nt = 2 and 8: training-step time and peak memory of anode
  (and of the ANODEv2 model with every block coupled) against direct;
- an ODE-ResNet block against torchdiffeq.odeint_adjoint: time ratio and gradient error;
- where one ODE-ResNet training step (Nt = the largest of the steps) spends its time under
  direct and anode (torch.profiler): ops dispatched, kernels launched, host-device
  synchronisations, kernel time against the step's wall time, and the ops costing most host time;
- that anode step with the saved-tensor samples gathered once per step against copied one
  tensor at a time.

`--smoke` runs every measurement at toy sizes (the test suite does, on the CPU), so that a
GPU run is not lost to an error in this script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass

import torch

from anode_ext import build_info, models, rk_combine
from anode_ext._library import _C
from anode_ext.bench.blocks import block_benchmark
from anode_ext.bench.models_bench import _train_step, model_benchmark
from anode_ext.bench.ops import RDA_PASSES, rda_ops_benchmark
from anode_ext.bench.solvers import Solver, solvers
from anode_ext.bench.timing import compare_medians
from anode_ext.modes import grad_mode_named

RK4 = (1 / 6, 1 / 3, 1 / 3, 1 / 6)


@dataclass(frozen=True)
class Sizes:
    """What each figure is measured on."""

    elements: int = 1 << 26
    filters: tuple[int, int] = (1024, 1024)
    batch: int = 128
    block_channels: int = 64
    width: float = 1.0
    steps: tuple[int, ...] = (2, 8)
    repeats: int = 20
    model_repeats: int = 5


SMOKE = Sizes(elements=1 << 12, filters=(8, 4), batch=2, block_channels=4, width=0.125, steps=(1,), repeats=2,
              model_repeats=1)


def bandwidth(name: str, seconds: float, bytes_moved: int, copy_bandwidth: float) -> dict:
    achieved = bytes_moved / seconds
    return {"op": name, "seconds": seconds, "gb_per_s": achieved / 1e9, "fraction_of_copy": achieved / copy_bandwidth}


def combine_bandwidth(device: str, sizes: Sizes) -> list[dict]:
    rows = []
    n = sizes.elements
    for dtype in (torch.float32, torch.bfloat16):
        y = torch.randn(n, device=device, dtype=dtype)
        ks = [torch.randn(n, device=device, dtype=dtype) for _ in range(4)]
        out = torch.empty_like(y)
        t = compare_medians(
            {
                "copy": lambda: out.copy_(y),
                "rk_combine": lambda: rk_combine(y, ks, RK4, 0.1),
                "rk_combine_out": lambda: rk_combine(y, ks, RK4, 0.1, out=out),
                "eager": lambda: y + 0.1 / 6 * (ks[0] + 2 * ks[1] + 2 * ks[2] + ks[3]),
            },
            device,
            warmup=3,
            repeats=sizes.repeats,
        )
        size = y.element_size()
        copy_bw = 2 * n * size / t["copy"]
        label = str(dtype).removeprefix("torch.")
        rows.append({"op": f"copy {label} ({n} elements)", "gb_per_s": copy_bw / 1e9, "seconds": t["copy"]})
        for name in ("rk_combine", "rk_combine_out", "eager"):
            # Reads y and four ks, writes out (the eager expression moves more than this).
            rows.append(bandwidth(f"{name} RK4 {label} ({n} elements)", t[name], 6 * n * size, copy_bw))
    return rows


def rda_bandwidth(device: str, sizes: Sizes) -> list[dict]:
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        r = rda_ops_benchmark(sizes.filters, device, dtype, repeats=sizes.repeats)
        size = r["numel"] * dtype.itemsize
        cout, cin = sizes.filters
        label = f"{cout}x{cin}x3x3 {r['dtype']}"
        for op, passes in RDA_PASSES.items():
            name = op if op == "rda_rhs" else f"{op} rk4"
            rows.append(bandwidth(f"{name} {label}", r["seconds"][op], passes * size, r["copy_gb_per_s"] * 1e9))
    return rows


def resnet_figures(device: str, sizes: Sizes) -> list[dict]:
    modes = [
        ("direct", "direct", None, "none"),
        ("anode", "anode", None, "none"),
        ("anode, coupled=all", "anode", None, "all"),
    ]
    results = []
    for steps in sizes.steps:
        rows = model_benchmark(
            "resnet", sizes.width, sizes.batch, 32, steps, "midpoint", device, repeats=sizes.model_repeats, modes=modes
        )
        by = {r["mode"]: r for r in rows}
        direct, anode, coupled = by["direct"], by["anode"], by["anode, coupled=all"]
        peak = direct["device_peak_bytes"]
        results.append(
            {
                "steps": steps,
                "batch": sizes.batch,
                "direct_seconds": direct["seconds"],
                "anode_seconds": anode["seconds"],
                "coupled_seconds": coupled["seconds"],
                "time_anode_over_direct": anode["seconds"] / direct["seconds"],
                "time_coupled_over_anode": coupled["seconds"] / anode["seconds"],
                "peak_memory_anode_over_direct": anode["device_peak_bytes"] / peak if peak else None,
                "direct_peak_bytes": peak,
                "anode_peak_bytes": anode["device_peak_bytes"],
                "saved_bytes_per_image": {r["mode"]: r["saved_bytes_per_image"] for r in rows},
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def block_figures(device: str, sizes: Sizes) -> list[dict]:
    chosen = [s for s in solvers((1,)) if s.name in ("direct", "anode", "torchdiffeq odeint_adjoint")]
    if not any(s.library == "torchdiffeq" for s in chosen):
        raise RuntimeError("torchdiffeq is not importable; the block comparison needs torchdiffeq.odeint_adjoint")
    results = []
    for steps in sizes.steps:
        rows = block_benchmark(
            "resnet", sizes.block_channels, sizes.batch, 32, "midpoint", steps, chosen, device, repeats=sizes.model_repeats
        )
        by = {r["solver"]: r for r in rows}
        anode, adjoint = by["anode"], by["torchdiffeq odeint_adjoint"]
        summary = {
            "steps": steps,
            "anode_seconds": anode["seconds"],
            "torchdiffeq_adjoint_seconds": adjoint["seconds"],
            "time_anode_over_torchdiffeq_adjoint": anode["seconds"] / adjoint["seconds"],
            "grad_error_anode": anode["grad_error"],
            "grad_error_torchdiffeq_adjoint": adjoint["grad_error"],
            "rows": rows,
        }
        results.append(summary)
        print(json.dumps({k: v for k, v in summary.items() if k != "rows"}), flush=True)
    return results


# Host-side events that wait for the device: a step that has them cannot run ahead of the GPU.
SYNC_EVENTS = ("aten::_local_scalar_dense", "aten::equal", "cudaStreamSynchronize", "cudaDeviceSynchronize",
               "cudaEventSynchronize", "cudaMemcpy")
LAUNCH_EVENTS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def step_profile(device: str, sizes: Sizes) -> list[dict]:
    """Where one warmed ODE-ResNet training step spends its time, per gradient mode."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(sizes.batch, 3, 32, 32, generator=gen).to(device)
    target = torch.randint(0, 10, (sizes.batch,), generator=gen).to(device)
    rows = []
    for mode in ("direct", "anode"):
        torch.manual_seed(0)
        model = models.create("resnet", width=sizes.width, steps=max(sizes.steps), method="midpoint",
                              grad=grad_mode_named(mode)).to(device)
        for _ in range(3):
            _train_step(model, x, target)
        if device == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            started = time.perf_counter()
            _train_step(model, x, target)
            if device == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - started
        events = prof.key_averages()
        counts = {e.key: e.count for e in events}
        kernel_seconds = sum(e.self_device_time_total for e in events) / 1e6
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
        rows.append({
            "mode": mode,
            "steps": max(sizes.steps),
            "wall_seconds": wall,
            "kernel_seconds": kernel_seconds,
            "kernel_fraction_of_wall": kernel_seconds / wall,
            "aten_ops": sum(n for key, n in counts.items() if key.startswith("aten::")),
            "kernel_launches": sum(counts.get(key, 0) for key in LAUNCH_EVENTS),
            "syncs": {key: counts[key] for key in SYNC_EVENTS if key in counts},
            "top_host_ops": [{"op": e.key, "count": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3} for e in top],
        })
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "top_host_ops"}), flush=True)
    return rows


def sample_gather(device: str, sizes: Sizes) -> list[dict]:
    """The anode ODE-ResNet training step with the saved-tensor samples gathered once per
    step against copied one tensor at a time (docs/design_decisions.md), interleaved."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(sizes.batch, 3, 32, 32, generator=gen).to(device)
    target = torch.randint(0, 10, (sizes.batch,), generator=gen).to(device)
    rows = []
    for steps in sizes.steps:
        torch.manual_seed(0)
        model = models.create("resnet", width=sizes.width, steps=steps, method="midpoint", grad="anode").to(device)

        def step_with(gathered: bool):
            def step() -> None:
                previous = _C.set_sample_gather(gathered)
                try:
                    _train_step(model, x, target)
                finally:
                    _C.set_sample_gather(previous)

            return step

        medians = compare_medians({"gathered": step_with(True), "one by one": step_with(False)}, device,
                                  repeats=sizes.model_repeats)
        rows.append({"steps": steps, "gathered_seconds": medians["gathered"],
                     "one_by_one_seconds": medians["one by one"],
                     "gathered_over_one_by_one": medians["gathered"] / medians["one by one"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(out_dir: str, device: str = "cuda", sizes: Sizes = Sizes()) -> dict:
    """Measure every figure, write OUT_DIR/gpu_figures.json and return its contents."""
    os.makedirs(out_dir, exist_ok=True)
    started = time.time()
    results = {
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
        "torch": torch.__version__,
        "build_info": build_info(),
        "date": time.strftime("%Y-%m-%d"),
        "sizes": sizes.__dict__,
    }
    path = os.path.join(out_dir, "gpu_figures.json")
    sections = [("rk_combine", combine_bandwidth), ("rda", rda_bandwidth), ("resnet", resnet_figures),
                ("resnet_block_vs_torchdiffeq", block_figures), ("anode_step_profile", step_profile),
                ("sample_gather", sample_gather)]
    for name, measure in sections:
        results[name] = measure(device, sizes)
        if name in ("rk_combine", "rda"):
            print(json.dumps(results[name], indent=1), flush=True)
        # Written after every section, so that a run cut short keeps what it measured.
        results["seconds"] = time.time() - started
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="toy sizes: check the script, measure nothing")
    args = parser.parse_args()
    main(args.out_dir, args.device, SMOKE if args.smoke else Sizes())
    sys.exit(0)
