"""Butcher tableaux: the named methods, user tableaux and their errors, observed orders."""

import math

import pytest
import torch

from anode_ext import TABLEAUX, Tableau, get_tableau, odeint

ORDERS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "rk4_38": 4}


def test_named_methods():
    assert set(TABLEAUX) == set(ORDERS)
    for name, t in TABLEAUX.items():
        assert t.name == name
        assert math.isclose(sum(t.b), 1.0)
        for row, c in zip(t.a, t.c):
            assert math.isclose(sum(row), c)


def test_midpoint_is_anodes_rk2():
    t = get_tableau("midpoint")
    assert t.a == ((), (0.5,)) and t.b == (0.0, 1.0) and t.c == (0.0, 0.5)


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_observed_order(name):
    # y' = -y + sin(t) on [0, 2] (the forcing checks the stage times c): the error
    # must shrink as h^order once h is in the asymptotic range.
    def f(t, y):
        return -y + math.sin(t)

    y0 = torch.tensor([1.0], dtype=torch.float64)
    exact = 1.5 * math.exp(-2.0) + 0.5 * (math.sin(2.0) - math.cos(2.0))
    errors = [abs(odeint(f, y0, 0.0, 2.0, steps=n, method=name, grad="direct").item() - exact) for n in (128, 256)]
    observed = math.log2(errors[0] / errors[1])
    assert abs(observed - ORDERS[name]) < 0.15, f"{name}: observed order {observed:.2f}"


def test_custom_tableau_full_matrix_equals_ragged():
    full = Tableau([[0, 0], [2 / 3, 0]], [0.25, 0.75], name="ralston")
    ragged = Tableau([[], [2 / 3]], [0.25, 0.75])
    assert full.a == ragged.a and full.c == (0.0, 2 / 3)
    y0 = torch.ones(2, dtype=torch.float64)
    torch.testing.assert_close(
        odeint(lambda t, y: -y, y0, steps=4, method=full, grad="direct"),
        odeint(lambda t, y: -y, y0, steps=4, method=ragged, grad="direct"),
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (([[0, 1], [0, 0]], [0.5, 0.5]), "on or above the diagonal"),
        (([[], [1.0]], [1.0]), "a has 2 rows but b has 1 entries"),
        (([[], [1.0, 2.0, 3.0]], [0.5, 0.5]), r"a\[1\] has 3 entries; expected 1"),
        (([[], [1.0]], [0.5, 0.5], [0.0]), "c has 1 entries but b has 2"),
        (([], []), "b is empty"),
        (([[], [float("nan")]], [0.5, 0.5]), r"a\[1\]\[0\] must be a finite real number"),
        (([[]], ["x"]), r"b\[0\] must be a finite real number"),
    ],
)
def test_bad_tableau(args, message):
    with pytest.raises(ValueError, match=message):
        Tableau(*args)


def test_unknown_method_lists_names():
    with pytest.raises(ValueError, match="unknown method 'rk5'; expected one of euler, heun, midpoint, rk4, rk4_38"):
        get_tableau("rk5")


torchdiffeq = pytest.importorskip("torchdiffeq")


@pytest.mark.parametrize("ours, theirs", [("euler", "euler"), ("midpoint", "midpoint"), ("rk4_38", "rk4")])
def test_matches_torchdiffeq_fixed_grid(ours, theirs):
    # torchdiffeq's fixed-grid "rk4" is the 3/8 rule.
    torch.manual_seed(0)
    w = torch.randn(4, 4, dtype=torch.float64) / 2

    def f(t, y):
        return torch.tanh(y @ w) * (1 + t)

    y0 = torch.randn(3, 4, dtype=torch.float64)
    grid = torch.linspace(0, 1, 6, dtype=torch.float64)
    expected = torchdiffeq.odeint(f, y0, grid, method=theirs)[-1]
    got = odeint(lambda t, y: f(torch.tensor(t, dtype=torch.float64), y), y0, steps=5, method=ours, grad="direct")
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)
