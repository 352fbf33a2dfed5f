"""odeint's values against a plain-PyTorch Runge–Kutta loop, its options and its errors."""

import inspect

import pytest
import torch
from odefuncs import make_func

from anode_ext import GRAD_MODES, TABLEAUX, CoupledODEBlock, ODEBlock, Revolve, models, odeint
from anode_ext.modes import as_grad_mode, grad_mode_named


def plain_rk(f, y, t0, t1, steps, tableau):
    """Textbook explicit Runge–Kutta written with ordinary tensor arithmetic."""
    h = (t1 - t0) / steps
    states = [y]
    for n in range(steps):
        t = t0 + n * h
        ks = []
        for i in range(tableau.stages):
            stage = y + h * sum(a * k for a, k in zip(tableau.a[i], ks)) if i else y
            ks.append(f(t + tableau.c[i] * h, stage))
        y = y + h * sum(b * k for b, k in zip(tableau.b, ks))
        states.append(y)
    return states


# The modes that take any method; grad="reversible" takes reversible methods only
# (tests/test_reversible.py).
ANY_METHOD_MODES = [name for name in GRAD_MODES if name != "reversible"]


def method_for(grad, method):
    """`method`, or its reversible version for the mode that needs one."""
    return "reversible_" + method if grad == "reversible" else method


@pytest.mark.parametrize("grad", ANY_METHOD_MODES)
@pytest.mark.parametrize("method", sorted(TABLEAUX))
def test_values_match_plain_rk(method, grad):
    func, x = make_func("mlp")
    out = odeint(func, x, 0.25, 1.5, steps=3, method=method, grad=grad)
    expected = plain_rk(func, x, 0.25, 1.5, 3, TABLEAUX[method])[-1]
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("grad", ANY_METHOD_MODES)
def test_return_all(grad):
    func, x = make_func("mlp")
    out = odeint(func, x, steps=4, method="heun", grad=grad, return_all=True)
    expected = torch.stack(plain_rk(func, x, 0.0, 1.0, 4, TABLEAUX["heun"]))
    assert out.shape == (5, *x.shape)
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13)


def test_backward_in_time_inverts_forward_for_smooth_dynamics():
    func, x = make_func("mlp")
    with torch.no_grad():
        y = odeint(func, x, 0.0, 1.0, steps=64, method="rk4")
        back = odeint(func, y, 1.0, 0.0, steps=64, method="rk4")
    torch.testing.assert_close(back, x.detach(), rtol=1e-7, atol=1e-7)


def test_no_graph_without_grad_mode():
    func, x = make_func("mlp")
    with torch.no_grad():
        for grad in GRAD_MODES:
            assert not odeint(func, x, steps=2, method=method_for(grad, "rk4"), grad=grad).requires_grad


@pytest.mark.parametrize("steps", [0, -1, 1.5, True, "2"])
def test_bad_steps(steps):
    func, x = make_func("mlp")
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        odeint(func, x, steps=steps)


def test_entry_points_share_names_defaults_and_keyword_only_options():
    entry_points = (odeint, ODEBlock.__init__, CoupledODEBlock.__init__, models.create)
    shared = ("t0", "t1", "steps", "method", "grad")
    signatures = [inspect.signature(f).parameters for f in entry_points]
    for name in shared:
        assert len({params[name].default for params in signatures[1:]}) == 1, name
        # odeint's None for t0, t1 and steps stands for the blocks' defaults (0, 1 and 1),
        # so that its t= (output times) and an adaptive method can tell them apart from given ones.
        assert signatures[0][name].default in (None, signatures[1][name].default), name
    for params in signatures[1:]:
        assert all(params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in shared)
    # odeint alone takes the times positionally, after func and y0, as torchdiffeq does.
    assert list(signatures[0])[:4] == ["func", "y0", "t0", "t1"]
    func, x = make_func("mlp")
    torch.testing.assert_close(odeint(func, x), odeint(func, x, 0.0, 1.0, steps=1, method="rk4", grad="anode"))


def test_unknown_grad_class_or_name():
    func, x = make_func("mlp")
    with pytest.raises(ValueError, match=r"grad=Revolve is a class; pass an instance, e.g. grad=Revolve\(\)"):
        odeint(func, x, grad=Revolve)
    with pytest.raises(ValueError, match="unknown grad=3"):
        ODEBlock(func, grad=3)
    block = ODEBlock(func)
    block.grad = "revolve"
    assert block.grad == Revolve()
    with pytest.raises(ValueError, match="unknown grad='exact'"):
        block.grad = "exact"


def test_unknown_grad_lists_modes():
    func, x = make_func("mlp")
    with pytest.raises(ValueError, match=r"unknown grad='exact'; expected a mode object .* or one of the names direct, anode, revolve, adjoint"):
        odeint(func, x, steps=1, grad="exact")
    assert as_grad_mode("revolve") == Revolve() != Revolve(checkpoints=2)
    assert {as_grad_mode(name).name for name in GRAD_MODES} == set(GRAD_MODES)


def test_unknown_method():
    func, x = make_func("mlp")
    with pytest.raises(ValueError, match="unknown method 'dopri8'"):
        odeint(func, x, steps=1, method="dopri8")


@pytest.mark.parametrize("t0, t1", [(float("nan"), 1.0), (0.0, float("inf")), ("0", 1.0)])
def test_bad_times(t0, t1):
    func, x = make_func("mlp")
    with pytest.raises(ValueError, match="must be a finite real number"):
        odeint(func, x, t0, t1, steps=1)


def test_bad_y0():
    func, _ = make_func("mlp")
    with pytest.raises(TypeError, match="y0 must be a tensor"):
        odeint(func, [1.0, 2.0], steps=1)
    with pytest.raises(ValueError, match="y0 has dtype torch.int64"):
        odeint(func, torch.ones(3, 4, dtype=torch.int64), steps=1)


def test_func_not_callable():
    with pytest.raises(TypeError, match="func must be callable"):
        odeint(3, torch.ones(2), steps=1)


@pytest.mark.parametrize("grad", GRAD_MODES)
def test_func_returning_wrong_shape(grad):
    x = torch.ones(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"func returned shape \(3,\) for a state of shape \(3, 4\)"):
        odeint(lambda t, y: y.sum(1), x, steps=1, method=method_for(grad, "rk4"), grad=grad)


def test_func_returning_non_tensor():
    with pytest.raises(TypeError, match="func must return a tensor, got float"):
        odeint(lambda t, y: 1.0, torch.ones(2), steps=1)


def test_checkpoint_options_only_with_revolve():
    func, x = make_func("mlp")
    with pytest.raises(ValueError, match="grad='anode' takes no option checkpoints; it takes no options"):
        grad_mode_named("anode", checkpoints=1)
    with pytest.raises(ValueError, match="not both"):
        Revolve(checkpoints=1, memory_budget=10**6)
    with pytest.raises(TypeError, match="unexpected keyword argument 'checkpoints'"):
        odeint(func, x, steps=2, grad="revolve", checkpoints=1)
