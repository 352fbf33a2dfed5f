"""ODEBlock: an ODE solve as a layer of a network."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .odeint import check_solve_options, odeint
from .tableau import Tableau, get_tableau

__all__ = ["ODEBlock"]


class ODEBlock(nn.Module):
    """``x -> y(t1)`` where ``dy/dt = func(t, y)``, ``y(t0) = x``, solved in `steps` fixed steps.

    With ``method="euler", steps=1, t1=1`` it computes the residual block ``x + func(0, x)``.
    See :func:`anode_ext.odeint` for `grad` and the checkpointing options.
    """

    def __init__(
        self,
        func: Callable[[float, Tensor], Tensor],
        t1: float = 1.0,
        steps: int = 1,
        method: str | Tableau = "rk4",
        grad: str = "anode",
        *,
        t0: float = 0.0,
        checkpoints: int | None = None,
        memory_budget: int | None = None,
    ) -> None:
        super().__init__()
        if not callable(func):
            raise TypeError(f"func must be callable as func(t, x), got {type(func).__name__}")
        self.func = func
        self.tableau = get_tableau(method)
        self.steps, self.grad = check_solve_options(steps, grad, checkpoints, memory_budget)
        self.t0 = float(t0)
        self.t1 = float(t1)
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
            f"t0={self.t0:g}",
            f"t1={self.t1:g}",
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
