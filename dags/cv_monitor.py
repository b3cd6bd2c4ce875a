"""cv_monitor: hourly drift check of served traffic; triggers cv_retrain when the data drifted.

    compute_drift -> should_retrain (short-circuit) -> trigger_retrain (cv_retrain)

Thin wiring only (``docs/architecture.md``, principle 2):

* ``compute_drift`` calls :func:`cvplatform.monitoring.run.run_monitor` in the project:
  the inference server's request log of the last window against the training
  reference, under ``configs/monitor/drift.yaml``. It writes
  ``artifacts/monitor/summary.json`` + ``report.md``, logs the checks and the reason to
  the MLflow experiment ``monitor``, and returns small references only (the drift
  flag, the reasons, the summary path, the MLflow run id).
* ``should_retrain`` logs the verdict and why; no drift (or too little traffic to
  tell) skips the trigger.
* ``trigger_retrain`` starts a ``cv_retrain`` run (without waiting for it) whose conf
  records why: ``{"overrides": [], "reason": ..., "monitor_summary": ..., ...}``. Its
  run id derives from this run's id, so a retried task never starts a second one.

Nothing heavy is imported at parse time: each task imports what it needs in its body.
The project is ``CVPLATFORM_ROOT`` (default: the folder holding this ``dags/`` folder);
the schedule is ``params.yaml`` ``orchestration.monitor_schedule`` (default ``@hourly``).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

import yaml
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, get_current_context, task

PROJECT_ROOT = Path(os.environ.get("CVPLATFORM_ROOT", Path(__file__).resolve().parent.parent))
RETRAIN_DAG_ID = "cv_retrain"


def _orchestration() -> dict:
    """The orchestration section of params.yaml (plain YAML: cheap at parse time)."""
    try:
        data = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        data = {}
    return data.get("orchestration") or {}


ORCH = _orchestration()
TASK_TIMEOUT = timedelta(minutes=float(ORCH.get("task_timeout_minutes", 120)))


def _on_failure(context):
    from cvplatform.orchestration import log_failure

    log_failure(context)


@dag(
    dag_id="cv_monitor",
    description="Hourly drift check of served traffic vs the training data; triggers cv_retrain on drift.",
    schedule=ORCH.get("monitor_schedule", "@hourly"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["cvplatform", "monitoring"],
    default_args={
        "retries": 1,
        "retry_delay": timedelta(seconds=30),
        "execution_timeout": TASK_TIMEOUT,
        "on_failure_callback": _on_failure,
    },
    params={
        "since": Param("", type="string", title="Window start",
                       description="ISO-8601 UTC time, e.g. 2026-01-31T00:00:00Z; empty = now - window_hours"),
        "retrain": Param(True, type="boolean", title="Trigger cv_retrain on drift",
                         description="false = only measure and report"),
    },
    doc_md=__doc__,
)
def cv_monitor():
    @task
    def compute_drift() -> dict:
        """run_monitor on the project: request log of the window vs the training reference."""
        import logging

        from cvplatform.config import load_params
        from cvplatform.monitoring.run import run_monitor

        log = logging.getLogger("cv_monitor.compute_drift")
        form = get_current_context()["params"]
        result = run_monitor(load_params(PROJECT_ROOT / "params.yaml"), root=PROJECT_ROOT,
                             since=(form.get("since") or None))
        log.info("%s", "\n".join(result.lines()))
        return {
            "drifted": result.drifted,
            "verdict": result.verdict,
            "reason": result.reason,
            "reasons": result.reasons[:20],
            "n_served": result.n_served,
            "window_start": result.window_start,
            "window_end": result.window_end,
            "summary": str(result.summary_path),
            "report": result.report,
            "mlflow_run_id": result.mlflow_run_id,
        }

    @task.short_circuit
    def should_retrain(drift: dict) -> bool:
        """True (trigger cv_retrain) only when drift was found and the run allows retraining."""
        import logging

        log = logging.getLogger("cv_monitor.should_retrain")
        if not drift["drifted"]:
            log.info("not retraining: %s", drift["reason"])
            return False
        if not get_current_context()["params"].get("retrain", True):
            log.warning("drift found but retrain=false in this run's params; not triggering %s: %s",
                        RETRAIN_DAG_ID, drift["reason"])
            return False
        log.warning("triggering %s because of %s", RETRAIN_DAG_ID, drift["reason"])
        return True

    drift = compute_drift()
    trigger = TriggerDagRunOperator(
        task_id="trigger_retrain",
        trigger_dag_id=RETRAIN_DAG_ID,
        trigger_run_id="drift__{{ run_id }}",
        conf={
            "overrides": [],
            "reason": "cv_monitor run {{ run_id }}: {{ ti.xcom_pull(task_ids='compute_drift')['reason'] }}",
            "monitor_summary": "{{ ti.xcom_pull(task_ids='compute_drift')['summary'] }}",
            "monitor_mlflow_run_id": "{{ ti.xcom_pull(task_ids='compute_drift')['mlflow_run_id'] }}",
        },
        wait_for_completion=False,
        skip_when_already_exists=True,
        openlineage_inject_parent_info=False,
        note="Triggered by cv_monitor on drift; the reason is in this run's conf (and the monitor summary).",
    )
    should_retrain(drift) >> trigger


cv_monitor()
