"""Per-step time of the solver on an ODE-ResNet-sized block, for regression tracking."""

import pytest
import torch
from torch import nn

from anode_ext import odeint
from anode_ext.bench.timing import synchronize


class ResidualBranch(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, t, x):
        return self.net(x)


@pytest.fixture
def block(device):
    torch.manual_seed(0)
    func = ResidualBranch(16).to(device)
    x = torch.randn(8, 16, 32, 32, device=device, requires_grad=True)
    return func, x


@pytest.mark.parametrize("grad", ["direct", "anode", "revolve"])
def test_rk4_step_forward_backward(benchmark, device, block, grad):
    func, x = block

    def run():
        odeint(func, x, steps=2, method="rk4", grad=grad, checkpoints=1 if grad == "revolve" else None).sum().backward()
        synchronize(device)

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)


def test_rk4_step_inference(benchmark, device, block):
    func, x = block

    def run():
        with torch.no_grad():
            odeint(func, x, steps=1, method="rk4")
        synchronize(device)

    benchmark.pedantic(run, rounds=10, warmup_rounds=2)
