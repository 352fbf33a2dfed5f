"""Fixed-step explicit Runge–Kutta integration over a state made of several tensors.

This module knows nothing of gradient modes: it runs the steps, under whatever
autograd mode the caller chose. All stage arithmetic goes through rk_combine.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from . import ops  # noqa: F401  (loads the compiled ops and their fake kernels)
from ._library import _C
from .tableau import Tableau

State = tuple[Tensor, ...]
StateFunc = Callable[[float, State], Sequence[Tensor]]

_rk_combine = torch.ops.anode_ext.rk_combine.default

# The step and the loop over steps have two implementations with the same results and
# errors: the compiled one (csrc/python/solver_step.cpp), which eager code runs because
# with a cheap func the Python bookkeeping of a step costs more than its arithmetic
# (docs/design_decisions.md), and the Python one below, which torch.compile runs because
# it can trace it. tests/test_solver_step.py holds the two to each other. The compiled
# functions take tuples as they are (pybind11 converts any sequence) and None for no first_k.


def python_combine_stages(
    state: State, ks: Sequence[State], which: tuple[int, ...], weights: tuple[float, ...], h: float
) -> State:
    """combine_stages in Python."""
    if not which:
        return state
    return tuple(_rk_combine(y, [ks[j][m] for j in which], list(weights), h) for m, y in enumerate(state))


def python_checked_derivative(derivative: Tensor | Sequence[Tensor], state: State) -> State:
    """checked_derivative in Python."""
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


def python_rk_step(
    func: StateFunc, t: float, h: float, state: State, tableau: Tableau, first_k: State | None = None
) -> State:
    """rk_step in Python."""
    ks: list[State] = []
    for i in range(tableau.stages):
        if i == 0 and first_k is not None:
            ks.append(first_k)
            continue
        which, weights = tableau.terms[i]
        stage = python_combine_stages(state, ks, which, weights, h)
        ks.append(python_checked_derivative(func(t + tableau.c[i] * h, stage), state))
    which, weights = tableau.terms[-1]
    return python_combine_stages(state, ks, which, weights, h)


@functools.lru_cache(maxsize=64)
def _step_plan(tableau: Tableau) -> object:
    which = [list(w) for w, _ in tableau.terms]
    weights = [list(v) for _, v in tableau.terms]
    return _C.StepPlan(which, weights, list(tableau.c))


def combine_stages(state: State, ks: Sequence[State], which: tuple[int, ...], weights: tuple[float, ...], h: float) -> State:
    """``y + h * sum_j weights[j] * ks[which[j]]`` for each tensor y of the state."""
    if torch.compiler.is_compiling():
        return python_combine_stages(state, ks, which, weights, h)
    return tuple(_C.combine_stages(state, ks, which, weights, h))


def checked_derivative(derivative: Tensor | Sequence[Tensor], state: State) -> State:
    """The derivative as a tuple in the state's dtypes, or a clear error."""
    if torch.compiler.is_compiling():
        return python_checked_derivative(derivative, state)
    return tuple(_C.checked_derivative(derivative, state))


def rk_step(
    func: StateFunc,
    t: float,
    h: float,
    state: State,
    tableau: Tableau,
    first_k: State | None = None,
) -> State:
    """One step of size h from (t, state); `first_k` is f(t, state) when already known."""
    if torch.compiler.is_compiling():
        return python_rk_step(func, t, h, state, tableau, first_k)
    return tuple(_C.rk_step(func, t, h, state, _step_plan(tableau), first_k))


@dataclass
class Problem:
    """A fixed-step solve of ``d(state)/dt = func(t, state)``: steps of size h from t0."""

    func: StateFunc
    tableau: Tableau
    t0: float
    h: float
    steps: int
    return_all: bool = False

    def solve(self, state: State, first_k: State | None = None) -> State:
        """The final state, or with return_all each state tensor stacked over steps 0..steps."""
        states = self.run(state, first_k)
        if not self.return_all:
            return states[-1]
        return tuple(torch.stack([s[m] for s in states]) for m in range(len(state)))

    def run(self, state: State, first_k: State | None = None) -> list[State]:
        """The states the solve passes through: every one from the initial state on with
        return_all, else only the last. The loop runs in C++ (its Python bookkeeping
        costs a cheap func more than the step's arithmetic) except under torch.compile."""
        if torch.compiler.is_compiling():
            return self.run_stepwise(state, first_k)
        states = _C.rk_solve(
            self.func, self.t0, self.h, self.steps, state, _step_plan(self.tableau), first_k, self.return_all
        )
        return [tuple(s) for s in states]

    def run_stepwise(self, state: State, first_k: State | None = None) -> list[State]:
        """run, one call of `step` per step."""
        states = [state]
        for n in range(self.steps):
            state = self.step(n, state, first_k if n == 0 else None)
            if self.return_all:
                states.append(state)
            else:
                states = [state]
        return states

    def step(self, n: int, state: State, first_k: State | None = None) -> State:
        """Step n: from the state at t0 + n h to the state at t0 + (n + 1) h."""
        return rk_step(self.func, self.t0 + n * self.h, self.h, state, self.tableau, first_k)

    def evaluate(self, n: int, state: State) -> State:
        """func at step n's start, as the first stage of that step uses it."""
        return checked_derivative(self.func(self.t0 + n * self.h, state), state)
