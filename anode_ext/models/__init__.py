"""The model families of the ANODE and ANODEv2 papers, and their plain baselines.

    model = anode_ext.models.create("sqnxt", num_classes=10, steps=2, method="midpoint", grad="anode")

Registered names:

- ``resnet``: ResNet-18 for 32x32 inputs with an ODE block in each of its four stages;
- ``sqnxt``: the CIFAR SqueezeNext with an ODE block in each stage;
- ``resnet_baseline`` / ``sqnxt_baseline``: the same networks with each ODE block replaced
  by the residual block it generalizes (``x + f(x)``, the Euler step of size 1).

ANODEv2 configurations (ODE models only): ``coupled`` chooses which ODE blocks evolve their
weights — ``"none"`` (ANODE), ``"all"``, ``"first"``, ``"last"``, or a list of stage numbers —
and ``q`` their dynamics (``"rda"``; ``reaction`` ``"tanh"`` or ``"relu"``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

from torch import nn

from ..modes import GradMode
from ..tableau import Tableau
from .blocks import BlockConfig, Residual
from .resnet import ODEResNet
from .sqnxt import ODESqueezeNext

__all__ = ["MODELS", "BlockConfig", "Residual", "available", "create", "parameter_count"]

MODELS: dict[str, tuple[Callable[..., nn.Module], bool]] = {
    "resnet": (ODEResNet, True),
    "resnet_baseline": (ODEResNet, False),
    "sqnxt": (ODESqueezeNext, True),
    "sqnxt_baseline": (ODESqueezeNext, False),
}


def available() -> list[str]:
    """The registered model names."""
    return sorted(MODELS)


def create(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
    t0: float = 0.0,
    t1: float = 1.0,
    steps: int = 1,
    method: str | Tableau | Reversible = "rk4",
    grad: str | GradMode = "anode",
    coupled: str | list[int] = "none",
    q: str = "rda",
    reaction: str = "tanh",
    **family_options: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: one of ``available()``.
        num_classes: 10 for CIFAR-10, 100 for CIFAR-100 (any >= 2).
        in_channels: channels of the 32x32 input images.
        width: multiplier of every layer width (1.0 is the published size).
        t0, t1, steps, method, grad: how each ODE block integrates, as for ODEBlock (grad
            a mode of ``anode_ext.modes`` or its name).
        coupled, q, reaction: the ANODEv2 configuration (see the module docstring).
        family_options: ``blocks=(b1, b2, b3, b4)`` for sqnxt, ODE blocks per stage.

    Returns:
        The model, an nn.Module mapping ``(N, in_channels, 32, 32)`` images to
        ``(N, num_classes)`` logits.

    Raises:
        ValueError, TypeError: for an unknown name or an option that is not as described.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(available())}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, numbers.Integral) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    if not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"width must be a positive number, got {width!r}")
    factory, ode = MODELS[name]
    config = BlockConfig(ode=ode, t0=t0, t1=t1, steps=steps, method=method, grad=grad,
                         coupled=coupled, q=q, reaction=reaction)
    try:
        return factory(config, num_classes=int(num_classes), in_channels=int(in_channels), width=width, **family_options)
    except TypeError as error:
        raise TypeError(f"model {name!r}: {error}") from error


def parameter_count(model: nn.Module) -> int:
    """Number of trainable scalars in `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
