"""A from-scratch anchor-free detector (CenterNet-style) on the in-project backbones.

* **Backbone** (:func:`backbone`): the feature extractor of an in-project classifier
  (``small_cnn``, ``resnet``, ``mobilenet_v2`` from :mod:`cvplatform.models`), without its pooling
  and linear head; its output stride is measured, not assumed.
* **Neck** (``upsample`` steps of 2x upsampling + conv): a finer output grid than the backbone's, as
  CenterNet's deconvolution neck gives, so that small and touching objects get centre cells of their own.
* **Head** (:class:`CenterNet`): three small conv branches on the feature map: a per-class
  centre heatmap (logits), the box size (width, height in input pixels, predicted as
  ``log``) and the sub-cell offset of the centre.
* **Targets and loss** (:func:`encode_targets`, :func:`centernet_loss`): a Gaussian peak per
  object on its class's heatmap (CenterNet's radius rule), penalty-reduced focal loss on the
  heatmap, L1 on log-size and offset at the object centres.
* **Decoding** (:func:`decode`, inside the exported graph): peaks are cells equal to the 3x3 max
  of their neighbourhood (CenterNet's NMS-free peak extraction, a ``MaxPool`` in ONNX; equal
  neighbours are told apart by a fixed per-position tie-break, the same in every runtime), the
  ``K`` best peaks over all classes (``TopK``) become ``boxes (N, K, 4)`` xyxy in input pixels,
  ``scores (N, K)`` and ``labels (N, K)``. :func:`postprocess` (numpy, shared by evaluation and
  serving) applies the score threshold, a class-wise IoU suppression of duplicate peaks and
  ``max_detections``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvplatform.errors import ModelError
from cvplatform.tasks.detection.postprocess import postprocess

OUTPUT_NAMES: tuple[str, ...] = ("boxes", "scores", "labels")


def backbone(arch: str, **kwargs: Any) -> tuple[nn.Module, int]:
    """The feature extractor of architecture ``arch`` and its output channels.

    Example:
        >>> net, ch = backbone("small_cnn", width=8, stages=2)
        >>> ch, tuple(net(torch.zeros(1, 3, 32, 32)).shape)
        (16, (1, 16, 8, 8))
    """
    from cvplatform.models import build_model

    clf = build_model(arch, 2, **kwargs)
    if hasattr(clf, "features"):  # small_cnn, mobilenet_v2
        feats: nn.Module = clf.features
    elif hasattr(clf, "stages") and hasattr(clf, "stem"):  # resnet
        feats = nn.Sequential(clf.stem, clf.stages)
    else:
        raise ModelError(f"architecture {arch!r} has no feature extractor the detector knows (features, or stem + stages).")
    with torch.no_grad():
        was = feats.training
        feats.eval()
        channels = int(feats(torch.zeros(1, 3, 32, 32)).shape[1])
        feats.train(was)
    return feats, channels


def _branch(c_in: int, c_out: int, hidden: int, bias: float = 0.0) -> nn.Sequential:
    last = nn.Conv2d(hidden, c_out, 1)
    nn.init.constant_(last.bias, bias)
    return nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(inplace=True), last)


def _neck(channels: int, steps: int) -> tuple[nn.Module, int]:
    """``steps`` x (2x nearest upsampling + 3x3 conv-BN-ReLU, halving the channels down to 32): a finer output
    grid (CenterNet's deconvolution neck) so that small objects get their own centre cell. Returns the neck and
    its output channels (``nn.Identity`` for 0 steps)."""
    layers: list[nn.Module] = []
    for _ in range(steps):
        out = max(32, channels // 2)
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, out, 3, padding=1, bias=False),
                   nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        channels = out
    return (nn.Sequential(*layers) if layers else nn.Identity()), channels


class CenterNet(nn.Module):
    """Backbone + heatmap / size / offset branches; ``forward`` returns the three raw maps.

    Example:
        >>> net = CenterNet("small_cnn", {"width": 8, "stages": 2}, num_classes=3)
        >>> {k: tuple(v.shape) for k, v in net(torch.zeros(2, 3, 32, 32)).items()}
        {'heatmap': (2, 3, 8, 8), 'size': (2, 2, 8, 8), 'offset': (2, 2, 8, 8)}
        >>> net.stride(32)
        4
        >>> CenterNet("small_cnn", {"width": 8, "stages": 3}, num_classes=3, upsample=1).stride(32)  # 8 -> 4
        4
    """

    def __init__(self, arch: str, arch_kwargs: Mapping[str, Any], num_classes: int, head_width: int = 64,
                 upsample: int = 0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ModelError(f"a detector needs at least one class, got num_classes={num_classes}.")
        if not 0 <= upsample <= 3:
            raise ModelError(f"a detector's neck upsamples 0-3 times (each halves the output stride), got {upsample}.")
        self.backbone, ch = backbone(arch, **dict(arch_kwargs))
        self.neck, ch = _neck(ch, upsample)
        # focal-loss prior: every cell starts at p = 0.01 for every class (CenterNet / RetinaNet init)
        self.heatmap = _branch(ch, num_classes, head_width, bias=-math.log((1 - 0.01) / 0.01))
        self.size = _branch(ch, 2, head_width)
        self.offset = _branch(ch, 2, head_width)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        f = self.neck(self.backbone(x))
        return {"heatmap": self.heatmap(f), "size": self.size(f), "offset": self.offset(f)}

    def stride(self, input_side: int) -> int:
        with torch.no_grad():
            was = self.training
            self.eval()
            side = self.neck(self.backbone(torch.zeros(1, 3, input_side, input_side))).shape[-1]
            self.train(was)
        return max(1, round(input_side / side))


# --------------------------------------------------------------------------- targets and loss
def gaussian_radius(h: float, w: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius: the largest corner shift keeping IoU >= ``min_overlap`` (three cases, smallest wins)."""
    a1, b1 = 1.0, h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 * b1 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + math.sqrt(b2 * b2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + math.sqrt(b3 * b3 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def encode_targets(targets: Sequence[Mapping[str, Any]], num_classes: int, grid: tuple[int, int], stride: int
                   ) -> dict[str, Tensor]:
    """Heatmaps ``(N, C, H, W)`` plus per-object centre cell, log-size and offset for a batch.

    ``targets[i] = {"boxes": (K, 4) xyxy input pixels, "labels": (K,)}``.
    """
    gh, gw = grid
    heat = torch.zeros(len(targets), num_classes, gh, gw)
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij")
    batch, cells, sizes, offsets = [], [], [], []
    for i, t in enumerate(targets):
        boxes = torch.as_tensor(np.asarray(t["boxes"], np.float32).reshape(-1, 4))
        labels = torch.as_tensor(np.asarray(t["labels"], np.int64).reshape(-1))
        for b, c in zip(boxes, labels, strict=True):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            if w <= 0 or h <= 0:
                continue
            cx, cy = float(b[0] + b[2]) / 2 / stride, float(b[1] + b[3]) / 2 / stride
            ix, iy = min(int(cx), gw - 1), min(int(cy), gh - 1)
            r = max(0.0, gaussian_radius(h / stride, w / stride))
            sigma = (2 * int(r) + 1) / 6
            g = torch.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma * sigma))
            heat[i, int(c)] = torch.maximum(heat[i, int(c)], g)
            batch.append(i)
            cells.append(iy * gw + ix)
            sizes.append((math.log(w), math.log(h)))
            offsets.append((cx - ix, cy - iy))
    return {"heatmap": heat, "batch": torch.tensor(batch, dtype=torch.int64),
            "cell": torch.tensor(cells, dtype=torch.int64),
            "size": torch.tensor(sizes, dtype=torch.float32).reshape(-1, 2),
            "offset": torch.tensor(offsets, dtype=torch.float32).reshape(-1, 2)}


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CenterNet's penalty-reduced pixel focal loss, summed and divided by the number of peaks."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = torch.log(p) * (1 - p) ** alpha * pos
    neg_loss = torch.log(1 - p) * p ** alpha * (1 - target) ** beta * (1 - pos)
    n = pos.sum().clamp(min=1.0)
    return -(pos_loss.sum() + neg_loss.sum()) / n


def centernet_loss(outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Any]], stride: int,
                   size_weight: float = 0.1) -> dict[str, Tensor]:
    """``{"loss", "heatmap", "size", "offset"}`` for one batch (sizes are L1 on log pixels)."""
    hm = outputs["heatmap"]
    n, c, gh, gw = hm.shape
    enc = encode_targets(targets, c, (gh, gw), stride)
    heat_loss = focal_loss(hm, enc["heatmap"].to(hm.device))
    if len(enc["cell"]):
        b, cell = enc["batch"].to(hm.device), enc["cell"].to(hm.device)
        size = outputs["size"].flatten(2)[b, :, cell]
        off = outputs["offset"].flatten(2)[b, :, cell]
        size_loss = F.l1_loss(size, enc["size"].to(hm.device))
        off_loss = F.l1_loss(off, enc["offset"].to(hm.device))
    else:
        size_loss = off_loss = hm.sum() * 0.0
    loss = heat_loss + size_weight * size_loss + off_loss
    return {"loss": loss, "heatmap": heat_loss.detach(), "size": size_loss.detach(), "offset": off_loss.detach()}


# --------------------------------------------------------------------------- decoding
#: Logit step of :func:`decode`'s tie-break between neighbouring cells (0 .. 8 steps within a 3x3 window).
TIE_STEP = 1e-4


def decode(outputs: Mapping[str, Tensor], stride: int, k: int = 100) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` best heatmap peaks as ``boxes (N, k, 4)`` xyxy input pixels, ``scores (N, k)``, ``labels (N, k)``.

    Only exportable tensor ops (sigmoid, MaxPool, TopK, Gather): this runs inside the ONNX graph.

    Peaks are ranked by their logit (a sigmoid saturates to equal scores); cells that are no peak (score 0)
    fill the tail of the ``k`` in index order, so every runtime returns the same tail (TopK breaks ties among
    equal values in no defined order, and the export's parity gate compares the raw outputs).
    """
    logits = outputs["heatmap"]
    n, c, gh, gw = logits.shape
    # Peak test on the logits plus a tiny fixed bias that differs for every cell of a 3x3 window: equal
    # neighbours (uniform padding, flat regions) are then ranked the same way by every runtime, instead of by
    # float noise (ONNX Runtime and PyTorch differ in the last bits: one called a cell a peak, the other its
    # neighbour, and a box appeared in one output only). The step (TIE_STEP) is far above float32 noise at
    # these magnitudes and far below any difference that matters; scores come from the unbiased logits.
    ys_, xs_ = torch.arange(gh, device=logits.device), torch.arange(gw, device=logits.device)
    rank = ((ys_ % 3).unsqueeze(1) * 3 + (xs_ % 3).unsqueeze(0)).to(logits.dtype)
    biased = logits - TIE_STEP * rank
    is_peak = (F.max_pool2d(biased, 3, stride=1, padding=1) == biased).reshape(n, -1)
    flat = logits.reshape(n, -1)
    index = torch.arange(c * gh * gw, dtype=logits.dtype, device=logits.device)
    key = torch.where(is_peak, flat.clamp(min=-1e3), -1e4 - index)  # integers below 2**24 are exact in float32
    k = min(k, c * gh * gw)
    _, idx = torch.topk(key, k)
    scores = torch.sigmoid(torch.gather(flat, 1, idx)) * torch.gather(is_peak, 1, idx).to(logits.dtype)
    labels = idx // (gh * gw)
    cell = idx % (gh * gw)
    ys = (cell // gw).to(logits.dtype)
    xs = (cell % gw).to(logits.dtype)
    size = torch.gather(outputs["size"].reshape(n, 2, -1), 2, cell.unsqueeze(1).expand(n, 2, k)).exp()
    off = torch.gather(outputs["offset"].reshape(n, 2, -1), 2, cell.unsqueeze(1).expand(n, 2, k))
    cx = (xs + off[:, 0]) * stride
    cy = (ys + off[:, 1]) * stride
    boxes = torch.stack([cx - size[:, 0] / 2, cy - size[:, 1] / 2, cx + size[:, 0] / 2, cy + size[:, 1] / 2], dim=2)
    return boxes, scores, labels


class ExportedDetector(nn.Module):
    """The detector as exported: image batch in, :data:`OUTPUT_NAMES` out (decoded top-``k`` peaks)."""

    def __init__(self, net: CenterNet, stride: int, k: int = 100) -> None:
        super().__init__()
        self.net, self.stride_px, self.k = net, stride, k

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return decode(self.net(x), self.stride_px, self.k)


__all__ = ["OUTPUT_NAMES", "CenterNet", "ExportedDetector", "backbone", "centernet_loss", "decode", "encode_targets",
           "focal_loss", "gaussian_radius", "postprocess"]
