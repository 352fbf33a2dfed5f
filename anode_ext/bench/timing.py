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


def compare_samples(
    variants: dict[str, Callable[[], object]],
    device: torch.device | str,
    *,
    warmup: int = 2,
    repeats: int = 11,
) -> dict[str, list[float]]:
    """Seconds of each call of each variant, round by round: sample i of every variant
    comes from round i.

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
    return times


def compare_medians(
    variants: dict[str, Callable[[], object]],
    device: torch.device | str,
    *,
    warmup: int = 2,
    repeats: int = 11,
) -> dict[str, float]:
    """Median seconds per call of each variant, timed as compare_samples times them."""
    samples = compare_samples(variants, device, warmup=warmup, repeats=repeats)
    return {name: statistics.median(values) for name, values in samples.items()}


def median_paired_difference(samples: dict[str, list[float]], name: str, baseline: str) -> float:
    """The median over rounds of `name`'s time minus `baseline`'s time in the same round.

    For a small difference between two long calls this is steadier than the difference
    of the two medians: a slow spell that stretches both calls of a round cancels.
    """
    return statistics.median(a - b for a, b in zip(samples[name], samples[baseline], strict=True))
