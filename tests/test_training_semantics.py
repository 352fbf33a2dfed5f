"""Recompute-on-backward changes nothing about training: BatchNorm statistics, dropout,
parameter discovery, reuse and the errors for what is not supported."""

import pytest
import torch
from odefuncs import ConvBNFunc, MLPFunc
from testing import needs_cuda
from torch import nn

from anode_ext import ODEBlock, Revolve, odeint
from anode_ext.modes import grad_mode_named

RECOMPUTE_MODES = [("anode", None), ("revolve", 1), ("revolve", 3)]
MODE_IDS = ["anode", "revolve-c1", "revolve-c3"]


def train(grad, checkpoints=None, dropout=0.0, iterations=3, method="rk4", steps=3):
    torch.manual_seed(0)
    model = nn.Sequential(
        ODEBlock(ConvBNFunc(3, dropout), steps=steps, method=method, grad=grad_mode_named(grad, checkpoints=checkpoints)),
        nn.Flatten(),
        nn.Linear(3 * 5 * 5, 2),
    ).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.randn(iterations, 4, 3, 5, 5, dtype=torch.float64)
    losses = []
    for x in data:
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


@pytest.mark.parametrize("grad, checkpoints", RECOMPUTE_MODES, ids=MODE_IDS)
def test_batchnorm_statistics_updated_once_per_step(grad, checkpoints):
    reference, ref_losses = train("direct")
    model, losses = train(grad, checkpoints)
    assert losses == pytest.approx(ref_losses, rel=1e-12)
    for (name, a), (_, b) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0, msg=name)
    tracked = [b for n, b in model.named_buffers() if n.endswith("num_batches_tracked")]
    assert tracked and all(t.item() == 3 * 3 * 4 for t in tracked)  # iterations * steps * stages


@pytest.mark.parametrize("grad, checkpoints", RECOMPUTE_MODES, ids=MODE_IDS)
def test_dropout_draws_the_same_numbers(grad, checkpoints):
    reference, ref_losses = train("direct", dropout=0.3)
    model, losses = train(grad, checkpoints, dropout=0.3)
    assert losses == pytest.approx(ref_losses, rel=1e-12)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("grad, checkpoints", RECOMPUTE_MODES, ids=MODE_IDS)
def test_backward_leaves_the_callers_rng_alone(grad, checkpoints):
    def after_backward(mode, c):
        torch.manual_seed(5)
        func = ConvBNFunc(3, dropout=0.5).double()
        x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
        odeint(func, x, steps=4, grad=grad_mode_named(mode, checkpoints=c)).sum().backward()
        return torch.rand(3)

    torch.testing.assert_close(after_backward(grad, checkpoints), after_backward("direct", None))


@needs_cuda
@pytest.mark.parametrize("grad, checkpoints", RECOMPUTE_MODES, ids=MODE_IDS)
def test_random_draws_on_another_device_replay(grad, checkpoints):
    # The state and parameters are on the CPU; func draws its noise on the GPU. CUDA is
    # initialized before the solve, as it is in any program that has used the GPU.
    torch.cuda.init()
    lin = nn.Linear(4, 4).double()

    def func(t, y):
        return torch.tanh(lin(y)) * torch.rand(y.shape, device="cuda", dtype=y.dtype).cpu()

    def gradient(mode, c):
        torch.manual_seed(3)
        torch.cuda.manual_seed(3)
        x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(odeint(func, x, steps=4, grad=grad_mode_named(mode, checkpoints=c)).square().sum(), x)
        return g

    torch.testing.assert_close(gradient(grad, checkpoints), gradient("direct", None), rtol=1e-10, atol=0)


def grads_of(module, x, grad, checkpoints=None, steps=3, func=None):
    """Gradients of the parameters of `module` (and of x when it requires grad) through
    a solve of `func` (default: the module itself)."""
    for p in module.parameters():
        p.grad = None
    x.grad = None
    odeint(func or module, x, steps=steps, grad=grad_mode_named(grad, checkpoints=checkpoints)).square().sum().backward()
    grads = [p.grad.clone() if p.grad is not None else None for p in module.parameters()]
    return ([x.grad.clone()] if x.requires_grad else []) + grads


def assert_same_grads(a, b):
    assert len(a) == len(b)
    for g, e in zip(a, b):
        if e is None:
            assert g is None
        else:
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("grad, checkpoints", RECOMPUTE_MODES + [("adjoint", None)], ids=MODE_IDS + ["adjoint"])
def test_closure_tensors_are_found(grad, checkpoints):
    # The adjoint gradient is only close to the exact one (a few percent at 3 steps).
    torch.manual_seed(0)
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def f(t, y):
        return torch.tanh(y @ w)

    def run(mode, c=None):
        w.grad = x.grad = None
        odeint(f, x, steps=3, grad=grad_mode_named(mode, checkpoints=c)).square().sum().backward()
        return w.grad.clone(), x.grad.clone()

    expected = run("direct")
    got = run(grad, checkpoints)
    tol = 1e-10 if grad != "adjoint" else 0.1
    for g, e in zip(got, expected):
        assert e.abs().max() > 0
        torch.testing.assert_close(g, e, rtol=tol, atol=tol)


class LateParameter(nn.Module):
    """Uses `late` only for t >= 0.5: the first evaluation alone would not reveal it."""

    def __init__(self):
        super().__init__()
        self.early = nn.Linear(4, 4)
        self.late = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)

    def forward(self, t, x):
        return torch.tanh(self.late(x) if t >= 0.5 else self.early(x))

    def rhs(self, t, x):
        return self.forward(t, x)


@pytest.mark.parametrize("grad, checkpoints", RECOMPUTE_MODES, ids=MODE_IDS)
@pytest.mark.parametrize("bound", [False, True], ids=["module", "bound-method"])
def test_module_parameters_found_even_if_used_late(grad, checkpoints, bound):
    torch.manual_seed(0)
    module = LateParameter().double()
    func = module.rhs if bound else module
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    expected = grads_of(module, x, "direct", steps=4)
    got = grads_of(module, x, grad, checkpoints, steps=4, func=func)
    assert_same_grads(got, expected)
    assert module.late.weight.grad.abs().max() > 0
    assert module.unused.weight.grad is None


@pytest.mark.parametrize("grad, checkpoints", RECOMPUTE_MODES, ids=MODE_IDS)
def test_input_without_grad_parameters_with(grad, checkpoints):
    torch.manual_seed(0)
    func = MLPFunc().double()
    x = torch.randn(3, 4, dtype=torch.float64)
    expected = grads_of(func, x, "direct")
    got = grads_of(func, x, grad, checkpoints)
    assert_same_grads(got, expected)
    assert x.grad is None


@pytest.mark.parametrize("grad, checkpoints", RECOMPUTE_MODES, ids=MODE_IDS)
def test_block_used_twice_in_one_graph(grad, checkpoints):
    def run(mode, c=None):
        torch.manual_seed(0)
        block = ODEBlock(ConvBNFunc(3), steps=2, grad=grad_mode_named(mode, checkpoints=c)).double()
        x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
        block(block(x)).square().sum().backward()
        return [x.grad] + [p.grad for p in block.parameters()] + list(block.buffers())

    assert_same_grads(run(grad, checkpoints), run("direct"))


@pytest.mark.parametrize("grad", ["anode", "revolve", "adjoint"])
def test_double_backward_is_refused(grad):
    torch.manual_seed(0)
    func = MLPFunc().double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = odeint(func, x, steps=2, grad=grad)
    with pytest.raises(RuntimeError, match="cannot be differentiated again"):
        torch.autograd.grad(y.sum(), x, create_graph=True)


def test_double_backward_works_with_direct():
    torch.manual_seed(0)
    func = MLPFunc().double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: odeint(func, x, steps=2, grad="direct"), (x,))


def test_nothing_requires_grad():
    func = MLPFunc().double().requires_grad_(False)
    x = torch.randn(3, 4, dtype=torch.float64)
    for grad in ("anode", "revolve", "adjoint"):
        assert not odeint(func, x, steps=2, grad=grad).requires_grad


def test_tensor_captured_by_closure_is_differentiated():
    torch.manual_seed(0)
    scale = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def f(t, y):
        return -scale * y

    y = odeint(f, x, steps=3, grad="anode")
    (g_anode,) = torch.autograd.grad(y.sum(), scale)
    y = odeint(f, x, steps=3, grad="direct")
    (g_direct,) = torch.autograd.grad(y.sum(), scale)
    torch.testing.assert_close(g_anode, g_direct, rtol=1e-12, atol=0)


def test_repr():
    block = ODEBlock(MLPFunc(), t1=2.0, steps=4, method="midpoint", grad=grad_mode_named("revolve", checkpoints=2))
    text = repr(block)
    assert text.startswith("ODEBlock(\n  t0=0, t1=2, steps=4, method=midpoint, grad=Revolve(checkpoints=2)")
    assert "(func): MLPFunc(" in text
    assert "func=test_repr.<locals>.<lambda>" in repr(ODEBlock(lambda t, x: x, steps=1))


def test_block_argument_errors():
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        ODEBlock(MLPFunc(), steps=0)
    with pytest.raises(ValueError, match="unknown grad"):
        ODEBlock(MLPFunc(), grad="exact")
    with pytest.raises(ValueError, match="unknown method"):
        ODEBlock(MLPFunc(), method="rk45")
    with pytest.raises(TypeError, match="func must be callable"):
        ODEBlock(None)
