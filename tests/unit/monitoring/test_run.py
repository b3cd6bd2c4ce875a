"""run_monitor end to end on a tiny project: training-like traffic passes, shifted traffic drifts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvplatform.cli import app
from cvplatform.config import load_params
from cvplatform.monitoring.run import run_monitor
from tests.unit.monitoring.traffic import MIN_SAMPLES, darken_and_blur, log_traffic, make_monitor_project


@pytest.fixture
def project(tmp_path):
    return make_monitor_project(tmp_path / "p")


def _params(root: Path):
    return load_params(root / "params.yaml")


def test_training_like_traffic_is_not_drift(project):
    assert log_traffic(project) == 108
    result = run_monitor(_params(project), root=project)
    assert not result.drifted and not result.insufficient, result.lines()
    assert result.n_served == 108 and result.traffic == {"champion": 108}
    assert result.reasons == [] and result.reason.startswith("no drift")
    statuses = {c["name"]: c["status"] for c in result.checks}
    assert statuses["brightness.psi"] == statuses["sharpness.psi"] == statuses["predicted_class.psi"] == "passed"
    assert statuses["confidence.drop"] == "skipped"  # no baseline traffic before the window
    assert result.statistics["brightness"]["psi"] == pytest.approx(0.0, abs=1e-9)
    summary = json.loads((project / "artifacts/monitor/summary.json").read_text())
    assert summary["stage"] == "monitor" and summary["drifted"] is False and summary["reason"] == result.reason
    assert "# Drift report: NO DRIFT" in (project / "artifacts/monitor/report.md").read_text()
    assert result.mlflow_run_id is None and "log_to_mlflow is false" in result.mlflow_note
    # the reference was built once and is reused
    assert not result.reference_cached
    assert run_monitor(_params(project), root=project).reference_cached


def test_darkened_blurred_traffic_is_input_drift_with_reasons(project):
    log_traffic(project, transform=darken_and_blur)
    result = run_monitor(_params(project), root=project)
    assert result.drifted and result.verdict == "DRIFT"
    failed = {c["name"] for c in result.checks if c["status"] == "failed"}
    assert {"brightness.psi", "brightness.ks", "sharpness.psi", "contrast.psi"} <= failed
    assert not any(n.startswith(("width", "height", "aspect_ratio", "predicted_class")) for n in failed)
    assert any(r.startswith("brightness PSI") for r in result.reasons)
    assert any(r.startswith("sharpness PSI") for r in result.reasons)
    summary = json.loads((project / "artifacts/monitor/summary.json").read_text())
    assert summary["drifted"] is True and "brightness" in summary["reason"] and summary["reasons"] == result.reasons
    report = (project / "artifacts/monitor/report.md").read_text()
    assert "# Drift report: DRIFT" in report and "| brightness.psi |" in report and "failed" in report


def test_one_predicted_class_is_prediction_drift(project):
    log_traffic(project, predicted="red")
    result = run_monitor(_params(project), root=project)
    assert result.drifted
    assert [c["name"] for c in result.checks if c["status"] == "failed"] == ["predicted_class.psi"]
    assert "'red' is 100% of predictions vs 33% of the training set" in result.reason
    assert result.predicted == {"red": 1.0}
    summary = result.to_dict()  # summary.json keeps the former field name beside the new one
    assert summary["reference_classes"] == summary["reference_labels"] == result.reference_classes
    assert set(result.reference_classes) == {"red", "green", "blue"}


def test_tiny_traffic_is_never_drift(project):
    log_traffic(project, transform=darken_and_blur, predicted="red", limit=MIN_SAMPLES - 1)
    result = run_monitor(_params(project), root=project)
    assert not result.drifted and result.insufficient and result.verdict == "INSUFFICIENT TRAFFIC"
    assert f"< min_samples {MIN_SAMPLES}" in result.reason


def test_window_and_baseline_come_from_record_times(project):
    now = datetime.now(UTC)
    # two days ago: confident, drifted-looking traffic -> outside the 24 h window, but the baseline
    log_traffic(project, transform=darken_and_blur, confidence=0.95, at=now - timedelta(days=2))
    log_traffic(project, confidence=0.60)  # now: like training, but much less confident
    result = run_monitor(_params(project), root=project)
    assert result.n_served == 108  # only the window
    assert [c["name"] for c in result.checks if c["status"] == "failed"] == ["confidence.drop"]
    assert result.baseline_confidence == pytest.approx(0.95) and result.mean_confidence == pytest.approx(0.60)
    # an explicit --since that includes the old traffic sees its input drift
    wide = run_monitor(_params(project), root=project, since=now - timedelta(days=3))
    assert wide.drifted and any(r.startswith("brightness PSI") for r in wide.reasons)
    assert wide.window_hours == pytest.approx(72, abs=0.1)


def test_cli_prints_the_verdict_and_fails_only_when_asked(project, monkeypatch):
    monkeypatch.chdir(project)
    runner = CliRunner()
    log_traffic(project)
    res = runner.invoke(app, ["monitor", "--fail-on-drift"])
    assert res.exit_code == 0, res.output
    assert "monitor: NO DRIFT" in res.output
    log_traffic(project, predicted="blue", repeat=20)
    res = runner.invoke(app, ["monitor"])
    assert res.exit_code == 0, res.output
    assert "monitor: DRIFT" in res.output and "predicted-class PSI" in res.output
    res = runner.invoke(app, ["monitor", "--fail-on-drift"])
    assert res.exit_code == 3 and "monitor: DRIFT" in res.output
    res = runner.invoke(app, ["monitor", "--since", "yesterday"])
    assert res.exit_code == 2 and "not an ISO-8601 time" in res.output


@pytest.mark.slow
def test_verdict_and_reason_are_logged_to_mlflow(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = make_monitor_project(tmp_path / "p", "monitor.log_to_mlflow=true", "monitor.experiment=monitor")
    log_traffic(root, transform=darken_and_blur)
    result = run_monitor(_params(root), root=root)
    assert result.drifted and result.mlflow_run_id
    from cvplatform.tracking import get_client

    client, _ = get_client(root)
    run = client.get_run(result.mlflow_run_id)
    assert client.get_experiment(run.info.experiment_id).name == "monitor"
    assert run.data.tags["drift.drifted"] == "true" and run.data.tags["drift.reason"] == result.reason
    assert run.data.metrics["drifted"] == 1.0 and run.data.metrics["input.brightness.psi"] > 0.25
    assert run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(result.mlflow_run_id)} >= {"report.md", "summary.json"}
    summary = json.loads((root / "artifacts/monitor/summary.json").read_text())
    assert summary["mlflow_run_id"] == result.mlflow_run_id
