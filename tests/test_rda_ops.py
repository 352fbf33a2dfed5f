"""The RDA ops against plain PyTorch: values, fused RK step, gradients, registration, errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rda_reference import rda_reference
from testing import DEVICES, FLOAT_DTYPES, dtype_id, needs_cuda

from anode_ext import RDA, TABLEAUX, Tableau, rda_rhs, rda_rk_step, rk_combine

ops = torch.ops.anode_ext
SHAPES = [(5, 3, 3, 3), (4, 2, 1, 1), (3, 13, 1, 1), (3, 2), (3, 2, 5), (2, 2, 7, 7), (2, 3, 4, 6), (0, 3, 3, 3), (3, 0, 3, 3)]
REACTIONS = ["tanh", "relu", "none"]


def sample(shape, dtype=torch.float64, device="cpu", seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(shape, generator=g, dtype=torch.float64)
    coefficients = torch.randn(4, shape[0], generator=g, dtype=torch.float64) * scale
    return theta.to(device=device, dtype=dtype), coefficients.to(device=device, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reaction", REACTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_rhs_matches_reference_float64(shape, reaction, device):
    theta, coefficients = sample(shape, device=device)
    torch.testing.assert_close(
        rda_rhs(theta, coefficients, reaction), rda_reference(theta, coefficients, reaction), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_rhs_in_every_dtype(dtype, device):
    theta, coefficients = sample((6, 4, 3, 3), dtype=dtype, device=device)
    expected = rda_reference(theta.double(), coefficients.double())
    eps = torch.finfo(dtype).eps
    # Accumulated in float32 (or float64), rounded once: within a few ulps of the terms.
    scale = theta.double().abs().max() * coefficients.double().abs().max() * 16
    torch.testing.assert_close(rda_rhs(theta, coefficients).double(), expected, rtol=0, atol=4 * eps * scale.item())


def rk_by_parts(theta, coefficients, tableau, h, reaction):
    """The RK step of dtheta/dt = q(theta) built from rda_rhs and rk_combine."""
    qs, stages = [], []
    for i in range(tableau.stages):
        which, weights = tableau.terms[i]
        stage = rk_combine(theta, [qs[j] for j in which], weights, h) if which else theta
        stages.append(stage)
        qs.append(rda_rhs(stage, coefficients, reaction))
    which, weights = tableau.terms[-1]
    return stages[1:] + [rk_combine(theta, [qs[j] for j in which], weights, h)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reaction", REACTIONS)
@pytest.mark.parametrize("method", sorted(TABLEAUX))
@pytest.mark.parametrize("shape", [(5, 3, 3, 3), (3, 2), (2, 2, 5, 5), (2, 1, 7, 7)], ids=str)
def test_fused_step_matches_composition(shape, method, reaction, device):
    theta, coefficients = sample(shape, device=device)
    tableau = TABLEAUX[method]
    fused = rda_rk_step(theta, coefficients, tableau, 0.3, reaction)
    parts = rk_by_parts(theta, coefficients, tableau, 0.3, reaction)
    assert len(fused) == tableau.stages
    for a, b in zip(fused, parts):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reaction", REACTIONS)
@pytest.mark.parametrize("shape", [(3, 2, 3, 3), (3, 2), (2, 2, 4, 5)], ids=str)
def test_gradcheck(shape, reaction, device):
    theta, coefficients = sample(shape, device=device)
    theta.requires_grad_(True)
    coefficients.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t, c: rda_rhs(t, c, reaction), (theta, coefficients))
    rk4 = TABLEAUX["rk4"]
    assert torch.autograd.gradcheck(lambda t, c: rda_rk_step(t, c, rk4, 0.2, reaction), (theta, coefficients))


def test_gradient_of_some_outputs_only():
    theta, coefficients = sample((3, 2, 3, 3))
    theta.requires_grad_(True)
    out = rda_rk_step(theta, coefficients, TABLEAUX["heun"], 0.5)
    (g,) = torch.autograd.grad(out[-1].sum(), theta)
    theta2 = theta.detach().requires_grad_(True)
    (e,) = torch.autograd.grad(rk_by_parts(theta2, coefficients, TABLEAUX["heun"], 0.5, "tanh")[-1].sum(), theta2)
    torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_opcheck(dtype, device):
    theta, coefficients = sample((4, 3, 3, 3), dtype=dtype, device=device)
    grad_needed = dtype == torch.float64
    theta.requires_grad_(grad_needed)
    coefficients.requires_grad_(grad_needed)
    torch.library.opcheck(ops.rda_rhs.default, (theta, coefficients, 0))
    torch.library.opcheck(ops.rda_rk_step.default, (theta, coefficients, 0, [0.5], [0.0, 1.0], 0.1))
    t, c = theta.detach(), coefficients.detach()
    torch.library.opcheck(ops.rda_rhs_backward.default, (torch.randn_like(t), t, c, 1))
    grads = [torch.randn_like(t), torch.randn_like(t)]
    torch.library.opcheck(ops.rda_rk_step_backward.default, (grads, t, c, 1, [0.5], [0.0, 1.0], 0.1))


@needs_cuda
@pytest.mark.parametrize("shape", [(16, 9, 3, 3), (9, 70, 1, 3), (5, 30, 2, 3)], ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_cuda_matches_cpu(dtype, shape):
    theta, coefficients = sample(shape, dtype=dtype)
    tol = {"rtol": 0, "atol": 8 * torch.finfo(dtype).eps * 4}
    torch.testing.assert_close(rda_rhs(theta.cuda(), coefficients.cuda()).cpu(), rda_rhs(theta, coefficients), **tol)
    rk4 = TABLEAUX["rk4"]
    for a, b in zip(rda_rk_step(theta.cuda(), coefficients.cuda(), rk4, 0.2), rda_rk_step(theta, coefficients, rk4, 0.2)):
        torch.testing.assert_close(a.cpu(), b, **tol)
    grads = [torch.randn_like(theta) for _ in range(4)]
    cpu = ops.rda_rk_step_backward(grads, theta, coefficients, 0, [0.5, 0, 0.5, 0, 0, 1], [1 / 6, 1 / 3, 1 / 3, 1 / 6], 0.2)
    cuda = ops.rda_rk_step_backward(
        [g.cuda() for g in grads], theta.cuda(), coefficients.cuda(), 0, [0.5, 0, 0.5, 0, 0, 1], [1 / 6, 1 / 3, 1 / 3, 1 / 6], 0.2
    )
    for a, b in zip(cuda, cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-3 if dtype != torch.float64 else 1e-12, atol=1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5)


# A block of the CUDA kernels moves a tile of slices through shared memory: 128 (64 for
# 7x7) in the forward, 64 of one output channel in the backward. Every shape here ends a
# tile part-full, in the fixed-shape kernels (1x1, 3x3, 1x3, 3x1, also a 3-D weight) and
# the run-time-shape ones (2x3, 5x5, 7x7). On GPUs of up to 150 multiprocessors (132 on
# an H200) the 3x3 and 7x7 forwards take several tiles per block, and on up to 137 the
# 1x1 and last 3x3 backwards take several channels per block, the latter with several
# tiles per channel.
TILED_SHAPES = [
    (3, 70, 2, 3), (40, 70, 1, 3), (40, 70, 3), (70, 40, 3, 1), (5, 130, 5, 5), (1100, 3, 1, 1),
    (300, 257, 3, 3), (200, 201, 7, 7), (1200, 70, 3, 3),
]
FIVE_STAGES = Tableau([[], [0.3], [0.1, 0.2], [0.5, -0.2, 0.4], [0.1, 0.1, 0.3, 0.2]], [0.1, 0.2, 0.3, 0.2, 0.2])
EIGHT_STAGES = Tableau([[0.1 * (j + 1) / (i + 1) for j in range(i)] for i in range(8)], [0.125] * 8)
STAGE_COUNTS = [TABLEAUX["euler"], TABLEAUX["midpoint"], TABLEAUX["rk4"], FIVE_STAGES, EIGHT_STAGES]


@needs_cuda
@pytest.mark.parametrize("tableau", STAGE_COUNTS, ids=lambda t: f"{t.stages}_stages")
@pytest.mark.parametrize("shape", TILED_SHAPES, ids=str)
def test_cuda_matches_cpu_across_tiles(shape, tableau):
    theta, coefficients = sample(shape)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(tableau.stages)]
    a = [x for row in tableau.a for x in row]
    b = list(tableau.b)
    calls = [
        lambda th, co, gr: [ops.rda_rhs(th, co, 0)],
        lambda th, co, gr: ops.rda_rhs_backward(gr[0], th, co, 0),
        lambda th, co, gr: ops.rda_rk_step(th, co, 0, a, b, 0.2),
        lambda th, co, gr: ops.rda_rk_step_backward(gr, th, co, 0, a, b, 0.2),
    ]
    for call in calls:
        expected = call(theta, coefficients, grads)
        got = call(theta.cuda(), coefficients.cuda(), [x.cuda() for x in grads])
        assert len(got) == len(expected)
        for x, y in zip(got, expected):
            torch.testing.assert_close(x.cpu(), y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "theta_shape, coefficient_shape, message",
    [
        ((3, 2, 3, 3, 1), (4, 3), r"expected a convolution weight \(Cout, Cin, kh, kw\)"),
        ((3,), (4, 3), r"expected a convolution weight"),
        ((3, 2, 9, 9), (4, 3), r"9x9 taps per filter; the fused kernels take at most 49"),
        ((3, 2, 3, 3), (4, 2), r"coefficients have shape \[4, 2\]; expected \(4, 3\)"),
        ((3, 2, 3, 3), (3,), r"coefficients have shape \[3\]; expected \(4, 3\)"),
    ],
)
def test_bad_shapes(theta_shape, coefficient_shape, message):
    with pytest.raises(RuntimeError, match=message):
        rda_rhs(torch.zeros(theta_shape), torch.zeros(coefficient_shape))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("side, shown", [(2**31, "2147483648x1"), (2**32 + 3, "4294967299x1")])
def test_filter_sides_beyond_int_are_refused(side, shown, device):
    # Sides are checked before they are narrowed to int, where they would wrap around to a
    # negative or small side (3 for 2^32 + 3) and pass. Expanded: no memory behind them.
    theta = torch.zeros(1, dtype=torch.float16, device=device).expand(1, 1, side, 1)
    coefficients = torch.zeros(4, 1, dtype=torch.float16, device=device)
    for call in (lambda: rda_rhs(theta, coefficients), lambda: rda_rk_step(theta, coefficients, TABLEAUX["euler"], 0.1)):
        with pytest.raises(RuntimeError, match=f"theta has {shown} taps per filter"):
            call()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_coefficients_propagate_to_their_channel(bad, device):
    # Not checked (a check would synchronize the GPU on every call): a non-finite
    # coefficient shows up in its own output channel, as in any elementwise op.
    theta, coefficients = sample((3, 2, 3, 3), device=device)
    coefficients[2, 1] = bad
    for out in (rda_rhs(theta, coefficients), rda_rk_step(theta, coefficients, TABLEAUX["rk4"], 0.1)[-1]):
        assert not out[1].isfinite().all()
        assert out[[0, 2]].isfinite().all()


def rda_calls(theta, coefficients):
    """Every RDA op forward and backward, on theta's device."""
    theta = theta.detach().requires_grad_(True)
    coefficients = coefficients.detach().requires_grad_(True)
    loss = rda_rhs(theta, coefficients).sum() + sum(o.sum() for o in rda_rk_step(theta, coefficients, TABLEAUX["rk4"], 0.1))
    loss.backward()


def test_no_host_sync_inside_the_ops():
    # A .item() (or any read of a tensor's value on the host) inside an op would stall
    # the GPU on every call and break CUDA-graph capture; the profiler sees it on the CPU.
    theta, coefficients = sample((4, 3, 3, 3))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], acc_events=True) as prof:
        rda_calls(theta, coefficients)
    names = {e.name for e in prof.events()}
    assert {"anode_ext::rda_rhs", "anode_ext::rda_rk_step_backward"} <= names
    assert not names & {"aten::item", "aten::_local_scalar_dense", "aten::is_nonzero"}


@needs_cuda
def test_cuda_ops_do_not_synchronize():
    theta, coefficients = sample((8, 4, 3, 3), dtype=torch.float32, device="cuda")
    rda_calls(theta, coefficients)
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        rda_calls(theta, coefficients)
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@needs_cuda
def test_cuda_ops_capture_in_a_graph():
    theta, coefficients = sample((8, 4, 3, 3), dtype=torch.float32, device="cuda")
    expected = rda_rk_step(theta, coefficients, TABLEAUX["rk4"], 0.1)[-1]
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        rda_rk_step(theta, coefficients, TABLEAUX["rk4"], 0.1)
        with torch.cuda.graph(graph, stream=stream):
            captured = rda_rk_step(theta, coefficients, TABLEAUX["rk4"], 0.1)[-1]
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, expected, rtol=0, atol=0)


def test_dtype_and_reaction_errors():
    with pytest.raises(RuntimeError, match="coefficients have dtype Double but theta has dtype Float"):
        rda_rhs(torch.zeros(3, 2), torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="theta has dtype Long"):
        rda_rhs(torch.zeros(3, 2, dtype=torch.int64), torch.zeros(4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="unknown reaction 'sigmoid'; expected one of tanh, relu, none"):
        rda_rhs(torch.zeros(3, 2), torch.zeros(4, 3), "sigmoid")
    with pytest.raises(RuntimeError, match="reaction code 7 is unknown"):
        ops.rda_rhs(torch.zeros(3, 2), torch.zeros(4, 3), 7)


def test_tableau_errors():
    nine = Tableau([[0.0] * i for i in range(9)], [1 / 9] * 9)
    with pytest.raises(RuntimeError, match="the tableau has 9 stages; expected 1 to 8"):
        rda_rk_step(torch.zeros(3, 2), torch.zeros(4, 3), nine, 0.1)
    with pytest.raises(RuntimeError, match="rda_rk_step: got 2 entries of a for 2 stages; expected 1"):
        ops.rda_rk_step(torch.zeros(3, 2), torch.zeros(4, 3), 0, [0.5, 0.5], [0.5, 0.5], 0.1)
    grads = [torch.zeros(3, 2), torch.zeros(3, 2)]
    with pytest.raises(RuntimeError, match="rda_rk_step_backward: got 2 entries of a for 2 stages"):
        ops.rda_rk_step_backward(grads, torch.zeros(3, 2), torch.zeros(4, 3), 0, [0.5, 0.5], [0.5, 0.5], 0.1)
    with pytest.raises(RuntimeError, match="rda_rk_step_backward: got 1 gradients for 2 outputs"):
        ops.rda_rk_step_backward(grads[:1], torch.zeros(3, 2), torch.zeros(4, 3), 0, [0.5], [0.5, 0.5], 0.1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_step_or_tableau_is_refused(bad, device):
    # Tableau refuses such entries; the ops refuse them from any caller, also in h.
    theta, coefficients = sample((3, 2, 3, 3), device=device)
    with pytest.raises(RuntimeError, match="rda_rk_step: h is .*; expected a finite step size"):
        rda_rk_step(theta, coefficients, TABLEAUX["rk4"], bad)
    with pytest.raises(RuntimeError, match="an entry of a is .*; expected finite tableau entries"):
        ops.rda_rk_step(theta, coefficients, 0, [bad], [0.0, 1.0], 0.1)
    with pytest.raises(RuntimeError, match="rda_rk_step_backward: an entry of b is .*; expected finite"):
        ops.rda_rk_step_backward([theta, theta], theta, coefficients, 0, [0.5], [0.0, bad], 0.1)


def test_step_takes_a_method_name_and_refuses_other_objects():
    theta, coefficients = sample((3, 2, 3, 3))
    by_name = rda_rk_step(theta, coefficients, "midpoint", 0.2)
    for a, b in zip(by_name, rda_rk_step(theta, coefficients, TABLEAUX["midpoint"], 0.2)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown method 'rk5'; expected one of"):
        rda_rk_step(theta, coefficients, "rk5", 0.2)
    with pytest.raises(TypeError, match="h must be a real number, got str"):
        rda_rk_step(theta, coefficients, "midpoint", "0.2")


def test_a_meta_tensor_beside_a_real_theta_is_refused():
    # A meta argument sends the call to the fake kernels, also when theta is real: they
    # must refuse it rather than return theta-shaped memory nobody wrote.
    theta, coefficients = sample((3, 2, 3, 3))
    meta = coefficients.to("meta")
    on_meta = "coefficients are on meta but theta is on cpu; expected both on one device"
    with pytest.raises(RuntimeError, match=f"rda_rhs: {on_meta}"):
        rda_rhs(theta, meta)
    with pytest.raises(RuntimeError, match=f"rda_rk_step: {on_meta}"):
        rda_rk_step(theta, meta, TABLEAUX["rk4"], 0.1)
    gradient_on_meta = "a gradient is on meta but theta is on cpu"
    with pytest.raises(RuntimeError, match=f"rda_rhs_backward: {gradient_on_meta}"):
        ops.rda_rhs_backward(theta.to("meta"), theta, coefficients, 0)
    with pytest.raises(RuntimeError, match=f"rda_rk_step_backward: {gradient_on_meta}"):
        ops.rda_rk_step_backward([theta, theta.to("meta")], theta, coefficients, 0, [0.5], [0.0, 1.0], 0.1)
    assert rda_rhs(theta.to("meta"), meta).device.type == "meta"


@pytest.mark.parametrize("device", DEVICES)
def test_weights_without_taps_cost_nothing_per_filter(device):
    # 2^40 filters of no taps: no memory behind theta, and none may be asked for (the
    # coefficient gradients are summed per filter) nor any work done per filter.
    theta = torch.empty(1, 2**40, 0, 3, device=device)
    coefficients = torch.ones(4, 1, device=device)
    assert rda_rhs(theta, coefficients).shape == theta.shape
    assert [o.shape for o in rda_rk_step(theta, coefficients, TABLEAUX["midpoint"], 0.1)] == [theta.shape] * 2
    for grad_theta, grad_coefficients in (
        ops.rda_rhs_backward(theta, theta, coefficients, 0),
        ops.rda_rk_step_backward([theta, theta], theta, coefficients, 0, [0.5], [0.0, 1.0], 0.1),
    ):
        assert grad_theta.shape == theta.shape
        assert torch.equal(grad_coefficients, torch.zeros_like(coefficients))


def test_learnable_step_size_and_large_filters_are_refused():
    theta, coefficients = sample((3, 2, 3, 3))
    h = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="h is a tensor that requires grad"):
        rda_rk_step(theta, coefficients, TABLEAUX["rk4"], h)
    torch.testing.assert_close(rda_rk_step(theta, coefficients, TABLEAUX["rk4"], h.detach())[-1],
                               rda_rk_step(theta, coefficients, TABLEAUX["rk4"], 0.1)[-1], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"at most 49 taps \(7x7\); got a weight of shape \(4, 4, 9, 9\)"):
        RDA([(4, 4, 3, 3), (4, 4, 9, 9)])
    assert len(RDA([(4, 4, 7, 7), (4, 4, 49), (4, 4)]).coefficients) == 3


def test_double_backward_is_refused():
    theta, coefficients = sample((3, 2, 3, 3))
    theta.requires_grad_(True)
    with pytest.raises(RuntimeError, match="rda_rhs_backward is not differentiable"):
        torch.autograd.grad(rda_rhs(theta, coefficients).square().sum(), theta, create_graph=True)


def _tanh_sweep():
    """float32 values where the lane tanh is hardest: dense around the switch between
    its two forms (|x| = 0.5), through saturation, every binade up to 1e30 (random bit
    patterns; above about 8e37 the zero Laplacian of a 1x1 filter, 4x - 4x, overflows),
    and special values (not infinities: there the Laplacian is NaN); a length that leaves a partial lane group."""
    g = torch.Generator().manual_seed(5)
    bits = torch.randint(-(2**31), 2**31 - 1, (400_003,), generator=g, dtype=torch.int64).to(torch.int32)
    special = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-38, float("nan"), 9.0, 10.0, 1e30, -1e30])
    binades = bits.view(torch.float32)
    binades = binades[binades.abs() < 1e30]
    return torch.cat([torch.linspace(-12, 12, 600_001), torch.linspace(0.49, 0.51, 20_001), binades, special])


def _reaction_only(values):
    """q = tanh(theta) for theta of 1x1 filters holding `values` (d = u = v = 0, r = 1)."""
    theta = values.reshape(-1, 1, 1, 1)
    coefficients = torch.zeros(4, theta.shape[0], dtype=values.dtype)
    coefficients[3] = 1
    return ops.rda_rhs(theta, coefficients, 0).flatten()


def test_float32_tanh_within_2_5_ulp_and_special_values():
    values = _tanh_sweep()
    got = _reaction_only(values)
    expected = torch.tanh(values.double())
    finite = expected.isfinite()
    magnitude = expected[finite].abs().float()
    ulp = (torch.nextafter(magnitude, torch.tensor(float("inf"))) - magnitude).double()
    error = ((got[finite].double() - expected[finite]).abs() / ulp).max().item()
    assert error <= 2.5, f"float32 lane tanh is {error:.2f} ulp from tanh"
    assert torch.equal(got.isnan(), values.isnan())
    extremes = torch.tensor([1e-45, -1e-45, 1e30, -1e30])
    assert _reaction_only(extremes).tolist() == torch.tanh(extremes).tolist()


@pytest.mark.parametrize("neighbour", [0.1, 3.0], ids=["short_path", "long_path"])
def test_float32_tanh_keeps_the_sign_of_zero(neighbour):
    # q = 0 * lap + 0 * dx + 0 * dy + (-0) * tanh(theta): -0 only if tanh(-0) is -0 (the
    # terms before it are -0 too when theta is -0 and the coefficients are -0).
    theta = torch.tensor([-0.0, *[neighbour] * 7]).reshape(8, 1, 1, 1)
    coefficients = torch.full((4, 8), -0.0)
    coefficients[3] = 1.0
    q = ops.rda_rhs(theta, coefficients, 0).flatten()
    assert q[0].item() == 0.0 and q[0].signbit()


def test_float32_tanh_of_a_lane_does_not_depend_on_its_group():
    """Groups whose lanes are all below 0.5 in magnitude take a shorter path; a lane's
    value is the same bits in a group that has to take the longer one."""
    small = torch.linspace(-0.4999, 0.4999, 8 * 301)
    mixed = small.clone()
    mixed[::8] = torch.linspace(-9, 9, 301)
    kept = torch.ones_like(small, dtype=torch.bool)
    kept[::8] = False
    assert torch.equal(_reaction_only(small)[kept], _reaction_only(mixed)[kept])


def _rda_outputs(dtype):
    """Every RDA op on one weight of 61 lane groups (two threads' worth), with tanh, and
    tanh alone over _tanh_sweep."""
    theta, coefficients = sample((37, 13, 3, 3), dtype=dtype, seed=3)
    rk4 = TABLEAUX["rk4"]
    a = [w for row in rk4.a for w in row]
    g = torch.Generator().manual_seed(4)
    grads = [torch.randn(theta.shape, generator=g).to(dtype) for _ in range(rk4.stages)]
    return [
        _reaction_only(_tanh_sweep().to(dtype)),
        ops.rda_rhs(theta, coefficients, 0),
        *ops.rda_rhs_backward(grads[0], theta, coefficients, 0),
        *ops.rda_rk_step(theta, coefficients, 0, a, list(rk4.b), 0.3),
        *ops.rda_rk_step_backward(grads, theta, coefficients, 0, a, list(rk4.b), 0.3),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=dtype_id)
def test_cpu_results_do_not_depend_on_the_thread_count(dtype):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _rda_outputs(dtype)
        torch.set_num_threads(2)
        two = _rda_outputs(dtype)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_baseline_and_avx2_cpu_kernels_agree_bit_for_bit(tmp_path):
    """The kernels built for the baseline instruction set (forced by the environment
    variable, in a second process) give this process's results exactly; on a CPU
    without AVX2 both processes run the baseline kernels."""
    script = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_rda_ops import _rda_outputs\n"
        "torch.save({str(d): _rda_outputs(d) for d in (torch.float32, torch.float64)}, sys.argv[1])\n"
    )
    out = tmp_path / "baseline.pt"
    env = {**os.environ, "ANODE_EXT_RDA_BASELINE": "1"}
    subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=env, timeout=300)
    baseline = torch.load(out, weights_only=True)
    for dtype in (torch.float32, torch.float64):
        for a, b in zip(_rda_outputs(dtype), baseline[str(dtype)], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("shape", [(3, 2, 0, 3), (3, 2, 4, 0), (3, 2, 0)], ids=str)
def test_filters_without_taps(shape):
    # An empty weight of nonempty channels: empty outputs, zero coefficient gradients.
    theta = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    coefficients = torch.randn(4, shape[0], dtype=torch.float64, requires_grad=True)
    outs = rda_rk_step(theta, coefficients, TABLEAUX["rk4"], 0.1)
    assert all(o.shape == theta.shape for o in outs)
    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    assert theta.grad.shape == theta.shape
    assert torch.equal(coefficients.grad, torch.zeros_like(coefficients))
