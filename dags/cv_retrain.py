"""cv_retrain: one retraining cycle of cvplatform, as an Airflow 3 TaskFlow DAG.

    ingest -> validate -> train -> evaluate -> export -> register -> approval -> record_approval -> canary_deploy

Thin wiring only (DESIGN.md, principle 2):

* The data/model stages (ingest ... export) run ``dvc repro <stage>`` in the project
  (``cvplatform.pipeline``), so Airflow and a local ``dvc repro`` share one pipeline
  definition, one cache and one ``dvc.lock``; each stage's outputs are pushed to the
  DVC remote. A stage that is up to date is skipped by DVC, so a cleared task re-runs
  idempotently.
* ``register`` calls the registry (idempotent: the same training run + artifact gives
  the same version). ``approval`` is a human-in-the-loop task in the Airflow UI whose
  answer ``record_approval`` records through the registry's own approve/reject rules
  (four-eyes included); a rejection or a timeout ends the run without deploying.
* ``canary_deploy`` (final) canaries the approved version on the serving deployment
  named by ``deploy.server`` (or ``$CVPLATFORM_DEPLOY_SERVER``), a long-running
  ``cvplatform serve``, judged on the traffic it receives; it promotes the version or
  rolls it back. Only when no server is configured (``deploy.server: null``, the
  embedded default) does it start a private loopback ``cvplatform serve`` process with
  replayed held-out traffic instead. A rollback ends the task with one line saying
  ``ROLLED BACK: ...`` and why (see docs/runbooks/rolled-back-canary.md).

Tasks return small references only (paths, hashes, run ids, versions). Nothing
heavy is imported at parse time: each task imports what it needs in its body.
The project the tasks run in is ``CVPLATFORM_ROOT`` (default: the folder that holds
this ``dags/`` folder); schedule, timeouts, retries and reviewers come from its
``params.yaml`` (``orchestration`` and ``registry`` sections).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

import yaml
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param, dag, get_current_context, task

PROJECT_ROOT = Path(os.environ.get("CVPLATFORM_ROOT", Path(__file__).resolve().parent.parent))


def _config() -> dict:
    """The orchestration + registry sections of params.yaml (plain YAML: cheap at parse time)."""
    try:
        data = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        data = {}
    return {"orchestration": data.get("orchestration") or {}, "registry": data.get("registry") or {}}


CFG = _config()
ORCH = CFG["orchestration"]
REVIEWERS = CFG["registry"].get("reviewers") or None
TASK_TIMEOUT = timedelta(minutes=float(ORCH.get("task_timeout_minutes", 120)))
SERVER_RETRIES = {
    "retries": int(ORCH.get("retries", 2)),
    "retry_delay": timedelta(seconds=int(ORCH.get("retry_delay_s", 30))),
    "retry_exponential_backoff": True,
}


def _on_failure(context):
    from cvplatform.orchestration import log_failure

    log_failure(context)


def _params():
    """Load the project's params.yaml inside a running task."""
    from cvplatform.config import load_params

    return load_params(PROJECT_ROOT / "params.yaml")


def _repro(stage: str) -> dict:
    """dvc repro <stage>, then push its outputs; returns what ran and the data version."""
    from cvplatform.pipeline import push, repro
    from cvplatform.tracking import data_version

    run = repro(stage, PROJECT_ROOT)
    if ORCH.get("push_to_remote", True):
        push(PROJECT_ROOT, [stage])
    manifest = PROJECT_ROOT / "data/processed/manifest.parquet"
    return {
        "stage": stage,
        "ran": list(run.ran_stages),
        "data_hash": data_version(manifest, PROJECT_ROOT).md5 if manifest.exists() else None,
        "summary": str(PROJECT_ROOT / "artifacts" / stage / "summary.json"),
    }


@dag(
    dag_id="cv_retrain",
    description="Retrain, evaluate, export, register, approve and canary-deploy a vision model (cvplatform).",
    schedule=ORCH.get("schedule", "@weekly"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["cvplatform", "retrain"],
    default_args={
        "retries": 1,
        "retry_delay": timedelta(seconds=10),
        "execution_timeout": TASK_TIMEOUT,
        "on_failure_callback": _on_failure,
    },
    params={
        "source": Param("", type="string", title="Data source",
                        description="folder:PATH | s3://bucket/prefix | digits | shapes; empty = params.yaml"),
        "epochs": Param(0, type="integer", minimum=0, title="Epochs", description="0 = params.yaml"),
        "arch": Param("", type="string", title="Architecture",
                      enum=["", "small_cnn", "resnet", "mobilenet_v2"], description="empty = params.yaml"),
        "canary_policy": Param("", type="string", title="Canary policy",
                               description="configs/deploy/*.yaml; empty = params.yaml"),
        "overrides": Param([], type="array", items={"type": "string"}, title="Extra overrides",
                           description="key.path=value, e.g. train.batch_size=32"),
        "reason": Param("", type="string", title="Reason",
                        description="Why this run was started (cv_monitor records the drift it found); not a setting"),
    },
    doc_md=__doc__,
)
def cv_retrain():
    @task
    def ingest() -> dict:
        """Apply the trigger form to params.yaml (like `dvc exp run -S`), then `dvc repro ingest`."""
        from cvplatform.orchestration import form_overrides
        from cvplatform.pipeline import apply_params_overrides

        changed = apply_params_overrides(PROJECT_ROOT, form_overrides(get_current_context()["params"]))
        return {**_repro("ingest"), "params_changed": changed}

    @task
    def validate(_: dict) -> dict:
        """Great Expectations suite over the manifest; a failure fails the run here."""
        return _repro("validate")

    @task
    def train(_: dict) -> dict:
        """Lightning training tracked in MLflow (the Airflow run id is tagged on the run)."""
        import json

        out = _repro("train")
        summary = json.loads((PROJECT_ROOT / "artifacts/train/summary.json").read_text())
        return {**out, "mlflow_run_id": summary.get("run_id"), "best_metrics": summary.get("best_metrics")}

    @task
    def evaluate(_: dict) -> dict:
        """Scenario suite + release gates; a failed must-pass gate stops the run before export."""
        return _repro("evaluate")

    @task
    def export(_: dict) -> dict:
        """ONNX export with the parity gate, INT8 decision and benchmark."""
        import json

        out = _repro("export")
        summary = json.loads((PROJECT_ROOT / "artifacts/export/summary.json").read_text())
        return {**out, "chosen": summary.get("chosen"), "sha256": summary.get("sha256")}

    @task(**SERVER_RETRIES)
    def register(exported: dict) -> dict:
        """New registry version with lineage tags (idempotent), alias `challenger`, status pending."""
        from cvplatform.orchestration import approval_body, mlflow_ui_url
        from cvplatform.registry import register_model

        reg = register_model(_params(), root=PROJECT_ROOT)
        ref = {
            "model_name": reg.model_name,
            "version": reg.version,
            "model_uri": reg.model_uri,
            "created": reg.created,
            "gates_passed": reg.gates_passed,
            "precision": reg.precision,
            "artifact_sha256": reg.artifact_sha256,
            "author": reg.author,
            "data_hash": exported.get("data_hash"),
            "ui_url": mlflow_ui_url(reg.tracking_uri, reg.model_name, reg.version),
        }
        ref["approval_body"] = approval_body(PROJECT_ROOT, ref)
        return ref

    registered = register(export(evaluate(train(validate(ingest())))))

    approval = HITLOperator(
        task_id="approval",
        subject="Approve {{ ti.xcom_pull(task_ids='register')['model_name'] }} "
                "version {{ ti.xcom_pull(task_ids='register')['version'] }} for a canary deploy?",
        body="{{ ti.xcom_pull(task_ids='register')['approval_body'] }}",
        options=["Approve", "Reject"],
        defaults=["Reject"],  # what a timeout chooses: a timeout counts as a rejection
        multiple=False,
        params={"comment": Param("", type="string", title="Comment (recorded on the model version)")},
        assigned_users=[{"id": r, "name": r} for r in REVIEWERS] if REVIEWERS else None,
        response_timeout=timedelta(hours=float(ORCH.get("approval_timeout_hours", 72))),
        execution_timeout=None,
    )

    @task.short_circuit(**SERVER_RETRIES)
    def record_approval(decision: dict, reg: dict) -> bool:
        """Record the reviewer's decision with the registry's rules; False (reject/timeout) skips the deploy."""
        import logging

        from cvplatform.registry import approve, reject
        from cvplatform.registry.approvals import TIMEOUT_REVIEWER
        from cvplatform.registry.errors import AlreadyApprovedError, AlreadyRejectedError

        log = logging.getLogger("cv_retrain.record_approval")
        chosen = (decision or {}).get("chosen_options") or ["Reject"]
        user = (decision or {}).get("responded_by_user") or {}
        reviewer = user.get("name") or user.get("id")
        comment = ((decision or {}).get("params_input") or {}).get("comment") or ""
        name, version = reg["model_name"], reg["version"]
        if chosen == ["Approve"]:
            try:
                res = approve(name, version, reviewer, comment, params=_params(), root=PROJECT_ROOT)
                log.info("%s", "\n".join(res.lines()))
            except AlreadyApprovedError as exc:  # a retried/cleared task: the decision is already recorded
                log.info("already approved, nothing to record: %s", exc)
            return True
        if reviewer:
            why = f"rejected by {reviewer} in the Airflow UI" + (f": {comment}" if comment else "")
            who, text = reviewer, comment or "rejected in the Airflow UI"
        else:
            why = "no reviewer answered before the approval timeout (counts as a rejection)"
            who, text = TIMEOUT_REVIEWER, why
        try:
            res = reject(name, version, who, text, params=_params(), root=PROJECT_ROOT)
            log.info("%s", "\n".join(res.lines()))
        except AlreadyRejectedError as exc:
            log.info("already rejected, nothing to record: %s", exc)
        log.warning("NOT deploying %s version %s: %s", name, version, why)
        return False

    @task(**SERVER_RETRIES)
    def canary_deploy(reg: dict) -> dict:
        """Final task: canary the approved version on the configured serving deployment; promote or roll back."""
        import logging

        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        from cvplatform.deploy.canary import DECISION_PROMOTE, DECISION_ROLLBACK, run_deploy

        result = run_deploy(_params(), reg["version"], root=PROJECT_ROOT)
        logging.getLogger("cv_retrain.canary_deploy").info("%s", "\n".join(result.lines()))
        if result.decision == DECISION_PROMOTE:
            return {"model_name": reg["model_name"], "version": reg["version"], "decision": result.decision,
                    "server": result.server, "traffic": result.traffic, "served_version": result.served_version,
                    "summary": result.one_line()}
        # one line an operator reads in the grid: "ROLLED BACK: <model> v<N> on <server> (...): <first reason>; ..."
        message = f"{result.one_line()}. See docs/runbooks/rolled-back-canary.md"
        if result.decision == DECISION_ROLLBACK:  # a decision, not a transient error: fail without retrying
            raise AirflowFailException(message)
        raise AirflowException(message)  # inconclusive (too little traffic): retried with backoff

    recorded = record_approval(approval.output, registered)
    registered >> approval
    recorded >> canary_deploy(registered)


cv_retrain()
