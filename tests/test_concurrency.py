"""Solves in several threads at once give the results they give one at a time, in every
gradient mode; instrumentation installed in one thread sees only that thread's solves."""

import copy
import threading

import pytest
import torch
from odefuncs import ConvBNFunc, MLPFunc

from anode_ext import odeint, revolve
from anode_ext.modes import grad_mode_named

MODES = [("direct", None), ("anode", None), ("revolve", 2), ("adjoint", None)]
THREADS = 4


def run_threads(work, count=THREADS):
    """work(i) in `count` threads started together; their results, or their first error."""
    results, errors = [None] * count, []
    barrier = threading.Barrier(count)

    def target(i):
        try:
            barrier.wait()
            for _ in range(3):  # several solves each, so that they overlap
                results[i] = work(i)
        except Exception as error:  # reported in the main thread
            errors.append(error)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("grad, checkpoints", MODES, ids=[m for m, _ in MODES])
def test_shared_module_in_threads(grad, checkpoints):
    torch.manual_seed(0)
    func = MLPFunc().double()
    inputs = [torch.randn(5, 4, dtype=torch.float64, requires_grad=True) for _ in range(THREADS)]
    params = list(func.parameters())

    def work(i):
        y = odeint(func, inputs[i], steps=6, method="rk4", grad=grad_mode_named(grad, checkpoints=checkpoints))
        return torch.autograd.grad(y.square().sum(), [inputs[i], *params])

    serial = [work(i) for i in range(THREADS)]
    threaded = run_threads(work)
    for got, expected in zip(threaded, serial):
        for g, e in zip(got, expected):
            assert torch.equal(g, e)


@pytest.mark.parametrize("grad, checkpoints", MODES[1:3], ids=["anode", "revolve"])
def test_modules_with_buffers_in_threads(grad, checkpoints):
    torch.manual_seed(0)
    template = ConvBNFunc(3).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)

    def work(i, funcs):
        func = funcs[i]
        y0 = (x + i).requires_grad_(True)
        y = odeint(func, y0, steps=3, grad=grad_mode_named(grad, checkpoints=checkpoints))
        grads = torch.autograd.grad(y.square().sum(), [y0, *func.parameters()])
        return grads, [b.clone() for b in func.buffers()]

    serial_funcs = [copy.deepcopy(template) for _ in range(THREADS)]
    serial = [work(i, serial_funcs) for i in range(THREADS)]
    thread_funcs = [copy.deepcopy(template) for _ in range(THREADS)]
    threaded = run_threads(lambda i: work(i, thread_funcs), count=THREADS)
    # Each thread ran its solve three times; the serial reference once: compare gradients,
    # and buffers after the same number of solves.
    for (g_got, _), (g_exp, _) in zip(threaded, serial):
        for g, e in zip(g_got, g_exp):
            assert torch.equal(g, e)
    for _ in range(2):
        for i in range(THREADS):
            work(i, serial_funcs)
    for a, b in zip(thread_funcs, serial_funcs):
        for p, q in zip(a.buffers(), b.buffers()):
            assert torch.equal(p, q)


def test_record_sees_only_its_own_thread():
    torch.manual_seed(0)
    func = MLPFunc().double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def solve(_):
        odeint(func, x, steps=4, grad=grad_mode_named("revolve", checkpoints=1)).sum().backward()

    with revolve.record() as events:
        run_threads(solve)
        assert events == []
        solve(0)
    assert [p for kind, p, _ in events if kind == "backprop"] == [3, 2, 1, 0]
