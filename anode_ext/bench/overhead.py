"""Where the time of a solver step goes when func is cheap: the measurements that decided
what runs in C++ (see docs/design_decisions.md)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..solver import python_rk_step, rk_step
from ..tableau import get_tableau
from .timing import compare_timings, noisy_footnote, time_cell

_PYTHON_OP = "anode_ext_bench::rk_combine_python_autograd"
_registered = False


def _register_python_autograd_twin() -> None:
    """The same kernel behind an op whose autograd is torch.library.register_autograd."""
    global _registered
    if _registered:
        return

    @torch.library.custom_op(_PYTHON_OP, mutates_args=())
    def twin(y: Tensor, ks: list[Tensor], weights: list[float], h: float) -> Tensor:
        return torch.ops.anode_ext.rk_combine.default(y, ks, weights, h)

    @twin.register_fake
    def _(y, ks, weights, h):
        return torch.empty_like(y)

    def setup(ctx, inputs, output):
        ctx.weights, ctx.h = inputs[2], inputs[3]

    def backward(ctx, grad):
        return grad, torch.ops.anode_ext.rk_combine_backward.default(grad, ctx.weights, ctx.h), None, None

    twin.register_autograd(backward, setup_context=setup)
    _registered = True


def overhead_benchmark(repeats: int = 11, calls: int = 2000) -> dict[str, Any]:
    """Per-call cost of rk_combine on 16 elements (C++ vs Python autograd registration),
    and of one RK4 step with a func that does no work (compiled loop vs Python loop),
    in microseconds."""
    _register_python_autograd_twin()
    twin = torch.ops.anode_ext_bench.rk_combine_python_autograd.default
    fused = torch.ops.anode_ext.rk_combine.default
    y = torch.randn(16, requires_grad=True)
    ks = [torch.randn(16) for _ in range(2)]
    weights = [0.5, 0.5]
    rk4 = get_tableau("rk4")

    def identity(t: float, state):
        return state

    def repeat(fn):
        def run():
            for _ in range(calls):
                fn()

        return run

    # The four rk_combine calls the Python loop makes in an RK4 step (3 stage inputs, 1 update).
    def four_combines():
        fused(y, [y], [0.5], 0.1)
        fused(y, [y], [0.5], 0.1)
        fused(y, [y], [1.0], 0.1)
        fused(y, [y, y, y, y], [1 / 6, 1 / 3, 1 / 3, 1 / 6], 0.1)

    timings = compare_timings(
        {
            "cpp_autograd": repeat(lambda: fused(y, ks, weights, 0.1)),
            "python_autograd": repeat(lambda: twin(y, ks, weights, 0.1)),
            "eager_expression": repeat(lambda: y + 0.1 * (0.5 * ks[0] + 0.5 * ks[1])),
            "rk4_step": repeat(lambda: rk_step(identity, 0.0, 0.1, (y,), rk4)),
            "rk4_step_python": repeat(lambda: python_rk_step(identity, 0.0, 0.1, (y,), rk4)),
            "rk4_step_combines_only": repeat(four_combines),
        },
        "cpu",
        repeats=repeats,
    )
    per_call = {name: t.median / calls * 1e6 for name, t in timings.items()}
    per_call["rk4_step_python_bookkeeping"] = per_call["rk4_step_python"] - per_call["rk4_step_combines_only"]
    return {"microseconds_per_call": per_call, "timings": {name: t.summary() for name, t in timings.items()},
            "elements": 16, "calls_per_sample": calls}


def format_overhead(result: dict[str, Any]) -> str:
    """A Markdown table of overhead_benchmark results."""
    timings, scale = result["timings"], 1e6 / result["calls_per_sample"]
    rows = [
        ("rk_combine, autograd registered in C++", "cpp_autograd"),
        ("the same kernel, autograd via torch.library.register_autograd", "python_autograd"),
        ("eager y + h (w1 k1 + w2 k2)", "eager_expression"),
        ("one RK4 step, func(t, y) = y, compiled step loop", "rk4_step"),
        ("one RK4 step, func(t, y) = y, Python step loop", "rk4_step_python"),
        ("  of which the 4 rk_combine calls from Python", "rk4_step_combines_only"),
    ]
    lines = ["| per call, 16 elements, inputs require grad | us |", "|---|---:|"]
    lines += [f"| {name} | {time_cell(timings[key], scale=scale)} |" for name, key in rows]
    lines.append(f"|   of which Python bookkeeping | {result['microseconds_per_call']['rk4_step_python_bookkeeping']:.1f} |")
    return "\n".join(lines) + noisy_footnote(timings.values())
