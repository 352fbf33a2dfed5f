"""Benchmark of the fused rk_combine op against eager PyTorch and the memory-traffic floor."""

from __future__ import annotations

from typing import Any

import torch

from ..ops import rk_combine
from .timing import compare_timings, noisy_footnote, time_cell

RK4_WEIGHTS = (1 / 6, 1 / 3, 1 / 3, 1 / 6)


def rk4_combine_benchmark(
    numel: int = 1 << 24,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    repeats: int = 11,
) -> dict[str, Any]:
    """Time the RK4 update ``y + h/6 (k1 + 2 k2 + 2 k3 + k4)`` three ways.

    The floor is the time of moving the 6 tensor passes the update needs (read y and
    four ks, write the result), taken as 3x ``y.clone()``, which moves 2.
    """
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(numel, generator=gen).to(device=device, dtype=dtype)
    ks = [torch.randn(numel, generator=gen).to(device=device, dtype=dtype) for _ in range(4)]
    out = torch.empty_like(y)
    h = 0.1
    k1, k2, k3, k4 = ks
    timings = compare_timings(
        {
            "eager": lambda: y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4),
            "fused": lambda: rk_combine(y, ks, RK4_WEIGHTS, h),
            "fused_out": lambda: rk_combine(y, ks, RK4_WEIGHTS, h, out=out),
            "clone": lambda: y.clone(),
        },
        device,
        repeats=repeats,
    )
    medians = {name: t.median for name, t in timings.items()}
    floor = 3 * medians["clone"]
    bytes_moved = 6 * numel * y.element_size()
    return {
        "numel": numel,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "seconds": medians,
        "timings": {name: t.summary() for name, t in timings.items()},
        "floor_seconds": floor,
        "eager_over_fused": medians["eager"] / medians["fused"],
        "fused_over_floor": medians["fused"] / floor,
        "fused_out_over_floor": medians["fused_out"] / floor,
        "eager_over_floor": medians["eager"] / floor,
        "fused_gb_per_s": bytes_moved / medians["fused"] / 1e9,
    }


def format_rk4_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of rk4_combine_benchmark results."""
    lines = [
        "| device | dtype | elements | eager ms | fused ms | fused out= ms | floor ms "
        "| eager/fused | fused/floor | eager/floor |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r["timings"]
        lines.append(
            f"| {r['device']} | {r['dtype']} | {r['numel']} | {time_cell(s['eager'], digits=2)} "
            f"| {time_cell(s['fused'], digits=2)} | {time_cell(s['fused_out'], digits=2)} | {time_cell(s['clone'], scale=3e3, digits=2)} "
            f"| {r['eager_over_fused']:.2f} | {r['fused_over_floor']:.2f} | {r['eager_over_floor']:.2f} |"
        )
    return "\n".join(lines) + noisy_footnote(t for r in rows for t in r["timings"].values())
