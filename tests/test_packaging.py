"""The library without its applications' dependencies: what importing it pulls in, and what
the commands say when their extra is not installed."""

import os
import re
import subprocess
import sys

import pytest

from anode_ext import _extras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP_MODULES = ("matplotlib", "sklearn", "tqdm")
# The library, and the entry modules of the commands (which import their modules only when run).
LIBRARY_MODULES = "anode_ext, anode_ext.models, anode_ext.data, anode_ext.train, anode_ext.bench.__main__"
CASES = [  # (module run by `python -m`, modules hidden, what it prints)
    ("anode_ext.train", APP_MODULES, 'anode-train needs matplotlib, scikit-learn, tqdm: pip install "anode_ext[train]"'),
    ("anode_ext.train", ("tqdm",), 'anode-train needs tqdm: pip install "anode_ext[train]"'),
    ("anode_ext.bench", APP_MODULES, 'anode-bench needs matplotlib: pip install "anode_ext[bench]"'),
]


def distribution(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group()


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_importing_the_library_imports_no_application_dependency():
    # torch itself imports tqdm when it is installed (torch.hub); count only what comes after.
    code = (
        "import sys, torch\nalready = set(sys.modules)\n"
        f"import {LIBRARY_MODULES}\n"
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - already}"
        f" & {set(APP_MODULES)!r}))"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_library_imports_without_the_application_dependencies():
    # A module set to None in sys.modules cannot be imported, as if it were not installed.
    done = run_python(f"import sys\nsys.modules.update(dict.fromkeys({APP_MODULES!r}))\nimport {LIBRARY_MODULES}")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("module, hidden, message", CASES)
def test_command_without_its_extra_names_the_pip_install(module, hidden, message):
    code = (
        f"import runpy, sys\nsys.modules.update(dict.fromkeys({hidden!r}))\n"
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )
    done = run_python(code)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == message


def test_pyproject_extras_and_scripts_match_the_checks():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert {distribution(req) for req in project["dependencies"]} == {"torch", "numpy"}
    for extra, modules in _extras.EXTRAS.items():
        assert sorted(distribution(req) for req in project["optional-dependencies"][extra]) == sorted(modules.values())
    assert project["scripts"] == {"anode-train": "anode_ext.train:main", "anode-bench": "anode_ext.bench.__main__:main"}
