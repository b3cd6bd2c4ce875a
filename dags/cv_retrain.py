"""cv_retrain: one retraining cycle of cvplatform, as an Airflow 3 TaskFlow DAG.

Thin wiring only (DESIGN.md, principle 2): every task imports its stage function
inside the task body, calls it, and returns small references (paths, counts,
hashes) through XCom. No stage logic lives here, and nothing heavy is imported at
parse time.

The project root the tasks run in is ``CVPLATFORM_ROOT`` (default: the folder that
holds this ``dags/`` folder), and ``params.yaml`` there is the single source of
tunables; the trigger form's ``overrides`` are ``--set``-style ``key.path=value``
strings applied on top.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Param, dag, get_current_context, task

PROJECT_ROOT = os.environ.get("CVPLATFORM_ROOT", str(Path(__file__).resolve().parent.parent))


def _params_and_root() -> tuple[object, str]:
    """Load params.yaml (+ trigger-form overrides) inside a running task."""
    from cvplatform.config import load_params

    ctx = get_current_context()
    form = ctx["params"]
    overrides = list(form.get("overrides") or [])
    if form.get("source"):
        overrides.append(f"ingest.source={form['source']}")
    root = PROJECT_ROOT
    return load_params(Path(root) / form.get("params_file", "params.yaml"), overrides), root


@dag(
    dag_id="cv_retrain",
    description="Retrain, evaluate, export, register and deploy a vision model (cvplatform).",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["cvplatform", "retrain"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30), "execution_timeout": timedelta(hours=2)},
    params={
        "source": Param(
            "",
            type="string",
            description="Data source (folder:PATH | s3://bucket/prefix | digits | shapes); empty = params.yaml.",
        ),
        "params_file": Param("params.yaml", type="string", description="Params file, relative to the project."),
        "overrides": Param(
            [],
            type="array",
            items={"type": "string"},
            description="Extra key.path=value overrides, e.g. train.epochs=3.",
        ),
    },
    doc_md=__doc__,
)
def cv_retrain():
    @task
    def ingest() -> dict:
        """Ingest the configured source into data/raw + the manifest (quarantine what is bad)."""
        from cvplatform.data.ingest import run_ingest

        params, root = _params_and_root()
        result = run_ingest(params, root=root)
        return {
            "manifest": str(Path(root) / "data/processed/manifest.parquet"),
            "accepted": result.accepted,
            "quarantined": result.quarantined,
            "summary": str(result.summary_path),
        }

    @task
    def validate(ingested: dict) -> dict:
        """Run the Great Expectations suite over the manifest; a failure fails the task."""
        from cvplatform.data.validate import run_validate

        params, root = _params_and_root()
        result = run_validate(params, root=root)
        return {"manifest": ingested["manifest"], "summary": str(result.summary_path), "success": result.success}

    validate(ingest())


cv_retrain()
