"""Helpers for the Airflow DAGs: turn the trigger form into overrides, build the
approval text a reviewer reads in the Airflow UI, summarise failures.

Kept out of ``dags/`` so the DAG files only wire, and kept light (json/pathlib) so
callbacks can import it cheaply.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: trigger-form field -> params key it overrides
FORM_KEYS: dict[str, str] = {
    "source": "ingest.source",
    "epochs": "train.epochs",
    "arch": "train.model.arch",
    "canary_policy": "deploy.policy",
}


def form_overrides(form: Mapping[str, Any]) -> list[str]:
    """``key.path=value`` overrides from the cv_retrain trigger form; an empty field means "use params.yaml".

    Each architecture keeps its arguments in its own section of params.yaml
    (``train.model.<arch>``), so choosing an architecture changes only ``train.model.arch``.

    Example:
        >>> form_overrides({"source": "shapes", "epochs": 3, "arch": None, "overrides": ["train.batch_size=32"]})
        ['ingest.source=shapes', 'train.epochs=3', 'train.batch_size=32']
    """
    out: list[str] = []
    for field, key in FORM_KEYS.items():
        value = form.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        out.append(f"{key}={value}")
    out.extend(str(o).strip() for o in (form.get("overrides") or []) if str(o).strip())
    return out


def prepare_run(project: str | Path, run_id: str, form: Mapping[str, Any], *, keep: int = 5) -> dict[str, Any] | None:
    """The first task of a cv_retrain run: its working copy, and whether anything is new.

    Makes the run's working copy with the form's overrides (:func:`cvplatform.workspace.prepare_workspace`),
    then compares its inputs with the ``dvc.lock`` of the newest registered version
    (:func:`cvplatform.registry.lineage.latest_pipeline_lock`): source images, params,
    configuration files and code. When nothing changed it returns None (the DAG skips every
    later task: no training, no registry version, no approval request); otherwise the
    working copy's reference, with the list of changes, for the later tasks.

    Example:
        >>> ref = prepare_run(".", "scheduled__2026-01-05", {})  # doctest: +SKIP
        >>> ref is None  # doctest: +SKIP
        True
    """
    from cvplatform.registry.lineage import latest_pipeline_lock
    from cvplatform.workspace import changes_since, prepare_workspace, restore_outputs

    overrides = form_overrides(form)
    reason = str(form.get("reason") or "").strip()
    if reason:
        log.info("run reason: %s", reason)
    ws = prepare_workspace(project, run_id, overrides, keep=keep)
    ws.activate()
    previous = latest_pipeline_lock(ws.params(), ws.root)
    if previous is None:
        changes = ["no registered version to compare with: first run"]
        log.info("nothing to compare with (no registered version has a pipeline lock): running every stage")
    else:
        changes = changes_since(ws, previous.lock_text)
        if not changes:
            log.info(
                "NOTHING NEW: same source images, params, configuration files and code as %s version %s "
                "(%s). No stage runs, no version is registered, no approval is requested.",
                previous.model_name, previous.version, previous.status)
            return None
        log.info("changed since %s version %s (%s):\n  %s", previous.model_name, previous.version,
                 previous.status, "\n  ".join(changes[:40]))
    if previous is None:
        restore_outputs(ws)  # outputs of unchanged stages come back from the DVC cache instead of being recomputed
    ref = ws.to_ref()
    ref["changes"] = changes[:40]
    ref["compared_with"] = previous.version if previous else None
    ref["reason"] = reason
    return ref


def approval_body(root: str | Path, registered: Mapping[str, Any]) -> str:
    """Markdown shown to the reviewer in the Airflow approval task: gates, metrics, model card.

    ``registered`` is the ``register`` task's return value (model name, version, uri, ...).
    """
    root = Path(root)
    lines = [
        f"### {registered.get('model_name')} version {registered.get('version')}",
        f"- model: `{registered.get('model_uri')}` ({registered.get('precision')}, sha256 "
        f"`{str(registered.get('artifact_sha256', ''))[:16]}…`)",
        f"- author: `{registered.get('author')}` (you may not approve your own version)",
        f"- data version (DVC md5): `{registered.get('data_hash')}`",
    ]
    gate_file = root / "artifacts/evaluate/gate_report.json"
    if gate_file.is_file():
        gate = json.loads(gate_file.read_text())
        verdict = "PASSED" if gate.get("passed") else "FAILED"
        lines += ["", f"#### Release gates: {verdict} (scenario pass rate {gate.get('pass_rate', 0):.0%})"]
        champ = gate.get("champion_note") or (f"compared with champion {gate['champion']}" if gate.get("champion") else "")
        if champ:
            lines.append(f"- champion: {champ}")
        bad = [c for c in gate.get("checks", []) if c.get("status") == "failed"]
        for c in bad[:12]:
            lines.append(f"- **{c.get('level')}** {c.get('scenario')}/{c.get('name')}: {c.get('reason')}")
        if not bad:
            lines.append("- every check passed")
    metrics_file = root / "artifacts/evaluate/metrics.json"
    if metrics_file.is_file():
        m = json.loads(metrics_file.read_text())
        clean = m.get("clean") if isinstance(m.get("clean"), dict) else {}
        if clean:
            lines.append(f"- clean accuracy {clean.get('accuracy', float('nan')):.4f}, "
                         f"macro-F1 {clean.get('macro_f1', float('nan')):.4f}")
    lines += ["", "#### Links"]
    if registered.get("ui_url"):
        lines.append(f"- MLflow model version: {registered['ui_url']}")
    lines.append(f"- model card: `{root / 'artifacts/export/model_card.md'}`")
    lines.append(f"- evaluation report: `{root / 'artifacts/evaluate/report.html'}`")
    lines += ["", "Approve to start the canary deploy; Reject (or no answer before the timeout) ends the run."]
    return "\n".join(lines)


def mlflow_ui_url(tracking_uri: str, name: str, version: str) -> str | None:
    """The MLflow UI page of a model version when the tracking URI is a server, else None."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/models/{name}/versions/{version}"
    return None


def failure_summary(context: Mapping[str, Any]) -> str:
    """One paragraph saying what failed, where, and where its logs are (Airflow on_failure_callback)."""
    ti = context.get("task_instance") or context.get("ti")
    dag_run = context.get("dag_run")
    exc = context.get("exception")
    task_id = getattr(ti, "task_id", "?")
    try_number = getattr(ti, "try_number", "?")
    max_tries = getattr(getattr(ti, "task", None), "retries", None)
    log_url = getattr(ti, "log_url", None)
    run_id = getattr(dag_run, "run_id", None) or context.get("run_id")
    dag_id = getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", "?")
    what = f"{type(exc).__name__}: {exc}" if exc is not None else "no exception recorded"
    first = str(what).strip().splitlines()[0][:500] if what else ""
    hints = {
        "validate": "the data failed its expectation suite: see artifacts/validate/data_docs/index.html "
                    "and docs/runbooks/failed-gate.md",
        "evaluate": "a must-pass release gate failed: see artifacts/evaluate/report.html and docs/runbooks/failed-gate.md",
        "record_approval": "the reviewer's decision could not be recorded: see docs/runbooks/rejected-approval.md",
        "canary_deploy": "the canary was rolled back or could not run: see artifacts/deploy/summary.json "
                         "and docs/runbooks/rolled-back-canary.md",
    }
    return (
        f"cvplatform: task '{task_id}' of DAG '{dag_id}' failed in run '{run_id}' (try {try_number}"
        + (f" of {max_tries + 1}" if isinstance(max_tries, int) else "")
        + f"). Cause: {first}. "
        + (f"Next: {hints[task_id]}. " if task_id in hints else "")
        + (f"Logs: {log_url}" if log_url else "Logs: the task's log in the Airflow UI (Grid view -> task -> Logs).")
    )


def log_failure(context: Mapping[str, Any]) -> None:
    """Airflow ``on_failure_callback``: log :func:`failure_summary`."""
    log.error(failure_summary(context))
