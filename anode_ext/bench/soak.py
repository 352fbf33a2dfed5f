"""A soak run: many training steps of one ODE block in each gradient mode, recording the
process's resident memory and the number of live tensors as it goes. Anything a step
leaves behind (a graph, a recompute's saved tensors, a hook) shows as growth."""

from __future__ import annotations

import gc
import os
import resource
from typing import Any

import torch
from torch import nn

from ..block import ODEBlock
from ..modes import grad_mode_named
from .funcs import MLP, ConvBNReLU2

SOAK_MODES = (("direct", None), ("anode", None), ("revolve", 2), ("adjoint", None))


def resident_bytes() -> int:
    """The process's resident set size now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024


def live_tensors() -> int:
    """Tensors reachable by the garbage collector, after a collection."""
    gc.collect()
    # type() rather than isinstance: some objects in a process with torch warn when
    # asked for their __class__.
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


def _model(kind: str, grad: str, checkpoints: int | None) -> tuple[nn.Module, torch.Tensor]:
    """An ODE block (rk4, 3 steps) with a linear head, and an input batch for it."""
    if kind == "conv":
        func, x = ConvBNReLU2(4), torch.randn(4, 4, 8, 8)
    elif kind == "mlp":
        func, x = MLP(8, 16), torch.randn(4, 8)
    else:
        raise ValueError(f"unknown soak block {kind!r}; expected 'conv' or 'mlp'")
    block = ODEBlock(func, steps=3, method="rk4", grad=grad_mode_named(grad, checkpoints=checkpoints))
    return nn.Sequential(block, nn.Flatten(), nn.Linear(x[0].numel(), 10)), x


def soak(steps: int, every: int, kind: str = "conv",
         modes: tuple[tuple[str, int | None], ...] = SOAK_MODES) -> list[dict[str, Any]]:
    """For each (grad, checkpoints): `steps` SGD steps of an ODE block (`kind` "conv":
    conv-BN-ReLU x2 on 4x8x8 images; "mlp": an 8-16-8 MLP) with a linear head, with RSS
    (bytes) and live tensors read every `every` steps. Growth is measured from the first
    reading, taken after `every` steps of warm-up (allocator pools, caches), to the last."""
    rows = []
    for grad, checkpoints in modes:
        torch.manual_seed(0)
        model, x = _model(kind, grad, checkpoints)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        target = torch.randint(0, 10, (x.shape[0],))
        readings = []
        for step in range(1, steps + 1):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), target).backward()
            opt.step()
            if step % every == 0:
                readings.append({"step": step, "rss_bytes": resident_bytes(), "live_tensors": live_tensors()})
        first, last = readings[0], readings[-1]
        rows.append({
            "grad": grad,
            "checkpoints": checkpoints,
            "block": kind,
            "steps": steps,
            "readings": readings,
            "rss_growth": (last["rss_bytes"] - first["rss_bytes"]) / first["rss_bytes"],
            "live_tensor_growth": last["live_tensors"] - first["live_tensors"],
        })
    return rows


def format_soak(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: first and last readings and the growth, per mode."""
    lines = [
        "| mode | steps | RSS MiB (first → last reading) | RSS growth | live tensors (first → last) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        first, last = r["readings"][0], r["readings"][-1]
        mode = r["grad"] + (f" c={r['checkpoints']}" if r["checkpoints"] else "")
        lines.append(
            f"| {mode} | {r['steps']} | {first['rss_bytes'] / 2**20:.1f} → {last['rss_bytes'] / 2**20:.1f} "
            f"| {100 * r['rss_growth']:+.2f} % | {first['live_tensors']} → {last['live_tensors']} |"
        )
    return "\n".join(lines)
