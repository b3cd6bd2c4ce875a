"""``small_cnn``: a compact VGG-style network for small images (digits, icons, 32-64 px).

``stages`` conv stages; stage ``i`` has two 3x3 conv-BN-ReLU layers with
``width * 2**i`` channels followed by 2x2 max-pooling; then global average
pooling, dropout and a linear head. With the defaults (width 32, 3 stages) it
has about 0.29 M parameters and reaches >95 % on scikit-learn digits in a few
CPU epochs.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from cvplatform.config import StrictModel
from cvplatform.models.layers import GlobalAvgPool2d


class SmallCNNConfig(StrictModel):
    """Arguments of ``small_cnn`` (``train.model.<arch>`` in params.yaml)."""

    width: int = Field(32, ge=1, le=1024)
    """Channels of the first stage; doubled at every stage."""
    stages: int = Field(3, ge=1, le=6)
    """Number of conv stages (each halves the spatial size)."""
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout before the classifier head."""
    in_channels: int = Field(3, ge=1)
    """Input channels (3 = RGB, what the data module produces)."""


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """VGG-style conv stages + global average pooling + linear head.

    Example:
        >>> import torch
        >>> net = SmallCNN(num_classes=3, width=8, stages=2)
        >>> tuple(net(torch.zeros(1, 3, 16, 16)).shape)
        (1, 3)
    """

    def __init__(
        self, num_classes: int, width: int = 32, stages: int = 3, dropout: float = 0.1, in_channels: int = 3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(stages):
            c = width * 2**i
            layers += [*_conv_bn_relu(c_in, c), *_conv_bn_relu(c, c), nn.MaxPool2d(2, ceil_mode=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = GlobalAvgPool2d()
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)))


def build(num_classes: int, cfg: SmallCNNConfig) -> SmallCNN:
    """Registry builder for ``small_cnn``."""
    return SmallCNN(num_classes, cfg.width, cfg.stages, cfg.dropout, cfg.in_channels)
