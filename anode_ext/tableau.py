"""Explicit Runge–Kutta methods as Butcher tableaux (Hairer, Nørsett & Wanner, Solving
Ordinary Differential Equations I, section II.1)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Tableau", "TABLEAUX", "get_tableau"]


def _real(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"Butcher tableau: {where} must be a finite real number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Tableau:
    """An explicit Butcher tableau: stage i is ``k_i = f(t + c_i h, y + h sum_j a[i][j] k_j)``
    for ``j < i`` and the step is ``y + h sum_i b_i k_i`` (Hairer, Nørsett & Wanner,
    Solving ODEs I, section II.1). Immutable and hashable; order conditions are not checked.

    Args:
        a: the strictly lower triangle, one row per stage: row i has i entries (a full
            s x s matrix with zeros on and above the diagonal is accepted too).
        b: the s weights of the step.
        c: the s nodes; by default the row sums of ``a``.
        name: a non-empty label, shown in the repr.

    Attributes:
        a, b, c, name: as given, as tuples of floats (``a`` as its lower-triangle rows).
        terms: for each stage and then the step, ``(indices, weights)`` of the earlier
            ks with a nonzero coefficient in its row of ``a`` (or in ``b``), so that
            zero coefficients cost no pass over memory.

    Raises:
        ValueError: b is empty; a or c does not have one row or entry per stage; a row
            has neither i nor s entries, or a full row is nonzero on or above the
            diagonal; a coefficient is not a finite real number (bools are refused);
            the name is not a non-empty string.
        TypeError: a, b, c or a row of a is not a sequence.
    """

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    name: str = "custom"

    def __init__(
        self,
        a: Sequence[Sequence[float]],
        b: Sequence[float],
        c: Sequence[float] | None = None,
        name: str = "custom",
    ) -> None:
        s = len(b)
        if s < 1:
            raise ValueError("Butcher tableau: b is empty; expected one weight per stage")
        if len(a) != s:
            raise ValueError(f"Butcher tableau: a has {len(a)} rows but b has {s} entries; expected one row per stage")
        rows = []
        for i, row in enumerate(a):
            row = [_real(v, f"a[{i}][{j}]") for j, v in enumerate(row)]
            if len(row) == s:
                if any(v != 0.0 for v in row[i:]):
                    raise ValueError(
                        f"Butcher tableau: a[{i}] has a nonzero entry on or above the diagonal; "
                        "an explicit method needs a strictly lower-triangular a"
                    )
                row = row[:i]
            elif len(row) != i:
                raise ValueError(
                    f"Butcher tableau: a[{i}] has {len(row)} entries; expected {i} (the strictly "
                    f"lower triangle) or {s} (a full row with zeros from the diagonal on)"
                )
            rows.append(tuple(row))
        weights = tuple(_real(v, f"b[{i}]") for i, v in enumerate(b))
        if c is None:
            nodes = tuple(math.fsum(row) for row in rows)
        else:
            if len(c) != s:
                raise ValueError(f"Butcher tableau: c has {len(c)} entries but b has {s}; expected one node per stage")
            nodes = tuple(_real(v, f"c[{i}]") for i, v in enumerate(c))
        if not isinstance(name, str) or not name:
            raise ValueError(f"Butcher tableau: name must be a non-empty string, got {name!r}")
        object.__setattr__(self, "a", tuple(rows))
        object.__setattr__(self, "b", weights)
        object.__setattr__(self, "c", nodes)
        object.__setattr__(self, "name", name)
        # For each stage and then the step: which earlier ks enter, with which
        # weights; zero coefficients are dropped so no pass over memory is spent on them.
        object.__setattr__(
            self,
            "terms",
            tuple(
                (tuple(j for j, w in enumerate(row) if w != 0.0), tuple(w for w in row if w != 0.0))
                for row in (*rows, weights)
            ),
        )

    @property
    def stages(self) -> int:
        """s, the number of stages: function evaluations per step."""
        return len(self.b)

    def __repr__(self) -> str:
        return f"Tableau(name={self.name!r}, stages={self.stages})"


TABLEAUX: dict[str, Tableau] = {
    t.name: t
    for t in (
        Tableau([[]], [1.0], name="euler"),
        Tableau([[], [0.5]], [0.0, 1.0], name="midpoint"),
        Tableau([[], [1.0]], [0.5, 0.5], name="heun"),
        Tableau(
            [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
            [1 / 6, 1 / 3, 1 / 3, 1 / 6],
            name="rk4",
        ),
        Tableau(
            [[], [1 / 3], [-1 / 3, 1.0], [1.0, -1.0, 1.0]],
            [1 / 8, 3 / 8, 3 / 8, 1 / 8],
            name="rk4_38",
        ),
    )
}
"""The built-in methods by name: ``euler`` (order 1), ``midpoint`` (Runge's explicit
midpoint rule, order 2; ANODE's RK2), ``heun`` (explicit trapezoidal rule, order 2),
``rk4`` (Kutta's classical method, order 4) and ``rk4_38`` (Kutta's 3/8 rule, order 4);
Hairer, Nørsett & Wanner, Solving ODEs I, section II.1."""


def get_tableau(method: str | Tableau) -> Tableau:
    """Return the tableau of a method name in ``TABLEAUX``, or ``method`` itself when it
    is a ``Tableau``.

    Raises:
        ValueError: any other name or object.
    """
    if isinstance(method, Tableau):
        return method
    if isinstance(method, str) and method in TABLEAUX:
        return TABLEAUX[method]
    raise ValueError(
        f"unknown method {method!r}; expected one of {', '.join(sorted(TABLEAUX))} or an anode_ext.Tableau"
    )
