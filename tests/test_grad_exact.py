"""anode and revolve give the gradient of the discrete solve: equal to direct in float64."""

import pytest
import torch
from odefuncs import all_grads, make_func
from testing import relative_error

from anode_ext import TABLEAUX, Anode, Revolve, odeint

TOLERANCE = 1e-10
MODES = [Anode(), Revolve(checkpoints=1), Revolve(checkpoints=2)]


def gradients(kind, method, steps, grad, seed=0):
    func, x = make_func(kind, seed=seed)
    func.train()
    y = odeint(func, x, 0.0, 0.7, steps=steps, method=method, grad=grad)
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    (y * weight).sum().backward()
    return all_grads(func, x)


@pytest.mark.parametrize("mode", MODES, ids=["anode", "revolve-c1", "revolve-c2"])
@pytest.mark.parametrize("steps", range(1, 9))
@pytest.mark.parametrize("method", sorted(TABLEAUX))
@pytest.mark.parametrize("kind", ["mlp", "conv_bn"])
def test_equals_direct(kind, method, steps, mode):
    expected = gradients(kind, method, steps, "direct")
    got = gradients(kind, method, steps, mode)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert e.abs().max() > 0, f"gradient {i} of the reference is zero; the test would prove nothing"
        assert relative_error(g, e) <= TOLERANCE, f"gradient {i}: relative error {relative_error(g, e):.3g}"


def test_residual_block_is_one_euler_step():
    func, x = make_func("conv_bn")
    func.eval()
    residual = x + func(0.0, x)
    from anode_ext import ODEBlock

    for grad in ("direct", "anode"):
        block = ODEBlock(func, t1=1.0, steps=1, method="euler", grad=grad)
        torch.testing.assert_close(block(x), residual, rtol=0, atol=0)
