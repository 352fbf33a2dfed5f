"""Whole models: training-step time and memory for each gradient mode, side by side."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .. import models
from ..modes import grad_mode_named
from .memory import count_saved_bytes
from .timing import compare_timings, noisy_footnote, synchronize, time_cell

# (label, grad, checkpoints, coupled)
MODEL_MODES = [
    ("direct", "direct", None, "none"),
    ("anode", "anode", None, "none"),
    ("revolve c=1", "revolve", 1, "none"),
    ("adjoint", "adjoint", None, "none"),
    ("anode, ANODEv2 coupled=all", "anode", None, "all"),
]


def _train_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), target).backward()


def model_benchmark(
    name: str,
    width: float,
    batch: int,
    image_size: int,
    steps: int,
    method: str,
    device: str,
    repeats: int,
    modes: list[tuple[str, str, int | None, str]] = MODEL_MODES,
) -> list[dict[str, Any]]:
    """A row per gradient mode for one model and Nt."""
    built = {}
    for label, grad, checkpoints, coupled in modes:
        torch.manual_seed(0)
        built[label] = models.create(
            name, width=width, steps=steps, method=method, grad=grad_mode_named(grad, checkpoints=checkpoints),
            coupled=coupled
        ).to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen).to(device)
    target = torch.randint(0, 10, (batch,), generator=gen).to(device)
    timings = compare_timings(
        {label: (lambda m=m: _train_step(m, x, target)) for label, m in built.items()}, device, warmup=1, repeats=repeats
    )
    times = {label: t.median for label, t in timings.items()}
    rows = []
    for label, model in built.items():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        model.zero_grad(set_to_none=True)
        with count_saved_bytes(exclude=model.parameters()) as counter:
            loss = F.cross_entropy(model(x), target)
            held = counter.total
            loss.backward()
        device_peak = None
        if cuda:
            synchronize(device)
            device_peak = torch.cuda.max_memory_allocated(device) - before
        rows.append(
            {
                "model": name,
                "width": width,
                "parameters": models.parameter_count(model),
                "batch": batch,
                "method": method,
                "steps": steps,
                "mode": label,
                "seconds": times[label],
                "timing": timings[label].summary(),
                "images_per_s": batch / times[label],
                "saved_bytes_per_image": held / batch,
                "saved_bytes_peak_per_image": counter.peak / batch,
                "device_peak_bytes": device_peak,
                "time_over_direct": times[label] / times["direct"],
            }
        )
    return rows


def format_model_rows(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of model_benchmark rows."""
    lines = [
        "| model | Nt | mode | ms / step | images/s | / direct | saved KiB / image (after forward, peak) | GPU peak MiB |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        device_peak = "-" if r["device_peak_bytes"] is None else f"{r['device_peak_bytes'] / 2**20:.0f}"
        lines.append(
            f"| {r['model']} (x{r['width']:g}) | {r['steps']} | {r['mode']} | {time_cell(r['timing'], digits=0)} "
            f"| {r['images_per_s']:.1f} | {r['time_over_direct']:.2f} "
            f"| {r['saved_bytes_per_image'] / 1024:.0f}, {r['saved_bytes_peak_per_image'] / 1024:.0f} | {device_peak} |"
        )
    return "\n".join(lines) + noisy_footnote(r["timing"] for r in rows)
