"""anode_ext: neural-ODE blocks with exact, memory-efficient gradients for PyTorch."""

from . import revolve
from ._library import build_info
from ._version import __version__
from .block import ODEBlock
from .odeint import GRAD_MODES, odeint
from .ops import rk_combine
from .tableau import TABLEAUX, Tableau, get_tableau

__all__ = [
    "GRAD_MODES",
    "ODEBlock",
    "TABLEAUX",
    "Tableau",
    "__version__",
    "build_info",
    "get_tableau",
    "odeint",
    "revolve",
    "rk_combine",
]
