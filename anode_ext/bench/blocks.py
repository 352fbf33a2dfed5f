"""ODE blocks of the two model families, integrated every way: time, memory, gradient error."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..models.blocks import ResNetBranch, SqnxtBranch
from .memory import count_saved_bytes
from .solvers import Solver
from .timing import compare_timings, noisy_footnote, synchronize, time_cell

BLOCK_FUNCS: dict[str, Callable[[int], nn.Module]] = {
    "resnet": ResNetBranch,
    "sqnxt": lambda channels: SqnxtBranch(channels, channels),
}


def _output_weights(shape: torch.Size, dtype: torch.dtype, device: str) -> Tensor:
    # A fixed, non-uniform cotangent: every output element matters differently.
    return torch.linspace(-1.0, 1.0, int(torch.Size(shape).numel()), dtype=dtype, device=device).view(shape)


def _step(func: nn.Module, x: Tensor, solver: Solver, method: str, steps: int, weights: Tensor) -> None:
    (solver.integrate(func, x, method, steps) * weights).sum().backward()


def block_gradients(func: nn.Module, x: Tensor, solver: Solver, method: str, steps: int) -> list[Tensor]:
    """The input and parameter gradients of <solve(x), fixed weights>; zeros where unused."""
    func.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    y = solver.integrate(func, x, method, steps)
    (y * _output_weights(y.shape, y.dtype, str(y.device))).sum().backward()
    return [x.grad] + [p.grad if p.grad is not None else torch.zeros_like(p) for p in func.parameters()]


def gradient_error(got: list[Tensor], exact: list[Tensor]) -> float:
    """||got - exact|| / ||exact|| over all gradients (input and parameters) as one vector.

    One norm for the whole gradient: per-tensor ratios would be dominated by tensors whose
    exact gradient is zero up to rounding (a convolution bias followed by BatchNorm).
    """
    diff = sum((g - e).double().square().sum() for g, e in zip(got, exact))
    scale = sum(e.double().square().sum() for e in exact)
    return float((diff / scale).sqrt()) if scale > 0 else float(diff.sqrt())


def _memory(func: nn.Module, x: Tensor, solver: Solver, method: str, steps: int, device: str) -> tuple[int, int, int | None]:
    weights = _output_weights(x.shape, x.dtype, device)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    with count_saved_bytes(exclude=func.parameters()) as counter:
        y = solver.integrate(func, x, method, steps)
        held = counter.total
        (y * weights).sum().backward()
    peak_device = None
    if cuda:
        synchronize(device)
        peak_device = torch.cuda.max_memory_allocated(device) - before
    return held, counter.peak, peak_device


def block_benchmark(
    kind: str,
    channels: int,
    batch: int,
    image_size: int,
    method: str,
    steps: int,
    solver_list: list[Solver],
    device: str,
    repeats: int,
) -> list[dict[str, Any]]:
    """Every solver on one block, method and Nt: a row per solver."""
    torch.manual_seed(0)
    func = BLOCK_FUNCS[kind](channels).to(device)
    x = torch.randn(batch, channels, image_size, image_size, device=device).requires_grad_(True)
    weights = _output_weights(x.shape, x.dtype, device)
    times = compare_timings(
        {s.name: (lambda s=s: _step(func, x, s, method, steps, weights)) for s in solver_list},
        device,
        warmup=1,
        repeats=repeats,
    )
    func64, x64 = copy.deepcopy(func).double(), x.detach().double()
    exact: dict[str, list[Tensor]] = {}
    rows = []
    for solver in solver_list:
        reference_method = solver.exact_method(method)
        if reference_method not in exact:
            exact[reference_method] = block_gradients(func64, x64, Solver("direct", "anode_ext", "direct"), reference_method, steps)
        error = gradient_error(block_gradients(func64, x64, solver, method, steps), exact[reference_method])
        held, peak, device_peak = _memory(func, x, solver, method, steps, device)
        rows.append(
            {
                "block": kind,
                "channels": channels,
                "batch": batch,
                "image_size": image_size,
                "method": method,
                "steps": steps,
                "solver": solver.name,
                "seconds": times[solver.name].median,
                "timing": times[solver.name].summary(),
                "images_per_s": batch / times[solver.name].median,
                "saved_bytes_after_forward": held,
                "saved_bytes_peak": peak,
                "device_peak_bytes": device_peak,
                "grad_error": error,
            }
        )
    return rows


def format_block_rows(rows: list[dict[str, Any]], steps: int) -> str:
    """A Markdown table of the rows with Nt = `steps`, one line per block, method and solver."""
    lines = [
        f"| block | method | solver (Nt={steps}) | ms / step | images/s | saved MiB (peak) | GPU peak MiB | grad error |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    shown = [r for r in rows if r["steps"] == steps]
    for r in shown:
        device_peak = "-" if r["device_peak_bytes"] is None else f"{r['device_peak_bytes'] / 2**20:.1f}"
        lines.append(
            f"| {r['block']} | {r['method']} | {r['solver']} | {time_cell(r['timing'])} | {r['images_per_s']:.0f} "
            f"| {r['saved_bytes_peak'] / 2**20:.2f} | {device_peak} | {r['grad_error']:.1e} |"
        )
    return "\n".join(lines) + noisy_footnote(r["timing"] for r in shown)
