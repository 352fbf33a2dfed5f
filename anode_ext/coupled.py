"""ANODEv2: ODE blocks whose weights evolve in time with the state.

The block solves the coupled system

    dz/dt = f(z, theta(t)),   dtheta/dt = q(theta),   z(0) = x,   theta(0) = theta0,

with one tableau and one step size for both, and returns z(t1). theta0 are weights of
f (by default every convolution and linear weight); q is ``"rda"`` (the fused
reaction–diffusion–advection dynamics of anode_ext.rda), ``"none"`` (theta stays
theta0: an ordinary ODE block) or any module ``q(t, thetas) -> dthetas``. The
gradients with respect to x, theta0, the parameters of q and the other parameters of
f are those of the discrete coupled solve, in every gradient mode but "adjoint".
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .adaptive import Adaptive
from .block import FixedStepBlock
from .modes import GradMode
from .odeint import adaptive_times, fixed_step_problem, odeint, solve_adaptive, solve_problem
from .rda import MAX_STAGES, RDA, _reaction_code
from .reversible import Reversible, ReversibleProblem
from .solver import State, Supplied
from .tableau import Tableau

__all__ = ["CoupledODEBlock", "evolving_weights"]


def evolving_weights(func: nn.Module) -> list[str]:
    """Names of the weights that evolve by default: those of every nn.Conv1d, nn.Conv2d and
    nn.Linear layer (not transposed convolutions), each once under the name
    ``named_parameters()`` gives it (a weight tied between layers evolves once).

    A parametrized weight (torch.nn.utils.parametrize, weight_norm, spectral_norm) is not a
    parameter of its layer and is left out; name the parameter it is computed from (say
    ``"conv.parametrizations.weight.original"``) in the block's ``weights`` to evolve it."""
    canonical = {id(p): name for name, p in func.named_parameters()}
    names: list[str] = []
    for module in func.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and module.weight is not None:
            name = canonical.get(id(module.weight))
            if name is not None and name not in names:
                names.append(name)
    return names


def _holders(func: nn.Module, params: Sequence[Tensor]) -> list[list[tuple[nn.Module, str]]]:
    """For each parameter, every (module, name) of func that holds it: a weight tied
    between layers is held by each of them."""
    index = {id(p): i for i, p in enumerate(params)}
    holders: list[list[tuple[nn.Module, str]]] = [[] for _ in params]
    for module in func.modules():
        for name, p in module._parameters.items():
            if p is not None and id(p) in index:
                holders[index[id(p)]].append((module, name))
    return holders


class _JointDynamics:
    """(z, theta...) -> (f(t, z; theta), q(t, theta)), with f's weights replaced by theta.

    The weights are swapped into the modules that hold them (found once per forward, not
    at every evaluation as torch.func.functional_call would: its search of the module tree
    cost 4 % of a coupled ODE-ResNet's training step) and the originals put back after
    the call, whatever it raises.
    """

    def __init__(self, block: "CoupledODEBlock", params: Sequence[Tensor]) -> None:
        self.block = block
        self.holders = _holders(block.func, params)

    def f(self, t: float, z: Tensor, thetas: Sequence[Tensor]) -> Tensor:
        swapped: list[tuple[dict, str, Tensor]] = []
        try:
            for holders, theta in zip(self.holders, thetas, strict=True):
                for module, name in holders:
                    swapped.append((module._parameters, name, module._parameters[name]))
                    module._parameters[name] = theta
            return self.block.func(t, z)
        finally:
            for parameters, name, original in reversed(swapped):
                parameters[name] = original

    def __call__(self, t: float, state: State) -> tuple[Tensor, ...]:
        z, thetas = state[0], state[1:]
        dthetas = self.block.q(t, thetas)
        if isinstance(dthetas, Tensor):
            raise TypeError("q(t, thetas) must return a tuple or list with one tensor per evolving weight, got a tensor")
        return (self.f(t, z, thetas), *dthetas)


class _FusedWeights:
    """The Supply of a coupled problem with RDA dynamics: every weight's stages of a step
    come from one pass of the fused kernel per weight, before f is evaluated."""

    def __init__(self, joint: _JointDynamics) -> None:
        self.joint = joint
        # The fused kernels are deterministic (also across thread counts) and read only the
        # weights and the RDA coefficients, whose in-place changes the recompute refuses.
        self.repeatable = len(joint.block.weight_names)

    def stages(self, t: float, h: float, state: State) -> Supplied:
        block = self.joint.block
        fused = block.q.rk_step(state[1:], block.tableau, h)
        later = [tuple(steps[i] for steps in fused) for i in range(block.tableau.stages - 1)]
        return Supplied(stages=[state[1:], *later], result=tuple(steps[-1] for steps in fused))

    def derivative(self, t: float, state: State) -> tuple[Tensor]:
        return (self.joint.f(t, state[0], state[1:]),)


class CoupledODEBlock(FixedStepBlock):
    """``x -> z(t1)`` of the coupled system above (Zhang et al., "ANODEV2", NeurIPS 2019,
    section 3); see the module docstring.

    Args:
        func: the module f, called as ``func(t, z)``.
        t0, t1, steps, method, grad: as for ODEBlock (t0 and t1 may be tensors, an
            nn.Parameter for a learnable integration time).
        q: ``"rda"``, ``"none"`` or a module ``q(t, thetas)`` returning one tensor per weight.
        weights: names of the parameters of func that evolve (default: every Conv and
            Linear weight, see ``evolving_weights``).
        reaction: rho of the RDA dynamics, ``"tanh"`` or ``"relu"``.

    Input and output: a tensor of any shape func accepts; the output has the input's.

    Raises:
        TypeError, ValueError: for a func, weight name, q or option that is not as described.
    """

    def __init__(
        self,
        func: nn.Module,
        *,
        t0: float | Tensor = 0.0,
        t1: float | Tensor = 1.0,
        steps: int = 1,
        method: str | Tableau | Reversible = "rk4",
        grad: str | GradMode = "anode",
        q: str | nn.Module = "rda",
        weights: Sequence[str] | None = None,
        reaction: str = "tanh",
    ) -> None:
        if not isinstance(func, nn.Module):
            raise TypeError(f"func must be an nn.Module (its weights evolve), got {type(func).__name__}")
        super().__init__(func, t0, t1, steps, method, grad)
        params = dict(func.named_parameters())
        if isinstance(weights, str):
            raise TypeError(f"weights must be a list of parameter names, got the string {weights!r}: write [{weights!r}]")
        self.weight_names = list(evolving_weights(func) if weights is None else weights)
        repeated = sorted({name for name in self.weight_names if self.weight_names.count(name) > 1})
        if repeated:
            raise ValueError(f"weights names {repeated} more than once; each weight evolves once")
        missing = [name for name in self.weight_names if name not in params]
        if missing:
            raise ValueError(
                f"weights {missing} are not parameters of func; its parameters are {sorted(params)}"
            )
        _reaction_code(reaction)
        if q == "rda":
            q = RDA([params[name].shape for name in self.weight_names], reaction=reaction)
        elif q != "none" and not isinstance(q, nn.Module):
            raise ValueError(f"q must be 'rda', 'none' or an nn.Module q(t, thetas); got {q!r}")
        self.q = q

    @property
    def coupled(self) -> bool:
        """False when q is "none" or no weight evolves: the block is then an ODEBlock."""
        return self.q != "none" and bool(self.weight_names)

    def forward(self, x: Tensor) -> Tensor:
        if not self.coupled:
            steps = None if isinstance(self.method, Adaptive) else self.steps
            return odeint(self.func, x, self.t0, self.t1, steps=steps, method=self.method, grad=self.grad)
        params = dict(self.func.named_parameters())
        thetas = tuple(params[name] for name in self.weight_names)
        joint = _JointDynamics(self, thetas)
        if isinstance(self.method, Adaptive):
            # The weights are part of the state the step-size control measures.
            states = solve_adaptive(self.grad, joint, self.method, adaptive_times(self.t0, self.t1), (x, *thetas), self)
            return states[-1][0]
        problem = fixed_step_problem(joint, self.t0, self.t1, self.steps, self.method)
        steps = problem.base if isinstance(problem, ReversibleProblem) else problem
        # The fused kernel takes a float step size and at most MAX_STAGES stages; otherwise
        # the weights are stepped through q like the state.
        if isinstance(self.q, RDA) and not isinstance(steps.h, Tensor) and self.tableau.stages <= MAX_STAGES:
            steps.supply = _FusedWeights(joint)
        (z, *_) = solve_problem(self.grad, problem, (x, *thetas), self)
        return z

    def extra_repr(self) -> str:
        q = self.q if isinstance(self.q, str) else type(self.q).__name__
        return f"{super().extra_repr()}, q={q}, evolving={len(self.weight_names)}"
