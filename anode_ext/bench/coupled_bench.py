"""ANODEv2: the cost of a coupled training step against an uncoupled one, same block, same run."""

from __future__ import annotations

from typing import Any

import torch

from ..block import ODEBlock
from ..coupled import CoupledODEBlock
from .blocks import BLOCK_FUNCS
from .timing import compare_medians


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

    times = compare_medians({name: (lambda b=b: step(b)) for name, b in blocks.items()}, device, warmup=1, repeats=repeats)
    return {
        "block": kind, "channels": channels, "batch": batch, "method": method, "steps": steps, "grad": grad,
        "seconds": times, "coupled_over_uncoupled": times["coupled (rda)"] / times["uncoupled"],
    }


def format_coupled(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of coupled_benchmark results."""
    lines = ["| block | method | Nt | grad | uncoupled ms | coupled ms | coupled / uncoupled |", "|---|---|---:|---|---:|---:|---:|"]
    for r in rows:
        s = r["seconds"]
        lines.append(
            f"| {r['block']} ({r['channels']} ch) | {r['method']} | {r['steps']} | {r['grad']} | {s['uncoupled'] * 1e3:.1f} "
            f"| {s['coupled (rda)'] * 1e3:.1f} | {r['coupled_over_uncoupled']:.2f} |"
        )
    return "\n".join(lines)
