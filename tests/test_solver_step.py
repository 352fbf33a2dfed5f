"""The compiled step and solve loops against the Python ones that torch.compile traces:
the same numbers bit for bit, the same gradients, the same errors."""

from __future__ import annotations

import pytest
import torch

from odefuncs import ConvBNFunc

from anode_ext import TABLEAUX, CoupledODEBlock, Tableau
from anode_ext import solver

PATHS = ("compiled", "python")


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Run the test once on each implementation of the solver functions (the Python one
    is what runs while torch.compile traces)."""
    if request.param == "python":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    return request.param


def two_tensor_func(weight: torch.Tensor):
    def func(t: float, state):
        y, z = state
        return (torch.tanh(y @ weight) * (1 + t), y.sum(1, keepdim=True) * z - t)

    return func


def step_both_ways(monkeypatch, fn):
    compiled = fn()
    with monkeypatch.context() as m:
        m.setattr(torch.compiler, "is_compiling", lambda: True)
        python = fn()
    return compiled, python


@pytest.mark.parametrize("method", sorted(TABLEAUX))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_step_equals_python_step(monkeypatch, method, dtype):
    torch.manual_seed(0)
    weight = torch.randn(5, 5, dtype=dtype, requires_grad=True)
    y = torch.randn(3, 5, dtype=dtype, requires_grad=True)
    z = torch.randn(3, 1, dtype=dtype, requires_grad=True)
    func = two_tensor_func(weight)

    def run():
        out = solver.rk_step(func, 0.25, 0.1, (y, z), TABLEAUX[method])
        grads = torch.autograd.grad(sum((o * (i + 1)).sum() for i, o in enumerate(out)), (y, z, weight))
        return [o.detach() for o in out], grads

    (out_c, grads_c), (out_p, grads_p) = step_both_ways(monkeypatch, run)
    for a, b in zip([*out_c, *grads_c], [*out_p, *grads_p]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("return_all", [False, True])
def test_compiled_solve_equals_stepwise_solve(monkeypatch, return_all):
    torch.manual_seed(0)
    weight = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 1, dtype=torch.float64, requires_grad=True)
    func = two_tensor_func(weight)
    problem = solver.Problem(func, TABLEAUX["rk4"], 0.3, 0.1, 7, return_all)

    def run():
        out = problem.solve((y, z))
        grads = torch.autograd.grad(sum((o * (i + 1)).sum() for i, o in enumerate(out)), (y, z, weight))
        return [o.detach() for o in out], grads

    (out_c, grads_c), (out_p, grads_p) = step_both_ways(monkeypatch, run)
    assert out_c[0].shape == ((8, 3, 5) if return_all else (3, 5))
    for a, b in zip([*out_c, *grads_c], [*out_p, *grads_p]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_compiled_step_with_supplied_stages_equals_python(monkeypatch, method):
    """A coupled block's steps take their weights' stages from the fused RDA kernel
    (solver.Supplied): output and every gradient the same bit for bit both ways."""
    torch.manual_seed(0)
    block = CoupledODEBlock(ConvBNFunc(3), q="rda", steps=3, method=method, grad="direct").double()
    with torch.no_grad():
        for c in block.q.coefficients:
            c.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)

    def run():
        y = block(x)
        return y.detach(), torch.autograd.grad((y * y).sum(), [x, *block.parameters()])

    (y_c, grads_c), (y_p, grads_p) = step_both_ways(monkeypatch, run)
    assert torch.equal(y_c, y_p)
    for a, b in zip(grads_c, grads_p, strict=True):
        assert torch.equal(a, b)


def test_supplied_stages_must_match_the_tableau_and_the_state(path):
    y, w = torch.zeros(2), torch.ones(2)
    func = lambda t, s: (s[0],)  # noqa: E731
    supplied = solver.Supplied(stages=[(w,)], result=(w,))
    with pytest.raises(ValueError, match="1 supplied stages for a tableau of 4 stages"):
        solver.rk_step(func, 0.0, 0.1, (y, w), TABLEAUX["rk4"], supplied)
    uneven = solver.Supplied(stages=[(w,), (w, w)], result=(w,))
    with pytest.raises(ValueError, match=r"supplied stages of \[1, 2\] tensors and a result of 1 for a state of 2"):
        solver.rk_step(func, 0.0, 0.1, (y, w), TABLEAUX["midpoint"], uneven)
    too_long = solver.Supplied(stages=[(w, w)], result=(w, w))
    with pytest.raises(ValueError, match="a result of 2 for a state of 1"):
        solver.rk_step(func, 0.0, 0.1, (y,), TABLEAUX["euler"], too_long)


def test_compiled_step_refuses_inconsistent_supplied_tensors():
    from anode_ext._library import _C

    plan, w = solver._step_plan(TABLEAUX["euler"]), torch.ones(2)
    with pytest.raises(RuntimeError, match="a supplied result without supplied stages"):
        _C.rk_step(lambda t, s: (s[0],), 0.0, 0.1, [w], plan, supplied_result=[w])
    with pytest.raises(RuntimeError, match="a supplied stage of 2 tensors for a supplied result of 1"):
        _C.rk_step(lambda t, s: (s[0],), 0.0, 0.1, [w], plan, supplied_stages=[[w, w]], supplied_result=[w])


def test_solve_evaluates_func_at_each_step_start(path):
    seen = []

    def func(t, state):
        seen.append(t)
        return (torch.ones_like(state[0]),)

    out = solver.Problem(func, TABLEAUX["euler"], 0.1, 0.2, 4).solve((torch.zeros(2),))
    assert seen == [0.1 + n * 0.2 for n in range(4)]
    torch.testing.assert_close(out[0], torch.full((2,), 0.8))


def test_rk_solve_rejects_negative_steps():
    from anode_ext._library import _C

    with pytest.raises(RuntimeError, match="rk_solve: steps must be >= 0, got -1"):
        _C.rk_solve(lambda t, s: s, 0.0, 0.1, -1, [torch.ones(2)], solver._step_plan(TABLEAUX["euler"]))


def test_custom_tableau_and_zero_coefficients_match(monkeypatch):
    tableau = Tableau([[], [0.0], [0.3, 0.0]], [0.0, 0.5, 0.5], c=[0.0, 0.1, 0.4])
    y = torch.randn(4, dtype=torch.float64)
    compiled, python = step_both_ways(monkeypatch, lambda: solver.rk_step(lambda t, s: (s[0] * t + 1,), 1.0, 0.5, (y,), tableau))
    assert torch.equal(compiled[0], python[0])


def test_compiled_combine_stages_equals_python():
    from anode_ext._library import _C

    state = (torch.randn(6), torch.randn(2, 3))
    ks = [tuple(torch.randn_like(s) for s in state) for _ in range(3)]
    compiled = _C.combine_stages(state, ks, (0, 2), (0.25, -1.5), 0.2)
    python = solver.combine_stages(state, ks, (0, 2), (0.25, -1.5), 0.2)
    for a, b in zip(compiled, python):
        assert torch.equal(a, b)
    assert solver.combine_stages(state, ks, (), (), 0.2) == state


def test_func_sees_stage_times_and_states(path):
    seen = []

    def func(t, state):
        seen.append((t, state[0].clone()))
        return (torch.ones_like(state[0]),)

    solver.rk_step(func, 1.0, 0.5, (torch.zeros(2),), TABLEAUX["rk4"])
    assert [t for t, _ in seen] == [1.0, 1.25, 1.25, 1.5]
    assert [float(s[0]) for _, s in seen] == [0.0, 0.25, 0.25, 0.5]


def test_lower_precision_derivative_takes_the_state_dtype(path):
    y = torch.ones(3, dtype=torch.float64)
    out = solver.rk_step(lambda t, s: (s[0].float() * 0.5,), 0.0, 1.0, (y,), TABLEAUX["euler"])
    assert out[0].dtype == torch.float64
    assert torch.equal(out[0], torch.full((3,), 1.5, dtype=torch.float64))


@pytest.mark.parametrize(
    "returned, error, message",
    [
        (lambda s: 1.0, TypeError, "func must return a tensor or a sequence of tensors, got float"),
        (lambda s: "ab", TypeError, "func must return a tensor or a sequence of tensors, got str"),
        (lambda s: (s[0], s[0]), RuntimeError, "func returned 2 tensors for a state of 1"),
        (lambda s: [None], TypeError, "func must return tensors; element 0 is NoneType"),
        (lambda s: s[0].sum(), RuntimeError, r"func returned shape \(\) for a state of shape \(2,\); dy/dt must"),
        (lambda s: s[0][None], RuntimeError, r"func returned shape \(1, 2\) for a state of shape \(2,\)"),
        (lambda s: s[0].to("meta"), RuntimeError, "func returned a tensor on meta for a state on cpu"),
    ],
)
def test_bad_derivatives_get_the_same_error(path, returned, error, message):
    with pytest.raises(error, match=message):
        solver.rk_step(lambda t, s: returned(s), 0.0, 0.1, (torch.ones(2),), TABLEAUX["midpoint"])


def test_exception_in_func_passes_through_unchanged(path):
    class Stop(Exception):
        pass

    def func(t, s):
        raise Stop("from func")

    with pytest.raises(Stop, match="from func"):
        solver.rk_step(func, 0.0, 0.1, (torch.ones(2),), TABLEAUX["heun"])


@pytest.mark.parametrize("combine", ["compiled", "python"])
def test_kernel_errors_reach_python_as_runtime_errors(combine):
    from anode_ext._library import _C

    state = (torch.ones(2),)
    ks = [(torch.ones(2, dtype=torch.float64),)]
    fn = _C.combine_stages if combine == "compiled" else solver.combine_stages
    with pytest.raises(RuntimeError, match="ks\\[0\\] has dtype Double but y has dtype Float") as info:
        fn(state, ks, (0,), (1.0,), 0.1)
    assert "Exception raised from" not in str(info.value)


def test_combine_stages_rejects_unknown_stages():
    from anode_ext._library import _C

    state = [torch.ones(2)]
    with pytest.raises(RuntimeError, match="stage 1 does not exist; 1 stages are known"):
        _C.combine_stages(state, [(torch.ones(2),)], [1], [1.0], 0.1)
    with pytest.raises(RuntimeError, match="stage 0 has 2 tensors for a state of 1"):
        _C.combine_stages(state, [(torch.ones(2), torch.ones(2))], [0], [1.0], 0.1)


def test_step_plan_rejects_inconsistent_rows():
    from anode_ext._library import _C

    with pytest.raises(RuntimeError, match="expected 3 rows of terms"):
        _C.StepPlan([[]], [[]], [0.0, 0.5])
    with pytest.raises(RuntimeError, match="row 1 refers to stage 1; expected an earlier stage"):
        _C.StepPlan([[], [1], [0]], [[], [1.0], [1.0]], [0.0, 1.0])


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_supplied_stages_give_the_step_of_the_whole_system(method):
    # w evolves on its own and y depends on w: stepping w elsewhere and supplying its
    # stages gives what stepping the whole system gives.
    tableau = TABLEAUX[method]
    torch.manual_seed(0)
    y, w = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    ks, w_stages = [], []
    for i in range(tableau.stages):
        stage = solver.combine_stages((w,), ks, *tableau.terms[i], 0.3)
        w_stages.append(stage)
        ks.append((-torch.sin(stage[0]),))
    supplied = solver.Supplied(stages=w_stages, result=solver.combine_stages((w,), ks, *tableau.terms[-1], 0.3))

    whole = solver.rk_step(lambda t, s: (torch.tanh(s[0]) * s[1] + t, -torch.sin(s[1])), 0.5, 0.3, (y, w), tableau)
    split = solver.rk_step(lambda t, s: (torch.tanh(s[0]) * s[1] + t,), 0.5, 0.3, (y, w), tableau, supplied)
    for a, b in zip(whole, split):
        assert torch.equal(a, b)
