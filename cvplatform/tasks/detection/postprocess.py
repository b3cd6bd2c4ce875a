"""The one post-processing step of the detector's graph outputs, shared by evaluation, serving and training.

numpy only (no torch): the server and the evaluation stage call it on the ONNX outputs ``boxes (N, K, 4)``,
``scores (N, K)``, ``labels (N, K)`` (the decoded top-``K`` peaks of :mod:`cvplatform.tasks.detection.model`).
"""

from __future__ import annotations

import numpy as np


def _pairwise_iou(boxes: np.ndarray) -> np.ndarray:
    """``(N, M, M)`` IoU of each image's ``M`` xyxy boxes with each other (the arithmetic of
    :func:`cvplatform.tasks.detection.metrics.box_iou`, batched)."""
    a = np.asarray(boxes, np.float64)
    lt = np.maximum(a[:, :, None, :2], a[:, None, :, :2])
    rb = np.minimum(a[:, :, None, 2:], a[:, None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=3)
    area = (a[:, :, 2] - a[:, :, 0]) * (a[:, :, 3] - a[:, :, 1])
    union = area[:, :, None] + area[:, None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def postprocess(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, *, score_threshold: float = 0.3,
                iou_threshold: float = 0.6, max_detections: int = 100) -> list[dict[str, np.ndarray]]:
    """Per image: boxes scoring ``>= score_threshold``, duplicates of a better box of the same class
    (IoU >= ``iou_threshold``) removed, best ``max_detections`` kept; sorted by score.

    The one post-processing step of evaluation and serving (numpy, on the graph's outputs). Greedy in score
    order: a box is kept unless a kept box of its class overlaps it by ``iou_threshold``. The whole batch is
    done at once (the server runs this on every answered image): the candidates are each image's boxes above
    the threshold, their IoUs one ``(N, M, M)`` array, and the greedy pass one step per candidate rank for all
    images together.
    """
    boxes, scores, labels = np.asarray(boxes), np.asarray(scores), np.asarray(labels)
    n = scores.shape[0]
    order = np.argsort(-scores, axis=1, kind="stable") if scores.size else np.zeros(scores.shape, np.int64)
    ranked = np.take_along_axis(scores, order, axis=1)
    valid = ranked >= score_threshold
    m = int(valid.sum(axis=1).max()) if n and valid.size else 0
    kept = np.zeros((n, m), dtype=bool)
    if m and max_detections > 0:
        order_m, valid_m = order[:, :m], valid[:, :m]
        cand = np.take_along_axis(boxes, order_m[:, :, None], axis=1)
        cls = np.take_along_axis(labels, order_m, axis=1)
        duplicate = (_pairwise_iou(cand) >= iou_threshold) & (cls[:, :, None] == cls[:, None, :])
        removed = ~valid_m
        count = np.zeros(n, dtype=np.int64)
        for i in range(m):
            keep = ~removed[:, i] & (count < max_detections)
            kept[:, i] = keep
            count += keep
            removed |= keep[:, None] & duplicate[:, i, :]
    out = []
    for b, s, lab, o, k in zip(boxes, scores, labels, order[:, :m], kept, strict=True):
        idx = o[k]
        out.append({"boxes": b[idx].astype(np.float32).reshape(-1, 4), "scores": s[idx].astype(np.float32),
                    "labels": lab[idx].astype(np.int64)})
    return out


__all__ = ["postprocess"]
