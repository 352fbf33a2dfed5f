"""Loads the compiled library anode_ext._C and reports how it was built."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch

from ._version import __version__

REBUILD_HINT = (
    "rebuild it against the installed torch: from the anode_ext source folder run "
    "`pip install --no-build-isolation --no-deps --force-reinstall .` "
    "(or `pip install --no-build-isolation -e .` for a development checkout)"
)


def check_torch_match(built_with: str, running: str) -> None:
    """Raise ImportError when the library was built against another torch than the one running."""
    if built_with != running:
        raise ImportError(
            f"anode_ext._C was built against torch {built_with} but torch {running} is "
            f"installed; {REBUILD_HINT}"
        )


def load() -> ModuleType:
    """Import anode_ext._C (which registers the torch.ops.anode_ext ops) or explain how to fix it."""
    try:
        module = importlib.import_module("anode_ext._C")
    except ImportError as error:
        raise ImportError(
            f"anode_ext's compiled library could not be loaded ({error}). It is missing or "
            f"was built against another torch (installed: {torch.__version__}); {REBUILD_HINT}"
        ) from error
    check_torch_match(module.torch_version, torch.__version__)
    return module


_C = load()


def build_info() -> dict[str, Any]:
    """Describe the compiled library: versions, CUDA support and threading."""
    cuda_version = _C.cuda_version or None
    arch_list = [a for a in _C.cuda_arch_list.split(";") if a] if cuda_version else []
    return {
        "version": __version__,
        "torch_version": _C.torch_version,
        "cuda_version": cuda_version,
        "cuda_arch_list": arch_list,
        "openmp": bool(_C.openmp),
    }
