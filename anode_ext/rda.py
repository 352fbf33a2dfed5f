"""Reaction–diffusion–advection (RDA) weight dynamics for ANODEv2 (Zhang et al.,
"ANODEV2: A Coupled Neural ODE Framework", NeurIPS 2019, section 3).

For a convolution weight theta of shape (Cout, Cin, kh, kw)::

    q(theta) = d * lap(theta) + u * dx(theta) + v * dy(theta) + r * rho(theta)

over the (kh, kw) taps of each filter, with zero-flux boundaries (a missing neighbour
takes the centre's value), central differences with unit spacing (x along kw, y
along kh; ``dx = (right - left) / 2``, ``lap`` the 5-point stencil), rho = tanh, relu
or 0 (reaction "none"), and coefficients (d, u, v, r) per output channel. A
(Cout, Cin, k) weight is a 1 x k filter; a linear weight (Cout, Cin) is 1 x 1, for
which only the reaction term remains. These operators are this library's choice:
the ANODEv2 paper names RDA dynamics but its exact operators are not public.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import _library  # noqa: F401  (registers torch.ops.anode_ext)
from .tableau import Tableau, get_tableau

__all__ = ["REACTIONS", "RDA", "rda_rhs", "rda_rk_step", "release_rda_buffers"]

REACTIONS = {"tanh": 0, "relu": 1, "none": 2}
"""The reaction functions rho by name, with the code the compiled ops take."""

_ops = torch.ops.anode_ext

MAX_TAPS = 49
"""Taps per filter the fused kernels take (csrc/rda.h, kRdaMaxTaps): up to 7x7."""

MAX_STAGES = 8
"""Stages of a tableau the fused step takes (csrc/rda.h, kRdaMaxStages)."""


def _reaction_code(reaction: str) -> int:
    if reaction not in REACTIONS:
        raise ValueError(f"unknown reaction {reaction!r}; expected one of {', '.join(REACTIONS)}")
    return REACTIONS[reaction]


def rda_rhs(theta: Tensor, coefficients: Tensor, reaction: str = "tanh") -> Tensor:
    """Evaluate the RDA right-hand side q(theta) of one weight.

    Differentiable with respect to theta and coefficients (first derivatives only).

    Args:
        theta: a convolution weight (Cout, Cin, kh, kw) or (Cout, Cin, k), or a linear
            weight (Cout, Cin); float32, float64, float16 or bfloat16 (half types are
            computed in float32); at most 49 (7 x 7) taps per filter.
        coefficients: (4, Cout), theta's dtype and device; rows d, u, v, r.
        reaction: rho, a name in ``REACTIONS``.

    Returns:
        q(theta), a contiguous tensor of theta's shape and dtype.

    Raises:
        ValueError: an unknown reaction.
        RuntimeError: theta's dtype, shape or number of taps, or coefficients' shape,
            dtype or device, is not as above; double backward (``create_graph=True``).
    """
    return _ops.rda_rhs.default(theta, coefficients, _reaction_code(reaction))


def _flat_lower(tableau: Tableau) -> list[float]:
    return [w for row in tableau.a for w in row]


def rda_rk_step(theta: Tensor, coefficients: Tensor, tableau: Tableau | str, h: float,
                reaction: str = "tanh") -> list[Tensor]:
    """Take one explicit Runge–Kutta step of ``dtheta/dt = q(theta)`` (see ``rda_rhs``),
    each filter's stages computed in one fused pass (one filter per GPU thread).

    q does not depend on t, so the tableau's nodes c are not used. Differentiable with
    respect to theta and coefficients (first derivatives only).

    Args:
        theta, coefficients, reaction: as for ``rda_rhs``.
        tableau: an explicit method of at most 8 stages, or its name in ``TABLEAUX``.
        h: the step size (a time), a finite real number (or a tensor holding one that
            does not require grad).

    Returns:
        A list of s tensors of theta's shape and dtype, s the tableau's stages: the stage
        inputs theta^(1) ... theta^(s-1) (theta^(0) is theta itself), then the weight
        after the step.

    Raises:
        ValueError: an unknown reaction or method name.
        TypeError: h is not a real number.
        RuntimeError: as for ``rda_rhs``, a tableau of more than 8 stages, or an h that
            is not finite.
    """
    tableau = get_tableau(tableau)
    if isinstance(h, bool) or not isinstance(h, (numbers.Real, Tensor)):
        raise TypeError(f"rda_rk_step: h must be a real number, got {type(h).__name__}")
    if isinstance(h, Tensor) and h.requires_grad:
        raise ValueError(
            "rda_rk_step: h is a tensor that requires grad, but the fused step takes h as a constant and gives "
            "it no gradient; step with rda_rhs and ordinary tensor arithmetic for a learnable step size"
        )
    return _ops.rda_rk_step.default(
        theta, coefficients, _reaction_code(reaction), _flat_lower(tableau), list(tableau.b), float(h)
    )


def _dense(theta: Tensor) -> Tensor:
    return torch.empty(theta.shape, dtype=theta.dtype, device=theta.device)


def _on_theta_device(op: str, theta: Tensor, coefficients: Tensor, grads: Sequence[Tensor] = ()) -> None:
    """The compiled kernels' device check, in the fake kernels: a call with a tensor on
    the meta device reaches these also when theta is real, and would otherwise return
    theta-shaped memory nobody wrote."""
    torch._check(
        coefficients.device == theta.device,
        lambda: f"{op}: coefficients are on {coefficients.device} but theta is on {theta.device}; "
        "expected both on one device",
    )
    for grad in grads:
        torch._check(
            grad.device == theta.device,
            lambda: f"{op}: a gradient is on {grad.device} but theta is on {theta.device}; expected theta's device",
        )


@torch.library.register_fake("anode_ext::rda_rhs")
def _rda_rhs_fake(theta, coefficients, reaction):
    _on_theta_device("rda_rhs", theta, coefficients)
    return _dense(theta)


@torch.library.register_fake("anode_ext::rda_rhs_backward")
def _rda_rhs_backward_fake(grad, theta, coefficients, reaction):
    _on_theta_device("rda_rhs_backward", theta, coefficients, [grad])
    return _dense(theta), _dense(coefficients)


@torch.library.register_fake("anode_ext::rda_rk_step")
def _rda_rk_step_fake(theta, coefficients, reaction, a, b, h):
    _on_theta_device("rda_rk_step", theta, coefficients)
    return [_dense(theta) for _ in b]


@torch.library.register_fake("anode_ext::rda_rk_step_backward")
def _rda_rk_step_backward_fake(grads, theta, coefficients, reaction, a, b, h):
    _on_theta_device("rda_rk_step_backward", theta, coefficients, grads)
    return _dense(theta), _dense(coefficients)


class RDA(nn.Module):
    """RDA dynamics ``q(t, thetas)`` for several weights, each with its own learnable
    (4, Cout) coefficients (an ``nn.ParameterList`` of parameters of the default dtype,
    cast to each weight's dtype when used).

    Initialised with diffusion ``d = diffusion`` and ``u = v = r = 0``, so that a coupled
    block starts close to the uncoupled one (the weights only smooth slowly).

    Args:
        shapes: the shape of each weight, (Cout, Cin, kh, kw), (Cout, Cin, k) or
            (Cout, Cin).
        reaction: rho, a name in ``REACTIONS``.
        diffusion: the initial d of every channel.

    Raises:
        ValueError: an unknown reaction, a shape of other than 2, 3 or 4 dimensions,
            or a filter of more than 49 taps.
    """

    def __init__(self, shapes: Sequence[Sequence[int]], reaction: str = "tanh", diffusion: float = 1e-2) -> None:
        super().__init__()
        _reaction_code(reaction)
        self.reaction = reaction
        self.coefficients = nn.ParameterList()
        for shape in shapes:
            if len(shape) not in (2, 3, 4):
                raise ValueError(
                    f"RDA dynamics take convolution or linear weights; got a weight of shape {tuple(shape)}"
                )
            if math.prod(shape[2:]) > MAX_TAPS:
                raise ValueError(
                    f"RDA dynamics take filters of at most {MAX_TAPS} taps (7x7); got a weight of shape "
                    f"{tuple(shape)}; leave that weight out of the evolving weights"
                )
            init = torch.zeros(4, shape[0])
            init[0] = diffusion
            self.coefficients.append(nn.Parameter(init))

    def forward(self, t: float, thetas: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """dtheta/dt = q(theta) for each weight (t is not used); a tuple of tensors of the
        weights' shapes.

        Raises:
            ValueError: thetas does not hold one tensor per weight given at construction.
            RuntimeError: as for ``rda_rhs`` (a theta on another device than this module,
                say).
        """
        self._check_count(thetas)
        return tuple(rda_rhs(th, c.to(th.dtype), self.reaction) for th, c in zip(thetas, self.coefficients))

    def rk_step(self, thetas: Sequence[Tensor], tableau: Tableau, h: float) -> list[list[Tensor]]:
        """One fused RK step of each weight: a list, per weight, of what ``rda_rk_step``
        returns (the stage inputs theta^(1) ... theta^(s-1), then the new weight).

        Raises:
            ValueError, RuntimeError: as for ``forward``, or a tableau of more than 8 stages.
        """
        self._check_count(thetas)
        return [rda_rk_step(th, c.to(th.dtype), tableau, h, self.reaction) for th, c in zip(thetas, self.coefficients)]

    def _check_count(self, thetas: Sequence[Tensor]) -> None:
        if len(thetas) != len(self.coefficients):
            raise ValueError(f"RDA dynamics hold coefficients for {len(self.coefficients)} weights, got {len(thetas)}")

    def extra_repr(self) -> str:
        return f"weights={len(self.coefficients)}, reaction={self.reaction}"


def release_rda_buffers() -> int:
    """Free the CPU buffers that the RDA ops keep for reuse.

    On the CPU, an output of `rda_rhs`, `rda_rk_step` or their backwards of 1 MiB or more
    comes from a pool of freed buffers of exactly its size, which keeps up to 512 MiB in all,
    so that a coupled model does not fault fresh pages in for every weight stage at every step.
    This hands that memory back to the system (after training, say); later calls fill the pool
    again as they free outputs. Tensors in use are not affected.

    Returns:
        The number of bytes freed.
    """
    return _library._C.release_pooled_outputs()
