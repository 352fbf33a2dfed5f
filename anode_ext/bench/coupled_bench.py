"""ANODEv2: the cost of a coupled training step against an uncoupled one, same block, same run."""

from __future__ import annotations

from typing import Any

import torch

from ..block import ODEBlock
from ..coupled import CoupledODEBlock
from .blocks import BLOCK_FUNCS
from .timing import compare_timings, noisy_footnote, time_cell


def coupled_benchmark(
    kind: str, channels: int, batch: int, image_size: int, method: str, steps: int, grad: str, device: str, repeats: int
) -> dict[str, Any]:
    """Median step times of one branch as an ODE block and as an RDA-coupled block."""
    torch.manual_seed(0)
    func = BLOCK_FUNCS[kind](channels).to(device)
    x = torch.randn(batch, channels, image_size, image_size, device=device, requires_grad=True)
    blocks = {
        "uncoupled": ODEBlock(func, steps=steps, method=method, grad=grad),
        "coupled (rda)": CoupledODEBlock(func, q="rda", steps=steps, method=method, grad=grad).to(device),
    }

    def step(block):
        block.zero_grad(set_to_none=True)
        block(x).sum().backward()

    timings = compare_timings({name: (lambda b=b: step(b)) for name, b in blocks.items()}, device, warmup=1,
                              repeats=repeats)
    times = {name: t.median for name, t in timings.items()}
    return {
        "block": kind, "channels": channels, "batch": batch, "method": method, "steps": steps, "grad": grad,
        "seconds": times, "timings": {name: t.summary() for name, t in timings.items()},
        "coupled_over_uncoupled": times["coupled (rda)"] / times["uncoupled"],
    }


def format_coupled(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of coupled_benchmark results."""
    lines = ["| block | method | Nt | grad | uncoupled ms | coupled ms | coupled / uncoupled |", "|---|---|---:|---|---:|---:|---:|"]
    for r in rows:
        s = r["timings"]
        lines.append(
            f"| {r['block']} ({r['channels']} ch) | {r['method']} | {r['steps']} | {r['grad']} | {time_cell(s['uncoupled'])} "
            f"| {time_cell(s['coupled (rda)'])} | {r['coupled_over_uncoupled']:.2f} |"
        )
    return "\n".join(lines) + noisy_footnote(t for r in rows for t in r["timings"].values())
