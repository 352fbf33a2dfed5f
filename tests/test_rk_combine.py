"""rk_combine against plain PyTorch, across shapes, dtypes, layouts and devices."""

import pytest
import torch
from testing import DEVICES, FLOAT_DTYPES, dtype_id, needs_cuda

from anode_ext import rk_combine

SHAPES = [(), (0,), (0, 3), (1,), (7,), (33,), (4099,), (3, 5, 17), (2, 3, 8, 8)]


def unaligned(t):
    """A view of t that starts one element into a fresh buffer (not 16-byte aligned)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = buf[1:].view(t.shape)
    view.copy_(t)
    return view


def reference(y, ks, weights, h):
    """The same sum in float64, rounded once to y's dtype."""
    acc = y.double() + h * sum(w * k.double() for w, k in zip(weights, ks))
    return acc.to(y.dtype)


def assert_combine_close(out, y, ks, weights, h):
    """|out - exact| within the rounding of a sum of len(ks) + 1 terms, elementwise:
    (n + 2) eps (|y| + |h| sum |w_i k_i|), with eps of y's dtype."""
    exact = y.double() + h * sum(w * k.double() for w, k in zip(weights, ks))
    magnitude = y.double().abs() + abs(h) * sum(abs(w) * k.double().abs() for w, k in zip(weights, ks))
    bound = (len(ks) + 2) * torch.finfo(y.dtype).eps * magnitude
    excess = (out.double() - exact).abs() - bound
    assert out.dtype == y.dtype
    assert not (excess > 0).any(), f"error exceeds the rounding bound by up to {excess.max().item():.3g}"


def make(shape, n, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    ks = [torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype) for _ in range(n)]
    weights = torch.rand(n, generator=g, dtype=torch.float64).tolist()
    return y, ks, weights


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtype, device):
    y, ks, weights = make(shape, 4, dtype, device)
    out = rk_combine(y, ks, weights, 0.3)
    assert out.shape == y.shape and out.dtype == dtype and out.device == y.device
    assert_combine_close(out, y, ks, weights, 0.3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 17, 33])
def test_any_number_of_ks(n, device):
    y, ks, weights = make((1000,), n, torch.float64, device, seed=n)
    torch.testing.assert_close(rk_combine(y, ks, weights, -0.7), reference(y, ks, weights, -0.7))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_rk4_weights(dtype, device):
    y, ks, _ = make((513,), 4, dtype, device)
    h = 0.1
    out = rk_combine(y, ks, [1 / 6, 1 / 3, 1 / 3, 1 / 6], h)
    eager = (y.double() + h / 6 * (ks[0].double() + 2 * ks[1].double() + 2 * ks[2].double() + ks[3].double())).to(dtype)
    assert_combine_close(out, y, ks, [1 / 6, 1 / 3, 1 / 3, 1 / 6], h)
    # The exact sum and the eager expression differ only by rounding.
    torch.testing.assert_close(out, eager, atol=4 * torch.finfo(dtype).eps, rtol=4 * torch.finfo(dtype).eps)


# Views of a (6, 8, 10) tensor in layouts a kernel cannot walk as one flat array.
LAYOUTS = {
    "transposed": lambda t: t.transpose(0, 2),
    "strided": lambda t: t[:, ::2, 1:],
    "offset": lambda t: t[1:5],
    "channels_last": lambda t: t.reshape(2, 3, 8, 10).contiguous(memory_format=torch.channels_last),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("mixed", [False, True], ids=["same", "mixed"])
def test_non_contiguous(layout, mixed, device):
    view = LAYOUTS[layout]
    g = torch.Generator().manual_seed(1)
    raw = [torch.randn(6, 8, 10, generator=g, dtype=torch.float64).to(device) for _ in range(4)]
    y = view(raw[0])
    ks = [view(r) if (not mixed or i % 2 == 0) else view(r).contiguous() for i, r in enumerate(raw[1:])]
    weights = [0.5, -1.25, 2.0]
    out = rk_combine(y, ks, weights, 0.2)
    torch.testing.assert_close(out, reference(y, ks, weights, 0.2))


@pytest.mark.parametrize("device", DEVICES)
def test_keeps_channels_last_layout(device):
    y = torch.randn(2, 3, 4, 5, device=device).contiguous(memory_format=torch.channels_last)
    out = rk_combine(y, [y], [1.0], 1.0)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_out_writes_without_allocating(dtype, device):
    y, ks, weights = make((4099,), 3, dtype, device)
    expected = rk_combine(y, ks, weights, 0.25)
    out = torch.full_like(y, float("nan"))
    ptr = out.data_ptr()
    result = rk_combine(y, ks, weights, 0.25, out=out)
    assert result is out and out.data_ptr() == ptr
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_out_in_place_on_y(device):
    y, ks, weights = make((1000,), 4, torch.float64, device)
    expected = reference(y, ks, weights, 0.5)
    rk_combine(y, ks, weights, 0.5, out=y)
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_out_non_contiguous(device):
    y, ks, weights = make((8, 10), 2, torch.float64, device)
    holder = torch.zeros(10, 16, dtype=torch.float64, device=device)
    out = holder[:, ::2].t()
    rk_combine(y, ks, weights, 1.5, out=out)
    torch.testing.assert_close(out, reference(y, ks, weights, 1.5))
    assert (holder[:, 1::2] == 0).all(), "the out= form wrote outside the given view"


@pytest.mark.parametrize("device", DEVICES)
def test_same_results_for_every_thread_split(device):
    # Sizes around the CPU grain and vector width: every chunk boundary must agree.
    for n in (32767, 32768, 32769, 65537):
        y, ks, weights = make((n,), 3, torch.float32, device, seed=n)
        out = rk_combine(y, ks, weights, 0.1)
        assert_combine_close(out, y, ks, weights, 0.1)


@needs_cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "unaligned"])
def test_cuda_equals_cpu_bit_for_bit(dtype, offset):
    # Both kernels share csrc/rk_combine.h and are built without fma contraction.
    # Sliced on the GPU: .cuda() of a sliced CPU tensor would copy it into an
    # aligned buffer and never reach the unaligned kernel.
    y, ks, weights = make((100_003 + offset,), 5, dtype, "cpu")
    y_cuda, ks_cuda = y.cuda()[offset:], [k.cuda()[offset:] for k in ks]
    assert (y_cuda.data_ptr() % 16 == 0) == (offset == 0)
    y, ks = y[offset:], [k[offset:] for k in ks]
    cpu = rk_combine(y, ks, weights, 0.37)
    cuda = rk_combine(y_cuda, ks_cuda, weights, 0.37)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=0)
    grads_cpu = torch.ops.anode_ext.rk_combine_backward(y, weights, 0.37)
    grads_cuda = torch.ops.anode_ext.rk_combine_backward(y_cuda, weights, 0.37)
    for a, b in zip(grads_cuda, grads_cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=0)


# More ks than one CUDA launch takes (16): the sum runs in groups there.
MANY_KS = [17, 33, 40]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n", MANY_KS)
def test_many_ks_in_every_dtype(n, dtype, device):
    y, ks, weights = make((1031,), n, dtype, device, seed=n)
    assert_combine_close(rk_combine(y, ks, weights, 0.3), y, ks, weights, 0.3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("which", [0, 5, 16, 20, 32, "y"])
def test_out_is_one_of_many_ks(which, dtype, device):
    # out may be any operand: the result is that of a single pass over the operands
    # as they were before the call.
    y, ks, weights = make((1031,), 33, dtype, device, seed=7)
    expected = rk_combine(y, ks, weights, 0.3)
    out = y if which == "y" else ks[which]
    rk_combine(y, ks, weights, 0.3, out=out)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@needs_cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n", MANY_KS)
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "unaligned"])
def test_cuda_many_ks_equal_cpu_bit_for_bit(n, dtype, offset):
    # Partial sums between groups stay in the accumulation type, as in the CPU's one pass.
    y, ks, weights = make((10_007 + offset,), n, dtype, "cpu", seed=n)
    y_cuda, ks_cuda = y.cuda()[offset:], [k.cuda()[offset:] for k in ks]
    cpu = rk_combine(y[offset:], [k[offset:] for k in ks], weights, 0.37)
    torch.testing.assert_close(rk_combine(y_cuda, ks_cuda, weights, 0.37).cpu(), cpu, rtol=0, atol=0)
    rk_combine(y_cuda, ks_cuda, weights, 0.37, out=ks_cuda[n - 1])
    torch.testing.assert_close(ks_cuda[n - 1].cpu(), cpu, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_unaligned_operands(dtype, device):
    y, ks, weights = make((1031,), 3, dtype, device)
    for which in range(4):
        operands = [y, *ks]
        operands[which] = unaligned(operands[which])
        out = rk_combine(operands[0], operands[1:], weights, 0.5)
        assert_combine_close(out, y, ks, weights, 0.5)
