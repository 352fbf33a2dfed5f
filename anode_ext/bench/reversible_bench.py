"""grad='reversible' against direct, anode and revolve as Nt grows: training-step time,
peak bytes saved for backward and func evaluations, side by side."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..models.blocks import ResNetBranch
from ..modes import GradMode, Revolve
from ..odeint import odeint
from ..tableau import TABLEAUX
from .blocks import block_gradients, gradient_error
from .funcs import MLP
from .memory import count_saved_bytes
from .solvers import Solver
from .timing import compare_timings, time_cell

# revolve with one checkpoint recomputes Nt (Nt + 1) / 2 steps: beyond this Nt it is not run.
MAX_STEPS_ONE_CHECKPOINT = 128


class _Counting(nn.Module):
    """A func that counts its evaluations."""

    def __init__(self, func: nn.Module) -> None:
        super().__init__()
        self.func = func
        self.calls = 0

    def forward(self, t: float, x: Tensor) -> Tensor:
        self.calls += 1
        return self.func(t, x)


def variants(steps: int) -> dict[str, tuple[str, str | GradMode]]:
    """The variants compared at `steps`: name -> (method, grad). The base method is rk4;
    revolve with one checkpoint only up to MAX_STEPS_ONE_CHECKPOINT steps."""
    log_c = max(1, math.ceil(math.log2(steps)))
    chosen = {
        "direct": ("rk4", "direct"),
        "anode": ("rk4", "anode"),
        f"revolve c={log_c}": ("rk4", Revolve(checkpoints=log_c)),
        "reversible (reversible_rk4)": ("reversible_rk4", "reversible"),
    }
    if steps <= MAX_STEPS_ONE_CHECKPOINT and log_c != 1:
        chosen["revolve c=1"] = ("rk4", Revolve(checkpoints=1))
    return chosen


def _problem(kind: str, size: dict[str, int]) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    if kind == "mlp":
        return MLP(size["dim"], size["hidden"]), torch.randn(size["batch"], size["dim"], requires_grad=True)
    if kind == "resnet":
        channels, image = size["channels"], size["image_size"]
        return ResNetBranch(channels), torch.randn(size["batch"], channels, image, image, requires_grad=True)
    raise ValueError(f"unknown block kind {kind!r}; expected 'mlp' or 'resnet'")


def reversible_benchmark(kind: str, size: dict[str, int], steps_list: tuple[int, ...], repeats: int,
                         progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """A row per Nt and variant: median seconds of a training step (forward + backward of
    a weighted sum, timed in turns with the other variants of that Nt), peak bytes saved
    for backward (parameters excluded) and func evaluations, each also over anode's."""
    func, x = _problem(kind, size)
    counting = _Counting(func)
    weights = torch.linspace(-1.0, 1.0, x.numel()).view(x.shape)
    rows = []
    for steps in steps_list:
        progress(f"  {kind}, Nt={steps}")
        chosen = variants(steps)

        def train_step(method: str, grad: str | GradMode) -> None:
            (odeint(counting, x, steps=steps, method=method, grad=grad) * weights).sum().backward()

        times = compare_timings({name: (lambda m=m, g=g: train_step(m, g)) for name, (m, g) in chosen.items()},
                                "cpu", warmup=1, repeats=repeats)
        measured = {}
        for name, (method, grad) in chosen.items():
            counting.calls = 0
            with count_saved_bytes(exclude=func.parameters()) as counter:
                train_step(method, grad)
            measured[name] = (counter.peak, counting.calls)
        anode_time, (anode_peak, anode_calls) = times["anode"].median, measured["anode"]
        for name, timing in times.items():
            peak, calls = measured[name]
            rows.append({
                "block": kind, **size, "steps": steps, "variant": name,
                "seconds": timing.median, "timing": timing.summary(), "time_over_anode": timing.median / anode_time,
                "peak_saved_bytes": peak, "peak_over_anode": peak / anode_peak,
                "evaluations": calls, "evaluations_over_anode": calls / anode_calls,
            })
    return rows


def gradient_agreement(kind: str, size: dict[str, int], steps_list: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per Nt: the largest relative gradient error (input and parameters as one vector) of
    grad='reversible' against grad='direct' on the same reversible method, over every
    built-in base tableau, in float64 (BatchNorm in training mode)."""
    func, x = _problem(kind, size)
    func, x = func.double(), x.detach().double()
    direct, reversible = Solver("direct", "anode_ext", "direct"), Solver("reversible", "anode_ext", "reversible")
    rows = []
    for steps in steps_list:
        worst = max(
            gradient_error(block_gradients(func, x, reversible, method, steps), block_gradients(func, x, direct, method, steps))
            for method in ("reversible_" + name for name in sorted(TABLEAUX))
        )
        rows.append({"block": kind, **size, "steps": steps, "worst_relative_gradient_error": worst})
    return rows


def format_agreement(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: one line per block, one column per Nt."""
    steps = sorted({r["steps"] for r in rows})
    lines = ["| block | " + " | ".join(f"Nt={n}" for n in steps) + " |", "|---|" + "---:|" * len(steps)]
    for kind in dict.fromkeys(r["block"] for r in rows):
        value = {r["steps"]: r["worst_relative_gradient_error"] for r in rows if r["block"] == kind}
        lines.append(f"| {kind} | " + " | ".join(f"{value[n]:.1e}" for n in steps) + " |")
    return "\n".join(lines)


def format_reversible(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: one line per block, Nt and variant."""
    lines = [
        "| block | Nt | variant | ms / step | / anode | peak saved KiB | / anode | func evaluations | / anode |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['block']} | {r['steps']} | {r['variant']} | {time_cell(r['timing'], scale=1e3, digits=1)} "
            f"| {r['time_over_anode']:.2f} | {r['peak_saved_bytes'] / 1024:,.1f} | {r['peak_over_anode']:.3f} "
            f"| {r['evaluations']:,} | {r['evaluations_over_anode']:.2f} |"
        )
    return "\n".join(lines)
