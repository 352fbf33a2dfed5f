"""The gradient modes: objects that say how the gradient of a solve is computed.

Each mode carries and checks its own options once, when it is made, and solves a
Problem when asked. Anode and Revolve share one recompute engine (checkpointed.py)
and differ only in how many states they keep; Direct and Adjoint need none.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import Tensor

from ..adaptive import AdaptiveProblem
from ..reversible import ReversibleProblem
from ..revolve import _check_budget, _check_checkpoints, checkpoints_for_budget
from ..solver import Problem, State
from .adaptive_recompute import solve_adaptive_recompute
from .adjoint import solve_adjoint, solve_adjoint_adaptive
from .checkpointed import solve_checkpointed
from .reconstruct import solve_reconstructing
from .replay import ForwardState

__all__ = [
    "GRAD_MODES", "Adjoint", "Anode", "Direct", "GradMode", "Recompute", "ReversibleGrad", "Revolve", "as_grad_mode",
    "grad_mode_named",
]


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


@dataclass(frozen=True, repr=False)
class GradMode:
    """How the gradient of a solve is computed; pass one as ``grad=`` to odeint, the
    blocks or models.create. Modes are immutable (frozen dataclasses) and may be shared
    between blocks; two modes with the same options are equal."""

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    """Whether the gradient is exactly that of the discrete solve."""

    def solve(self, problem: Problem, state: State, owner: Callable) -> State:
        """Run `problem` from `state` (a tuple of tensors) and return its result, with this
        mode's gradient. `owner` is the user's callable, whose modules a recompute replays.
        With gradients disabled every mode just runs the steps.

        Raises:
            ValueError: for a problem the mode cannot differentiate (check_problem), also
                with gradients disabled, so that a configuration fails where it is made.
        """
        self.check_problem(problem)
        if not torch.is_grad_enabled():
            return problem.solve(state)
        return self._solve(problem, state, owner)

    def check_problem(self, problem: Problem | ReversibleProblem) -> None:
        """Raise a ValueError when this mode cannot differentiate `problem`'s method."""

    def _solve(self, problem: Problem, state: State, owner: Callable) -> State:
        raise NotImplementedError(f"{type(self).__name__} is a GradMode without a _solve of its own")

    def __repr__(self) -> str:
        given = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                          if getattr(self, f.name) != f.default)
        return f"{type(self).__name__}({given})"


@dataclass(frozen=True, repr=False)
class Direct(GradMode):
    """Autograd through every step: memory grows with steps x stages (O(L·Nt) for a network)."""

    name: ClassVar[str] = "direct"

    def _solve(self, problem: Problem, state: State, owner: Callable) -> State:
        return problem.solve(state)


@dataclass(frozen=True, repr=False)
class Recompute(GradMode):
    """Modes that keep few states in the forward and recompute the rest in backward.

    The forward records the graph that Direct records, but its saved tensors are dropped
    and recomputed when the backward needs them, so the gradient is Direct's for any func
    (Gholami et al., "ANODE", IJCAI 2019, section 3). Random numbers, autocast and module
    buffers are replayed; a recompute that does not repeat the forward is an error.
    """

    def checkpoints_for(self, problem: Problem, state: State) -> int | None:
        """States kept inside the solve besides its input; None keeps only the input."""
        raise NotImplementedError(f"{type(self).__name__} is a Recompute mode without a checkpoints_for of its own")

    def _solve(self, problem: Problem, state: State, owner: Callable) -> State:
        if isinstance(problem, AdaptiveProblem):
            return _solve_adaptive_recompute(self, problem, state, owner)
        return _solve_recompute(problem, state, self.checkpoints_for(problem, state), owner)


@_outside_compile
def _solve_recompute(problem: Problem, state: State, checkpoints: int | None, owner: Callable) -> State:
    # Captured before the first evaluation, which the backward replays.
    return solve_checkpointed(problem, state, ForwardState(state), checkpoints, owner)


@_outside_compile
def _solve_adaptive_recompute(mode: Recompute, problem: AdaptiveProblem, state: State, owner: Callable) -> State:
    checkpoints_for = None if isinstance(mode, Anode) else mode.checkpoints_for
    return solve_adaptive_recompute(problem, state, ForwardState(state), owner, checkpoints_for)


@dataclass(frozen=True, repr=False)
class Anode(Recompute):
    """ANODE: keep only the block input; the backward recomputes each step once from it.
    Memory O(L) + O(Nt) for a network of L blocks; one extra forward of the block."""

    name: ClassVar[str] = "anode"

    def checkpoints_for(self, problem: Problem, state: State) -> None:
        return None


def default_checkpoints(steps: int) -> int:
    """The checkpoints Revolve uses when given neither option: ceil(log2 steps), at least 1."""
    return max(1, math.ceil(math.log2(steps))) if steps > 1 else 1


@dataclass(frozen=True, repr=False)
class Revolve(Recompute):
    """Binomial checkpointing (Griewank & Walther, "Algorithm 799: revolve", ACM TOMS 2000):
    keep at most `checkpoints` states inside the solve and recompute the others with the
    fewest step evaluations possible (see anode_ext.revolve).

    Args:
        checkpoints: states kept besides the input, an integer >= 1.
        memory_budget: bytes the kept states may take; the checkpoints that fit, found
            per solve from the size of its state.
        Give at most one; with neither, ceil(log2 steps).

    With an adaptive method the number of steps is known only once the forward has run:
    the forward then keeps the input alone, and the backward first steps from it to the
    states the schedule keeps (anode_ext.modes.adaptive_recompute).

    Raises:
        ValueError: for a checkpoint count or budget that is not a non-negative integer
            (checkpoints >= 1), or for both options at once; and from the first solve
            that records a graph, for a memory_budget that holds no state of that solve.
    """

    name: ClassVar[str] = "revolve"
    checkpoints: int | None = None
    memory_budget: int | None = None

    def __post_init__(self) -> None:
        if self.checkpoints is not None and self.memory_budget is not None:
            raise ValueError("give Revolve checkpoints= or memory_budget=, not both")
        if self.checkpoints is not None:
            _check_checkpoints(self.checkpoints)
            object.__setattr__(self, "checkpoints", int(self.checkpoints))
        if self.memory_budget is not None:
            _check_budget(self.memory_budget)
            object.__setattr__(self, "memory_budget", int(self.memory_budget))

    def checkpoints_for(self, problem: Problem, state: State) -> int:
        if self.checkpoints is not None:
            return self.checkpoints
        if self.memory_budget is not None:
            state_bytes = sum(t.numel() * t.element_size() for t in state)
            return checkpoints_for_budget(self.memory_budget, state_bytes, problem.steps)
        return default_checkpoints(problem.steps)


@dataclass(frozen=True, repr=False, eq=False)
class Adjoint(GradMode):
    """The continuous adjoint (Chen et al., "Neural Ordinary Differential Equations",
    NeurIPS 2018): solve the adjoint ODE backwards in time from y(t1). Memory O(1) in the
    steps, but NOT the gradient of the discrete solve, and unstable for some funcs
    (Gholami et al. 2019, section 2); no gradient with respect to t0 or t1.

    Args:
        params: tensors computed outside the solve that func uses and that require grad
            (leaf tensors such as parameters are found without it).

    Raises:
        TypeError: when params holds anything but tensors.
    """

    name: ClassVar[str] = "adjoint"
    exact: ClassVar[bool] = False
    params: tuple[Tensor, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.params, Tensor) or not isinstance(self.params, Iterable):
            raise TypeError(
                f"Adjoint params must be a list or tuple of tensors, got {type(self.params).__name__}"
                + (": write params=[t]" if isinstance(self.params, Tensor) else "")
            )
        params = tuple(self.params)
        for t in params:
            if not isinstance(t, Tensor):
                raise TypeError(f"Adjoint params must hold tensors, got {type(t).__name__}")
        object.__setattr__(self, "params", params)

    def check_problem(self, problem: Problem | ReversibleProblem) -> None:
        if isinstance(problem, ReversibleProblem):
            raise ValueError(
                "grad='adjoint' solves the continuous adjoint ODE, which a reversible method does not step; "
                "use grad='reversible' (exact, memory constant in the steps) or a method that is not reversible"
            )

    def _solve(self, problem: Problem, state: State, owner: Callable) -> State:
        if isinstance(problem, AdaptiveProblem):
            return _solve_adjoint_adaptive(problem, state, self.params)
        return _solve_adjoint(problem, state, self.params)

    def __repr__(self) -> str:
        return f"Adjoint(params=<{len(self.params)} tensors>)" if self.params else "Adjoint()"

    # Tensors compare elementwise; two modes are the same when they name the same tensors.
    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and len(other.params) == len(self.params) and all(
            a is b for a, b in zip(other.params, self.params))

    def __hash__(self) -> int:
        return hash((type(self), tuple(id(p) for p in self.params)))


@_outside_compile
def _solve_adjoint(problem: Problem, state: State, params: tuple[Tensor, ...]) -> State:
    return solve_adjoint(problem, state, ForwardState(state), params)


@_outside_compile
def _solve_adjoint_adaptive(problem: AdaptiveProblem, state: State, params: tuple[Tensor, ...]) -> State:
    return solve_adjoint_adaptive(problem, state, ForwardState(state), params)


@dataclass(frozen=True, repr=False)
class ReversibleGrad(GradMode):
    """The gradient of a reversible method's solve with memory constant in the steps
    (McCallum & Foster, "Efficient, Accurate and Stable Gradients for Neural ODEs",
    arXiv:2410.11648, 2024): the forward keeps only the final pair of states and the
    backward computes each earlier pair back by the method's inverse, recording each step
    again from it (anode_ext.modes.reconstruct). The gradient is Direct's on the same
    method to the rounding of the reconstruction. Needs a reversible method
    (``method="reversible_rk4"`` or ``anode_ext.Reversible(...)``).

    The backward checks each reconstructed state against the forward's sum and L2 norm,
    kept per step: it raises when they differ by more than rtol times the norm of the
    states the inverse step combined (anode_ext.modes.reconstruct.reconstruction_error).
    That catches an inverse whose rounding grew too large (a coupling well below 1,
    expanding dynamics, low precision) and a func that computes differently in backward
    when the difference moves a state by more than the tolerance. A smaller difference
    goes unseen, which Anode's bit-for-bit check would refuse: func must compute the same
    in backward (same rules as Anode's).

    Args:
        rtol: the tolerance of that check; default sqrt(eps) of the state's dtype
            (1.5e-8 in float64, 3.5e-4 in float32). ``float("inf")`` turns it off.

    Raises:
        ValueError: for an rtol that is not a positive real number, and from a solve
            whose method is not reversible.
        RuntimeError: from backward, when a reconstructed state is further than rtol
            from the forward's.
    """

    name: ClassVar[str] = "reversible"
    rtol: float | None = None

    def __post_init__(self) -> None:
        if self.rtol is not None:
            if isinstance(self.rtol, bool) or not isinstance(self.rtol, numbers.Real) or not self.rtol > 0:
                raise ValueError(f"ReversibleGrad rtol must be a positive real number (or None), got {self.rtol!r}")
            object.__setattr__(self, "rtol", float(self.rtol))

    def check_problem(self, problem: Problem | ReversibleProblem) -> None:
        if not isinstance(problem, ReversibleProblem):
            raise ValueError(
                "grad='reversible' needs a reversible method, such as method='reversible_rk4' or "
                "anode_ext.Reversible('rk4', coupling=0.999); got the method "
                f"{(problem.method if isinstance(problem, AdaptiveProblem) else problem.tableau).name!r}"
            )

    def _solve(self, problem: ReversibleProblem, state: State, owner: Callable) -> State:
        return _solve_reconstructing(problem, state, owner, self.rtol)


@_outside_compile
def _solve_reconstructing(problem: ReversibleProblem, state: State, owner: Callable, rtol: float | None) -> State:
    return solve_reconstructing(problem, state, ForwardState(state), owner, rtol)


GRAD_MODES: dict[str, type[GradMode]] = {
    m.name: m for m in (Direct, Anode, Revolve, Adjoint, ReversibleGrad)
}
"""The gradient modes by name; a name given as ``grad=`` means the mode with its defaults."""


def as_grad_mode(grad: object) -> GradMode:
    """`grad` as a mode object: a GradMode as it is, a name as that mode with its defaults.

    Raises:
        ValueError: for anything else, listing the modes.
    """
    if isinstance(grad, GradMode):
        if type(grad) in (GradMode, Recompute):
            raise ValueError(f"grad={type(grad).__name__}() is an abstract base; pass a mode such as Anode() or Revolve()")
        return grad
    if isinstance(grad, type) and issubclass(grad, GradMode):
        raise ValueError(f"grad={grad.__name__} is a class; pass an instance, e.g. grad={grad.__name__}()")
    if isinstance(grad, str) and grad in GRAD_MODES:
        return GRAD_MODES[grad]()
    raise ValueError(
        f"unknown grad={grad!r}; expected a mode object (anode_ext.Direct(), Anode(), Revolve(checkpoints=...), "
        f"Adjoint()) or one of the names {', '.join(GRAD_MODES)}"
    )


def grad_mode_named(name: str, **options: object) -> GradMode:
    """The mode called `name` with those `options` that are not None: how command lines and
    saved configurations, which hold plain values, spell a mode.

    Raises:
        ValueError: for an unknown name, or an option the mode does not take.
    """
    given = {key: value for key, value in options.items() if value is not None}
    if not isinstance(name, str) or name not in GRAD_MODES:
        mode = as_grad_mode(name)
        if given:
            raise ValueError(f"options {', '.join(sorted(given))} go with a mode's name, not with the mode {mode!r}")
        return mode
    mode = GRAD_MODES[name]
    unknown = sorted(set(given) - {f.name for f in fields(mode)})
    if unknown:
        takes = ", ".join(f.name for f in fields(mode)) or "no options"
        raise ValueError(f"grad={name!r} takes no option {', '.join(unknown)}; it takes {takes}")
    return mode(**given)
