"""Small ODE right-hand sides used across the tests, each a module with forward(t, x)."""

from __future__ import annotations

import torch
from torch import nn


class MLPFunc(nn.Module):
    """A two-layer tanh MLP on (batch, width) states."""

    def __init__(self, width: int = 4, hidden: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, width))

    def forward(self, t: float, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvBNFunc(nn.Module):
    """conv - BatchNorm - ReLU - conv - BatchNorm, the residual branch of a ResNet block."""

    def __init__(self, channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Dropout(dropout) if dropout else nn.Identity(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, t: float, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TimeMLPFunc(MLPFunc):
    """An MLP whose output depends on t, so that wrong stage times are caught."""

    def forward(self, t: float, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * (1.0 + t) + t


def make_func(kind: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A function of the given kind and a matching input that requires grad."""
    torch.manual_seed(seed)
    if kind == "mlp":
        func, x = TimeMLPFunc(), torch.randn(3, 4)
    elif kind == "conv_bn":
        func, x = ConvBNFunc(), torch.randn(2, 3, 5, 5)
    else:
        raise ValueError(kind)
    func = func.to(dtype)
    return func, x.to(dtype).requires_grad_(True)


def all_grads(func: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The input gradient followed by every parameter gradient (zeros where none)."""
    grads = [x.grad]
    grads += [p.grad if p.grad is not None else torch.zeros_like(p) for p in func.parameters()]
    return [g.clone() for g in grads]
