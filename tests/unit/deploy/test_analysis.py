"""Canary analysis: pure functions from statistics to a decision with the right reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvplatform.config import apply_overrides, load_model, read_yaml
from cvplatform.deploy.analysis import (
    AnalysisThresholds,
    CanaryPolicy,
    agreement_groups,
    analyze_step,
    check_accuracy,
    check_agreement,
    check_agreement_uncertain,
    check_confidence_shift,
    check_error_rate,
    check_latency,
    early_abort,
    ks_statistic,
    load_canary_policy,
    psi,
)
from cvplatform.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
TH = AnalysisThresholds(min_shadow_pairs=10, min_latency_samples=5, min_labelled=10,
                        confidence_shift={"method": "psi", "max": 0.25, "min_samples": 10})


def variant(requests=100, failures=0, shadow=100, compute=0.2, hist=(0, 0, 0, 0, 0, 0, 0, 5, 25, 70),
            labelled=100, correct=95, samples=None, shadow_compute=None):
    shadow_compute = compute if shadow_compute is None else shadow_compute
    return {
        "requests": requests, "attempts": requests + shadow, "failures": failures, "shadow_scored": shadow,
        "latency_ms": {"count": requests + shadow, "p50": 3.0, "p95": 9.0},
        "compute_ms_per_image": {
            "answered/x1/alone": {"count": requests, "p50": compute, "p95": compute * 2},
            "shadowed/x1/alone": {"count": shadow, "p50": shadow_compute, "p95": shadow_compute * 2}},
        "confidence_hist": {"edges": [i / 10 for i in range(11)], "counts": list(hist)},
        "confidence_samples": samples if samples is not None else [0.95] * 50,
        "labelled": labelled, "correct": correct,
    }


def by_confidence(sure=(160, 159), unsure=(40, 30)):
    """Agreement by champion confidence in 10 bins: ``unsure`` pairs in bin 0.5, ``sure`` ones in bin 0.9."""
    pairs, agree = [0] * 10, [0] * 10
    pairs[5], agree[5] = unsure
    pairs[9], agree[9] = sure
    return {"edges": [i / 10 for i in range(11)], "pairs": pairs, "agree": agree}


def snapshot(canary=None, champion=None, sure=(160, 159), unsure=(40, 30)):
    return {"variants": {"canary": canary or variant(), "champion": champion or variant()},
            "shadow": {"pairs": sure[0] + unsure[0], "agree": sure[1] + unsure[1],
                       "by_champion_confidence": by_confidence(sure, unsure)}}


def test_psi_and_ks():
    assert psi([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0)
    assert psi([50, 50], [90, 10]) > psi([50, 50], [60, 40]) > 0
    assert psi([0, 0], [1, 1]) == 0.0
    with pytest.raises(ValueError):
        psi([1], [1, 2])
    assert ks_statistic([0.1, 0.5, 0.9], [0.1, 0.5, 0.9]) == 0.0
    assert ks_statistic([0.1, 0.2, 0.3, 0.4], [0.3, 0.4, 0.5, 0.6]) == pytest.approx(0.5)
    assert ks_statistic([], [0.1]) == 0.0


def test_a_good_canary_passes_every_check():
    a = analyze_step(snapshot(), TH, min_requests=50)
    assert a.passed and a.failed == [] and a.reasons == []
    assert {c.name: c.status for c in a.checks} == {
        "min_requests": "pass", "error_rate": "pass", "latency_ratio": "pass", "agreement": "pass",
        "agreement_uncertain": "pass", "confidence_shift": "pass", "accuracy": "pass"}


def test_an_erroring_canary_fails_on_error_rate_only():
    a = analyze_step(snapshot(canary=variant(failures=30, shadow=0)), TH, min_requests=50)
    assert a.failed == ["error_rate"] and "30/100" in a.reasons[0]


def test_error_rate_is_also_judged_against_the_champion():
    th = AnalysisThresholds(max_error_rate=0.05, max_error_rate_increase=0.005)
    champion = variant(failures=2)  # 1 %
    assert check_error_rate(variant(failures=4), champion, th).status == "fail"  # 2 %: +1 % over the champion
    assert check_error_rate(variant(failures=2), champion, th).status == "pass"
    assert check_error_rate(variant(requests=0, shadow=0), champion, th).status == "skip"


def test_a_3x_slower_canary_fails_on_latency_an_equal_one_passes_and_the_floor_absorbs_noise():
    # the default model's scale: ~0.2 ms of onnxruntime compute per image
    a = analyze_step(snapshot(canary=variant(compute=0.6), champion=variant(compute=0.2)), TH, min_requests=50)
    assert a.failed == ["latency_ratio"] and a.check("latency_ratio").value == pytest.approx(3.0)
    assert "compute per image" in a.reasons[0]
    equal = check_latency(variant(compute=0.21), variant(compute=0.2), TH)
    assert equal.status == "pass" and equal.value == pytest.approx(1.05)
    # below the 0.05 ms floor a 4x ratio is timer noise, not a slower model
    assert check_latency(variant(compute=0.04), variant(compute=0.01), TH).status == "pass"
    assert check_latency(variant(compute=0.6), variant(compute=0.2, requests=1, shadow=1), TH).status == "skip"
    # the percentile is configurable (the median by default)
    p95 = AnalysisThresholds(latency_percentile="p95", min_latency_samples=5)
    assert "p95" in check_latency(variant(), variant(), p95).detail
    # the old end-to-end "model latency" (queue wait included) no longer decides: it is noise both variants share
    noisy = variant()
    noisy["latency_ms"] = {"count": 200, "p50": 30.0, "p95": 90.0}
    assert check_latency(noisy, variant(), TH).status == "pass"


def test_latency_compares_answered_with_answered_and_shadowed_with_shadowed_never_mixed():
    # the answering call is timed slower on an idle machine: that must not look like a slower canary
    canary = variant(compute=0.3, shadow_compute=0.2)
    champion = variant(compute=0.3, shadow_compute=0.2)
    c = check_latency(canary, champion, TH)
    assert c.status == "pass" and c.value == pytest.approx(1.0) and "answered" in c.detail
    # at 100 %: the canary only answers, the champion only shadows -> no like-for-like samples: skipped
    full = check_latency(variant(requests=200, shadow=0, compute=0.3), variant(requests=0, shadow=200), TH)
    assert full.status == "skip" and "100 %" in full.detail
    # not enough answered samples on one side: the shadowed ones are compared
    few = check_latency(variant(requests=2, shadow=100, shadow_compute=0.6), variant(requests=100, shadow=100), TH)
    assert few.status == "fail" and "shadowed" in few.detail and few.value == pytest.approx(3.0)


def test_latency_compares_the_same_batch_size_and_contention():
    # identical models: batches of 2 cost less per image, and calls sharing the cores take longer
    canary = {"compute_ms_per_image": {"answered/x1/alone": {"count": 30, "p50": 0.16},
                                       "answered/x1/overlapped": {"count": 12, "p50": 0.30}}}
    champion = {"compute_ms_per_image": {"answered/x1/alone": {"count": 40, "p50": 0.16},
                                         "answered/x2/alone": {"count": 900, "p50": 0.11},
                                         "answered/x1/overlapped": {"count": 800, "p50": 0.15}}}
    c = check_latency(canary, champion, TH)
    assert c.status == "pass" and c.value == pytest.approx(1.0) and "answered/x1/alone" in c.detail
    # nothing shared: skipped, and the detail lists what was seen
    lonely = {"compute_ms_per_image": {"answered/x4/alone": {"count": 30, "p50": 0.1}}}
    c = check_latency(lonely, champion, TH)
    assert c.status == "skip" and "answered/x4/alone: canary 30 / champion 0" in c.detail


def test_a_server_without_compute_times_is_not_judged_on_latency_and_says_so():
    old = variant()
    del old["compute_ms_per_image"]  # an older server
    c = check_latency(old, {k: v for k, v in variant().items() if k != "compute_ms_per_image"}, TH)
    assert c.status == "skip" and "compute_ms_per_image" in c.detail


def test_agreement_is_judged_where_the_champion_is_confident_and_separately_elsewhere():
    # a healthy retrain: sure answers kept, hard inputs differ often (as two seeds of the demo model do)
    a = analyze_step(snapshot(sure=(270, 269), unsure=(70, 52)), TH, min_requests=50)
    assert a.passed, a.reasons
    assert a.check("agreement").value == pytest.approx(269 / 270)
    assert a.check("agreement_uncertain").value == pytest.approx(52 / 70)
    # overall this is 95.3 %: under the old single measure a few more hard images would have failed it
    # a canary that flips the champion's sure answers fails, whatever it does elsewhere
    a = analyze_step(snapshot(sure=(270, 240), unsure=(70, 60)), TH, min_requests=50)
    assert a.failed == ["agreement"] and "where the champion is confident" in a.reasons[0]
    # a canary that collapses on hard inputs fails the second check
    a = analyze_step(snapshot(sure=(270, 270), unsure=(70, 10)), TH, min_requests=50)
    assert a.failed == ["agreement_uncertain"]
    assert agreement_groups({"by_champion_confidence": by_confidence((10, 9), (5, 1))}, 0.8) == ((10, 9), (5, 1))
    # the confident threshold rounds up to a bin edge: at 0.85 only the 0.9 bin is "sure"
    assert agreement_groups({"by_champion_confidence": by_confidence((10, 9), (5, 1))}, 0.85) == ((10, 9), (5, 1))
    assert agreement_groups({"pairs": 3}, 0.8) is None


def test_a_server_without_agreement_by_confidence_is_judged_on_all_pairs():
    shadow = {"pairs": 200, "agree": 188}  # 94 %
    c = check_agreement(shadow, TH)
    assert c.status == "fail" and "all" in c.detail and c.threshold == 0.95
    assert check_agreement_uncertain(shadow, TH).status == "skip"


def test_a_disagreeing_canary_fails_on_agreement_and_accuracy():
    a = analyze_step(snapshot(canary=variant(correct=5), sure=(160, 3), unsure=(40, 1)), TH, min_requests=50)
    assert a.failed == ["agreement", "agreement_uncertain", "accuracy"]
    assert "3/160" in a.reasons[0]


def test_checks_without_enough_data_are_skipped_unless_required():
    assert check_agreement({"pairs": 3, "agree": 3}, TH).status == "skip"
    strict = AnalysisThresholds(min_shadow_pairs=10, require_agreement=True)
    assert check_agreement({"pairs": 3, "agree": 3}, strict).status == "fail"
    few_unsure = {"by_champion_confidence": by_confidence((100, 100), (4, 0))}
    assert check_agreement(few_unsure, TH).status == "pass"
    assert check_agreement_uncertain(few_unsure, TH).status == "skip"
    assert check_agreement_uncertain(few_unsure, strict).status == "fail"
    assert check_accuracy(variant(labelled=3), variant(), TH).status == "skip"
    assert check_confidence_shift(variant(hist=[0] * 9 + [3]), variant(), TH).status == "skip"


def test_confidence_shift_psi_and_ks():
    shifted = variant(hist=(0, 0, 0, 10, 40, 40, 10, 0, 0, 0), samples=[0.5] * 50)
    c = check_confidence_shift(shifted, variant(), TH)
    assert c.status == "fail" and "PSI" in c.detail
    ks = AnalysisThresholds(confidence_shift={"method": "ks", "max": 0.3, "min_samples": 10})
    c = check_confidence_shift(shifted, variant(), ks)
    assert c.status == "fail" and c.value == 1.0 and "KS" in c.detail
    assert check_confidence_shift(variant(), variant(), ks).status == "pass"


def test_too_few_canary_requests_fail_the_step():
    a = analyze_step(snapshot(canary=variant(requests=10)), TH, min_requests=50)
    assert "min_requests" in a.failed


def test_early_abort_only_for_clear_failures():
    assert early_abort(snapshot(canary=variant(failures=3)), TH, min_failures=5) is None
    a = early_abort(snapshot(canary=variant(failures=8, requests=8, shadow=0)), TH, min_failures=5)
    assert a is not None and a.failed == ["error_rate"]
    assert a.to_dict()["passed"] is False


def test_the_real_policy_loads_and_is_validated(tmp_path):
    policy = load_canary_policy(REPO / "configs" / "deploy" / "canary.yaml")
    assert [s.traffic for s in policy.steps] == [0.1, 0.5, 1.0]
    assert policy == load_model(CanaryPolicy, read_yaml(REPO / "configs" / "deploy" / "canary.yaml"), "x")
    data = read_yaml(REPO / "configs" / "deploy" / "canary.yaml")
    with pytest.raises(ConfigError, match="increasing"):
        load_model(CanaryPolicy, apply_overrides(data, ["steps=[{traffic: 0.5}, {traffic: 0.2}]"], "p"), "p")
    with pytest.raises(ConfigError, match="thresholds.max_latncy"):
        load_model(CanaryPolicy, apply_overrides(data, ["thresholds.max_latncy=2"], "p"), "p")
    with pytest.raises(ConfigError, match=r"steps\.0\.traffic"):
        load_model(CanaryPolicy, apply_overrides(data, ["steps=[{traffic: 0}]"], "p"), "p")
    shrunk = load_canary_policy(REPO / "configs" / "deploy" / "canary.yaml",
                                ["steps=[{traffic: 1.0, min_requests: 5, bake_s: 0}]", "thresholds.min_labelled=5"])
    assert len(shrunk.steps) == 1 and shrunk.thresholds.min_labelled == 5
    assert shrunk.thresholds.max_error_rate == policy.thresholds.max_error_rate  # the rest comes from the file
    with pytest.raises(ConfigError, match="with --set"):
        load_canary_policy(REPO / "configs" / "deploy" / "canary.yaml", ["thresholds.nope=1"])


def test_the_demo_policy_differs_from_production_only_in_bake_times_and_request_minimums():
    prod = load_canary_policy(REPO / "configs" / "deploy" / "canary.yaml")
    demo = load_canary_policy(REPO / "configs" / "deploy" / "canary-demo.yaml")
    assert demo.thresholds == prod.thresholds  # the production analysis, exactly
    assert demo.model_dump(exclude={"steps"}) == prod.model_dump(exclude={"steps"})
    assert [s.traffic for s in demo.steps] == [s.traffic for s in prod.steps]
    header = (REPO / "configs" / "deploy" / "canary-demo.yaml").read_text().split("\n\n")[0]
    for d, p in zip(demo.steps, prod.steps, strict=True):
        assert d.min_requests <= p.min_requests and d.bake_s <= p.bake_s
    assert "min_requests" in header and "bake_s" in header and "no others" in header
    assert " / ".join(str(s.min_requests) for s in prod.steps) in header
    assert " / ".join(f"{s.bake_s:g}" for s in prod.steps) in header


def _detector_stats(canary_per_image: dict, canary_classes: dict, canary_scores: list[int], agree: float) -> dict:
    def variant(per_image, classes, scores, **kw):
        n = sum(per_image.values())
        return {"requests": 200, "attempts": 200, "failures": 0, **kw,
                "objects": {"images": n, "per_image": per_image,
                            "mean_per_image": sum(int(k) * v for k, v in per_image.items()) / n,
                            "classes": classes, "score_hist": {"counts": scores}}}

    champion = variant({"2": 150, "3": 50}, {"cat": 250, "dog": 200}, [0, 0, 0, 100, 100, 100, 50, 50, 30, 20])
    return {"task": "detection", "variants": {"champion": champion,
                                              "canary": variant(canary_per_image, canary_classes, canary_scores)},
            "shadow": {"pairs": 200, "agree": agree, "measure": "matched-box F1 (same class, IoU >= 0.5)",
                       "by_champion_confidence": {"edges": [0, 0.5, 1.0], "pairs": [100, 100],
                                                  "agree": [agree / 2, agree / 2]}}}


def test_a_detector_that_misses_objects_fails_on_detection_signals():
    policy = load_canary_policy(REPO / "configs" / "deploy" / "canary.yaml",
                                ["thresholds.min_shadow_pairs=10", "thresholds.count_shift.min_samples=10",
                                 "thresholds.object_score_shift.min_samples=10",
                                 "thresholds.class_mix_shift.min_samples=10"])
    good = _detector_stats({"2": 140, "3": 60}, {"cat": 260, "dog": 200}, [0, 0, 0, 95, 105, 100, 50, 50, 30, 20],
                           agree=0.93 * 200)
    res = analyze_step(good, policy.thresholds)
    assert res.passed, res.reasons
    ag = res.check("agreement")
    assert ag.threshold == 0.8 and ag.value == pytest.approx(0.93)  # the detection floor of by_task
    assert "matched-box F1" in ag.detail
    assert {c.name for c in res.checks} >= {"count_shift", "object_score_shift", "class_mix_shift"}
    # it answers about one box where the champion answers two or three, mostly of one class, with lower scores
    missing = _detector_stats({"0": 80, "1": 100, "2": 20}, {"cat": 130, "dog": 10},
                              [0, 0, 0, 120, 20, 0, 0, 0, 0, 0], agree=0.4 * 200)
    res = analyze_step(missing, policy.thresholds)
    assert set(res.failed) >= {"agreement", "agreement_uncertain", "count_shift", "object_score_shift",
                               "class_mix_shift"}, res.reasons
    assert "objects per image canary 0.70" in res.check("count_shift").detail
    # the same numbers from a classification server are judged by the top-1 floor and list no object checks
    top1 = {**good, "task": "classification", "shadow": {**good["shadow"], "measure": "same top-1 class"}}
    for v in top1["variants"].values():
        del v["objects"]
    res = analyze_step(top1, policy.thresholds)
    assert res.check("agreement").threshold == 0.95 and res.check("count_shift") is None


def test_by_task_overrides_are_validated_when_the_policy_loads():
    th = AnalysisThresholds(by_task={"detection": {"count_shift": {"max": 0.1}}})
    assert th.for_task("detection").count_shift.max == 0.1 and th.for_task(None).count_shift.max == 0.25
    for bad in (["thresholds.by_task.detection.min_agreement=2"], ["thresholds.by_task.detection.nope=1"],
                ["thresholds.by_task.detection.by_task={}"]):
        with pytest.raises(ConfigError, match="by_task"):
            load_canary_policy(REPO / "configs" / "deploy" / "canary.yaml", bad)
