"""grad='reversible': a reversible solve whose saved tensors are recomputed from states
reconstructed backwards by the method's inverse (anode_ext.reversible).

It is the recompute engine of anode and revolve (checkpointed.py: the forward records the
direct solve's graph without its saved tensors, the backward refills them, so the
gradient reaches every tensor func used and hooks fire as under direct), with one
difference: the state a step starts from is not stepped forward from a kept state but
computed back from the next one. The forward keeps only the final pair (y_N, z_N) and,
per step, what is needed to replay its evaluations: the RNG state (only when func draws
random numbers) and the module buffers (only when func's modules have any).

A step's record doubles as its inverse (McCallum & Foster 2024, section 3): the base step
back from y_{n+1} is recorded first and gives z_n, then the base step from z_n, which gives
y_n; the ledger files each part's saved tensors where the forward saved them. The
backward thus evaluates func as often as anode's does, at the reconstructed states.

Reconstructed states equal the forward's only to rounding, so the recompute is not
checked bit for bit: each reconstructed pair is checked against a fingerprint of the
forward's to a relative tolerance, which catches both a func that computes differently in
backward and an inverse whose rounding has grown too large.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from .._library import _C
from ..reversible import ReversibleProblem
from ..solver import State
from .checkpointed import NOT_REPEATED_MESSAGE, CheckpointedSolve, _Position, fingerprint
from .replay import BufferValues, ForwardState, RngState, hooks_registered_in_body_removed

RECONSTRUCTION_MESSAGE = (
    "grad='reversible': the state reconstructed at step {step} of {steps} differs from the forward's by more "
    "than rtol={rtol:g} (relative, {what}). Either the inverse of the reversible method amplified rounding "
    "(a coupling well below 1, expanding or stiff dynamics, a low precision: a coupling closer to 1, more "
    "steps, float64 or grad='anode' help), or func computes differently in backward (see grad='anode''s "
    "rules). ReversibleGrad(rtol=...) sets the tolerance"
)


def default_rtol(dtype: torch.dtype) -> float:
    """The tolerance of the reconstruction check: sqrt(eps) of the dtype (1.5e-8 in
    float64, 3.5e-4 in float32, 0.03 in float16, 0.09 in bfloat16)."""
    return math.sqrt(torch.finfo(dtype).eps)


def _norms(print_: Tensor, numel: list[int]) -> list[tuple[float, float, float]]:
    """(sum, L2 norm, numel) of each tensor from its fingerprint."""
    return [(float(s), math.sqrt(max(float(q), 0.0)), n) for (s, q), n in zip(print_.tolist(), numel)]


def reconstruction_error(forward: Tensor, rebuilt: Tensor, numel: list[int], rtol: float) -> str:
    """'' when two fingerprints allow the rebuilt states to be within rtol of the forward's
    (relative L2 error), else what shows they are not. Both tests are necessary
    conditions of ||a - b|| <= rtol ||b||: ||a|| - ||b|| and (sum a - sum b) / sqrt(numel)
    are at most ||a - b||. NaN or infinite entries count as 0 in a fingerprint."""
    if forward.device.type == "meta":
        return ""
    for (s_f, n_f, size), (s_r, n_r, _) in zip(_norms(forward, numel), _norms(rebuilt, numel)):
        bound = rtol * n_f
        if abs(n_r - n_f) > bound:
            return f"L2 norm {n_r:.17g} against {n_f:.17g}"
        if abs(s_r - s_f) > bound * math.sqrt(size):
            return f"sum {s_r:.17g} against {s_f:.17g}"
    return ""


class _Replay:
    """The RNG state and module buffers one half of a step ran with in the forward."""

    __slots__ = ("rng", "buffers")

    def __init__(self, rng: RngState | None, buffers: BufferValues | None) -> None:
        self.rng = rng
        self.buffers = buffers


class ReconstructingSolve(CheckpointedSolve):
    """One forward solve of a ReversibleProblem in mode reversible, and its recompute."""

    def __init__(self, problem: ReversibleProblem, forward_state: ForwardState, owner: Callable,
                 rtol: float | None) -> None:
        super().__init__(problem, forward_state, None, owner)
        self.mode = "reversible"
        self.rtol = rtol
        # Per step: where its parts' saved tensors start in the ledger (after the base
        # step from z, after y's update, after the base step back), and the replay state
        # of its two halves.
        self.marks: list[tuple[int, int, int]] = []
        self.halves: list[tuple[_Replay, _Replay]] = []
        self.final_requires: tuple[bool, ...] = ()
        self.numel: list[int] = []
        # The latest reconstructed pair (step, position), besides the final pair.
        self.reached: tuple[int, _Position] | None = None
        self._last_rng: RngState | None = None

    # --- forward ---------------------------------------------------------------

    def forward(self, state: State) -> State:
        """Run the solve from the pair `state`, recording its graph without its saved tensors."""
        self.numel = [s.numel() for s in state]
        self.fingerprints[-1] = fingerprint(state)
        with self.modules.watch():
            out = self._forward_steps(state)
        self.forward_state.forward_done()
        if not self.forward_state.draws:
            self.halves = [(_Replay(None, a.buffers), _Replay(None, b.buffers)) for a, b in self.halves]
        return out

    def _replay_now(self) -> _Replay:
        rng = self.forward_state.rng_now()
        if rng == self._last_rng:
            rng = self._last_rng  # one object for the steps between draws
        self._last_rng = rng
        return _Replay(rng, self.modules.values() if self.modules.buffers else None)

    def _forward_steps(self, state: State) -> State:
        problem: ReversibleProblem = self.problem
        ledger, base = self.ledger, problem.base
        trajectory = [state]
        for n in range(problem.steps):
            self._segment_starts(n, state)
            y, z = problem.split(state)
            start = self._replay_now()
            with torch.autograd.graph.saved_tensors_hooks(ledger.pack, ledger.unpack):
                s1 = base.step_at(problem.time(n), base.h, z)
                after_s1 = ledger.saved_count(n)
                y1 = problem.couple_y(s1, y, z)
                after_y = ledger.saved_count(n)
                ledger.release_live()
                middle = self._replay_now()
                if n < problem.steps - 1:
                    s2 = self._second_half(n, y1)
                else:
                    # z_N only: the random numbers it draws and the buffers it updates are
                    # undone, so that RNG and modules end as grad='direct' leaves them.
                    with self._replaying(middle):
                        s2 = self._second_half(n, y1)
                after_s2 = ledger.saved_count(n)
                state = (*y1, *problem.couple_z(z, y1, s2))
            self.marks.append((after_s1, after_y, after_s2))
            self.halves.append((start, middle))
            self._segment_done(n, state)
            if problem.return_all:
                trajectory.append(state)
        self.final_requires = tuple(s.requires_grad for s in state)
        # A copy: the caller may modify its output in place (an in-place ReLU), which no
        # saved tensor of the graph forbids.
        final = tuple(s.detach().clone() for s in state)
        self.positions[problem.steps] = _Position(final, self.forward_state.rng, None, self.hooks)
        if problem.return_all:
            return tuple(torch.stack([s[m] for s in trajectory]) for m in range(len(state)))
        return state

    def _second_half(self, n: int, y1: State) -> State:
        """The base step back from y_{n+1}; in the last step without a graph: it only
        gives z_N, which no output depends on, so nothing it would save is ever used."""
        if n < self.problem.steps - 1:
            return self.problem.second_half(n, y1)
        with torch.no_grad():
            return self.problem.second_half(n, y1)

    # --- backward --------------------------------------------------------------

    def _recompute(self, segment: int) -> None:
        """Reconstruct the pair step `segment` starts from, recording the step; the ledger's callback."""
        self._start_recompute()
        after = self._pair_at(segment + 1)
        self.reached = (segment, self._record_back(segment, after))

    def _pair_at(self, position: int) -> State:
        """The pair at `position`: the final one, the latest reconstructed one, or one
        reconstructed (without recording) from the nearest of them above."""
        if self.reached is not None and self.reached[0] >= position:
            at, origin = self.reached
        else:
            at, origin = self.problem.steps, self.positions[self.problem.steps]
        pair = origin.state
        for n in range(at - 1, position - 1, -1):
            pair = self._step_back(n, pair)
        return pair

    @contextlib.contextmanager
    def _replaying(self, half: _Replay) -> Iterator[None]:
        with self.forward_state.rng_replay(half.rng), self.modules.replay(half.buffers), \
                self.forward_state.autocast(), hooks_registered_in_body_removed(), torch.enable_grad():
            yield

    def _requiring(self, state: State, flags: tuple[bool, ...]) -> State:
        return tuple(s.detach().requires_grad_(r) for s, r in zip(state, flags))

    def _flags(self, position: int) -> tuple[bool, ...]:
        return self.final_requires if position == self.problem.steps else self.requires[position]

    def _step_back(self, n: int, pair1: State) -> State:
        """The pair at step n from the pair at n + 1, not recorded (with grad enabled and
        the forward's requires_grad flags, as the forward evaluated func)."""
        problem: ReversibleProblem = self.problem
        start, middle = self.halves[n]
        half = len(pair1) // 2
        y1, z1 = problem.split(self._requiring(pair1, self._flags(n + 1)))
        with self._replaying(middle):
            s2 = self._second_half(n, y1)
        with torch.no_grad():
            z = problem.undo_z(z1, y1, s2)
        with self._replaying(start):
            s1 = problem.base.step_at(problem.time(n), problem.base.h,
                                      self._requiring(z, self.requires[n][half:]))
        with torch.no_grad():
            pair = (*problem.undo_y(y1, s1, z), *z)
        self._check(n, pair)
        return pair

    def _record_back(self, n: int, pair1: State) -> _Position:
        """Step n recorded by reconstruction (module docstring): the ledger keeps what
        its parts save, each where the forward saved it."""
        problem: ReversibleProblem = self.problem
        ledger, base = self.ledger, problem.base
        start, middle = self.halves[n]
        after_s1, after_y, after_s2 = self.marks[n]
        half = len(pair1) // 2
        flags = self.requires[n]
        inputs = self.inputs_seen[n]
        y1, z1 = problem.split(self._requiring(pair1, self._flags(n + 1)))
        ledger.begin_record(n, [(t, None) for t in y1], self.hooks.pack, self.hooks.unpack, False)
        with torch.autograd.graph.saved_tensors_hooks(ledger.keep, ledger.kept):
            ledger.seek(after_y)
            with self._replaying(middle):
                s2 = self._second_half(n, y1)
            with torch.no_grad():
                z = self._requiring(problem.undo_z(z1, y1, s2), flags[half:])
            ledger.add_copies(list(zip(z, inputs[half:])))
            ledger.seek(0)
            with self._replaying(start):
                s1 = base.step_at(problem.time(n), base.h, z)
            with torch.no_grad():
                y = self._requiring(problem.undo_y(y1, s1, z), flags[:half])
            ledger.add_copies(list(zip(y, inputs[:half])))
            with self._replaying(start):
                ledger.seek(after_s1)
                problem.couple_y(s1, y, z)
                ledger.seek(after_s2)
                problem.couple_z(z, y1, s2)
        pair = _detached((*y, *z))
        differs = ledger.finish_record()
        if differs:
            raise RuntimeError(NOT_REPEATED_MESSAGE.format(mode=self.mode, what=differs))
        self._check(n, pair)
        return _Position(pair, None, None, self.hooks)

    def _check(self, n: int, pair: State) -> None:
        rtol = self.rtol if self.rtol is not None else default_rtol(pair[0].dtype)
        what = reconstruction_error(self.fingerprints[n - 1], fingerprint(pair), self.numel, rtol)
        if what:
            raise RuntimeError(RECONSTRUCTION_MESSAGE.format(step=n, steps=self.problem.steps, rtol=rtol, what=what))


def _detached(state: State) -> State:
    return tuple(s.detach() for s in state)


def solve_reconstructing(problem: ReversibleProblem, state: State, forward_state: ForwardState, owner: Callable,
                         rtol: float | None) -> State:
    """Solve the reversible `problem` from the pair `state` in mode reversible; `owner` is
    the user's callable, whose modules' state the recompute replays."""
    solve = ReconstructingSolve(problem, forward_state, owner, rtol)
    ledger = _C.SavedLedger(solve._recompute, solve.mode)
    solve._ledger = weakref.ref(ledger)
    return solve.forward(state)
