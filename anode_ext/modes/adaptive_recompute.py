"""grad='anode' and grad='revolve' over an adaptive solve, in one forward pass.

The forward runs the step-size search itself under the ledger's saved-tensor hooks, as a
fixed-step forward runs its steps: func is evaluated once per stage, rejected attempts and
the initial-step probe included, exactly as under grad='direct'. What a rejected attempt or
the probe saved is marked discarded in the ledger. The backward replays the search's log
(anode_ext.adaptive.LoggedProblem), recording every attempt in the forward's order, so that
the recompute meets each saved tensor in its place; the discarded ones are compared and let
go at once.

anode keeps one ledger segment, the whole solve, recomputed at the first request. revolve
keeps one segment per accepted step; since its schedule depends on the number of steps,
which only the forward finds, the forward keeps the input alone and the backward first
steps forward from it to the states the schedule keeps (one forward pass without a graph,
the pass a fixed-step revolve makes in its forward), then follows the schedule.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..adaptive import AdaptiveProblem
from ..revolve import recorders, schedule
from ..solver import State
from .checkpointed import CheckpointedSolve, run_forward
from .replay import ForwardState


class _LedgerSteps:
    """The AttemptObserver of a recompute forward: marks what a rejected attempt (or the
    probe) saved as discarded, lets go of each attempt's saved tensors once it ends, and
    for revolve closes one step's segment and opens the next's at each accepted step."""

    def __init__(self, solve: AdaptiveRecomputeSolve) -> None:
        self.solve = solve
        self.start = 0
        self.step = 0

    def starts(self) -> None:
        self.start = self.solve.ledger.saved_count()

    def ends(self, kept: bool) -> None:
        ledger = self.solve.ledger
        if not kept:
            ledger.discard(self.start, ledger.saved_count())
        ledger.release_live()

    def step_done(self, state: State, final: bool) -> State:
        if self.solve.per_step:
            self.solve._segment_done(self.step, state)
            self.step += 1
            if not final:
                self.solve._segment_starts(self.step, state)
        return state


class AdaptiveRecomputeSolve(CheckpointedSolve):
    """An adaptive solve in mode anode (checkpoints None) or revolve: one forward pass; the
    recompute replays the log.

    `checkpoints_for` gives revolve's checkpoints once the forward has found the steps (a
    Revolve mode's method of that name)."""

    def __init__(self, problem: AdaptiveProblem, forward_state: ForwardState, owner: Callable,
                 checkpoints_for: Callable | None = None) -> None:
        super().__init__(problem, forward_state, None, owner)
        self.per_step = checkpoints_for is not None
        self.checkpoints_for = checkpoints_for
        self.mode = "revolve" if self.per_step else "anode"
        self._recording = False
        self._checkpoints_placed = False

    def _forward_steps(self, state: State) -> State:
        self._segment_starts(0, state)
        observer = _LedgerSteps(self)
        with torch.autograd.graph.saved_tensors_hooks(self.ledger.pack, self.ledger.unpack):
            out = self.problem.solve(state, observer)
        self.ledger.release_live()
        if not self.per_step:
            self._segment_done(0, out)
        # The ledger is reached through its weak reference: the solve must not hold it.
        self.problem = self.problem.logged(after_discarded=self._drop_discarded)
        if self.per_step:
            self.plan = schedule(self.problem.steps, self.checkpoints_for(self.problem, state))
            self.recorders = recorders()
        return out

    def _drop_discarded(self) -> None:
        if self._recording:
            self.ledger.drop_discarded()

    def _record(self, first: int, origin, whole: bool = False) -> None:
        self._recording = True
        try:
            super()._record(first, origin, whole)
        finally:
            self._recording = False

    def _recompute(self, segment: int) -> None:
        if self.per_step and not self._checkpoints_placed:
            # The states the schedule keeps, stepped to from the input, held through the
            # backward's caller hooks (not the forward's: a torch.utils.checkpoint or an
            # outer solve around this one has moved on).
            self._checkpoints_placed = True
            self._start_recompute()
            self._restart()
        super()._recompute(segment)


def solve_adaptive_recompute(problem: AdaptiveProblem, state: State, forward_state: ForwardState, owner: Callable,
                             checkpoints_for: Callable | None = None) -> State:
    """Solve the adaptive `problem` from `state` in mode anode (checkpoints_for None) or
    revolve (checkpoints_for(logged_problem, state) gives the checkpoints)."""
    return run_forward(AdaptiveRecomputeSolve(problem, forward_state, owner, checkpoints_for), state)
