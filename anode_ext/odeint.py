"""odeint: fixed-step Runge–Kutta solves with a choice of gradient computation."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from ._adjoint import solve_adjoint
from ._checkpointed import solve_checkpointed
from ._recompute import ForwardState
from .revolve import _check as _check_revolve_args
from .revolve import _check_budget, checkpoints_for_budget
from .solver import Problem, State, StateFunc, Time
from .tableau import Tableau, get_tableau

__all__ = ["GRAD_MODES", "odeint"]

GRAD_MODES = ("direct", "anode", "revolve", "adjoint")
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


def check_grad(grad: object) -> str:
    """`grad` if it names a gradient mode, else a ValueError listing the modes."""
    if not isinstance(grad, str) or grad not in GRAD_MODES:
        raise ValueError(f"unknown grad={grad!r}; expected one of {', '.join(GRAD_MODES)}")
    return grad


def default_checkpoints(steps: int) -> int:
    """The checkpoints revolve uses when given neither checkpoints nor memory_budget: ceil(log2 steps)."""
    return max(1, math.ceil(math.log2(steps))) if steps > 1 else 1


def check_revolve_options(grad: str, steps: int, checkpoints: object, memory_budget: object) -> None:
    """Clear errors for checkpointing options that do not fit the gradient mode."""
    if grad != "revolve":
        if checkpoints is not None or memory_budget is not None:
            raise ValueError(f"checkpoints= and memory_budget= apply to grad='revolve' only, not grad={grad!r}")
        return
    if checkpoints is not None and memory_budget is not None:
        raise ValueError("give checkpoints= or memory_budget=, not both")
    if checkpoints is not None:
        _check_revolve_args(steps, checkpoints)
    if memory_budget is not None:
        _check_budget(memory_budget)


def check_solve_options(steps: object, grad: object, checkpoints: object, memory_budget: object) -> tuple[int, str]:
    """Validated (steps, grad), or a clear error for any option that does not fit."""
    steps = check_steps(steps)
    grad = check_grad(grad)
    check_revolve_options(grad, steps, checkpoints, memory_budget)
    return steps, grad


def _state_bytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state)


def solve(
    func: StateFunc,
    state: State,
    *,
    t0: Time,
    t1: Time,
    steps: int,
    method: str | Tableau,
    grad: str,
    checkpoints: int | None = None,
    memory_budget: int | None = None,
    return_all: bool = False,
    params: Iterable[Tensor] = (),
    owner: Callable | None = None,
) -> State:
    """Solve for a state made of several tensors; `func(t, state)` returns a tuple.
    `owner` is the user's callable (default func), whose modules' state a recompute replays."""
    tableau = get_tableau(method)
    steps = check_steps(steps)
    t0, t1 = check_time(t0, "t0"), check_time(t1, "t1")
    problem = Problem(func, tableau, t0, (t1 - t0) / steps, steps, bool(return_all))
    return solve_problem(problem, state, grad, checkpoints, memory_budget, params, owner or func)


def solve_problem(
    problem: Problem,
    state: State,
    grad: str,
    checkpoints: int | None,
    memory_budget: int | None,
    params: Iterable[Tensor],
    owner: Callable,
) -> State:
    """Run `problem` from `state` with the gradient mode `grad`; `owner` is the user's
    callable, whose modules' state a recompute replays."""
    _, grad = check_solve_options(problem.steps, grad, checkpoints, memory_budget)
    named = _check_params(params)
    if grad == "direct" or not torch.is_grad_enabled():
        return problem.solve(state)
    if grad == "revolve" and checkpoints is None:
        checkpoints = (
            default_checkpoints(problem.steps)
            if memory_budget is None
            else checkpoints_for_budget(memory_budget, _state_bytes(state), problem.steps)
        )
    return _solve_with_recompute(problem, state, grad, checkpoints, named, owner)


def _check_params(params: Iterable[Tensor]) -> list[Tensor]:
    named = list(params)
    for t in named:
        if not isinstance(t, Tensor):
            raise TypeError(f"params must hold tensors, got {type(t).__name__}")
    return named


def _outside_compile(fn):
    """Run `fn` eagerly when torch.compile traces its caller (a graph break).

    torch.compiler.disable would do this as a decorator, but it imports torch._dynamo
    at import time, which users who never compile should not pay for (and with which
    DistributedDataParallel's gloo teardown can deadlock on torch 2.13).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling():
            return torch.compiler.disable(fn)(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


@_outside_compile
def _solve_with_recompute(
    problem: Problem,
    state: State,
    grad: str,
    checkpoints: int | None,
    named: Sequence[Tensor],
    owner: Callable,
) -> State:
    # Captured before the first evaluation, which the backward replays.
    forward_state = ForwardState(state)
    if grad == "adjoint":
        return solve_adjoint(problem, state, forward_state, named)
    return solve_checkpointed(problem, state, forward_state, checkpoints if grad == "revolve" else None, owner)


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
    t0: float = 0.0,
    t1: float = 1.0,
    *,
    steps: int,
    method: str | Tableau = "rk4",
    grad: str = "anode",
    checkpoints: int | None = None,
    memory_budget: int | None = None,
    return_all: bool = False,
    params: Iterable[Tensor] = (),
) -> Tensor:
    """Integrate ``dy/dt = func(t, y)`` from t0 to t1 in `steps` equal steps; return y(t1).

    func(t, y) takes a time and a tensor and returns a tensor of y's shape. The time is
    a Python float, or a 0-d tensor when t0 or t1 is a tensor that requires grad: the
    gradient with respect to the integration times is then the exact one of the
    discrete solve (step h = (t1 - t0) / steps), in every mode but adjoint.
    With ``return_all=True`` the result stacks the states at every step (steps + 1 of them).

    grad chooses how the gradient is computed:

    - ``"direct"``: autograd through every step (memory grows with steps x stages);
    - ``"anode"``: keep only y0, recompute the steps in backward; exact;
    - ``"revolve"``: keep at most ``checkpoints`` states inside the solve (or as many as
      ``memory_budget`` bytes hold; default ceil(log2 steps)), recompute optimally; exact;
    - ``"adjoint"``: solve the adjoint ODE backwards in time (Chen et al. 2018); needs only
      y(t1) but is NOT the exact gradient of the discrete solve.

    direct, anode and revolve give the same gradients for any func: the backward runs
    the graph autograd recorded in the forward, whose saved tensors anode and revolve
    recompute (func must then compute the same thing when re-run: random numbers and
    module buffers are replayed, Python state func changes itself is not). Tensor and
    gradient-accumulator hooks fire as under direct. adjoint finds, from one recorded
    forward, every leaf tensor requiring grad that func uses; a tensor computed outside
    the solve that requires grad must be named in ``params`` (ignored by other modes).

    Raises:
        TypeError, ValueError: for a func, y0, time or option that is not as described.
        RuntimeError: from backward, when anode or revolve find that the recompute did
            not repeat the forward or that a tensor func used was modified in place.
    """
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
    if not isinstance(y0, Tensor):
        raise TypeError(f"y0 must be a tensor, got {type(y0).__name__}")
    if y0.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"y0 has dtype {y0.dtype}; expected float16, bfloat16, float32 or float64")
    if y0.is_nested or y0.layout != torch.strided:
        raise ValueError(f"y0 is a {'nested' if y0.is_nested else y0.layout} tensor; expected a dense (strided) tensor")
    (out,) = solve(
        _OnTensor(func),
        (y0,),
        t0=t0,
        t1=t1,
        steps=steps,
        method=method,
        grad=grad,
        checkpoints=checkpoints,
        memory_budget=memory_budget,
        return_all=return_all,
        params=params,
        owner=func,
    )
    return out
