"""Wall-clock times for comparing variants side by side in one process, with their spread.

A shared machine has slow spells. Variants are timed in turns (round robin), so a spell
touches them alike; each variant's spread is its interquartile range over the rounds
relative to its median. A comparison whose spread exceeds NOISE_THRESHOLD is run again,
up to MAX_RERUNS times; the least noisy run is kept and, if still noisy, its rows are
flagged in the report with NOISY_MARK and a footnote rather than printed as if exact.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on `device` so a timer measures it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the body on one CPU thread (torch's intra-op threads), restoring the count after:
    operations too small to share, where a second thread waking up between them would be
    measured as overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
    """Median seconds per call of each variant, timed as compare_timings times them."""
    return {name: t.median for name, t in compare_timings(variants, device, warmup=warmup, repeats=repeats).items()}


NOISE_THRESHOLD = 0.10
"""Spread (interquartile range / median) above which a timing is noisy."""

MAX_RERUNS = 2
"""How many times a noisy comparison is run again before its rows are flagged."""

NOISY_MARK = "†"


@dataclass(frozen=True)
class Timing:
    """The seconds per call of one variant over the rounds of a comparison."""

    samples: tuple[float, ...]
    reruns: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def quartiles(self) -> tuple[float, float]:
        if len(self.samples) < 2:
            return self.samples[0], self.samples[0]
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q1, q3

    @property
    def spread(self) -> float:
        """Interquartile range over median (0 for a single round)."""
        q1, q3 = self.quartiles
        return (q3 - q1) / self.median if self.median > 0 else 0.0

    @property
    def noisy(self) -> bool:
        return self.spread > NOISE_THRESHOLD

    def summary(self) -> dict[str, Any]:
        """The figures results.json keeps: seconds (median, min, quartiles), spread, reruns."""
        q1, q3 = self.quartiles
        return {"median": self.median, "min": min(self.samples), "q1": q1, "q3": q3, "spread": self.spread,
                "noisy": self.noisy, "rounds": len(self.samples), "reruns": self.reruns}


def compare_timings(
    variants: dict[str, Callable[[], object]],
    device: torch.device | str,
    *,
    warmup: int = 2,
    repeats: int = 11,
    max_reruns: int = MAX_RERUNS,
) -> dict[str, Timing]:
    """Each variant's Timing, timed as compare_samples times them; while any variant is
    noisy the comparison runs again, up to `max_reruns` times, keeping the run whose
    noisiest variant is least noisy."""
    best: dict[str, Timing] | None = None
    for rerun in range(max_reruns + 1):
        samples = compare_samples(variants, device, warmup=warmup, repeats=repeats)
        timings = {name: Timing(tuple(values), rerun) for name, values in samples.items()}
        if best is None or _worst_spread(timings) < _worst_spread(best):
            best = timings
        if not any(t.noisy for t in best.values()):
            break
    return {name: Timing(t.samples, rerun) for name, t in best.items()}


def _worst_spread(timings: dict[str, Timing]) -> float:
    return max(t.spread for t in timings.values())


def time_cell(summary: dict[str, Any], scale: float = 1e3, digits: int = 1) -> str:
    """A table cell for a Timing.summary(): the median times `scale`, its spread (the
    interquartile range in percent of the median), and the noisy mark."""
    mark = f" {NOISY_MARK}" if summary["noisy"] else ""
    return f"{summary['median'] * scale:.{digits}f} (IQR {summary['spread'] * 100:.0f} %){mark}"


def noisy_footnote(summaries: Iterable[dict[str, Any]]) -> str:
    """The footnote under a table some of whose timings are flagged, else ""."""
    if not any(s["noisy"] for s in summaries):
        return ""
    return (f"\n\n{NOISY_MARK} spread above {NOISE_THRESHOLD:.0%} after {MAX_RERUNS} reruns: the machine was "
            "busy; read this time, and ratios made from it, as approximate.")


def timing_summaries(results: object) -> Iterator[dict[str, Any]]:
    """Every Timing.summary() anywhere in a report's results (nested dicts and lists)."""
    if isinstance(results, dict):
        if "spread" in results and "noisy" in results and "median" in results:
            yield results
            return
        for value in results.values():
            yield from timing_summaries(value)
    elif isinstance(results, list):
        for value in results:
            yield from timing_summaries(value)


def median_paired_difference(samples: dict[str, list[float]], name: str, baseline: str) -> float:
    """The median over rounds of `name`'s time minus `baseline`'s time in the same round.

    For a small difference between two long calls this is steadier than the difference
    of the two medians: a slow spell that stretches both calls of a round cancels.
    """
    return statistics.median(a - b for a, b in zip(samples[name], samples[baseline], strict=True))
