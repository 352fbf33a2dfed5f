"""Bad input to rk_combine gets a clear error, never a crash or a wrong answer."""

import pytest
import torch
from testing import DEVICES, HAS_CUDA, needs_cuda

from anode_ext import rk_combine


@pytest.mark.parametrize("device", DEVICES)
def test_shape_mismatch(device):
    y = torch.zeros(3, 4, device=device)
    with pytest.raises(RuntimeError, match=r"ks\[1\] has shape \[3, 5\] but y has shape \[3, 4\]"):
        rk_combine(y, [y, torch.zeros(3, 5, device=device)], [1.0, 1.0], 0.1)


@pytest.mark.parametrize("device", DEVICES)
def test_dtype_mismatch(device):
    y = torch.zeros(4, device=device)
    with pytest.raises(RuntimeError, match=r"ks\[0\] has dtype Double but y has dtype Float"):
        rk_combine(y, [y.double()], [1.0], 0.1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_unsupported_dtype(dtype, device):
    y = torch.zeros(4, dtype=dtype, device=device)
    with pytest.raises(RuntimeError, match="expected a floating dtype"):
        rk_combine(y, [y], [1.0], 0.1)


@pytest.mark.parametrize("device", DEVICES)
def test_weight_count_mismatch(device):
    y = torch.zeros(4, device=device)
    with pytest.raises(RuntimeError, match="got 1 weights for 2 ks; expected one weight per k"):
        rk_combine(y, [y, y], [1.0], 0.1)


@pytest.mark.parametrize("device", DEVICES)
def test_no_ks(device):
    y = torch.zeros(4, device=device)
    with pytest.raises(RuntimeError, match="ks is empty"):
        rk_combine(y, [], [], 0.1)


def test_device_mismatch_with_meta():
    y = torch.zeros(4)
    with pytest.raises(RuntimeError, match="device|meta"):
        rk_combine(y, [torch.zeros(4, device="meta")], [1.0], 0.1)


@needs_cuda
def test_device_mismatch_cpu_cuda():
    y = torch.zeros(4, device="cuda")
    with pytest.raises(RuntimeError, match=r"ks\[0\] is on cpu but y is on cuda"):
        rk_combine(y, [torch.zeros(4)], [1.0], 0.1)


@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.zeros(2), torch.zeros(2), [1.0], 0.1), "ks must be a list or tuple of tensors"),
        ((torch.zeros(2), [1.0], [1.0], 0.1), r"ks\[0\] must be a tensor"),
        ((torch.zeros(2), [torch.zeros(2)], 1.0, 0.1), "weights must be a sequence of numbers"),
        ((torch.zeros(2), [torch.zeros(2)], ["a"], 0.1), r"weights\[0\] must be a real number"),
        ((torch.zeros(2), [torch.zeros(2)], [1.0], "h"), "h must be a real number"),
        (([0.0, 1.0], [torch.zeros(2)], [1.0], 0.1), "y must be a tensor"),
    ],
)
def test_python_argument_types(args, message):
    with pytest.raises(TypeError, match=message):
        rk_combine(*args)


def test_weights_given_as_tensor():
    y = torch.ones(3, dtype=torch.float64)
    out = rk_combine(y, [y, y], torch.tensor([1.0, 2.0]), 0.5)
    torch.testing.assert_close(out, torch.full_like(y, 2.5))
    with pytest.raises(ValueError, match="weights is a tensor that requires grad, but the op takes its weights as constants"):
        rk_combine(y, [y, y], torch.tensor([1.0, 2.0], requires_grad=True), 0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_out_shape_mismatch(device):
    y = torch.zeros(4, device=device)
    with pytest.raises(RuntimeError, match=r"out has shape \[5\] but y has shape \[4\]"):
        rk_combine(y, [y], [1.0], 0.1, out=torch.zeros(5, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_out_dtype_mismatch(device):
    y = torch.zeros(4, device=device)
    with pytest.raises(RuntimeError, match="out has dtype Double but y has dtype Float"):
        rk_combine(y, [y], [1.0], 0.1, out=torch.zeros(4, dtype=torch.float64, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_out_partial_overlap(device):
    buf = torch.zeros(10, device=device)
    with pytest.raises(RuntimeError, match="out partially overlaps y"):
        rk_combine(buf[:8], [torch.zeros(8, device=device)], [1.0], 0.1, out=buf[2:])
    with pytest.raises(RuntimeError, match=r"out partially overlaps ks\[1\]"):
        rk_combine(torch.zeros(8, device=device), [torch.zeros(8, device=device), buf[:8]], [1.0, 1.0], 0.1, out=buf[2:])


@pytest.mark.parametrize("device", DEVICES)
def test_out_internal_overlap(device):
    y = torch.zeros(4, device=device)
    with pytest.raises(RuntimeError, match="several elements of out share one memory location"):
        rk_combine(y, [y], [1.0], 0.1, out=torch.zeros(1, device=device).expand(4))


def test_out_refuses_autograd():
    y = torch.zeros(4, requires_grad=True)
    with pytest.raises(RuntimeError, match="out= form is not differentiable"):
        rk_combine(y, [y], [1.0], 0.1, out=torch.zeros(4))


@pytest.mark.skipif(HAS_CUDA, reason="checks what happens where no GPU is usable")
def test_cuda_input_without_a_usable_gpu_is_an_error():
    with pytest.raises((RuntimeError, AssertionError)):
        rk_combine(torch.zeros(2, device="cuda"), [torch.zeros(2, device="cuda")], [1.0], 0.1)
