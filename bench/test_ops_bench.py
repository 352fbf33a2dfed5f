"""Per-call time of the fused ops, for regression tracking across runs."""

import pytest
import torch

from anode_ext import rk_combine
from anode_ext.bench.timing import synchronize

NUMEL = 1 << 22
RK4 = (1 / 6, 1 / 3, 1 / 3, 1 / 6)


def operands(device, n=4, dtype=torch.float32):
    return [torch.randn(NUMEL, device=device, dtype=dtype) for _ in range(n + 1)]


def timed(benchmark, device, fn):
    def call():
        fn()
        synchronize(device)

    benchmark.pedantic(call, rounds=20, warmup_rounds=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_rk_combine_rk4(benchmark, device, dtype):
    y, *ks = operands(device, dtype=dtype)
    timed(benchmark, device, lambda: rk_combine(y, ks, RK4, 0.1))


def test_rk_combine_rk4_out(benchmark, device):
    y, *ks = operands(device)
    out = torch.empty_like(y)
    timed(benchmark, device, lambda: rk_combine(y, ks, RK4, 0.1, out=out))


def test_eager_rk4(benchmark, device):
    y, k1, k2, k3, k4 = operands(device)
    timed(benchmark, device, lambda: y + 0.1 / 6 * (k1 + 2 * k2 + 2 * k3 + k4))


def test_rk_combine_backward(benchmark, device):
    (g,) = operands(device, n=0)
    timed(benchmark, device, lambda: torch.ops.anode_ext.rk_combine_backward(g, list(RK4), 0.1))


@pytest.mark.parametrize("op", ["rhs", "rk4_step"])
def test_rda(benchmark, device, op):
    from anode_ext import TABLEAUX, rda_rhs, rda_rk_step

    theta = torch.randn(256, 256, 3, 3, device=device)
    coefficients = torch.randn(4, 256, device=device) * 0.1
    if op == "rhs":
        timed(benchmark, device, lambda: rda_rhs(theta, coefficients))
    else:
        timed(benchmark, device, lambda: rda_rk_step(theta, coefficients, TABLEAUX["rk4"], 0.1))
