"""What anode and revolve replay when they recompute (module buffers however they are
updated, train/eval modes, hooks func registers, funcs that differentiate inside
themselves), and what they refuse with an error because it cannot be replayed."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anode_ext import CoupledODEBlock, odeint
from anode_ext.modes import grad_mode_named

pytestmark = pytest.mark.filterwarnings(
    "ignore:The PyTorch API of nested tensors:UserWarning", "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)

MODES = [("anode", None), ("revolve", 1), ("revolve", 2)]
IDS = ["anode", "revolve-c1", "revolve-c2"]


def assert_same(got, expected):
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=f"item {i}")


class Normalizing(nn.Module):
    """Its ODE function is a bound method that updates the module's own buffer: the
    module's forward (which calls odeint) started before the solve."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("running_mean", torch.zeros(4))

    def dynamics(self, t, y):
        with torch.no_grad():
            self.running_mean.mul_(0.9).add_(0.1 * y.mean(0))
        return torch.tanh(self.lin(y - self.running_mean.clone()))

    def forward(self, x, grad, checkpoints):
        return odeint(self.dynamics, x, steps=4, grad=grad_mode_named(grad, checkpoints=checkpoints))


class Reassigning(nn.Module):
    """Updates its buffer out of place (an exponential average) and uses it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("scale", torch.ones(4))

    def forward(self, t, y):
        out = torch.tanh(self.lin(y)) * self.scale
        self.scale = 0.9 * self.scale + 0.1 * y.detach().abs().mean(0)
        return out


class ParentNorm(nn.Module):
    """Calls F.batch_norm on its child's buffers: the child's forward never runs."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.child = nn.BatchNorm1d(4)

    def forward(self, t, y):
        c = self.child
        return torch.tanh(F.batch_norm(self.lin(y), c.running_mean, c.running_var, c.weight, c.bias, True, 0.1))


def run_module(make, grad, checkpoints, call=None):
    torch.manual_seed(0)
    module = make().double()
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    out = call(module, x, grad, checkpoints) if call else odeint(module, x, steps=4, grad=grad_mode_named(grad, checkpoints=checkpoints))
    out.square().sum().backward()
    return [x.grad, *(p.grad for p in module.parameters()), *(b.clone() for b in module.buffers())]


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
@pytest.mark.parametrize("make, call", [
    (Normalizing, lambda m, x, g, c: m(x, g, c)),
    (Reassigning, None),
    (ParentNorm, None),
    (lambda: torch.jit.script(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Tanh())), None),
], ids=["bound-method", "reassigned", "child-buffers", "scripted"])
def test_buffers_replayed_however_updated(make, call, grad, checkpoints):
    if call is None and isinstance(make(), torch.jit.ScriptModule):
        scripted = make

        def make():
            inner = scripted()
            for _ in range(3):  # the executor's profiling runs, after which its graph is fixed
                inner(torch.randn(6, 4))
            return Wrapped(inner)

    assert_same(run_module(make, grad, checkpoints, call), run_module(make, "direct", None, call))


class Wrapped(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, t, y):
        return self.inner(y)


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
@pytest.mark.parametrize("forward_mode", ["train", "eval"])
def test_mode_switched_between_forward_and_backward(grad, checkpoints, forward_mode):
    def run(mode, c):
        torch.manual_seed(0)
        func = Wrapped(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Tanh())).double()
        func.train(forward_mode == "train")
        x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
        out = odeint(func, x, steps=3, grad=grad_mode_named(mode, checkpoints=c))
        func.train(forward_mode != "train")
        out.square().sum().backward()
        return [x.grad, *(p.grad for p in func.parameters()), *func.buffers()]

    assert_same(run(grad, checkpoints), run("direct", None))


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_hooks_registered_by_func(grad, checkpoints):
    def run(mode, c):
        w = torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
        calls = [0]

        def func(t, y):
            w.register_hook(lambda g: (calls.__setitem__(0, calls[0] + 1), 0.5 * g)[1])
            return torch.tanh(y @ w)

        y0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(odeint(func, y0, steps=2, method="midpoint", grad=grad_mode_named(mode, checkpoints=c)).sum(), [w])
        return g, calls[0]

    (g, calls), (e, expected_calls) = run(grad, checkpoints), run("direct", None)
    assert calls == expected_calls == 4
    torch.testing.assert_close(g, e, rtol=1e-10, atol=0)


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
@pytest.mark.parametrize("create_graph", [True, False])
def test_func_that_differentiates_inside_itself(grad, checkpoints, create_graph):
    # A Hamiltonian network: the vector field is a gradient of a learned energy.
    def run(mode, c):
        torch.manual_seed(0)
        energy = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
        J = torch.tensor([[0.0, 0, 1, 0], [0, 0, 0, 1], [-1, 0, 0, 0], [0, -1, 0, 0]], dtype=torch.float64)

        def func(t, y):
            with torch.enable_grad():
                q = y if create_graph else y.detach().requires_grad_(True)
                (dh,) = torch.autograd.grad(energy(q).sum(), q, create_graph=create_graph)
            return dh @ J.T + (0 if create_graph else torch.tanh(y))

        y0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
        out = odeint(func, y0, steps=3, grad=grad_mode_named(mode, checkpoints=c))
        out.square().sum().backward()
        return [y0.grad] + ([p.grad for p in energy.parameters()] if create_graph else [])

    assert_same(run(grad, checkpoints), run("direct", None))


def refused(build, grad, checkpoints, match="the recompute in backward did not repeat the forward"):
    out = build(grad, checkpoints)
    with pytest.raises(RuntimeError, match=match):
        out.sum().backward()


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_changed_attribute_is_refused(grad, checkpoints):
    class Conditioned(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.condition = torch.zeros(4)

        def forward(self, t, y):
            return torch.tanh(self.lin(y) + self.condition)

    def build(mode, c):
        func = Conditioned()
        y = odeint(func, torch.randn(3, 4, requires_grad=True), steps=3, grad=grad_mode_named(mode, checkpoints=c))
        func.condition = torch.ones(4)  # set for the next batch before this one's backward
        return y

    refused(build, grad, checkpoints)


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_swapped_parameters_are_refused(grad, checkpoints):
    from torch.func import functional_call

    def build(mode, c):
        lin = nn.Linear(4, 4)
        fast = {"weight": lin.weight.detach().clone().requires_grad_(True), "bias": lin.bias}
        func = lambda t, y: torch.tanh(functional_call(lin, fast, (y,)))  # noqa: E731
        y = odeint(func, torch.randn(3, 4, requires_grad=True), steps=3, grad=grad_mode_named(mode, checkpoints=c))
        fast["weight"] = lin.weight  # the next inner step swaps in other weights
        return y

    refused(build, grad, checkpoints)


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_other_random_generators_are_refused(grad, checkpoints):
    def build(mode, c):
        generator = torch.Generator().manual_seed(0)
        lin = nn.Linear(4, 4)
        func = lambda t, y: torch.tanh(lin(y)) * torch.rand(y.shape, generator=generator)  # noqa: E731
        return odeint(func, torch.randn(3, 4, requires_grad=True), steps=3, grad=grad_mode_named(mode, checkpoints=c))

    refused(build, grad, checkpoints)


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_swapped_requires_grad_is_refused(grad, checkpoints):
    def build(mode, c):
        a, b = torch.randn(4, 4, requires_grad=True), torch.randn(4, 4)
        y = odeint(lambda t, y: torch.tanh(y @ a) + torch.tanh(y @ b), torch.randn(3, 4), steps=2, grad=grad_mode_named(mode,
                   checkpoints=c))
        a.requires_grad_(False)
        b.requires_grad_(True)
        return y

    refused(build, grad, checkpoints)


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_captured_constant_modified_in_place_is_refused(grad, checkpoints):
    def build(mode, c):
        context = torch.randn(3, 4)
        lin = nn.Linear(8, 4)
        y = odeint(lambda t, y: torch.tanh(lin(torch.cat([y, context], 1))), torch.randn(3, 4, requires_grad=True),
                   steps=3, grad=grad_mode_named(mode, checkpoints=c))
        context.copy_(torch.randn(3, 4))  # the next batch's conditioning, written into the same tensor
        return y

    refused(build, grad, checkpoints)


def test_second_backward_of_revolve_costs_one_more_forward():
    calls = [0]
    lin = nn.Linear(2, 2)

    def func(t, y):
        calls[0] += 1
        return torch.tanh(lin(y))

    y = odeint(func, torch.randn(1, 2, requires_grad=True), steps=100, method="euler", grad=grad_mode_named("revolve",
               checkpoints=3)).sum()
    calls[0] = 0
    y.backward(retain_graph=True)
    first = calls[0]
    calls[0] = 0
    y.backward()
    assert calls[0] <= first + 100


def test_revolve_inside_torch_checkpoint():
    from torch.utils.checkpoint import checkpoint

    def run(mode):
        torch.manual_seed(0)
        lin = nn.Linear(4, 4).double()
        x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        solve = lambda x: odeint(lambda t, y: torch.tanh(lin(y)), x, steps=8,   # noqa: E731
                                 grad=grad_mode_named(mode, checkpoints=1 if mode == "revolve" else None))
        checkpoint(solve, x, use_reentrant=False).square().sum().backward()
        return [x.grad, lin.weight.grad]

    for mode in ("anode", "revolve"):
        assert_same(run(mode), run("direct"))


@pytest.mark.parametrize("make, message", [
    (lambda y: y * (1 + 1j), "dtype ComplexDouble; dy/dt must be a floating tensor"),
    (lambda y: y > 0, "dtype Bool; dy/dt must be a floating tensor"),
    (lambda y: y.to_sparse(), "(?i)sparse.* tensor; dy/dt must be a dense"),
    (lambda y: torch.nested.nested_tensor(list(y)), "nested .* tensor; dy/dt must be a dense"),
], ids=["complex", "bool", "sparse", "nested"])
@pytest.mark.parametrize("grad", ["direct", "anode"])
def test_derivatives_that_are_not_dense_floating_tensors(make, message, grad):
    with pytest.raises(RuntimeError, match=message):
        odeint(lambda t, y: make(y), torch.randn(3, 4, dtype=torch.float64), steps=2, grad=grad)


def test_states_and_times_of_other_kinds():
    import numpy as np

    with pytest.raises(ValueError, match="y0 is a torch.sparse_coo tensor; expected a dense"):
        odeint(lambda t, y: y, torch.randn(3, 4).to_sparse(), steps=2)
    y = odeint(lambda t, y: -y, torch.ones(2, dtype=torch.float64), np.float64(0.0), np.array(1.0), steps=4)
    expected = odeint(lambda t, y: -y, torch.ones(2, dtype=torch.float64), 0.0, 1.0, steps=4)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_constant_used_only_for_the_gradient_modified_is_refused(grad, checkpoints):
    # A straight-through scale: the states do not depend on it, only the gradient does.
    def build(mode, c):
        lin = nn.Linear(5, 5).double()
        scale = torch.tensor(2.0, dtype=torch.float64)

        def func(t, y):
            h = lin(y)
            return torch.tanh(h + (scale * h - (scale * h).detach()))

        y = odeint(func, torch.randn(3, 5, dtype=torch.float64, requires_grad=True), steps=3, grad=grad_mode_named(mode,
                   checkpoints=c))
        scale.fill_(5.0)
        return y

    refused(build, grad, checkpoints, match="modified in place since the forward saved it")


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
@pytest.mark.parametrize("target", ["unsaved-leaf", "non-leaf"])
def test_hooks_registered_by_func_on_any_tensor(grad, checkpoints, target):
    def run(mode, c):
        torch.manual_seed(0)
        lin = nn.Linear(5, 5).double()
        u = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
        b = torch.randn(5, dtype=torch.float64, requires_grad=True)
        z = lin(u)
        calls = [0]

        def halve(g):
            calls[0] += 1
            return 0.5 * g

        def func(t, y):
            if target == "unsaved-leaf":
                b.register_hook(halve)
                return torch.tanh(lin(y) + b)
            z.register_hook(halve)
            return torch.tanh(y * z)

        odeint(func, u.detach(), steps=3, grad=grad_mode_named(mode, checkpoints=c)).square().sum().backward()
        return (b.grad if target == "unsaved-leaf" else u.grad), calls[0]

    (g, calls), (e, expected) = run(grad, checkpoints), run("direct", None)
    assert calls == expected
    torch.testing.assert_close(g, e, rtol=1e-10, atol=0)


def storage_alive():
    import gc

    gc.collect()
    return sum(o.untyped_storage().nbytes() for o in gc.get_objects() if type(o) is torch.Tensor)


@pytest.mark.parametrize("grad", ["anode", "revolve"])
@pytest.mark.parametrize("case", ["partial-backward", "no-backward", "backward-raises"])
def test_nothing_kept_when_a_backward_is_partial_or_missing(grad, case):
    lin, gate = nn.Linear(64, 64), nn.Linear(64, 64)

    def iteration():
        x = torch.randn(32, 64, requires_grad=True)
        loss = odeint(lambda t, y: torch.tanh(lin(y)) * torch.sigmoid(gate(x)), x, steps=6, grad=grad).square().sum()
        if case == "partial-backward":
            loss.backward(inputs=[lin.bias])
        elif case == "backward-raises":
            with torch.no_grad():
                lin.weight.add_(0)
            with pytest.raises(RuntimeError):
                loss.backward()

    iteration()
    before = storage_alive()
    for _ in range(5):
        iteration()
    assert storage_alive() - before < 64 * 64 * 4 * 4


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
@pytest.mark.parametrize("dtype, nan_row", [(torch.bfloat16, False), (torch.float16, False), (torch.float64, True)],
                         ids=["bfloat16", "float16", "float64-with-nan"])
def test_changes_are_seen_in_any_precision_and_beside_nan(grad, checkpoints, dtype, nan_row):
    def build(mode, c):
        lin = nn.Linear(16, 16).to(dtype)
        shift = {"value": torch.zeros(16, dtype=dtype)}
        y0 = torch.randn(8, 16, dtype=dtype)
        if nan_row:
            y0[0] = float("nan")
        y = odeint(lambda t, y: torch.tanh(lin(y) + shift["value"]), y0.requires_grad_(True), steps=3, grad=grad_mode_named(mode,
                   checkpoints=c))
        shift["value"] = torch.full((16,), 1.0, dtype=dtype)
        return y.nan_to_num()

    refused(build, grad, checkpoints)


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_inputs_that_are_views_and_inputs_made_to_require_grad(grad, checkpoints):
    def run(mode, c):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        h0 = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
        e = torch.randn(5, 3, dtype=torch.float64)

        def cnf(t, s):  # the continuous-normalizing-flow idiom: divergence by autograd inside
            with torch.enable_grad():
                s.requires_grad_(True)
                dz = net(s[:, :3])
                (ds,) = torch.autograd.grad(dz, s, e, create_graph=True)
                divergence = (ds[:, :3] * e).sum(1, keepdim=True)
            return torch.cat([dz, -divergence], 1)

        data = torch.cat([torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64),
                          torch.zeros(5, 1, dtype=torch.float64)], 1)
        out = odeint(cnf, data, steps=2, grad=grad_mode_named(mode, checkpoints=c))  # data requires no grad
        hidden = odeint(lambda t, h: torch.tanh(h), h0.expand(5, -1), steps=2, grad=grad_mode_named(mode, checkpoints=c))
        (out.square().sum() + hidden.sum()).backward()
        return [h0.grad, *(p.grad for p in net.parameters())]

    assert_same(run(grad, checkpoints), run("direct", None))


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_fresh_leaf_kept_alive_by_a_graph_made_inside_func(grad, checkpoints):
    def run(mode, c):
        torch.manual_seed(0)
        energy = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()

        def func(t, y):
            with torch.enable_grad():
                q = y.detach().requires_grad_(True)
                (dh,) = torch.autograd.grad(energy(q).sum(), q, create_graph=True)
            return dh + 0.1 * y

        y0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
        odeint(func, y0, steps=3, grad=grad_mode_named(mode, checkpoints=c)).square().sum().backward()
        return [y0.grad, *(p.grad for p in energy.parameters())]

    assert_same(run(grad, checkpoints), run("direct", None))


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_caller_hooks_that_copy_during_backward(grad, checkpoints):
    def run(mode, c):
        torch.manual_seed(0)
        lin = nn.Linear(4, 4).double()
        x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
            odeint(lambda t, y: torch.tanh(lin(y)), x, steps=4, grad=grad_mode_named(mode, checkpoints=c)).square().sum().backward()
        return [x.grad, lin.weight.grad]

    assert_same(run(grad, checkpoints), run("direct", None))


class SharedStatistics(nn.Module):
    """Two BatchNorm layers that share their running statistics; the second in eval mode."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.a, self.b = nn.BatchNorm1d(4), nn.BatchNorm1d(4)
        self.b.running_mean, self.b.running_var = self.a.running_mean, self.a.running_var
        self.b.eval()

    def forward(self, t, y):
        return torch.tanh(self.b(self.a(self.lin(y))))


class FunctionalBuffers(nn.Module):
    """Calls its BatchNorm through torch.func.functional_call with the module's own buffers."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.norm = nn.BatchNorm1d(4)

    def forward(self, t, y):
        state = {**dict(self.norm.named_parameters()), **dict(self.norm.named_buffers())}
        return torch.tanh(torch.func.functional_call(self.norm, state, (self.lin(y),)))


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
@pytest.mark.parametrize("make", [SharedStatistics, FunctionalBuffers], ids=["shared", "functional-call"])
def test_buffers_shared_or_passed_explicitly(grad, checkpoints, make):
    assert_same(run_module(make, grad, checkpoints), run_module(make, "direct", None))


@pytest.mark.parametrize("grad", ["anode", "revolve"])
def test_torch_func_inside_func_is_explained(grad):
    lin = nn.Linear(3, 3)
    func = lambda t, y: torch.func.grad(lambda v: lin(v).sum())(y)  # noqa: E731
    with pytest.raises(RuntimeError, match="saved-tensor hooks, which func cannot run under .*grad='direct'"):
        odeint(func, torch.randn(3, requires_grad=True), steps=2, grad=grad)


class _PartlyWrittenWorkspace(torch.autograd.Function):
    """Doubles x and saves a workspace it writes only in part, as oneDNN's LSTM, rrelu
    and ctc_loss do: its other bytes differ between identical calls."""

    @staticmethod
    def forward(ctx, x):
        workspace = torch.empty(1000, dtype=x.dtype)
        workspace[: x.numel()] = x.detach().reshape(-1)
        ctx.save_for_backward(workspace)
        ctx.shape = x.shape
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        (workspace,) = ctx.saved_tensors
        return grad * 2 + 0 * workspace[: grad.numel()].reshape(ctx.shape)


@pytest.mark.parametrize("mode, c", MODES, ids=IDS)
def test_saved_workspaces_with_unwritten_bytes_are_accepted(mode, c):
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    expected = torch.autograd.grad(odeint(lambda t, y: torch.tanh(_PartlyWrittenWorkspace.apply(y)), x, steps=2,
                                          grad="direct").sum(), x)[0]
    for fill in range(5):
        junk = torch.full((1000,), float(fill), dtype=torch.float64)  # other bytes where the workspace goes
        del junk
        out = odeint(lambda t, y: torch.tanh(_PartlyWrittenWorkspace.apply(y)), x, steps=2,
                     grad=grad_mode_named(mode, checkpoints=c))
        torch.testing.assert_close(torch.autograd.grad(out.sum(), x)[0], expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode, c", MODES, ids=IDS)
def test_backend_switches_set_around_the_forward_alone_are_replayed(mode, c):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    lin = nn.Linear(8, 24).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)

    def attention(t, y):
        q, k, v = lin(y).view(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 5, 8)

    grads = {}
    for name, grad in (("direct", "direct"), ("mode", grad_mode_named(mode, checkpoints=c))):
        with sdpa_kernel(SDPBackend.MATH), torch.backends.mkldnn.flags(enabled=False):
            out = odeint(attention, x, steps=2, method="midpoint", grad=grad)
        grads[name] = torch.autograd.grad(out.sum(), [x, lin.weight])
    assert torch.backends.cuda.flash_sdp_enabled() and torch._C._get_mkldnn_enabled()  # the caller's, back
    for a, b in zip(grads["mode"], grads["direct"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode, c", MODES, ids=IDS)
def test_nested_tensors_inside_func(mode, c):
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)

    def func(t, y):
        nested = torch.nested.as_nested_tensor([y[:2], y[2:]])
        scaled = nested * torch.nested.as_nested_tensor([w.expand(2, 4), w.expand(3, 4)])
        return torch.tanh(torch.cat(scaled.unbind(), 0))

    expected = torch.autograd.grad(odeint(func, x, steps=2, grad="direct").sum(), [x, w])
    got = torch.autograd.grad(odeint(func, x, steps=2, grad=grad_mode_named(mode, checkpoints=c)).sum(), [x, w])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
@pytest.mark.parametrize("cause", ["attribute", "generator"])
def test_coupled_blocks_refuse_a_recompute_that_differs(grad, checkpoints, cause):
    """A coupled block's check fingerprints the state only (its weights come from the
    deterministic fused kernel); a func whose recompute differs is still refused."""

    class Drifting(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.condition = torch.zeros(4)
            self.generator = torch.Generator().manual_seed(0)

        def forward(self, t, y):
            noise = torch.rand(y.shape, generator=self.generator) if cause == "generator" else 1.0
            return torch.tanh(self.lin(y) + self.condition) * noise

    def build(mode, c):
        block = CoupledODEBlock(Drifting(), steps=3, grad=grad_mode_named(mode, checkpoints=c))
        y = block(torch.randn(3, 4, requires_grad=True))
        block.func.condition = torch.ones(4)
        return y

    refused(build, grad, checkpoints)


class PlainStatistics(nn.Module):
    """Running statistics held as plain attributes, not registered as buffers."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4).double()
        self.running_mean, self.running_var = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)

    def forward(self, t, y):
        return torch.tanh(F.batch_norm(self.lin(y), self.running_mean, self.running_var, training=True))


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_statistics_in_buffers_are_replayed_and_gradients_right_without(grad, checkpoints):
    # Running statistics registered as buffers end as under direct; held as plain
    # attributes they are changed again by the recompute (README, "What cannot be
    # recomputed faithfully"), but the gradient is right either way.
    def run(mode, c, registered):
        torch.manual_seed(0)
        func = PlainStatistics()
        if registered:
            mean, var = func.running_mean, func.running_var
            del func.running_mean, func.running_var
            func.register_buffer("running_mean", mean)
            func.register_buffer("running_var", var)
        x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
        odeint(func, x, steps=3, grad=grad_mode_named(mode, checkpoints=c)).sum().backward()
        return [x.grad, *(p.grad for p in func.parameters())], func.running_mean.clone()

    for registered in (True, False):
        (grads, mean), (expected_grads, expected_mean) = run(grad, checkpoints, registered), run("direct", None, registered)
        assert_same(grads, expected_grads)
        if registered:
            assert torch.equal(mean, expected_mean)


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_view_of_a_module_buffer_held_by_func_is_refused_by_the_recompute(grad, checkpoints):
    # The module's buffer is replayed as an object swapped in, which a view taken before
    # the solve does not follow: the recompute reads other values and says so.
    lin, norm = nn.Linear(4, 4).double(), nn.BatchNorm1d(4).double()
    head = norm.running_mean[:2]

    def func(t, y):
        return torch.tanh(norm(lin(y))) * (1.0 + head.sum())

    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    y = odeint(func, x, steps=3, grad=grad_mode_named(grad, checkpoints=checkpoints))
    with pytest.raises(RuntimeError, match="did not repeat the forward"):
        y.sum().backward()


class DataDependentInit(nn.Module):
    """Fills its parameters from the first batch it sees (as Glow's ActNorm does)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4).double()
        self.bias = nn.Parameter(torch.zeros(4, dtype=torch.float64))
        self.initialized = False

    def forward(self, t, y):
        h = self.lin(y)
        if not self.initialized:
            with torch.no_grad():
                self.bias.copy_(-h.mean(0))
            self.initialized = True
        return torch.tanh(h + self.bias)


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
@pytest.mark.parametrize("case", ["lazy-module", "data-dependent-init", "sparse-constant", "inference-constant"])
def test_parameters_filled_in_forward_and_unusual_constants(grad, checkpoints, case):
    # Parameters filled once during the forward (by a lazy module, by a data-dependent
    # initialisation), sparse and inference-mode constants: as under direct.
    def run(mode, c):
        torch.manual_seed(0)
        lin = nn.Linear(4, 4).double()
        if case == "lazy-module":
            lazy = nn.LazyLinear(4, dtype=torch.float64)
            func, params = (lambda t, y: torch.tanh(lazy(y))), lambda: list(lazy.parameters())
        elif case == "data-dependent-init":
            module = DataDependentInit()
            func, params = module, lambda: list(module.parameters())
        elif case == "sparse-constant":
            mix = torch.eye(8, dtype=torch.float64).to_sparse()
            func, params = (lambda t, y: torch.tanh(lin(torch.sparse.mm(mix, y)))), lambda: list(lin.parameters())
        else:
            with torch.inference_mode():
                shift = torch.ones(4, dtype=torch.float64)  # added only: autograd saves nothing of it
            func, params = (lambda t, y: torch.tanh(lin(y) + shift)), lambda: list(lin.parameters())
        x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
        odeint(func, x, steps=3, grad=grad_mode_named(mode, checkpoints=c)).sum().backward()
        return [x.grad, *(p.grad for p in params()), *(p.detach() for p in params())]

    assert_same(run(grad, checkpoints), run("direct", None))
