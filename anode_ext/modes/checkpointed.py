"""grad='anode' and grad='revolve': a solve whose saved tensors are recomputed in backward.

The forward records the graph of the whole solve, as grad='direct' does, but under
saved-tensor hooks that keep nothing of what the graph's nodes save beyond the solve
(or, for revolve, beyond each step): each saved tensor is replaced by its index. The
backward that autograd then runs is the graph of the direct solve, so the gradient
reaches every tensor func used (parameters found by no list, tensors captured by
closures, the state itself, tensors of the rest of the model, the integration times)
and every tensor or gradient-accumulator hook fires as it would under direct. When a
node asks for a saved tensor, the solve is re-run from a kept state, under the
forward's RNG, autocast and module state (buffers, train/eval mode), to produce it:

- anode (Gholami et al. 2019, Sec. 3) keeps only the block input and recomputes all
  steps at the first request: O(steps) memory for the block being differentiated;
- revolve keeps at most ``checkpoints`` states from the forward and recomputes each
  step in turn from the nearest one by the binomial schedule of ``anode_ext.revolve``
  (Griewank & Walther 2000), holding one step's saved tensors at a time.

A recompute is only valid if it repeats the forward. It is checked to: each saved
tensor must have the shape and dtype it had, a tensor from outside the solve that
requires grad must be the same object, and the recomputed states must equal the
forward's (a fingerprint of each). A tensor from outside modified in place since the
forward is refused too. What changes the computation between forward and backward
(Python state func reads, parameters swapped by torch.func.functional_call, random
numbers from other generators) therefore raises an error instead of giving another
gradient.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from .._library import _C
from ..revolve import Action, recorders, schedule
from ..solver import Problem, State
from .replay import (
    BufferValues,
    CallerHooks,
    ForwardState,
    ModuleState,
    RngState,
    hooks_registered_in_body_removed,
    reachable,
)

DOUBLE_BACKWARD_MESSAGE = (
    "grad='{mode}' computes its gradient by recomputation inside backward and cannot be "
    "differentiated again (double backward / create_graph=True); use grad='direct' for "
    "higher-order derivatives"
)

IN_PLACE_MESSAGE = (
    "grad='{mode}': {what} was modified by an in-place operation after the forward used it, so the "
    "recompute would see other values; {fix}"
)

NOT_REPEATED_MESSAGE = (
    "grad='{mode}': the recompute in backward did not repeat the forward ({what}). The backward "
    "re-runs func with the forward's random state, autocast state, module buffers and train/eval "
    "modes; anything else func depends on must not change between forward and backward: Python "
    "attributes it reads (a conditioning input set before each forward, say), parameters swapped in "
    "by torch.func.functional_call around the solve, parameters frozen or unfrozen (requires_grad), random numbers from other generators than "
    "torch's default ones (or drawn by another thread at the same time), a lazy module's first call, "
    "a TorchScript or torch.compile'd module whose first calls profile or compile it, a cache such as "
    "torch.nn.utils.parametrize.cached(). "
    "Use grad='direct' for such a func"
)


def refuse_double_backward(mode: str) -> None:
    """Raise when a recompute-based backward is itself being recorded for differentiation."""
    if torch.is_grad_enabled():
        raise RuntimeError(DOUBLE_BACKWARD_MESSAGE.format(mode=mode))


def fingerprint(state: State) -> Tensor:
    """Sum and sum of squares of the finite entries of each state tensor (NaN and
    infinities count as 0), in float64, left on the state's device (read only in
    backward): equal for equal states, and almost surely different for states that are
    not, also where some entries are not finite."""
    with torch.no_grad():
        finite = [s.nan_to_num(0.0, 0.0, 0.0) for s in state]
        return torch.stack([
            torch.stack([f.sum(dtype=torch.float64), torch.linalg.vector_norm(f, dtype=torch.float64).square()])
            for f in finite
        ])


def same_fingerprint(a: Tensor, b: Tensor) -> bool:
    """True when two fingerprints are equal, bit for bit: a recompute of the same
    operations on the same values gives the same bits, on any device, unless an
    operation is nondeterministic."""
    return a.device.type == "meta" or torch.equal(a, b)


class _Versions:
    """Tensors and their version counters, to tell later whether any was modified in
    place. Held weakly: a tensor nobody else holds cannot have been modified."""

    def __init__(self) -> None:
        self.entries: list[tuple[weakref.ref, int]] = []

    def note(self, t: Tensor) -> None:
        self.entries.append((weakref.ref(t), t._version))

    def check(self, mode: str, what: str, fix: str) -> None:
        for ref, version in self.entries:
            t = ref()
            if t is not None and t._version != version:
                raise RuntimeError(IN_PLACE_MESSAGE.format(mode=mode, what=what, fix=fix))


class _Position:
    """A state held inside the solve through the caller's saved-tensor hooks (so memory
    accounting sees it as it sees what a plain forward saves), with the RNG and module
    state there. It is read back through the hooks once, then kept as read.

    Held detached: a kept state's graph holds the hooks, which hold the ledger, which
    holds this solve; a reference back would make a cycle through autograd's C++ graph
    that no garbage collector can free (a forward never followed by a backward)."""

    def __init__(self, state: State, rng: RngState, buffers: BufferValues | None, hooks: CallerHooks) -> None:
        self.packed = [hooks.keep(s.detach()) for s in state]
        self.hooks = hooks
        self.rng = rng
        self.buffers = buffers
        self._read: State | None = None

    @property
    def state(self) -> State:
        if self._read is None:
            self._read = tuple(self.hooks.restore(p).detach() for p in self.packed)
        return self._read


def _base_of(t: Tensor) -> Tensor:
    """The tensor that `t` views, or `t` itself."""
    return t._base if t._is_view() else t


class CheckpointedSolve:
    """One forward solve in mode anode (checkpoints=None) or revolve, and its recompute.

    The saved-tensor hooks themselves are methods of an ``anode_ext._C.SavedLedger``
    (csrc/python/saved_ledger.cpp), which keeps, per segment (the whole solve for anode,
    one step for revolve), what the forward saved and what a recompute saves again; it
    calls back `_recompute` when a tensor it must hand to autograd is not there.
    """

    def __init__(self, problem: Problem, forward_state: ForwardState, checkpoints: int | None,
                 owner: Callable) -> None:
        self.problem = problem
        self.forward_state = forward_state
        self.mode = "anode" if checkpoints is None else "revolve"
        self.plan = None if checkpoints is None else schedule(problem.steps, checkpoints)
        self._ledger: Callable[[], object] = lambda: None
        self.modules = ModuleState()
        modules, self.known = reachable(owner)
        self.modules.note_trees(modules)
        self.positions: dict[int, _Position] = {}
        # Per segment: requires_grad of its input, and which of its input tensors were
        # the user's own (a recompute's copy of them counts as them), and a fingerprint
        # of its output.
        self.requires: list[tuple[bool, ...]] = []
        self.inputs_seen: list[tuple[Tensor | None, ...]] = []
        self.fingerprints: dict[int, Tensor] = {}
        # The states the solve keeps: modified in place before the backward, they would
        # make the recompute differ.
        self.inputs = _Versions()
        self.actions: Iterator[Action] | None = None
        self.current: tuple[int, _Position] | None = None
        self.hooks = CallerHooks()
        # Taken now: the backward may run later, or on an autograd worker thread.
        self.recorders = recorders() if self.plan is not None else ()

    @property
    def ledger(self):
        """The ledger, held by autograd's graph (through the hooks); it holds this solve
        (through the callback), not the other way round, so that no reference cycle
        through an object the garbage collector cannot see keeps either alive."""
        return self._ledger()

    def _emit(self, kind: str, position: int) -> None:
        for events in self.recorders:
            events.append((kind, position, len(self.positions)))

    # --- forward ---------------------------------------------------------------

    def forward(self, state: State) -> State:
        """Run the solve, recording its graph without its saved tensors."""
        self._keep(0, state, self.forward_state.rng, None)
        with self.modules.watch():
            out = self._forward_steps(state)
        self.forward_state.forward_done()
        return out

    def _keep(self, position: int, state: State, rng: RngState, buffers: BufferValues | None) -> None:
        for s in state:
            self.inputs.note(s)
        self.positions[position] = _Position(state, rng, buffers, self.hooks)

    def _forward_steps(self, state: State) -> State:
        """The steps one by one, so that what they save is dropped after each: one segment
        for anode (recomputed as a whole), one per step for revolve."""
        problem = self.problem
        per_step = self.plan is not None
        kept = set(self.plan.kept) if per_step else set()
        self._emit("store", 0)
        trajectory = [state]
        for n in range(problem.steps):
            if per_step or n == 0:
                self._segment_starts(n, state)
            with torch.autograd.graph.saved_tensors_hooks(self.ledger.pack, self.ledger.unpack):
                state = problem.step(n, state)
            self.ledger.release_live()
            if per_step or n == problem.steps - 1:
                self._segment_done(n if per_step else 0, state)
            if n + 1 in kept:
                self._keep(n + 1, state, self.forward_state.rng_now(), self.modules.values())
                self._emit("store", n + 1)
            if problem.return_all:
                trajectory.append(state)
        if problem.return_all:
            return tuple(torch.stack([s[m] for s in trajectory]) for m in range(len(state)))
        return state

    def _segment_starts(self, segment: int, state: State) -> None:
        self.ledger.start_segment(segment)
        self.requires.append(tuple(s.requires_grad for s in state))
        # The solve's input (or the tensor it views, such as a learned initial state it
        # expands) is one of the tensors a recompute must meet again, through its copy;
        # also when it is not a leaf, since func may use it by name too.
        inputs = tuple(_base_of(s) if segment == 0 else None for s in state)
        self.inputs_seen.append(inputs)
        if segment == 0:
            self.ledger.set_known([*self.known, *(t for t in inputs if t is not None)])
            self.known = ()

    def _segment_done(self, segment: int, out: State) -> None:
        self.ledger.end_segment(segment)  # its saved tensors go: the backward recomputes them
        self.fingerprints[segment] = fingerprint(self._checked(out))

    def _checked(self, state: State) -> State:
        """The tensors of a step's output whose fingerprint checks the recompute: all but
        those a supply promises to repeat (Supply.repeatable)."""
        supply = getattr(self.problem, "supply", None)
        repeatable = 0 if supply is None else supply.repeatable
        return state[: len(state) - repeatable]

    # --- backward --------------------------------------------------------------

    def _recompute(self, segment: int) -> None:
        """Record step `segment` again (the whole solve for anode); the ledger's callback."""
        self._start_recompute()
        if self.plan is None:
            self._record(0, self.positions[0], whole=True)
        elif not self._follow_schedule(segment):
            self._record_out_of_order(segment)

    def _start_recompute(self) -> None:
        """Refuse a recompute from tensors modified in place since the forward; hold what
        the recompute keeps through fresh caller hooks."""
        self.inputs.check(self.mode, "the state the solve started from (or one it kept)",
                          "modify a copy instead, in func and after the solve")
        if not self.ledger.outside_unchanged():
            raise RuntimeError(IN_PLACE_MESSAGE.format(
                mode=self.mode, what="a tensor func used",
                fix="call backward before modifying it (an optimizer step, say), as grad='direct' requires"))
        self.hooks = CallerHooks()

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

    def _record_out_of_order(self, segment: int) -> None:
        """Step `segment` outside the schedule. Its last step asked for again (a second
        backward through a retained graph) starts the schedule over; any other step is
        recomputed from the nearest state held."""
        if segment == self.problem.steps - 1:
            self._restart()
            if self._follow_schedule(segment):
                return
        nearest = max(p for p in self.positions if p <= segment)
        origin = self.positions[nearest]
        if nearest < segment:
            origin = self._advance(origin, nearest, segment)
        self._record(segment, origin)

    def _restart(self) -> None:
        """Hold again the states the forward kept, stepping from the input (the schedule
        released them), and start the schedule over."""
        self.positions = {0: self.positions[0]}
        origin, at = self.positions[0], 0
        for position in self.plan.kept:
            origin = self._advance(origin, at, position)
            self.positions[position], at = origin, position
        self.actions, self.current = None, None

    def _position_at(self, position: int) -> _Position:
        if self.current is not None and self.current[0] == position:
            return self.current[1]
        return self.positions[position]

    def _advance(self, origin: _Position, start: int, stop: int) -> _Position:
        """The state at `stop`, stepped from `origin` at `start` without recording."""
        state = origin.state
        # With grad enabled and the forward's requires_grad flags, as the forward ran:
        # a func may take another path without grad (a fused inference kernel) or
        # differentiate inside itself. Each step's graph goes when the next step starts.
        with self._replaying(origin), torch.enable_grad():
            for n in range(start, stop):
                state = tuple(s.detach().requires_grad_(r) for s, r in zip(state, self.requires[n]))
                state = self.problem.step(n, state)
            state = tuple(s.detach() for s in state)
            return _Position(state, self.forward_state.rng_now(), self.modules.values(), self.hooks)

    @contextlib.contextmanager
    def _replaying(self, origin: _Position) -> Iterator[None]:
        with self.forward_state.rng_replay(origin.rng), self.modules.replay(origin.buffers), \
                self.forward_state.autocast(), hooks_registered_in_body_removed():
            yield

    def _record(self, first: int, origin: _Position, whole: bool = False) -> None:
        """Re-run step `first` (with whole=True, the whole solve) with autograd recording,
        the ledger keeping what its nodes save, and check that it repeated the forward."""
        state = origin.state
        with self._replaying(origin), torch.enable_grad():
            state = tuple(s.detach().requires_grad_(r) for s, r in zip(state, self.requires[first]))
            self.ledger.begin_record(first, list(zip(state, self.inputs_seen[first])), self.hooks.pack,
                                     self.hooks.unpack, True)
            with torch.autograd.graph.saved_tensors_hooks(self.ledger.keep, self.ledger.kept):
                out = self.problem.solve(state) if whole else self.problem.step(first, state)
        if whole and self.problem.return_all:
            out = tuple(o[-1] for o in out)
        differs = self.ledger.finish_record()
        if not differs and not same_fingerprint(fingerprint(self._checked(out)), self.fingerprints[first]):
            differs = (
                "the recomputed states differ from the forward's; if func uses a nondeterministic operation "
                "(an atomic scatter_add or index_add on a GPU, say), torch.use_deterministic_algorithms(True) "
                "makes it repeatable"
            )
        if differs:
            raise RuntimeError(NOT_REPEATED_MESSAGE.format(mode=self.mode, what=differs))


def solve_checkpointed(problem: Problem, state: State, forward_state: ForwardState, checkpoints: int | None,
                       owner: Callable) -> State:
    """Solve `problem` from `state` in mode anode (checkpoints=None) or revolve; `owner`
    is the user's callable, whose modules' state the recompute replays."""
    return run_forward(CheckpointedSolve(problem, forward_state, checkpoints, owner), state)


def run_forward(solve: CheckpointedSolve, state: State) -> State:
    """Give `solve` its ledger and run its forward from `state`; an error of func under
    saved-tensor hooks is explained."""
    ledger = _C.SavedLedger(solve._recompute, solve.mode)
    ledger.set_forward_hooks(solve.hooks.pack is not None)
    solve._ledger = weakref.ref(ledger)
    try:
        return solve.forward(state)
    except RuntimeError as error:
        if "saved tensor hooks" not in str(error):
            raise
        raise RuntimeError(
            f"grad='{solve.mode}' records the solve under saved-tensor hooks, which func cannot run under "
            f"({error}); torch.func transforms (grad, vjp, jacrev) inside func are such a case. Use "
            "grad='direct' for this func"
        ) from error
