"""PSI / KS / prediction drift on hand-built distributions; thresholds, boundaries, minimum samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvplatform.config import load_config
from cvplatform.errors import ConfigError
from cvplatform.monitoring.drift import (
    DriftPolicy,
    bin_edges,
    check_drift,
    class_psi,
    ks_statistic,
    label_psi,
    proportions,
    psi,
    psi_from_proportions,
)
from cvplatform.monitoring.stats import STAT_NAMES

REPO = Path(__file__).resolve().parents[3]


# --------------------------------------------------------------------------- primitives
def test_psi_identical_is_zero_and_a_shift_is_large():
    rng = np.random.default_rng(0)
    ref = rng.normal(100, 10, 4000)
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-12)
    same_dist = rng.normal(100, 10, 4000)
    assert psi(ref, same_dist) < 0.02
    assert 0.1 < psi(ref, ref + 5) < 1.0  # half a sigma: a moderate shift
    assert psi(ref, ref + 40) > 5.0  # four sigma: nothing overlaps


def test_psi_from_proportions_matches_the_formula():
    # (0.9-0.5) ln(0.9/0.5) + (0.1-0.5) ln(0.1/0.5)
    expected = 0.4 * np.log(1.8) + (-0.4) * np.log(0.2)
    assert psi_from_proportions([0.5, 0.5], [0.9, 0.1]) == pytest.approx(expected)
    assert psi_from_proportions([0.5, 0.5], [0.1, 0.9]) == pytest.approx(expected)  # symmetric in bins
    # an empty bin is floored, not infinite
    assert np.isfinite(psi_from_proportions([1.0, 0.0], [0.0, 1.0]))


def test_quantile_bins_hold_equal_reference_shares():
    ref = np.arange(1000, dtype=float)
    edges = bin_edges(ref, 10)
    assert len(edges) == 9
    assert proportions(ref, edges) == pytest.approx([0.1] * 10)


def test_discrete_statistics_get_one_bin_per_value_plus_outside_bins():
    ref = [16.0] * 50 + [32.0] * 50
    edges = bin_edges(ref, 10)
    assert proportions(ref, edges).tolist() == [0.0, 0.5, 0.5, 0.0]
    assert psi(ref, [16.0] * 10 + [32.0] * 10) == pytest.approx(0.0, abs=1e-12)
    assert psi(ref, [64.0] * 20) > 5.0  # an unseen (larger) size is a shift
    assert psi(ref, [8.0] * 20) > 5.0  # an unseen (smaller) size too
    assert psi([16.0] * 30, [16.0] * 30) == 0.0


def test_ks_statistic():
    assert ks_statistic([1, 2, 3, 4], [1, 2, 3, 4]) == 0.0
    assert ks_statistic([1, 2, 3], [10, 11, 12]) == 1.0
    assert ks_statistic([1, 2, 3, 4], [3, 4, 5, 6]) == pytest.approx(0.5)
    assert np.isnan(ks_statistic([], [1.0]))


def test_class_psi():
    assert class_psi({"a": 40, "b": 60}, {"a": 4, "b": 6}) == pytest.approx(0.0, abs=1e-12)
    assert class_psi({"a": 50, "b": 50}, {"a": 100}) > 4.0
    # a class never seen in training counts as a shift
    assert class_psi({"a": 50, "b": 50}, {"a": 45, "b": 45, "zebra": 10}) > 0.5
    assert label_psi is class_psi  # the name of before the task seam still imports


# --------------------------------------------------------------------------- check_drift
@dataclass
class Ref:
    stats: dict = field(default_factory=dict)
    label_counts: dict = field(default_factory=dict)


def _reference(n: int = 600, seed: int = 0) -> Ref:
    rng = np.random.default_rng(seed)
    stats = {
        "brightness": rng.normal(120, 15, n).tolist(),
        "contrast": rng.normal(40, 5, n).tolist(),
        "sharpness": rng.gamma(4, 200, n).tolist(),
        "width": [32.0] * n,
        "height": [32.0] * n,
        "aspect_ratio": [1.0] * n,
    }
    return Ref(stats, {"cat": n // 3, "dog": n // 3, "fox": n - 2 * (n // 3)})


def _traffic(ref: Ref, n: int, *, seed: int = 1, brightness_shift: float = 0.0, predicted=None,
             confidence: float = 0.9, variant: str = "champion", version: str = "1",
             start: str = "2026-02-01T10:00:00Z") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ref.stats["brightness"]), n)
    rows = {name: np.asarray(ref.stats[name])[idx] for name in STAT_NAMES}
    rows["brightness"] = rows["brightness"] + brightness_shift
    classes = sorted(ref.label_counts)
    return pd.DataFrame({
        "time": pd.date_range(start, periods=n, freq="s"),
        "model": "cvplatform", "version": version, "variant": variant,
        "request_id": [f"r{i}" for i in range(n)],
        **rows,
        "predicted": predicted if predicted is not None else [classes[i % len(classes)] for i in range(n)],
        "confidence": confidence,
    })


def _policy(**kw) -> DriftPolicy:
    return DriftPolicy.model_validate({"min_samples": 50, **kw})


def test_same_distribution_passes_every_check():
    ref = _reference()
    report = check_drift(ref, _traffic(ref, 400), _policy())
    assert not report.drifted and not report.insufficient
    assert report.failures == []
    names = {c.name for c in report.checks}
    assert {"brightness.psi", "brightness.ks", "width.psi", "predicted_class.psi"} <= names
    assert all(c.status == "passed" for c in report.checks if c.name != "confidence.drop")
    assert report.reason.startswith("no drift")
    assert report.statistics["brightness"]["psi"] < 0.25


def test_darker_traffic_is_input_drift_with_the_statistic_named():
    ref = _reference()
    report = check_drift(ref, _traffic(ref, 400, brightness_shift=-60), _policy())
    assert report.drifted
    failed = {c.name for c in report.failures}
    assert failed == {"brightness.psi", "brightness.ks"}
    assert any(r.startswith("brightness PSI") and "> 0.25" in r for r in report.reasons)
    assert report.reason.count("brightness") == 1  # one line per drifted statistic, not per check
    assert report.statistics["brightness"]["current_mean"] < report.statistics["brightness"]["reference_mean"] - 50


def test_one_predicted_class_is_prediction_drift():
    ref = _reference()
    report = check_drift(ref, _traffic(ref, 300, predicted=["dog"] * 300), _policy())
    assert report.drifted
    assert [c.name for c in report.failures] == ["predicted_class.psi"]
    assert "'dog' is 100% of predictions vs 33% of the training set" in report.reasons[0]
    assert report.predicted == {"dog": 1.0}
    shares = {c: pytest.approx(1 / 3) for c in ("cat", "dog", "fox")}
    assert report.reference_classes == shares and report.reference_labels is report.reference_classes
    d = report.to_dict()
    assert d["reference_classes"] == d["reference_labels"] == shares and d["predicted"] == {"dog": 1.0}


def test_threshold_boundary_value_equal_passes_strictly_above_fails():
    ref = _reference()
    cur = _traffic(ref, 400, brightness_shift=-8)
    value = psi(ref.stats["brightness"], cur["brightness"], 10)
    assert value > 0
    at = check_drift(ref, cur, _policy(inputs={"brightness": {"psi": value, "ks": None}}))
    check = next(c for c in at.checks if c.name == "brightness.psi")
    assert check.value == pytest.approx(value) and check.threshold == pytest.approx(value)
    assert check.status == "passed" and check.passed
    below = check_drift(ref, cur, _policy(inputs={"brightness": {"psi": value * (1 - 1e-9), "ks": None}}))
    check = next(c for c in below.checks if c.name == "brightness.psi")
    assert check.status == "failed" and not check.passed and below.drifted


def test_a_null_threshold_disables_the_check():
    ref = _reference()
    policy = _policy(inputs={"brightness": {"psi": None, "ks": None}})
    report = check_drift(ref, _traffic(ref, 400, brightness_shift=-60), policy)
    assert not report.drifted
    assert not any(c.name.startswith("brightness") for c in report.checks)
    assert report.statistics["brightness"]["psi"] > 1  # still measured and reported


def test_minimum_sample_rule_tiny_traffic_never_drifts():
    ref = _reference()
    tiny = _traffic(ref, 49, brightness_shift=-100, predicted=["dog"] * 49)
    report = check_drift(ref, tiny, _policy())
    assert not report.drifted and report.insufficient
    assert report.checks and all(c.status == "skipped" for c in report.checks)
    assert "49 served image(s) in the window < min_samples 50" in report.reason
    # exactly min_samples is enough
    enough = check_drift(ref, _traffic(ref, 50, brightness_shift=-100, predicted=["dog"] * 50), _policy())
    assert enough.drifted and not enough.insufficient


def test_shadow_records_do_not_count_as_traffic():
    ref = _reference()
    cur = pd.concat([_traffic(ref, 30), _traffic(ref, 200, brightness_shift=-80, variant="shadow")])
    report = check_drift(ref, cur, _policy())
    assert report.n_current == 30 and report.insufficient and not report.drifted


def test_tensor_requests_without_stats_skip_input_checks_only():
    ref = _reference()
    cur = _traffic(ref, 200, predicted=["fox"] * 200)
    for name in STAT_NAMES:
        cur[name] = np.nan
    report = check_drift(ref, cur, _policy())
    inputs = [c for c in report.checks if c.kind == "input"]
    assert inputs and all(c.status == "skipped" and "tensors" in c.reason for c in inputs)
    assert [c.name for c in report.failures] == ["predicted_class.psi"]


def test_mean_confidence_drop_against_the_same_versions_baseline():
    ref = _reference()
    baseline = _traffic(ref, 200, confidence=0.92, start="2026-01-30T00:00:00Z")
    low = _traffic(ref, 200, confidence=0.70)
    report = check_drift(ref, low, _policy(), baseline=baseline)
    drop = next(c for c in report.checks if c.name == "confidence.drop")
    assert drop.status == "failed" and drop.value == pytest.approx(0.22)
    assert "fell by 0.22 > 0.1" in drop.reason and "cvplatform:1" in drop.reason
    assert report.baseline_confidence == pytest.approx(0.92) and report.mean_confidence == pytest.approx(0.70)
    ok = check_drift(ref, _traffic(ref, 200, confidence=0.88), _policy(), baseline=baseline)
    assert next(c for c in ok.checks if c.name == "confidence.drop").status == "passed" and not ok.drifted
    # a baseline of another version is no baseline
    other = check_drift(ref, _traffic(ref, 200, confidence=0.70, version="2"), _policy(), baseline=baseline)
    drop = next(c for c in other.checks if c.name == "confidence.drop")
    assert drop.status == "skipped" and "baseline" in drop.reason and not other.drifted


def test_min_mean_confidence_floor():
    ref = _reference()
    report = check_drift(ref, _traffic(ref, 200, confidence=0.5),
                         _policy(prediction={"min_mean_confidence": 0.6}))
    floor = next(c for c in report.checks if c.name == "confidence.mean")
    assert floor.status == "failed" and report.drifted and "0.5 < min_mean_confidence 0.6" in floor.reason


def test_report_to_dict_is_json_ready():
    import json

    ref = _reference()
    d = check_drift(ref, _traffic(ref, 300, brightness_shift=-60), _policy()).to_dict()
    again = json.loads(json.dumps(d))
    assert again["drifted"] is True and again["reasons"] and again["checks"][0]["passed"] in (True, False)


# --------------------------------------------------------------------------- policy file
def test_repo_policy_loads():
    policy = load_config(REPO / "configs/monitor/drift.yaml", DriftPolicy)
    assert policy.min_samples >= 1 and policy.inputs.sharpness.psi is not None
    assert "shadow" not in policy.variants


def test_unknown_policy_key_names_file_and_key(tmp_path):
    f = tmp_path / "drift.yaml"
    f.write_text("inputs:\n  brightnes:\n    psi: 0.2\n")
    with pytest.raises(ConfigError) as e:
        load_config(f, DriftPolicy)
    msg = str(e.value)
    assert str(f) in msg and "inputs.brightnes: unknown key" in msg and "brightness" in msg


def test_bad_policy_value_names_the_key(tmp_path):
    f = tmp_path / "drift.yaml"
    f.write_text("min_samples: 0\nprediction:\n  psi: -1\n")
    with pytest.raises(ConfigError) as e:
        load_config(f, DriftPolicy)
    assert "min_samples" in str(e.value) and "prediction.psi" in str(e.value)
