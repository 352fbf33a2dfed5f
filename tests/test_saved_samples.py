"""The samples anode and revolve take of the tensors func saves for backward (compared
with the recompute's, to refuse a recompute that computed other intermediate values):
gathered after each step of the forward and once per recompute, not as each tensor is
saved. A tensor changed between being saved and being gathered must neither be read
(its storage may be gone) nor make a faithful recompute look unfaithful. Float64."""

import pytest
import torch
from torch import nn

from testing import assert_grads_equal

from anode_ext import odeint
from anode_ext._library import _C
from anode_ext.modes import grad_mode_named

MODES = [("anode", None), ("revolve", 1), ("revolve", 2)]
IDS = ["anode", "revolve-c1", "revolve-c2"]


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


def _saving_then(release):
    """func_of for _grads: func saves a tensor for backward, without reading it there, then
    calls release(tensor) on it."""

    def func_of(lin):
        def func(t, z):
            h = lin(z)
            w = h * 1.5
            out = _SavesWithoutReading.apply(w)
            release(w)
            return torch.tanh(out + h)

        return func

    return func_of


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_saved_tensor_whose_storage_is_freed_within_the_step_is_refused(grad, checkpoints, gather):
    # func frees a saved tensor's memory right after saving it (as sharded training frees
    # a gathered parameter). Handed to autograd, it would be read from freed memory; so the
    # backward refuses it with an error (here grad='direct' happens not to read it).
    func_of = _saving_then(lambda w: w.untyped_storage().resize_(0))
    with pytest.raises(RuntimeError, match="has lost its memory"):
        _grads(grad, checkpoints, func_of)


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_saved_tensor_freed_and_allocated_again_within_the_step(grad, checkpoints, gather):
    # The memory comes back unwritten: the sample is not read from it (its bytes are not
    # the tensor's values), and the gradient is direct's.
    def free_and_allocate_again(w):
        storage = w.untyped_storage()
        size = storage.nbytes()
        storage.resize_(0)
        storage.resize_(size)

    func_of = _saving_then(free_and_allocate_again)
    assert_grads_equal(_grads(grad, checkpoints, func_of), _grads("direct", None, func_of))


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_recompute_that_frees_a_saved_tensor_is_refused_not_a_crash(grad, checkpoints, gather):
    # Only the recompute frees the memory of a tensor that abs's backward reads.
    calls = [0]
    lin = nn.Linear(3, 3).double()

    def func(t, z):
        calls[0] += 1
        a = lin(z)
        out = torch.tanh(a.abs())
        if calls[0] > 3:
            a.untyped_storage().resize_(0)
        return out

    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    out = odeint(func, x, steps=3, method="euler", grad=grad_mode_named(grad, checkpoints=checkpoints))
    with pytest.raises(RuntimeError, match="lost its memory|did not repeat the forward"):
        out.sum().backward()


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


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_saved_tensor_bumped_in_the_forward_only_is_refused(grad, checkpoints, gather):
    # The forward changes a saved tensor in place (same values, a new version: grad='direct'
    # refuses it in backward) and the recompute, which does not, computes other values:
    # refused, not a silently different gradient.
    calls = [0]
    weight = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)

    def func(t, y):
        calls[0] += 1
        in_forward = calls[0] <= 4
        a = (y @ weight) * (1.0 if in_forward else -1.0)
        out = torch.tanh(a.abs())
        if in_forward:
            a.add_(0.0)
        return out

    x = torch.randn(2, 3, dtype=torch.float64)
    out = odeint(func, x, steps=4, method="euler", grad=grad_mode_named(grad, checkpoints=checkpoints))
    with pytest.raises(RuntimeError, match="modified by an in-place operation|did not repeat the forward"):
        out.sum().backward()


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_saved_tensor_frozen_between_forward_and_backward_is_refused(grad, checkpoints, gather):
    # A parameter swapped for a tensor that does not require grad between forward and
    # backward: the recompute's saved tensor does not require grad, and is not sampled.
    params = {}

    class Scale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, s):
            ctx.save_for_backward(x, s)
            return x * s.abs()

        @staticmethod
        def backward(ctx, g):
            x, s = ctx.saved_tensors
            return g * s.abs(), (g * x).sum() * s.sgn()

    weight = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    params["p"] = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    out = odeint(lambda t, y: Scale.apply(torch.tanh(y @ weight), params["p"] * 2.0), x, steps=3, method="euler",
                 grad=grad_mode_named(grad, checkpoints=checkpoints))
    params["p"] = torch.tensor(-0.5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="required grad in the forward but not in the recompute"):
        out.sum().backward()


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_func_differentiating_through_an_earlier_steps_graph_is_refused(grad, checkpoints):
    weight = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    previous = []

    def func(t, y):
        h = torch.tanh(y @ weight)
        extra = 0.0
        if previous:
            (g,) = torch.autograd.grad(previous[-1].sum(), weight, retain_graph=True)
            extra = g.sum().detach() * 1e-2
        previous[:] = [h]
        return h + extra

    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="through a tensor saved in an earlier step"):
        odeint(func, x, steps=3, method="euler", grad=grad_mode_named(grad, checkpoints=checkpoints))


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=IDS)
def test_mutation_allowed_by_the_callers_hooks_is_not_refused(grad, checkpoints, gather):
    # Under allow_mutation_on_saved_tensors, grad='direct' backpropagates through the values
    # saved before an in-place change; so must the recomputing modes, without refusing it.
    from torch.autograd.graph import allow_mutation_on_saved_tensors

    def run(mode, c=None):
        torch.manual_seed(0)
        lin = nn.Linear(3, 3).double()
        x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)

        def func(t, y):
            a = lin(y)
            out = torch.tanh(a.abs())
            a.mul_(-1.0)
            return out

        with allow_mutation_on_saved_tensors():
            out = odeint(func, x, steps=3, grad=grad_mode_named(mode, checkpoints=c))
            return torch.autograd.grad(out.square().sum(), [x, *lin.parameters()])

    assert_grads_equal(run(grad, checkpoints), run("direct"))
