"""Parametrization shared by the tests: devices, dtypes and their tolerances, and the
comparison of gradients with grad='direct's."""

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


EXACT_TOL = 1e-10
"""Relative tolerance of float64 gradients that must equal grad='direct''s."""


def assert_grads_equal(got, expected, tol: float = EXACT_TOL) -> None:
    """Each gradient equals the reference's to `tol` (None where the reference is None);
    a reference gradient of zero is refused, since the test would then prove nothing."""
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        if e is None:
            assert g is None, f"gradient {i}: expected none"
            continue
        assert g is not None, f"gradient {i} is missing"
        assert e.abs().max() > 0, f"gradient {i} of the reference is zero; the test would prove nothing"
        torch.testing.assert_close(g, e, rtol=tol, atol=tol * e.abs().max().item(), msg=f"gradient {i}")
