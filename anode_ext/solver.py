"""Fixed-step explicit Runge–Kutta integration over a state made of several tensors.

This module knows nothing of gradient modes: it runs the steps, under whatever
autograd mode the caller chose. All stage arithmetic goes through rk_combine, except
when the step size is a tensor that requires grad (learnable integration times), whose
stage sums are formed with ordinary tensor operations so that autograd differentiates
them with respect to h too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from . import ops  # noqa: F401  (loads the compiled ops and their fake kernels)
from ._library import _C
from .tableau import Tableau

State = tuple[Tensor, ...]
StateFunc = Callable[[float, State], Sequence[Tensor]]

_rk_combine = torch.ops.anode_ext.rk_combine.default

# A step is defined once, by python_rk_step, and every solve runs through Problem.step or
# Problem.run. The compiled step and loop (csrc/python/solver_step.cpp) repeat that
# definition for speed: with a cheap func the Python bookkeeping of a step costs more than
# its arithmetic (docs/design_decisions.md). `compiled` is the one switch between them and
# tests/test_solver_step.py holds the two to each other, bit for bit.

Time = float | Tensor


def combine_stages(
    state: State, ks: Sequence[State], which: tuple[int, ...], weights: tuple[float, ...], h: Time
) -> State:
    """``y + h * sum_j weights[j] * ks[which[j]]`` for each tensor y of the state."""
    if not which:
        return state
    if isinstance(h, Tensor):
        return tuple(y + h * _weighted_sum([ks[j][m] for j in which], weights) for m, y in enumerate(state))
    return tuple(_rk_combine(y, [ks[j][m] for j in which], list(weights), h) for m, y in enumerate(state))


def _weighted_sum(ks: list[Tensor], weights: tuple[float, ...]) -> Tensor:
    total = ks[0] * weights[0]
    for k, w in zip(ks[1:], weights[1:]):
        total = total + k * w
    return total


def checked_derivative(derivative: Tensor | Sequence[Tensor], state: State) -> State:
    """The derivative func returned, as a tuple in the state's dtypes, or a clear error."""
    if isinstance(derivative, Tensor):
        derivative = (derivative,)
    elif isinstance(derivative, str) or not isinstance(derivative, Sequence):
        raise TypeError(f"func must return a tensor or a sequence of tensors, got {type(derivative).__name__}")
    if len(derivative) != len(state):
        raise RuntimeError(f"func returned {len(derivative)} tensors for a state of {len(state)}")
    out = []
    for i, (k, y) in enumerate(zip(derivative, state)):
        if not isinstance(k, Tensor):
            raise TypeError(f"func must return tensors; element {i} is {type(k).__name__}")
        if k.is_nested or k.is_quantized or k.layout != torch.strided:
            kind = "nested" if k.is_nested else "quantized" if k.is_quantized else ""
            raise RuntimeError(f"func returned a{kind} {k.layout} tensor; dy/dt must be a dense (strided) tensor")
        if not k.is_floating_point():
            raise RuntimeError(
                f"func returned a tensor of dtype {str(k.dtype).removeprefix('torch.').capitalize()}; dy/dt must be "
                "a floating tensor (float16, bfloat16, float32 or float64)"
            )
        if k.shape != y.shape:
            raise RuntimeError(
                f"func returned shape {tuple(k.shape)} for a state of shape {tuple(y.shape)}; "
                "dy/dt must have the state's shape"
            )
        if k.device != y.device:
            raise RuntimeError(f"func returned a tensor on {k.device} for a state on {y.device}")
        # Under autocast f may return a lower precision; the state keeps its own.
        out.append(k if k.dtype == y.dtype else k.to(y.dtype))
    return tuple(out)


@dataclass
class Supplied:
    """The stages of some trailing tensors of a state, computed elsewhere than by func (a
    fused kernel that steps a coupled block's weights): ``stages[i]`` holds their values
    at stage i (``stages[0]`` their values at the step's start) and ``result`` their values
    after the step."""

    stages: Sequence[State]
    result: State


def python_rk_step(func: StateFunc, t: Time, h: Time, state: State, tableau: Tableau,
                   supplied: Supplied | None = None) -> State:
    """rk_step in Python: the definition of a step that the compiled one repeats."""
    free = state if supplied is None else state[:len(state) - len(supplied.result)]
    ks: list[State] = []
    for i in range(tableau.stages):
        which, weights = tableau.terms[i]
        stage = combine_stages(free, ks, which, weights, h)
        if supplied is not None:
            stage = (*stage, *supplied.stages[i])
        ks.append(checked_derivative(func(t + tableau.c[i] * h, stage), free))
    which, weights = tableau.terms[-1]
    result = combine_stages(free, ks, which, weights, h)
    return result if supplied is None else (*result, *supplied.result)


@functools.lru_cache(maxsize=64)
def _step_plan(tableau: Tableau) -> object:
    which = [list(w) for w, _ in tableau.terms]
    weights = [list(v) for _, v in tableau.terms]
    return _C.StepPlan(which, weights, list(tableau.c))


def compiled(h: Time) -> bool:
    """Whether the compiled step and loop run: not for a tensor step size (learnable times),
    whose stage sums autograd differentiates with respect to h too, and not while
    torch.compile traces, which can follow Python but not compiled code."""
    return not isinstance(h, Tensor) and not torch.compiler.is_compiling()


def rk_step(func: StateFunc, t: Time, h: Time, state: State, tableau: Tableau,
            supplied: Supplied | None = None) -> State:
    """One step of size h from (t, state): func is evaluated at each stage, with the
    stages of the `supplied` tensors (if any) taken as given, and returns the
    derivatives of the other tensors. The compiled step runs when it can."""
    if supplied is not None:
        _check_supplied(supplied, tableau, state)
    if not compiled(h):
        return python_rk_step(func, t, h, state, tableau, supplied)
    if supplied is None:
        return tuple(_C.rk_step(func, t, h, state, _step_plan(tableau)))
    free = state[:len(state) - len(supplied.result)]
    return tuple(_C.rk_step(func, t, h, free, _step_plan(tableau), supplied.stages, supplied.result))


def _check_supplied(supplied: Supplied, tableau: Tableau, state: State) -> None:
    if len(supplied.stages) != tableau.stages:
        raise ValueError(f"{len(supplied.stages)} supplied stages for a tableau of {tableau.stages} stages")
    count = len(supplied.result)
    if count > len(state) or any(len(stage) != count for stage in supplied.stages):
        raise ValueError(
            f"supplied stages of {[len(stage) for stage in supplied.stages]} tensors and a result of {count} for a "
            f"state of {len(state)}: each must hold the same trailing tensors of the state"
        )


class Supply(Protocol):
    """Steps the trailing tensors of a problem's state by other means than func."""

    #: How many trailing tensors of the state the supply computes by deterministic kernels
    #: from the step's start state and parameters alone, so that a recompute from the same
    #: start repeats them bit for bit (0 if it cannot promise that). The check that an
    #: anode/revolve recompute repeated the forward fingerprints the other tensors only.
    repeatable: int

    def stages(self, t: Time, h: Time, state: State) -> Supplied:
        """Their stages over the step of size h from (t, state)."""

    def derivative(self, t: Time, state: State) -> State:
        """At a stage: the derivatives of the other (leading) tensors of the state."""


@dataclass
class Problem:
    """A fixed-step solve of ``d(state)/dt = func(t, state)``: steps of size h from t0.

    t0 and h are floats, or 0-d tensors when the integration times are learnable; func
    is then called with tensor times. `supply`, when given, steps the trailing tensors of
    the state itself, and the steps evaluate its `derivative` for the others; func is the
    whole system still, for whoever needs it (the adjoint integrates it).
    """

    func: StateFunc
    tableau: Tableau
    t0: Time
    h: Time
    steps: int
    return_all: bool = False
    supply: Supply | None = None

    def solve(self, state: State) -> State:
        """The final state, or with return_all each state tensor stacked over steps 0..steps
        (shape ``(steps + 1, *tensor.shape)``)."""
        states = self.run(state)
        if not self.return_all:
            return states[-1]
        return tuple(torch.stack([s[m] for s in states]) for m in range(len(state)))

    def run(self, state: State) -> list[State]:
        """The states the solve passes through: every one from the initial state on with
        return_all, else only the last. The compiled loop (its Python bookkeeping costs a
        cheap func more than the step's arithmetic, docs/design_decisions.md) runs the
        same steps as `step` does, when `compiled` allows and nothing is supplied (a supplied
        problem's steps are each compiled, between the supply's Python calls)."""
        if self.supply is not None or not compiled(self.h):
            return self.run_stepwise(state)
        states = _C.rk_solve(self.func, self.t0, self.h, self.steps, state, _step_plan(self.tableau), self.return_all)
        return [tuple(s) for s in states]

    def run_stepwise(self, state: State) -> list[State]:
        """run, one call of `step` per step."""
        states = [state]
        for n in range(self.steps):
            state = self.step(n, state)
            if self.return_all:
                states.append(state)
            else:
                states = [state]
        return states

    def step(self, n: int, state: State) -> State:
        """Step n: from the state at t0 + n h to the state at t0 + (n + 1) h."""
        return self.step_at(self.t0 + n * self.h, self.h, state)

    def step_at(self, t: Time, h: Time, state: State) -> State:
        """One step of this problem's method of size h (negative steps back) from (t, state)."""
        if self.supply is None:
            return rk_step(self.func, t, h, state, self.tableau)
        supplied = self.supply.stages(t, h, state)
        return rk_step(self.supply.derivative, t, h, state, self.tableau, supplied)
