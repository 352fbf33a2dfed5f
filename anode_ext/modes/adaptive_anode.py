"""grad='anode' over an adaptive solve, in one pass.

The forward runs the step-size search itself under the ledger's saved-tensor hooks, as a
fixed-step anode forward runs its steps: rejected attempts and the initial-step probe are
recorded too, and their saved tensors marked as discarded. The backward replays the
search's log (anode_ext.adaptive.LoggedProblem), recording every attempt in the forward's
order, so that the recompute meets each saved tensor in its place; the discarded ones are
compared and let go at once. (grad='revolve' must know the number of steps before its
forward, and runs the search first: grad_modes._solve_adaptive_recompute.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..adaptive import AdaptiveProblem
from ..solver import State
from .checkpointed import CheckpointedSolve, run_forward
from .replay import ForwardState


class _DiscardRejected:
    """An AttemptObserver that marks what a rejected attempt saved as discarded, and lets
    go of each attempt's saved tensors once it ends (as anode does after each step)."""

    def __init__(self, solve: CheckpointedSolve) -> None:
        self.solve = solve
        self.start = 0

    def starts(self) -> None:
        self.start = self.solve.ledger.saved_count()

    def ends(self, kept: bool) -> None:
        ledger = self.solve.ledger
        if not kept:
            ledger.discard(self.start, ledger.saved_count())
        ledger.release_live()


class AdaptiveAnodeSolve(CheckpointedSolve):
    """An adaptive solve in mode anode: one forward pass; its recompute replays the log."""

    def __init__(self, problem: AdaptiveProblem, forward_state: ForwardState, owner: Callable) -> None:
        super().__init__(problem, forward_state, None, owner)

    def _forward_steps(self, state: State) -> State:
        self._segment_starts(0, state)
        with torch.autograd.graph.saved_tensors_hooks(self.ledger.pack, self.ledger.unpack):
            out = self.problem.solve(state, _DiscardRejected(self))
        self.ledger.release_live()
        self._segment_done(0, out)
        # The ledger is reached through its weak reference: the solve must not hold it.
        self.problem = self.problem.logged(after_discarded=lambda: self.ledger.drop_discarded())
        return out


def solve_adaptive_anode(problem: AdaptiveProblem, state: State, forward_state: ForwardState,
                         owner: Callable) -> State:
    """Solve the adaptive `problem` from `state` in mode anode."""
    return run_forward(AdaptiveAnodeSolve(problem, forward_state, owner), state)
