"""grad='anode' and grad='revolve': a solve whose saved tensors are recomputed in backward.

The forward records the graph of the whole solve, as grad='direct' does, but under
saved-tensor hooks that keep nothing of what the graph's nodes save: each saved tensor
is replaced by its index. The backward that autograd then runs is the graph of the
direct solve, so the gradient reaches every tensor func used (parameters found by no
list, tensors captured by closures, the state itself, tensors of the rest of the
model, the integration times) and every tensor or gradient-accumulator hook fires as
it would under direct. When a node asks for a saved tensor, the solve is re-run from a
kept state, under the forward's RNG, autocast and module-buffer state, to produce it:

- anode (Gholami et al. 2019, Sec. 3) keeps only the block input and recomputes all
  steps at the first request: O(steps) memory for the block being differentiated;
- revolve keeps at most ``checkpoints`` states from the forward and recomputes each
  step in turn from the nearest one by the binomial schedule of ``anode_ext.revolve``
  (Griewank & Walther 2000), holding one step's saved tensors at a time.

The recompute must perform the same operations as the forward: func may draw random
numbers and read and update module buffers, but not branch on Python state it
changes itself (a call counter, say). A different number of saved tensors, or a saved
tensor modified in place since the forward, raises an error; a different computation
with the same shapes cannot be seen.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
from torch import Tensor

from ._recompute import BufferLog, BufferValues, CallerHooks, ForwardState, RngState
from .revolve import Action, recorders, schedule
from .solver import Problem, State

DOUBLE_BACKWARD_MESSAGE = (
    "grad='{mode}' computes its gradient by recomputation inside backward and cannot be "
    "differentiated again (double backward / create_graph=True); use grad='direct' for "
    "higher-order derivatives"
)


def refuse_double_backward(mode: str) -> None:
    """Raise when a recompute-based backward is itself being recorded for differentiation."""
    if torch.is_grad_enabled():
        raise RuntimeError(DOUBLE_BACKWARD_MESSAGE.format(mode=mode))


IN_PLACE_MESSAGE = (
    "grad='{mode}': {what} was modified by an in-place operation after the forward used it, so the "
    "recompute would see other values; {fix}"
)


class _Versions:
    """Tensors and their version counters, to tell later whether any was modified in
    place. Held weakly: a tensor nobody else holds cannot have been modified."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple[weakref.ref, int]] = {}

    def note(self, t: Tensor) -> None:
        entry = self.entries.get(id(t))
        if entry is None or entry[0]() is not t:
            self.entries[id(t)] = (weakref.ref(t), t._version)

    def check(self, mode: str, what: str, fix: str) -> None:
        for ref, version in self.entries.values():
            t = ref()
            if t is not None and t._version != version:
                raise RuntimeError(IN_PLACE_MESSAGE.format(mode=mode, what=what, fix=fix))


class _Position:
    """A state held inside the solve through the caller's saved-tensor hooks (so memory
    accounting sees it as it sees what a plain forward saves), with the RNG and
    module-buffer state there."""

    def __init__(self, state: State, rng: RngState, buffers: BufferValues | None, hooks: CallerHooks) -> None:
        self.packed = [hooks.keep(s) for s in state]
        self.hooks = hooks
        self.rng = rng
        self.buffers = buffers

    @property
    def state(self) -> State:
        return tuple(self.hooks.restore(p) for p in self.packed)


class _Pass:
    """The saved tensors of one recomputed segment (packed by the caller's hooks of that
    moment), released as autograd takes them."""

    def __init__(self, hooks: CallerHooks) -> None:
        self.hooks = hooks
        self.saved: list[object] = []
        self.versions: list[int] = []
        self.left = 0


class CheckpointedSolve:
    """One forward solve in mode anode (checkpoints=None) or revolve, and its recompute."""

    def __init__(self, problem: Problem, forward_state: ForwardState, checkpoints: int | None) -> None:
        self.problem = problem
        self.forward_state = forward_state
        self.mode = "anode" if checkpoints is None else "revolve"
        self.plan = None if checkpoints is None else schedule(problem.steps, checkpoints)
        self.buffers = BufferLog()
        self.positions: dict[int, _Position] = {}
        self.requires: list[tuple[bool, ...]] = []
        # Tensors from outside the solve that func used (or the solve holds), whose
        # in-place modification before the backward would make the recompute differ.
        self.inputs = _Versions()
        self.outside = _Versions()
        # Per segment (the whole solve for anode, one step for revolve): how many
        # tensors the forward saved, then the recomputed tensors.
        self.forward_counts: dict[int, int] = {}
        self.passes: dict[int, _Pass] = {}
        self.segment = 0
        self.start = 0
        self.actions: Iterator[Action] | None = None
        self.current: tuple[int, _Position] | None = None
        self.hooks = CallerHooks()
        # Taken now: the backward may run later, or on an autograd worker thread.
        self.recorders = recorders() if self.plan is not None else ()

    def _emit(self, kind: str, position: int) -> None:
        for events in self.recorders:
            events.append((kind, position, len(self.positions)))

    # --- forward ---------------------------------------------------------------

    def forward(self, state: State) -> State:
        """Run the solve, recording its graph without its saved tensors."""
        self._keep(0, state, self.forward_state.rng, None)
        self.start = sequence_mark()
        with self.buffers.watch():
            if self.plan is None:
                self.requires.append(tuple(s.requires_grad for s in state))
                with torch.autograd.graph.saved_tensors_hooks(self._pack_whole, self._unpack_whole):
                    out = self.problem.solve(state)
            else:
                out = self._forward_steps(state)
        self.forward_state.forward_done()
        return out

    def _keep(self, position: int, state: State, rng: RngState, buffers: BufferValues | None) -> None:
        for s in state:
            self.inputs.note(s)
        self.positions[position] = _Position(state, rng, buffers, self.hooks)

    def _forward_steps(self, state: State) -> State:
        problem = self.problem
        kept = set(self.plan.kept)
        self._emit("store", 0)
        trajectory = [state]
        for n in range(problem.steps):
            self.segment = n
            self.requires.append(tuple(s.requires_grad for s in state))
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                state = problem.step(n, state)
            if n + 1 in kept:
                self._keep(n + 1, state, self.forward_state.rng_now(), self.buffers.values())
                self._emit("store", n + 1)
            if problem.return_all:
                trajectory.append(state)
        if problem.return_all:
            return tuple(torch.stack([s[m] for s in trajectory]) for m in range(len(state)))
        return state

    def _pack(self, t: Tensor) -> tuple[int, int]:
        """Saved tensor -> (step, index): revolve recomputes one step at a time."""
        return self.segment, self._pack_whole(t)

    def _pack_whole(self, t: Tensor) -> int:
        """Saved tensor -> index within its segment; only a note of tensors from outside."""
        if t.requires_grad:
            # A view (the transposed weight a linear layer saves) shares its base's
            # version counter: the base is what lives on and may be modified.
            base = t._base if t._is_view() else t
            node = base.grad_fn
            if node is None or node._sequence_nr() < self.start:
                self.outside.note(base)
        index = self.forward_counts.get(self.segment, 0)
        self.forward_counts[self.segment] = index + 1
        return index

    # --- backward --------------------------------------------------------------

    def _unpack_whole(self, index: int) -> Tensor:
        return self._unpack((0, index))

    def _unpack(self, key: tuple[int, int]) -> Tensor:
        refuse_double_backward(self.mode)
        segment, index = key
        recomputed = self.passes.get(segment)
        if recomputed is None or recomputed.saved[index] is None:
            recomputed = self._recompute(segment)
        packed, recomputed.saved[index] = recomputed.saved[index], None
        recomputed.left -= 1
        if recomputed.left == 0:
            del self.passes[segment]
        t = recomputed.hooks.restore(packed)
        if t._version != recomputed.versions[index]:
            raise RuntimeError(IN_PLACE_MESSAGE.format(
                mode=self.mode, what="a tensor that func saved for backward",
                fix="compute it out of place, as grad='direct' would require"))
        return t

    def _recompute(self, segment: int) -> _Pass:
        self.inputs.check(self.mode, "the state the solve started from (or one it kept)",
                          "modify a copy instead, in func and after the solve")
        self.outside.check(self.mode, "a tensor func used",
                           "call backward before modifying it (an optimizer step, say), as grad='direct' requires")
        self.hooks = CallerHooks()
        if self.plan is None:
            self._record(0, self.positions[0], whole=True)
        elif not self._follow_schedule(segment):
            self._record_from_nearest(segment)
        return self.passes[segment]

    def _follow_schedule(self, segment: int) -> bool:
        """Carry out the revolve schedule until step `segment` is recorded; False when
        the schedule has no such step ahead (a second backward, an out-of-order request)."""
        if self.actions is None:
            self.actions = self.plan.actions()
        for action in self.actions:
            if action.kind == "advance":
                self.current = (action.stop, self._advance(self._position_at(action.start), action.start, action.stop))
            elif action.kind == "store":
                self.positions[action.start] = self.current[1]
            elif action.kind == "release":
                if action.start != 0:
                    self.positions.pop(action.start, None)
            else:
                self._record(action.start, self._position_at(action.start))
                self.current = None
            self._emit(action.kind, action.start)
            if action.kind == "backprop" and action.start == segment:
                return True
        return False

    def _position_at(self, position: int) -> _Position:
        if self.current is not None and self.current[0] == position:
            return self.current[1]
        return self.positions[position]

    def _advance(self, origin: _Position, start: int, stop: int) -> _Position:
        """The state at `stop`, stepped from `origin` at `start` without recording."""
        state = origin.state
        with self._replaying(origin), torch.no_grad():
            for n in range(start, stop):
                state = self.problem.step(n, state)
            return _Position(state, self.forward_state.rng_now(), self.buffers.values(), self.hooks)

    def _record_from_nearest(self, segment: int) -> None:
        nearest = max(p for p in self.positions if p <= segment)
        origin = self.positions[nearest]
        if nearest < segment:
            origin = self._advance(origin, nearest, segment)
        self._record(segment, origin)

    @contextlib.contextmanager
    def _replaying(self, origin: _Position) -> Iterator[None]:
        with self.forward_state.rng_replay(origin.rng), self.buffers.replay(origin.buffers), \
                self.forward_state.autocast():
            yield

    def _record(self, first: int, origin: _Position, whole: bool = False) -> None:
        """Re-run step `first` (with whole=True, the whole solve) with autograd
        recording, keeping what its nodes save."""
        recomputed = _Pass(self.hooks)

        def keep(t: Tensor) -> None:
            recomputed.saved.append(recomputed.hooks.keep(t))
            recomputed.versions.append(t._version)

        def refuse(_: object) -> Tensor:
            raise RuntimeError("anode_ext: a recomputed graph was differentiated; this is a bug")

        state = origin.state
        with self._replaying(origin), torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(keep, refuse):
            state = tuple(s.detach().requires_grad_(r) for s, r in zip(state, self.requires[first]))
            if whole:
                self.problem.solve(state)
            else:
                self.problem.step(first, state)
        expected = self.forward_counts.get(first, 0)
        if len(recomputed.saved) != expected:
            raise RuntimeError(
                f"grad='{self.mode}': func saved {len(recomputed.saved)} tensors for backward when "
                f"recomputed but {expected} in the forward, so the recompute did not repeat the forward. "
                "func must compute the same thing when called again with the same random state and module "
                "buffers (it must not branch on Python state it changes itself); use grad='direct' for "
                "such a func"
            )
        recomputed.left = expected
        self.passes[first] = recomputed


def sequence_mark() -> int:
    """A sequence number below that of every autograd node created from now on in this
    thread, and above that of every node created before."""
    with torch.enable_grad():
        return torch.zeros((), requires_grad=True).view(1).grad_fn._sequence_nr() + 1


def solve_checkpointed(problem: Problem, state: State, forward_state: ForwardState, checkpoints: int | None) -> State:
    """Solve `problem` from `state` in mode anode (checkpoints=None) or revolve."""
    return CheckpointedSolve(problem, forward_state, checkpoints).forward(state)
