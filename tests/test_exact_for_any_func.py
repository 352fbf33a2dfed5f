"""anode and revolve equal direct for funcs that reach tensors in every way a user writes
them: the state captured by a closure, layers chosen by time, tensors with hooks,
learnable integration times, module state changed by a forward. Float64 throughout."""

import pytest
import torch
from torch import nn

from testing import EXACT_TOL, assert_grads_equal

from anode_ext import Adjoint, CoupledODEBlock, ODEBlock, odeint
from anode_ext.modes import grad_mode_named
from anode_ext.revolve import schedule

MODES = [("anode", None), ("revolve", 1), ("revolve", 2)]
IDS = ["anode", "revolve-c1", "revolve-c2"]
TOL = EXACT_TOL


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_state_captured_by_the_closure(grad, checkpoints):
    # Input injection: the state y0 also enters func through a closure.
    def run(mode, c=None):
        torch.manual_seed(0)
        x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        lin = nn.Linear(3, 3).double()
        out = odeint(lambda t, z: torch.tanh(lin(z)) + x, x, 0.0, 1.0, steps=3, method="rk4", grad=grad_mode_named(mode, checkpoints=c))
        out.pow(2).sum().backward()
        return [x.grad, lin.weight.grad, lin.bias.grad]

    assert_grads_equal(run(grad, checkpoints), run("direct"))


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_non_leaf_tensor_of_the_same_graph(grad, checkpoints):
    def run(mode, c=None):
        torch.manual_seed(0)
        x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        w = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
        context = torch.sin(x @ w)  # computed outside the solve, used inside
        out = odeint(lambda t, z: torch.tanh(z * context), x.cos(), steps=4, method="midpoint", grad=grad_mode_named(mode, checkpoints=c))
        (out.square().sum() + context.sum()).backward()
        return [x.grad, w.grad]

    assert_grads_equal(run(grad, checkpoints), run("direct"))


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_encoded_input_that_func_also_reads(grad, checkpoints):
    # An input-conditioned ODE after an encoder: y0 is not a leaf, and func uses it by
    # name in operations that save it (a product, a maximum).
    def run(mode, c=None):
        torch.manual_seed(0)
        encoder, lin = nn.Linear(3, 3).double(), nn.Linear(3, 3).double()
        h = encoder(torch.randn(4, 3, dtype=torch.float64))
        out = odeint(lambda t, y: torch.tanh(lin(y)) + 0.1 * h * y + torch.maximum(y, h), h, steps=3,
                     grad=grad_mode_named(mode, checkpoints=c))
        out.square().sum().backward()
        return [encoder.weight.grad, encoder.bias.grad, lin.weight.grad]

    assert_grads_equal(run(grad, checkpoints), run("direct"))


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_layers_chosen_by_time(grad, checkpoints):
    def run(mode, c=None):
        torch.manual_seed(0)
        layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(4)).double()
        y0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
        func = lambda t, y: torch.tanh(layers[min(int(4 * t), 3)](y))  # noqa: E731
        odeint(func, y0, 0.0, 1.0, steps=4, method="euler", grad=grad_mode_named(mode, checkpoints=c)).square().sum().backward()
        return [y0.grad] + [p.grad for p in layers.parameters()]

    got = run(grad, checkpoints)
    assert all(g is not None for g in got)
    assert_grads_equal(got, run("direct"))


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_hooks_fire_as_under_direct(grad, checkpoints):
    # A parameter used inside the block and outside it, with a tensor hook that scales.
    def run(mode, c=None):
        torch.manual_seed(0)
        lin = nn.Linear(3, 3).double()
        calls = {"tensor": 0, "accumulate": 0}

        def scale(g):
            calls["tensor"] += 1
            return 0.5 * g

        def accumulated(p):
            calls["accumulate"] += 1

        lin.weight.register_hook(scale)
        lin.weight.register_post_accumulate_grad_hook(accumulated)
        x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        out = odeint(lambda t, z: torch.tanh(lin(z)), x, steps=3, grad=grad_mode_named(mode, checkpoints=c))
        (out.pow(2).sum() + lin(x).sum()).backward()
        return [x.grad, lin.weight.grad, lin.bias.grad], calls

    got, got_calls = run(grad, checkpoints)
    expected, expected_calls = run("direct")
    assert got_calls == expected_calls == {"tensor": 1, "accumulate": 1}
    assert_grads_equal(got, expected)


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_hook_on_a_tensor_inside_func(grad, checkpoints):
    def run(mode, c=None):
        torch.manual_seed(0)
        lin = nn.Linear(3, 3).double()
        seen = []

        def func(t, z):
            h = lin(z)
            if h.requires_grad:
                h.register_hook(lambda g: seen.append(g.clone()))
            return torch.tanh(h)

        x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        odeint(func, x, steps=2, method="heun", grad=grad_mode_named(mode, checkpoints=c)).square().sum().backward()
        return [x.grad, lin.weight.grad], seen

    got, got_seen = run(grad, checkpoints)
    expected, expected_seen = run("direct")
    assert_grads_equal(got, expected)
    assert len(got_seen) == len(expected_seen) == 4
    for g, e in zip(got_seen, expected_seen):
        torch.testing.assert_close(g, e, rtol=TOL, atol=0)


class PowerIteration(nn.Module):
    """A module whose forward reads and updates its own buffer (as spectral norm's power
    iteration does): each call's output depends on how often it ran before. It uses a
    copy of the buffer, as spectral norm does, so that direct's backward accepts it."""

    def __init__(self, width):
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.register_buffer("u", torch.ones(width))

    def forward(self, t, y):
        with torch.no_grad():
            self.u.copy_(torch.nn.functional.normalize(self.lin.weight.t() @ self.u + 0.1, dim=0))
        return torch.tanh(self.lin(y)) * self.u.clone()


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_buffers_as_the_forward_had_them(grad, checkpoints):
    def run(mode, c=None):
        torch.manual_seed(0)
        func = PowerIteration(3).double()
        x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        odeint(func, x, steps=4, method="rk4", grad=grad_mode_named(mode, checkpoints=c)).square().sum().backward()
        return [x.grad, func.lin.weight.grad, func.lin.bias.grad], func.u.clone()

    got, got_u = run(grad, checkpoints)
    expected, expected_u = run("direct")
    assert_grads_equal(got, expected)
    torch.testing.assert_close(got_u, expected_u, rtol=0, atol=0)


def time_gradients(mode, c, which):
    torch.manual_seed(0)
    lin = nn.Linear(3, 3).double()
    times = {"t0": torch.tensor(0.1, dtype=torch.float64), "t1": torch.tensor(0.8, dtype=torch.float64)}
    times[which].requires_grad_(True)
    y0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    func = lambda t, y: torch.tanh(lin(y)) * (1 + t)  # noqa: E731
    out = odeint(func, y0, times["t0"], times["t1"], steps=4, method="rk4", grad=grad_mode_named(mode, checkpoints=c))
    out.square().sum().backward()
    return [times[which].grad, y0.grad, lin.weight.grad]


@pytest.mark.parametrize("which", ["t0", "t1"])
@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_learnable_times(grad, checkpoints, which):
    assert_grads_equal(time_gradients(grad, checkpoints, which), time_gradients("direct", None, which))


@pytest.mark.parametrize("which", ["t0", "t1"])
def test_time_gradient_is_the_discrete_derivative(which):
    # A central finite difference of the discrete solve, in float64.
    (exact, *_) = time_gradients("anode", None, which)
    torch.manual_seed(0)
    lin = nn.Linear(3, 3).double()
    y0 = torch.randn(2, 3, dtype=torch.float64)
    func = lambda t, y: torch.tanh(lin(y)) * (1 + t)  # noqa: E731

    def loss(t0, t1):
        with torch.no_grad():
            return odeint(func, y0, t0, t1, steps=4, method="rk4", grad="direct").square().sum().item()

    eps = 1e-6
    if which == "t0":
        fd = (loss(0.1 + eps, 0.8) - loss(0.1 - eps, 0.8)) / (2 * eps)
    else:
        fd = (loss(0.1, 0.8 + eps) - loss(0.1, 0.8 - eps)) / (2 * eps)
    assert abs(exact.item() - fd) <= 1e-7 * max(1.0, abs(fd))


class ConvTanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, t, x):
        return torch.tanh(self.conv(x))


@pytest.mark.parametrize("grad", ["direct", "anode", "revolve"])
def test_blocks_learn_their_end_time(grad):
    def run(block_type, mode):
        torch.manual_seed(0)
        func = ConvTanh()
        t1 = nn.Parameter(torch.tensor(0.7))
        if block_type == "ode":
            block = ODEBlock(func, t1=t1, steps=3, grad=mode)
        else:
            block = CoupledODEBlock(func, t1=t1, steps=3, grad=mode)
        block = block.double()
        x = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
        block(x).square().sum().backward()
        assert any(p is block.t1 for p in block.parameters())
        return [block.t1.grad, x.grad]

    for block_type in ("ode", "coupled"):
        assert_grads_equal(run(block_type, grad), run(block_type, "direct"))


def test_adjoint_refuses_learnable_times():
    t1 = torch.tensor(1.0, requires_grad=True)
    with pytest.raises(ValueError, match="grad='adjoint' gives no gradient with respect to t0 or t1"):
        odeint(lambda t, y: -y, torch.ones(2, requires_grad=True), 0.0, t1, steps=2, grad="adjoint")


def test_adjoint_names_what_it_cannot_differentiate():
    x = torch.randn(3, requires_grad=True)
    context = x * 2
    with pytest.raises(ValueError, match=r"computed outside the solve and requires grad .* name it in Adjoint\(params=\.\.\.\)"):
        odeint(lambda t, y: y * context, x.detach(), steps=2, grad="adjoint")
    y = odeint(lambda t, y: y * context, x.detach(), steps=2, grad=Adjoint(params=[context]))
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().max() > 0


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_parameter_modified_in_place_before_backward_is_refused(grad, checkpoints):
    lin = nn.Linear(3, 3).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    out = odeint(lambda t, z: torch.tanh(lin(z)), x, steps=3, grad=grad_mode_named(grad, checkpoints=checkpoints))
    with torch.no_grad():
        lin.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        out.sum().backward()


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_input_modified_in_place_before_backward_is_refused(grad, checkpoints):
    lin = nn.Linear(3, 3).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y0 = x * 1.0
    out = odeint(lambda t, z: torch.tanh(lin(z)), y0, steps=3, grad=grad_mode_named(grad, checkpoints=checkpoints))
    with torch.no_grad():
        y0.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        out.sum().backward()


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_func_that_does_not_repeat_itself_is_refused(grad, checkpoints):
    calls = [0]
    lin = nn.Linear(3, 3).double()

    def func(t, z):
        calls[0] += 1
        h = lin(z)
        return torch.tanh(h) if calls[0] <= 12 else torch.tanh(torch.tanh(h))

    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    out = odeint(func, x, steps=3, method="rk4", grad=grad_mode_named(grad, checkpoints=checkpoints))
    with pytest.raises(RuntimeError, match="the recompute in backward did not repeat the forward"):
        out.sum().backward()


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_change_that_leaves_every_state_equal_is_refused(grad, checkpoints):
    # A sign flipped under abs between forward and backward: every recomputed state is
    # the forward's, bit for bit, but the tensors autograd saved are not, and so would
    # the gradient be.
    class Func(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4).double()
            self.sign = 1.0

        def forward(self, t, y):
            return torch.tanh(torch.abs(self.sign * self.lin(y)))

    func = Func()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    out = ODEBlock(func, steps=3, grad=grad_mode_named(grad, checkpoints=checkpoints))(x)
    func.sign = -1.0
    with pytest.raises(RuntimeError, match="saved tensor 2 holds other values than in the forward"):
        out.sum().backward()


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_backward_twice_with_retain_graph(grad, checkpoints):
    def run(mode, c=None):
        torch.manual_seed(0)
        lin = nn.Linear(3, 3).double()
        x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        out = odeint(lambda t, z: torch.tanh(lin(z)), x, steps=5, grad=grad_mode_named(mode, checkpoints=c)).square().sum()
        out.backward(retain_graph=True)
        out.backward()
        return [x.grad, lin.weight.grad]

    assert_grads_equal(run(grad, checkpoints), run("direct"))


def test_revolve_with_many_steps():
    torch.manual_seed(0)
    lin = nn.Linear(2, 2).double()
    y0 = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)

    def run(mode):
        lin.zero_grad()
        y0.grad = None
        odeint(lambda t, y: torch.tanh(lin(y)), y0, steps=2000, method="euler", grad=mode).sum().backward()
        return [y0.grad, lin.weight.grad]

    assert_grads_equal(run("revolve"), run("direct"))


def test_schedule_of_a_hundred_thousand_steps():
    # The kept states come from a closed form; the actions are generated as consumed.
    plan = schedule(100_000, 17)
    assert len(plan.kept) == 17 and plan.kept == tuple(sorted(set(plan.kept)))
    first = next(iter(plan.actions()))
    assert first.kind == "advance" and first.start == plan.kept[-1]


def test_adjoint_refuses_named_tensors_computed_from_one_another():
    torch.manual_seed(0)
    embed, lin = nn.Linear(2, 4).double(), nn.Linear(4, 4).double()
    s = embed(torch.randn(3, 2, dtype=torch.float64))
    x0 = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="names a tensor computed from another tensor it also names"):
        odeint(lambda t, y: torch.tanh(lin(y) + s), x0, steps=2, grad=Adjoint(params=[s, *embed.parameters()]))
    out = odeint(lambda t, y: torch.tanh(lin(y) + s), x0, steps=2, grad=Adjoint(params=[s]))
    out.sum().backward()
    assert embed.weight.grad.abs().max() > 0
