"""``resnet``: ResNet with basic blocks (He et al. 2015), depth and width configurable.

``depth`` picks a standard stage layout (10 -> ``[1, 1, 1, 1]``, 18 ->
``[2, 2, 2, 2]``, 34 -> ``[3, 4, 6, 3]``); ``blocks`` sets any layout directly
(it wins over ``depth``). Stage ``i`` has ``width * 2**i`` channels; every stage
after the first halves the spatial size. ``stem: imagenet`` is the classic 7x7/2
conv + 3x3/2 max-pool (for >= 128 px inputs; with width 64 and 1000 classes the
parameter counts equal the reference ResNet-18/34: 11,689,512 / 21,797,672);
``stem: cifar`` is a single 3x3/1 conv for small inputs (32-64 px).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import Tensor, nn

from cvplatform.config import StrictModel
from cvplatform.models.layers import GlobalAvgPool2d

DEPTHS: dict[int, tuple[int, ...]] = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class ResNetConfig(StrictModel):
    """Arguments of ``resnet`` (``train.model.<arch>`` in params.yaml)."""

    depth: Literal[10, 18, 34] = 18
    """Standard layout: 10, 18 or 34 (ignored when ``blocks`` is set)."""
    blocks: tuple[int, ...] | None = None
    """Basic blocks per stage, e.g. ``[2, 2, 2, 2]``; overrides ``depth``."""
    width: int = Field(64, ge=1, le=1024)
    """Channels of the first stage; doubled at every stage."""
    stem: Literal["cifar", "imagenet"] = "cifar"
    """``cifar``: 3x3/1 conv (small inputs); ``imagenet``: 7x7/2 conv + max-pool."""
    in_channels: int = Field(3, ge=1)
    """Input channels."""
    zero_init_residual: bool = False
    """Start each residual branch at zero (last BN gamma = 0); helps deep nets."""

    @model_validator(mode="after")
    def _check_blocks(self) -> ResNetConfig:
        if self.blocks is not None and (not self.blocks or min(self.blocks) < 1 or len(self.blocks) > 6):
            raise ValueError(f"blocks must list 1-6 stages of >= 1 block each, got {list(self.blocks)}")
        return self

    @property
    def layout(self) -> tuple[int, ...]:
        """Blocks per stage actually used."""
        return tuple(self.blocks) if self.blocks is not None else DEPTHS[self.depth]


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with basic blocks.

    Example:
        >>> import torch
        >>> net = ResNet(num_classes=4, blocks=(1, 1), width=8)
        >>> tuple(net(torch.zeros(2, 3, 32, 32)).shape)
        (2, 4)
    """

    def __init__(
        self,
        num_classes: int,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        width: int = 64,
        stem: str = "cifar",
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
        stages: list[nn.Module] = []
        c_in = width
        for i, n in enumerate(blocks):
            c = width * 2**i
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(c_in, c, stride)] + [BasicBlock(c, c) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
            c_in = c
        self.stages = nn.Sequential(*stages)
        self.pool = GlobalAvgPool2d()
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.fc(self.pool(x))


def build(num_classes: int, cfg: ResNetConfig) -> ResNet:
    """Registry builder for ``resnet``."""
    return ResNet(num_classes, cfg.layout, cfg.width, cfg.stem, cfg.in_channels, cfg.zero_init_residual)
