"""ODE blocks inside the machinery of real training: torch.compile and CPU autocast."""

import pytest
import torch
from odefuncs import ConvBNFunc
from testing import relative_error
from torch import nn

from anode_ext import ODEBlock


def model_for(grad):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=1),
        ODEBlock(ConvBNFunc(3), steps=2, method="rk4", grad=grad),
        nn.Flatten(),
        nn.Linear(3 * 5 * 5, 2),
    )


def step(model, x):
    out = model(x)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()], [b.clone() for b in model.buffers()]


@pytest.mark.parametrize(
    "grad, backend",
    [("direct", "inductor"), ("anode", "inductor"), ("revolve", "aot_eager"), ("adjoint", "aot_eager")],
)
def test_torch_compile_equals_eager(grad, backend):
    torch._dynamo.reset()
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    eager = step(model_for(grad), x)
    model = model_for(grad)
    compiled = step(torch.compile(model, backend=backend), x)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled[1] + compiled[2], eager[1] + eager[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def autocast_results(grad):
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    model = model_for(grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    return [out.float()] + [p.grad for p in model.parameters()]


def test_cpu_autocast_bfloat16_anode_equals_direct():
    # The recompute replays the same bfloat16 arithmetic, so the bits agree.
    for a, b in zip(autocast_results("anode"), autocast_results("direct")):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cpu_autocast_bfloat16_revolve_within_bfloat16_rounding():
    # Revolve tapes one step at a time: a weight's bfloat16 copy is made per step and
    # its gradient summed over steps in float32, where direct sums it over the whole
    # block in bfloat16. The results may differ by bfloat16 rounding, no more.
    eps = torch.finfo(torch.bfloat16).eps
    for a, b in zip(autocast_results("revolve"), autocast_results("direct")):
        assert a.dtype == b.dtype
        assert relative_error(a, b) <= 2 * eps
