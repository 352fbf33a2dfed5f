"""Typed wrappers of the compiled ops, with fake (meta) kernels for torch.compile
and autograd formulas made of registered ops."""

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
    """Return ``y + h * sum(w * k for w, k in zip(weights, ks))`` computed in one pass over memory.

    With ``out`` the result is written into that tensor (which may be ``y`` itself) without
    allocating; that form is not differentiable.
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


def _rk_combine_setup(ctx, inputs, output) -> None:
    _, ks, weights, h = inputs
    ctx.weights = weights
    ctx.h = h
    ctx.num_ks = len(ks)


def _rk_combine_backward(ctx, grad: Tensor):
    # Only ks with a nonzero weight get a gradient tensor; None is autograd's zero.
    live = [i for i, w in enumerate(ctx.weights) if w != 0.0]
    grad_ks: list[Tensor | None] = [None] * ctx.num_ks
    if live and ctx.h != 0.0:
        scaled = _ops.rk_combine_backward.default(grad, [ctx.weights[i] for i in live], ctx.h)
        for i, g in zip(live, scaled):
            grad_ks[i] = g
    return grad, grad_ks, None, None


def _rk_combine_backward_setup(ctx, inputs, output) -> None:
    _, weights, h = inputs
    ctx.weights = weights
    ctx.h = h


def _rk_combine_backward_backward(ctx, grads: list[Tensor | None]):
    # rk_combine_backward is linear in grad: its adjoint is the weighted sum of
    # the incoming gradients, itself an rk_combine (so higher orders work too).
    pairs = [(g, w) for g, w in zip(grads, ctx.weights) if g is not None]
    if not pairs:
        return None, None, None
    base = torch.zeros_like(pairs[0][0])
    return rk_combine(base, [g for g, _ in pairs], [w for _, w in pairs], ctx.h), None, None


torch.library.register_autograd(
    "anode_ext::rk_combine", _rk_combine_backward, setup_context=_rk_combine_setup
)
torch.library.register_autograd(
    "anode_ext::rk_combine_backward",
    _rk_combine_backward_backward,
    setup_context=_rk_combine_backward_setup,
)
