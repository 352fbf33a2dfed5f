"""anode_ext: neural-ODE blocks with exact, memory-efficient gradients for PyTorch."""

from . import modes, revolve
from ._library import build_info
from ._version import __version__
from .block import ODEBlock
from .coupled import CoupledODEBlock, evolving_weights
from .modes import GRAD_MODES, Adjoint, Anode, Direct, GradMode, ReversibleGrad, Revolve
from .reversible import Reversible
from .odeint import odeint
from .ops import rk_combine
from .rda import RDA, rda_rhs, rda_rk_step
from .tableau import TABLEAUX, Tableau, get_tableau

__all__ = [
    "GRAD_MODES",
    "Adjoint",
    "Anode",
    "CoupledODEBlock",
    "Direct",
    "GradMode",
    "ODEBlock",
    "RDA",
    "Reversible",
    "ReversibleGrad",
    "Revolve",
    "TABLEAUX",
    "Tableau",
    "__version__",
    "build_info",
    "evolving_weights",
    "get_tableau",
    "modes",
    "odeint",
    "rda_rhs",
    "rda_rk_step",
    "revolve",
    "rk_combine",
]
