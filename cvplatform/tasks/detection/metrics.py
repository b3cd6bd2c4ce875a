"""Detection metrics from a maintained COCO evaluator (``faster_coco_eval``), not a hand-written mAP.

:func:`coco_metrics` scores predicted boxes against ground-truth boxes the way the COCO toolkit
does (``pycocotools``' ``COCOeval`` API, re-implemented in C++ by ``faster_coco_eval``; a test
checks the numbers equal pycocotools' to 1e-6): mAP@[.5:.95], mAP50, mAP75, AP for small /
medium / large objects, AR@100 and AP per class. :func:`coco_ground_truth` and
:func:`coco_results` write the same inputs as COCO JSON and COCO results JSON, so any COCO tool
recomputes the numbers from evaluate's files.

:func:`operating_point` adds what the COCO summary lacks for a launch decision: precision,
recall and F1 at the confidence threshold that maximises F1 (boxes matched greedily by score at
IoU 0.5 within their class), and :func:`confusion_matrix` a class confusion matrix with a
``background`` row (false positives) and column (missed objects).

Inputs are per-image lists, in the same image order for truth and predictions:
``truth[i] = {"boxes": (K, 4) xyxy pixels, "labels": (K,) class indices, "iscrowd": (K,) bool}``;
``preds[i] = {"boxes": (M, 4), "scores": (M,), "labels": (M,)}``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: COCOeval.stats index -> metric name (bbox, 12 numbers).
COCO_STATS: tuple[str, ...] = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
                               "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")


def _arr(x: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    a = np.asarray(x if x is not None else np.zeros(shape), dtype=dtype)
    return a.reshape((-1, *shape[1:])) if a.size else np.zeros((0, *shape[1:]), dtype)


def coco_ground_truth(truth: Sequence[Mapping[str, Any]], class_names: Sequence[str],
                      sizes: Sequence[tuple[int, int]] | None = None,
                      file_names: Sequence[str] | None = None) -> dict[str, Any]:
    """A COCO dataset dict: image ``i`` has id ``i + 1``, class ``k`` category id ``k + 1``; ``area`` is the box area."""
    images, anns = [], []
    for i, t in enumerate(truth):
        im: dict[str, Any] = {"id": i + 1, "file_name": file_names[i] if file_names else f"{i}.png"}
        if sizes:
            im["width"], im["height"] = int(sizes[i][0]), int(sizes[i][1])
        images.append(im)
        boxes = _arr(t.get("boxes"), (0, 4), np.float64)
        labels = _arr(t.get("labels"), (0,), np.int64)
        crowd = _arr(t.get("iscrowd"), (0,), bool) if t.get("iscrowd") is not None else np.zeros(len(boxes), bool)
        for b, lab, c in zip(boxes, labels, crowd, strict=True):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(lab) + 1,
                         "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": int(c)})
    return {"images": images, "annotations": anns,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]}


def coco_results(preds: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """COCO results JSON (a list of ``{"image_id", "category_id", "bbox" xywh, "score"}``)."""
    out = []
    for i, p in enumerate(preds):
        boxes = _arr(p.get("boxes"), (0, 4), np.float64)
        for b, s, lab in zip(boxes, _arr(p.get("scores"), (0,), np.float64), _arr(p.get("labels"), (0,), np.int64),
                             strict=True):
            out.append({"image_id": i + 1, "category_id": int(lab) + 1,
                        "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "score": float(s)})
    return out


def _evaluate(gt_doc: dict[str, Any], results: list[dict[str, Any]]) -> Any:
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(gt_doc)
    dt = gt.loadRes(results) if results else COCO()
    ev = COCOeval_faster(gt, dt, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):  # summarize() prints the table
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def coco_metrics(truth: Sequence[Mapping[str, Any]], preds: Sequence[Mapping[str, Any]],
                 class_names: Sequence[str]) -> dict[str, Any]:
    """COCO bbox metrics (:data:`COCO_STATS`, ``-1`` from COCO becomes ``None``: no such objects) and
    ``ap_per_class`` (class name -> AP@[.5:.95], ``None`` for a class without ground truth).

    Raises:
        ValueError: ``truth`` and ``preds`` hold different numbers of images.
    """
    if len(truth) != len(preds):
        raise ValueError(f"{len(truth)} ground-truth images but {len(preds)} prediction images; they must pair up.")
    gt_doc = coco_ground_truth(truth, class_names)
    results = coco_results(preds)
    out: dict[str, Any] = {name: None for name in COCO_STATS}
    out["ap_per_class"] = {n: None for n in class_names}
    if not gt_doc["annotations"]:
        return out
    ev = _evaluate(gt_doc, results)
    for name, v in zip(COCO_STATS, ev.stats, strict=False):
        out[name] = None if v < 0 else float(v)
    precision = ev.eval["precision"]  # (T iou, R recall, K class, A area, M maxdets)
    for k, n in enumerate(class_names):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out["ap_per_class"][n] = float(p.mean()) if p.size else None
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of ``(N, 4)`` and ``(M, 4)`` xyxy boxes.

    Example:
        >>> box_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 3, 3], [0, 0, 2, 2]])).round(3).tolist()
        [[0.143, 1.0]]
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match(truth: Mapping[str, Any], pred: Mapping[str, Any], iou: float = 0.5, *, same_class: bool = True
          ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching by descending score: ``(pred_to_truth, truth_matched)``; ``pred_to_truth[j]`` is the
    truth index of prediction ``j`` or ``-1`` (a false positive)."""
    tb = _arr(truth.get("boxes"), (0, 4), np.float64)
    tl = _arr(truth.get("labels"), (0,), np.int64)
    pb = _arr(pred.get("boxes"), (0, 4), np.float64)
    pl = _arr(pred.get("labels"), (0,), np.int64)
    ps = _arr(pred.get("scores"), (0,), np.float64)
    ious = box_iou(pb, tb)
    if same_class:
        ious = np.where(pl[:, None] == tl[None, :], ious, 0.0)
    to_truth = np.full(len(pb), -1, np.int64)
    taken = np.zeros(len(tb), bool)
    for j in np.argsort(-ps, kind="stable"):
        if not len(tb):
            break
        cand = np.where(taken, -1.0, ious[j])
        k = int(cand.argmax())
        if cand[k] >= iou:
            to_truth[j], taken[k] = k, True
    return to_truth, taken


def operating_point(truth: Sequence[Mapping[str, Any]], preds: Sequence[Mapping[str, Any]], iou: float = 0.5
                    ) -> dict[str, float | None]:
    """Precision, recall and F1 at the score threshold that maximises F1 over the whole set.

    Example:
        >>> t = [{"boxes": [[0, 0, 10, 10]], "labels": [0]}]
        >>> p = [{"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "scores": [0.9, 0.3], "labels": [0, 0]}]
        >>> operating_point(t, p)
        {'threshold': 0.9, 'precision': 1.0, 'recall': 1.0, 'f1': 1.0}
    """
    scores, hits, n_truth = [], [], 0
    for t, p in zip(truth, preds, strict=True):
        to_truth, _ = match(t, p, iou)
        scores.append(_arr(p.get("scores"), (0,), np.float64))
        hits.append(to_truth >= 0)
        n_truth += len(_arr(t.get("labels"), (0,), np.int64))
    s = np.concatenate(scores) if scores else np.zeros(0)
    h = np.concatenate(hits) if hits else np.zeros(0, bool)
    if not len(s) or not n_truth:
        return {"threshold": None, "precision": None, "recall": None if not n_truth else 0.0, "f1": None}
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(h[order])
    precision = tp / np.arange(1, len(s) + 1)
    recall = tp / n_truth
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    # a threshold keeps every box scoring >= it: only the last of equal scores is a valid cut
    last = np.r_[s[order][1:] != s[order][:-1], True]
    best = int(np.flatnonzero(last)[np.argmax(f1[last])])
    return {"threshold": float(s[order][best]), "precision": float(precision[best]), "recall": float(recall[best]),
            "f1": float(f1[best])}


def confusion_matrix(truth: Sequence[Mapping[str, Any]], preds: Sequence[Mapping[str, Any]], n_classes: int,
                     iou: float = 0.5, score_threshold: float = 0.0) -> np.ndarray:
    """``(C + 1, C + 1)`` counts: rows are true classes plus ``background`` (last row: false positives),
    columns predicted classes plus ``background`` (last column: missed objects). A prediction is paired
    with the truth box it overlaps most (IoU >= ``iou``, any class), greedily by score."""
    cm = np.zeros((n_classes + 1, n_classes + 1), np.int64)
    for t, p in zip(truth, preds, strict=True):
        keep = _arr(p.get("scores"), (0,), np.float64) >= score_threshold
        pk = {k: _arr(p.get(k), shape, dt)[keep] for k, shape, dt in
              (("boxes", (0, 4), np.float64), ("scores", (0,), np.float64), ("labels", (0,), np.int64))}
        to_truth, taken = match(t, pk, iou, same_class=False)
        tl = _arr(t.get("labels"), (0,), np.int64)
        for j, k in enumerate(to_truth):
            cm[tl[k] if k >= 0 else n_classes, pk["labels"][j]] += 1
        for k in np.flatnonzero(~taken):
            cm[tl[k], n_classes] += 1
    return cm


__all__ = ["COCO_STATS", "box_iou", "coco_ground_truth", "coco_metrics", "coco_results", "confusion_matrix", "match",
           "operating_point"]
