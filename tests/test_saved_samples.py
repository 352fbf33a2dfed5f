"""The samples anode and revolve take of the tensors func saves for backward (compared
with the recompute's, to refuse a recompute that computed other intermediate values):
gathered after each step of the forward and once per recompute, not as each tensor is
saved. A tensor changed between being saved and being gathered must neither be read
(its storage may be gone) nor make a faithful recompute look unfaithful. Float64."""

import pytest
import torch
from torch import nn

from anode_ext import odeint
from anode_ext._library import _C
from anode_ext.modes import grad_mode_named

MODES = [("anode", None), ("revolve", 1), ("revolve", 2)]
IDS = ["anode", "revolve-c1", "revolve-c2"]
TOL = 1e-10


@pytest.fixture(params=[True, False], ids=["gathered", "copied-one-by-one"])
def gather(request):
    """Both ways of taking the samples: the gather, and a copy per tensor (the way of
    tensors on another device than their segment's buffer)."""
    previous = _C.set_sample_gather(request.param)
    yield request.param
    _C.set_sample_gather(previous)


class _SavesWithoutReading(torch.autograd.Function):
    """y = 2 x, saving x for backward without reading it there."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        assert x.shape == grad.shape
        return 2 * grad


def _grads(mode, checkpoints, func_of):
    torch.manual_seed(0)
    lin = nn.Linear(4, 4).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    out = odeint(func_of(lin), x, steps=4, method="rk4", grad=grad_mode_named(mode, checkpoints=checkpoints))
    out.square().sum().backward()
    return [x.grad, lin.weight.grad, lin.bias.grad]


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_saved_tensor_whose_storage_is_freed_within_the_step(grad, checkpoints, gather):
    # func frees a saved tensor's memory right after saving it (as sharded training frees
    # a gathered parameter): the forward's sample of it cannot be taken, and its gradient is
    # still right.
    def func_of(lin):
        def func(t, z):
            h = lin(z)
            w = h * 1.5
            out = _SavesWithoutReading.apply(w)
            w.untyped_storage().resize_(0)
            return torch.tanh(out + h)

        return func

    got, expected = _grads(grad, checkpoints, func_of), _grads("direct", None, func_of)
    for g, e in zip(got, expected):
        assert e.abs().max() > 0
        torch.testing.assert_close(g, e, rtol=TOL, atol=TOL * e.abs().max().item())


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_saved_tensor_changed_in_place_later_in_the_step(grad, checkpoints, gather):
    # As grad='direct' refuses it, so do the recomputing modes: with the in-place message,
    # not as a recompute that differed.
    lin = nn.Linear(4, 4).double()

    def func(t, z):
        y = torch.tanh(lin(z))
        out = y * 2
        y.add_(0.0)
        return out

    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    out = odeint(func, x, steps=3, grad=grad_mode_named(grad, checkpoints=checkpoints))
    with pytest.raises(RuntimeError, match="modified by an in-place operation after func used it"):
        out.sum().backward()


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_changed_values_in_the_last_step_only_are_refused(grad, checkpoints, gather):
    # The backward's last recorded evaluation differs (a sign under abs: every state the
    # same bit for bit); for anode that is the last step of one segment, whose samples the
    # forward gathered after those of the steps before. Float32 and float64 tensors are
    # saved side by side, so samples are not all of one size.
    calls = [0]
    steps, stages = 3, 4
    lin = nn.Linear(4, 4).double()
    scale = torch.tensor(1.0, dtype=torch.float32, requires_grad=True)

    def func(t, z):
        calls[0] += 1
        flip = -1.0 if calls[0] > steps * stages + (steps * stages - 1) else 1.0
        s = (scale * scale).double()  # saves float32 tensors among the float64 ones
        return torch.tanh(torch.abs(flip * lin(z))) * s

    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    out = odeint(func, x, steps=steps, method="rk4", grad=grad_mode_named(grad, checkpoints=checkpoints))
    with pytest.raises(RuntimeError, match="holds other values than in the forward"):
        out.sum().backward()


def test_gather_setting_is_returned_and_restored():
    previous = _C.set_sample_gather(False)
    try:
        assert previous is True
        assert _C.set_sample_gather(False) is False
    finally:
        _C.set_sample_gather(previous)
