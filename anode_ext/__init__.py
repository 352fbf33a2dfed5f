"""anode_ext: neural-ODE blocks with exact, memory-efficient gradients for PyTorch."""

from ._library import build_info
from ._version import __version__
from .ops import rk_combine

__all__ = ["__version__", "build_info", "rk_combine"]
