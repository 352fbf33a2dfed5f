"""ODE functions f(t, x) that the benchmarks integrate."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvBNReLU2(nn.Module):
    """(conv 3x3 -> BatchNorm -> ReLU) twice, as an ODE function f(t, x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, t: float, x: Tensor) -> Tensor:
        return self.net(x)


class ConvReLU(nn.Module):
    """conv 3x3 -> ReLU -> conv 3x3, as an ODE function f(t, x); `scale` multiplies the
    default-initialised conv weights."""

    def __init__(self, channels: int, scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.mul_(scale)

    def forward(self, t: float, x: Tensor) -> Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


class MLP(nn.Module):
    """dim -> hidden -> tanh -> dim, as an ODE function f(t, x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, t: float, x: Tensor) -> Tensor:
        return self.net(x)
