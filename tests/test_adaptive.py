"""Adaptive step sizes: embedded pairs, the step-size controller, output times, and exact
gradients under the recompute modes."""

import math

import pytest
import torch
from odefuncs import all_grads, make_func
from testing import relative_error
from torch import nn

from anode_ext import (
    PAIRS, Adaptive, EmbeddedTableau, ODEBlock, Revolve, SolverStats, Tableau, get_pair, odeint,
)
from anode_ext.adaptive import attempt, error_ratio
from anode_ext.bench.memory import count_saved_bytes

TOLERANCE = 1e-10
A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)
Y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)


def linear(t, y):
    return y @ A.T


def exact(t):
    return torch.linalg.matrix_exp(A * t) @ Y0


def fixed_step_error(tableau, steps, t1=2.0):
    return float((odeint(linear, Y0, 0.0, t1, steps=steps, method=tableau, grad="direct") - exact(t1)).norm())


def observed_order(tableau):
    return math.log2(fixed_step_error(tableau, 32) / fixed_step_error(tableau, 64))


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_each_pair_and_its_embedded_method_have_their_orders(name):
    pair = PAIRS[name]
    assert observed_order(pair.tableau) == pytest.approx(pair.order, abs=0.3)
    t = pair.tableau
    embedded = Tableau(t.a, [b - e for b, e in zip(t.b, pair.error)], t.c)
    assert observed_order(embedded) == pytest.approx(pair.error_order, abs=0.3)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_the_local_error_estimate_has_the_embedded_order(name):
    # The estimate of one step from y0 shrinks like h^(error_order + 1).
    pair = PAIRS[name]

    unit = Adaptive(pair, rtol=0.0, atol=1.0)

    def estimate(h):
        y1, ks = attempt(lambda t, state: (linear(t, state[0]),), pair, 0.0, h, (Y0,), (linear(0.0, Y0),))
        return error_ratio(pair, unit, h, (Y0,), y1, ks)

    assert math.log2(estimate(0.1) / estimate(0.05)) == pytest.approx(pair.error_order + 1, abs=0.35)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_global_error_falls_with_rtol(name):
    errors = []
    for rtol in (1e-3, 1e-5, 1e-7, 1e-9):
        y = odeint(linear, Y0, 0.0, 2.0, method=name, rtol=rtol, atol=rtol * 1e-2)
        errors.append(float((y - exact(2.0)).norm()))
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 1e-7


def test_fsal_pairs_evaluate_stages_minus_one_per_step():
    for name, pair in PAIRS.items():
        assert pair.fsal, name
        stats = SolverStats()
        odeint(linear, Y0, 0.0, 2.0, method=name, rtol=1e-6, atol=1e-8, stats=stats)
        assert stats.accepted > 3
        # func at t0, the initial-step probe, then s - 1 per attempt
        assert stats.evaluations == 2 + (pair.stages - 1) * (stats.accepted + stats.rejected)


def test_a_pair_without_fsal_reuses_func_at_the_step_start_after_a_rejection():
    heun_euler = EmbeddedTableau([[], [1.0]], [0.5, 0.5], [-0.5, 0.5], order=2, name="heun_euler")
    assert not heun_euler.fsal
    stats = SolverStats()
    y = odeint(linear, Y0, 0.0, 2.0, method=Adaptive(heun_euler, rtol=1e-6, atol=1e-8, first_step=1.0), stats=stats)
    assert stats.rejected > 0
    assert float((y - exact(2.0)).norm()) < 1e-4
    # func at each step start (not at t1), the second stage of every attempt
    assert stats.evaluations == stats.accepted + (stats.accepted + stats.rejected)


def van_der_pol(t, y, mu=10.0):
    return torch.stack([y[..., 1], mu * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], -1)


def test_rejected_steps_are_handled_on_a_stiffish_problem():
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    reference = odeint(van_der_pol, y0, 0.0, 10.0, method="dopri5", rtol=1e-12, atol=1e-12)
    stats = SolverStats()
    y = odeint(van_der_pol, y0, 0.0, 10.0, method="dopri5", rtol=1e-6, atol=1e-8, stats=stats)
    assert stats.rejected > 0
    assert float((y - reference).norm()) < 1e-3


@pytest.mark.parametrize("controller", ["pi", "i"])
def test_both_controllers_meet_the_tolerance(controller):
    stats = SolverStats()
    y = odeint(linear, Y0, 0.0, 2.0, method=Adaptive("dopri5", rtol=1e-8, atol=1e-10, controller=controller),
               stats=stats)
    assert float((y - exact(2.0)).norm()) < 1e-6
    assert stats.accepted > 5


def test_max_steps_raises_naming_the_time_reached():
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"max_steps=20 .*reached t="):
        odeint(van_der_pol, y0, 0.0, 6.0, method=Adaptive("dopri5", rtol=1e-8, max_steps=20))


def test_a_func_that_returns_nan_ends_in_a_step_size_underflow_error():
    def blows_up(t, y):
        return y * float("nan") if t > 0.3 else -y

    with pytest.raises(RuntimeError, match="step size became .* at t=0.3"):
        odeint(blows_up, Y0, 0.0, 1.0, method="dopri5")


def test_max_sample_norm_takes_smaller_steps_for_one_hard_sample():
    def scaled(t, y):
        return y * torch.tensor([[-1.0], [-40.0]] + [[-1.0]] * 30, dtype=y.dtype)

    y0 = torch.ones(32, 1, dtype=torch.float64)
    counts = {}
    for norm in ("rms", "max_sample"):
        stats = SolverStats()
        odeint(scaled, y0, 0.0, 1.0, method=Adaptive("dopri5", rtol=1e-6, atol=1e-8, norm=norm), stats=stats)
        counts[norm] = stats.accepted
    assert counts["max_sample"] > counts["rms"]


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_output_times_in_either_direction(direction):
    t = torch.tensor([0.0, 0.3, 0.35, 1.2, 2.0], dtype=torch.float64) * direction
    y = odeint(linear, Y0, t=t, method="dopri5", rtol=1e-9, atol=1e-11)
    assert y.shape == (5, 2)
    torch.testing.assert_close(y[0], Y0, rtol=0, atol=0)
    for i, ti in enumerate(t):
        assert float((y[i] - exact(float(ti))).norm()) < 1e-7


def test_output_times_land_on_each_time_and_continue_the_step_size():
    stats_one, stats_many = SolverStats(), SolverStats()
    odeint(linear, Y0, 0.0, 2.0, method="dopri5", rtol=1e-7, stats=stats_one)
    odeint(linear, Y0, t=torch.linspace(0, 2, 5), method="dopri5", rtol=1e-7, stats=stats_many)
    # Landing on three more times costs at most a few steps each, and no second probe.
    assert stats_one.accepted <= stats_many.accepted <= stats_one.accepted + 3 * 3
    assert stats_many.evaluations == 2 + 6 * (stats_many.accepted + stats_many.rejected)


# --- gradients -----------------------------------------------------------------------

def gradients(kind, method, grad, t=None):
    func, x = make_func(kind)
    func.train()
    torch.manual_seed(3)
    stats = SolverStats()
    if t is None:
        y = odeint(func, x, 0.0, 0.8, method=method, grad=grad, stats=stats)
    else:
        y = odeint(func, x, t=t, method=method, grad=grad, stats=stats)
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    (y * weight).sum().backward()
    return y.detach(), all_grads(func, x), [b.clone() for b in func.buffers()], torch.get_rng_state(), stats


def assert_same(got, expected):
    y, grads, buffers, rng, stats = got
    torch.testing.assert_close(y, expected[0], rtol=0, atol=0)
    for i, (g, e) in enumerate(zip(grads, expected[1])):
        assert e.abs().max() > 0, f"gradient {i} of the reference is zero; the test would prove nothing"
        assert relative_error(g, e) <= TOLERANCE, f"gradient {i}: relative error {relative_error(g, e):.3g}"
    for b, e in zip(buffers, expected[2]):
        torch.testing.assert_close(b, e, rtol=0, atol=0)
    assert torch.equal(rng, expected[3])
    assert stats == expected[4]


MODES = ["anode", Revolve(checkpoints=1), Revolve(checkpoints=3), "revolve"]


@pytest.mark.parametrize("grad", MODES, ids=str)
@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("kind", ["mlp", "conv_bn"])
def test_recompute_modes_equal_direct(kind, name, grad):
    method = Adaptive(name, rtol=1e-5, atol=1e-7)
    expected = gradients(kind, method, "direct")
    assert expected[4].accepted > 1
    assert_same(gradients(kind, method, grad), expected)


@pytest.mark.parametrize("grad", MODES, ids=str)
def test_recompute_modes_equal_direct_with_rejections_and_output_times(grad):
    # A first step far too large is rejected; output times split the solve.
    method = Adaptive("dopri5", rtol=1e-6, atol=1e-8, first_step=5.0)
    t = torch.tensor([0.0, 0.5, 0.6, 1.4])
    expected = gradients("conv_bn", method, "direct", t)
    assert expected[4].rejected > 0
    assert_same(gradients("conv_bn", method, grad, t), expected)


class NoisyDropout(nn.Module):
    """A func that draws random numbers at every evaluation (small enough not to upset the
    step-size control) and updates BatchNorm statistics."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1).double()
        self.bn = nn.BatchNorm2d(3).double()

    def forward(self, t, y):
        return torch.tanh(self.bn(self.conv(y))) + 1e-9 * torch.randn_like(y)


@pytest.mark.parametrize("grad", MODES, ids=str)
def test_random_draws_and_buffers_replay_through_rejected_attempts(grad):
    def run(mode):
        torch.manual_seed(0)
        func = NoisyDropout()
        x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
        stats = SolverStats()
        y = odeint(func, x, 0.0, 1.0, method=Adaptive("tsit5", rtol=1e-6, first_step=2.0), grad=mode, stats=stats)
        y.square().sum().backward()
        return y.detach(), all_grads(func, x), [b.clone() for b in func.buffers()], torch.get_rng_state(), stats

    expected = run("direct")
    assert expected[4].rejected > 0
    assert_same(run(grad), expected)


@pytest.mark.parametrize("grad", MODES, ids=str)
def test_hooks_fire_as_under_direct_and_captured_tensors_get_their_gradient(grad):
    def run(mode):
        func, x = make_func("mlp")
        leaf = torch.full((4,), 0.5, dtype=torch.float64, requires_grad=True)
        scale = leaf * 2  # computed outside the solve, captured by the closure
        calls = []
        scale.register_hook(lambda g: calls.append("scale"))
        x.register_hook(lambda g: calls.append("x"))
        y = odeint(lambda t, y: func(t, y) * scale, x, method=Adaptive("bosh3", rtol=1e-6, first_step=2.0), grad=mode)
        y.sum().backward()
        return calls, leaf.grad, x.grad

    expected = run("direct")
    got = run(grad)
    assert sorted(got[0]) == sorted(expected[0]) == ["scale", "x"]  # once each; the order is the engine's
    assert relative_error(got[1], expected[1]) <= TOLERANCE and relative_error(got[2], expected[2]) <= TOLERANCE


def run_closure(grad, make_func_and_loss, method=None):
    """Output, gradients of every tensor the closure's maker returns, and its extra state,
    for a func with side effects."""
    torch.manual_seed(0)
    func, y0, leaves, loss_of = make_func_and_loss()
    method = method or Adaptive("dopri5", rtol=1e-6, atol=1e-8, first_step=0.5)
    y = odeint(func, y0, method=method, grad=grad)
    loss = loss_of(y)
    grads = torch.autograd.grad(loss, leaves)
    return y.detach(), grads, float(loss.detach())


def assert_closure_like_direct(grad, maker, method=None):
    expected = run_closure("direct", maker, method)
    got = run_closure(grad, maker, method)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    assert got[2] == expected[2]
    for g, e in zip(got[1], expected[1]):
        assert relative_error(g, e) <= TOLERANCE


@pytest.mark.parametrize("grad", MODES, ids=str)
def test_hooks_registered_inside_func_act_as_under_direct(grad):
    def maker():
        lin = nn.Linear(3, 3).double()

        def func(t, y):
            lin.bias.register_hook(lambda g: g * 1.01)
            return torch.tanh(lin(y)) - y

        return func, torch.randn(4, 3, dtype=torch.float64, requires_grad=True), [lin.bias, lin.weight], \
            lambda y: y.square().sum()

    assert_closure_like_direct(grad, maker)


@pytest.mark.parametrize("grad", MODES, ids=str)
def test_a_per_evaluation_regulariser_counts_each_evaluation_once(grad):
    def maker():
        lin = nn.Linear(3, 3).double()
        terms = []

        def func(t, y):
            dy = torch.tanh(lin(y))
            terms.append(dy.square().mean())
            return dy

        return func, torch.randn(4, 3, dtype=torch.float64, requires_grad=True), [lin.weight], \
            lambda y: y.square().sum() + 1e-3 * len(terms)

    assert_closure_like_direct(grad, maker)


@pytest.mark.parametrize("grad", MODES, ids=str)
def test_a_func_that_differentiates_inside_itself(grad):
    def maker():
        lin = nn.Linear(2, 1).double()

        def func(t, y):  # a Hamiltonian flow: (dH/dp, -dH/dq)
            with torch.enable_grad():
                energy = lin(torch.tanh(y)).sum() + 0.5 * y.square().sum()
                d = torch.autograd.grad(energy, y, create_graph=True)[0]
            return torch.stack([d[..., 1], -d[..., 0]], -1)

        return func, torch.randn(3, 2, dtype=torch.float64, requires_grad=True), [lin.weight], \
            lambda y: y.square().sum()

    for method in (Adaptive("dopri5", rtol=1e-6, atol=1e-8), Adaptive("dopri5", rtol=1e-6, first_step=0.1)):
        assert_closure_like_direct(grad, maker, method)


@pytest.mark.parametrize("grad", MODES, ids=str)
def test_context_computed_at_funcs_first_call_is_refused_not_lost(grad):
    enc = nn.Linear(3, 3).double()
    cache = {}

    def func(t, y):
        if "ctx" not in cache:
            cache["ctx"] = enc(torch.ones(2, 3, dtype=torch.float64))
        return -y + cache["ctx"]

    y = odeint(func, torch.zeros(2, 3, dtype=torch.float64, requires_grad=True), method="dopri5", grad=grad)
    with pytest.raises(RuntimeError, match="did not repeat the forward"):
        y.sum().backward()


@pytest.mark.parametrize("grad", MODES, ids=str)
def test_inside_activation_checkpointing_and_inside_another_solve(grad):
    from torch.utils.checkpoint import checkpoint

    def run(mode, outer):
        func, x = make_func("mlp")
        inner = lambda t, y: odeint(func, y, 0.0, 0.1, method="bosh3", rtol=1e-6, grad=mode)  # noqa: E731
        if outer == "checkpoint":
            y = checkpoint(lambda z: odeint(func, z, method="dopri5", rtol=1e-6, grad=mode), x, use_reentrant=False)
        else:
            y = odeint(inner, x, steps=2, method="rk4", grad=outer)
        y.square().sum().backward()
        return all_grads(func, x)

    for outer in ("checkpoint", "anode", "revolve"):
        expected = run("direct", outer if outer == "checkpoint" else "direct")
        for g, e in zip(run(grad, outer), expected):
            assert relative_error(g, e) <= TOLERANCE


@pytest.mark.parametrize("grad", MODES, ids=str)
def test_the_callers_saved_tensor_hooks_are_not_called_from_backward(grad):
    func, x = make_func("mlp")
    calls = {"forward": 0, "backward": 0}
    phase = ["forward"]

    def pack(t):
        calls[phase[0]] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = odeint(func, x, method=Adaptive("dopri5", rtol=1e-7), grad=grad)
    phase[0] = "backward"
    y.sum().backward()
    assert calls["forward"] > 0 and calls["backward"] == 0


def test_adjoint_with_atol_zero_is_refused_in_the_forward():
    func, x = make_func("mlp")
    with pytest.raises(ValueError, match="needs atol > 0"):
        odeint(func, x + 1, method=Adaptive("dopri5", rtol=1e-6, atol=0.0), grad="adjoint")


def test_coupled_block_steps_adaptively_with_either_norm_and_any_batch():
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1).double()

        def forward(self, t, x):
            return torch.tanh(self.conv(x))

    from anode_ext import CoupledODEBlock
    for norm in ("rms", "max_sample"):
        block = CoupledODEBlock(Branch(), method=Adaptive("dopri5", rtol=1e-5, norm=norm,
                                                          atol=torch.full((2, 4, 4), 1e-6, dtype=torch.float64)))
        for batch in (1, 2, 3):
            assert block(torch.randn(batch, 2, 4, 4, dtype=torch.float64)).shape == (batch, 2, 4, 4)
    uncoupled = CoupledODEBlock(Branch(), method="dopri5", q="none")
    assert uncoupled(torch.randn(2, 2, 4, 4, dtype=torch.float64)).shape == (2, 2, 4, 4)


def test_a_long_adjoint_solve_does_not_overflow_the_stack():
    # Recorded whole, the forward's graph of ~20,000 steps overflowed the stack when freed.
    code = (
        "import torch\nfrom anode_ext import odeint\n"
        "p = torch.tensor(4.0, requires_grad=True)\n"
        "y0 = torch.tensor([1.0, 0.0], requires_grad=True)\n"
        "y = odeint(lambda t, y: torch.stack([y[1], -p * y[0]]), y0, 0.0, 200.0, steps=20000, method='heun', "
        "grad='adjoint')\n"
        "y.sum().backward()\nprint('ok', bool(torch.isfinite(p.grad)))\n"
    )
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "ok True" in done.stdout, done.stderr[-2000:]


def test_adjoint_under_autocast_with_output_times():
    func, x = make_func("mlp", dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = odeint(func, x, t=torch.tensor([0.0, 0.3, 0.6]), method="bosh3", rtol=1e-3, grad="adjoint")
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in func.parameters())


def test_adjoint_with_a_tensor_tolerance():
    func, x = make_func("mlp")
    method = Adaptive("dopri5", rtol=torch.full((3, 4), 1e-7, dtype=torch.float64), atol=1e-9)
    grads = {}
    for grad in ("adjoint", "direct"):
        func.zero_grad()
        x.grad = None
        odeint(func, x, method=method, grad=grad).square().sum().backward()
        grads[grad] = all_grads(func, x)
    for a, d in zip(grads["adjoint"], grads["direct"]):
        assert relative_error(a, d) < 1e-4


@pytest.mark.parametrize("y0, options, message", [
    (torch.tensor([1.0, float("nan")], dtype=torch.float64), {}, "first step cannot be chosen"),
    (torch.tensor([float("inf"), 1.0], dtype=torch.float64), {}, "first step cannot be chosen"),
    (torch.zeros(2, dtype=torch.float64), {"atol": 0.0, "rtol": 1e-3}, "first step cannot be chosen"),
])
def test_a_first_step_that_cannot_be_chosen_is_an_immediate_error(y0, options, message):
    calls = []

    def func(t, y):
        calls.append(t)
        return -y

    with pytest.raises(RuntimeError, match=message):
        odeint(func, y0, method=Adaptive("dopri5", **options))
    assert len(calls) == 1 and all(math.isfinite(t) for t in calls)


@pytest.mark.parametrize("options, message", [
    ({"rtol": torch.full((2,), 1e-3)}, "rtol has shape \\(2,\\), which does not broadcast"),
    ({"atol": torch.ones(1, 1, 3)}, "atol has shape"),
    ({"rtol": 0.0, "atol": torch.tensor([1e-3, 0.0, 1e-3])}, "both zero for some elements"),
    ({"rtol": 1e300}, "beyond the largest"),
])
def test_tolerances_that_do_not_fit_the_state_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        odeint(lambda t, y: -y, torch.ones(4, 3), method=Adaptive("dopri5", **options))


def test_an_empty_batch_with_the_per_sample_norm():
    y = odeint(lambda t, y: -y, torch.ones(0, 3), method=Adaptive("dopri5", norm="max_sample"))
    assert y.shape == (0, 3)


def test_max_steps_bounds_the_whole_call_and_stats_count_a_failed_solve():
    stats = SolverStats()
    with pytest.raises(RuntimeError, match="max_steps=10 attempted steps"):
        odeint(linear, Y0, t=torch.linspace(0, 5, 51), method=Adaptive("dopri5", max_steps=10), stats=stats)
    assert stats.accepted + stats.rejected == 10 and stats.evaluations > 0


def test_stats_report_the_first_step_of_the_call():
    one, many = SolverStats(), SolverStats()
    odeint(linear, Y0, 0.0, 2.0, method="dopri5", stats=one)
    odeint(linear, Y0, t=torch.linspace(0, 2, 5), method="dopri5", stats=many)
    assert one.initial_step == many.initial_step


def test_blocks_refuse_what_an_adaptive_method_cannot_use():
    with pytest.raises(ValueError, match="steps=3 does not apply"):
        ODEBlock(lambda t, y: -y, method="dopri5", steps=3)
    block = ODEBlock(lambda t, y: -y, method="dopri5")
    with pytest.raises(ValueError, match="steps=2 does not apply"):
        block.steps = 2
    with pytest.raises(ValueError, match="do not require grad"):
        ODEBlock(lambda t, y: -y, method="tsit5", t1=nn.Parameter(torch.tensor(1.0)))
    assert "steps" not in repr(block)
    assert Adaptive("dopri5", rtol=1e-3) == Adaptive("dopri5", rtol=1e-3) != Adaptive("dopri5")


def test_anode_saves_the_same_bytes_whatever_the_number_of_accepted_steps():
    func, x = make_func("mlp")
    saved = {}
    for grad in ("anode", "direct"):
        for rtol in (1e-3, 1e-9):
            stats = SolverStats()
            with count_saved_bytes(exclude=list(func.parameters())) as counter:
                y = odeint(func, x, 0.0, 1.0, method="dopri5", rtol=rtol, atol=rtol, grad=grad, stats=stats)
            saved[grad, rtol] = (counter.total, stats.accepted)
            del y
    assert saved["anode", 1e-9][1] > 3 * saved["anode", 1e-3][1]
    assert saved["anode", 1e-9][0] == saved["anode", 1e-3][0]
    assert saved["direct", 1e-9][0] > 3 * saved["direct", 1e-3][0]


def test_anode_lets_go_of_what_rejected_attempts_saved():
    func, x = make_func("conv_bn")
    method = Adaptive("dopri5", rtol=1e-6, atol=1e-8, first_step=5.0)
    measured = {}
    for grad in ("direct", "anode"):
        stats = SolverStats()
        with count_saved_bytes(exclude=list(func.parameters())) as counter:
            loss = odeint(func, x, method=method, grad=grad, stats=stats).square().sum()
            after_forward = counter.total
            loss.backward()
        measured[grad] = (after_forward, counter.peak)
    assert stats.rejected > 0
    # anode's backward holds at most what direct holds: the accepted steps' tensors.
    assert 0 < measured["anode"][1] <= measured["direct"][1]
    assert measured["anode"][0] < measured["direct"][0] / 10


def test_a_func_that_keeps_a_rejected_attempts_result_is_refused_by_anode():
    func, x = make_func("mlp")
    kept = []

    def keeping(t, y):
        out = func(t, y)
        kept.append(out)
        return out

    method = Adaptive("dopri5", rtol=1e-6, atol=1e-8, first_step=5.0)
    for grad in ("direct", "anode"):
        kept.clear()
        stats = SolverStats()
        y = odeint(keeping, x, method=method, grad=grad, stats=stats)
        assert stats.rejected > 0
        loss = y.sum() + sum(k.sum() for k in kept)
        if grad == "direct":
            loss.backward()
        else:
            with pytest.raises(RuntimeError, match="rejected step attempt"):
                loss.backward()


def test_odeblock_takes_an_adaptive_method():
    func, x = make_func("mlp")
    expected = gradients("mlp", "dopri5", "direct")
    block = ODEBlock(func, t1=0.8, method=Adaptive("dopri5", rtol=1e-7, atol=1e-9))
    assert "dopri5" in repr(block)
    assert block.tableau is PAIRS["dopri5"].tableau
    torch.manual_seed(3)
    y = block(x)
    torch.testing.assert_close(y.detach(), expected[0], rtol=0, atol=0)


def test_float32_and_no_grad_solves():
    func, x = make_func("mlp", dtype=torch.float32)
    with torch.no_grad():
        y = odeint(func, x, method="tsit5", rtol=1e-4, atol=1e-6)
    assert y.dtype == torch.float32 and y.shape == x.shape
    reference = odeint(func.double(), x.double(), method="tsit5", rtol=1e-10, atol=1e-12)
    assert float((y.double() - reference).abs().max().detach()) < 1e-3


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_adjoint_solves_back_adaptively_to_the_continuous_gradient(name):
    # d|y(T)|^2/dy0 = 2 exp(A^T T) y(T) and d/dA = the integral the adjoint accumulates;
    # at tight tolerances the adjoint approaches the direct solve's gradient.
    matrix = A.clone().requires_grad_()
    y0 = Y0.clone().requires_grad_()
    grads = {}
    for grad in ("adjoint", "direct"):
        y = odeint(lambda t, y: y @ matrix.T, y0, t=torch.tensor([0.0, 0.7, 2.0]), method=name, rtol=1e-10,
                   atol=1e-12, grad=grad)
        grads[grad] = torch.autograd.grad(y[1:].square().sum(), [y0, matrix])
    final = exact(2.0)
    torch.testing.assert_close(grads["adjoint"][0], 2 * (torch.linalg.matrix_exp(A.T * 2.0) @ final +
                                                          torch.linalg.matrix_exp(A.T * 0.7) @ exact(0.7)),
                               rtol=1e-6, atol=0)
    for a, d in zip(*grads.values()):
        torch.testing.assert_close(a, d, rtol=1e-6, atol=0)


def test_adjoint_with_a_per_sample_norm_and_a_module():
    func, x = make_func("mlp")
    method = Adaptive("dopri5", rtol=1e-9, atol=1e-11, norm="max_sample")
    grads = {}
    for grad in ("adjoint", "direct"):
        x.grad = None
        func.zero_grad()
        odeint(func, x, method=method, grad=grad).square().sum().backward()
        grads[grad] = all_grads(func, x)
    for a, d in zip(grads["adjoint"], grads["direct"]):
        assert relative_error(a, d) < 1e-6


# --- bad input -------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"rtol": -1.0}, "rtol must be"),
    ({"rtol": float("nan")}, "rtol must be"),
    ({"rtol": 0.0, "atol": 0.0}, "both zero"),
    ({"atol": torch.tensor([1e-3, -1e-3])}, "atol must be finite and >= 0"),
    ({"atol": torch.ones(2, requires_grad=True)}, "does not require grad"),
    ({"first_step": 0.0}, "first_step must be"),
    ({"max_steps": 0}, "max_steps must be"),
    ({"max_steps": True}, "max_steps must be"),
    ({"controller": "pid"}, "controller must be one of"),
    ({"safety": 1.5}, "safety must be in"),
    ({"min_factor": 2.0}, "min_factor < 1 < max_factor"),
    ({"norm": "max"}, "norm must be one of"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        Adaptive("dopri5", **options)


@pytest.mark.parametrize("kwargs, message", [
    ({"t": torch.tensor([0.0, 1.0, 0.5])}, "strictly increasing or strictly decreasing"),
    ({"t": torch.tensor([0.0])}, "at least two times"),
    ({"t": torch.zeros(2, 2)}, "1-D tensor"),
    ({"t": torch.tensor([0.0, 1.0], requires_grad=True)}, "requires grad"),
    ({"t": torch.tensor([0.0, float("inf")])}, "finite"),
    ({"t": "0, 1"}, "1-D tensor of times"),
    ({"t": torch.tensor([0.0, 1.0]), "t0": 0.0}, "not both"),
    ({"steps": 4}, "chooses its own steps"),
    ({"return_all": True}, "chooses its own steps"),
    ({"t0": 1.0, "t1": 1.0}, "equal"),
    ({"t1": torch.tensor(1.0, requires_grad=True)}, "do not require grad"),
    ({"stats": {}}, "SolverStats"),
    ({"grad": "reversible"}, "needs a reversible method"),
])
def test_bad_solve_arguments_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        odeint(linear, Y0, method="dopri5", **kwargs)


def test_adaptive_options_with_a_fixed_step_method_are_refused():
    with pytest.raises(ValueError, match="adaptive method"):
        odeint(linear, Y0, method="rk4", rtol=1e-3)
    with pytest.raises(ValueError, match="adaptive method"):
        odeint(linear, Y0, method="rk4", t=torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("kwargs, message", [
    ({"error": [1.0]}, "one error weight per stage"),
    ({"error": [0.0, 0.0]}, "every error weight is zero"),
    ({"error": [0.5, float("nan")]}, "error\\[1\\] must be a finite"),
    ({"order": 0}, "order must be an integer"),
    ({"order": 2, "error_order": 3}, "error_order must be in"),
])
def test_bad_embedded_tableaux_are_refused(kwargs, message):
    options = {"a": [[], [1.0]], "b": [0.5, 0.5], "error": [-0.5, 0.5], "order": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        EmbeddedTableau(**options)


def test_unknown_pair_names_are_refused():
    with pytest.raises(ValueError, match="unknown embedded pair"):
        get_pair("dopri8")
    with pytest.raises(ValueError, match="dopri5"):
        odeint(linear, Y0, method="dopri8")
