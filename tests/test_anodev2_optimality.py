"""The discrete adjoint (KKT) recursions of docs/anodev2_optimality.md, run by hand for
Euler and for RK2 (midpoint), agree with the gradients of a coupled block."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from anode_ext import CoupledODEBlock, rda_rhs

STEPS = 3
H = 0.8 / STEPS


class ConvTanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, t, x):
        return self.b(torch.tanh(self.a(x)))


def setup(seed=0):
    torch.manual_seed(seed)
    block = CoupledODEBlock(ConvTanh(), q="rda", t1=0.8, steps=STEPS, grad="direct").double()
    with torch.no_grad():
        for c in block.q.coefficients:
            c.copy_(torch.randn_like(c) * 0.4)
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    target = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    return block, x, target


def loss_of(z, target):
    return 0.5 * (z - target).square().sum()


def local(block):
    """f(z, thetas), q(thetas) and the vector-Jacobian products the recursions need."""
    names = block.weight_names
    others = [p for n, p in block.func.named_parameters() if n not in names]
    coefficients = list(block.q.coefficients)

    def f(z, thetas):
        return functional_call(block.func, dict(zip(names, thetas)), (0.0, z))

    def q(thetas, coeffs):
        return [rda_rhs(th, c) for th, c in zip(thetas, coeffs)]

    def f_vjp(z, thetas, k_bar):
        """(df/dz)^T k_bar, (df/dtheta)^T k_bar, (df/dw)^T k_bar."""
        z = z.detach().requires_grad_(True)
        thetas = [th.detach().requires_grad_(True) for th in thetas]
        out = f(z, thetas)
        grads = torch.autograd.grad(out, [z, *thetas, *others], k_bar)
        return grads[0], list(grads[1 : 1 + len(thetas)]), list(grads[1 + len(thetas) :])

    def q_vjp(thetas, q_bar):
        """(dq/dtheta)^T q_bar and (dq/dp)^T q_bar, weight by weight."""
        thetas = [th.detach().requires_grad_(True) for th in thetas]
        coeffs = [c.detach().requires_grad_(True) for c in coefficients]
        outs = q(thetas, coeffs)
        grads = torch.autograd.grad(outs, [*thetas, *coeffs], q_bar)
        return list(grads[: len(thetas)]), list(grads[len(thetas) :])

    return f, q, f_vjp, q_vjp, others, coefficients


def add(xs, ys, scale=1.0):
    return [x + scale * y for x, y in zip(xs, ys)]


def by_hand(block, x, target, method):
    f, q, f_vjp, q_vjp, others, coefficients = local(block)
    thetas0 = [dict(block.func.named_parameters())[n].detach() for n in block.weight_names]
    coeffs = [c.detach() for c in coefficients]
    # Forward, keeping what the recursions evaluate at.
    z, th = x, thetas0
    trajectory = []
    with torch.no_grad():
        for _ in range(STEPS):
            if method == "euler":
                trajectory.append((z, th))
                z, th = z + H * f(z, th), add(th, q(th, coeffs), H)
            else:
                z2, th2 = z + H / 2 * f(z, th), add(th, q(th, coeffs), H / 2)
                trajectory.append((z, th, z2, th2))
                z, th = z + H * f(z2, th2), add(th, q(th2, coeffs), H)
    lam = z - target  # dL/dz_N for L = |z_N - target|^2 / 2
    mu = [torch.zeros_like(t) for t in th]  # L does not depend on theta_N
    p_bar = [torch.zeros_like(c) for c in coeffs]
    w_bar = [torch.zeros_like(w) for w in others]
    for record in reversed(trajectory):
        if method == "euler":
            zn, thn = record
            fz, fth, fw = f_vjp(zn, thn, H * lam)
            qth, qp = q_vjp(thn, [H * m for m in mu])
            lam = lam + fz
            mu = add(add(mu, fth), qth)
            p_bar, w_bar = add(p_bar, qp), add(w_bar, fw)
        else:
            zn, thn, z2, th2 = record
            k2_bar, q2_bar = H * lam, [H * m for m in mu]
            z2_bar, th2_bar_f, fw2 = f_vjp(z2, th2, k2_bar)
            th2_bar_q, qp2 = q_vjp(th2, q2_bar)
            th2_bar = add(th2_bar_f, th2_bar_q)
            k1_bar, q1_bar = H / 2 * z2_bar, [H / 2 * t for t in th2_bar]
            z1_bar, th1_bar_f, fw1 = f_vjp(zn, thn, k1_bar)
            th1_bar_q, qp1 = q_vjp(thn, q1_bar)
            lam = lam + z1_bar + z2_bar
            mu = add(add(add(mu, th1_bar_f), th1_bar_q), th2_bar)
            p_bar = add(add(p_bar, qp2), qp1)
            w_bar = add(add(w_bar, fw2), fw1)
    return {"x": lam, "theta0": mu, "p": p_bar, "w": w_bar}


def by_autograd(block, x, target, method, grad):
    block.method = method
    block.grad = grad
    x = x.clone().requires_grad_(True)
    for p in block.parameters():
        p.grad = None
    loss_of(block(x), target).backward()
    names = block.weight_names
    params = dict(block.func.named_parameters())
    return {
        "x": x.grad,
        "theta0": [params[n].grad for n in names],
        "p": [c.grad for c in block.q.coefficients],
        "w": [p.grad for n, p in block.func.named_parameters() if n not in names],
    }


@pytest.mark.parametrize("grad", ["direct", "anode", "revolve"])
@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_recursions_match_autograd(method, grad):
    block, x, target = setup()
    expected = by_hand(block, x, target, method)
    got = by_autograd(block, x, target, method, grad)
    torch.testing.assert_close(got["x"], expected["x"], rtol=1e-11, atol=1e-13)
    for key in ("theta0", "p", "w"):
        assert len(got[key]) == len(expected[key])
        for a, b in zip(got[key], expected[key]):
            assert b.abs().max() > 0
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)
