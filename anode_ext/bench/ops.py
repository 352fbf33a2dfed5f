"""Benchmarks of the fused ops (rk_combine, the RDA ops) against the memory-traffic floor."""

from __future__ import annotations

from typing import Any

import torch

from ..ops import rk_combine
from ..rda import rda_rhs, rda_rk_step
from ..tableau import TABLEAUX
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


# Tensor passes each RDA op moves, in units of the weight's size: rda_rhs reads theta and
# writes q; the RK4 step reads theta and writes three stage weights and the new weight;
# its backward reads theta and four output gradients and writes theta's gradient.
RDA_PASSES = {"rda_rhs": 2, "rda_rk_step": 5, "rda_rk_step_backward": 6}

# tanh evaluations per weight element of each op with the RK4 tableau (the backward keeps
# rho from its first sweep for the second).
RDA_TANH_PASSES = {"rda_rhs": 1, "rda_rk_step": 4, "rda_rk_step_backward": 4}


def rda_filters_for(numel: int) -> tuple[int, int]:
    """(Cout, Cin) of a square 3x3 convolution weight of about `numel` elements."""
    side = max(1, round((numel / 9) ** 0.5))
    return side, side


def rda_ops_benchmark(
    filters: tuple[int, int], device: str = "cpu", dtype: torch.dtype = torch.float32, repeats: int = 11
) -> dict[str, Any]:
    """Time q(theta), the fused RK4 weight step and its backward on a (Cout, Cin, 3, 3)
    weight (tanh reaction) beside a copy of the weight, in one interleaved run.

    Each op's memory floor is the time of moving its tensor passes (RDA_PASSES) at the
    copy's bandwidth (a copy moves two passes); its tanh floor is the time of ATen's
    torch.tanh over the weight, into a preallocated tensor, once per evaluation
    (RDA_TANH_PASSES): on a CPU the ops are bound by their arithmetic, not by memory.
    """
    cout, cin = filters
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(cout, cin, 3, 3, generator=gen).to(device=device, dtype=dtype)
    coefficients = (torch.randn(4, cout, generator=gen) * 0.1).to(device=device, dtype=dtype)
    rk4 = TABLEAUX["rk4"]
    a = [w for row in rk4.a for w in row]
    grads = [torch.randn(theta.shape, generator=gen).to(device=device, dtype=dtype) for _ in range(rk4.stages)]
    out = torch.empty_like(theta)
    timings = compare_timings(
        {
            "copy": lambda: out.copy_(theta),
            "tanh": lambda: torch.tanh(theta, out=out),
            "rda_rhs": lambda: rda_rhs(theta, coefficients),
            "rda_rk_step": lambda: rda_rk_step(theta, coefficients, rk4, 0.1),
            "rda_rk_step_backward": lambda: torch.ops.anode_ext.rda_rk_step_backward(
                grads, theta, coefficients, 0, a, list(rk4.b), 0.1
            ),
        },
        device,
        repeats=repeats,
    )
    medians = {name: t.median for name, t in timings.items()}
    size = theta.numel() * theta.element_size()
    copy_bandwidth = 2 * size / medians["copy"]
    floors = {op: passes * size / copy_bandwidth for op, passes in RDA_PASSES.items()}
    tanh_floors = {op: passes * medians["tanh"] for op, passes in RDA_TANH_PASSES.items()}
    return {
        "filters": [cout, cin],
        "numel": theta.numel(),
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seconds": medians,
        "timings": {name: t.summary() for name, t in timings.items()},
        "copy_gb_per_s": copy_bandwidth / 1e9,
        "floor_seconds": floors,
        "over_floor": {op: medians[op] / floors[op] for op in RDA_PASSES},
        "tanh_floor_seconds": tanh_floors,
        "over_tanh_floor": {op: medians[op] / tanh_floors[op] for op in RDA_PASSES},
        "fraction_of_copy": {op: floors[op] / medians[op] for op in RDA_PASSES},
    }


def format_rda_ops(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of rda_ops_benchmark results."""
    lines = [
        "| device | dtype | weight | op | ms | memory floor ms | / memory floor | tanh floor ms | / tanh floor |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cout, cin = r["filters"]
        where = f"| {r['device']} ({r['threads']} threads) | {r['dtype']} | {cout}x{cin}x3x3"
        lines.append(f"{where} | copy (sets the memory floor) | {time_cell(r['timings']['copy'], digits=2)} | | | | |")
        lines.append(f"{where} | torch.tanh (sets the tanh floor) | {time_cell(r['timings']['tanh'], digits=2)} | | | | |")
        for op in RDA_PASSES:
            lines.append(
                f"{where} | {op} | {time_cell(r['timings'][op], digits=2)} | {r['floor_seconds'][op] * 1e3:.2f} "
                f"| {r['over_floor'][op]:.1f} | {r['tanh_floor_seconds'][op] * 1e3:.2f} | {r['over_tanh_floor'][op]:.2f} |"
            )
    return "\n".join(lines) + noisy_footnote(t for r in rows for t in r["timings"].values())
