"""grad='revolve': binomial checkpointing inside a block, exact gradients.

The forward runs every step untaped and keeps the states the schedule names. The
backward carries out the schedule's actions: it recomputes from checkpoints,
tapes one step at a time and propagates the adjoint through it. Each checkpoint
keeps the RNG state of its position, so random ops draw what they drew in the
forward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._anode import gradients, refuse_double_backward
from ._recompute import ForwardState, RngState, buffers_unchanged
from .revolve import _emit, schedule
from .solver import Problem, State


class _Checkpoints:
    """The states held at step positions, each with the RNG state there."""

    def __init__(self) -> None:
        self.held: dict[int, tuple[State, RngState]] = {}
        self.current: tuple[int, State] | None = None

    def state_at(self, position: int) -> State:
        """The state at `position`: the current one if it is there, else a checkpoint
        (whose RNG state is then restored)."""
        if self.current is not None and self.current[0] == position:
            return self.current[1]
        state, rng = self.held[position]
        rng.restore()
        return state

    def advance(self, problem: Problem, start: int, stop: int) -> None:
        state = self.state_at(start)
        for n in range(start, stop):
            state = problem.step(n, state)
        self.current = (stop, state)

    def store(self, position: int, rng: RngState) -> None:
        assert self.current is not None and self.current[0] == position
        self.held[position] = (self.current[1], rng)


class RevolveFunction(torch.autograd.Function):
    """apply(problem, forward_state, first_k, checkpoints, n_state, *state, *params) -> outputs."""

    @staticmethod
    def forward(ctx, problem: Problem, forward_state: ForwardState, first_k, checkpoints: int, n_state: int, *tensors):
        state = tensors[:n_state]
        plan = schedule(problem.steps, checkpoints)
        kept = set(plan.kept)
        held = {0: (state, forward_state.rng)}
        _emit("store", 0, 1)
        trajectory = [state]
        with torch.no_grad():
            for n in range(problem.steps):
                state = problem.step(n, state, first_k if n == 0 else None)
                if problem.return_all:
                    trajectory.append(state)
                if n + 1 in kept:
                    held[n + 1] = (state, forward_state.rng_now())
                    _emit("store", n + 1, len(held))
        if problem.return_all:
            outputs = tuple(torch.stack([s[m] for s in trajectory]) for m in range(n_state))
        else:
            outputs = state
        positions = sorted(held)
        # Outputs nobody differentiates (the final weights of a coupled block, say)
        # then reach backward as None and cost nothing.
        ctx.set_materialize_grads(False)
        ctx.problem = problem
        ctx.forward_state = forward_state
        ctx.n_state = n_state
        ctx.actions = plan.actions
        ctx.positions = positions
        ctx.rngs = [held[p][1] for p in positions]
        ctx.params = tensors[n_state:]
        ctx.save_for_backward(*(t for p in positions for t in held[p][0]))
        return outputs

    @staticmethod
    def backward(ctx, *grad_outputs):
        refuse_double_backward("revolve")
        problem: Problem = ctx.problem
        n = ctx.n_state
        needs = ctx.needs_input_grad[5:]
        saved = ctx.saved_tensors
        memory = _Checkpoints()
        for i, (position, rng) in enumerate(zip(ctx.positions, ctx.rngs)):
            memory.held[position] = (tuple(saved[i * n:(i + 1) * n]), rng)
        param_index = [j for j in range(len(ctx.params)) if needs[n + j]]
        wanted_params = [ctx.params[j] for j in param_index]
        param_grads: list[Tensor | None] = [None] * len(param_index)
        # With return_all every state is an output: its gradient joins the adjoint there.
        trajectory_grads = grad_outputs if problem.return_all else None
        if trajectory_grads is not None:
            adjoint = tuple(None if g is None else g[-1] for g in grad_outputs)
        else:
            adjoint = grad_outputs
        replay = ctx.forward_state
        with buffers_unchanged(), replay.rng_replay():
            for action in ctx.actions:
                if action.kind == "advance":
                    with torch.no_grad(), replay.autocast():
                        memory.advance(problem, action.start, action.stop)
                elif action.kind == "store":
                    memory.store(action.start, replay.rng_now())
                elif action.kind == "release":
                    del memory.held[action.start]
                else:
                    adjoint = _backprop_step(
                        ctx, memory, action.start, adjoint, trajectory_grads, wanted_params, param_grads
                    )
                _emit(action.kind, action.start, len(memory.held))
        grads: list[Tensor | None] = [adjoint[i] if needs[i] else None for i in range(n)]
        grads += [None] * len(ctx.params)
        for j, g in zip(param_index, param_grads):
            grads[n + j] = g
        return (None, None, None, None, None, *grads)


def _backprop_step(ctx, memory: _Checkpoints, p: int, adjoint, trajectory_grads, wanted_params, param_grads) -> tuple:
    """Tape step p, propagate the adjoint through it and add to the parameter gradients."""
    problem: Problem = ctx.problem
    n = ctx.n_state
    need_state = p > 0 or any(ctx.needs_input_grad[5 : 5 + n])
    with torch.enable_grad(), ctx.forward_state.autocast():
        x = tuple(s.detach().requires_grad_(need_state) for s in memory.state_at(p))
        y = problem.step(p, x)
    memory.current = None
    wrt = (list(x) if need_state else []) + wanted_params
    computed = gradients(y, adjoint, wrt)
    state_grads = computed[: len(x)] if need_state else [None] * n
    for j, g in enumerate(computed[len(wrt) - len(wanted_params) :]):
        if g is not None:
            param_grads[j] = g if param_grads[j] is None else param_grads[j] + g
    if trajectory_grads is not None:
        state_grads = [_add(a, None if g is None else g[p]) for a, g in zip(state_grads, trajectory_grads)]
    return tuple(state_grads)


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b
