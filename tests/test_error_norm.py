"""rk_error_norm: the fused squared scaled error estimate of an embedded pair's step."""

import math

import pytest
import torch
from testing import DEVICES, FLOAT_DTYPES, dtype_id, needs_cuda

from anode_ext import Adaptive
from anode_ext.adaptive import error_ratio, get_pair

error_norm = torch.ops.anode_ext.rk_error_norm.default


def reference(y, y1, ks, weights, h, rtol, atol):
    """The same sum from float64 tensors."""
    err = sum(w * h * k.double() for w, k in zip(weights, ks))
    scale = atol + rtol * torch.maximum(y.double().abs(), y1.double().abs())
    return float((err / scale).square().sum())


def operands(shape, dtype, device, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda: torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)  # noqa: E731
    return make(), make(), [make() for _ in range(n)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(7,), (3, 5, 4), (0, 3), (1 << 16,)], ids=str)
def test_equals_the_sum_from_tensors(device, dtype, shape):
    y, y1, ks = operands(shape, dtype, device)
    weights, h, rtol, atol = [0.3, -1.25, 0.5], 0.1, 1e-3, 1e-4
    got = error_norm(y, y1, ks, weights, h, rtol, atol)
    assert got.dtype == torch.float64 and got.shape == () and got.device.type == torch.device(device).type
    expected = reference(y, y1, ks, weights, h, rtol, atol)
    # Each element's error is formed in the accumulation type (float for half types).
    eps = torch.finfo(torch.float32 if dtype != torch.float64 else torch.float64).eps
    assert math.isclose(float(got), expected, rel_tol=16 * eps, abs_tol=0.0)


@pytest.mark.parametrize("device", DEVICES)
def test_any_layout(device):
    y, y1, ks = operands((4, 6, 5, 3), torch.float32, device)
    args = ([0.5, 0.25, -1.0], 0.2, 1e-2, 1e-3)
    dense = float(error_norm(y, y1, ks, *args))
    channels_last = [t.contiguous(memory_format=torch.channels_last) for t in (y, y1, *ks)]
    assert float(error_norm(channels_last[0], channels_last[1], channels_last[2:], *args)) == pytest.approx(dense, rel=1e-6)
    transposed = [t.transpose(0, 3).contiguous().transpose(0, 3) for t in (y, y1, *ks)]
    mixed = [y, transposed[1], [ks[0], transposed[3], channels_last[4]]]
    assert float(error_norm(*mixed, *args)) == pytest.approx(dense, rel=1e-6)
    assert float(error_norm(y[:, ::2], y1[:, ::2], [k[:, ::2] for k in ks], *args)) == pytest.approx(
        reference(y[:, ::2], y1[:, ::2], [k[:, ::2] for k in ks], *args), rel=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_a_nan_in_a_state_or_a_stage_gives_nan(device):
    for which in range(3):
        y, y1, ks = operands((10,), torch.float64, device)
        [y, y1, ks[1]][which][4] = float("nan")
        assert math.isnan(float(error_norm(y, y1, ks, [1.0, 1.0, 1.0], 0.1, 1e-3, 1e-6)))


@needs_cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_cuda_matches_cpu(dtype):
    y, y1, ks = operands((3, 1000, 7), dtype, "cpu", n=7)
    args = ([0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7], 0.05, 1e-4, 1e-6)
    cpu = float(error_norm(y, y1, ks, *args))
    cuda = float(error_norm(y.cuda(), y1.cuda(), [k.cuda() for k in ks], *args))
    assert cuda == pytest.approx(cpu, rel=1e-12)


@pytest.mark.parametrize("args, message", [
    (lambda y, y1, ks: (y, y1[:3], ks, [1.0] * 3, 0.1, 1e-3, 1e-6), "y1 has shape"),
    (lambda y, y1, ks: (y, y1.float(), ks, [1.0] * 3, 0.1, 1e-3, 1e-6), "y1 has shape"),
    (lambda y, y1, ks: (y, y1, ks, [1.0] * 2, 0.1, 1e-3, 1e-6), "weights for 3 ks"),
    (lambda y, y1, ks: (y, y1, [], [], 0.1, 1e-3, 1e-6), "ks is empty"),
    (lambda y, y1, ks: (y, y1, ks, [1.0] * 3, 0.1, -1.0, 1e-6), "expected finite numbers >= 0"),
    (lambda y, y1, ks: (y, y1, ks, [1.0] * 3, 0.1, 0.0, 0.0), "not both zero"),
    (lambda y, y1, ks: (y.int(), y1, ks, [1.0] * 3, 0.1, 1e-3, 1e-6), "floating dtype"),
])
def test_bad_arguments_are_refused(args, message):
    y, y1, ks = operands((8,), torch.float64, "cpu")
    with pytest.raises(RuntimeError, match=message):
        error_norm(*args(y, y1, ks))


def test_error_ratio_takes_the_same_value_fused_and_from_tensors():
    pair = get_pair("dopri5")
    y, y1, ks = operands((5, 4), torch.float64, "cpu", n=pair.stages)
    fused = error_ratio(pair, Adaptive(pair, rtol=1e-3, atol=1e-6), 0.1, (y,), (y1,), [(k,) for k in ks])
    tensors = error_ratio(pair, Adaptive(pair, rtol=torch.tensor(1e-3, dtype=torch.float64), atol=1e-6), 0.1, (y,),
                          (y1,), [(k,) for k in ks])
    assert fused == pytest.approx(tensors, rel=1e-12)
    assert fused > 0
