"""What a gradient mode costs on one ODE block, measured against its baselines:

- the training step of a conv–BatchNorm–ReLU block under anode against direct
  (recomputation costs one extra forward) and against torchdiffeq.odeint_adjoint;
- the solver's own cost per step with a cheap func (a small MLP), against torchdiffeq;
- how far the adjoint gradients are from the exact gradient of the discrete solve.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..odeint import odeint
from ..tableau import get_tableau
from .blocks import block_gradients, gradient_error
from .funcs import MLP, ConvBNReLU2, ConvReLU
from .solvers import Solver, solvers, torchdiffeq
from .timing import compare_timings, median_paired_difference, noisy_footnote, one_thread, time_cell

_TORCHDIFFEQ_ODEINT = "torchdiffeq odeint"
_TORCHDIFFEQ_ADJOINT = "torchdiffeq odeint_adjoint"


def _chosen(names: tuple[str, ...]) -> list[Solver]:
    return [s for s in solvers(()) if s.name in names]


def conv_block_costs(
    channels: int, batch: int, image_size: int, method: str, steps: int, device: str, repeats: int
) -> dict[str, Any]:
    """Training-step times of a ConvBNReLU2 block in each mode, and their ratios.

    "forward without graph" is anode's extra work: anode can at best cost direct plus
    that, which the row reports as the recompute floor.
    """
    torch.manual_seed(0)
    func = ConvBNReLU2(channels).to(device)
    x = torch.randn(batch, channels, image_size, image_size, device=device, requires_grad=True)
    chosen = _chosen(("direct", "anode", _TORCHDIFFEQ_ODEINT, _TORCHDIFFEQ_ADJOINT))

    def train_step(solver: Solver) -> None:
        func.zero_grad(set_to_none=True)
        x.grad = None
        solver.integrate(func, x, method, steps).sum().backward()

    def forward_without_graph() -> None:
        with torch.no_grad():
            odeint(func, x, steps=steps, method=method, grad="direct")

    variants = {s.name: (lambda s=s: train_step(s)) for s in chosen}
    variants["forward without graph"] = forward_without_graph
    timings = compare_timings(variants, device, warmup=1, repeats=repeats)
    seconds = {name: t.median for name, t in timings.items()}
    result: dict[str, Any] = {
        "channels": channels,
        "batch": batch,
        "image_size": image_size,
        "method": method,
        "steps": steps,
        "seconds": seconds,
        "timings": {name: t.summary() for name, t in timings.items()},
        "anode_over_direct": seconds["anode"] / seconds["direct"],
        "recompute_floor_over_direct": 1 + seconds["forward without graph"] / seconds["direct"],
    }
    if _TORCHDIFFEQ_ADJOINT in seconds:
        result["anode_over_torchdiffeq_adjoint"] = seconds["anode"] / seconds[_TORCHDIFFEQ_ADJOINT]
        result["torchdiffeq_adjoint_over_odeint"] = seconds[_TORCHDIFFEQ_ADJOINT] / seconds[_TORCHDIFFEQ_ODEINT]
    return result


def format_conv_block(result: dict[str, Any]) -> str:
    """A Markdown table of conv_block_costs: one row per variant, times relative to direct."""
    s, direct = result["seconds"], result["seconds"]["direct"]
    lines = [
        f"conv–BN–ReLU ×2, {result['channels']} channels, {result['image_size']}×{result['image_size']}, "
        f"batch {result['batch']}, {result['method']}, Nt={result['steps']}",
        "",
        "| variant | ms | / direct |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {time_cell(result['timings'][name], digits=0)} | {value / direct:.2f} |"
              for name, value in s.items()]
    lines.append(f"| recompute floor (direct + forward without graph) | | {result['recompute_floor_over_direct']:.2f} |")
    if "anode_over_torchdiffeq_adjoint" in result:
        lines += [
            "",
            f"anode / torchdiffeq odeint_adjoint = {result['anode_over_torchdiffeq_adjoint']:.2f}; "
            f"torchdiffeq odeint_adjoint / odeint = {result['torchdiffeq_adjoint_over_odeint']:.2f}",
        ]
    return "\n".join(lines) + noisy_footnote(result["timings"].values())


def bare_evaluations(func: Callable[[float, Tensor], Tensor], x: Tensor, evaluations: int, train: bool = True) -> None:
    """func chained `evaluations` times from x, then (with `train`) backward through the
    chain: the matrix work of a solve's evaluations without its solver, for measuring a
    solver's overhead."""
    y = x
    for _ in range(evaluations):
        y = func(0.0, y)
    if train:
        y.sum().backward()


def step_overhead(
    dim: int = 16, hidden: int = 64, batch: int = 32, method: str = "rk4", steps: int = 100, repeats: int = 25
) -> dict[str, Any]:
    """Microseconds per step that a solver adds to the bare func evaluations, forward+backward
    and forward only, for anode_ext (direct) and torchdiffeq.odeint, on one CPU thread; and
    what anode's recompute costs there against its floor (direct plus one forward without
    a graph), as medians over rounds of the per-round ratios.

    The bare evaluations chain func as many times as the solve calls it (steps x stages),
    so they do the same matrix work; what is left is the solver's bookkeeping and
    arithmetic. The overhead is the median over rounds of the solve's time minus the
    bare evaluations' time in the same round (see median_paired_difference). One thread:
    these operations are too small to share, and a second thread waking up between them
    would be measured as overhead.
    """
    with one_thread():
        torch.manual_seed(0)
        func = MLP(dim, hidden)
        x = torch.randn(batch, dim, requires_grad=True)
        evaluations = steps * get_tableau(method).stages
        chosen = _chosen(("direct", _TORCHDIFFEQ_ODEINT))

        def bare(train: bool) -> None:
            with torch.set_grad_enabled(train):
                bare_evaluations(func, x, evaluations, train)

        def solve(solver: Solver, train: bool) -> None:
            with torch.set_grad_enabled(train):
                y = solver.integrate(func, x, method, steps)
                if train:
                    y.sum().backward()

        variants = {}
        for train, kind in ((True, "forward+backward"), (False, "forward")):
            variants[f"bare func, {kind}"] = lambda train=train: bare(train)
            for s in chosen:
                variants[f"{s.name}, {kind}"] = lambda s=s, train=train: solve(s, train)
        anode = Solver("anode", "anode_ext", "anode")
        variants["anode, forward+backward"] = lambda: solve(anode, True)
        timings = compare_timings(variants, "cpu", warmup=2, repeats=repeats)
    samples = {name: list(t.samples) for name, t in timings.items()}
    seconds = {name: t.median for name, t in timings.items()}
    overhead = {}
    for kind in ("forward+backward", "forward"):
        for s in chosen:
            added = median_paired_difference(samples, f"{s.name}, {kind}", f"bare func, {kind}")
            overhead[f"{s.name}, {kind}"] = added / steps * 1e6
    result: dict[str, Any] = {
        "dim": dim,
        "hidden": hidden,
        "batch": batch,
        "method": method,
        "steps": steps,
        "us_per_step": {name: value / steps * 1e6 for name, value in seconds.items()},
        "timings": {name: t.summary() for name, t in timings.items()},
        "overhead_us_per_step": overhead,
        "recompute": _recompute_ratios(samples),
    }
    if torchdiffeq is not None:
        result["overhead_ratio"] = {
            kind: overhead[f"direct, {kind}"] / overhead[f"{_TORCHDIFFEQ_ODEINT}, {kind}"]
            for kind in ("forward+backward", "forward")
        }
    return result


def _recompute_ratios(samples: dict[str, list[float]]) -> dict[str, Any]:
    """anode and its floor (direct + forward without graph) over direct, each the median
    over rounds of that round's ratio, and anode's excess over the floor likewise, with
    the range of that excess over the rounds."""
    rounds = list(zip(samples["anode, forward+backward"], samples["direct, forward+backward"],
                      samples["direct, forward"], strict=True))
    excess = sorted((a - d - f) / d for a, d, f in rounds)
    return {
        "anode_over_direct": statistics.median(a / d for a, d, _ in rounds),
        "floor_over_direct": statistics.median((d + f) / d for _, d, f in rounds),
        "anode_above_floor": statistics.median(excess),
        "anode_above_floor_range": [excess[0], excess[-1]],
    }


def format_step_overhead(result: dict[str, Any]) -> str:
    """A Markdown table of step_overhead."""
    lines = [
        f"MLP {result['dim']}-{result['hidden']}-{result['dim']}, batch {result['batch']}, {result['method']}, "
        f"{result['steps']} steps, one CPU thread",
        "",
        "| variant | us / step (median) | solver overhead us / step |",
        "|---|---:|---:|",
    ]
    for name in result["us_per_step"]:
        added = result["overhead_us_per_step"].get(name)
        cell = time_cell(result["timings"][name], scale=1e6 / result["steps"], digits=0)
        lines.append(f"| {name} | {cell} | {'-' if added is None else f'{added:.0f}'} |")
    if "overhead_ratio" in result:
        ratio = result["overhead_ratio"]
        lines += [
            "",
            f"anode_ext overhead / torchdiffeq overhead: {ratio['forward+backward']:.2f} forward+backward, "
            f"{ratio['forward']:.2f} forward only",
        ]
    recompute = result["recompute"]
    lines += [
        "",
        "Overhead: the median over rounds of the solve's time minus the bare func's time in the same round.",
        "",
        f"anode / direct = {recompute['anode_over_direct']:.2f}; recompute floor (direct + forward without "
        f"graph) / direct = {recompute['floor_over_direct']:.2f}; anode above the floor: "
        f"{recompute['anode_above_floor']:+.2f} of direct (medians of per-round ratios; range "
        f"{recompute['anode_above_floor_range'][0]:+.2f} to {recompute['anode_above_floor_range'][1]:+.2f})",
    ]
    return "\n".join(lines) + noisy_footnote(result["timings"].values())


def adjoint_errors(
    steps_list: tuple[int, ...] = (1, 2, 4, 8),
    channels: int = 32,
    image_size: int = 16,
    batch: int = 2,
    method: str = "rk4",
) -> list[dict[str, Any]]:
    """||g - g_exact|| / ||g_exact|| of the adjoint gradients of a ConvReLU block (float64),
    g_exact being the direct gradient of the same discrete solve (torchdiffeq's rk4 is the
    3/8 rule, so its reference is our rk4_38)."""
    torch.manual_seed(0)
    func = ConvReLU(channels).double()
    x = torch.randn(batch, channels, image_size, image_size, dtype=torch.float64)
    direct = Solver("direct", "anode_ext", "direct")
    rows = []
    for steps in steps_list:
        for solver in _chosen(("adjoint", _TORCHDIFFEQ_ADJOINT)):
            exact = block_gradients(func, x, direct, solver.exact_method(method), steps)
            got = block_gradients(func, x, solver, method, steps)
            rows.append({"solver": solver.name, "steps": steps, "method": method, "grad_error": gradient_error(got, exact)})
    return rows


def format_adjoint_errors(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per solver, one column per Nt."""
    steps = sorted({r["steps"] for r in rows})
    names = list(dict.fromkeys(r["solver"] for r in rows))
    value = {(r["solver"], r["steps"]): r["grad_error"] for r in rows}
    lines = ["| solver | " + " | ".join(f"Nt={n}" for n in steps) + " |", "|---|" + "---:|" * len(steps)]
    lines += [f"| {name} | " + " | ".join(f"{value[(name, n)]:.1e}" for n in steps) + " |" for name in names]
    return "\n".join(lines)
