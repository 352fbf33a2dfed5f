"""grad='reversible': a reversible solve whose saved tensors are recomputed from states
reconstructed backwards by the method's inverse (anode_ext.reversible).

It is the recompute engine of anode and revolve (checkpointed.py: the forward records the
direct solve's graph without its saved tensors, the backward refills them, so the
gradient reaches every tensor func used and hooks fire as under direct), with one
difference: the state a step starts from is not stepped forward from a kept state but
computed back from the next one. The forward keeps only the final pair (y_N, z_{N-1}) and,
per step, what is needed to replay its evaluations: the RNG state (only when func draws
random numbers; one copy for the steps between draws) and the module buffers (only when
func's modules have any; one copy of a buffer for the steps it does not change in).

A step's record doubles as its inverse (McCallum & Foster 2024, section 3): the base step
back from y_{n+1} is recorded first and gives z_n, then the base step from z_n, which gives
y_n. The backward thus evaluates func 2 s times per step of an s-stage method, as the
forward does, at the reconstructed states, with no separate inverse pass.

Reconstructed states equal the forward's only to rounding, so the recompute is not
checked bit for bit, as anode's is. Each reconstructed state is checked against the
forward's sum and L2 norm instead (see reconstruction_error): an inverse whose rounding
has grown too large is caught, and so is a func that computes differently in backward
when the difference moves a state by more than the tolerance; smaller differences go
unseen, which grad='anode' would refuse.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from ..reversible import ReversibleProblem
from ..solver import State
from .checkpointed import NOT_REPEATED_MESSAGE, CheckpointedSolve, _base_of, _Position, run_forward
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


def norms(state: State) -> Tensor:
    """Per tensor of `state`, its sum and L2 norm in float64 (rows of a (len, 2) tensor),
    left on its device until a check reads them."""
    with torch.no_grad():
        return torch.stack([torch.stack([s.sum(dtype=torch.float64), torch.linalg.vector_norm(s, dtype=torch.float64)])
                            for s in state])


def reconstruction_error(forward: list[list[float]], rebuilt: list[list[float]], scales: list[float],
                         numel: list[int], rtol: float) -> str:
    """'' when the `norms` (as lists) of rebuilt states allow each to be within rtol * scale
    of the forward's in L2 norm, else what shows it is not. Both tests are necessary
    conditions of ||a - b|| <= rtol * scale, since | ||a|| - ||b|| | and |sum a - sum b| /
    sqrt(numel) are at most ||a - b||: a reconstruction that close always passes; one
    further away passes only when its norm and sum happen to match. A norm finite on one
    side only fails. The scale is the largest norm the inverse step combined (it cancels
    them, so its rounding scales with them, not with the state it gives, which may be 0)."""
    for (s_f, n_f), (s_r, n_r), scale, size in zip(forward, rebuilt, scales, numel):
        if math.isfinite(n_f) != math.isfinite(n_r):
            return f"L2 norm {n_r:.17g} against {n_f:.17g}"
        bound = rtol * scale
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
    """One forward solve of a ReversibleProblem in mode reversible, and its recompute.

    Each half of step n is a segment of the ledger: 2n the base step from z_n and the
    update of y, 2n + 1 the base step back from y_{n+1} and the update of z. The backward
    needs the second half's saved tensors before the first's (y_{n+1}'s gradient is
    complete only once the step back from it is differentiated), and has done with them
    by then: it holds one base step's tensors at a time, as revolve does.
    """

    def __init__(self, problem: ReversibleProblem, forward_state: ForwardState, owner: Callable,
                 rtol: float | None) -> None:
        super().__init__(problem, forward_state, None, owner)
        self.mode = "reversible"
        self.rtol = rtol
        self.halves: list[tuple[_Replay, _Replay]] = []  # per step: its two halves' replay state
        self.flags: list[tuple[bool, ...]] = []  # per step n: requires_grad of the pair at n
        self.prints: list[Tensor] = []  # per step n (and N): the norms of the pair at n
        self.numel: list[int] = []
        # The final pair; the latest pair reconstructed (position, pair), from the final
        # one down; and z_n when only step n's second half has been recorded since. All
        # held through the caller's saved-tensor hooks, as the forward's tensors are.
        self.final: _Position | None = None
        self.reached: tuple[int, _Position] | None = None
        self.partial: tuple[int, _Position] | None = None
        self._last_rng: RngState | None = None
        self._last_buffers: BufferValues | None = None

    # --- forward ---------------------------------------------------------------

    def forward(self, state: State) -> State:
        """Run the solve from the pair `state`, recording its graph without its saved tensors."""
        self.numel = [s.numel() for s in state]
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
        if self.modules.buffers:
            self._last_buffers = self.modules.values_since(self._last_buffers)
        return _Replay(rng, self._last_buffers)

    def _forward_steps(self, state: State) -> State:
        """The solve's result. Its last pair is (y_N, z_{N-1}), as ReversibleProblem.step
        leaves it: y_{N-1} is computed back from it without z_N, which no output needs."""
        problem: ReversibleProblem = self.problem
        ledger, base, last = self.ledger, problem.base, problem.steps - 1
        trajectory = [state]
        for n in range(problem.steps):
            y, z = problem.split(state)
            self.flags.append(tuple(s.requires_grad for s in state))
            self.prints.append(norms(state))
            if n == 0:
                self.inputs_seen.append(tuple(_base_of(s) for s in state))
                ledger.set_known([*self.known, *self.inputs_seen[0]])
                self.known = ()
            start = self._replay_now()
            ledger.start_segment(2 * n)
            with torch.autograd.graph.saved_tensors_hooks(ledger.pack, ledger.unpack):
                y1 = problem.couple_y(base.step_at(problem.time(n), base.h, z), y, z)
            ledger.end_segment(2 * n)
            middle = start
            if n < last:
                middle = self._replay_now()
                ledger.start_segment(2 * n + 1)
                with torch.autograd.graph.saved_tensors_hooks(ledger.pack, ledger.unpack):
                    z = problem.couple_z(z, y1, problem.second_half(n, y1))
                ledger.end_segment(2 * n + 1)
            self.halves.append((start, middle))
            state = (*y1, *z)
            if problem.return_all:
                trajectory.append(state)
        self.flags.append(tuple(s.requires_grad for s in state))
        self.prints.append(norms(state))
        # A copy: the caller may modify its output in place (an in-place ReLU), which no
        # saved tensor of the graph forbids.
        self.final = self._held(tuple(s.detach().clone() for s in state))
        self.reached = (problem.steps, self.final)
        if problem.return_all:
            return tuple(torch.stack([s[m] for s in trajectory]) for m in range(len(state)))
        return state

    # --- backward --------------------------------------------------------------

    def _recompute(self, segment: int) -> None:
        """Record half `segment` of the solve again from states computed back; the
        ledger's callback."""
        self._start_recompute()
        n = segment // 2
        if segment % 2:
            y1, z1 = self.problem.split(self._pair_at(n + 1))
            self.partial = (n, self._held(self._record_second_half(n, y1, z1)))
        else:
            y1, _ = self.problem.split(self._pair_at(n + 1))
            if self.partial is not None and self.partial[0] == n:
                z = self.partial[1].state
            else:
                z = self._z_before(n, self._pair_at(n + 1))
            self.reached = (n, self._held((*self._record_first_half(n, y1, z), *z)))
            self.partial = None

    def _held(self, state: State) -> _Position:
        return _Position(state, None, None, self.hooks)

    def _pair_at(self, position: int) -> State:
        """The pair at `position`, computed back (without recording) from the latest
        pair reached, or from the final one when the latest is below `position` (a
        second backward through a retained graph)."""
        at, held = self.reached
        if at < position:
            at, held = self.problem.steps, self.final
        pair = held.state
        if at == position:
            return pair
        for n in range(at - 1, position - 1, -1):
            z = self._z_before(n, pair)
            y1, _ = self.problem.split(pair)
            start, _ = self.halves[n]
            with self._replaying(start):
                s1 = self._base_step(n, self._requiring(z, self._half_flags(n, z=True)))
            with torch.no_grad():
                pair = (*self.problem.undo_y(y1, s1, z), *z)
            self._check(n, pair, 0, len(pair))
        self.reached = (position, self._held(pair))
        return pair

    def _z_before(self, n: int, pair1: State) -> State:
        """z_n from the pair at n + 1, not recorded (the final pair holds z_{N-1} itself)."""
        problem: ReversibleProblem = self.problem
        if n == problem.steps - 1:
            return problem.split(pair1)[1]
        y1, z1 = problem.split(self._requiring(pair1, self.flags[n + 1]))
        _, middle = self.halves[n]
        with self._replaying(middle):
            s2 = problem.second_half(n, y1)
        with torch.no_grad():
            z = problem.undo_z(z1, y1, s2)
        self._check(n, z, len(z), 2 * len(z))
        return z

    def _record_second_half(self, n: int, y1: State, z1: State) -> State:
        """Segment 2n + 1 recorded; returns z_n."""
        problem: ReversibleProblem = self.problem
        ledger = self.ledger
        y1 = self._requiring(y1, self.flags[n + 1][:len(y1)])
        _, middle = self.halves[n]
        ledger.begin_record(2 * n + 1, [(t, None) for t in y1], self.hooks.pack, self.hooks.unpack, False)
        with torch.autograd.graph.saved_tensors_hooks(ledger.keep, ledger.kept), self._replaying(middle):
            s2 = problem.second_half(n, y1)
            with torch.no_grad():
                z = self._requiring(problem.undo_z(z1, y1, s2), self._half_flags(n, z=True))
            ledger.add_copies(self._copies(n, z))
            problem.couple_z(z, y1, s2)
        self._finish(n, z, len(z), 2 * len(z))
        return _detached(z)

    def _record_first_half(self, n: int, y1: State, z: State) -> State:
        """Segment 2n recorded; returns y_n."""
        problem: ReversibleProblem = self.problem
        ledger = self.ledger
        z = self._requiring(z, self._half_flags(n, z=True))
        start, _ = self.halves[n]
        ledger.begin_record(2 * n, self._copies(n, z), self.hooks.pack, self.hooks.unpack, False)
        with torch.autograd.graph.saved_tensors_hooks(ledger.keep, ledger.kept), self._replaying(start):
            s1 = self._base_step(n, z)
            with torch.no_grad():
                y = self._requiring(problem.undo_y(y1, s1, z), self._half_flags(n, z=False))
            ledger.add_copies(self._copies(n, y))
            problem.couple_y(s1, y, z)
        self._finish(n, y, 0, len(y))
        return _detached(y)

    def _base_step(self, n: int, z: State) -> State:
        return self.problem.base.step_at(self.problem.time(n), self.problem.base.h, z)

    def _half_flags(self, n: int, z: bool) -> tuple[bool, ...]:
        flags = self.flags[n]
        half = len(flags) // 2
        return flags[half:] if z else flags[:half]

    def _copies(self, n: int, half: State) -> list[tuple[Tensor, Tensor | None]]:
        """The solve's input stands behind both halves of the pair at step 0."""
        inputs = self.inputs_seen[0][:len(half)] if n == 0 else (None,) * len(half)
        return list(zip(half, inputs))

    def _finish(self, n: int, half: State, first: int, stop: int) -> None:
        differs = self.ledger.finish_record()
        if differs:
            raise RuntimeError(NOT_REPEATED_MESSAGE.format(mode=self.mode, what=differs))
        self._check(n, half, first, stop)

    @contextlib.contextmanager
    def _replaying(self, half: _Replay) -> Iterator[None]:
        with self.forward_state.rng_replay(half.rng), self.modules.replay(half.buffers), \
                self.forward_state.autocast(), hooks_registered_in_body_removed(), torch.enable_grad():
            yield

    @staticmethod
    def _requiring(state: State, flags: tuple[bool, ...]) -> State:
        return tuple(s.detach().requires_grad_(r) for s, r in zip(state, flags))

    def _check(self, n: int, tensors: State, first: int, stop: int) -> None:
        """Compare reconstructed tensors with rows first..stop of the forward's norms of
        the pair at step n (not at all with rtol=inf), on the scale of the tensors of the
        same place in the state at steps n and n + 1."""
        rtol = self.rtol if self.rtol is not None else default_rtol(tensors[0].dtype)
        if rtol == math.inf or tensors[0].device.type == "meta":
            return
        # One transfer from the device for the whole check.
        rows = torch.cat([self.prints[n], self.prints[n + 1], norms(tensors)]).tolist()
        size = len(self.numel)
        half = size // 2
        norms_near = [[rows[k + i][1] for k in (0, half, size, size + half)] for i in range(half)]
        near = [math.nan if any(map(math.isnan, v)) else max(v) for v in norms_near]
        scales = [near[i % half] for i in range(first, stop)]
        what = reconstruction_error(rows[first:stop], rows[2 * size:], scales, self.numel[first:stop], rtol)
        if what:
            raise RuntimeError(RECONSTRUCTION_MESSAGE.format(step=n, steps=self.problem.steps, rtol=rtol, what=what))


def _detached(state: State) -> State:
    return tuple(s.detach() for s in state)


def solve_reconstructing(problem: ReversibleProblem, state: State, forward_state: ForwardState, owner: Callable,
                         rtol: float | None) -> State:
    """Solve the reversible `problem` from the pair `state` in mode reversible; `owner` is
    the user's callable, whose modules' state the recompute replays."""
    return run_forward(ReconstructingSolve(problem, forward_state, owner, rtol), state)
