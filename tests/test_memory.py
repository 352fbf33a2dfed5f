"""Bytes saved for backward: anode keeps the block input only, direct grows with steps."""

import pytest
import torch
from odefuncs import make_func

from anode_ext import Revolve, odeint
from anode_ext.bench.memory import count_saved_bytes


def saved(kind, steps, grad, method="rk4", **kwargs):
    func, x = make_func(kind, dtype=torch.float32)
    with count_saved_bytes(exclude=func.parameters()) as counter:
        y = odeint(func, x, steps=steps, method=method, grad=grad, **kwargs)
    total = counter.total
    y.sum().backward()
    return total, x.numel() * x.element_size()


@pytest.mark.parametrize("kind", ["mlp", "conv_bn"])
def test_anode_saves_only_its_input(kind):
    for steps in (1, 2, 4, 8):
        total, state = saved(kind, steps, "anode")
        assert total == state, f"steps={steps}: saved {total} bytes, the input is {state}"


@pytest.mark.parametrize("kind", ["mlp", "conv_bn"])
def test_direct_grows_linearly(kind):
    totals = [saved(kind, steps, "direct")[0] for steps in (1, 2, 3, 4, 8)]
    per_step = totals[1] - totals[0]
    assert per_step > 0
    assert totals[2] - totals[1] == per_step and totals[3] - totals[2] == per_step
    assert totals[4] - totals[3] == 4 * per_step


@pytest.mark.parametrize("checkpoints", [1, 2, 3])
def test_revolve_saves_at_most_its_checkpoints(checkpoints):
    for steps in (2, 5, 8):
        total, state = saved("conv_bn", steps, Revolve(checkpoints=checkpoints))
        assert state <= total <= (min(checkpoints, steps - 1) + 1) * state


def test_adjoint_saves_one_state():
    total, state = saved("conv_bn", 8, "adjoint")
    assert total == state


def peak(kind, steps, grad, **kwargs):
    func, x = make_func(kind, dtype=torch.float32)
    with count_saved_bytes(exclude=func.parameters()) as counter:
        y = odeint(func, x, steps=steps, grad=grad, **kwargs)
        held = counter.total
        y.sum().backward()
    assert counter.total == 0, "something saved for backward outlived the backward"
    return held, counter.peak


@pytest.mark.parametrize("kind", ["mlp", "conv_bn"])
def test_anode_peak_is_the_recomputed_block(kind):
    direct_held, direct_peak = peak(kind, 4, "direct")
    anode_held, anode_peak = peak(kind, 4, "anode")
    assert direct_peak == direct_held
    assert anode_peak == direct_held > anode_held


def test_revolve_peak_is_below_anode_for_long_blocks():
    _, anode_peak = peak("conv_bn", 16, "anode")
    _, revolve_peak = peak("conv_bn", 16, Revolve(checkpoints=2))
    assert revolve_peak < anode_peak / 3
