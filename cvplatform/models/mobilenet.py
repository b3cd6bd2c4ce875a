"""``mobilenet_v2``: MobileNetV2 (Sandler et al. 2018): inverted residuals, depthwise convs.

Each block expands with a 1x1 conv (factor ``t``), filters with a 3x3
depthwise conv, and projects back with a linear 1x1 conv; a residual joins
blocks of equal shape. ``width_mult`` scales every layer's channels (rounded to
multiples of 8). With ``small_input: false``, width 1.0 and 1000 classes the
parameter count equals the reference MobileNetV2 (3,504,872). ``small_input:
true`` (default) removes two of the five stride-2 steps (stem and the first
24-channel stage), for 32-64 px inputs that would otherwise shrink to 1x1.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from cvplatform.config import StrictModel
from cvplatform.models.layers import GlobalAvgPool2d

#: (expansion t, output channels c, repeats n, first stride s), as in the paper.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2Config(StrictModel):
    """Arguments of ``mobilenet_v2`` (``train.model.<arch>`` in params.yaml)."""

    width_mult: float = Field(1.0, gt=0.0, le=4.0)
    """Channel multiplier for every layer (e.g. 0.35, 0.5, 1.0)."""
    small_input: bool = True
    """Stride 1 in the stem and the first 24-channel stage (for 32-64 px images)."""
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    """Dropout before the classifier."""
    in_channels: int = Field(3, ge=1)
    """Input channels."""


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` without going below 90 % of it."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_bn_relu6(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> project (1x1, linear), residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(c_in * expand_ratio))
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(c_in, hidden, kernel=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier.

    Example:
        >>> import torch
        >>> net = MobileNetV2(num_classes=5, width_mult=0.25)
        >>> tuple(net(torch.zeros(1, 3, 32, 32)).shape)
        (1, 5)
    """

    def __init__(
        self,
        num_classes: int,
        width_mult: float = 1.0,
        small_input: bool = True,
        dropout: float = 0.2,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        c_in = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [_conv_bn_relu6(in_channels, c_in, stride=1 if small_input else 2)]
        for idx, (t, c, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
            c_out = make_divisible(c * width_mult)
            stride = 1 if (small_input and idx == 1) else s
            for i in range(n):
                features.append(InvertedResidual(c_in, c_out, stride if i == 0 else 1, t))
                c_in = c_out
        features.append(_conv_bn_relu6(c_in, last, kernel=1))
        self.features = nn.Sequential(*features)
        self.pool = GlobalAvgPool2d()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)))


def build(num_classes: int, cfg: MobileNetV2Config) -> MobileNetV2:
    """Registry builder for ``mobilenet_v2``."""
    return MobileNetV2(num_classes, cfg.width_mult, cfg.small_input, cfg.dropout, cfg.in_channels)
