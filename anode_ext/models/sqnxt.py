"""SqueezeNext (CIFAR variant) with an ODE block in each stage (ANODE's ODE-SqNxt).

Widths follow SqNxt-23 for CIFAR (stem 64, stages 32, 64, 128, 256, head 1x1 to 128,
times `width`). Each stage is a SqueezeNext block that changes width or resolution
(with its 1x1 shortcut) followed by `blocks` integrated branches: residual blocks in
the baseline, ODE blocks in the ODE model.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import BlockConfig, SqnxtBranch, integrate_branch


class SqnxtBlock(nn.Module):
    """A SqueezeNext block with its shortcut, for the transitions between stages."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.branch = SqnxtBranch(cin, cout, stride)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=True), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.branch(0.0, x) + F.relu(self.shortcut(x)))


class ODESqueezeNext(nn.Module):
    """SqueezeNext with integrated branches; `blocks` per stage after the transition."""

    def __init__(
        self,
        config: BlockConfig,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        blocks: tuple[int, int, int, int] = (1, 1, 1, 1),
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or any(not isinstance(b, int) or b < 0 for b in blocks):
            raise ValueError(f"blocks must be four non-negative integers, got {blocks!r}")
        scale = lambda c: max(1, int(round(c * width)))  # noqa: E731
        self.stem = nn.Sequential(nn.Conv2d(in_channels, scale(64), 3, 1, 1, bias=True), nn.BatchNorm2d(scale(64)), nn.ReLU())
        stages, cin = [], scale(64)
        for index, (channels, stride, count) in enumerate(zip((32, 64, 128, 256), (1, 2, 2, 2), blocks), start=1):
            cout = scale(channels)
            layers = [SqnxtBlock(cin, cout, stride)]
            layers += [integrate_branch(SqnxtBranch(cout, cout), config, index) for _ in range(count)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head_conv = nn.Sequential(nn.Conv2d(cin, scale(128), 1, bias=True), nn.BatchNorm2d(scale(128)), nn.ReLU())
        self.head = nn.Linear(scale(128), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.head_conv(self.stages(self.stem(x)))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))
