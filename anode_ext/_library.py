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
    """Check that the compiled library matches the running torch.

    Args:
        built_with: the torch version string the library was compiled against.
        running: the installed ``torch.__version__``.

    Raises:
        ImportError: the two differ (exact string comparison), with the command to rebuild.
    """
    if built_with != running:
        raise ImportError(
            f"anode_ext._C was built against torch {built_with} but torch {running} is "
            f"installed; {REBUILD_HINT}"
        )


def load() -> ModuleType:
    """Import anode_ext._C, which registers the ``torch.ops.anode_ext`` ops.

    Returns:
        The module ``anode_ext._C``.

    Raises:
        ImportError: it cannot be imported (missing, or its symbols do not resolve against
            this torch), or it was built against another torch version; the message gives
            the command to rebuild.
    """
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
    """Describe how the compiled library was built.

    Returns:
        A dict: ``version`` (anode_ext's version), ``torch_version`` (the torch it was
        built against), ``cuda_version`` (a string, or None without CUDA kernels),
        ``cuda_arch_list`` (the compute capabilities compiled for, e.g. ``["8.0", "9.0"]``;
        ``[]`` without CUDA kernels) and ``openmp`` (whether the CPU kernels were built
        with OpenMP; without it they run on one thread).
    """
    cuda_version = _C.cuda_version or None
    arch_list = [a for a in _C.cuda_arch_list.split(";") if a] if cuda_version else []
    return {
        "version": __version__,
        "torch_version": _C.torch_version,
        "cuda_version": cuda_version,
        "cuda_arch_list": arch_list,
        "openmp": bool(_C.openmp),
    }
