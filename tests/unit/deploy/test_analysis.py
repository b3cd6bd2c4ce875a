"""Canary analysis: pure functions from statistics to a decision with the right reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvplatform.config import apply_overrides, load_model, read_yaml
from cvplatform.deploy.analysis import (
    AnalysisThresholds,
    CanaryPolicy,
    analyze_step,
    check_accuracy,
    check_agreement,
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


def variant(requests=100, failures=0, shadow=100, p95=5.0, hist=(0, 0, 0, 0, 0, 0, 0, 5, 25, 70),
            labelled=100, correct=95, samples=None):
    return {
        "requests": requests, "attempts": requests + shadow, "failures": failures, "shadow_scored": shadow,
        "latency_ms": {"count": requests + shadow, "p95": p95},
        "confidence_hist": {"edges": [i / 10 for i in range(11)], "counts": list(hist)},
        "confidence_samples": samples if samples is not None else [0.95] * 50,
        "labelled": labelled, "correct": correct,
    }


def snapshot(canary=None, champion=None, pairs=200, agree=198):
    return {"variants": {"canary": canary or variant(), "champion": champion or variant()},
            "shadow": {"pairs": pairs, "agree": agree}}


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
        "min_requests": "pass", "error_rate": "pass", "latency_p95_ratio": "pass", "agreement": "pass",
        "confidence_shift": "pass", "accuracy": "pass"}


def test_an_erroring_canary_fails_on_error_rate_only():
    a = analyze_step(snapshot(canary=variant(failures=30, shadow=0)), TH, min_requests=50)
    assert a.failed == ["error_rate"] and "30/100" in a.reasons[0]


def test_error_rate_is_also_judged_against_the_champion():
    th = AnalysisThresholds(max_error_rate=0.05, max_error_rate_increase=0.005)
    champion = variant(failures=2)  # 1 %
    assert check_error_rate(variant(failures=4), champion, th).status == "fail"  # 2 %: +1 % over the champion
    assert check_error_rate(variant(failures=2), champion, th).status == "pass"
    assert check_error_rate(variant(requests=0, shadow=0), champion, th).status == "skip"


def test_a_slow_canary_fails_on_latency_and_the_floor_absorbs_noise():
    a = analyze_step(snapshot(canary=variant(p95=40.0), champion=variant(p95=10.0)), TH, min_requests=50)
    assert a.failed == ["latency_p95_ratio"] and a.check("latency_p95_ratio").value == pytest.approx(4.0)
    th = AnalysisThresholds(latency_floor_ms=5.0, min_latency_samples=5)
    assert check_latency(variant(p95=4.0), variant(p95=1.0), th).status == "pass"  # 4x, but both under the floor
    assert check_latency(variant(p95=4.0), variant(p95=1.0, requests=1, shadow=1), th).status == "skip"


def test_a_disagreeing_canary_fails_on_agreement_and_accuracy():
    a = analyze_step(snapshot(canary=variant(correct=5), pairs=200, agree=4), TH, min_requests=50)
    assert a.failed == ["agreement", "accuracy"]
    assert "4/200" in a.reasons[0]


def test_checks_without_enough_data_are_skipped_unless_required():
    assert check_agreement({"pairs": 3, "agree": 3}, TH).status == "skip"
    strict = AnalysisThresholds(min_shadow_pairs=10, require_agreement=True)
    assert check_agreement({"pairs": 3, "agree": 3}, strict).status == "fail"
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
