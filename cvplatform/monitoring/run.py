"""The ``monitor`` stage: is served traffic still like the training data?

:func:`run_monitor`

1. loads the drift policy (``monitor.policy``, ``configs/monitor/drift.yaml``);
2. gets the training reference (``artifacts/monitor/reference.json``, rebuilt when the
   manifest's data hash changes; :mod:`cvplatform.monitoring.reference`);
3. reads the inference server's request log (``monitor.log_dir``) for the window
   ``[until - window_hours, until)`` plus the baseline period before it;
4. runs :func:`~cvplatform.monitoring.drift.check_drift`;
5. writes ``artifacts/monitor/summary.json`` (verdict, reason, every check) and
   ``artifacts/monitor/report.md``, and, when ``monitor.log_to_mlflow``, logs every
   check's value, the verdict and the reason (tag ``drift.reason``) to a run of the
   MLflow experiment ``monitor.experiment``.

Drift is a finding, not an error: the function returns normally either way and the
caller acts (the CLI prints the verdict, ``--fail-on-drift`` exits 3; the cv_monitor
DAG triggers cv_retrain).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from cvplatform.stage import StageResult

log = logging.getLogger(__name__)

STAGE = "monitor"


@dataclass
class MonitorResult(StageResult):
    """What one monitoring pass found (``artifacts/monitor/summary.json``)."""

    stage: ClassVar[str] = STAGE

    drifted: bool
    reason: str
    reasons: list[str]
    insufficient: bool
    window_start: str
    window_end: str
    window_hours: float
    n_logged: int
    n_served: int
    traffic: dict[str, int]
    n_reference: int
    reference_data_hash: str
    reference_cached: bool
    checks: list[dict[str, Any]]
    statistics: dict[str, dict[str, Any]]
    reference_classes: dict[str, float]
    """Class shares of the training set (``summary.json`` also carries them as ``reference_labels``, their former name)."""
    predicted: dict[str, float]
    mean_confidence: float | None
    baseline_confidence: float | None
    model_version: str | None
    policy: str
    log_dir: str
    report: str
    mlflow_run_id: str | None = None
    mlflow_note: str = ""
    airflow_run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    objects: dict[str, Any] = field(default_factory=dict)
    """For a task with objects (detection): training vs served objects per image, area, class shares, scores."""

    @property
    def reference_labels(self) -> dict[str, float]:
        """The former name of :attr:`reference_classes`."""
        return self.reference_classes

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "reference_labels": self.reference_classes}

    @property
    def verdict(self) -> str:
        """``DRIFT`` | ``NO DRIFT`` | ``INSUFFICIENT TRAFFIC``."""
        if self.drifted:
            return "DRIFT"
        return "INSUFFICIENT TRAFFIC" if self.insufficient else "NO DRIFT"

    def lines(self) -> list[str]:
        out = [
            f"monitor: {self.verdict} - {self.reason}",
            f"  window {self.window_start} .. {self.window_end} ({self.window_hours:g} h): "
            f"{self.n_served} served image(s) counted, {self.n_logged} logged",
            f"  reference: {self.n_reference} train image(s), data {self.reference_data_hash[:12]}"
            f"{' (cached)' if self.reference_cached else ' (built)'}",
        ]
        for c in self.checks:
            mark = {"passed": "ok  ", "failed": "FAIL", "skipped": "skip"}[c["status"]]
            out.append(f"  [{mark}] {c['reason']}")
        out.append(f"  report: {self.report}")
        if self.mlflow_run_id:
            out.append(f"  mlflow run: {self.mlflow_run_id}")
        elif self.mlflow_note:
            out.append(f"  mlflow: {self.mlflow_note}")
        return out


def _utc(t: datetime | str | None) -> datetime | None:
    from cvplatform.monitoring.inference_log import _as_utc

    return _as_utc(t)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_report(result: MonitorResult) -> str:
    """The Markdown report of one monitoring pass (``artifacts/monitor/report.md``).

    Example:
        >>> print(render_report(result))  # doctest: +SKIP
    """
    lines = [
        f"# Drift report: {result.verdict}",
        "",
        f"**{result.reason}**",
        "",
        f"- window: {result.window_start} .. {result.window_end} ({result.window_hours:g} h)",
        f"- traffic: {result.n_served} served image(s) counted ({result.n_logged} logged; by variant: "
        + (", ".join(f"{k} {v}" for k, v in sorted(result.traffic.items())) or "none") + ")",
        f"- reference: {result.n_reference} train image(s) of data version `{result.reference_data_hash}`",
        f"- policy: `{result.policy}`; request log: `{result.log_dir}`",
        "",
        "## Checks",
        "",
        "| check | value | threshold | status | reason |",
        "|---|---:|---:|---|---|",
    ]
    for c in result.checks:
        lines.append(f"| {c['name']} | {_fmt(c['value'])} | {_fmt(c['threshold'])} | {c['status']} | "
                     f"{c['reason'].replace('|', '/')} |")
    lines += ["", "## Input statistics", "", "| statistic | training mean | served mean | PSI | KS | served n |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, row in result.statistics.items():
        lines.append(f"| {name} | {_fmt(row.get('reference_mean'))} | {_fmt(row.get('current_mean'))} | "
                     f"{_fmt(row.get('psi'))} | {_fmt(row.get('ks'))} | {row.get('n_current', 0)} |")
    classes = sorted(set(result.reference_classes) | set(result.predicted))
    lines += ["", "## Predicted classes", "", "| class | training share | predicted share |", "|---|---:|---:|"]
    for c in classes:
        lines.append(f"| {c} | {result.reference_classes.get(c, 0.0):.1%} | {result.predicted.get(c, 0.0):.1%} |")
    lines += [
        "",
        f"Mean confidence of the predictions: {_fmt(result.mean_confidence)} in the window"
        + (f", {_fmt(result.baseline_confidence)} in the baseline ({result.model_version})"
           if result.baseline_confidence is not None else "")
        + ".",
        "",
    ]
    obj = result.objects
    if obj:
        lines += ["## Objects", "", "| measure | training | served |", "|---|---:|---:|",
                  f"| objects per image | {_fmt(obj.get('reference_per_image'))} | {_fmt(obj.get('current_per_image'))} |",
                  f"| object area (share of the image) | {_fmt(obj.get('reference_area'))} | "
                  f"{_fmt(obj.get('current_area'))} |"]
        rc, cc = obj.get("reference_classes") or {}, obj.get("current_classes") or {}
        for c in sorted(set(rc) | set(cc)):
            lines.append(f"| objects of class {c} | {rc.get(c, 0.0):.1%} | {cc.get(c, 0.0):.1%} |")
        lines += ["", f"Mean object score: {_fmt(obj.get('mean_score'))} in the window"
                  + (f", {_fmt(obj.get('baseline_score'))} in the baseline" if obj.get("baseline_score") is not None
                     else "") + f" ({obj.get('n_objects', 0)} objects on {obj.get('n_images', 0)} images).", ""]
    return "\n".join(lines)


def _log_mlflow(result: MonitorResult, report: Any, policy: Any, params: Any, root: Path,
                files: list[Path]) -> str:
    from cvplatform.tracking import TrackingRun, airflow_run_id

    cfg = params.monitor
    tags = {
        "cvplatform.stage": STAGE,
        "drift.drifted": str(result.drifted).lower(),
        "drift.verdict": result.verdict,
        "drift.reason": result.reason[:5000],
        "drift.window_start": result.window_start,
        "drift.window_end": result.window_end,
        "data_hash": result.reference_data_hash,
        "airflow_run_id": airflow_run_id(),
        "mlflow.note.content": result.reason[:5000],
    }
    run = TrackingRun.start(root, cfg.experiment, run_name=f"monitor-{result.window_end}", tags=tags)
    try:
        run.log_params({
            "window_hours": result.window_hours,
            "min_samples": policy.min_samples,
            "bins": policy.bins,
            "variants": ",".join(policy.variants),
            "policy": result.policy,
            "log_dir": result.log_dir,
            "reference_max_images": cfg.reference_max_images,
        })
        metrics: dict[str, float] = {
            "drifted": float(result.drifted),
            "n_served": float(result.n_served),
            "n_logged": float(result.n_logged),
            "n_failed_checks": float(len(result.reasons)),
        }
        for c in report.checks:
            if c.value is not None:
                metrics[f"{c.kind}.{c.name}"] = float(c.value)
        for name, row in report.statistics.items():
            for k in ("reference_mean", "current_mean"):
                if row.get(k) is not None:
                    metrics[f"stats.{name}.{k}"] = float(row[k])
        if report.mean_confidence is not None:
            metrics["prediction.mean_confidence"] = float(report.mean_confidence)
        run.log_epoch(0, metrics)
        for f in files:
            run.log_artifact(f)
        run.finish("FINISHED")
    except BaseException:
        run.finish("FAILED")
        raise
    return run.run_id


def _window(since: datetime | str | None, until: datetime | str | None,
            default_hours: float) -> tuple[datetime, datetime, float]:
    """``(start, end, hours)`` of the monitored window (UTC); default: the ``default_hours`` before now.

    Raises:
        ConfigError: ``since`` is not before ``until``.
    """
    from cvplatform.errors import ConfigError

    end = _utc(until) or datetime.now(UTC)
    start = _utc(since)
    if start is None:
        return end - timedelta(hours=default_hours), end, default_hours
    if start >= end:
        raise ConfigError(f"monitor: since {start.isoformat()} is not before until {end.isoformat()}; "
                          "pass an earlier --since.")
    return start, end, (end - start).total_seconds() / 3600.0


def run_monitor(
    params: Any,
    *,
    root: str | os.PathLike[str] | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> MonitorResult:
    """Compare recent served traffic with the training reference; write the summary and report.

    Args:
        params: Loaded :class:`~cvplatform.config.Params` (uses ``params.monitor``).
        root: Project root (default: cwd).
        since: Start of the window (ISO-8601 or datetime, naive = UTC); default
            ``until - window_hours``.
        until: End of the window (exclusive); default now.

    Returns:
        A :class:`MonitorResult` (also written to ``artifacts/monitor/summary.json``).

    Raises:
        ConfigError: the policy file is missing or invalid, or since/until are not times.
        DataError: the manifest or its train images cannot be read.
        RegistryError: ``monitor.log_to_mlflow`` and MLflow cannot be reached.

    Example:
        >>> from cvplatform import load_params, run_monitor
        >>> result = run_monitor(load_params("params.yaml"))  # doctest: +SKIP
        >>> result.drifted, result.reason  # doctest: +SKIP
        (False, 'no drift: 15 check(s) passed on 2400 served image(s)')
    """
    from cvplatform.config import load_config
    from cvplatform.monitoring.drift import DriftPolicy, check_drift
    from cvplatform.monitoring.inference_log import log_files, read_log
    from cvplatform.monitoring.reference import get_reference
    from cvplatform.tracking import airflow_run_id
    from cvplatform.utils.io import ProjectPaths

    cfg = params.monitor
    paths = ProjectPaths.at(root)
    out_dir = paths.artifacts(STAGE)
    out_dir.mkdir(parents=True, exist_ok=True)
    policy_path = paths.resolve(cfg.policy)
    policy = load_config(policy_path, DriftPolicy)

    start, end, hours = _window(since, until, float(cfg.window_hours or policy.window_hours))
    baseline_start = start - timedelta(hours=policy.prediction.baseline_hours)

    from cvplatform.tasks import get_task

    reference, cached = get_reference(params.project.manifest, paths.root, split="train",
                                      max_images=cfg.reference_max_images, task=get_task(params.project.task))

    log_dir = paths.resolve(cfg.log_dir)
    if not log_files(log_dir):
        log.warning("monitor: no request log files in %s; is the inference server logging requests "
                    "(monitor.log_dir)?", log_dir)
    records = read_log(log_dir, since=baseline_start, until=end)
    import pandas as pd

    in_window = records["time"] >= pd.Timestamp(start)
    current, baseline = records[in_window], records[~in_window]
    report = check_drift(reference, current, policy, baseline=baseline)

    traffic = {str(k): int(v) for k, v in current["variant"].value_counts().items()} if len(current) else {}
    report_path = out_dir / "report.md"
    result = MonitorResult(
        drifted=report.drifted, reason=report.reason, reasons=report.reasons, insufficient=report.insufficient,
        window_start=start.isoformat(timespec="seconds").replace("+00:00", "Z"),
        window_end=end.isoformat(timespec="seconds").replace("+00:00", "Z"),
        window_hours=round(hours, 6), n_logged=int(len(current)), n_served=report.n_current, traffic=traffic,
        n_reference=reference.n_images, reference_data_hash=reference.data_hash, reference_cached=cached,
        checks=[c.to_dict() for c in report.checks], statistics=report.statistics,
        reference_classes=report.reference_classes, predicted=report.predicted,
        mean_confidence=report.mean_confidence, baseline_confidence=report.baseline_confidence,
        model_version=report.model_version, policy=str(cfg.policy), log_dir=str(log_dir),
        report=str(report_path), airflow_run_id=airflow_run_id(), objects=report.objects,
    )
    report_path.write_text(render_report(result), encoding="utf-8")
    result.write_summary(out_dir)
    if report.drifted:
        log.warning("monitor: %s", result.reason)
    else:
        log.info("monitor: %s", result.reason)

    if cfg.log_to_mlflow:
        result.mlflow_run_id = _log_mlflow(result, report, policy, params, paths.root,
                                           [report_path, result.summary_path])
        result.write_summary(out_dir)
    else:
        result.mlflow_note = "monitor.log_to_mlflow is false"
        result.write_summary(out_dir)
    return result


__all__ = ["MonitorResult", "render_report", "run_monitor"]
