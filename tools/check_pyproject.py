"""Check that pyproject.toml is valid for every setuptools the package may be built with.

    python tools/check_pyproject.py [VERSION ...]     (default: 64.0.0 and 81.0.0)

build-system asks for setuptools >= 64, and the GPU machine's setuptools version is not
known; torch 2.11 caps it below 82. Each version is installed into a temporary folder
(from the package index) and reads and applies the project table as a build would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_VERSIONS = ("64.0.0", "81.0.0")

PROBE = """
import setuptools
from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution
dist = apply_configuration(Distribution(), "pyproject.toml")
print(f"setuptools {setuptools.__version__}: {dist.get_name()} {dist.get_version()}: pyproject.toml OK")
"""


def check(version: str) -> bool:
    with tempfile.TemporaryDirectory() as target:
        install = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                   "--no-deps", "--target", target, f"setuptools=={version}"]
        if subprocess.run(install).returncode != 0:
            print(f"check_pyproject: could not install setuptools {version}", file=sys.stderr)
            return False
        env = dict(os.environ, PYTHONPATH=target)
        probe = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True)
        if probe.returncode != 0:
            print(f"check_pyproject: setuptools {version} rejects pyproject.toml:\n{probe.stderr}", file=sys.stderr)
            return False
        print(probe.stdout.strip())
        return True


def main(versions: list[str]) -> int:
    results = [check(v) for v in versions or DEFAULT_VERSIONS]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
