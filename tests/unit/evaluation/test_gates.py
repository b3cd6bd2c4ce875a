"""check_gates on hand-built results: every branch, including the CI boundary of the champion check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cvplatform.evaluation.gates import GatePolicy, ScenarioGate, check_gates
from cvplatform.tasks.classification.metrics import ScenarioResult, paired_bootstrap_delta

NAMES = ["a", "b", "c"]


def result(name: str, y, pred, conf: float = 0.9, ids=None, kind: str = "clean") -> ScenarioResult:
    y = np.asarray(y)
    pred = np.asarray(pred)
    p = np.full((len(pred), 3), (1 - conf) / 2)
    p[np.arange(len(pred)), pred] = conf
    ids = ids or [f"img{i:03d}" for i in range(len(y))]
    return ScenarioResult.from_predictions(name, kind, ids, y, p, NAMES, critical_classes=["a"], n_bootstrap=200)


def accuracy_result(name: str, n: int, n_correct: int, **kw) -> ScenarioResult:
    y = np.arange(n) % 3
    pred = y.copy()
    pred[n_correct:] = (y[n_correct:] + 1) % 3
    return result(name, y, pred, **kw)


def policy(**scenarios: ScenarioGate) -> GatePolicy:
    return GatePolicy(scenarios=scenarios, critical_classes=("a",), n_bootstrap=500, seed=11)


def by(report, scenario: str, name: str):
    matches = [c for c in report.checks if c.scenario == scenario and c.name == name]
    assert len(matches) == 1, (scenario, name, [c.name for c in report.checks])
    return matches[0]


def test_floors_pass_at_exactly_the_threshold_and_fail_below():
    res = {"clean": accuracy_result("clean", 10, 8)}
    ok = check_gates(res, policy(clean=ScenarioGate(level="must_pass", min_accuracy=0.8)))
    c = by(ok, "clean", "min_accuracy")
    assert c.status == "passed" and c.value == pytest.approx(0.8) and c.threshold == 0.8
    assert c.ci is not None and c.ci[0] <= 0.8 <= c.ci[1]
    assert ok.passed
    bad = check_gates(res, policy(clean=ScenarioGate(level="must_pass", min_accuracy=0.81)))
    assert by(bad, "clean", "min_accuracy").status == "failed"
    assert not bad.passed
    assert "accuracy 0.8000 < floor 0.8100" in by(bad, "clean", "min_accuracy").reason


def test_macro_f1_floor():
    res = {"clean": result("clean", [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0])}
    rep = check_gates(res, policy(clean=ScenarioGate(level="must_pass", min_macro_f1=0.7)))
    c = by(rep, "clean", "min_macro_f1")
    assert c.status == "failed" and c.value == pytest.approx((0.5 + 0.8 + 2 / 3) / 3, abs=1e-6)
    assert c.ci is not None


def test_warn_level_failures_do_not_fail_the_report():
    res = {"fog_s5": accuracy_result("fog_s5", 10, 2, kind="corruption")}
    rep = check_gates(res, policy(fog_s5=ScenarioGate(level="warn", min_accuracy=0.5)))
    assert by(rep, "fog_s5", "min_accuracy").status == "failed"
    assert rep.passed
    assert [c.name for c in rep.warnings] == ["min_accuracy"]
    assert by(rep, "*", "pass_rate").status == "skipped"  # no must-pass scenario


def test_ece_bound_and_warn_only():
    res = {"clean": accuracy_result("clean", 10, 5, conf=0.99)}  # overconfident: ECE ~0.49
    gate = ScenarioGate(level="must_pass", max_ece=0.1)
    rep = check_gates(res, policy(clean=gate))
    c = by(rep, "clean", "max_ece")
    assert c.status == "failed" and c.level == "must_pass" and c.value == pytest.approx(0.49, abs=1e-3)
    assert not rep.passed
    soft = check_gates(res, policy(clean=gate.model_copy(update={"warn_only": ("max_ece",)})))
    assert by(soft, "clean", "max_ece").level == "warn"
    assert soft.passed
    assert by(soft, "*", "pass_rate").value == 1.0  # warn_only checks don't make the scenario fail


def test_critical_class_false_positive_rate():
    # 'a' predicted for 2 of the 4 images of other classes -> FPR 0.5
    res = {"clean": result("clean", [0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 0, 2])}
    rep = check_gates(res, policy(clean=ScenarioGate(level="must_pass", max_critical_fpr=0.25)))
    c = by(rep, "clean", "critical_fpr:a")
    assert c.status == "failed" and c.value == pytest.approx(0.5)
    assert "false-positive rate of 'a' 0.5000 > bound 0.2500" in c.reason
    only_a = {"clean": result("clean", [0, 0], [0, 0])}  # no negatives: undefined -> skipped
    assert by(check_gates(only_a, policy(clean=ScenarioGate(max_critical_fpr=0.1))), "clean",
              "critical_fpr:a").status == "skipped"
    no_classes = GatePolicy(scenarios={"clean": ScenarioGate(max_critical_fpr=0.1)})
    assert by(check_gates(res, no_classes), "clean", "critical_fpr").status == "skipped"


def test_empty_scenario_is_a_failed_check_not_a_silent_pass():
    empty = ScenarioResult.from_predictions("dim", "slice", [], np.array([], dtype=int), np.zeros((0, 3)), NAMES,
                                            note="slice matched no image of the split")
    res = {"clean": accuracy_result("clean", 6, 6), "dim": empty}
    rep = check_gates(res, policy(clean=ScenarioGate(level="must_pass"),
                                  dim=ScenarioGate(level="must_pass", min_accuracy=0.9)))
    c = by(rep, "dim", "images")
    assert c.status == "failed" and "no images (slice matched no image" in c.reason
    assert not rep.passed
    assert by(rep, "*", "pass_rate").value == pytest.approx(0.5)
    warn = check_gates(res, policy(clean=ScenarioGate(level="must_pass"), dim=ScenarioGate(level="warn")))
    assert warn.passed and [c.scenario for c in warn.warnings] == ["dim"]


def test_scenario_without_result_fails():
    rep = check_gates({}, policy(clean=ScenarioGate(level="must_pass")))
    assert by(rep, "clean", "images").status == "failed"
    assert not rep.passed


def test_no_champion_is_reported_as_skipped_or_failed_when_required():
    res = {"clean": accuracy_result("clean", 6, 6)}
    pol = policy(clean=ScenarioGate(level="must_pass", max_drop=0.02))
    rep = check_gates(res, pol, None, champion_note="registered model 'm' does not exist")
    c = by(rep, "*", "champion")
    assert c.status == "skipped" and c.passed is None
    assert "no champion to compare against (registered model 'm' does not exist)" in c.reason
    assert "regression checks on 1 scenario(s) not run" in c.reason
    assert rep.passed
    strict = check_gates(res, pol.model_copy(update={"require_champion": True}))
    assert by(strict, "*", "champion").status == "failed" and not strict.passed


def test_identical_champion_passes_regression():
    res = {"clean": accuracy_result("clean", 30, 24)}
    rep = check_gates(res, policy(clean=ScenarioGate(level="must_pass", max_drop=0.0)), dict(res))
    c = by(rep, "clean", "champion_regression")
    assert c.status == "passed" and c.value == 0.0 and c.ci == (0.0, 0.0) and c.threshold == 0.0
    assert not any(ch.name == "champion" for ch in rep.checks)


def test_much_better_champion_fails_the_challenger():
    challenger = {"clean": accuracy_result("clean", 60, 30)}
    champion = {"clean": accuracy_result("clean", 60, 57)}
    rep = check_gates(challenger, policy(clean=ScenarioGate(level="must_pass", max_drop=0.05)), champion)
    c = by(rep, "clean", "champion_regression")
    assert c.status == "failed" and c.value == pytest.approx(-0.45)
    assert c.ci[1] < -0.05
    assert "lower bound < -max_drop -0.0500" in c.reason
    assert not rep.passed
    # a better challenger passes
    rep2 = check_gates(champion, policy(clean=ScenarioGate(level="must_pass", max_drop=0.0)), challenger)
    assert by(rep2, "clean", "champion_regression").status == "passed"


def test_ci_lower_bound_exactly_at_minus_max_drop_passes():
    # constant difference: every resample gives exactly -1.0
    worse = {"clean": accuracy_result("clean", 9, 0)}
    perfect = {"clean": accuracy_result("clean", 9, 9)}
    at = check_gates(worse, policy(clean=ScenarioGate(level="must_pass", max_drop=1.0)), perfect)
    assert by(at, "clean", "champion_regression").ci == (-1.0, -1.0)
    assert by(at, "clean", "champion_regression").status == "passed"
    below = check_gates(worse, policy(clean=ScenarioGate(level="must_pass", max_drop=0.99)), perfect)
    assert by(below, "clean", "champion_regression").status == "failed"


def test_ci_boundary_with_a_real_bootstrap_distribution():
    challenger = {"clean": accuracy_result("clean", 40, 30)}
    champion = {"clean": accuracy_result("clean", 40, 34)}
    pol = policy(clean=ScenarioGate(level="must_pass", max_drop=0.5))
    _, lo, _ = paired_bootstrap_delta(challenger["clean"].correct, champion["clean"].correct,
                                      n_bootstrap=pol.n_bootstrap, confidence=pol.confidence, seed=pol.seed)
    assert lo < 0
    exact = pol.model_copy(update={"scenarios": {"clean": ScenarioGate(level="must_pass", max_drop=-lo)}})
    assert by(check_gates(challenger, exact, champion), "clean", "champion_regression").status == "passed"
    tighter = pol.model_copy(update={"scenarios": {"clean": ScenarioGate(level="must_pass", max_drop=-lo - 1e-6)}})
    assert by(check_gates(challenger, tighter, champion), "clean", "champion_regression").status == "failed"


def test_champion_on_other_images_or_missing_scenario():
    res = {"clean": accuracy_result("clean", 6, 6), "fog_s1": accuracy_result("fog_s1", 6, 6)}
    other = {"clean": accuracy_result("clean", 6, 6, ids=[f"x{i}" for i in range(6)])}
    rep = check_gates(res, policy(clean=ScenarioGate(level="must_pass", max_drop=0.1),
                                  fog_s1=ScenarioGate(max_drop=0.1)), other)
    assert by(rep, "clean", "champion_regression").status == "failed"
    assert "different images" in by(rep, "clean", "champion_regression").reason
    assert by(rep, "fog_s1", "champion_regression").status == "skipped"


def test_pass_rate_kpi_scopes_and_levels():
    res = {
        "clean": accuracy_result("clean", 10, 10),
        "s1": accuracy_result("s1", 10, 9, kind="corruption"),
        "s2": accuracy_result("s2", 10, 3, kind="corruption"),
        "s3": accuracy_result("s3", 10, 2, kind="corruption"),
    }
    gates = {
        "clean": ScenarioGate(level="must_pass", min_accuracy=0.9),
        "s1": ScenarioGate(min_accuracy=0.5),
        "s2": ScenarioGate(min_accuracy=0.5),
        "s3": ScenarioGate(min_accuracy=0.5),
    }
    must = check_gates(res, GatePolicy(scenarios=gates))
    assert by(must, "*", "pass_rate").value == 1.0 and must.passed
    assert must.extra["pass_rate_all"] == pytest.approx(0.5)
    all_scope = GatePolicy(scenarios=gates, pass_rate_scope="all", min_pass_rate=0.75)
    rep = check_gates(res, all_scope)
    c = by(rep, "*", "pass_rate")
    assert c.status == "failed" and c.value == pytest.approx(0.5) and c.level == "must_pass"
    assert "2/4 scenarios pass" in c.reason and "failing: s2, s3" in c.reason
    assert not rep.passed  # only warn scenarios failed, but the KPI is must-pass
    assert check_gates(res, all_scope.model_copy(update={"pass_rate_level": "warn"})).passed
    assert check_gates(res, all_scope.model_copy(update={"min_pass_rate": 0.5})).passed


def test_report_lists_every_check_with_all_fields_and_is_deterministic():
    res = {"clean": accuracy_result("clean", 20, 15)}
    champ = {"clean": accuracy_result("clean", 20, 17)}
    pol = policy(clean=ScenarioGate(level="must_pass", min_accuracy=0.5, min_macro_f1=0.5, max_ece=0.5,
                                    max_critical_fpr=0.5, max_drop=0.3))
    rep = check_gates(res, pol, champ)
    d = rep.to_dict()
    json.dumps(d)
    names = [c["name"] for c in d["checks"]]
    assert names == ["images", "min_accuracy", "min_macro_f1", "max_ece", "critical_fpr:a", "champion_regression",
                     "pass_rate"]
    for c in d["checks"]:
        assert set(c) >= {"name", "scenario", "value", "threshold", "ci", "passed", "status", "level", "reason"}
        assert c["reason"]
    assert d["passed"] is True and d["n_failed_must_pass"] == 0
    assert check_gates(res, pol, champ).to_dict() == d
    assert all(isinstance(c.line(), str) and c.name in c.line() for c in rep.checks)


# --------------------------------------------------------------------------- robustness, sample size, honesty
def test_relative_floor_is_judged_against_clean_accuracy():
    pol = GatePolicy(scenarios={"clean": ScenarioGate(level="must_pass", min_accuracy=0.5),
                                "fog_s1": ScenarioGate(level="must_pass", min_relative_accuracy=0.85)},
                     clean_scenario="clean", n_bootstrap=100)
    clean = accuracy_result("clean", 100, 100)
    ok = check_gates({"clean": clean, "fog_s1": accuracy_result("fog_s1", 100, 85, kind="corruption")}, pol)
    c = by(ok, "fog_s1", "min_relative_accuracy")
    assert ok.passed and c.status == "passed" and c.threshold == pytest.approx(0.85)
    bad = check_gates({"clean": clean, "fog_s1": accuracy_result("fog_s1", 100, 84, kind="corruption")}, pol)
    c = by(bad, "fog_s1", "min_relative_accuracy")
    assert not bad.passed and c.blocking
    assert "accuracy 0.8400 is 84% of clean 1.0000 < floor 85% (0.8500)" in c.reason
    assert c.ci is not None and c.ci[0] < 0.84 < c.ci[1]  # the Wilson interval comes with it


def test_the_split_must_hold_enough_images_of_every_class():
    pol = GatePolicy(scenarios={"clean": ScenarioGate(level="must_pass", min_accuracy=0.5)},
                     clean_scenario="clean", min_images_per_class=15, n_bootstrap=100)
    enough = check_gates({"clean": accuracy_result("clean", 45, 45)}, pol)  # 15 per class
    assert enough.passed and by(enough, "clean", "min_images_per_class").status == "passed"
    small = check_gates({"clean": accuracy_result("clean", 42, 42)}, pol)  # 14 per class, 100 % accurate
    c = by(small, "clean", "min_images_per_class")
    assert not small.passed and c.blocking and "3 class(es) have fewer than 15 images" in c.reason
    assert "'a': 14" in c.reason and "too small to support the suite's floors" in c.reason


def test_a_champion_that_is_not_comparable_is_a_visible_failed_check():
    pol = policy(clean=ScenarioGate(level="must_pass", min_accuracy=0.5, max_drop=0.02))
    rep = check_gates({"clean": accuracy_result("clean", 30, 30)}, pol,
                      champion_note="version 4", champion_incompatible="models:/m@champion: classes differ")
    c = by(rep, "*", "champion")
    assert c.status == "failed" and c.level == "warn" and "not comparable" in c.reason
    assert rep.passed and c in rep.warnings  # orange, not silent, and not blocking unless require_champion
    strict = check_gates({"clean": accuracy_result("clean", 30, 30)}, pol.model_copy(update={"require_champion": True}),
                         champion_incompatible="classes differ")
    assert not strict.passed


def test_a_scenario_without_a_decided_threshold_is_never_drawn_green():
    from cvplatform.evaluation.report import scenario_status

    pol = policy(clean=ScenarioGate(level="must_pass", min_accuracy=0.5),
                 contrast_s5=ScenarioGate(level="warn", max_drop=0.05))  # no champion: max_drop is not judged
    rep = check_gates({"clean": accuracy_result("clean", 30, 30),
                       "contrast_s5": accuracy_result("contrast_s5", 30, 4, kind="corruption")}, pol)
    assert scenario_status("contrast_s5", rep) == "unchecked"
    assert scenario_status("clean", rep) == "passed"
    assert rep.weakest(1)[0].scenario == "clean"


def _suite_results(suite, accuracy: dict[str, float], per_class: int = 28) -> dict[str, ScenarioResult]:
    """Results for every scenario of ``suite``: 10 classes x ``per_class`` images, calibrated confidences."""
    names = [str(i) for i in range(10)]
    n = 10 * per_class
    y = np.arange(n) % 10
    out = {}
    for sc in suite.expand():
        acc = accuracy.get(sc.name, accuracy.get("*", 0.99))
        k = int(round(acc * n))
        pred = y.copy()
        pred[k:] = (y[k:] + 1) % 10
        p = np.full((n, 10), (1 - acc) / 9)
        p[np.arange(n), pred] = acc  # confidence = accuracy: calibrated, ECE ~ 0
        out[sc.name] = ScenarioResult.from_predictions(sc.name, sc.kind, [f"i{i:04d}" for i in range(n)], y, p,
                                                       names, n_bootstrap=50, corruption=sc.corruption,
                                                       severity=sc.severity)
    return out


def test_the_default_suite_fails_a_model_that_collapses_under_mild_contrast():
    from pathlib import Path

    from cvplatform.evaluation.scenarios import load_suite

    suite = load_suite(Path(__file__).resolve().parents[3] / "configs" / "scenarios" / "default.yaml")
    pol = suite.policy(n_bootstrap=50)
    healthy = check_gates(_suite_results(suite, {"*": 0.99}), pol)
    assert healthy.passed, [c.line() for c in healthy.failures]
    assert by(healthy, "clean", "min_images_per_class").status == "passed"  # 28 per class, like digits
    # high clean accuracy, collapse under contrast severity 1 (contrast x 0.4): must not pass
    collapsed = check_gates(_suite_results(suite, {"*": 0.99, "contrast_s1": 0.30, "contrast_s5": 0.12}), pol)
    assert not collapsed.passed
    assert {(c.scenario, c.name) for c in collapsed.failures} >= {("contrast_s1", "min_relative_accuracy")}
    assert by(collapsed, "contrast_s5", "min_relative_accuracy").status == "failed"  # severe: orange warning
    assert by(collapsed, "contrast_s5", "min_relative_accuracy").level == "warn"
    # a challenger a little worse than the champion under one mild corruption is a warning, not a block
    # (many paired comparisons); on clean data the comparison blocks
    assert pol.scenarios["fog_s1"].level_of("max_drop") == "warn"
    assert pol.scenarios["clean"].level_of("max_drop") == "must_pass"
    # and the suite refuses a split too small for its floors, whatever the accuracy
    small = check_gates(_suite_results(suite, {"*": 1.0}, per_class=14), pol)
    assert [c.name for c in small.failures if c.scenario == "clean"] == ["min_images_per_class"]
