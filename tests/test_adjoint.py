"""The adjoint baseline runs, and its gradient is inexact by an amount that shrinks with Nt."""

import torch
from odefuncs import all_grads, make_func
from testing import relative_error

from anode_ext import odeint


def gradient_error(steps, kind="mlp", method="rk4"):
    grads = {}
    for grad in ("direct", "adjoint"):
        func, x = make_func(kind)
        func.eval()
        y = odeint(func, x, 0.0, 2.0, steps=steps, method=method, grad=grad)
        y.square().sum().backward()
        grads[grad] = all_grads(func, x)
    return max(relative_error(a, d) for a, d in zip(grads["adjoint"], grads["direct"]))


def test_adjoint_error_is_nonzero_and_shrinks_with_steps():
    errors = [gradient_error(steps) for steps in (2, 4, 8, 16)]
    assert all(e > 1e-9 for e in errors), errors
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_adjoint_error_with_relu_convolutions():
    # Non-smooth dynamics: the reverse-time reconstruction is poorer, yet still converges.
    errors = [gradient_error(steps, kind="conv_bn", method="euler") for steps in (2, 8, 32)]
    assert errors[0] > 1e-4, errors
    assert errors[-1] < errors[0], errors


def test_adjoint_values_are_the_forward_solve():
    func, x = make_func("mlp")
    torch.testing.assert_close(
        odeint(func, x, steps=3, grad="adjoint"), odeint(func, x, steps=3, grad="direct"), rtol=0, atol=0
    )
