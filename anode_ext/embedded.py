"""Embedded explicit Runge–Kutta pairs: a tableau whose stages also give an estimate of
the local error, for adaptive step-size control (Hairer, Nørsett & Wanner, Solving ODEs I,
section II.4)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from .tableau import Tableau, _real

__all__ = ["EmbeddedTableau", "PAIRS", "get_pair"]


@dataclass(frozen=True)
class EmbeddedTableau:
    """An explicit Runge–Kutta pair: the step ``y + h sum_i b_i k_i`` of order `order` and
    the local error estimate ``h sum_i e_i k_i``, where ``e = b - b_hat`` are the error
    weights and ``b_hat`` the weights of an embedded method of order `error_order`
    (Hairer, Nørsett & Wanner, Solving ODEs I, section II.4). Immutable and hashable.

    Args:
        a, b, c: the Butcher tableau of the step, as for :class:`anode_ext.Tableau`.
        error: the s error weights ``b_i - b_hat_i`` (their sign does not matter).
        order: the order p of the step, an integer >= 1.
        error_order: the order of the embedded method, an integer in [1, p]; by default
            p - 1. The step-size controller's exponents use min(p, error_order) + 1.
        name: a non-empty label.

    Attributes:
        tableau: the step's Tableau (usable as a fixed-step method too).
        error, order, error_order, name: as given (error as a tuple of floats).
        fsal: whether the last stage is evaluated at the step's result (last row of ``a``
            equal to ``b``, last node 1): its derivative is then the first stage of the
            next step ("first same as last"), saving one evaluation per step.
        error_terms: ``(indices, weights)`` of the nonzero error weights.

    Raises:
        ValueError: as Tableau for a, b, c and name; error weights that are not one finite
            real number per stage or are all zero; an order that is not an integer >= 1,
            or an error_order outside [1, order].
    """

    tableau: Tableau
    error: tuple[float, ...]
    order: int
    error_order: int

    def __init__(self, a: Sequence[Sequence[float]], b: Sequence[float], error: Sequence[float],
                 c: Sequence[float] | None = None, *, order: int, error_order: int | None = None,
                 name: str = "custom") -> None:
        tableau = Tableau(a, b, c, name=name)
        if len(error) != tableau.stages:
            raise ValueError(f"embedded pair: error has {len(error)} weights but b has {tableau.stages}; "
                             "expected one error weight per stage")
        weights = tuple(_real(v, f"error[{i}]") for i, v in enumerate(error))
        if not any(weights):
            raise ValueError("embedded pair: every error weight is zero; expected the weights b - b_hat of an "
                             "embedded method that differs from the step's")
        order = _order(order, "order")
        error_order = order - 1 if error_order is None else _order(error_order, "error_order")
        if not 1 <= error_order <= order:
            raise ValueError(f"embedded pair: error_order must be in [1, order={order}], got {error_order}")
        object.__setattr__(self, "tableau", tableau)
        object.__setattr__(self, "error", weights)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "error_order", error_order)

    @property
    def name(self) -> str:
        return self.tableau.name

    @property
    def stages(self) -> int:
        """s: func evaluations per attempted step (one fewer after the first with FSAL)."""
        return self.tableau.stages

    @property
    def fsal(self) -> bool:
        t = self.tableau
        return t.stages > 1 and t.c[-1] == 1.0 and t.a[-1] == t.b[:-1] and t.b[-1] == 0.0

    @property
    def error_terms(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        return (tuple(i for i, w in enumerate(self.error) if w != 0.0),
                tuple(w for w in self.error if w != 0.0))

    def __repr__(self) -> str:
        return f"EmbeddedTableau(name={self.name!r}, order={self.order}({self.error_order}), stages={self.stages})"


def _order(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"embedded pair: {name} must be an integer >= 1, got {value!r}")
    return int(value)


def _dopri5() -> EmbeddedTableau:
    # Dormand & Prince, "A family of embedded Runge-Kutta formulae", J. Comput. Appl. Math. 6 (1980),
    # with the fourth-order weights of Shampine's estimate ("Some practical Runge-Kutta formulas",
    # Math. Comp. 46, 1986), the error estimate of JAX's odeint, torchdiffeq and diffrax: the same
    # step sizes at the same tolerances as those libraries.
    b = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
    b_hat = [1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60]
    a = [
        [],
        [1 / 5],
        [3 / 40, 9 / 40],
        [44 / 45, -56 / 15, 32 / 9],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
        b[:6],
    ]
    return EmbeddedTableau(a, b, [x - y for x, y in zip(b, b_hat)], [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0],
                           order=5, error_order=4, name="dopri5")


def _bosh3() -> EmbeddedTableau:
    # Bogacki & Shampine, "A 3(2) pair of Runge-Kutta formulas", Appl. Math. Lett. 2 (1989).
    b = [2 / 9, 1 / 3, 4 / 9, 0.0]
    b_hat = [7 / 24, 1 / 4, 1 / 3, 1 / 8]
    a = [[], [1 / 2], [0.0, 3 / 4], b[:3]]
    return EmbeddedTableau(a, b, [x - y for x, y in zip(b, b_hat)], [0.0, 1 / 2, 3 / 4, 1.0],
                           order=3, error_order=2, name="bosh3")


def _tsit5() -> EmbeddedTableau:
    # Tsitouras, "Runge-Kutta pairs of order 5(4) satisfying only the first column simplifying
    # assumption", Comput. Math. Appl. 62 (2011), table 1 (error weights with sum zero).
    b = [0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
         2.324710524099774, 0.0]
    a = [
        [],
        [0.161],
        [-0.008480655492356989, 0.335480655492357],
        [2.897153057105493, -6.359448489975075, 4.3622954328695815],
        [5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525],
        [5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.028269050394068383],
        b[:6],
    ]
    error = [0.001780011052226, 0.000816434459657, -0.007880878010262, 0.144711007173263, -0.582357165452555,
             0.458082105929187, -1 / 66]
    return EmbeddedTableau(a, b, error, [0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0],
                           order=5, error_order=4, name="tsit5")


PAIRS: dict[str, EmbeddedTableau] = {p.name: p for p in (_bosh3(), _dopri5(), _tsit5())}
"""The built-in embedded pairs by name: ``bosh3`` (Bogacki–Shampine 3(2)), ``dopri5``
(Dormand–Prince 5(4), with Shampine's error estimate as in torchdiffeq and diffrax) and
``tsit5`` (Tsitouras 5(4)); all three are FSAL."""


def get_pair(method: str | EmbeddedTableau) -> EmbeddedTableau:
    """The pair of a name in PAIRS, or `method` itself when it is an EmbeddedTableau.

    Raises:
        ValueError: any other name or object.
    """
    if isinstance(method, EmbeddedTableau):
        return method
    if isinstance(method, str) and method in PAIRS:
        return PAIRS[method]
    raise ValueError(f"unknown embedded pair {method!r}; expected one of {', '.join(sorted(PAIRS))} or an "
                     "anode_ext.EmbeddedTableau")
