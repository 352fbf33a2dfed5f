"""Algebraically reversible Runge–Kutta methods (McCallum & Foster, "Efficient, Accurate
and Stable Gradients for Neural ODEs", arXiv:2410.11648, 2024, section 3).

Any explicit step ``y -> y + Psi_h(t, y)`` becomes reversible by carrying two states,
y_0 = z_0 = the input, and a coupling lambda in (0, 1]:

    y_{n+1} = lambda y_n + (1 - lambda) z_n + Psi_h(t_n, z_n)
    z_{n+1} = z_n - Psi_{-h}(t_{n+1}, y_{n+1})

whose exact inverse is

    z_n = z_{n+1} + Psi_{-h}(t_{n+1}, y_{n+1})
    y_n = (y_{n+1} - (1 - lambda) z_n - Psi_h(t_n, z_n)) / lambda.

The output is y_N. A step evaluates the base method twice (2 s evaluations of func for
an s-stage tableau) and keeps its order. Because every earlier pair can be computed
back from (y_N, z_{N-1}), ``grad="reversible"`` (anode_ext.modes.ReversibleGrad) needs no
state per step: its memory does not grow with the number of steps.

In floating point the inverse repeats the forward only to rounding: each inverse step
divides by lambda, so rounding errors grow like lambda^-n, and like the base step's own
amplification where the dynamics expand. lambda close to 1 keeps the first small; the
paper analyses the stability of the coupled pair (section 4). bench/RESULTS.md measures
the round trip.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from .solver import Problem, State, Time
from .tableau import TABLEAUX, Tableau, get_tableau

__all__ = ["DEFAULT_COUPLING", "Reversible", "ReversibleProblem"]

DEFAULT_COUPLING = 0.999
"""The default coupling lambda: close to 1, so that the inverse's division by lambda
amplifies rounding little (lambda^-n: 1.7 after 512 steps), while lambda < 1 damps the
difference between the two states as the paper's stability analysis requires."""

PREFIX = "reversible_"

_rk_combine = torch.ops.anode_ext.rk_combine.default


def check_coupling(coupling: object) -> float:
    """The coupling as a float in (0, 1], or a ValueError that says what is expected."""
    if isinstance(coupling, bool) or not isinstance(coupling, numbers.Real) or not math.isfinite(coupling) \
            or not 0.0 < coupling <= 1.0:
        raise ValueError(f"the coupling of a reversible method must be a real number in (0, 1], got {coupling!r}")
    return float(coupling)


@dataclass(frozen=True)
class Reversible:
    """The reversible version of an explicit Runge–Kutta method (see the module docstring):
    pass one as ``method=`` to odeint, the blocks or models.create, or write
    ``method="reversible_rk4"`` (any name of TABLEAUX after ``reversible_``) for the default
    coupling. Immutable and hashable.

    Args:
        method: the base method, a name in TABLEAUX or a Tableau.
        coupling: lambda in (0, 1] (default DEFAULT_COUPLING).

    Attributes:
        tableau: the base Tableau. coupling: lambda, a float.
        name: ``"reversible_<base name>"`` (a label; only built-in names are accepted back
            as a method string). stages: func evaluations per step (2 s).

    Raises:
        ValueError: an unknown base method, or a coupling that is not a finite real
            number in (0, 1].
    """

    tableau: Tableau
    coupling: float

    def __init__(self, method: str | Tableau = "rk4", coupling: float = DEFAULT_COUPLING) -> None:
        if isinstance(method, Reversible):
            raise ValueError(f"{method!r} is reversible already; pass its base method {method.tableau.name!r}")
        object.__setattr__(self, "tableau", get_tableau(method))
        object.__setattr__(self, "coupling", check_coupling(coupling))

    @property
    def name(self) -> str:
        return PREFIX + self.tableau.name

    @property
    def stages(self) -> int:
        return 2 * self.tableau.stages

    def __repr__(self) -> str:
        coupling = "" if self.coupling == DEFAULT_COUPLING else f", coupling={self.coupling!r}"
        base = self.tableau.name if TABLEAUX.get(self.tableau.name) == self.tableau else self.tableau
        return f"Reversible({base!r}{coupling})"


def _couple(a: State, b: State, c: State, wb: float, wc: float) -> State:
    """``a + wb b + wc c`` per tensor, in one fused pass each."""
    return tuple(_rk_combine(x, [y, z], [wb, wc], 1.0) for x, y, z in zip(a, b, c))


@dataclass
class ReversibleProblem:
    """A Problem stepped by the reversible method over the pair (y, z): its states are the
    tuple ``(*y, *z)``, which starts as the input twice, and its result's first half is y.
    It has a Problem's interface (steps, return_all, step, solve), so every gradient mode
    that only steps forward runs it; ReversibleGrad also steps it back (`inverse`)."""

    base: Problem
    coupling: float

    @property
    def steps(self) -> int:
        return self.base.steps

    @property
    def return_all(self) -> bool:
        return self.base.return_all

    def time(self, n: int) -> Time:
        return self.base.t0 + n * self.base.h

    @staticmethod
    def split(pair: State) -> tuple[State, State]:
        half = len(pair) // 2
        return pair[:half], pair[half:]

    # The two halves of a step, and of its inverse, as ReversibleGrad records them apart.

    def first_half(self, n: int, y: State, z: State) -> tuple[State, State]:
        """The base step from (t_n, z_n), and y_{n+1} from it."""
        s1 = self.base.step_at(self.time(n), self.base.h, z)
        return s1, self.couple_y(s1, y, z)

    def couple_y(self, s1: State, y: State, z: State) -> State:
        """y_{n+1} = s1 + lambda (y_n - z_n), s1 the base step from z_n."""
        return _couple(s1, y, z, self.coupling, -self.coupling)

    def second_half(self, n: int, y1: State) -> State:
        """The base step back from (t_{n+1}, y_{n+1})."""
        return self.base.step_at(self.time(n + 1), -self.base.h, y1)

    @staticmethod
    def couple_z(z: State, y1: State, s2: State) -> State:
        """z_{n+1} = z_n + y_{n+1} - s2, s2 the base step back from y_{n+1}."""
        return _couple(z, y1, s2, 1.0, -1.0)

    @staticmethod
    def undo_z(z1: State, y1: State, s2: State) -> State:
        """z_n from z_{n+1}, y_{n+1} and the base step back from y_{n+1}."""
        return _couple(s2, z1, y1, 1.0, -1.0)

    def undo_y(self, y1: State, s1: State, z: State) -> State:
        """y_n from y_{n+1}, the base step s1 from z_n, and z_n."""
        return _couple(z, y1, s1, 1.0 / self.coupling, -1.0 / self.coupling)

    def step(self, n: int, pair: State) -> State:
        """Step n: the pair at t_n to the pair at t_{n+1}; in the last step, z is left as
        it was, which saves that step's base step back: no output depends on z_N, and
        y_{N-1} is computed back from (y_N, z_{N-1}) by the inverse's second line."""
        if n == self.steps - 1:
            y, z = self.split(pair)
            return (*self.first_half(n, y, z)[1], *z)
        return self.full_step(n, pair)

    def full_step(self, n: int, pair: State) -> State:
        """Step n, z included."""
        y, z = self.split(pair)
        _, y1 = self.first_half(n, y, z)
        return (*y1, *self.couple_z(z, y1, self.second_half(n, y1)))

    def inverse(self, n: int, pair1: State) -> State:
        """Step n undone: the pair at t_{n+1} back to the pair at t_n (to rounding)."""
        y1, z1 = self.split(pair1)
        z = self.undo_z(z1, y1, self.second_half(n, y1))
        s1 = self.base.step_at(self.time(n), self.base.h, z)
        return (*self.undo_y(y1, s1, z), *z)

    def solve(self, pair: State) -> State:
        """The final pair (z as in `step`), or with return_all each pair tensor stacked over
        steps 0..steps."""
        states = [pair]
        for n in range(self.steps):
            pair = self.step(n, pair)
            if self.return_all:
                states.append(pair)
        if not self.return_all:
            return pair
        return tuple(torch.stack([s[m] for s in states]) for m in range(len(pair)))
