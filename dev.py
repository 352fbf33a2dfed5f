#!/usr/bin/env python3
"""Set up a virtual environment for anode_ext and run its jobs; needs only Python 3.10+.

    python3 dev.py bench [ARGS...]   set up .venv, then run the benchmark report
    python3 dev.py test [ARGS...]    set up .venv, then run the test suite (pytest ARGS)
    python3 dev.py cuda-build        set up .venv-cuda with a CUDA torch, then compile and
                                     link the CUDA kernels and check them (no GPU needed)

Environment: ANODE_EXT_TORCH (torch requirement, default torch==2.13.0, the CPU build),
ANODE_EXT_VENV (folder of the environment), MAX_JOBS (compile jobs, default 2).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
CPU_TORCH = "torch==2.13.0"
# The GPU machine's torch (2.11, whose cpp_extension compiles with -std=c++17), so that
# CI proves the build that the GPU run needs.
CUDA_TORCH = "torch==2.11.0"
BUILD_TOOLS = ["setuptools>=64", "wheel", "ninja"]
EXTRAS = ".[dev]"


def log(message: str) -> None:
    print(f"[dev.py] {message}", flush=True)


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    log(" ".join(cmd))
    completed = subprocess.run(cmd, cwd=ROOT, env=env)
    if completed.returncode != 0:
        raise SystemExit(completed.returncode)


def venv_python(folder: str) -> str:
    return os.path.join(folder, "bin", "python")


def requirements_stamp(torch_spec: str) -> str:
    digest = hashlib.sha256(torch_spec.encode())
    for name in ("pyproject.toml", "dev.py"):
        with open(os.path.join(ROOT, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def setup_env(folder: str, torch_spec: str, build_env: dict[str, str]) -> str:
    """Create or update the environment in `folder` and (re)build anode_ext into it."""
    python = venv_python(folder)
    if not os.path.exists(python):
        log(f"creating virtual environment {folder}")
        venv.EnvBuilder(with_pip=True).create(folder)
    stamp_path = os.path.join(folder, ".anode_ext_requirements")
    stamp = requirements_stamp(torch_spec)
    current = open(stamp_path).read() if os.path.exists(stamp_path) else ""
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    if current != stamp:
        run(pip + [torch_spec] + BUILD_TOOLS)
        run(pip + ["--no-build-isolation", "-e", EXTRAS], env=build_env)
        with open(stamp_path, "w") as f:
            f.write(stamp)
    else:
        # Requirements unchanged: only recompile what changed (ninja is incremental).
        run(pip + ["--no-build-isolation", "--no-deps", "-e", "."], env=build_env)
    return python


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MAX_JOBS", "2")
    return env


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("bench", "test", "cuda-build"):
        print(__doc__, file=sys.stderr)
        return 2
    job, rest = argv[0], argv[1:]
    env = base_env()
    if job == "cuda-build":
        folder = os.environ.get("ANODE_EXT_VENV", os.path.join(ROOT, ".venv-cuda"))
        env["ANODE_EXT_FORCE_CUDA"] = "1"
        env.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        python = setup_env(folder, os.environ.get("ANODE_EXT_TORCH", CUDA_TORCH), env)
        run([python, os.path.join("tools", "check_cuda_build.py")] + rest, env=env)
        return 0
    folder = os.environ.get("ANODE_EXT_VENV", os.path.join(ROOT, ".venv"))
    python = setup_env(folder, os.environ.get("ANODE_EXT_TORCH", CPU_TORCH), env)
    if job == "bench":
        run([python, "-m", "anode_ext.bench"] + rest, env=env)
    else:
        run([python, "-m", "pytest"] + rest, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
