"""Detection's training module: :class:`DetectionModule` (the CenterNet of :mod:`.model` on a backbone).

* Network: :class:`~cvplatform.tasks.detection.model.CenterNet` (``self.model``; its forward gives the raw
  ``heatmap`` / ``size`` / ``offset`` maps); :meth:`DetectionModule.exportable` wraps it with the in-graph
  decoding (:class:`~cvplatform.tasks.detection.model.ExportedDetector`: outputs ``boxes``, ``scores``,
  ``labels``), which is what export writes to ONNX.
* Loss: :func:`~cvplatform.tasks.detection.model.centernet_loss` (focal loss on the centre heatmap, L1 on
  log-size and offset), logged as ``{train,val,test}_loss``.
* Metrics: ``val_map`` / ``val_map50`` (and ``test_*``): COCO mAP@[.5:.95] and mAP50 of the decoded,
  post-processed boxes, computed by the project's COCO evaluator (:func:`~cvplatform.tasks.detection.metrics.coco_metrics`,
  the numbers evaluation reports) over the whole epoch. Training logs the loss only (mAP of every training
  batch would cost a COCO evaluation per epoch for nothing the checkpoint is chosen on).

Targets are what :meth:`DetectionTask.target_of <cvplatform.tasks.detection.task.DetectionTask.target_of>` gives
and :meth:`~cvplatform.tasks.detection.task.DetectionTask.collate` keeps as a list: per image
``{"boxes": (K, 4) xyxy input pixels, "labels": (K,), "iscrowd": (K,)}`` (numpy arrays; they stay on the CPU,
where the heatmap targets are drawn).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from cvplatform.errors import ModelError
from cvplatform.models import resolve_model_kwargs
from cvplatform.models.lightning import TaskModule
from cvplatform.tasks.detection.model import CenterNet, ExportedDetector, centernet_loss, decode
from cvplatform.tasks.detection.postprocess import postprocess

#: Score threshold of the boxes the validation mAP ranks (COCO ranks every scored box; a low floor keeps it cheap).
EVAL_SCORE_THRESHOLD = 0.01


def _as_numpy(x: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x if x is not None else np.zeros(shape))
    return a.astype(dtype).reshape((-1, *shape[1:]))


class CocoMeanAP(Metric):
    """One COCO number (``map``, ``map50``, ...) over every image seen since the last reset.

    ``update(preds, targets)`` takes per-image lists (``preds[i] = {"boxes", "scores", "labels"}``,
    ``targets[i] = {"boxes", "labels", "iscrowd"}``); ``compute`` runs
    :func:`~cvplatform.tasks.detection.metrics.coco_metrics` and returns the number, NaN when the images
    hold no ground-truth box (COCO's ``-1``: undefined).

    Example:
        >>> m = CocoMeanAP("map50")
        >>> m.update([{"boxes": [[0, 0, 8, 8]], "scores": [0.9], "labels": [0]}], [{"boxes": [[0, 0, 8, 8]], "labels": [0]}])
        >>> float(m.compute())
        1.0
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, key: str = "map", num_classes: int | None = None, **kwargs: Any) -> None:
        from cvplatform.tasks.detection.metrics import COCO_STATS

        super().__init__(**kwargs)
        if key not in COCO_STATS:
            raise ModelError(f"CocoMeanAP: unknown COCO number {key!r}; choose from {list(COCO_STATS)}.")
        self.key = key
        self.num_classes = num_classes
        # one tensor per image; dist_reduce_fx=None keeps the per-image lists when gathered (as torchmetrics' mAP)
        self.add_state("pred_rows", default=[], dist_reduce_fx=None)  # (M, 6): x0 y0 x1 y1 score label
        self.add_state("truth_rows", default=[], dist_reduce_fx=None)  # (K, 6): x0 y0 x1 y1 label iscrowd

    def update(self, preds: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]) -> None:
        if len(preds) != len(targets):
            raise ModelError(f"CocoMeanAP: {len(preds)} predicted images but {len(targets)} targets.")
        for p, t in zip(preds, targets, strict=True):
            pb = _as_numpy(p.get("boxes"), (0, 4), np.float64)
            rows = np.c_[pb, _as_numpy(p.get("scores"), (0,), np.float64), _as_numpy(p.get("labels"), (0,), np.float64)]
            tb = _as_numpy(t.get("boxes"), (0, 4), np.float64)
            crowd = _as_numpy(t.get("iscrowd"), (0,), np.float64) if t.get("iscrowd") is not None else np.zeros(len(tb))
            truth = np.c_[tb, _as_numpy(t.get("labels"), (0,), np.float64), crowd]
            self.pred_rows.append(torch.as_tensor(rows.reshape(-1, 6), dtype=torch.float64, device=self.device))
            self.truth_rows.append(torch.as_tensor(truth.reshape(-1, 6), dtype=torch.float64, device=self.device))

    def compute(self) -> Tensor:
        from cvplatform.tasks.detection.metrics import coco_metrics

        preds, truths = [], []
        for p, t in zip(self.pred_rows, self.truth_rows, strict=True):
            p, t = p.cpu().numpy().reshape(-1, 6), t.cpu().numpy().reshape(-1, 6)
            preds.append({"boxes": p[:, :4], "scores": p[:, 4], "labels": p[:, 5].astype(np.int64)})
            truths.append({"boxes": t[:, :4], "labels": t[:, 4].astype(np.int64), "iscrowd": t[:, 5] > 0})
        n = self.num_classes
        if n is None:
            seen = [int(x["labels"].max()) for x in (*preds, *truths) if len(x["labels"])]
            n = max(seen, default=0) + 1
        value = coco_metrics(truths, preds, [str(k) for k in range(n)])[self.key]
        return torch.tensor(float("nan") if value is None else value, dtype=torch.float32)


def _metrics(prefix: str, num_classes: int) -> MetricCollection:
    if prefix == "train":
        return MetricCollection({}, prefix="train_")
    return MetricCollection({"map": CocoMeanAP("map", num_classes), "map50": CocoMeanAP("map50", num_classes)},
                            prefix=f"{prefix}_", compute_groups=False)


class DetectionModule(TaskModule):
    """Object detector: :class:`CenterNet` on ``arch`` + its loss, optimiser, schedule and COCO mAP.

    Args:
        arch, arch_kwargs: The backbone (``train.model.arch`` and its arguments).
        num_classes, class_names: The object classes (heatmap channel ``i`` is ``class_names[i]``).
        preprocess: Preprocessing metadata (``input_size`` fixes the output stride).
        optimizer, scheduler, max_epochs: As for every :class:`~cvplatform.models.lightning.TaskModule`.
        head_width: Channels of each head branch.
        size_weight: Weight of the log-size L1 term of the loss.
        max_peaks: ``K``, the heatmap peaks the exported graph returns per image.
        upsample: Neck steps (2x upsampling + conv) between backbone and head; each halves the output stride.
            ``train.detector`` in params.yaml sets these four (:class:`cvplatform.config.DetectorParams`).
        label_smoothing, class_weights: Classification options; detection refuses anything but their
            defaults (``0.0`` / ``None``) rather than silently ignoring them.

    Example:
        >>> import torch
        >>> m = DetectionModule("small_cnn", {"width": 8, "stages": 2}, 2, ["a", "b"],
        ...                     {"input_size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "eval": []})
        >>> [tuple(t.shape) for t in m.exportable()(torch.zeros(1, 3, 32, 32))]
        [(1, 100, 4), (1, 100), (1, 100)]
    """

    def __init__(self, arch: str, arch_kwargs: dict[str, Any], num_classes: int, class_names: list[str],
                 preprocess: dict[str, Any], optimizer: dict[str, Any] | None = None,
                 scheduler: dict[str, Any] | None = None, max_epochs: int = 10, head_width: int = 64,
                 size_weight: float = 0.1, max_peaks: int = 100, upsample: int = 0, label_smoothing: float = 0.0,
                 class_weights: list[float] | None = None) -> None:
        super().__init__()
        if label_smoothing or class_weights is not None:
            raise ModelError(f"DetectionModule: train.loss.label_smoothing={label_smoothing} / class_weights="
                             f"{class_weights} are classification options; detection's loss (focal + L1) has "
                             "neither. Set train.loss.label_smoothing: 0.0 and train.loss.class_weights: none.")
        if len(class_names) != num_classes or num_classes < 1:
            raise ModelError(f"DetectionModule: num_classes={num_classes} but class names {list(class_names)}; "
                             "give one name per object class (at least one).")
        size = list(dict(preprocess).get("input_size") or [])
        if len(size) != 2 or min(size) < 8:
            raise ModelError(f"DetectionModule: preprocess.input_size {size} is not (height, width) >= 8 pixels; "
                             "the detector's output stride is measured on it.")
        arch_kwargs = resolve_model_kwargs(arch, **dict(arch_kwargs))
        self.save_hyperparameters({
            "arch": arch, "arch_kwargs": arch_kwargs, "num_classes": int(num_classes),
            "class_names": [str(c) for c in class_names], "preprocess": dict(preprocess),
            "optimizer": dict(optimizer or {"name": "adamw", "lr": 1e-3}),
            "scheduler": dict(scheduler or {"name": "none"}), "max_epochs": int(max_epochs),
            "head_width": int(head_width), "size_weight": float(size_weight), "max_peaks": int(max_peaks),
            "upsample": int(upsample),
        })
        self.model = CenterNet(arch, arch_kwargs, int(num_classes), head_width=int(head_width), upsample=int(upsample))
        self.stride_px = self.model.stride(int(min(size)))
        self.train_metrics = _metrics("train", int(num_classes))
        self.val_metrics = _metrics("val", int(num_classes))
        self.test_metrics = _metrics("test", int(num_classes))

    def compute_loss(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Any]]) -> Tensor:
        """CenterNet's loss (focal heatmap + weighted L1 size + L1 offset) of one batch."""
        return centernet_loss(outputs, targets, self.stride_px, self.hparams["size_weight"])["loss"]

    def detections(self, outputs: Mapping[str, Tensor], score_threshold: float = EVAL_SCORE_THRESHOLD
                   ) -> list[dict[str, np.ndarray]]:
        """The raw maps of a batch -> post-processed boxes per image (what evaluation scores)."""
        boxes, scores, labels = decode({k: v.detach() for k, v in outputs.items()}, self.stride_px,
                                       self.hparams["max_peaks"])
        return postprocess(boxes.cpu().numpy(), scores.cpu().numpy(), labels.cpu().numpy(),
                           score_threshold=score_threshold, max_detections=self.hparams["max_peaks"])

    def update_metrics(self, metrics: MetricCollection, outputs: Any, targets: Any) -> None:
        if len(metrics):
            metrics.update(self.detections(outputs), list(targets))

    def exportable(self) -> ExportedDetector:
        """The network as exported: images in, ``boxes (N, K, 4)``, ``scores (N, K)``, ``labels (N, K)`` out."""
        return ExportedDetector(self.model, self.stride_px, self.hparams["max_peaks"]).eval()

    def predict_step(self, batch: Any, batch_idx: int) -> tuple[Tensor, Tensor, Tensor]:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return decode(self(x), self.stride_px, self.hparams["max_peaks"])


__all__ = ["EVAL_SCORE_THRESHOLD", "CocoMeanAP", "DetectionModule"]
