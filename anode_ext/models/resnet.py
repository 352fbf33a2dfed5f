"""ResNet-18 for 32x32 inputs with an ODE block in each stage (ANODE's ODE-ResNet).

Each stage is a basic block that changes width or resolution followed by one
integrated branch: a second basic block in the baseline (ResNet-18 exactly, except
that no ReLU follows the second block's sum), an ODE block in the ODE model.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import BlockConfig, ResNetBranch, integrate_branch


class BasicBlock(nn.Module):
    """The standard ResNet basic block, for the transitions between stages."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ODEResNet(nn.Module):
    """ResNet-18 layout (widths 64, 128, 256, 512 times `width`) with integrated branches."""

    def __init__(self, config: BlockConfig, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        widths = [max(1, int(round(w * width))) for w in (64, 128, 256, 512)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        stages, cin = [], widths[0]
        for index, (cout, stride) in enumerate(zip(widths, (1, 2, 2, 2)), start=1):
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), integrate_branch(ResNetBranch(cout), config, index)))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.stages(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))
