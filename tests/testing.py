"""Parametrization shared by the tests: devices, dtypes and their tolerances."""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=needs_cuda)]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def rounding_tolerance(dtype: torch.dtype) -> dict[str, float]:
    """Tolerances for a result rounded once to `dtype` from a wider accumulation."""
    eps = torch.finfo(dtype).eps
    return {"rtol": eps, "atol": eps}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    scale = b.abs().max().item() if b.numel() else 0.0
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    if scale == 0.0:
        return diff
    return diff / scale
