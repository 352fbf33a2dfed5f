"""The ways a benchmark can integrate an ODE block: anode_ext's gradient modes and, when
installed, torchdiffeq's odeint and odeint_adjoint on the same fixed grid."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..modes import grad_mode_named
from ..odeint import odeint

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
        # The adjoint pass solves over the reversed interval: build the grid from t.
        options = {"grid_constructor": lambda f, y0, t: torch.linspace(t[0], t[-1], steps + 1).to(t)}
        solve: Callable = torchdiffeq.odeint_adjoint if self.grad == "adjoint" else torchdiffeq.odeint
        t = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
        return solve(func, x, t, method=TORCHDIFFEQ_METHODS[method], options=options)[-1]


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
