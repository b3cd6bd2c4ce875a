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
    done at once (the server runs this on every answered request): the candidates are each image's boxes above
    the threshold and their IoUs one ``(N, M, M)`` array. A candidate no better candidate of its class overlaps
    is kept outright; the greedy pass then steps only through the ranks where some image has a *contested*
    candidate (a better duplicate above the threshold), for all images together, and the cap keeps each image's
    first ``max_detections`` kept boxes (the same boxes as capping inside the greedy pass: a box past the cap
    suppresses nothing that could still be kept). The kept boxes of all images are gathered at once and handed
    out as slices.
    """
    boxes, scores, labels = np.asarray(boxes), np.asarray(scores), np.asarray(labels)
    n = scores.shape[0]
    order = np.argsort(-scores, axis=1, kind="stable") if scores.size else np.zeros(scores.shape, np.int64)
    ranked = np.take_along_axis(scores, order, axis=1)
    valid = ranked >= score_threshold
    m = int(valid.sum(axis=1).max()) if n and valid.size else 0
    kept = np.zeros((n, m), dtype=bool)
    order_m = order[:, :m]
    if m and max_detections > 0:
        valid_m = valid[:, :m]
        cand = np.take_along_axis(boxes, order_m[:, :, None], axis=1)
        cls = np.take_along_axis(labels, order_m, axis=1)
        # earlier[:, j, i]: candidate j (above the threshold, better than i) is a same-class duplicate of i
        earlier = np.triu((_pairwise_iou(cand) >= iou_threshold) & (cls[:, :, None] == cls[:, None, :]), k=1)
        earlier &= valid_m[:, :, None]
        kept[:] = valid_m
        for i in np.flatnonzero(earlier.any(axis=(0, 1))):  # ranks with a contested candidate in some image
            kept[:, i] = valid_m[:, i] & ~(kept[:, :i] & earlier[:, :i, i]).any(axis=1)
        if max_detections < m:
            kept &= np.cumsum(kept, axis=1) <= max_detections
    if n == 0:
        return []
    rows, ranks = np.nonzero(kept)  # row-major: each image's kept boxes in score order
    idx = order_m[rows, ranks]
    b = boxes[rows, idx].astype(np.float32).reshape(-1, 4)
    s = scores[rows, idx].astype(np.float32)
    lab = labels[rows, idx].astype(np.int64)
    ends = np.cumsum(kept.sum(axis=1)).tolist()
    return [{"boxes": b[i:j], "scores": s[i:j], "labels": lab[i:j]} for i, j in zip([0, *ends[:-1]], ends, strict=True)]


__all__ = ["postprocess"]
