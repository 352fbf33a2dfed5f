"""Wall-clock medians for comparing variants side by side in one process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on `device` so a timer measures it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_medians(
    variants: dict[str, Callable[[], object]],
    device: torch.device | str,
    *,
    warmup: int = 2,
    repeats: int = 11,
) -> dict[str, float]:
    """Median seconds per call of each variant.

    The variants are run in turns (round robin) after `warmup` untimed rounds, so a
    slow spell on a shared machine touches every variant alike.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"expected repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(warmup + repeats):
        for name, fn in variants.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(samples) for name, samples in times.items()}
