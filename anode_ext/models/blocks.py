"""Building blocks shared by the model families: residual branches as ODE functions and
the layer that turns a branch into a residual, ODE or coupled-ODE block."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ..block import ODEBlock
from ..coupled import CoupledODEBlock
from ..modes import GradMode, as_grad_mode
from ..odeint import check_steps, check_time
from ..methods import as_method
from ..reversible import Reversible
from ..tableau import Tableau

COUPLED_CHOICES = ("none", "all", "first", "last")


@dataclass
class BlockConfig:
    """How the residual branches of a model are integrated.

    ode: False builds the plain baseline (each branch is a residual block x + f(x)).
    coupled: which ODE blocks evolve their weights (ANODEv2): "none", "all", "first",
        "last", or a list of stage numbers (1-based).
    """

    ode: bool = True
    t0: float = 0.0
    t1: float = 1.0
    steps: int = 1
    method: str | Tableau | Reversible = "rk4"
    grad: str | GradMode = "anode"
    coupled: str | list[int] = "none"
    q: str = "rda"
    reaction: str = "tanh"
    stages: int = field(default=4, repr=False)

    def __post_init__(self) -> None:
        self.method = as_method(self.method)
        self.steps = check_steps(self.steps)
        self.grad = as_grad_mode(self.grad)
        check_time(self.t0, "t0")
        check_time(self.t1, "t1")
        if not isinstance(self.coupled, (str, list)):
            raise ValueError(
                f"coupled must be one of {', '.join(COUPLED_CHOICES)} or a list of stage numbers, got {self.coupled!r}"
            )
        if isinstance(self.coupled, str):
            if self.coupled not in COUPLED_CHOICES:
                raise ValueError(
                    f"unknown coupled={self.coupled!r}; expected one of {', '.join(COUPLED_CHOICES)} "
                    f"or a list of stage numbers 1..{self.stages}"
                )
        else:
            bad = [s for s in self.coupled if not isinstance(s, int) or not 1 <= s <= self.stages]
            if bad:
                raise ValueError(f"coupled stages {bad} do not exist; expected numbers 1..{self.stages}")
        if self.coupled != "none" and not self.ode:
            raise ValueError("coupled blocks need ode=True: a plain residual block has no weight dynamics")

    def is_coupled(self, stage: int) -> bool:
        """Whether the ODE block of `stage` (1-based) evolves its weights."""
        if isinstance(self.coupled, list):
            return stage in self.coupled
        return {"none": False, "all": True, "first": stage == 1, "last": stage == self.stages}[self.coupled]


class Residual(nn.Module):
    """x + func(0, x): the residual block, and the Euler step of size 1 of the ODE block."""

    def __init__(self, func: nn.Module) -> None:
        super().__init__()
        self.func = func

    def forward(self, x: Tensor) -> Tensor:
        return x + self.func(0.0, x)


def integrate_branch(func: nn.Module, config: BlockConfig, stage: int) -> nn.Module:
    """The block that integrates `func` in `stage` as `config` says."""
    if not config.ode:
        return Residual(func)
    options = dict(t0=config.t0, t1=config.t1, steps=config.steps, method=config.method, grad=config.grad)
    if config.is_coupled(stage):
        return CoupledODEBlock(func, q=config.q, reaction=config.reaction, **options)
    return ODEBlock(func, **options)


class ResNetBranch(nn.Module):
    """conv3x3 - BN - ReLU - conv3x3 - BN: a ResNet basic block without its skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, t: float, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class SqnxtBranch(nn.Module):
    """The SqueezeNext branch: 1x1 squeeze (x2), 1x3, 3x1, 1x1 expand, each with BN and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        reduction = 1.0 if stride == 2 else (0.25 if in_channels > out_channels else 0.5)
        mid = max(1, int(in_channels * reduction))
        squeezed = max(1, int(in_channels * reduction * 0.5))
        self.body = nn.Sequential(
            _conv_bn_relu(in_channels, mid, 1, stride, 0),
            _conv_bn_relu(mid, squeezed, 1, 1, 0),
            _conv_bn_relu(squeezed, mid, (1, 3), 1, (0, 1)),
            _conv_bn_relu(mid, mid, (3, 1), 1, (1, 0)),
            _conv_bn_relu(mid, out_channels, 1, 1, 0),
        )

    def forward(self, t: float, x: Tensor) -> Tensor:
        return self.body(x)


def _conv_bn_relu(cin: int, cout: int, kernel, stride: int, padding) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding, bias=True), nn.BatchNorm2d(cout), nn.ReLU())
