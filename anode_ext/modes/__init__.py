"""Gradient modes: how the gradient of an ODE solve is computed.

    Direct()                     autograd through every step
    Anode()                      keep the block input, recompute in backward (exact)
    Revolve(checkpoints=None,    keep a few states, recompute optimally (exact)
            memory_budget=None)
    Adjoint(params=())           the continuous adjoint (not exact)
    ReversibleGrad(rtol=None)    a reversible method's states computed back (exact to
                                 rounding, memory constant in the steps)

``grad=`` of odeint, ODEBlock, CoupledODEBlock and models.create takes one of these or
its name (``"revolve"`` is ``Revolve()``).
"""

from .grad_modes import (
    GRAD_MODES,
    Adjoint,
    Anode,
    Direct,
    GradMode,
    Recompute,
    ReversibleGrad,
    Revolve,
    as_grad_mode,
    grad_mode_named,
)

__all__ = [
    "GRAD_MODES", "Adjoint", "Anode", "Direct", "GradMode", "Recompute", "ReversibleGrad", "Revolve", "as_grad_mode",
    "grad_mode_named",
]
