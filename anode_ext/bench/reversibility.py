"""ANODE's reversibility demonstration: how well a block's input is reconstructed by
solving backwards in time from its output, for ReLU convolution blocks.

The continuous adjoint method relies on this reconstruction; for ReLU/convolution
dynamics it fails as the weights grow, whatever Nt. Beside it, the round trip of the
reversible method (anode_ext.reversible), whose inverse grad='reversible' relies on:
exact but for rounding."""

from __future__ import annotations

from typing import Any

import torch

from ..odeint import fixed_step_problem, odeint
from ..reversible import Reversible
from .funcs import ConvReLU

REVERSE_TIME = "reverse-time solve"
REVERSIBLE_INVERSE = "reversible method's inverse"


def reversibility(
    steps_list: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    scales: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0),
    method: str = "euler",
    channels: int = 8,
    batch: int = 4,
    image_size: int = 16,
) -> list[dict[str, Any]]:
    """||x - x_back|| / ||x|| (float64) where x_back solves the block backwards from its
    output (reconstruction REVERSE_TIME), or steps the reversible version of `method`
    back by its inverse (REVERSIBLE_INVERSE; the larger error of y_0 and z_0)."""
    rows = []
    for scale in scales:
        torch.manual_seed(0)
        func = ConvReLU(channels, scale).double()
        x = torch.randn(batch, channels, image_size, image_size, dtype=torch.float64)
        for steps in steps_list:
            with torch.no_grad():
                y = odeint(func, x, 0.0, 1.0, steps=steps, method=method)
                back = odeint(func, y, 1.0, 0.0, steps=steps, method=method)
            errors = {REVERSE_TIME: ((back - x).norm() / x.norm()).item(),
                      REVERSIBLE_INVERSE: _inverse_round_trip(func, x, steps, method)}
            for reconstruction, error in errors.items():
                rows.append({"weight_scale": scale, "steps": steps, "method": method,
                             "reconstruction": reconstruction, "relative_error": error})
    return rows


def _inverse_round_trip(func: ConvReLU, x: torch.Tensor, steps: int, method: str) -> float:
    problem = fixed_step_problem(lambda t, s: (func(t, s[0]),), 0.0, 1.0, steps, Reversible(method))
    with torch.no_grad():
        pair = (x, x)
        for n in range(steps):
            pair = problem.full_step(n, pair)
        for n in reversed(range(steps)):
            pair = problem.inverse(n, pair)
    return max(((p - x).norm() / x.norm()).item() for p in pair)


def format_reversibility(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per reconstruction and weight scale, one column per Nt."""
    steps = sorted({r["steps"] for r in rows})
    scales = sorted({r["weight_scale"] for r in rows})
    value = {(r["reconstruction"], r["weight_scale"], r["steps"]): r["relative_error"] for r in rows}
    lines = ["| reconstruction | weight scale | " + " | ".join(f"Nt={n}" for n in steps) + " |",
             "|---|---:|" + "---:|" * len(steps)]
    for kind in (REVERSE_TIME, REVERSIBLE_INVERSE):
        for s in scales:
            lines.append(f"| {kind} | {s:g} | " + " | ".join(f"{value[(kind, s, n)]:.1e}" for n in steps) + " |")
    return "\n".join(lines)
