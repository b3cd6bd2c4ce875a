"""cv_monitor DAG: imports cleanly, wires the expected graph, parses light, follows params.yaml's
schedule, and with dag.test() triggers cv_retrain (with the reason in its conf) only on drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.dags.conftest import REPO
from tests.unit.monitoring.traffic import darken_and_blur, log_traffic, make_monitor_project

EXPECTED_EDGES = {
    "compute_drift": {"should_retrain"},
    "should_retrain": {"trigger_retrain"},
    "trigger_retrain": set(),
}
HEAVY = ("torch", "mlflow", "great_expectations", "onnxruntime", "albumentations", "pytorch_lightning",
         "cvplatform", "cv2", "pandas", "dvc", "scipy")


def _dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(REPO / "dags"))


def test_dagbag_has_no_import_errors_and_expected_graph(airflow_home):
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

    bag = _dagbag()
    assert bag.import_errors == {}
    dag = bag.dags["cv_monitor"]
    assert {tid: set(t.downstream_task_ids) for tid, t in dag.task_dict.items()} == EXPECTED_EDGES
    assert dag.max_active_runs == 1 and dag.catchup is False
    trigger = dag.task_dict["trigger_retrain"]
    assert isinstance(trigger, TriggerDagRunOperator)
    assert trigger.trigger_dag_id == "cv_retrain" and trigger.wait_for_completion is False
    assert trigger.skip_when_already_exists is True  # a retried task never starts a second cv_retrain
    assert "reason" in trigger.conf and trigger.conf["overrides"] == []
    assert all(t.on_failure_callback for t in dag.task_dict.values())
    assert all(t.execution_timeout is not None for t in dag.task_dict.values())
    # cv_retrain accepts (and shows) the reason in its trigger form
    assert "reason" in bag.dags["cv_retrain"].params


def test_schedule_comes_from_params_yaml(airflow_home, tmp_path, monkeypatch):
    assert _dagbag().dags["cv_monitor"].schedule == "@hourly"  # the repository's params.yaml
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["orchestration"]["monitor_schedule"] = "*/20 * * * *"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("CVPLATFORM_ROOT", str(tmp_path))
    assert _dagbag().dags["cv_monitor"].schedule == "*/20 * * * *"


def test_dag_file_imports_nothing_heavy_at_parse_time(airflow_home):
    code = (
        "import sys, runpy; runpy.run_path(sys.argv[1]);"
        f"heavy={HEAVY!r};"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "dags" / "cv_monitor.py")],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.strip().splitlines()[-1:]
    assert out in ([], [""]), f"heavy modules imported at parse time: {out}"


# --------------------------------------------------------------------------- dag.test()
def _retrain_runs() -> dict[str, dict]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        runs = session.scalars(select(DagRun).where(DagRun.dag_id == "cv_retrain")).all()
        return {r.run_id: {"conf": dict(r.conf or {}), "state": str(r.state)} for r in runs}


@pytest.fixture
def retrain_runs_cleanup(airflow_home):
    """Delete the cv_retrain runs a test triggered (they must never run, nor disturb other tests)."""
    before = set(_retrain_runs())
    yield
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    new = set(_retrain_runs()) - before
    if new:
        with create_session() as session:
            session.execute(delete(DagRun).where(DagRun.dag_id == "cv_retrain", DagRun.run_id.in_(new)))


def _run(project: Path, monkeypatch, conf: dict | None = None):
    monkeypatch.setenv("CVPLATFORM_ROOT", str(project))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(project)
    before = set(_retrain_runs())
    run = _dagbag().dags["cv_monitor"].test(run_conf=conf)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    triggered = {k: v for k, v in _retrain_runs().items() if k not in before}
    return run, states, triggered


@pytest.mark.e2e
def test_drift_triggers_cv_retrain_with_the_reason(tmp_path, monkeypatch, retrain_runs_cleanup):
    project = make_monitor_project(tmp_path / "p")
    log_traffic(project, transform=darken_and_blur)
    run, states, triggered = _run(project, monkeypatch)
    assert str(run.state) == "success", states
    assert states == {"compute_drift": "success", "should_retrain": "success", "trigger_retrain": "success"}
    assert len(triggered) == 1, triggered
    run_id, info = next(iter(triggered.items()))
    assert run_id == f"drift__{run.run_id}"
    assert info["state"] == "queued"  # created, not run: nothing executes cv_retrain here
    conf = info["conf"]
    assert conf["overrides"] == []
    assert f"cv_monitor run {run.run_id}: drift: brightness PSI" in conf["reason"]
    assert "sharpness PSI" in conf["reason"]
    assert conf["monitor_summary"] == str(project / "artifacts/monitor/summary.json")
    summary = yaml.safe_load((project / "artifacts/monitor/summary.json").read_text())  # JSON is YAML
    assert summary["drifted"] is True and summary["reason"] in conf["reason"]


@pytest.mark.e2e
def test_no_drift_does_not_trigger_cv_retrain(tmp_path, monkeypatch, retrain_runs_cleanup):
    project = make_monitor_project(tmp_path / "p")
    log_traffic(project)
    run, states, triggered = _run(project, monkeypatch)
    assert str(run.state) == "success", states
    assert states["compute_drift"] == "success"
    assert states["should_retrain"] == "success" and states["trigger_retrain"] == "skipped"
    assert triggered == {}
    summary = yaml.safe_load((project / "artifacts/monitor/summary.json").read_text())
    assert summary["drifted"] is False and summary["reason"].startswith("no drift")
