"""Typed wrappers of the compiled ops and their fake (meta) kernels for torch.compile.

The autograd formulas are registered in C++ (csrc/autograd/), where a call costs a
tenth of what torch.library.register_autograd costs; each backward is itself a
registered op.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from . import _library  # noqa: F401  (registers torch.ops.anode_ext)

__all__ = ["rk_combine"]

_ops = torch.ops.anode_ext


def _as_floats(values: Sequence[float] | Tensor, what: str) -> list[float]:
    if isinstance(values, Tensor):
        if values.requires_grad:
            raise ValueError(
                f"rk_combine: {what} is a tensor that requires grad, but the op takes its {what} as constants "
                "and gives them no gradient; pass numbers, or a detached tensor"
            )
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"rk_combine: {what} must be a sequence of numbers, got {type(values).__name__}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"rk_combine: {what}[{i}] must be a real number, got {type(v).__name__}")
        out.append(float(v))
    return out


def _as_tensors(ks: Sequence[Tensor]) -> list[Tensor]:
    if isinstance(ks, Tensor) or not isinstance(ks, Sequence):
        raise TypeError(f"rk_combine: ks must be a list or tuple of tensors, got {type(ks).__name__}")
    for i, k in enumerate(ks):
        if not isinstance(k, Tensor):
            raise TypeError(f"rk_combine: ks[{i}] must be a tensor, got {type(k).__name__}")
    return list(ks)


def rk_combine(
    y: Tensor,
    ks: Sequence[Tensor],
    weights: Sequence[float] | Tensor,
    h: float,
    *,
    out: Tensor | None = None,
) -> Tensor:
    """Compute ``y + h * sum(w * k for w, k in zip(weights, ks))`` in one pass over memory.

    The coefficients ``h * w`` are formed in float64, then rounded to the accumulation
    type (float32 for float16 and bfloat16, else the dtype itself); the CPU and CUDA
    kernels return the same bits. Differentiable with respect to y and ks, twice; reverse
    mode only. A k whose weight is 0 (or every k, when h is 0) gets no gradient (None), not
    zeros.

    Args:
        y: a float32, float64, float16 or bfloat16 tensor of any shape and strides.
        ks: a non-empty sequence of tensors of y's shape, dtype and device.
        weights: one real number per k, as a sequence or a 1-d tensor (read with
            ``tolist()``; not differentiable).
        h: a real number, the step size (a time); not differentiable.
        out: a tensor of y's shape, dtype and device to write into without allocating;
            it may be y or a k itself but not partially overlap them. Not differentiable.

    Returns:
        A new tensor of y's shape and dtype, or ``out``.

    Raises:
        TypeError: y or a k is not a tensor, ks or weights is not a sequence, or a
            weight or h is not a real number (bools and tensors are not).
        RuntimeError: y has another dtype; ks is empty or not one per weight; a k, or
            ``out``, differs from y in shape, dtype or device; ``out`` has elements that
            share memory or partially overlaps y or a k; ``out`` is given while grad mode
            is on and an operand requires grad; a forward-mode AD input.
    """
    if not isinstance(y, Tensor):
        raise TypeError(f"rk_combine: y must be a tensor, got {type(y).__name__}")
    ks = _as_tensors(ks)
    weights = _as_floats(weights, "weights")
    if isinstance(h, bool) or not isinstance(h, numbers.Real):
        raise TypeError(f"rk_combine: h must be a real number, got {type(h).__name__}")
    if out is None:
        return _ops.rk_combine.default(y, ks, weights, float(h))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (out, y, *ks)):
        raise RuntimeError(
            "rk_combine: the out= form is not differentiable but an operand requires grad; "
            "call rk_combine without out= inside an autograd graph, or use torch.no_grad()"
        )
    _ops.rk_combine_out.default(out, y, ks, weights, float(h))
    return out


@torch.library.register_fake("anode_ext::rk_combine")
def _rk_combine_fake(y: Tensor, ks: list[Tensor], weights: list[float], h: float) -> Tensor:
    torch._check(len(ks) > 0, lambda: "rk_combine: ks is empty; expected at least one k tensor")
    torch._check(
        len(weights) == len(ks),
        lambda: f"rk_combine: got {len(weights)} weights for {len(ks)} ks; expected one weight per k",
    )
    for i, k in enumerate(ks):
        torch._check(
            k.shape == y.shape and k.dtype == y.dtype and k.device == y.device,
            lambda: f"rk_combine: ks[{i}] must match y in shape, dtype and device",
        )
    return torch.empty_like(y)


@torch.library.register_fake("anode_ext::rk_combine_out")
def _rk_combine_out_fake(out: Tensor, y: Tensor, ks: list[Tensor], weights: list[float], h: float) -> None:
    return None


@torch.library.register_fake("anode_ext::rk_combine_backward")
def _rk_combine_backward_fake(grad: Tensor, weights: list[float], h: float) -> list[Tensor]:
    return [torch.empty_like(grad) for _ in weights]


@torch.library.register_fake("anode_ext::rk_error_norm")
def _rk_error_norm_fake(y: Tensor, y1: Tensor, ks: list[Tensor], weights: list[float], h: float, rtol: float,
                        atol: float) -> Tensor:
    return y.new_empty((), dtype=torch.float64)
