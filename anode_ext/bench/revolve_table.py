"""Revolve against anode on one block: peak bytes saved for backward and func evaluations."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..models.blocks import ResNetBranch
from ..modes import grad_mode_named
from ..odeint import odeint
from .memory import count_saved_bytes


class _CountingConvFunc(ResNetBranch):
    """The ODE-ResNet branch, counting its evaluations."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.calls = 0

    def forward(self, t: float, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(t, x)


def _measure(steps: int, grad: str, checkpoints: int | None, method: str, shape: tuple[int, ...]) -> tuple[int, int]:
    torch.manual_seed(0)
    func = _CountingConvFunc(shape[1])
    x = torch.randn(shape, requires_grad=True)
    with count_saved_bytes(exclude=func.parameters()) as counter:
        odeint(func, x, steps=steps, method=method, grad=grad_mode_named(grad, checkpoints=checkpoints)).sum().backward()
    return counter.peak, func.calls


def revolve_table(
    steps_list: tuple[int, ...] = (8, 32, 128),
    method: str = "euler",
    shape: tuple[int, ...] = (2, 4, 8, 8),
) -> list[dict[str, Any]]:
    """For each Nt and c in {1, 2, 4, ceil(log2 Nt)}: peak bytes saved for backward and
    func evaluations of revolve, each also as a ratio to anode on the same block."""
    rows = []
    for steps in steps_list:
        anode_peak, anode_calls = _measure(steps, "anode", None, method, shape)
        for c in sorted({1, 2, 4, max(1, math.ceil(math.log2(steps)))}):
            peak, calls = _measure(steps, "revolve", c, method, shape)
            rows.append(
                {
                    "steps": steps,
                    "checkpoints": c,
                    "peak_saved_bytes": peak,
                    "evaluations": calls,
                    "anode_peak_saved_bytes": anode_peak,
                    "anode_evaluations": anode_calls,
                    "peak_ratio": peak / anode_peak,
                    "evaluation_ratio": calls / anode_calls,
                }
            )
    return rows


def format_revolve_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of revolve_table results."""
    lines = [
        "| Nt | c | peak saved bytes | / anode | func evaluations | / anode |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['steps']} | {r['checkpoints']} | {r['peak_saved_bytes']} | {r['peak_ratio']:.3f} "
            f"| {r['evaluations']} | {r['evaluation_ratio']:.2f} |"
        )
    return "\n".join(lines)
