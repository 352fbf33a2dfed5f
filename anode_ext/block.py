"""ODEBlock: an ODE solve as a layer of a network."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .odeint import check_solve_options, check_time, odeint
from .tableau import Tableau, get_tableau

__all__ = ["ODEBlock"]


def block_time(value: float | Tensor, name: str) -> float | Tensor:
    """A block's t0 or t1: a float, or the tensor itself (an nn.Parameter makes it
    learnable), checked as odeint checks it."""
    check_time(value, name)
    return value if isinstance(value, Tensor) else float(value)


def format_time(value: float | Tensor) -> str:
    return f"{float(value.detach()):g}" if isinstance(value, Tensor) else f"{value:g}"


class ODEBlock(nn.Module):
    """``x -> y(t1)`` where ``dy/dt = func(t, y)``, ``y(t0) = x``, solved in `steps` fixed steps.

    With ``method="euler", steps=1, t1=1`` it computes the residual block ``x + func(0, x)``.
    t0 and t1 may be tensors; an ``nn.Parameter`` is registered, giving a learnable
    integration time. See :func:`anode_ext.odeint` for `grad` and the checkpointing options.
    """

    def __init__(
        self,
        func: Callable[[float, Tensor], Tensor],
        t1: float | Tensor = 1.0,
        steps: int = 1,
        method: str | Tableau = "rk4",
        grad: str = "anode",
        *,
        t0: float | Tensor = 0.0,
        checkpoints: int | None = None,
        memory_budget: int | None = None,
    ) -> None:
        super().__init__()
        if not callable(func):
            raise TypeError(f"func must be callable as func(t, x), got {type(func).__name__}")
        self.func = func
        self.tableau = get_tableau(method)
        self.steps, self.grad = check_solve_options(steps, grad, checkpoints, memory_budget)
        self.t0 = block_time(t0, "t0")
        self.t1 = block_time(t1, "t1")
        self.checkpoints = checkpoints
        self.memory_budget = memory_budget

    def forward(self, x: Tensor) -> Tensor:
        return odeint(
            self.func,
            x,
            self.t0,
            self.t1,
            steps=self.steps,
            method=self.tableau,
            grad=self.grad,
            checkpoints=self.checkpoints,
            memory_budget=self.memory_budget,
        )

    def extra_repr(self) -> str:
        parts = [
            f"t0={format_time(self.t0)}",
            f"t1={format_time(self.t1)}",
            f"steps={self.steps}",
            f"method={self.tableau.name}",
            f"grad={self.grad}",
        ]
        if self.checkpoints is not None:
            parts.append(f"checkpoints={self.checkpoints}")
        if self.memory_budget is not None:
            parts.append(f"memory_budget={self.memory_budget}")
        if not isinstance(self.func, nn.Module):
            parts.append(f"func={getattr(self.func, '__qualname__', repr(self.func))}")
        return ", ".join(parts)
