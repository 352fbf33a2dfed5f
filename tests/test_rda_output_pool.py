"""The CPU RDA ops take large outputs from a pool of freed buffers (csrc/cpu/output_pool.h).

A reused buffer holds another tensor's old values: every output must be written in full,
and no buffer may be handed out while a tensor still uses it.
"""

import threading

import torch

from anode_ext import TABLEAUX, release_rda_buffers, rda_rhs, rda_rk_step
from anode_ext._library import _C

CAP = 512 << 20
SHAPE = (128, 256, 3, 3)  # 1.2 MB in float32: above the pool's 1 MiB threshold


def operands(seed, shape=SHAPE):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen), 0.1 * torch.randn(4, shape[0], generator=gen)


def backward_of_step(theta, coefficients):
    theta = theta.clone().requires_grad_(True)
    outs = rda_rk_step(theta, coefficients, TABLEAUX["rk4"], 0.1)
    (grad,) = torch.autograd.grad(sum(o.sum() for o in outs), theta)
    return outs, grad


def test_reused_buffers_are_written_in_full():
    release_rda_buffers()
    theta, coefficients = operands(0)
    expected = [o.clone() for o in rda_rk_step(theta, coefficients, TABLEAUX["rk4"], 0.1)]
    expected_rhs = rda_rhs(theta, coefficients).clone()
    expected_grad = backward_of_step(theta, coefficients)[1].clone()
    # Leave dirty buffers behind: the next outputs reuse them.
    other = rda_rk_step(*operands(1), TABLEAUX["rk4"], 0.1)
    dirty = {o.data_ptr() for o in other}
    for o in other:
        o.fill_(float("nan"))
    del other, o
    outs = rda_rk_step(theta, coefficients, TABLEAUX["rk4"], 0.1)
    assert {o.data_ptr() for o in outs} <= dirty
    for got, want in zip(outs, expected):
        assert torch.equal(got, want)
    del outs
    assert torch.equal(rda_rhs(theta, coefficients), expected_rhs)
    assert torch.equal(backward_of_step(theta, coefficients)[1], expected_grad)


def test_buffers_in_use_are_not_handed_out():
    theta, coefficients = operands(2)
    held = rda_rk_step(theta, coefficients, TABLEAUX["rk4"], 0.1)
    view = held[0][1:]  # a view keeps the buffer in use after the tensor is gone
    pointers = {t.data_ptr() for t in held[1:]}
    first = held[0].data_ptr()
    held = held[1:]
    again = rda_rk_step(theta, coefficients, TABLEAUX["rk4"], 0.1)
    assert not pointers & {o.data_ptr() for o in again}
    assert first not in {o.data_ptr() for o in again}
    assert view.untyped_storage().data_ptr() == first


def test_small_outputs_bypass_the_pool():
    release_rda_buffers()
    outs = rda_rk_step(*operands(3, (8, 4, 3, 3)), TABLEAUX["rk4"], 0.1)
    del outs
    assert _C.pooled_output_bytes() == 0


def test_pool_keeps_at_most_its_cap_and_releases_it():
    release_rda_buffers()
    theta, coefficients = operands(4, (1024, 228, 3, 3))  # 8.4 MB
    block = theta.numel() * theta.element_size()
    outs = [rda_rhs(theta, coefficients) for _ in range(CAP // block + 4)]
    del outs
    kept = _C.pooled_output_bytes()
    assert CAP - block < kept <= CAP
    assert release_rda_buffers() == kept
    assert _C.pooled_output_bytes() == 0


def test_outputs_resize_and_free_from_other_threads():
    theta, coefficients = operands(5)
    expected = rda_rhs(theta, coefficients).clone()
    resized = rda_rhs(theta, coefficients)
    resized.resize_(3, 3)
    assert resized.shape == (3, 3)
    failures = []
    freers = []

    def work():
        try:
            for _ in range(20):
                out = rda_rhs(theta, coefficients)
                if not torch.equal(out, expected):
                    failures.append("wrong values")
                out.fill_(float("nan"))
                freer = threading.Thread(target=lambda o=out: o.zero_())
                freer.start()
                freers.append(freer)
                del out
        except Exception as error:  # reported below, with the thread's error
            failures.append(repr(error))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for t in freers:  # complete once the workers are done
        t.join()
    assert not failures
