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

    The one post-processing step of evaluation and serving (numpy, on the graph's outputs).
    """
    out = []
    for b, s, lab in zip(np.asarray(boxes), np.asarray(scores), np.asarray(labels), strict=True):
        order = np.argsort(-s, kind="stable")
        order = order[s[order] >= score_threshold]
        keep: list[int] = []
        for j in order:
            if len(keep) >= max_detections:
                break
            same = [q for q in keep if lab[q] == lab[j]]
            if same and box_iou(b[j][None], b[same]).max() >= iou_threshold:
                continue
            keep.append(int(j))
        idx = np.asarray(keep, dtype=np.int64)
        out.append({"boxes": b[idx].astype(np.float32).reshape(-1, 4), "scores": s[idx].astype(np.float32),
                    "labels": lab[idx].astype(np.int64)})
    return out


__all__ = ["postprocess"]
