"""Revolve: the recomputation count is optimal, at most c + 1 states are held, and the
options are checked. The optimum is computed here independently of the library."""

import heapq
import itertools
from functools import lru_cache

import pytest
import torch
from odefuncs import ConvBNFunc, make_func

from anode_ext import TABLEAUX, Revolve, odeint, revolve
from anode_ext.bench.memory import count_saved_bytes
from anode_ext.modes import grad_mode_named


def brute_force_advances(steps, checkpoints):
    """Fewest untaped steps over every possible play (Dijkstra), for small cases.

    The forward keeps any <= checkpoints of the states 1..steps-1. The backward holds
    at most checkpoints + 1 states (state 0 always), plus one working state; it may
    copy a held state into the working state, advance the working state one step
    (cost 1), keep the working state, drop a kept state, or tape the next step
    (steps-1 down to 0) from the working state or a held state.
    """
    start_sets = [
        frozenset((0, *kept))
        for r in range(checkpoints + 1)
        for kept in itertools.combinations(range(1, steps), r)
    ]
    none = -1  # no working state
    tiebreak = itertools.count()
    frontier = [(0, next(tiebreak), held, none, steps - 1) for held in start_sets]
    heapq.heapify(frontier)
    best = {}
    while frontier:
        cost, _, held, work, target = heapq.heappop(frontier)
        if target < 0:
            return cost
        key = (held, work, target)
        if best.get(key, 1 << 30) <= cost:
            continue
        best[key] = cost
        moves = []
        if work == target or target in held:
            moves.append((cost, held, none, target - 1))
        for q in held:
            if q <= target and q != work:
                moves.append((cost, held, q, target))
        if work != none and work < target:
            moves.append((cost + 1, held, work + 1, target))
        if work != none and work not in held and len(held) < checkpoints + 1:
            moves.append((cost, held | {work}, work, target))
        for q in held:
            if q != 0:
                moves.append((cost, held - {q}, work, target))
        for c, h, w, t in moves:
            heapq.heappush(frontier, (c, next(tiebreak), h, w, t))
    raise AssertionError("unreachable")


@lru_cache(maxsize=None)
def classic(length, free):
    """Griewank's recursion: advances to reverse `length` steps from a held state."""
    if length <= 1:
        return 0
    if free == 0:
        return length * (length - 1) // 2
    return min(m + classic(length - m, free - 1) + classic(m, free) for m in range(1, length))


@lru_cache(maxsize=None)
def dp_advances(length, free):
    """Forward-kept states chosen optimally, each remaining segment reversed classically."""
    best = classic(length, free)
    if free:
        for j in range(1, length):
            best = min(best, dp_advances(length - j, free - 1) + classic(j, free))
    return best


@pytest.mark.parametrize("steps, checkpoints", [(n, c) for n in range(1, 7) for c in range(1, 4)])
def test_optimum_matches_exhaustive_search(steps, checkpoints):
    assert revolve.optimal_advances(steps, checkpoints) == brute_force_advances(steps, checkpoints)


@pytest.mark.parametrize("steps", [8, 13, 32, 50, 128])
@pytest.mark.parametrize("checkpoints", [1, 2, 3, 5, 7])
def test_optimum_matches_recursion(steps, checkpoints):
    assert revolve.optimal_advances(steps, checkpoints) == dp_advances(steps, min(checkpoints, steps - 1))


@pytest.mark.parametrize("steps, checkpoints", [(1, 1), (2, 1), (5, 1), (8, 2), (8, 3), (13, 2), (16, 4), (8, 7), (8, 20)])
def test_schedule_is_valid_and_within_memory(steps, checkpoints):
    plan = revolve.schedule(steps, checkpoints)
    assert len(plan.kept) <= checkpoints
    held, work, taped, advances = {0, *plan.kept}, None, [], 0
    for action in plan.actions():
        if action.kind == "advance":
            assert action.start in held or action.start == work
            advances += action.stop - action.start
            work = action.stop
        elif action.kind == "store":
            assert work == action.start
            held.add(action.start)
        elif action.kind == "release":
            held.remove(action.start)
        else:
            assert action.start == work or action.start in held
            taped.append(action.start)
            work = None
        assert len(held) <= checkpoints + 1
    assert taped == list(range(steps - 1, -1, -1))
    assert advances == revolve.optimal_advances(steps, checkpoints)


class Counting(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, t, x):
        self.calls += 1
        return self.inner(t, x)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("steps, checkpoints", [(1, 1), (4, 1), (8, 2), (8, 3), (12, 2), (8, 7), (6, 9)])
def test_evaluations_and_held_states(method, steps, checkpoints):
    func, x = make_func("conv_bn")
    counting = Counting(func)
    with revolve.record() as events:
        y = odeint(counting, x, steps=steps, method=method, grad=grad_mode_named("revolve", checkpoints=checkpoints))
        y.sum().backward()
    stages = TABLEAUX[method].stages
    assert counting.calls == stages * (2 * steps + dp_advances(steps, min(checkpoints, steps - 1)))
    assert events and max(held for _, _, held in events) <= checkpoints + 1
    assert [p for kind, p, _ in events if kind == "backprop"] == list(range(steps - 1, -1, -1))


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_enough_checkpoints_cost_what_anode_costs(steps):
    counts = {}
    for grad, c in (("anode", None), ("revolve", max(1, steps - 1))):
        func, x = make_func("mlp")
        counting = Counting(func)
        odeint(counting, x, steps=steps, grad=grad_mode_named(grad, checkpoints=c)).sum().backward()
        counts[grad] = counting.calls
    assert counts["revolve"] == counts["anode"] == 2 * 4 * steps


def test_memory_budget_picks_checkpoints_from_state_size():
    func = ConvBNFunc(3).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    state = x.numel() * x.element_size()
    for budget, expected in ((state, 1), (2 * state + 7, 2), (100 * state, 7)):
        with count_saved_bytes(exclude=func.parameters()) as counter:
            y = odeint(func, x, steps=8, grad=Revolve(memory_budget=budget))
        assert counter.total <= (expected + 1) * state
        assert revolve.checkpoints_for_budget(budget, state, 8) == expected
        y.sum().backward()


@pytest.mark.parametrize("checkpoints", [0, -1, 1.5, True, "2"])
def test_bad_checkpoints(checkpoints):
    func, x = make_func("mlp")
    with pytest.raises(ValueError, match="checkpoints must be an integer >= 1"):
        Revolve(checkpoints=checkpoints)


def test_budget_smaller_than_one_state():
    func, x = make_func("mlp")
    with pytest.raises(ValueError, match=r"memory_budget=10 bytes holds no checkpoint: one state of this block takes 96 bytes"):
        odeint(func, x, steps=4, grad=Revolve(memory_budget=10))
    with pytest.raises(ValueError, match="memory_budget must be a non-negative integer"):
        Revolve(memory_budget=-5)


def test_budget_of_an_empty_state_and_bad_sizes():
    assert revolve.checkpoints_for_budget(0, 0, 8) == 7
    with pytest.raises(ValueError, match="state_bytes must be a non-negative integer, got -1"):
        revolve.checkpoints_for_budget(100, -1, 8)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        revolve.checkpoints_for_budget(100, 8, 0)
    empty = torch.zeros(0, 3, requires_grad=True)
    out = odeint(lambda t, y: -y, empty, steps=4, grad=Revolve(memory_budget=0))
    assert out.shape == (0, 3)
    out.sum().backward()


def test_default_checkpoints_is_log2_steps():
    func, x = make_func("mlp")
    with revolve.record() as events:
        odeint(func, x, steps=16, grad="revolve").sum().backward()
    assert max(held for _, _, held in events) <= 4 + 1


@pytest.mark.parametrize("grad", ["anode", "revolve"])
def test_return_all_gradients_equal_direct(grad):
    def run(mode):
        func, x = make_func("mlp")
        states = odeint(func, x, steps=5, method="midpoint", grad=grad_mode_named(mode, checkpoints=2 if mode == "revolve" else None), return_all=True)
        weights = torch.linspace(-1, 1, states.numel(), dtype=states.dtype).view(states.shape)
        (states * weights).sum().backward()
        return [x.grad] + [p.grad for p in func.parameters()]

    for g, e in zip(run(grad), run("direct")):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-13)
