"""anode_ext: neural-ODE blocks with exact, memory-efficient gradients for PyTorch."""

from . import modes, revolve
from .adaptive import Adaptive, SolverStats
from ._library import build_info
from ._version import __version__
from .block import ODEBlock
from .coupled import CoupledODEBlock, evolving_weights
from .embedded import PAIRS, EmbeddedTableau, get_pair
from .modes import GRAD_MODES, Adjoint, Anode, Direct, GradMode, ReversibleGrad, Revolve
from .reversible import Reversible
from .odeint import odeint
from .ops import rk_combine
from .rda import RDA, rda_rhs, rda_rk_step, release_rda_buffers
from .tableau import TABLEAUX, Tableau, get_tableau

__all__ = [
    "GRAD_MODES",
    "PAIRS",
    "Adaptive",
    "Adjoint",
    "Anode",
    "CoupledODEBlock",
    "Direct",
    "EmbeddedTableau",
    "GradMode",
    "ODEBlock",
    "RDA",
    "SolverStats",
    "Reversible",
    "ReversibleGrad",
    "Revolve",
    "TABLEAUX",
    "Tableau",
    "__version__",
    "build_info",
    "evolving_weights",
    "get_pair",
    "get_tableau",
    "modes",
    "odeint",
    "rda_rhs",
    "rda_rk_step",
    "release_rda_buffers",
    "revolve",
    "rk_combine",
]
