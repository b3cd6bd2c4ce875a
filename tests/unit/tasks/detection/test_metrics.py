"""Detection metrics: the COCO numbers equal pycocotools' (the reference) to 1e-6; operating point and confusion."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from cvplatform.tasks.detection.metrics import (
    COCO_STATS,
    coco_ground_truth,
    coco_metrics,
    coco_results,
    confusion_matrix,
    operating_point,
)

CLASSES = ["circle", "square", "triangle"]


def _fixture(seed: int = 0, n_images: int = 40):
    rng = np.random.default_rng(seed)
    truth, preds = [], []
    for _ in range(n_images):
        k = int(rng.integers(0, 7))
        side = rng.choice([12.0, 40.0, 130.0], size=k) * rng.uniform(0.8, 1.2, size=k)  # small, medium, large
        x0, y0 = rng.uniform(0, 300, size=k), rng.uniform(0, 300, size=k)
        boxes = np.stack([x0, y0, x0 + side, y0 + side * rng.uniform(0.6, 1.4, size=k)], axis=1) if k else np.zeros((0, 4))
        labels = rng.integers(0, 3, size=k)
        crowd = rng.random(k) < 0.1
        truth.append({"boxes": boxes, "labels": labels, "iscrowd": crowd})
        keep = rng.random(k) > 0.2  # some objects missed
        pb = boxes[keep] + rng.normal(0, 2.0, size=(int(keep.sum()), 4))
        pl = np.where(rng.random(int(keep.sum())) < 0.9, labels[keep], rng.integers(0, 3, size=int(keep.sum())))
        n_fp = int(rng.integers(0, 3))
        fx, fy = rng.uniform(0, 350, size=n_fp), rng.uniform(0, 350, size=n_fp)
        fp = np.stack([fx, fy, fx + 30, fy + 25], axis=1) if n_fp else np.zeros((0, 4))
        preds.append({"boxes": np.concatenate([pb, fp]), "labels": np.concatenate([pl, rng.integers(0, 3, size=n_fp)]),
                      "scores": rng.uniform(0.05, 1.0, size=int(keep.sum()) + n_fp)})
    return truth, preds


def _pycocotools(truth, preds):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco_ground_truth(truth, CLASSES)
        gt.createIndex()
        dt = gt.loadRes(coco_results(preds))
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_metrics_equal_pycocotools(seed):
    truth, preds = _fixture(seed)
    ours = coco_metrics(truth, preds, CLASSES)
    ref = _pycocotools(truth, preds)
    for name, v in zip(COCO_STATS, ref.stats, strict=True):
        assert ours[name] == (None if v < 0 else pytest.approx(v, abs=1e-6)), name
    for k, name in enumerate(CLASSES):
        p = ref.eval["precision"][:, :, k, 0, -1]
        assert ours["ap_per_class"][name] == pytest.approx(p[p > -1].mean(), abs=1e-6)
    assert 0.2 < ours["map50"] < 1.0 and ours["map"] < ours["map50"]  # an informative fixture, not 0 or 1


def test_perfect_and_empty_predictions():
    truth, _ = _fixture(5, 10)
    perfect = [{"boxes": t["boxes"], "labels": t["labels"], "scores": np.ones(len(t["labels"]))} for t in truth]
    m = coco_metrics(truth, perfect, CLASSES)
    assert m["map50"] == pytest.approx(1.0)
    none = [{"boxes": np.zeros((0, 4)), "labels": [], "scores": []} for _ in truth]
    assert coco_metrics(truth, none, CLASSES)["map"] == 0.0
    assert coco_metrics([{"boxes": [], "labels": []}], [{"boxes": [], "labels": [], "scores": []}], CLASSES)["map"] is None
    with pytest.raises(ValueError, match="pair up"):
        coco_metrics(truth, none[:-1], CLASSES)


def test_operating_point_and_confusion_with_background():
    truth = [{"boxes": [[0, 0, 10, 10], [20, 20, 40, 40]], "labels": [0, 1]},
             {"boxes": [[0, 0, 10, 10]], "labels": [2]}]
    preds = [{"boxes": [[0, 0, 10, 10], [20, 20, 40, 41], [50, 50, 60, 60]], "labels": [0, 2, 1],
              "scores": [0.9, 0.8, 0.2]},
             {"boxes": np.zeros((0, 4)), "labels": [], "scores": []}]
    op = operating_point(truth, preds)
    assert op == {"threshold": 0.9, "precision": 1.0, "recall": pytest.approx(1 / 3), "f1": pytest.approx(0.5)}
    cm = confusion_matrix(truth, preds, 3)
    expected = np.zeros((4, 4), int)
    expected[0, 0] = 1  # circle found
    expected[1, 2] = 1  # square predicted as triangle
    expected[3, 1] = 1  # a square where there is nothing (background row)
    expected[2, 3] = 1  # the triangle of image 2 missed (background column)
    np.testing.assert_array_equal(cm, expected)
