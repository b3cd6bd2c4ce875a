"""Detection metrics from a maintained COCO evaluator (``faster_coco_eval``), not a hand-written mAP.

:func:`coco_metrics` scores predicted boxes against ground-truth boxes the way the COCO toolkit
does (``pycocotools``' ``COCOeval`` API, re-implemented in C++ by ``faster_coco_eval``; a test
checks the numbers equal pycocotools' to 1e-6): mAP@[.5:.95], mAP50, mAP75, AP for small /
medium / large objects, AR@100 and AP per class. :func:`coco_ground_truth` and
:func:`coco_results` write the same inputs as COCO JSON and COCO results JSON, so any COCO tool
recomputes the numbers from evaluate's files.

:class:`CocoResampler` gives the same numbers (mAP, mAP50, mAP75, AP small / medium / large, AR@100) for image
resamples with replacement without re-running the evaluation: the matches are computed once, each resample only
re-accumulates them (the detection bootstrap intervals).

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


# --------------------------------------------------------------------------- bootstrap without re-matching
#: The metrics :class:`CocoResampler` computes per resample, and the COCO area range each needs.
RESAMPLED_KEYS: dict[str, str] = {"map": "all", "map50": "all", "map75": "all", "map_small": "small",
                                  "map_medium": "medium", "map_large": "large", "mar_100": "all"}
_IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)  # as pycocotools
_REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
_AREA_RANGES = {"all": (0.0, 1e5 ** 2), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
                "large": (96.0 ** 2, 1e5 ** 2)}
_MAX_DETS = 100
_FP, _TP, _IGNORED = 0, 1, 2


def _xywh(boxes: np.ndarray) -> np.ndarray:
    return np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)


def _coco_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """COCO's box IoU (maskApi ``bbIou``) of xywh boxes; against a crowd box the union is the detection's area."""
    w = np.minimum(d[:, None, 0] + d[:, None, 2], g[None, :, 0] + g[None, :, 2]) - np.maximum(d[:, None, 0], g[None, :, 0])
    h = np.minimum(d[:, None, 1] + d[:, None, 3], g[None, :, 1] + g[None, :, 3]) - np.maximum(d[:, None, 1], g[None, :, 1])
    inter = w * h
    da, ga = (d[:, 2] * d[:, 3])[:, None], (g[:, 2] * g[:, 3])[None, :]
    union = np.where(crowd[None, :], da, da + ga - inter)
    ok = (w > 0) & (h > 0)
    return np.where(ok, inter / np.where(ok, union, 1.0), 0.0)


def _greedy(ious: np.ndarray, gt_ignore: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """COCOeval.evaluateImg for one image and class at every IoU threshold: ``(T, D)`` FP / TP / ignored
    (before unmatched detections outside the area range are ignored).

    ``ious`` is ``(D, G)`` with detections by descending score and ground truths ordered non-ignored first."""
    n_t, (n_d, n_g) = len(_IOU_THRS), ious.shape
    thr = np.minimum(_IOU_THRS, 1 - 1e-10)[:, None]
    status = np.full((n_t, n_d), _FP, np.int8)
    taken = np.zeros((n_t, n_g), bool)
    rows = np.arange(n_t)
    parts = (~gt_ignore, gt_ignore) if gt_ignore.any() else (~gt_ignore,)
    reach = np.flatnonzero((ious >= thr[0, 0]).any(axis=1)) if n_g else np.zeros(0, np.int64)
    for d in reach:  # the others overlap no ground truth enough at any threshold
        row = ious[d]
        free = (row[None, :] >= thr) & ~(taken & ~crowd[None, :])
        chosen = np.full(n_t, -1)
        for part in parts:  # a non-ignored ground truth first, else an ignored one
            cand = free & part[None, :] & (chosen[:, None] < 0)
            s = np.where(cand, row[None, :], -np.inf)
            best = s.max(axis=1)
            hit = np.isfinite(best)
            last = n_g - 1 - np.argmax((s == best[:, None])[:, ::-1] & cand[:, ::-1], axis=1)  # ties: the later one
            chosen = np.where(hit & (chosen < 0), last, chosen)
        m = chosen >= 0
        status[m, d] = np.where(gt_ignore[chosen[m]], _IGNORED, _TP)
        taken[rows[m], chosen[m]] = True
    return status


class CocoResampler:
    """COCO bbox metrics of image resamples (with replacement) without re-running the evaluation.

    COCO matches detections to ground truth per image and class, so a resample does not change any image's
    matches: they are computed once here (pycocotools' ``evaluateImg`` rules: detections by descending score,
    at most 100 per image and class, greedy at each of the 10 IoU thresholds, crowd ground truth matched
    repeatedly and ignored, area ranges ``all`` / ``small`` / ``medium`` / ``large``). :meth:`metrics` then runs
    only COCO's ``accumulate`` on the resample: detections of the resampled images in COCO's order (by
    descending score, ties in resample order), cumulative true and false positives, monotone precision at the
    101 recall points. The numbers equal :func:`coco_metrics` of the explicitly resampled image lists (a
    test checks it to 1e-6) for the keys of :data:`RESAMPLED_KEYS`.
    """

    def __init__(self, truth: Sequence[Mapping[str, Any]], preds: Sequence[Mapping[str, Any]],
                 class_names: Sequence[str], keys: Sequence[str]) -> None:
        unknown = [k for k in keys if k not in RESAMPLED_KEYS]
        if unknown:
            raise ValueError(f"bootstrap metric(s) {unknown} are not supported; choose from {list(RESAMPLED_KEYS)}.")
        if len(truth) != len(preds):
            raise ValueError(f"{len(truth)} ground-truth images but {len(preds)} prediction images; they must pair up.")
        self.keys = list(keys)
        self.areas = sorted({RESAMPLED_KEYS[k] for k in keys}, key=list(_AREA_RANGES).index)
        self.n_classes = k_n = len(class_names)
        n = len(truth)
        self.npig = {a: np.zeros((n, k_n), np.int64) for a in self.areas}
        self.has_gt = np.zeros(n, bool)
        cls, score, det_area, status = [], [], [], {a: [] for a in self.areas}
        self.count = np.zeros(n, np.int64)
        for i, (t, p) in enumerate(zip(truth, preds, strict=True)):
            tb = _xywh(_arr(t.get("boxes"), (0, 4), np.float64))
            tl = _arr(t.get("labels"), (0,), np.int64)
            tc = _arr(t.get("iscrowd"), (0,), bool) if t.get("iscrowd") is not None else np.zeros(len(tb), bool)
            pb = _xywh(_arr(p.get("boxes"), (0, 4), np.float64))
            ps = _arr(p.get("scores"), (0,), np.float64)
            pl = _arr(p.get("labels"), (0,), np.int64)
            self.has_gt[i] = len(tb) > 0
            g_area, d_area = tb[:, 2] * tb[:, 3], pb[:, 2] * pb[:, 3]
            for c in np.unique(pl):
                gi, di = np.flatnonzero(tl == c), np.flatnonzero(pl == c)
                di = di[np.argsort(-ps[di], kind="mergesort")[:_MAX_DETS]]
                ious = _coco_iou(pb[di], tb[gi], tc[gi])
                cls.append(np.full(len(di), c))
                score.append(ps[di])
                det_area.append(d_area[di])
                self.count[i] += len(di)
                matched: dict[bytes, np.ndarray] = {}  # area ranges ignoring the same ground truth match alike
                for a in self.areas:
                    lo, hi = _AREA_RANGES[a]
                    ig = tc[gi] | (g_area[gi] < lo) | (g_area[gi] > hi)
                    if ig.tobytes() not in matched:
                        order = np.argsort(ig, kind="mergesort")
                        matched[ig.tobytes()] = _greedy(ious[:, order], ig[order], tc[gi][order])
                    st = matched[ig.tobytes()].copy()
                    st[(st == _FP) & ((d_area[di] < lo) | (d_area[di] > hi))[None, :]] = _IGNORED
                    status[a].append(st)
            for a in self.areas:
                lo, hi = _AREA_RANGES[a]
                ok = ~tc & (g_area >= lo) & (g_area <= hi)
                np.add.at(self.npig[a][i], tl[ok], 1)
        self.start = np.cumsum(self.count) - self.count
        self.cls = np.concatenate(cls) if cls else np.zeros(0, np.int64)
        score_all = np.concatenate(score) if score else np.zeros(0)
        n_t = len(_IOU_THRS)
        self.status = {a: (np.concatenate(s, axis=1) if s else np.zeros((n_t, 0), np.int8)) for a, s in status.items()}
        areas = np.concatenate(det_area) if det_area else np.zeros(0)
        self.in_range = {a: (areas >= _AREA_RANGES[a][0]) & (areas <= _AREA_RANGES[a][1]) for a in self.areas}
        # a detection in range that is a false positive at every threshold only counts; the others are "special"
        self.special = np.zeros(len(areas), bool)
        for a in self.areas:
            self.special |= ((self.status[a] == _TP) | (self.in_range[a][None, :] & (self.status[a] != _FP))).any(axis=0)
        # one integer per (class, score): COCO's order is by class, then descending score, then resample order
        order = np.lexsort((-score_all, self.cls))
        new = np.r_[True, (np.diff(self.cls[order]) != 0) | (np.diff(score_all[order]) != 0)] if len(order) else []
        self.key = np.empty(len(order), np.int64)
        self.key[order] = np.cumsum(new) - 1

    def metrics(self, idx: np.ndarray) -> dict[str, float | None]:
        """The metrics of the resample that takes image ``idx[j]`` as its ``j``-th image (``None``: undefined)."""
        idx = np.asarray(idx, np.int64)
        out: dict[str, float | None] = {k: None for k in self.keys}
        if not self.has_gt[idx].any():
            return out  # coco_metrics: no annotation at all
        lengths = self.count[idx]
        total = int(lengths.sum())
        ex = np.repeat(self.start[idx] - (np.cumsum(lengths) - lengths), lengths) + np.arange(total)
        o = ex[np.argsort(self.key[ex], kind="stable")]
        cls_o = self.cls[o]
        k_all = np.arange(self.n_classes)
        seg_lo = np.searchsorted(cls_o, k_all, "left")
        pos = np.flatnonzero(self.special[o])  # sorted positions of the detections that may be matched
        u, c_s = o[pos], cls_o[pos]
        s_lo, s_hi = np.searchsorted(c_s, k_all, "left"), np.searchsorted(c_s, k_all, "right")
        n_t = len(_IOU_THRS)
        for a in self.areas:
            npig = self.npig[a][idx].sum(axis=0)
            valid = npig > 0
            in_cum = np.zeros(total + 1, np.int64)
            np.cumsum(self.in_range[a][o], out=in_cum[1:])  # detections in range: false unless matched
            st = self.status[a][:, u]  # (T, S)
            tpc = np.zeros((n_t, len(u) + 1), np.int64)
            nfc = np.zeros((n_t, len(u) + 1), np.int64)
            np.cumsum(st == _TP, axis=1, out=tpc[:, 1:])
            np.cumsum((st != _FP) & self.in_range[a][u][None, :], axis=1, out=nfc[:, 1:])
            ti, s = np.nonzero(st == _TP)  # only true positives can set interpolated precision
            c = c_s[s]
            tp = (tpc[ti, s + 1] - tpc[ti, s_lo[c]]).astype(np.float64)
            fp = ((in_cum[pos[s] + 1] - in_cum[seg_lo[c]]) - (nfc[ti, s + 1] - nfc[ti, s_lo[c]])).astype(np.float64)
            rc = tp / npig[c]
            pr = tp / (fp + tp + np.spacing(1))
            best = np.zeros((n_t, self.n_classes, len(_REC_THRS) + 1))
            np.maximum.at(best, (ti, c, np.searchsorted(_REC_THRS, rc, "right")), pr)
            q = np.maximum.accumulate(best[..., ::-1], axis=-1)[..., ::-1][..., 1:]  # (T, K, R)
            ap = q.mean(axis=-1)
            for key in self.keys:
                if RESAMPLED_KEYS[key] != a or not valid.any():
                    continue
                if key == "mar_100":
                    rec = (tpc[:, s_hi] - tpc[:, s_lo]) / np.maximum(npig, 1)
                    out[key] = float(rec[:, valid].mean())
                elif key == "map50":
                    out[key] = float(ap[0, valid].mean())
                elif key == "map75":
                    out[key] = float(ap[int(np.argmin(np.abs(_IOU_THRS - 0.75))), valid].mean())
                else:
                    out[key] = float(ap[:, valid].mean())
        return out


__all__ = ["COCO_STATS", "RESAMPLED_KEYS", "CocoResampler", "box_iou", "coco_ground_truth", "coco_metrics", "coco_results", "confusion_matrix", "match",
           "operating_point"]
