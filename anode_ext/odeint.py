"""odeint: Runge–Kutta solves (fixed or adaptive steps) with a choice of gradient computation."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

from .adaptive import Adaptive, AdaptiveProblem, SolverStats
from .embedded import EmbeddedTableau
from .methods import Method, as_method, base_tableau
from .modes import GradMode, as_grad_mode
from .reversible import Reversible, ReversibleProblem
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
    """The problem of `steps` equal steps from t0 to t1 by `method`, its times checked.

    Raises:
        ValueError: for an adaptive method (its steps are not fixed) or a bad time.
    """
    if isinstance(method, Adaptive):
        raise ValueError(f"{method!r} chooses its own steps; this solve takes a fixed-step method (a name in "
                         "TABLEAUX, a Tableau or a Reversible)")
    t0, t1 = check_time(t0, "t0"), check_time(t1, "t1")
    base = Problem(func, base_tableau(method), t0, (t1 - t0) / steps, steps, bool(return_all))
    return ReversibleProblem(base, method.coupling) if isinstance(method, Reversible) else base


def solve_problem(mode: GradMode, problem: Problem | ReversibleProblem, state: State, owner: Callable) -> State:
    """Solve `problem` from `state` in `mode`; a reversible problem starts from the pair
    (state, state) and gives the first half of its result."""
    if isinstance(problem, ReversibleProblem):
        return mode.solve(problem, (*state, *state), owner)[:len(state)]
    return mode.solve(problem, state, owner)


def output_times(t: object) -> list[float]:
    """The output times of an adaptive solve as floats: a 1-D tensor (or sequence) of at
    least two finite, strictly increasing or strictly decreasing times.

    Raises:
        ValueError: for anything else.
    """
    if isinstance(t, Tensor):
        if t.requires_grad:
            raise ValueError("t requires grad; an adaptive solve treats its times as constants (pass t.detach())")
        if t.dim() != 1 or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"t must be a 1-D tensor of real times, got shape {tuple(t.shape)} and dtype {t.dtype}")
        values = [float(v) for v in t.detach().cpu().double()]
    elif isinstance(t, (list, tuple)):
        values = [check_time(v, "each time in t") for v in t]
        if any(isinstance(v, Tensor) for v in values):
            raise ValueError("t requires grad; an adaptive solve treats its times as constants")
    else:
        raise ValueError(f"t must be a 1-D tensor of times, got {type(t).__name__}")
    if len(values) < 2:
        raise ValueError(f"t must hold at least two times (the start and an output time), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"t must hold finite times, got {values}")
    steps = [b - a for a, b in zip(values, values[1:])]
    if not (all(d > 0 for d in steps) or all(d < 0 for d in steps)):
        raise ValueError("t must be strictly increasing or strictly decreasing, got " + ", ".join(f"{v:g}" for v in values))
    return values


def adaptive_times(t0: object, t1: object) -> list[float]:
    """[t0, t1] as floats for an adaptive solve; a ValueError for learnable or equal times."""
    times = [check_time(t0, "t0"), check_time(t1, "t1")]
    if any(isinstance(v, Tensor) for v in times):
        raise ValueError("an adaptive method takes t0 and t1 that do not require grad (its step sizes are not "
                         "differentiated); use a fixed-step method for learnable integration times")
    if times[0] == times[1]:
        raise ValueError(f"t0 and t1 are equal ({times[0]:g}); an adaptive solve needs an interval")
    return times


def solve_adaptive(mode: GradMode, func: StateFunc, method: Adaptive, times: list[float], state: State,
                   owner: Callable, stats: SolverStats | None = None) -> list[State]:
    """The states at `times` (the first is `state`), solved in `mode` from one time to the
    next; the controller's step size and an FSAL pair's last stage carry over."""
    n = len(state)
    pair = (*state, *state)
    outputs = [state]
    h, previous, k_given, attempted = None, 1e-4, False, 0
    for a, b in zip(times, times[1:]):
        problem = AdaptiveProblem(func, method, a, b, k_given, h, previous, stats, attempted)
        pair = mode.solve(problem, pair, owner)
        outputs.append(tuple(pair[:n]))
        h, previous, k_given, attempted = problem.h, problem.previous_error, method.pair.fsal, problem.attempted
    return outputs


def with_tolerances(method: Method, rtol: object, atol: object) -> Method:
    """`method` with rtol and atol replaced where given; a ValueError for a fixed-step method."""
    if rtol is None and atol is None:
        return method
    if not isinstance(method, Adaptive):
        raise ValueError(f"rtol and atol go with an adaptive method (dopri5, tsit5, bosh3); got {method.name!r}")
    return method.with_options(**{k: v for k, v in (("rtol", rtol), ("atol", atol)) if v is not None})


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
    t0: float | Tensor | None = None,
    t1: float | Tensor | None = None,
    *,
    steps: int | None = None,
    method: str | Tableau | Reversible | EmbeddedTableau | Adaptive = "rk4",
    grad: str | GradMode = "anode",
    return_all: bool = False,
    t: Tensor | None = None,
    rtol: float | Tensor | None = None,
    atol: float | Tensor | None = None,
    stats: SolverStats | None = None,
) -> Tensor:
    """Integrate ``dy/dt = func(t, y)`` from t0 to t1 by an explicit Runge–Kutta method, in
    `steps` equal steps or in steps an embedded pair chooses; return y(t1), of y0's shape.

    Args:
        func: ``func(t, y)`` returns dy/dt, a floating tensor of y's shape (one of another
            floating dtype, such as a lower precision under autocast, is cast to y's). t is a
            Python float, or a 0-d tensor when t0 or t1 is a tensor that requires grad.
        y0: the initial state, a dense floating tensor of any shape.
        t0, t1: the integration times (t1 < t0 integrates backwards), default 0 and 1;
            floats, or 0-d tensors: with requires_grad (fixed steps only) the gradient with
            respect to them is the exact one of the discrete solve (step h = (t1 - t0) /
            steps), in every mode but Adjoint.
        steps: the number of fixed steps, Nt >= 1 (default 1); not with an adaptive method.
        method: a name in ``TABLEAUX`` ("euler", "midpoint", "rk4", ...) or a Tableau; or
            a reversible method, ``"reversible_<name>"`` or ``anode_ext.Reversible(...)``
            (two base steps per step, exactly invertible; see anode_ext.reversible); or an
            adaptive method, a name in ``PAIRS`` ("dopri5", "tsit5", "bosh3"), an
            EmbeddedTableau or ``anode_ext.Adaptive(...)`` with its options (see
            anode_ext.adaptive). Gradients of an adaptive solve treat its accepted steps
            as constants.
        t: with an adaptive method, instead of t0 and t1: a 1-D tensor of M >= 2 strictly
            increasing or decreasing times; the result is then the states at those times,
            shape ``(M, *y0.shape)`` (the first is y0), reached by steps that land on each.
        rtol, atol: an adaptive method's tolerances, replacing the method's own.
        stats: a SolverStats that an adaptive solve adds its step and evaluation counts to.
        grad: how the gradient is computed, a mode of ``anode_ext.modes`` or its name:
            ``Direct()`` autograd through every step (memory grows with steps x stages);
            ``Anode()`` keeps only y0 and recomputes the steps in backward;
            ``Revolve(checkpoints=None, memory_budget=None)`` keeps a few states and
            recomputes optimally; ``Adjoint(params=())`` solves the adjoint ODE backwards
            (Chen et al. 2018), which is NOT the exact gradient of the discrete solve;
            ``ReversibleGrad()``, for a reversible method only, computes each state
            back from the last (memory constant in the steps).
        return_all: return the states at every step, shape ``(steps + 1, *y0.shape)``
            (fixed steps; an adaptive method gives states at the times `t`).

    Direct, Anode and Revolve give the same gradients for any func: the backward runs the
    graph autograd recorded in the forward, whose saved tensors Anode and Revolve
    recompute (func must then compute the same thing when re-run: random numbers and
    module buffers are replayed, Python state func changes itself is not). Tensor and
    gradient-accumulator hooks fire as under Direct. Adjoint finds, from one recorded
    forward, every leaf tensor requiring grad that func uses; a tensor computed outside
    the solve that requires grad must be named in ``Adjoint(params=...)``.

    Returns:
        y(t1), shape ``y0.shape`` (``(steps + 1, *y0.shape)`` with return_all, ``(M, *y0.shape)``
        with t), y0's dtype.

    Raises:
        TypeError, ValueError: for a func, y0, time or option that is not as described.
        RuntimeError: from func's result (shape, dtype, device); from an adaptive solve
            that reaches max_steps or whose step size underflows; and from backward when
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
    method = with_tolerances(as_method(method), rtol, atol)
    if isinstance(method, Adaptive):
        if steps is not None or return_all:
            raise ValueError(f"{method!r} chooses its own steps: give t=... for the states at several times, "
                             "not steps or return_all")
        if stats is not None and not isinstance(stats, SolverStats):
            raise TypeError(f"stats must be an anode_ext.SolverStats, got {type(stats).__name__}")
        if t is not None:
            if t0 is not None or t1 is not None:
                raise ValueError("give the times as t=... or as t0 and t1, not both")
            times = output_times(t)
        else:
            times = adaptive_times(0.0 if t0 is None else t0, 1.0 if t1 is None else t1)
        states = solve_adaptive(mode, _OnTensor(func), method, times, (y0,), func, stats)
        return torch.stack([s[0] for s in states]) if t is not None else states[-1][0]
    if t is not None or stats is not None:
        raise ValueError(f"t= and stats= go with an adaptive method (dopri5, tsit5, bosh3); the fixed-step method "
                         f"{method.name!r} takes t0, t1 and steps")
    problem = fixed_step_problem(_OnTensor(func), 0.0 if t0 is None else t0, 1.0 if t1 is None else t1,
                                 check_steps(1 if steps is None else steps), method, return_all)
    (out,) = solve_problem(mode, problem, (y0,), func)
    return out
