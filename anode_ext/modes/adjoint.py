"""grad='adjoint': the optimize-then-discretize gradient of Chen et al. (2018).

The backward solves the augmented system (state, adjoint a, parameter gradient g)
backwards in time from t1, on the same grid and with the same tableau:
``dy/dt = f``, ``da/dt = -a df/dy``, ``dg/dt = -a df/dtheta``. It needs only the
final state, but the state it reconstructs by solving backwards differs from the
forward trajectory, and the adjoint ODE is discretized separately from the
forward one: the gradient is not the gradient of the discrete network. It is kept
as the baseline whose error the benchmarks report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..adaptive import AdaptiveProblem
from ..solver import Problem, State, checked_derivative
from .checkpointed import refuse_double_backward
from .replay import ForwardState, buffers_unchanged


def _zero_if_none(grads, like):
    return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, like))


def sequence_mark() -> int:
    """A sequence number below that of every autograd node created from now on in this
    thread, and above that of every node created before."""
    with torch.enable_grad():
        return torch.zeros((), requires_grad=True).view(1).grad_fn._sequence_nr() + 1


def _leaves(outputs: Sequence[Tensor], own: Sequence[Tensor], named: Sequence[Tensor], start: int) -> list[Tensor]:
    """The leaf tensors requiring grad that `outputs` were computed from, other than
    `own`; a ValueError for a non-leaf tensor from before `start` not in `named`."""
    own_ids = {id(t) for t in own}
    named_nodes = {id(node): node for node in (t.grad_fn for t in named) if node is not None}
    found: dict[int, Tensor] = {}
    stack = [o.grad_fn for o in outputs if o.grad_fn is not None]
    # Node objects are kept alive, not only their ids: a C++ node's Python object lives
    # only while referenced (the next access makes another), and a freed one's id is
    # reused. Held, the same object comes back for the same node.
    seen: dict[int, object] = {}
    while stack:
        node = stack.pop()
        if id(node) in seen or id(node) in named_nodes:
            continue
        seen[id(node)] = node
        variable = getattr(node, "variable", None)
        if isinstance(variable, Tensor):
            if id(variable) not in own_ids:
                found.setdefault(id(variable), variable)
            continue
        # A cast made before the solve (autocast caches its casts of the weights between
        # calls) saves nothing: the gradient reaches the tensor it casts through it.
        if node._sequence_nr() < start and node.name() != "ToCopyBackward0":
            raise ValueError(
                "grad='adjoint' integrates a gradient for each tensor func depends on, but func uses a "
                f"tensor that was computed outside the solve and requires grad (its grad_fn is {node.name()}); "
                "name it in Adjoint(params=...) to treat it as a parameter, or use grad='anode' or 'revolve', which "
                "need no such list"
            )
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return list(found.values())


def _check_named_independent(named: Sequence[Tensor]) -> None:
    """A ValueError when one tensor of `named` is computed from another: the adjoint
    integrates a gradient for each as if independent, and autograd would then carry the
    first's on into the second a second time."""
    leaves = {id(t) for t in named if t.grad_fn is None}
    held = [t.grad_fn for t in named if t.grad_fn is not None]  # their ids stay theirs
    nodes = {id(node) for node in held}
    for root in held:
        stack = [n for n, _ in root.next_functions if n is not None]
        seen: dict[int, object] = {}
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen[id(node)] = node
            variable = getattr(node, "variable", None)
            if id(node) in nodes or (isinstance(variable, Tensor) and id(variable) in leaves):
                raise ValueError(
                    "Adjoint(params=...) names a tensor computed from another tensor it also names (its grad_fn is "
                    f"{root.name()}); name only the tensor func uses: its gradient reaches the tensors it is computed "
                    "from through autograd"
                )
            stack.extend(n for n, _ in node.next_functions if n is not None)


StepRecorder = Callable[[State, State], State]
"""Given a step's output and its input, notes the leaves the step used and returns the
output detached, to go on from."""


def _record_dependencies(run: Callable[[State, StepRecorder], State], state: State,
                         named: Sequence[Tensor]) -> tuple[State, list[Tensor]]:
    """Solve once with autograd recording, step by step (`run(inputs, recorder)` calls the
    recorder on each step's output), and read off each step's graph the leaf tensors
    requiring grad that func used. Returns the outputs and those tensors (with `named`
    added).

    The adjoint integrates a gradient for each of them, so each must be an object this
    code can name: a tensor computed outside the solve that requires grad (not a leaf)
    is reachable only as a graph node, and is refused unless it is in `named`. One step's
    graph at a time: a solve of many steps recorded whole would be a graph deep enough to
    overflow the stack when freed.
    """
    _check_named_independent(named)
    start = sequence_mark()
    found = {id(t): t for t in named}

    def recorder(out: State, inputs: State) -> State:
        for t in _leaves(out, inputs, named, start):
            found.setdefault(id(t), t)
        return tuple(o.detach().requires_grad_(o.requires_grad) for o in out)

    # A plain recorded forward: func may differentiate inside itself.
    with torch.enable_grad():
        outputs = run(tuple(s.detach().requires_grad_(s.requires_grad) for s in state), recorder)
    # .data, not .detach(): a detached view of a graph's output, returned by the Function,
    # could not be modified in place by the caller.
    return tuple(o.data for o in outputs), list(found.values())


def _fixed_steps(problem: Problem) -> Callable[[State, StepRecorder], State]:
    """run for _record_dependencies: the steps of a fixed-step problem."""

    def run(state: State, recorder: StepRecorder) -> State:
        states = [state]
        for n in range(problem.steps):
            state = recorder(problem.step(n, state), state)
            states.append(state)
        if problem.return_all:
            return tuple(torch.stack([s[m] for s in states]) for m in range(len(state)))
        return state

    return run


def _check_same_dependencies(f: State, y: State, params: Sequence[Tensor], start: int) -> None:
    """Refuse a backward in which func reaches leaf tensors the forward did not list (its
    parameters swapped by torch.func.functional_call around the solve, say): their
    gradient would be lost, and the listed ones would get zero."""
    listed = {id(p) for p in params}
    if any(id(t) not in listed for t in _leaves(f, y, params, start)):
        raise RuntimeError(
            "grad='adjoint': in backward func depends on other tensors than in the forward (parameters "
            "swapped in by torch.func.functional_call around the solve, or a changed attribute), so their "
            "gradient cannot be integrated; keep what func uses unchanged until backward, or use grad='direct'"
        )


def solve_adjoint(problem: Problem, state: State, forward_state: ForwardState, named: Sequence[Tensor]) -> State:
    """Solve `problem` from `state` with the adjoint gradient."""
    if isinstance(problem.t0, Tensor) or isinstance(problem.h, Tensor):
        raise ValueError(
            "grad='adjoint' gives no gradient with respect to t0 or t1; use grad='direct', 'anode' or "
            "'revolve' for learnable integration times"
        )
    outputs, params = _record_dependencies(_fixed_steps(problem), state, named)
    return AdjointFunction.apply(problem, forward_state, outputs, len(state), *state, *params)


class _FinalStateOnly:
    """An adaptive problem seen as a map from y to y(t1), run for _record_dependencies: the
    adjoint differentiates the continuous solution, so an FSAL pair's carried derivative k
    enters as a constant and leaves without a gradient (kept in `k_final`)."""

    def __init__(self, problem: AdaptiveProblem, k: State) -> None:
        self.problem = problem
        self.k = k
        self.k_final: State = ()

    def __call__(self, y: State, recorder: StepRecorder) -> State:
        out = self.problem.solve((*y, *self.k), _StepsRecorded(recorder, (*y, *self.k)))
        self.k_final = tuple(v.detach() for v in out[len(y):])
        return out[:len(y)]


class _StepsRecorded:
    """The AttemptObserver that hands each accepted step of an adaptive solve to a
    StepRecorder and goes on from the detached state it returns."""

    def __init__(self, recorder: StepRecorder, state: State) -> None:
        self.recorder = recorder
        self.state = state

    def starts(self) -> None:
        pass

    def ends(self, kept: bool) -> None:
        pass

    def step_done(self, state: State, final: bool) -> State:
        self.state = self.recorder(state, self.state)
        return self.state


def solve_adjoint_adaptive(problem: AdaptiveProblem, state: State, forward_state: ForwardState,
                           named: Sequence[Tensor]) -> State:
    """Solve an adaptive `problem` from `state` = (*y, *k) with the adjoint gradient: the
    adjoint system is solved back from t1 to t0 by the same pair and controller, its error
    measured over the state, the adjoint and the parameter gradients together."""
    atol = problem.method.atol
    positive = bool((atol > 0).all()) if isinstance(atol, Tensor) else atol > 0
    if not positive:
        raise ValueError(
            "grad='adjoint' with an adaptive method needs atol > 0: the adjoint system's parameter gradients start "
            "at 0, where an error measured relative to the solution alone cannot be scaled"
        )
    n = len(state) // 2
    final_only = _FinalStateOnly(problem, tuple(v.detach() for v in state[n:]))
    outputs, params = _record_dependencies(final_only, state[:n], named)
    y = AdjointFunction.apply(problem, forward_state, outputs, n, *state[:n], *params)
    return (*y, *final_only.k_final)


class AdjointFunction(torch.autograd.Function):
    """apply(problem, forward_state, outputs, n_state, *state, *params) -> outputs, the
    solve already run by _record_dependencies."""

    @staticmethod
    def forward(ctx, problem: Problem, forward_state: ForwardState, outputs: State, n_state: int, *tensors):
        final = tuple(o[-1] for o in outputs) if problem.return_all else outputs
        # Outputs nobody differentiates (the final weights of a coupled block, say)
        # then reach backward as None and cost nothing.
        ctx.set_materialize_grads(False)
        ctx.problem = problem
        ctx.forward_state = forward_state
        ctx.n_state = n_state
        ctx.params = tensors[n_state:]
        ctx.save_for_backward(*final)
        return outputs

    @staticmethod
    def backward(ctx, *grad_outputs):
        refuse_double_backward("adjoint")
        problem: Problem = ctx.problem
        n = ctx.n_state
        params = ctx.params
        final = ctx.saved_tensors
        # An output nobody differentiated contributes nothing to the adjoint.
        adjoint = tuple(
            torch.zeros_like(f) if g is None else (g[-1] if problem.return_all else g)
            for g, f in zip(grad_outputs, final)
        )
        augmented: State = (*final, *adjoint, *(torch.zeros_like(p) for p in params))

        checked = []

        def dynamics(t: float, aug: State) -> State:
            y, a = aug[:n], aug[n:2 * n]
            with torch.enable_grad():
                y = tuple(v.detach().requires_grad_(True) for v in y)
                start = sequence_mark()
                with ctx.forward_state.autocast():
                    f = checked_derivative(problem.func(t, y), y)
                if not checked:
                    _check_same_dependencies(f, y, params, start)
                    checked.append(True)
                live = [(o, g) for o, g in zip(f, a) if o.requires_grad]
                if live:
                    vjp = torch.autograd.grad([o for o, _ in live], (*y, *params), [g for _, g in live], allow_unused=True)
                else:
                    vjp = (None,) * (len(y) + len(params))
            vjp = _zero_if_none(vjp, (*y, *params))
            return (*(v.detach() for v in f), *(-v for v in vjp))

        if isinstance(problem, AdaptiveProblem):
            # Solved back from t1 by the same pair and controller, on steps of its own; the
            # parameter gradients have no batch dimension for a per-sample norm.
            reverse = AdaptiveProblem(dynamics, problem.method.with_options(norm="rms"), problem.t1, problem.t0)
            with ctx.forward_state.rng_replay(), buffers_unchanged():
                augmented = reverse.solve((*augmented, *augmented))[:len(augmented)]
            return _gradients(ctx, augmented, n)
        # The adjoint system, stepped backwards from t1 by the same steps and tableau.
        reverse = Problem(dynamics, problem.tableau, problem.t0 + problem.steps * problem.h, -problem.h, problem.steps)
        with ctx.forward_state.rng_replay(), buffers_unchanged():
            for back in range(problem.steps):
                augmented = reverse.step(back, augmented)
                if problem.return_all:
                    index = problem.steps - back - 1
                    a = tuple(x if g is None else x + g[index] for x, g in zip(augmented[n:2 * n], grad_outputs))
                    augmented = (*augmented[:n], *a, *augmented[2 * n:])
        return _gradients(ctx, augmented, n)


def _gradients(ctx, augmented: State, n: int) -> tuple[Tensor | None, ...]:
    """AdjointFunction.backward's result from the augmented state at t0."""
    needs = ctx.needs_input_grad[4:]
    grads = [g if needs[i] else None for i, g in enumerate((*augmented[n:2 * n], *augmented[2 * n:]))]
    return (None, None, None, None, *grads)
