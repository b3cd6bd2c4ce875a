"""cv_retrain: one retraining cycle of cvplatform, as an Airflow 3 TaskFlow DAG.

    prepare -> ingest -> validate -> train -> export -> evaluate -> register -> route
            -> approval -> record_approval -> canary_deploy

Thin wiring only: every task calls one cvplatform function.

* ``prepare`` makes the run's own working copy of the project (``cvplatform.workspace``):
  the trigger form's values are applied there, never to the project's ``params.yaml``, and
  recorded on the MLflow runs and the registry version. It then compares the run's inputs
  (source images, params, configuration files, code) with the pipeline state of the newest
  registered version: when nothing changed, the run ends here, green, as "nothing new"
  (no training, no registry version, no approval request).
* The data/model stages (ingest ... evaluate; the gates judge the exported artifact that
  ships) run ``dvc repro <stage>`` in that copy (``cvplatform.pipeline``), sharing the
  project's DVC cache and remote; unchanged stages are restored from the cache. Each stage's outputs are pushed to the DVC remote.
* ``register`` calls the registry (idempotent). ``route`` asks for a review only for a
  version that is still pending: a version decided earlier is never asked about again.
  ``approval`` is a human-in-the-loop task in the Airflow UI whose answer
  ``record_approval`` records through the registry's own approve/reject rules (four-eyes
  included); a rejection or a timeout ends the run without deploying.
* ``canary_deploy`` (final) canaries the approved version on the serving deployment
  named by ``deploy.server`` (or ``$CVPLATFORM_DEPLOY_SERVER``), a long-running
  ``cvplatform serve``, judged on the traffic it receives; it promotes the version or
  rolls it back. Only when no server is configured (``deploy.server: null``, the
  embedded default) does it start a private loopback ``cvplatform serve`` process with
  replayed held-out traffic instead. A rollback ends the task with one line saying
  ``ROLLED BACK: ...`` and why (see docs/runbooks/rolled-back-canary.md).

Tasks return small references only (paths, run ids, versions). Nothing heavy is imported
at parse time: each task imports what it needs in its body. The project is
``CVPLATFORM_ROOT`` (default: the folder that holds this ``dags/`` folder); schedule,
timeouts, retries and reviewers come from its ``params.yaml`` (``orchestration`` and
``registry`` sections).
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


def _workspace(ref: dict):
    """The run's working copy (made by ``prepare``), with its environment applied to this process."""
    from cvplatform.workspace import RunWorkspace

    ws = RunWorkspace.from_ref(ref)
    ws.activate()
    return ws


def _repro(stage: str, ref: dict) -> dict:
    """dvc repro <stage> in the run's working copy, then push its outputs; returns what ran."""
    from cvplatform.config import load_params
    from cvplatform.pipeline import push, repro
    from cvplatform.tracking import data_version

    ws = _workspace(ref)
    run = repro(stage, ws.root, env=ws.env())
    if ORCH.get("push_to_remote", True):
        push(ws.root, [stage], env=ws.env())
    manifest = ws.path / load_params(ws.path / "params.yaml").project.manifest  # the copy's, overrides applied
    return {
        **ref,
        "stage": stage,
        "ran": list(run.ran_stages),
        "data_hash": data_version(manifest, ws.root).md5 if manifest.exists() else None,
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
    params={  # every field may stay empty: empty = the project's params.yaml
        "source": Param(None, type=["null", "string"], title="Data source",
                        description="A folder path, s3://bucket/prefix, digits, shapes or scenes; empty = params.yaml"),
        "epochs": Param(None, type=["null", "integer"], minimum=1, title="Epochs",
                        description="Maximum training epochs; empty = params.yaml"),
        "arch": Param(None, type=["null", "string"], title="Architecture",
                      enum=[None, "small_cnn", "resnet", "mobilenet_v2"],
                      values_display={None: "(params.yaml)", "small_cnn": "small_cnn", "resnet": "resnet",
                                      "mobilenet_v2": "mobilenet_v2"},
                      description="Only the architecture changes: its arguments come from its own section of "
                                  "params.yaml (train.model.<arch>); empty = params.yaml"),
        "canary_policy": Param(None, type=["null", "string"], title="Canary policy",
                               description="configs/deploy/*.yaml; empty = params.yaml"),
        "overrides": Param([], type=["null", "array"], items={"type": "string"}, title="Extra overrides",
                           description="key.path=value, e.g. train.batch_size=32 (this run only)"),
        "reason": Param(None, type=["null", "string"], title="Reason",
                        description="Why this run was started (cv_monitor records the drift it found); not a setting"),
    },
    doc_md=__doc__,
)
def cv_retrain():
    @task.short_circuit
    def prepare() -> dict | None:
        """The run's working copy (trigger form applied there); ends the run early when nothing is new."""
        from cvplatform.orchestration import prepare_run

        ctx = get_current_context()
        return prepare_run(PROJECT_ROOT, ctx["run_id"], ctx["params"], keep=int(ORCH.get("keep_workspaces", 5)))

    @task
    def ingest(ref: dict) -> dict:
        """`dvc repro ingest`: new, changed or removed source images are ingested; an unchanged source is restored."""
        return _repro("ingest", ref)

    @task
    def validate(ref: dict) -> dict:
        """Great Expectations suite over the manifest; a failure fails the run here."""
        return _repro("validate", ref)

    @task
    def train(ref: dict) -> dict:
        """Lightning training tracked in MLflow (the Airflow run id and the overrides are tagged on the run)."""
        from cvplatform.artifacts import TrainSummary

        out = _repro("train", ref)
        summary = TrainSummary.read(TrainSummary.at(ref["root"]))
        return {**out, "mlflow_run_id": summary.run_id, "best_metrics": summary.best_metrics}

    @task
    def export(ref: dict) -> dict:
        """ONNX export with the parity gate, INT8 decision and benchmark (evaluate judges the chosen file)."""
        from cvplatform.artifacts import ExportSummary

        out = _repro("export", ref)
        summary = ExportSummary.read(ExportSummary.at(ref["root"]))
        return {**out, "chosen": summary.chosen, "sha256": summary.sha256}

    @task
    def evaluate(ref: dict) -> dict:
        """Scenario suite + release gates on the exported artifact; a failed must-pass gate stops the run."""
        return _repro("evaluate", ref)

    @task(**SERVER_RETRIES)
    def register(evaluated: dict) -> dict:
        """New registry version with lineage tags (idempotent), alias `challenger`, status pending."""
        from cvplatform.orchestration import approval_body, mlflow_ui_url
        from cvplatform.registry import register_model

        ws = _workspace(evaluated)
        dag_run = get_current_context().get("dag_run")
        reg = register_model(ws.params(), root=ws.root,
                             triggered_by=getattr(dag_run, "triggering_user_name", None))  # may not approve it
        ref = {
            "workspace": ws.to_ref(),
            "model_name": reg.model_name,
            "version": reg.version,
            "model_uri": reg.model_uri,
            "created": reg.created,
            "gates_passed": reg.gates_passed,
            "precision": reg.precision,
            "artifact_sha256": reg.artifact_sha256,
            "author": reg.author,
            "status": reg.tags.get("approval.status", "pending"),
            "data_hash": evaluated.get("data_hash"),
            "ui_url": mlflow_ui_url(reg.tracking_uri, reg.model_name, reg.version),
        }
        ref["approval_body"] = approval_body(ws.path, ref)
        return ref

    @task.branch
    def route(reg: dict) -> list[str]:
        """Ask a reviewer only about a pending version; a version decided earlier is never asked about again."""
        import logging

        if reg.get("status", "pending") == "pending":
            return ["approval"]
        logging.getLogger("cv_retrain.route").info(
            "%s version %s was already decided (%s): not asking again, nothing to deploy.",
            reg["model_name"], reg["version"], reg["status"])
        return []

    registered = register(evaluate(export(train(validate(ingest(prepare()))))))
    routed = route(registered)

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
        ws = _workspace(reg["workspace"])
        if chosen == ["Approve"]:
            try:  # the reviewer is the Airflow UI user who answered (identity source "airflow")
                res = approve(name, version, None, comment, params=ws.params(), root=ws.root,
                              airflow_user=reviewer)
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
            res = reject(name, version, None if reviewer else who, text, params=ws.params(), root=ws.root,
                         airflow_user=reviewer or None)
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

        ws = _workspace(reg["workspace"])
        result = run_deploy(ws.params(), reg["version"], root=ws.root)
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
    routed >> approval
    recorded >> canary_deploy(registered)


cv_retrain()
