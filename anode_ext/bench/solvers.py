"""The ways a benchmark can integrate an ODE block: anode_ext's gradient modes and, when
installed, torchdiffeq's odeint and odeint_adjoint on the same fixed grid."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..modes import GradMode, grad_mode_named
from ..odeint import odeint
from ..solver import Problem, State

try:
    import torchdiffeq
except ImportError:
    torchdiffeq = None

# torchdiffeq's fixed-grid "rk4" is the 3/8 rule; its exact reference is our rk4_38.
TORCHDIFFEQ_METHODS = {"euler": "euler", "midpoint": "midpoint", "rk4": "rk4"}
TORCHDIFFEQ_TABLEAU = {"euler": "euler", "midpoint": "midpoint", "rk4": "rk4_38"}


@dataclass(frozen=True)
class Solver:
    """One way to integrate: a library, a gradient mode and its options."""

    name: str
    library: str
    grad: str
    checkpoints: int | None = None

    def exact_method(self, method: str) -> str:
        """The anode_ext method whose direct gradient is this solver's exact discrete gradient."""
        return TORCHDIFFEQ_TABLEAU[method] if self.library == "torchdiffeq" else method

    def integrate(self, func: nn.Module, x: Tensor, method: str, steps: int) -> Tensor:
        if self.library == "anode_ext":
            return odeint(func, x, 0.0, 1.0, steps=steps, method=method, grad=grad_mode_named(self.grad, checkpoints=self.checkpoints))
        return torchdiffeq_solve(func, x, 0.0, 1.0, method, steps, adjoint=self.grad == "adjoint")


def torchdiffeq_solve(func: nn.Module, x: Tensor, t0: float, t1: float, method: str, steps: int,
                      adjoint: bool) -> Tensor:
    """y(t1) by torchdiffeq.odeint (or odeint_adjoint) on the grid of `steps` equal steps."""
    # The adjoint pass solves over the reversed interval: build the grid from t.
    options = {"grid_constructor": lambda f, y0, t: torch.linspace(t[0], t[-1], steps + 1).to(t)}
    solve: Callable = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
    t = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
    return solve(func, x, t, method=TORCHDIFFEQ_METHODS[method], options=options)[-1]


@dataclass(frozen=True, repr=False)
class TorchdiffeqAdjoint(GradMode):
    """A block integrated by torchdiffeq.odeint_adjoint on the block's own fixed grid, as a
    gradient mode (``block.grad = TorchdiffeqAdjoint()``): the baseline the training
    section compares with. Methods euler, midpoint and rk4 (torchdiffeq's is the 3/8
    rule); func must be an nn.Module, whose parameters the adjoint differentiates.
    Without gradients the block runs its own steps, as every mode does."""

    name: ClassVar[str] = "torchdiffeq_adjoint"
    exact: ClassVar[bool] = False

    def _solve(self, problem: Problem, state: State, owner: Callable) -> State:
        if torchdiffeq is None:
            raise RuntimeError("TorchdiffeqAdjoint needs torchdiffeq: pip install torchdiffeq")
        method = problem.tableau.name
        if method not in TORCHDIFFEQ_METHODS or not isinstance(owner, nn.Module) or len(state) != 1:
            raise ValueError(f"TorchdiffeqAdjoint takes a one-tensor state, an nn.Module func and one of "
                             f"{', '.join(TORCHDIFFEQ_METHODS)}; got {method!r}")
        t0 = float(problem.t0)
        return (torchdiffeq_solve(owner, state[0], t0, t0 + problem.steps * float(problem.h), method,
                                  problem.steps, adjoint=True),)


def solvers(revolve_checkpoints: tuple[int, ...] = (1, 2)) -> list[Solver]:
    """Every gradient mode of anode_ext, revolve with each of `revolve_checkpoints`, and
    torchdiffeq's two entry points when torchdiffeq is installed."""
    found = [Solver("direct", "anode_ext", "direct"), Solver("anode", "anode_ext", "anode")]
    found += [Solver(f"revolve c={c}", "anode_ext", "revolve", c) for c in revolve_checkpoints]
    found.append(Solver("adjoint", "anode_ext", "adjoint"))
    if torchdiffeq is not None:
        found += [
            Solver("torchdiffeq odeint", "torchdiffeq", "direct"),
            Solver("torchdiffeq odeint_adjoint", "torchdiffeq", "adjoint"),
        ]
    return found


def torchdiffeq_version() -> str | None:
    """The installed torchdiffeq version, or None."""
    return None if torchdiffeq is None else getattr(torchdiffeq, "__version__", "unknown")
