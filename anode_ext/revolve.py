"""Binomial checkpointing (Griewank & Walther, "Algorithm 799: revolve", ACM TOMS 26(1),
2000) of the steps inside one ODE block.

Setting. The block's forward runs all ``steps`` steps once (it must, for its
output) and may keep at most ``checkpoints`` of the states it passes, besides the
block input. The backward must tape (run with autograd) each step once, in the
order steps-1, ..., 0, and may hold at most ``checkpoints`` + 1 states (the input
included) plus the one state being stepped. Steps recomputed without taping are
"advances"; this module finds the fewest.

Between two kept states the backward reverses the segment by the classic binomial
rule: with ``beta(s, r) = C(s + r, s)`` and ``s`` = free checkpoints + 1, reversing
``l`` steps from a held state takes ``r * l - beta(s + 1, r - 1)`` advances, r the
smallest integer with ``beta(s, r) >= l``.

Which states the forward keeps follows from that cost in closed form. With c kept
states the trajectory falls into c + 1 segments; the one reversed i-th from last has i
checkpoints free (those of the segments before it are released by then), so the total
is sum_i cost(L_i, i). Each cost is convex in the length, and the (L + 1)-th step of a
segment with i free checkpoints adds r_i(L + 1) advances (r_i as above with s = i + 1),
so at most ``beta(i + 1, R)`` of its steps cost R or less. Filling every segment up to
the level R at which the capacities reach ``steps`` is therefore optimal, and takes
O(checkpoints * R) arithmetic: a schedule for 10^5 steps is found in microseconds.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import numbers
from collections.abc import Iterator
from typing import NamedTuple

__all__ = ["Action", "Schedule", "optimal_advances", "schedule", "checkpoints_for_budget", "record"]


class Action(NamedTuple):
    """One instruction of the backward: ``kind`` at step positions ``start`` .. ``stop``
    (``stop == start`` for every kind but ``advance``).

    - ``advance``: run steps start .. stop-1 without taping, from the state at start;
    - ``store``: hold the current state (at ``start``) as a checkpoint;
    - ``backprop``: tape step ``start`` from the state there and propagate the adjoint through it;
    - ``release``: drop the checkpoint at ``start``.
    """

    kind: str
    start: int
    stop: int


def _beta(snaps: int, reps: int) -> int:
    return math.comb(snaps + reps, snaps) if reps >= 0 else 0


def _repetitions(steps: int, snaps: int) -> int:
    """Smallest r with beta(snaps, r) >= steps: how often the worst step is recomputed."""
    r = 0
    while _beta(snaps, r) < steps:
        r += 1
    return r


def _check(steps: int, checkpoints: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    _check_checkpoints(checkpoints)


def _check_checkpoints(checkpoints: int) -> None:
    if isinstance(checkpoints, bool) or not isinstance(checkpoints, numbers.Integral) or checkpoints < 1:
        raise ValueError(f"checkpoints must be an integer >= 1, got {checkpoints!r}")


def _segment_advances(length: int, free: int) -> int:
    """Advances to reverse `length` steps from a held state, with `free` checkpoints to spare."""
    if length <= 1:
        return 0
    if free == 0:
        return length * (length - 1) // 2
    snaps = free + 1
    r = _repetitions(length, snaps)
    return r * length - _beta(snaps + 1, r - 1)


def _split(length: int, free: int) -> int:
    """Where to place the next checkpoint (steps from the segment start) with `free`
    checkpoints left: a point of the binomial range that keeps the total optimal."""
    snaps = free + 1
    r = _repetitions(length, snaps)
    lowest = max(1, length - _beta(snaps - 1, r), _beta(snaps, r - 2))
    highest = min(length - 1, _beta(snaps, r - 1), length - _beta(snaps - 1, r - 1))
    return max(lowest, highest)


@functools.lru_cache(maxsize=256)
def _kept_states(steps: int, checkpoints: int) -> tuple[tuple[int, ...], int]:
    """The positions the forward keeps and the advances the backward then needs."""
    depth = min(checkpoints, steps - 1)
    level = 0
    while sum(_beta(i + 1, level) for i in range(depth + 1)) < steps:
        level += 1
    # Every segment takes the steps that cost less than `level`; the rest cost `level` each.
    lengths = [_beta(i + 1, level - 1) for i in range(depth + 1)]
    rest = steps - sum(lengths)
    for i in range(depth, -1, -1):
        take = min(_beta(i + 1, level) - lengths[i], rest)
        lengths[i] += take
        rest -= take
    kept, position = [], 0
    # The segment with the most free checkpoints comes first: it is reversed last.
    for length in reversed(lengths[1:]):
        position += length
        if 0 < position < steps and (not kept or kept[-1] != position):
            kept.append(position)
    return tuple(kept), sum(_segment_advances(length, i) for i, length in enumerate(lengths))


def _check_budget(memory_budget: int) -> None:
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, numbers.Integral) or memory_budget < 0:
        raise ValueError(f"memory_budget must be a non-negative integer number of bytes, got {memory_budget!r}")


def optimal_advances(steps: int, checkpoints: int) -> int:
    """Count the fewest steps the backward recomputes without taping (Griewank & Walther
    2000; the closed form is in this module's docstring).

    Args:
        steps: the steps of the solve, an integer >= 1.
        checkpoints: the states that may be kept besides the block input, an integer >= 1.

    Returns:
        The number of advanced steps, 0 once ``checkpoints >= steps - 1``. A block
        evaluates ``2 * steps`` plus this many steps in a forward and backward.

    Raises:
        ValueError: steps or checkpoints is not an integer >= 1 (bools are refused).
    """
    _check(steps, checkpoints)
    return _kept_states(steps, checkpoints)[1]


class Schedule(NamedTuple):
    """A revolve schedule, made by ``schedule``: ``steps`` and ``checkpoints`` as given;
    ``kept``, the positions (0 < p < steps, increasing) whose states the forward keeps
    besides the block input; and the backward's ``actions``."""

    steps: int
    checkpoints: int
    kept: tuple[int, ...]

    def actions(self) -> Iterator[Action]:
        """Yield the backward's Actions in order, generated as they are consumed (a
        schedule of 10^5 steps has a few hundred thousand). Following them holds at most
        ``checkpoints`` + 1 states, the input included, besides the one being stepped."""
        bounds = [0, *self.kept, self.steps]
        for i in range(len(bounds) - 2, -1, -1):
            yield from _reverse(bounds[i], bounds[i + 1], self.checkpoints - i)
            if i > 0:
                yield Action("release", bounds[i], bounds[i])


def _reverse(start: int, end: int, free: int) -> Iterator[Action]:
    """The classic binomial reversal of steps start .. end-1, the state at start held."""
    work: list[tuple[str, int, int, int]] = [("reverse", start, end, free)]
    while work:
        kind, start, end, free = work.pop()
        if kind == "release":
            yield Action("release", start, start)
            continue
        length = end - start
        if length == 1:
            yield Action("backprop", start, start)
        elif free == 0:
            for i in range(end - 1, start - 1, -1):
                if i > start:
                    yield Action("advance", start, i)
                yield Action("backprop", i, i)
        else:
            middle = start + _split(length, free)
            yield Action("advance", start, middle)
            yield Action("store", middle, middle)
            # Popped last-in first-out: the right part is reversed first.
            work.append(("reverse", start, middle, free))
            work.append(("release", middle, middle, 0))
            work.append(("reverse", middle, end, free - 1))


def schedule(steps: int, checkpoints: int) -> Schedule:
    """Find the schedule with the fewest advances (``optimal_advances``) for ``steps``
    steps and at most ``checkpoints`` states kept besides the block input.

    Raises:
        ValueError: steps or checkpoints is not an integer >= 1 (bools are refused).
    """
    _check(steps, checkpoints)
    return Schedule(steps, checkpoints, _kept_states(steps, checkpoints)[0])


def checkpoints_for_budget(memory_budget: int, state_bytes: int, steps: int) -> int:
    """Count the checkpoints that fit in a memory budget (the block input not counted).

    Args:
        memory_budget: bytes the kept states may take, an integer >= 0.
        state_bytes: bytes of one state, an integer >= 0 (an empty state fits any budget).
        steps: the steps of the solve, an integer >= 1.

    Returns:
        ``memory_budget // state_bytes``, capped at ``max(1, steps - 1)``, beyond which
        more checkpoints save nothing.

    Raises:
        ValueError: memory_budget or state_bytes is not a non-negative integer, steps is not
            a positive one, or the budget holds no state.
    """
    _check_budget(memory_budget)
    _check(steps, 1)
    if isinstance(state_bytes, bool) or not isinstance(state_bytes, numbers.Integral) or state_bytes < 0:
        raise ValueError(f"state_bytes must be a non-negative integer, got {state_bytes!r}")
    if state_bytes == 0:
        return max(1, steps - 1)
    count = memory_budget // state_bytes
    if count < 1:
        raise ValueError(
            f"memory_budget={memory_budget} bytes holds no checkpoint: one state of this block "
            f"takes {state_bytes} bytes; give at least that, or use grad='anode'"
        )
    return int(max(1, min(count, steps - 1)))


Event = tuple[str, int, int]
"""What ``record`` collects: ``(kind, position, held)``, see there."""
_recorders: contextvars.ContextVar[tuple[list[Event], ...]] = contextvars.ContextVar(
    "anode_ext_revolve_recorders", default=()
)


@contextlib.contextmanager
def record() -> Iterator[list[Event]]:
    """Collect, for debugging and tests, every action that revolve solves started in the
    body perform (their backward included, even when it runs later or on another thread).
    Only solves started in this thread (this context) are recorded.

    Yields:
        A list that fills with ``(kind, position, held)`` Events: ``kind`` an Action kind,
        ``position`` the action's start (a forward keeping a state is a ``store``, the
        input's at 0 included), ``held`` the states held after it, the input included.
    """
    events: list[Event] = []
    token = _recorders.set((*_recorders.get(), events))
    try:
        yield events
    finally:
        _recorders.reset(token)


def recorders() -> tuple[list[Event], ...]:
    """Return the event lists of the ``record`` blocks open in this context: those a
    revolve solve starting now reports to."""
    return _recorders.get()
