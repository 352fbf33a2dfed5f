"""Autograd, opcheck and torch.compile support of rk_combine."""

import pytest
import torch
from testing import DEVICES, FLOAT_DTYPES, dtype_id

from anode_ext import rk_combine

ops = torch.ops.anode_ext


def sample(device, dtype=torch.float64, n=3, shape=(5, 7), requires_grad=False):
    g = torch.Generator().manual_seed(0)
    make = lambda: torch.randn(shape, generator=g, dtype=dtype).to(device).requires_grad_(requires_grad)  # noqa: E731
    return make(), [make() for _ in range(n)]


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    y, ks = sample(device, requires_grad=True)
    fn = lambda y, *ks: rk_combine(y, ks, [0.5, -2.0, 1.25], 0.3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (y, *ks))
    assert torch.autograd.gradgradcheck(fn, (y, *ks))


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_are_h_times_weight(device):
    y, ks = sample(device, n=2, requires_grad=True)
    out = rk_combine(y, ks, [0.5, 3.0], 0.2)
    g = torch.randn_like(out)
    out.backward(g)
    torch.testing.assert_close(y.grad, g)
    torch.testing.assert_close(ks[0].grad, 0.1 * g)
    torch.testing.assert_close(ks[1].grad, 0.6 * g)


def test_equal_weights_share_a_gradient_without_corrupting_accumulation():
    y, ks = sample("cpu", n=3, requires_grad=True)
    out = rk_combine(y, ks, [1 / 3, 1 / 3, 1 / 6], 0.3)
    assert out.grad_fn.name() == "RkCombineBackward"
    # Each k also feeds a second consumer, so autograd accumulates into each gradient.
    loss = (out * 2).sum() + sum((k * (i + 1)).sum() for i, k in enumerate(ks))
    loss.backward()
    for i, weight in enumerate([1 / 3, 1 / 3, 1 / 6]):
        torch.testing.assert_close(ks[i].grad, torch.full_like(ks[i], 2 * 0.3 * weight + (i + 1)))
    fn = lambda y, *ks: rk_combine(y, ks, [0.5, 0.5, -2.0], 0.3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (y, *ks))
    assert torch.autograd.gradgradcheck(fn, (y, *ks))


def test_zero_weight_gets_zero_gradient():
    y, ks = sample("cpu", n=2, requires_grad=True)
    rk_combine(y, ks, [0.0, 1.0], 0.5).sum().backward()
    assert ks[0].grad is None or not ks[0].grad.any()
    torch.testing.assert_close(ks[1].grad, torch.full_like(ks[1], 0.5))


def test_only_some_inputs_require_grad():
    y, ks = sample("cpu", n=2)
    ks[1].requires_grad_(True)
    rk_combine(y, ks, [1.0, 2.0], 0.25).sum().backward()
    torch.testing.assert_close(ks[1].grad, torch.full_like(ks[1], 0.5))


def test_graph_node_links_every_input_that_requires_grad():
    y, ks = sample("cpu", n=2)
    ks[0].requires_grad_(True)
    out = rk_combine(y, ks, [1.0, 2.0], 0.25)
    assert out.grad_fn.name() == "RkCombineBackward"
    linked = [fn for fn, _ in out.grad_fn.next_functions]
    assert linked[0] is None and linked[2] is None
    assert linked[1].variable is ks[0]
    assert rk_combine(y.detach(), [k.detach() for k in ks], [1.0, 2.0], 0.25).grad_fn is None
    with torch.no_grad():
        assert rk_combine(y, ks, [1.0, 2.0], 0.25).grad_fn is None


def test_forward_mode_ad_is_refused_with_a_message():
    import torch.autograd.forward_ad as fwAD

    y, ks = sample("cpu", n=1)
    with fwAD.dual_level():
        dual = fwAD.make_dual(y, torch.ones_like(y))
        with pytest.raises(RuntimeError, match="rk_combine: forward-mode AD is not supported"):
            rk_combine(dual, ks, [1.0], 0.5)
        with pytest.raises(RuntimeError, match="rk_combine: forward-mode AD is not supported"):
            rk_combine(ks[0], [dual], [1.0], 0.5)
        with pytest.raises(RuntimeError, match="rk_combine_backward: forward-mode AD is not supported"):
            ops.rk_combine_backward.default(dual, [1.0], 0.5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_opcheck(dtype, device):
    y, ks = sample(device, dtype=dtype, requires_grad=dtype == torch.float64)
    weights = [0.25, 0.5, -1.0]
    torch.library.opcheck(ops.rk_combine.default, (y, ks, weights, 0.1))
    grad = torch.randn_like(y)
    torch.library.opcheck(ops.rk_combine_backward.default, (grad, weights, 0.1))
    out = torch.empty_like(y).detach()
    torch.library.opcheck(
        ops.rk_combine_out.default, (out, y.detach(), [k.detach() for k in ks], weights, 0.1)
    )


def _step(y, k1, k2):
    return rk_combine(y, [k1, k2], [0.5, 0.5], 0.1).sin()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    y, ks = sample("cpu", requires_grad=True, n=2)
    compiled = torch.compile(_step, backend=backend, fullgraph=True)
    out = compiled(y, *ks)
    ref = _step(y, *ks)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.sum(), (y, *ks))
    ref_grads = torch.autograd.grad(ref.sum(), (y, *ks))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
