"""anode_ext: neural-ODE blocks with exact, memory-efficient gradients for PyTorch."""

from . import revolve
from ._library import build_info
from ._version import __version__
from .block import ODEBlock
from .coupled import CoupledODEBlock, evolving_weights
from .odeint import GRAD_MODES, odeint
from .ops import rk_combine
from .rda import RDA, rda_rhs, rda_rk_step
from .tableau import TABLEAUX, Tableau, get_tableau

__all__ = [
    "GRAD_MODES",
    "CoupledODEBlock",
    "ODEBlock",
    "RDA",
    "TABLEAUX",
    "Tableau",
    "__version__",
    "build_info",
    "evolving_weights",
    "get_tableau",
    "odeint",
    "rda_rhs",
    "rda_rk_step",
    "revolve",
    "rk_combine",
]
