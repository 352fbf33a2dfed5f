"""odeint: fixed-step Runge–Kutta solves with a choice of gradient computation."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

from .modes import GradMode, as_grad_mode
from .reversible import Method, Reversible, ReversibleProblem, as_method, base_tableau
from .solver import Problem, State, StateFunc, Time
from .tableau import Tableau

__all__ = ["odeint"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_time(value: object, name: str) -> Time:
    """A time as a float, or as a 0-d floating tensor when it requires grad (a learnable
    integration time); a ValueError for anything else."""
    if not isinstance(value, (Tensor, numbers.Real)) and getattr(value, "size", None) == 1 and hasattr(value, "item"):
        value = value.item()  # a one-element array (NumPy's 0-d arrays are not numbers.Real)
    if isinstance(value, Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(f"{name} must be a real number or a one-element floating tensor, got {value!r}")
        if value.requires_grad:
            if not torch.isfinite(value).all():
                raise ValueError(f"{name} must be finite, got {value!r}")
            return value.reshape(())
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def check_steps(steps: object) -> int:
    """`steps` as an int, or a ValueError that says what is expected."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def fixed_step_problem(func: StateFunc, t0: object, t1: object, steps: int, method: Method,
                       return_all: bool = False) -> Problem | ReversibleProblem:
    """The problem of `steps` equal steps from t0 to t1 by `method`, its times checked."""
    t0, t1 = check_time(t0, "t0"), check_time(t1, "t1")
    base = Problem(func, base_tableau(method), t0, (t1 - t0) / steps, steps, bool(return_all))
    return ReversibleProblem(base, method.coupling) if isinstance(method, Reversible) else base


def solve_problem(mode: GradMode, problem: Problem | ReversibleProblem, state: State, owner: Callable) -> State:
    """Solve `problem` from `state` in `mode`; a reversible problem starts from the pair
    (state, state) and gives the first half of its result."""
    if isinstance(problem, ReversibleProblem):
        return mode.solve(problem, (*state, *state), owner)[:len(state)]
    return mode.solve(problem, state, owner)


class _OnTensor:
    """Adapts func(t, y) on a tensor to the solver's func(t, state) on a 1-tuple."""

    def __init__(self, func: Callable[[float, Tensor], Tensor]) -> None:
        self.func = func

    def __call__(self, t: float, state: State) -> tuple[Tensor]:
        out = self.func(t, state[0])
        if not isinstance(out, Tensor):
            raise TypeError(f"func must return a tensor, got {type(out).__name__}")
        return (out,)


def odeint(
    func: Callable[[float, Tensor], Tensor],
    y0: Tensor,
    t0: float | Tensor = 0.0,
    t1: float | Tensor = 1.0,
    *,
    steps: int = 1,
    method: str | Tableau | Reversible = "rk4",
    grad: str | GradMode = "anode",
    return_all: bool = False,
) -> Tensor:
    """Integrate ``dy/dt = func(t, y)`` from t0 to t1 in `steps` equal steps of an explicit
    Runge–Kutta method; return y(t1), of y0's shape.

    Args:
        func: ``func(t, y)`` returns dy/dt, a floating tensor of y's shape (one of another
            floating dtype, such as a lower precision under autocast, is cast to y's). t is a
            Python float, or a 0-d tensor when t0 or t1 is a tensor that requires grad.
        y0: the initial state, a dense floating tensor of any shape.
        t0, t1: the integration times (t1 < t0 integrates backwards); floats, or 0-d
            tensors: with requires_grad the gradient with respect to them is the exact one
            of the discrete solve (step h = (t1 - t0) / steps), in every mode but Adjoint.
        steps: the number of steps, Nt >= 1.
        method: a name in ``TABLEAUX`` ("euler", "midpoint", "rk4", ...) or a Tableau; or
            a reversible method, ``"reversible_<name>"`` or ``anode_ext.Reversible(...)``
            (two base steps per step, exactly invertible; see anode_ext.reversible).
        grad: how the gradient is computed, a mode of ``anode_ext.modes`` or its name:
            ``Direct()`` autograd through every step (memory grows with steps x stages);
            ``Anode()`` keeps only y0 and recomputes the steps in backward;
            ``Revolve(checkpoints=None, memory_budget=None)`` keeps a few states and
            recomputes optimally; ``Adjoint(params=())`` solves the adjoint ODE backwards
            (Chen et al. 2018), which is NOT the exact gradient of the discrete solve;
            ``ReversibleGrad()``, for a reversible method only, computes each state
            back from the last (memory constant in the steps).
        return_all: return the states at every step, shape ``(steps + 1, *y0.shape)``.

    Direct, Anode and Revolve give the same gradients for any func: the backward runs the
    graph autograd recorded in the forward, whose saved tensors Anode and Revolve
    recompute (func must then compute the same thing when re-run: random numbers and
    module buffers are replayed, Python state func changes itself is not). Tensor and
    gradient-accumulator hooks fire as under Direct. Adjoint finds, from one recorded
    forward, every leaf tensor requiring grad that func uses; a tensor computed outside
    the solve that requires grad must be named in ``Adjoint(params=...)``.

    Returns:
        y(t1), shape ``y0.shape`` (or ``(steps + 1, *y0.shape)`` with return_all), y0's dtype.

    Raises:
        TypeError, ValueError: for a func, y0, time or option that is not as described.
        RuntimeError: from func's result (shape, dtype, device), and from backward when
            Anode or Revolve find that the recompute did not repeat the forward or that a
            tensor func used was modified in place.
    """
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
    if not isinstance(y0, Tensor):
        raise TypeError(f"y0 must be a tensor, got {type(y0).__name__}")
    if y0.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"y0 has dtype {y0.dtype}; expected float16, bfloat16, float32 or float64")
    if y0.is_nested or y0.layout != torch.strided:
        raise ValueError(f"y0 is a {'nested' if y0.is_nested else y0.layout} tensor; expected a dense (strided) tensor")
    mode = as_grad_mode(grad)
    problem = fixed_step_problem(_OnTensor(func), t0, t1, check_steps(steps), as_method(method), return_all)
    (out,) = solve_problem(mode, problem, (y0,), func)
    return out
