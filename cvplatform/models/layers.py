"""Small building blocks shared by the architectures."""

from __future__ import annotations

from torch import Tensor, nn


class GlobalAvgPool2d(nn.Module):
    """Mean over height and width: ``(N, C, H, W) -> (N, C)``.

    Same result as ``AdaptiveAvgPool2d(1)`` + flatten, but its CUDA backward is
    deterministic (AdaptiveAvgPool2d's raises under ``deterministic=True``), and
    it exports to ONNX as a plain ``ReduceMean``.

    Example:
        >>> import torch
        >>> GlobalAvgPool2d()(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 3])
    """

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))
