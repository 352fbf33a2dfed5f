"""Per-step time of the solver on an ODE-ResNet-sized block, for regression tracking."""

import pytest
import torch

from anode_ext import Revolve, odeint
from anode_ext.models.blocks import ResNetBranch
from anode_ext.bench.timing import synchronize


@pytest.fixture
def block(device):
    torch.manual_seed(0)
    func = ResNetBranch(16).to(device)
    x = torch.randn(8, 16, 32, 32, device=device, requires_grad=True)
    return func, x


@pytest.mark.parametrize("grad", ["direct", "anode", "revolve"])
def test_rk4_step_forward_backward(benchmark, device, block, grad):
    func, x = block

    def run():
        odeint(func, x, steps=2, method="rk4", grad=Revolve(checkpoints=1) if grad == "revolve" else grad).sum().backward()
        synchronize(device)

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)


def test_rk4_step_inference(benchmark, device, block):
    func, x = block

    def run():
        with torch.no_grad():
            odeint(func, x, steps=1, method="rk4")
        synchronize(device)

    benchmark.pedantic(run, rounds=10, warmup_rounds=2)
