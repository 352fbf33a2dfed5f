"""The packages each application needs beyond the library, checked before its modules are imported.

The library needs only torch and numpy; the training and benchmark commands come with the
extras ``anode_ext[train]`` and ``anode_ext[bench]`` (pyproject.toml). A command run without
its extra says which ``pip install`` to run instead of ending in a traceback.
"""

from __future__ import annotations

import importlib.util
import sys

# extra -> {import name: distribution name}; the same lists as pyproject.toml's extras.
EXTRAS: dict[str, dict[str, str]] = {
    "train": {"matplotlib": "matplotlib", "sklearn": "scikit-learn", "tqdm": "tqdm"},
    "bench": {"matplotlib": "matplotlib"},
}


def missing(extra: str) -> list[str]:
    """The distributions of `extra` that cannot be imported, found without importing any."""
    return [dist for module, dist in EXTRAS[extra].items() if importlib.util.find_spec(module) is None]


def require(extra: str, command: str) -> None:
    """Exit with status 2 and the pip command to run when a package of `extra` is missing."""
    absent = missing(extra)
    if absent:
        print(f'{command} needs {", ".join(absent)}: pip install "anode_ext[{extra}]"', file=sys.stderr)
        raise SystemExit(2)
