"""The image bootstrap of detection metrics: each resample's numbers from :class:`CocoResampler` (matches
computed once) equal a full COCO evaluation (:func:`coco_metrics`) of the explicitly resampled image lists,
and ``evaluate_scenario`` / ``paired_delta`` no longer run a COCO evaluation per resample."""

from __future__ import annotations

import numpy as np
import pytest

from cvplatform.tasks.detection import metrics as M
from cvplatform.tasks.detection import task as T
from cvplatform.tasks.detection.metrics import RESAMPLED_KEYS, CocoResampler, coco_metrics

CLASSES = ["circle", "square", "triangle", "never"]  # "never" has no ground truth


def _hard_fixture(seed: int, n_images: int = 24) -> tuple[list[dict], list[dict]]:
    """Ties in scores (within and across images), images without ground truth or without predictions, a class
    without ground truth, crowd boxes, > 100 detections of one class on an image, boxes of every area range."""
    rng = np.random.default_rng(seed)
    levels = np.round(rng.uniform(0.05, 1.0, size=6), 2)  # few distinct scores: many ties
    truth, preds = [], []
    for i in range(n_images):
        k = 0 if i % 5 == 0 else int(rng.integers(1, 8))
        side = rng.choice([12.0, 40.0, 130.0], size=k) * rng.uniform(0.8, 1.2, size=k)
        x0, y0 = rng.uniform(0, 300, size=k), rng.uniform(0, 300, size=k)
        boxes = np.stack([x0, y0, x0 + side, y0 + side * rng.uniform(0.6, 1.4, size=k)], axis=1) if k else np.zeros((0, 4))
        labels = rng.integers(0, 3, size=k)
        crowd = rng.random(k) < 0.15
        truth.append({"boxes": boxes, "labels": labels, "iscrowd": crowd})
        if i % 7 == 3:
            preds.append({"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)})
            continue
        reps = rng.integers(1, 3, size=k)  # duplicates of an object: one matches, the rest are false
        src = np.repeat(np.arange(k), reps)
        pb = boxes[src] + rng.normal(0, 3.0, size=(len(src), 4))
        pl = np.where(rng.random(len(src)) < 0.85, labels[src], rng.integers(0, 4, size=len(src)))
        n_fp = 120 if i % 6 == 1 else int(rng.integers(0, 4))  # > 100 boxes of one class on some images
        fx, fy = rng.uniform(0, 350, size=n_fp), rng.uniform(0, 350, size=n_fp)
        fs = rng.choice([8.0, 30.0, 110.0], size=n_fp)
        fp = np.stack([fx, fy, fx + fs, fy + fs * 0.8], axis=1) if n_fp else np.zeros((0, 4))
        fl = np.full(n_fp, 1) if n_fp == 120 else rng.integers(0, 4, size=n_fp)
        scores = rng.choice(levels, size=len(src) + n_fp)
        preds.append({"boxes": np.concatenate([pb, fp]), "labels": np.concatenate([pl, fl]).astype(np.int64),
                      "scores": scores})
    return truth, preds


def _same(fast: dict, ref: dict, keys: list[str]) -> None:
    for k in keys:
        assert (fast[k] is None) == (ref[k] is None), (k, fast[k], ref[k])
        if ref[k] is not None:
            assert fast[k] == pytest.approx(ref[k], abs=1e-6), k


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_resample_metrics_equal_coco_on_the_resampled_lists(seed):
    truth, preds = _hard_fixture(seed)
    keys = list(RESAMPLED_KEYS)
    fast = CocoResampler(truth, preds, CLASSES, keys)
    assert fast.metrics(np.arange(len(truth))) == pytest.approx(
        {k: coco_metrics(truth, preds, CLASSES)[k] for k in keys}, abs=1e-6)
    rng = np.random.default_rng(100 + seed)
    for _ in range(6):
        idx = rng.integers(0, len(truth), size=len(truth))
        _same(fast.metrics(idx), coco_metrics([truth[i] for i in idx], [preds[i] for i in idx], CLASSES), keys)


def test_resample_without_ground_truth_is_undefined():
    truth, preds = _hard_fixture(0)
    empty = [i for i, t in enumerate(truth) if not len(t["labels"])]
    fast = CocoResampler(truth, preds, CLASSES, ["map", "mar_100"])
    assert fast.metrics(np.array(empty)) == {"map": None, "mar_100": None}
    only_crowd = [{"boxes": np.array([[0, 0, 50, 50.0]]), "labels": np.array([0]), "iscrowd": np.array([True])}]
    p = [{"boxes": np.array([[0, 0, 50, 50.0]]), "scores": np.array([0.9]), "labels": np.array([0])}]
    assert CocoResampler(only_crowd, p, CLASSES, ["map50"]).metrics(np.array([0, 0])) == {"map50": None}
    assert coco_metrics(only_crowd * 2, p * 2, CLASSES)["map50"] is None


def test_unsupported_key_is_named():
    with pytest.raises(ValueError, match="mar_1"):
        CocoResampler([], [], CLASSES, ["mar_1"])


def _counting(monkeypatch) -> list[int]:
    calls = [0]
    real = M.coco_metrics

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(M, "coco_metrics", counted)
    return calls


def _outputs(preds: list[dict], k: int = 130) -> dict[str, np.ndarray]:
    out = {"boxes": np.zeros((len(preds), k, 4), np.float32), "scores": np.zeros((len(preds), k), np.float32),
           "labels": np.zeros((len(preds), k), np.int64)}
    for i, p in enumerate(preds):
        m = min(len(p["scores"]), k)
        out["boxes"][i, :m], out["scores"][i, :m], out["labels"][i, :m] = p["boxes"][:m], p["scores"][:m], p["labels"][:m]
    return out


def test_evaluate_scenario_intervals_without_a_coco_evaluation_per_resample(monkeypatch):
    truth, preds = _hard_fixture(4)
    task = T.DetectionTask()
    calls = _counting(monkeypatch)
    res = task.evaluate_scenario("clean", "clean", [str(i) for i in range(len(truth))], truth, _outputs(preds),
                                 CLASSES, n_bootstrap=50, seed=3)
    assert calls[0] == 1  # the point estimate only, not one per resample
    keys = [m.name for m in task.metrics]
    assert set(res.intervals) == set(keys)
    for k in keys:
        if res.values[k] is None:
            assert res.intervals[k] is None
        else:
            lo, hi = res.intervals[k]
            assert isinstance(lo, float) and isinstance(hi, float) and lo <= hi
    # the same resamples as before: the seeded draws, each scored as a full COCO evaluation would score it
    (samples,) = T._bootstrap(res.truth, [res.preds], CLASSES, keys, 50, 3)
    rng = np.random.default_rng(3)
    for b in range(3):
        idx = rng.integers(0, len(truth), size=len(truth))
        ref = coco_metrics([res.truth[i] for i in idx], [res.preds[i] for i in idx], CLASSES)
        assert samples["map"][b] == pytest.approx(ref["map"], abs=1e-6)
        assert samples["map50"][b] == pytest.approx(ref["map50"], abs=1e-6)


def test_paired_delta_without_a_coco_evaluation_per_resample(monkeypatch):
    truth, preds = _hard_fixture(5)
    task = T.DetectionTask()
    ids = [str(i) for i in range(len(truth))]
    a = task.evaluate_scenario("clean", "clean", ids, truth, _outputs(preds), CLASSES, n_bootstrap=20)
    worse = [{**p, "scores": p["scores"][::-1].copy()} for p in preds]
    b = task.evaluate_scenario("clean", "clean", ids, truth, _outputs(worse), CLASSES, n_bootstrap=20)
    calls = _counting(monkeypatch)
    delta, lo, hi = task.paired_delta(a, b, n_bootstrap=40, seed=1)
    assert calls[0] == 0
    assert delta == pytest.approx(a.values["map50"] - b.values["map50"])
    assert lo <= hi


def test_tied_scores_follow_the_resample_order_as_coco_does():
    """A true and a false box of equal score on different images: COCO ranks them in image order, so the two
    orders of the same resample give different APs, and the resampler follows each."""
    box = np.array([[10.0, 10.0, 60.0, 60.0]])
    truth = [{"boxes": box, "labels": np.array([0]), "iscrowd": np.array([False])},
             {"boxes": box, "labels": np.array([0]), "iscrowd": np.array([False])}]
    preds = [{"boxes": box, "scores": np.array([0.5]), "labels": np.array([0])},  # a hit
             {"boxes": box + 200, "scores": np.array([0.5]), "labels": np.array([0])}]  # a miss, same score
    fast = CocoResampler(truth, preds, CLASSES, ["map50"])
    values = []
    for idx in ([0, 1], [1, 0], [0, 1, 1], [1, 0, 0, 1]):
        ref = coco_metrics([truth[i] for i in idx], [preds[i] for i in idx], CLASSES)["map50"]
        assert fast.metrics(np.array(idx))["map50"] == pytest.approx(ref, abs=1e-12)
        values.append(ref)
    assert values[0] != values[1]
