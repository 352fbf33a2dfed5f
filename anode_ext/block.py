"""ODEBlock: an ODE solve as a layer of a network."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .adaptive import Adaptive
from .modes import GradMode, as_grad_mode
from .odeint import adaptive_times, check_steps, check_time, odeint
from .methods import Method, as_method, base_tableau, method_label
from .reversible import Reversible
from .tableau import Tableau

__all__ = ["FixedStepBlock", "ODEBlock"]


def block_time(value: float | Tensor, name: str) -> float | Tensor:
    """A block's t0 or t1: a float, or the tensor itself (an nn.Parameter makes it
    learnable), checked as odeint checks it."""
    check_time(value, name)
    return value if isinstance(value, Tensor) else float(value)


def format_time(value: float | Tensor) -> str:
    return f"{float(value.detach()):g}" if isinstance(value, Tensor) else f"{value:g}"


class FixedStepBlock(nn.Module):
    """What ODEBlock and CoupledODEBlock share: func, the times, steps, method and mode.

    ``steps``, ``method`` (a name, Tableau or Reversible; read back as the Tableau or
    Reversible) and ``grad`` (a mode or its name) may be reassigned, and are checked when
    they are. ``tableau`` is the tableau of the method's steps (a reversible method's base)."""

    def __init__(self, func: Callable, t0: float | Tensor, t1: float | Tensor, steps: int,
                 method: str | Tableau | Reversible, grad: str | GradMode) -> None:
        super().__init__()
        self.func = func
        self.t0 = block_time(t0, "t0")
        self.t1 = block_time(t1, "t1")
        self.steps = check_steps(steps)
        self.method = method
        self.grad = grad

    @property
    def steps(self) -> int:
        """The number of steps, Nt >= 1."""
        return self._steps

    @steps.setter
    def steps(self, value: int) -> None:
        steps = check_steps(value)
        if steps != 1 and isinstance(getattr(self, "_method", None), Adaptive):
            raise ValueError(f"{self._method!r} chooses its own steps; steps={steps} does not apply to it")
        self._steps = steps

    @property
    def method(self) -> Method:
        """The method the block steps with: a Tableau, a Reversible or an Adaptive (set it by
        name too). An adaptive method needs steps=1 (unused) and times that are not learnable."""
        return self._method

    @method.setter
    def method(self, value: str | Tableau | Reversible | Adaptive) -> None:
        method = as_method(value)
        if isinstance(method, Adaptive):
            if self._steps != 1:
                raise ValueError(f"{method!r} chooses its own steps; steps={self._steps} does not apply to it "
                                 "(leave steps at 1)")
            adaptive_times(self.t0, self.t1)
        self._method = method

    @property
    def tableau(self) -> Tableau:
        """The tableau of the method's steps (a reversible method's base tableau)."""
        return base_tableau(self._method)

    @property
    def grad(self) -> GradMode:
        """The gradient mode (see anode_ext.modes)."""
        return self._grad

    @grad.setter
    def grad(self, value: str | GradMode) -> None:
        self._grad = as_grad_mode(value)

    def extra_repr(self) -> str:
        return solve_repr(self.t0, self.t1, self.steps, self.method, self.grad, self.func)


class ODEBlock(FixedStepBlock):
    """``x -> y(t1)`` where ``dy/dt = func(t, y)``, ``y(t0) = x``, solved in `steps` fixed steps.

    With ``method="euler", steps=1, t1=1`` it computes the residual block ``x + func(0, x)``.

    Args:
        func: ``func(t, y)`` returning dy/dt of y's shape; an nn.Module is registered.
        t0, t1: the integration times, floats or tensors (an ``nn.Parameter`` is
            registered, giving a learnable integration time).
        steps, method, grad: as for :func:`anode_ext.odeint`; grad is a mode of
            ``anode_ext.modes`` or its name.

    Input and output: a tensor of any shape func accepts; the output has the input's.

    Raises:
        TypeError, ValueError: for a func, time or option that is not as described.
    """

    def __init__(
        self,
        func: Callable[[float, Tensor], Tensor],
        *,
        t0: float | Tensor = 0.0,
        t1: float | Tensor = 1.0,
        steps: int = 1,
        method: str | Tableau | Reversible = "rk4",
        grad: str | GradMode = "anode",
    ) -> None:
        if not callable(func):
            raise TypeError(f"func must be callable as func(t, x), got {type(func).__name__}")
        super().__init__(func, t0, t1, steps, method, grad)

    def forward(self, x: Tensor) -> Tensor:
        adaptive = isinstance(self.method, Adaptive)
        return odeint(self.func, x, self.t0, self.t1, steps=None if adaptive else self.steps, method=self.method,
                      grad=self.grad)


def solve_repr(t0: float | Tensor, t1: float | Tensor, steps: int, method: Method, grad: GradMode,
               func: object) -> str:
    """The extra_repr of a block: its times, steps, method, mode and, if not a module, func."""
    parts = [f"t0={format_time(t0)}", f"t1={format_time(t1)}", f"steps={steps}", f"method={method_label(method)}",
             f"grad={grad!r}"]
    if isinstance(method, Adaptive):
        parts.remove(f"steps={steps}")
    if not isinstance(func, nn.Module):
        parts.append(f"func={getattr(func, '__qualname__', repr(func))}")
    return ", ".join(parts)
