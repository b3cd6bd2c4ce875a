"""Metrics against hand-computed values; bootstrap intervals; calibration bins; mCE."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cvplatform.errors import DataError, ModelError
from cvplatform.tasks.classification.metrics import (
    ScenarioResult,
    bootstrap_ci,
    compute_metrics,
    corruption_error_summary,
    macro_f1_from_confusion,
    paired_bootstrap_delta,
    reliability_bins,
    softmax,
    wilson_interval,
)

NAMES = ["a", "b", "c"]


def _onehot_probs(pred, c=3, conf=0.8):
    p = np.full((len(pred), c), (1 - conf) / (c - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def test_hand_computed_accuracy_f1_precision_recall_confusion_fpr():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    m = compute_metrics(y, _onehot_probs(pred), NAMES, critical_classes=["a", "b"], n_bootstrap=50)
    assert m.n == 6
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m.precision == pytest.approx({"a": 0.5, "b": 2 / 3, "c": 1.0})
    assert m.recall == pytest.approx({"a": 0.5, "b": 1.0, "c": 0.5})
    f1 = [0.5, 0.8, 2 / 3]
    assert m.macro_f1 == pytest.approx(sum(f1) / 3, abs=1e-6)
    # FPR(a): images of other classes predicted 'a' = 1 of 4; FPR(b): 1 of 4
    assert m.critical_fpr == pytest.approx({"a": 0.25, "b": 0.25})
    assert m.support == {"a": 2, "b": 2, "c": 2}


def test_undefined_per_class_values_are_none_not_zero():
    y = np.array([0, 0, 1])
    pred = np.array([0, 0, 0])  # 'b' never predicted, 'c' never present
    m = compute_metrics(y, _onehot_probs(pred), NAMES, critical_classes=["c"], n_bootstrap=20)
    assert m.precision["b"] is None and m.precision["c"] is None
    assert m.recall["c"] is None
    assert m.recall["b"] == 0.0
    # 'c' has 3 negatives and was never predicted
    assert m.critical_fpr["c"] == 0.0
    all_c = compute_metrics(np.array([2, 2]), _onehot_probs(np.array([2, 2])), NAMES, critical_classes=["c"],
                            n_bootstrap=20)
    assert all_c.critical_fpr["c"] is None  # no image of another class: undefined


def test_hand_computed_ece_and_reliability_bins():
    probs = np.array([[0.85, 0.15], [0.85, 0.15], [0.35, 0.65], [0.65, 0.35]])
    y = np.array([0, 1, 1, 0])  # conf .85 right, .85 wrong, .65 right, .65 right
    m = compute_metrics(y, probs, ["x", "y"], n_bootstrap=20, n_bins=10)
    assert m.ece == pytest.approx(0.5 * abs(0.5 - 0.85) + 0.5 * abs(1.0 - 0.65), abs=1e-6)
    assert [(b["lower"], b["count"], b["accuracy"]) for b in m.reliability] == [(0.6, 2, 1.0), (0.8, 2, 0.5)]
    assert sum(b["share"] for b in m.reliability) == pytest.approx(1.0)


def test_reliability_bins_reproduce_torchmetrics_ece_including_confidence_one():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (200, 4))
    logits[:20, 0] = 200.0  # softmax saturates at exactly 1.0 in float32
    y = rng.integers(0, 4, 200)
    p = softmax(logits)
    m = compute_metrics(y, p, list("wxyz"), n_bootstrap=20)
    assert any(b["lower"] == 1.0 and b["upper"] == 1.0 for b in m.reliability)
    recomputed = sum(b["share"] * abs(b["accuracy"] - b["confidence"]) for b in m.reliability)
    assert recomputed == pytest.approx(m.ece, abs=1e-5)


def test_numpy_macro_f1_matches_torchmetrics_with_absent_classes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)  # class 4 never present ...
    pred = np.where(rng.random(300) < 0.7, y, rng.integers(0, 4, 300))  # ... nor predicted
    m = compute_metrics(y, _onehot_probs(pred, c=5), list("abcde"), n_bootstrap=20)
    cm = np.asarray(m.confusion)
    assert float(macro_f1_from_confusion(cm)) == pytest.approx(m.macro_f1, abs=1e-6)


def test_bootstrap_ci_contains_estimate_is_seeded_and_narrows_with_data():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 400)
    pred = np.where(rng.random(400) < 0.8, y, (y + 1) % 3)
    ci = bootstrap_ci(y, pred, 3, n_bootstrap=500, seed=5)
    acc = float((y == pred).mean())
    m = compute_metrics(y, _onehot_probs(pred), NAMES, n_bootstrap=500, seed=5)
    assert ci["accuracy"][0] < acc < ci["accuracy"][1]
    assert ci["macro_f1"][0] < m.macro_f1 < ci["macro_f1"][1]
    assert m.macro_f1_ci == ci["macro_f1"]  # macro-F1 keeps the bootstrap
    assert m.accuracy_ci == wilson_interval(int((y == pred).sum()), 400)  # accuracy: Wilson score interval
    assert m.accuracy_ci[0] < acc < m.accuracy_ci[1]
    assert bootstrap_ci(y, pred, 3, n_bootstrap=500, seed=5) == ci
    assert bootstrap_ci(y, pred, 3, n_bootstrap=500, seed=6) != ci
    small = bootstrap_ci(y[:40], pred[:40], 3, n_bootstrap=500, seed=5)
    assert (small["accuracy"][1] - small["accuracy"][0]) > (ci["accuracy"][1] - ci["accuracy"][0])
    # a wider confidence level gives a wider interval
    wide = bootstrap_ci(y, pred, 3, n_bootstrap=500, seed=5, confidence=0.99)
    assert wide["accuracy"][0] <= ci["accuracy"][0] and wide["accuracy"][1] >= ci["accuracy"][1]


def test_bootstrap_chunks_do_not_change_the_result(monkeypatch):
    import cvplatform.tasks.classification.metrics as metrics

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 100)
    pred = np.where(rng.random(100) < 0.7, y, 0)
    whole = bootstrap_ci(y, pred, 3, n_bootstrap=300, seed=1)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 1000)  # 10 resamples per chunk
    assert bootstrap_ci(y, pred, 3, n_bootstrap=300, seed=1) == whole


def test_paired_bootstrap():
    a = np.array([1, 1, 0, 1, 0, 1, 1, 0], dtype=bool)
    assert paired_bootstrap_delta(a, a, n_bootstrap=100) == (0.0, 0.0, 0.0)
    worse = np.zeros(8, dtype=bool)
    better = np.ones(8, dtype=bool)
    assert paired_bootstrap_delta(worse, better, n_bootstrap=100) == (-1.0, -1.0, -1.0)
    d, lo, hi = paired_bootstrap_delta(a, better, n_bootstrap=400, seed=3)
    assert d == pytest.approx(-3 / 8) and lo <= d <= hi
    assert paired_bootstrap_delta(a, better, n_bootstrap=400, seed=3) == (d, lo, hi)
    with pytest.raises(DataError, match="same images"):
        paired_bootstrap_delta(a, a[:5])
    with pytest.raises(DataError, match="no images"):
        paired_bootstrap_delta(a[:0], a[:0])


def test_corruption_error_summary_definition():
    errors = {("fog", 1): 0.20, ("fog", 2): 0.40, ("jpeg", 1): 0.10, ("jpeg", 3): 0.30}
    s = corruption_error_summary(0.10, errors, n_clean=100)
    # without a reference model there is no mCE: only the multiple of the model's own clean error
    assert s["mce"] is None and s["mce_reference"] is None
    # fog: mean error 0.30 -> 3.0x clean; jpeg: mean error 0.20 -> 2.0x; mean 2.5
    assert s["per_corruption"]["fog"]["error_multiple"] == pytest.approx(3.0)
    assert s["per_corruption"]["jpeg"]["error_multiple"] == pytest.approx(2.0)
    assert s["error_multiple_vs_clean"] == pytest.approx(2.5)
    assert s["mean_degradation"] == pytest.approx(((0.30 - 0.10) + (0.20 - 0.10)) / 2)
    assert s["mean_corruption_error"] == pytest.approx(0.25)
    # ImageNet-C's mCE with the champion as the reference model: CE_c = sum_s E_cs / sum_s E^ref_cs
    ref = {("fog", 1): 0.10, ("fog", 2): 0.20, ("jpeg", 1): 0.20, ("jpeg", 3): 0.20}
    m = corruption_error_summary(0.10, errors, 100, ref, "models:/m@champion")
    assert m["per_corruption"]["fog"]["ce"] == pytest.approx(0.60 / 0.30)
    assert m["per_corruption"]["jpeg"]["ce"] == pytest.approx(0.40 / 0.40)
    assert m["mce"] == pytest.approx(1.5) and m["mce_reference"] == "models:/m@champion"
    perfect = corruption_error_summary(0.0, {("fog", 1): 0.05}, n_clean=20, reference_errors={("fog", 1): 0.0})
    assert perfect["clean_error_floor"] == pytest.approx(1 / 20)
    assert perfect["error_multiple_vs_clean"] == pytest.approx(1.0)
    assert perfect["mce"] == pytest.approx(1.0)  # a perfect reference is floored at one mistake
    assert corruption_error_summary(0.1, {}, 10)["mce"] is None


def test_wilson_intervals_stay_honest_at_0_and_100_percent():
    # the example: a 100 %-accurate model on 33 images is not "[1.000, 1.000]"
    lo, hi = wilson_interval(33, 33)
    assert hi == 1.0 and 0.88 < lo < 0.91
    lo, hi = wilson_interval(0, 33)
    assert lo == 0.0 and 0.09 < hi < 0.12
    y = np.arange(33) % 3
    m = compute_metrics(y, _onehot_probs(y), NAMES, n_bootstrap=50)
    assert m.accuracy == 1.0 and m.accuracy_ci[0] < 0.91 and m.accuracy_ci[1] == 1.0
    assert all(ci is not None and ci[0] < 0.8 for ci in m.recall_ci.values())  # 11 images per class
    # more images, narrower interval; higher confidence, wider interval
    assert wilson_interval(330, 330)[0] > lo
    assert wilson_interval(30, 33, 0.99)[0] < wilson_interval(30, 33, 0.95)[0]
    with pytest.raises(DataError):
        wilson_interval(1, 0)


def test_scenario_result_and_errors():
    r = ScenarioResult.from_predictions("s", "clean", ["i1", "i2", "i3"], np.array([0, 1, 2]),
                                        _onehot_probs(np.array([0, 1, 1])), NAMES, n_bootstrap=20)
    assert r.correct.tolist() == [True, True, False]
    assert r.y_pred.tolist() == [0, 1, 1]
    assert r.confidence.tolist() == pytest.approx([0.8, 0.8, 0.8])
    empty = ScenarioResult.from_predictions("e", "slice", [], np.array([], dtype=int), np.zeros((0, 3)), NAMES)
    assert empty.metrics is None and empty.n == 0
    with pytest.raises(DataError, match="critical classes"):
        compute_metrics(np.array([0]), _onehot_probs(np.array([0])), NAMES, critical_classes=["zebra"])
    with pytest.raises(DataError, match="do not match 3 classes"):
        compute_metrics(np.array([0]), np.ones((1, 2)) / 2, NAMES)
    with pytest.raises(DataError, match="no images"):
        compute_metrics(np.array([], dtype=int), np.zeros((0, 3)), NAMES)


def test_metrics_are_json_friendly():
    from dataclasses import asdict

    m = compute_metrics(np.array([0, 1]), _onehot_probs(np.array([0, 0])), NAMES, n_bootstrap=20)
    json.dumps(asdict(m))


def test_softmax_rows_sum_to_one_and_are_stable():
    p = softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p[0, 0] == pytest.approx(1.0)
    assert list(reliability_bins(np.array([0.5]), np.array([1]), 2)[0].values())[:2] == [0.5, 1.0]


def test_the_task_builds_the_scenario_result_from_logits_and_its_int8_score_is_the_accuracy():
    from cvplatform.tasks.classification import ClassificationTask

    task = ClassificationTask()
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(40, 3)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    ids = [f"{i:064x}" for i in range(40)]
    got = task.evaluate_scenario("clean", "clean", ids, y, {"logits": logits}, ["a", "b", "c"], n_bootstrap=50, seed=1)
    want = ScenarioResult.from_predictions("clean", "clean", ids, y, softmax(logits), ["a", "b", "c"],
                                           n_bootstrap=50, seed=1)
    assert np.array_equal(got.probs, want.probs) and got.metrics == want.metrics
    # the exact share of correct images (torchmetrics' accuracy in metrics.json is float32-rounded)
    assert task.int8_score({"logits": logits}, y, ["a", "b", "c"]) == float(got.correct.mean()) == 16 / 40
    assert got.metrics.accuracy == pytest.approx(16 / 40)
    empty = task.evaluate_scenario("slice", "slice", [], np.zeros(0, np.int64), {"logits": np.zeros((0, 3))},
                                   ["a", "b", "c"])
    assert empty.metrics is None and empty.n == 0
    with pytest.raises(ModelError, match="do not fit"):
        task.evaluate_scenario("clean", "clean", ids, y, {"logits": logits[:, :2]}, ["a", "b", "c"])


def test_calibration_error_is_torchmetrics_number_exactly():
    # compute_metrics bins numpy's top-1 confidence with torchmetrics' own _ce_compute: the same float
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    from cvplatform.tasks.classification.metrics import _calibration_error

    for seed in range(20):
        rng = np.random.default_rng(seed)
        n, c = int(rng.integers(1, 300)), int(rng.integers(2, 12))
        logits = rng.normal(0, rng.uniform(0.1, 8), (n, c))
        logits[: n // 4, 0] = 200.0  # confidence exactly 1.0
        y = rng.integers(0, c, n)
        p = softmax(logits)
        want = float(multiclass_calibration_error(torch.from_numpy(p.astype(np.float32)), torch.from_numpy(y),
                                                  num_classes=c, n_bins=15, norm="l1", validate_args=False))
        assert _calibration_error(p, y, 15) == want
        assert compute_metrics(y, p, [str(k) for k in range(c)], n_bootstrap=20).ece == want


def test_reliability_bins_equal_a_mask_per_bin():
    # the grouped (one sort) bins hold the same numbers as masking each bin, to the last bit
    rng = np.random.default_rng(4)
    conf = np.concatenate([rng.random(500), [1.0, 1.0, 0.0]]).astype(np.float32)
    corr = rng.random(conf.shape[0]) < conf
    bounds = np.linspace(0, 1, 16, dtype=np.float32)
    idx = np.searchsorted(bounds, conf, side="right") - 1
    want = []
    for b in range(16):
        mask = idx == b
        if mask.any():
            want.append((int(mask.sum()), float(conf[mask].astype(np.float64).mean()),
                         float(corr[mask].astype(np.float64).mean())))
    got = [(r["count"], r["confidence"], r["accuracy"]) for r in reliability_bins(conf, corr, 15)]
    assert got == want


def test_scenario_macro_f1_interval_is_the_bootstrap_ci_of_the_same_seed():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, 150)
    pred = np.where(rng.random(150) < 0.8, y, rng.integers(0, 4, 150))
    m = compute_metrics(y, _onehot_probs(pred, c=4), list("abcd"), n_bootstrap=1000, seed=11)
    assert m.macro_f1_ci == bootstrap_ci(y, pred, 4, n_bootstrap=1000, seed=11)["macro_f1"]
