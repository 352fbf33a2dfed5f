"""The kinds of method a solve can step with, and how a method given by name is found."""

from __future__ import annotations

from .adaptive import Adaptive
from .embedded import PAIRS, EmbeddedTableau
from .reversible import PREFIX, Reversible
from .tableau import TABLEAUX, Tableau, get_tableau

__all__ = ["Method", "as_method", "base_tableau", "method_label"]

Method = Tableau | Reversible | Adaptive


def as_method(method: object) -> Method:
    """`method` as a Tableau, a Reversible or an Adaptive: a name in TABLEAUX,
    ``"reversible_<name>"``, a name in PAIRS (an adaptive method with default
    tolerances), a Tableau, a Reversible, an EmbeddedTableau or an Adaptive.

    Raises:
        ValueError: for anything else, listing the names.
    """
    if isinstance(method, (Reversible, Adaptive)):
        return method
    if isinstance(method, EmbeddedTableau) or (isinstance(method, str) and method in PAIRS):
        return Adaptive(method)
    if isinstance(method, str) and method.startswith(PREFIX) and method not in TABLEAUX:
        base = method[len(PREFIX):]
        if base not in TABLEAUX:
            raise ValueError(
                f"unknown method {method!r}; after {PREFIX!r} expected one of {', '.join(sorted(TABLEAUX))}"
            )
        return Reversible(base)
    try:
        return get_tableau(method)
    except ValueError:
        raise ValueError(
            f"unknown method {method!r}; expected one of {', '.join(sorted(TABLEAUX))} (fixed steps), one of them "
            f"after {PREFIX!r} (reversible), one of {', '.join(sorted(PAIRS))} (adaptive steps), an "
            "anode_ext.Tableau, Reversible, EmbeddedTableau or Adaptive"
        ) from None


def method_label(method: Method) -> str:
    """How a method is shown: a tableau's name, a reversible or adaptive method's repr."""
    return repr(method) if isinstance(method, (Reversible, Adaptive)) else method.name


def base_tableau(method: Method) -> Tableau:
    """The tableau whose stages a method's steps evaluate (an adaptive method's step's)."""
    if isinstance(method, Reversible):
        return method.tableau
    if isinstance(method, Adaptive):
        return method.pair.tableau
    return method
