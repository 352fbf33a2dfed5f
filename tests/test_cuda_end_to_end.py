"""The solver, the gradient modes, the coupled blocks and the models on a GPU: the same
numbers as on the CPU, and anode / revolve equal to direct there too."""

import pytest
import torch
from odefuncs import ConvBNFunc, all_grads, make_func
from testing import needs_cuda, relative_error

from anode_ext import CoupledODEBlock, models, odeint
from anode_ext.modes import grad_mode_named

pytestmark = needs_cuda

MODES = [("anode", None), ("revolve", 1)]


def solve_and_grads(device, method, grad, checkpoints=None):
    func, x = make_func("conv_bn")
    func = func.to(device).train()
    x = x.detach().to(device).requires_grad_(True)
    y = odeint(func, x, 0.0, 0.7, steps=3, method=method, grad=grad_mode_named(grad, checkpoints=checkpoints))
    weight = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=device).view(y.shape)
    (y * weight).sum().backward()
    return y.detach().cpu(), [g.cpu() for g in all_grads(func, x)]


@pytest.mark.parametrize("method", ["midpoint", "rk4"])
@pytest.mark.parametrize("grad, checkpoints", MODES, ids=["anode", "revolve-c1"])
def test_exact_modes_equal_direct_on_cuda(method, grad, checkpoints):
    _, expected = solve_and_grads("cuda", method, "direct")
    _, got = solve_and_grads("cuda", method, grad, checkpoints)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert e.abs().max() > 0
        assert relative_error(g, e) <= 1e-10, f"gradient {i}: {relative_error(g, e):.3g}"


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_cuda_solve_matches_cpu(method):
    y_cpu, g_cpu = solve_and_grads("cpu", method, "anode")
    y_cuda, g_cuda = solve_and_grads("cuda", method, "anode")
    assert relative_error(y_cuda, y_cpu) <= 1e-10
    for g, e in zip(g_cuda, g_cpu):
        assert relative_error(g, e) <= 1e-10


def coupled_grads(device, grad):
    torch.manual_seed(0)
    block = CoupledODEBlock(ConvBNFunc(3), q="rda", steps=3, method="rk4", grad=grad).double().to(device)
    with torch.no_grad():
        for c in block.q.coefficients:
            c.copy_(torch.randn(c.shape, generator=torch.Generator().manual_seed(1), dtype=c.dtype) * 0.3)
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = x.to(device).requires_grad_(True)
    y = block(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=device).view(y.shape)).sum().backward()
    grads = [x.grad] + [p.grad for p in block.parameters() if p.grad is not None]
    return y.detach().cpu(), [g.cpu() for g in grads]


def test_coupled_block_on_cuda():
    y_direct, direct = coupled_grads("cuda", "direct")
    y_anode, anode = coupled_grads("cuda", "anode")
    y_cpu, cpu = coupled_grads("cpu", "anode")
    assert len(anode) == len(direct) == len(cpu)
    for a, d, c in zip(anode, direct, cpu):
        assert relative_error(a, d) <= 1e-10
        assert relative_error(a, c) <= 1e-10
    assert relative_error(y_anode, y_cpu) <= 1e-10


@pytest.mark.parametrize("name, coupled", [("resnet", "none"), ("resnet", "all"), ("sqnxt", "none")])
def test_model_trains_under_bf16_autocast(name, coupled):
    torch.manual_seed(0)
    model = models.create(name, width=0.25, steps=2, grad="anode", coupled=coupled).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(8, 3, 32, 32, device="cuda")
    labels = torch.randint(0, 10, (8,), device="cuda")
    for _ in range(2):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=["anode", "revolve-c1"])
def test_changed_saved_values_are_refused_on_cuda(grad, checkpoints):
    # The samples of saved tensors on the GPU are compared once per recomputed segment.
    lin = torch.nn.Linear(4, 4).cuda()
    sign = [1.0]
    x = torch.randn(3, 4, device="cuda", requires_grad=True)
    out = odeint(lambda t, y: torch.tanh(torch.abs(sign[0] * lin(y))), x, steps=3,
                 grad=grad_mode_named(grad, checkpoints=checkpoints))
    sign[0] = -1.0
    with pytest.raises(RuntimeError, match="holds other values than in the forward"):
        out.sum().backward()
    sign[0] = 1.0
    out = odeint(lambda t, y: torch.tanh(torch.abs(sign[0] * lin(y))), x, steps=3,
                 grad=grad_mode_named(grad, checkpoints=checkpoints))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
