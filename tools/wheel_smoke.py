"""Smoke test of an installed anode_ext wheel in an environment holding only torch and numpy.

    python tools/wheel_smoke.py        (run by .ci/run with the clean environment's python,
                                        from a folder outside the source tree)

Checks that the installed copy, not the source tree, is imported; that importing it pulls in
none of the commands' packages; that every gradient mode solves and differentiates a small
ODE; and that the installed commands, without their extras, name the pip install to run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

APP_MODULES = ("matplotlib", "sklearn", "tqdm")
COMMANDS = {"anode-train": "train", "anode-bench": "bench"}


def fail(message: str) -> None:
    print(f"wheel_smoke: {message}", file=sys.stderr)
    raise SystemExit(1)


def check_environment() -> None:
    present = [m for m in APP_MODULES if importlib.util.find_spec(m) is not None]
    if present:
        fail(f"expected an environment without the extras, but {', '.join(present)} can be imported")


def check_import() -> None:
    import anode_ext
    import anode_ext.models  # noqa: F401

    if not os.path.abspath(anode_ext.__file__).startswith(os.path.abspath(sys.prefix) + os.sep):
        fail(f"imported {anode_ext.__file__}, expected the copy installed under {sys.prefix}")
    imported = [m for m in APP_MODULES if m in sys.modules]
    if imported:
        fail(f"import anode_ext imported {', '.join(imported)}; the library needs only torch and numpy")
    print(f"anode_ext {anode_ext.__version__} from {os.path.dirname(anode_ext.__file__)}")
    print(f"build_info: {anode_ext.build_info()}")


def check_gradient_modes() -> None:
    import torch
    from torch import nn

    from anode_ext import GRAD_MODES, odeint

    class Func(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 4, dtype=torch.float64)

        def forward(self, t, y):
            return torch.tanh(self.linear(y))

    torch.manual_seed(0)
    func = Func()
    y0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    def gradient(name: str, method: str) -> torch.Tensor:
        func.zero_grad()
        y0.grad = None
        steps = None if method == "dopri5" else 4
        odeint(func, y0, 0.0, 1.0, steps=steps, method=method, grad=name).square().sum().backward()
        grad = torch.cat([y0.grad.flatten(), *(p.grad.flatten() for p in func.parameters())])
        if not torch.isfinite(grad).all():
            fail(f"grad={name!r} gave a non-finite gradient")
        return grad

    # grad="reversible" takes a reversible method only: its reference is direct's on that method.
    references = {"rk4": gradient("direct", "rk4"), "reversible_rk4": gradient("direct", "reversible_rk4")}
    for name in GRAD_MODES:
        method = "reversible_rk4" if name == "reversible" else "rk4"
        grad = gradient(name, method)
        # The adjoint method is not the exact gradient of the discrete solve; the others are.
        tolerance = 1e-3 if name == "adjoint" else 1e-10
        error = (grad - references[method]).abs().max().item()
        if error > tolerance:
            fail(f"grad={name!r} differs from grad='direct' by {error:.2e}, expected at most {tolerance:.0e}")
        print(f"grad={name!r}: gradient within {error:.1e} of direct")
    # An adaptive solve: its error norm is a compiled op of its own.
    error = (gradient("anode", "dopri5") - gradient("direct", "dopri5")).abs().max().item()
    if error > 1e-10:
        fail(f"dopri5: grad='anode' differs from grad='direct' by {error:.2e}, expected at most 1e-10")
    print(f"dopri5: grad='anode' within {error:.1e} of direct")


def check_commands() -> None:
    scripts = os.path.dirname(sys.executable)
    for command, extra in COMMANDS.items():
        done = subprocess.run([os.path.join(scripts, command)], capture_output=True, text=True, timeout=300)
        hint = f'pip install "anode_ext[{extra}]"'
        if done.returncode != 2 or hint not in done.stderr or "Traceback" in done.stderr:
            fail(f"{command} without its extra: expected exit status 2 and {hint!r}, "
                 f"got status {done.returncode} and:\n{done.stderr}")
        print(f"{command}: {done.stderr.strip()}")


def main() -> int:
    check_environment()
    check_import()
    check_gradient_modes()
    check_commands()
    print("wheel_smoke: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
