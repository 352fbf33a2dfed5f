"""Explicit Runge–Kutta methods as Butcher tableaux."""

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
    for ``j < i`` and the step is ``y + h sum_i b_i k_i``.

    ``a`` holds the strictly lower triangle, one row per stage: row i has i entries
    (a full square matrix with zeros on and above the diagonal is accepted too).
    ``c`` defaults to the row sums of ``a``.
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
        """Number of function evaluations per step."""
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


def get_tableau(method: str | Tableau) -> Tableau:
    """The tableau for a method name (see ``TABLEAUX``) or a given ``Tableau``."""
    if isinstance(method, Tableau):
        return method
    if isinstance(method, str) and method in TABLEAUX:
        return TABLEAUX[method]
    raise ValueError(
        f"unknown method {method!r}; expected one of {', '.join(sorted(TABLEAUX))} or an anode_ext.Tableau"
    )
