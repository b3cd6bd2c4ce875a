"""The one post-processing step of the detector's graph outputs, shared by evaluation, serving and training.

numpy only (no torch): the server and the evaluation stage call it on the ONNX outputs ``boxes (N, K, 4)``,
``scores (N, K)``, ``labels (N, K)`` (the decoded top-``K`` peaks of :mod:`cvplatform.tasks.detection.model`).
"""

from __future__ import annotations

import numpy as np

from cvplatform.tasks.detection.metrics import box_iou


def postprocess(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, *, score_threshold: float = 0.3,
                iou_threshold: float = 0.6, max_detections: int = 100) -> list[dict[str, np.ndarray]]:
    """Per image: boxes scoring ``>= score_threshold``, duplicates of a better box of the same class
    (IoU >= ``iou_threshold``) removed, best ``max_detections`` kept; sorted by score.

    The one post-processing step of evaluation and serving (numpy, on the graph's outputs). Greedy in score
    order: a box is kept unless a kept box of its class overlaps it by ``iou_threshold``; the IoUs of an image's
    candidates are computed in one matrix (the server runs this on every answered image).
    """
    out = []
    for b, s, lab in zip(np.asarray(boxes), np.asarray(scores), np.asarray(labels), strict=True):
        order = np.argsort(-s, kind="stable")
        order = order[s[order] >= score_threshold]
        keep: list[int] = []
        if len(order) and max_detections > 0:
            cand, cls = b[order], lab[order]
            duplicate = (box_iou(cand, cand) >= iou_threshold) & (cls[:, None] == cls[None, :])
            removed = np.zeros(len(order), dtype=bool)
            for i in range(len(order)):
                if removed[i]:
                    continue
                keep.append(int(order[i]))
                if len(keep) >= max_detections:
                    break
                removed |= duplicate[i]
        idx = np.asarray(keep, dtype=np.int64)
        out.append({"boxes": b[idx].astype(np.float32).reshape(-1, 4), "scores": s[idx].astype(np.float32),
                    "labels": lab[idx].astype(np.int64)})
    return out


__all__ = ["postprocess"]
