"""Reversible methods and grad='reversible': exact gradients at memory constant in the steps."""

import math
import os

import pytest
import torch
from odefuncs import ConvBNFunc, all_grads, make_func
from testing import relative_error
from torch import nn

from anode_ext import TABLEAUX, CoupledODEBlock, ODEBlock, Reversible, ReversibleGrad, models, odeint
from anode_ext.bench.memory import count_saved_bytes
from anode_ext.odeint import fixed_step_problem
from anode_ext.reversible import DEFAULT_COUPLING, ReversibleProblem

TOLERANCE = 1e-10
ORDERS = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4, "rk4_38": 4}


def gradients(kind, method, steps, grad, t1=0.7):
    func, x = make_func(kind)
    func.train()
    y = odeint(func, x, 0.0, t1, steps=steps, method=method, grad=grad)
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    (y * weight).sum().backward()
    buffers = [b.clone() for b in func.buffers()]
    return all_grads(func, x), buffers


def assert_same_gradients(got, expected, tolerance=TOLERANCE):
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert e.abs().max() > 0, f"gradient {i} of the reference is zero; the test would prove nothing"
        assert relative_error(g, e) <= tolerance, f"gradient {i}: relative error {relative_error(g, e):.3g}"


# CI runs every Nt up to 16; a local run up to 8.
STEPS = range(1, 17 if os.environ.get("CI") else 9)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("method", sorted(TABLEAUX))
@pytest.mark.parametrize("kind", ["mlp", "conv_bn"])
def test_equals_direct_on_the_same_method(kind, method, steps):
    expected, expected_buffers = gradients(kind, "reversible_" + method, steps, "direct")
    got, buffers = gradients(kind, "reversible_" + method, steps, "reversible")
    assert_same_gradients(got, expected)
    for b, e in zip(buffers, expected_buffers):
        torch.testing.assert_close(b, e, rtol=0, atol=0)


def test_every_mode_gives_the_same_values():
    func, x = make_func("mlp")
    expected = odeint(func, x, 0.25, 1.5, steps=3, method="reversible_rk4", grad="direct", return_all=True)
    assert expected.shape == (4, *x.shape)
    for grad in ("anode", "revolve", "reversible"):
        got = odeint(func, x, 0.25, 1.5, steps=3, method="reversible_rk4", grad=grad, return_all=True)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(odeint(func, x, 0.25, 1.5, steps=3, method="reversible_rk4"), expected[-1])


@pytest.mark.parametrize("grad", ["anode", "revolve"])
def test_recompute_modes_run_reversible_methods(grad):
    expected, _ = gradients("conv_bn", "reversible_midpoint", 5, "direct")
    got, _ = gradients("conv_bn", "reversible_midpoint", 5, grad)
    assert_same_gradients(got, expected)


def test_reversible_method_converges_to_the_base_method_solution():
    func, x = make_func("mlp")
    with torch.no_grad():
        exact = odeint(func, x, steps=400, method="rk4", grad="direct")
        errors = [(odeint(func, x, steps=n, method="reversible_rk4") - exact).abs().max().item() for n in (4, 8)]
    assert errors[1] < errors[0] / 8


@pytest.mark.parametrize("method", sorted(TABLEAUX))
def test_order_of_convergence_on_a_linear_ode(method):
    a = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)
    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    exact = y0 @ torch.linalg.matrix_exp(a).T
    p = ORDERS[method]
    steps = (8, 16, 32) if p < 4 else (4, 8, 16)
    errors = [(odeint(lambda t, y: y @ a.T, y0, steps=n, method="reversible_" + method) - exact).norm().item()
              for n in steps]
    orders = [math.log2(e0 / e1) for e0, e1 in zip(errors, errors[1:])]
    assert abs(orders[-1] - p) < 0.35, f"observed orders {orders}, expected {p}"


def test_reconstruction_returns_the_forward_states():
    func, x = make_func("conv_bn")
    func.eval()
    problem = fixed_step_problem(lambda t, s: (func(t, s[0]),), 0.0, 1.0, 32, Reversible("rk4"))
    with torch.no_grad():
        pairs = [(x.detach(), x.detach())]
        for n in range(32):
            pairs.append(problem.full_step(n, pairs[-1]))
        pair, worst = pairs[-1], 0.0
        for n in range(31, -1, -1):
            pair = problem.inverse(n, pair)
            worst = max(worst, *(relative_error(a, b) for a, b in zip(pair, pairs[n])))
    assert 0 < worst < 1e-13


def saved_and_peak(steps, grad="reversible", method="reversible_rk4"):
    func, x = make_func("mlp", dtype=torch.float32)
    with count_saved_bytes(exclude=func.parameters()) as counter:
        y = odeint(func, x, steps=steps, method=method, grad=grad)
        held = counter.total
        y.sum().backward()
    assert counter.total == 0, "something saved for backward outlived the backward"
    return held, counter.peak, x.numel() * x.element_size()


def test_saved_bytes_do_not_grow_with_steps():
    held_8, peak_8, state = saved_and_peak(8)
    held_512, peak_512, _ = saved_and_peak(512)
    assert held_8 == held_512 == 2 * state, "the final pair, and nothing per step"
    assert peak_8 == peak_512
    # One base step's graph (a one-step direct solve: its last step leaves z alone), plus
    # the final pair, the pair being reconstructed from and the z reconstructed.
    one_base_step, _, _ = saved_and_peak(1, grad="direct")
    assert peak_8 <= one_base_step + 5 * state
    direct_8, _, _ = saved_and_peak(8, grad="direct")
    assert peak_8 < direct_8 / 4


def test_random_numbers_and_hooks_are_replayed():
    def run(grad):
        torch.manual_seed(3)
        func = ConvBNFunc(dropout=0.3).double().train()
        x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
        calls = []
        func.net[0].weight.register_hook(lambda g: calls.append(1))
        torch.manual_seed(4)
        y = odeint(func, x, steps=4, method="reversible_midpoint", grad=grad)
        y.pow(2).sum().backward()
        return all_grads(func, x), len(calls), [b.clone() for b in func.buffers()], torch.get_rng_state()

    expected, expected_calls, expected_buffers, expected_rng = run("direct")
    got, calls, buffers, rng = run("reversible")
    assert_same_gradients(got, expected)
    assert calls == expected_calls == 1
    for b, e in zip(buffers, expected_buffers):
        torch.testing.assert_close(b, e, rtol=0, atol=0)
    assert torch.equal(rng, expected_rng)


def test_learnable_end_time_and_captured_input():
    def run(grad):
        torch.manual_seed(0)
        lin = nn.Linear(3, 3).double()
        x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        t1 = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
        y = odeint(lambda t, z: torch.tanh(lin(z)) * t + x, x, 0.0, t1, steps=6, method="reversible_heun", grad=grad)
        y.pow(2).sum().backward()
        return [x.grad, t1.grad, lin.weight.grad, lin.bias.grad]

    assert_same_gradients(run("reversible"), run("direct"))


def test_return_all_and_in_place_change_of_the_output():
    def run(grad):
        func, x = make_func("mlp")
        ys = odeint(func, x, steps=5, method="reversible_rk4", grad=grad, return_all=True)
        assert ys.shape == (6, *x.shape)
        last = odeint(func, x, steps=3, method="reversible_rk4", grad=grad)
        last.relu_()
        (ys.pow(2).sum() + last.sum()).backward()
        return all_grads(func, x)

    assert_same_gradients(run("reversible"), run("direct"))


def test_coupled_block_and_models_take_reversible_methods():
    def run(grad):
        torch.manual_seed(0)
        func = ConvBNFunc().double()
        block = CoupledODEBlock(func, steps=3, method="reversible_midpoint", grad=grad)
        x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
        block(x).pow(2).sum().backward()
        return all_grads(block, x)

    assert_same_gradients(run("reversible"), run("direct"))
    model = models.create("resnet", num_classes=10, in_channels=1, width=0.25, steps=2,
                          method="reversible_midpoint", grad="reversible", coupled="first")
    out = model(torch.randn(2, 1, 8, 8))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_method_spellings_and_block_repr():
    assert Reversible("rk4") == Reversible(TABLEAUX["rk4"]) == ODEBlock(nn.Identity(), method="reversible_rk4").method
    block = ODEBlock(lambda t, y: -y, method=Reversible("midpoint", coupling=0.5), grad="reversible")
    assert block.tableau == TABLEAUX["midpoint"]
    assert "Reversible('midpoint', coupling=0.5)" in repr(block)
    assert Reversible("euler").coupling == DEFAULT_COUPLING and Reversible("euler").stages == 2


@pytest.mark.parametrize("coupling", [0, -0.5, 1.5, float("nan"), float("inf"), True, "0.5", None])
def test_bad_coupling_is_refused(coupling):
    with pytest.raises(ValueError, match=r"coupling .* in \(0, 1\]"):
        Reversible("rk4", coupling=coupling)


def test_bad_methods_and_modes_are_refused():
    x = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="after 'reversible_' expected one of"):
        odeint(lambda t, y: -y, x, method="reversible_rk7")
    with pytest.raises(ValueError, match="is reversible already"):
        Reversible(Reversible("rk4"))
    with pytest.raises(ValueError, match="needs a reversible method"):
        odeint(lambda t, y: -y, x, method="rk4", grad="reversible")
    with pytest.raises(ValueError, match="needs a reversible method"):
        with torch.no_grad():
            odeint(lambda t, y: -y, x, method="rk4", grad=ReversibleGrad())
    with pytest.raises(ValueError, match="grad='adjoint'"):
        odeint(lambda t, y: -y, x, method="reversible_rk4", grad="adjoint")
    for rtol in (0, -1.0, float("nan"), "1e-3", True):
        with pytest.raises(ValueError, match="rtol must be a positive real number"):
            ReversibleGrad(rtol=rtol)


def test_a_func_that_changes_before_backward_is_refused():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3).double()
            self.scale = 1.0

        def forward(self, t, y):
            return torch.tanh(self.lin(y)) * self.scale

    func = Scaled()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = odeint(func, x, steps=4, method="reversible_rk4", grad="reversible")
    func.scale = 1.5
    with pytest.raises(RuntimeError, match="reconstructed at step 3 of 4 differs"):
        y.sum().backward()


def test_an_inverse_that_amplifies_rounding_raises_instead_of_a_wrong_gradient():
    func, x = make_func("mlp", dtype=torch.float32)
    method = Reversible("rk4", coupling=0.05)
    y = odeint(func, x, steps=40, method=method, grad="reversible")
    with pytest.raises(RuntimeError, match="amplified rounding"):
        y.sum().backward()
    y = odeint(func, x, steps=40, method=method, grad=ReversibleGrad(rtol=float("inf")))
    y.sum().backward()  # the check turned off: the caller takes the risk
    assert x.grad is not None


def test_problem_pair_layout():
    problem = fixed_step_problem(lambda t, s: tuple(-v for v in s), 0.0, 1.0, 2, Reversible("euler"))
    assert isinstance(problem, ReversibleProblem) and problem.steps == 2
    a, b = torch.ones(2), torch.zeros(3)
    assert problem.split((a, b, a, b)) == ((a, b), (a, b))


def test_a_state_starting_at_zero_is_reconstructed_without_a_false_alarm():
    def run(grad):
        torch.manual_seed(0)
        lin = nn.Linear(3, 3).double()
        x = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
        odeint(lambda t, y: torch.tanh(lin(y)) + 1.0, x, steps=6, method="reversible_rk4", grad=grad).pow(2).sum().backward()
        return [x.grad, lin.weight.grad, lin.bias.grad]

    assert_same_gradients(run("reversible"), run("direct"))


class Hamiltonian(nn.Module):
    """dy/dt from the gradient of a learned energy, taken inside func with a hook on an
    intermediate tensor: func needs grad mode in every evaluation."""

    def __init__(self):
        super().__init__()
        self.energy = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1, bias=False)).double()
        self.hooked = 0

    def forward(self, t, y):
        with torch.enable_grad():
            y = y if y.requires_grad else y.detach().requires_grad_(True)
            h = self.energy(y)
            h.register_hook(self._count)
            (dh,) = torch.autograd.grad(h.sum(), y, create_graph=True)
        return torch.stack([dh[:, 1], -dh[:, 0]], dim=1)

    def _count(self, grad):
        self.hooked += 1
        return grad


def test_a_func_that_differentiates_inside_itself():
    def run(grad):
        torch.manual_seed(0)
        func = Hamiltonian()
        x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
        odeint(func, x, steps=3, method="reversible_midpoint", grad=grad).pow(2).sum().backward()
        assert func.hooked > 0  # the inner differentiation fires it at each evaluation, recomputed ones too
        return all_grads(func, x)

    assert_same_gradients(run("reversible"), run("direct"))


def test_draws_only_where_z_alone_is_stepped_are_replayed():
    def run(grad):
        torch.manual_seed(0)
        lin = nn.Linear(3, 3).double()
        x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        noisy = lambda t, y: torch.tanh(lin(y)) + (0.1 * torch.randn_like(y) if t > 0.99 else 0.0)  # noqa: E731
        y = odeint(noisy, x, steps=4, method="reversible_euler", grad=grad)
        torch.rand(3)  # a draw between forward and backward, which the backward must not see
        y.pow(2).sum().backward()
        return [x.grad, lin.weight.grad], torch.get_rng_state()

    (got, rng), (expected, expected_rng) = run("reversible"), run("direct")
    assert_same_gradients(got, expected)
    assert torch.equal(rng, expected_rng)


def test_buffers_that_do_not_change_are_kept_once():
    import gc

    from anode_ext.modes.reconstruct import ReconstructingSolve

    class WithBuffers(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3).double()
            self.norm = nn.BatchNorm1d(3).double()
            self.register_buffer("table", torch.ones(256, 256, dtype=torch.float64))

        def forward(self, t, y):
            return torch.tanh(self.norm(self.lin(y))) * self.table[0, 0]

    func = WithBuffers()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = odeint(func, x, steps=32, method="reversible_euler", grad="reversible")
    (solve,) = [o for o in gc.get_objects() if type(o) is ReconstructingSolve]
    copies = {key: {half.buffers[key].data_ptr() for step in solve.halves for half in step}
              for key in solve.halves[0][0].buffers}
    sizes = {solve.modules.buffers[key][1]: len(ptrs) for key, ptrs in copies.items()}
    assert sizes["table"] == 1, "an unchanged buffer is held once"
    # 2 halves per step, but the last step's base step back is skipped (z_N is not needed)
    assert sizes["running_mean"] == 2 * 32 - 1, "BatchNorm's statistics change at every evaluation"
    y.sum().backward()


def test_errors_of_funcs_that_cannot_run_under_the_hooks_and_of_modes_without_grad():
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    lin = nn.Linear(2, 2).double()

    def with_jacobian(t, y):
        return torch.func.vmap(torch.func.jacrev(lin))(y).sum(-1)

    with pytest.raises(RuntimeError, match="torch.func transforms .* Use grad='direct'"):
        odeint(with_jacobian, x, steps=2, method="reversible_euler", grad="reversible")
    with torch.no_grad(), pytest.raises(ValueError, match="grad='adjoint' solves the continuous adjoint"):
        odeint(lambda t, y: -y, x, method="reversible_rk4", grad="adjoint")
