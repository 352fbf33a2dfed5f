"""ANODE's reversibility demonstration: how well a block's input is reconstructed by
solving backwards in time from its output, for ReLU convolution blocks.

The continuous adjoint method relies on this reconstruction; for ReLU/convolution
dynamics it fails as the weights grow, whatever Nt."""

from __future__ import annotations

from typing import Any

import torch

from ..odeint import odeint
from .funcs import ConvReLU


def reversibility(
    steps_list: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    scales: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0),
    method: str = "euler",
    channels: int = 8,
    batch: int = 4,
    image_size: int = 16,
) -> list[dict[str, Any]]:
    """||x - x_back|| / ||x|| where x_back solves the block backwards from its output (float64)."""
    rows = []
    for scale in scales:
        torch.manual_seed(0)
        func = ConvReLU(channels, scale).double()
        x = torch.randn(batch, channels, image_size, image_size, dtype=torch.float64)
        for steps in steps_list:
            with torch.no_grad():
                y = odeint(func, x, 0.0, 1.0, steps=steps, method=method)
                back = odeint(func, y, 1.0, 0.0, steps=steps, method=method)
            error = ((back - x).norm() / x.norm()).item()
            rows.append({"weight_scale": scale, "steps": steps, "method": method, "relative_error": error})
    return rows


def format_reversibility(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per weight scale, one column per Nt."""
    steps = sorted({r["steps"] for r in rows})
    scales = sorted({r["weight_scale"] for r in rows})
    value = {(r["weight_scale"], r["steps"]): r["relative_error"] for r in rows}
    lines = ["| weight scale | " + " | ".join(f"Nt={n}" for n in steps) + " |", "|---:|" + "---:|" * len(steps)]
    for s in scales:
        lines.append(f"| {s:g} | " + " | ".join(f"{value[(s, n)]:.1e}" for n in steps) + " |")
    return "\n".join(lines)
