"""The gradient-mode objects: options checked once when made, immutable, equal by options,
spelled by name, and the same solve whichever spelling is used."""

import dataclasses

import pytest
import torch
from odefuncs import make_func

from anode_ext import GRAD_MODES, Adjoint, Anode, Direct, GradMode, ODEBlock, ReversibleGrad, Revolve, models, odeint
from anode_ext.modes import as_grad_mode, grad_mode_named


def test_names_mean_the_default_modes():
    assert [as_grad_mode(name) for name in GRAD_MODES] == [Direct(), Anode(), Revolve(), Adjoint(), ReversibleGrad()]
    assert [m.exact for m in (Direct(), Anode(), Revolve(), Adjoint())] == [True, True, True, False]


def test_modes_are_immutable_equal_by_options_and_hashable():
    mode = Revolve(checkpoints=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        mode.checkpoints = 3
    assert mode == Revolve(checkpoints=2) != Revolve(checkpoints=3)
    assert len({Revolve(checkpoints=2), Revolve(checkpoints=2), Revolve(), Anode()}) == 3
    w = torch.zeros(2)
    assert Adjoint(params=[w]) == Adjoint(params=(w,)) != Adjoint(params=[torch.zeros(2)])


def test_repr_shows_options_that_differ_from_defaults():
    assert [repr(m) for m in (Direct(), Revolve(), Revolve(checkpoints=2), Revolve(memory_budget=64))] == [
        "Direct()", "Revolve()", "Revolve(checkpoints=2)", "Revolve(memory_budget=64)"]
    assert repr(Adjoint(params=[torch.zeros(1)])) == "Adjoint(params=<1 tensors>)"


@pytest.mark.parametrize("options, message", [
    (dict(checkpoints=0), "checkpoints must be an integer >= 1, got 0"),
    (dict(checkpoints=2.0), "checkpoints must be an integer >= 1, got 2.0"),
    (dict(memory_budget=-1), "memory_budget must be a non-negative integer number of bytes, got -1"),
    (dict(checkpoints=1, memory_budget=8), "not both"),
])
def test_revolve_checks_its_options_when_made(options, message):
    with pytest.raises(ValueError, match=message):
        Revolve(**options)


def test_adjoint_params_must_be_tensors():
    with pytest.raises(TypeError, match="Adjoint params must hold tensors, got float"):
        Adjoint(params=[1.0])


def test_grad_mode_named_spells_modes_from_plain_values():
    assert grad_mode_named("revolve", checkpoints=4, memory_budget=None) == Revolve(checkpoints=4)
    assert grad_mode_named("anode", checkpoints=None) == Anode()
    with pytest.raises(ValueError, match="grad='direct' takes no option memory_budget"):
        grad_mode_named("direct", memory_budget=100)
    with pytest.raises(ValueError, match="unknown grad='fast'"):
        grad_mode_named("fast")


def test_name_and_object_give_the_same_solve():
    func, x = make_func("mlp")
    for name, mode in (("anode", Anode()), ("revolve", Revolve()), ("direct", Direct())):
        a = torch.autograd.grad(odeint(func, x, steps=5, grad=name).sum(), x)[0]
        b = torch.autograd.grad(odeint(func, x, steps=5, grad=mode).sum(), x)[0]
        assert torch.equal(a, b)


def test_one_mode_object_shared_by_every_block_of_a_model():
    mode = Revolve(checkpoints=1)
    model = models.create("resnet", width=0.0625, steps=2, method="euler", grad=mode)
    blocks = [m for m in model.modules() if isinstance(m, ODEBlock)]
    assert len(blocks) == 4 and all(b.grad is mode for b in blocks)


def test_mistakes_in_naming_a_mode_are_explained():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(TypeError, match=r"Adjoint params must be a list or tuple of tensors, got Tensor: write params=\[t\]"):
        Adjoint(params=w)
    with pytest.raises(TypeError, match="Adjoint params must be a list or tuple of tensors, got NoneType"):
        Adjoint(params=None)
    with pytest.raises(ValueError, match=r"grad=GradMode\(\) is an abstract base"):
        as_grad_mode(GradMode())
    with pytest.raises(ValueError, match="options checkpoints go with a mode's name, not with the mode Revolve()"):
        grad_mode_named(Revolve(), checkpoints=2)
    with pytest.raises(ValueError, match="grad='revolve' takes no option foo; it takes checkpoints, memory_budget"):
        grad_mode_named("revolve", foo=1)
    with pytest.raises(TypeError, match="Adjoint params must hold tensors, got int"):
        grad_mode_named("adjoint", params=[1])


def test_block_options_are_checked_when_reassigned():
    block = ODEBlock(lambda t, y: -y)
    block.method, block.steps = "euler", 4
    assert block.tableau.name == "euler" and block.method is block.tableau and "steps=4, method=euler" in repr(block)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        block.steps = 0
    with pytest.raises(ValueError, match="unknown method 'rk45'"):
        block.method = "rk45"
