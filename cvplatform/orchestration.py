"""Helpers for the Airflow DAGs: turn the trigger form into overrides, build the
approval text a reviewer reads in the Airflow UI, summarise failures.

Kept out of ``dags/`` so the DAG files only wire, and kept light (json/pathlib) so
callbacks can import it cheaply.
"""

from __future__ import annotations

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


def _num(v: Any, fmt: str = ".4f", unit: str = "") -> str:
    return "n/a" if not isinstance(v, int | float) else f"{v:{fmt}}{unit}"


def _vs(cand: float | None, champ: float | None, fmt: str, unit: str = "", lower_is_better: bool = True) -> str:
    """``cand (champion champ, -12%)`` with a coloured marker when the candidate is worse by more than 10 %."""
    text = _num(cand, fmt, unit)
    if champ is None:
        return text
    text += f" (champion {_num(champ, fmt, unit)}"
    if cand is not None and champ:
        change = (cand - champ) / abs(champ)
        worse = change > 0.10 if lower_is_better else change < -0.10
        text += f", {change:+.0%}{' 🟠' if worse else ''}"
    return text + ")"


def _check_line(c: Mapping[str, Any]) -> str:
    from cvplatform.evaluation.report import check_mark

    ci = c.get("ci")
    ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, list | tuple) and len(ci) == 2 else ""
    return (f"- {check_mark(str(c.get('status')), str(c.get('level')))} **{c.get('scenario')}/{c.get('name')}** "
            f"({c.get('level')}): value {_num(c.get('value'))}{ci_text} vs threshold {_num(c.get('threshold'))}: "
            f"{c.get('reason')}")


def _gate_section(gate: Mapping[str, Any], weakest: int = 5) -> list[str]:
    from cvplatform.evaluation.gates import GateCheck

    checks = [c for c in gate.get("checks") or [] if isinstance(c, dict)]
    if not checks:
        return ["#### Release gates: 🔴 NO GATE REPORT", "- artifacts/evaluate/gate_report.json is missing: do not "
                "approve; re-run `cvplatform evaluate`."]
    failed = [c for c in checks if c.get("status") == "failed" and c.get("level") == "must_pass"]
    warned = [c for c in checks if c.get("status") == "failed" and c.get("level") != "must_pass"]
    head = "🟢 PASSED" if gate.get("passed") and not failed else "🔴 FAILED"
    out = [f"#### Release gates: {head}: {len(failed)} must-pass check(s) failed, "
           f"{'🟠 ' if warned else ''}{len(warned)} warning(s), {len(checks)} checks",
           f"- suite `{gate.get('suite')}`; judged artifact sha256 `{str(gate.get('model_sha256'))[:16]}…`"]
    if gate.get("champion_note"):
        out.append(f"- champion: {gate.get('champion') or 'none'} ({gate.get('champion_note')})")
    if failed:
        out += ["", "**Failing must-pass checks**", *(_check_line(c) for c in failed[:12])]
    if warned:
        out += ["", f"**Warnings** ({len(warned)})", *(_check_line(c) for c in warned[:10])]
        if len(warned) > 10:
            out.append(f"- … {len(warned) - 10} more in the evaluation report")
    fields = ("name", "scenario", "status", "level", "reason", "value", "threshold", "ci")
    passed = [GateCheck(**{k: (tuple(c[k]) if k == "ci" and c.get(k) else c.get(k)) for k in fields})
              for c in checks if c.get("status") == "passed"]
    closest = sorted((p for p in passed if p.margin is not None and p.name not in ("images", "pass_rate")),
                     key=lambda p: p.margin or 0.0)[:weakest]
    if closest:
        out += ["", "**Weakest passing checks** (closest to their threshold)",
                *(_check_line(p.to_dict()) for p in closest)]
    return out


def approval_body(root: str | Path, registered: Mapping[str, Any]) -> str:
    """Markdown shown to the reviewer in the Airflow approval task: what the decision rests on.

    ``registered`` is the ``register`` task's return value (model name, version, uri, ...).
    The page gives the task and classes, the test-set size, the gate verdict with the failing,
    warning and weakest checks and their values (coloured markers: Airflow renders Markdown,
    not HTML), latency / size / cost against the champion, what changed since the champion
    (data version, params, compatibility) and links to the MLflow model version, the
    evaluation report and the model card (:func:`cvplatform.registry.review.review_facts`).
    """
    from cvplatform.config import DEFAULT_PARAMS, Params, load_params
    from cvplatform.registry.review import review_facts

    root = Path(root)
    name, version = str(registered.get("model_name")), str(registered.get("version"))
    params = load_params(root / DEFAULT_PARAMS) if (root / DEFAULT_PARAMS).is_file() else Params()
    f = review_facts(name, version, params=params, root=root)
    lines = [f"### {name} version {version}: approve it for a canary deploy?", ""]
    lines += _overview(f, registered)
    lines += ["", *_gate_section(f.gate)]
    lines += ["", *_serving_section(f)]
    lines += ["", *_changes_section(f)]
    lines += ["", "#### Links", *_links_section(f, root)]
    lines += ["", *(f"> note: {n}" for n in f.notes)] if f.notes else []
    lines += ["", "Approve to start the canary deploy; Reject (or no answer before the timeout) ends the run. "
              "You may not approve a version you registered or whose run you triggered (four-eyes)."]
    return "\n".join(lines)


def _overview(f: Any, registered: Mapping[str, Any]) -> list[str]:
    from cvplatform.registry.review import class_names

    names = class_names(f)
    shown = ", ".join(f"`{n}`" for n in names[:20]) + (f", … ({len(names)} in all)" if len(names) > 20 else "")
    gate, m = f.gate, f.metrics
    clean = m.get("clean") if isinstance(m.get("clean"), dict) else {}
    per_class = (gate.get("policy") or {}).get("min_images_per_class")
    sizes = [c.get("value") for c in gate.get("checks") or [] if c.get("name") == "min_images_per_class"]
    task = (f.candidate.tags.get("model.task") if f.candidate else None) or "classification"
    return [
        f"- **task**: {task}; **{len(names)} classes**: {shown or 'unknown'}",
        f"- **test set**: {gate.get('n_images', 'unknown')} images of split `{gate.get('split', 'test')}`"
        + (f"; fewest per class {int(sizes[0])} (suite minimum {per_class})" if sizes and per_class else ""),
        f"- **artifact**: `{registered.get('model_uri')}` ({registered.get('precision')}, sha256 "
        f"`{str(registered.get('artifact_sha256', ''))[:16]}…`); author `{registered.get('author')}`",
        f"- **clean accuracy** {_num(clean.get('accuracy'))} (95 % Wilson interval "
        f"[{_num(clean.get('accuracy_low'), '.3f')}, {_num(clean.get('accuracy_high'), '.3f')}]), macro-F1 "
        f"{_num(clean.get('macro_f1'))}, ECE {_num(clean.get('ece'))}",
    ]


def _serving_section(f: Any) -> list[str]:
    from cvplatform.registry.review import accuracy

    cand, champ = f.candidate, f.champion
    if cand is None:
        return ["#### Serving cost", "- registry facts unavailable"]

    def pair(key: str) -> tuple[float | None, float | None]:
        return cand.number(key), champ.number(key) if champ else None

    title = f"#### Against the champion (v{champ.version})" if champ else "#### Serving cost (no champion yet)"
    size = pair("artifact.size_bytes")
    return [
        title,
        f"- clean accuracy (as registered): {_vs(accuracy(cand), accuracy(champ), '.4f', lower_is_better=False)}",
        f"- latency p50, batch 1: {_vs(*pair('metrics.latency_p50_ms'), '.3f', ' ms')}",
        f"- latency p95, batch 1: {_vs(*pair('metrics.latency_p95_ms'), '.3f', ' ms')}",
        f"- size: {_vs(size[0] / 1024 if size[0] else None, size[1] / 1024 if size[1] else None, '.1f', ' KiB')}",
        f"- cost per 1k images: {_vs(*pair('metrics.cost_per_1k_usd'), '.3g', ' USD')}",
        "- latency and cost come from each version's own export benchmark (same hardware only if exported on "
        "the same machine); the canary measures both on live traffic.",
    ]


def _changes_section(f: Any) -> list[str]:
    out = ["#### What changed since the champion", *(f"- {c}" for c in f.changes)]
    if f.params_diff:
        out.append(f"- params ({len(f.params_diff)} changed):")
        out += [f"  - `{k}`: `{a}` -> `{b}`" for k, a, b in f.params_diff[:25]]
        if len(f.params_diff) > 25:
            out.append(f"  - … {len(f.params_diff) - 25} more")
    elif f.champion is not None:
        out.append("- params: no difference in the logged params")
    return out


def _links_section(f: Any, root: Path) -> list[str]:
    from cvplatform.registry.identity import is_tracking_server

    links = f.links
    out = [f"- [MLflow model version]({links['model_version']})"]
    if "report" in links:
        out += [f"- [evaluation report]({links['report']})", f"- [model card]({links['model_card']})",
                f"- [gate report]({links['gate_report']})"]
    if not is_tracking_server(f.tracking_uri):
        out.append(f"- embedded store: these links open after `mlflow ui --backend-store-uri {f.tracking_uri}` "
                   f"(files: `{root / 'artifacts/evaluate/report.html'}`, `{root / 'artifacts/evaluate/model_card.md'}`)")
    out.append(f"- audit trail: `cvplatform registry verify {f.model} {f.version}`")
    return out


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
