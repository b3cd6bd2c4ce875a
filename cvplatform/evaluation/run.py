"""The ``evaluate`` stage: run a scenario suite on a model, decide the gates, write the report.

``run_evaluate(params)`` (also ``cvplatform evaluate``, the DVC stage and the
Airflow task):

1. loads the suite (``evaluate.suite``) and the model (``--model`` or
   ``evaluate.model``, by default ``artifacts/export/model.onnx``: the artifact the
   export stage chose, INT8 or fp32, i.e. exactly what is registered and served;
   also ``*.ckpt`` or ``models:/NAME@ALIAS``, all via
   :func:`~cvplatform.evaluation.predictors.load_predictor`), and hashes it: the gate
   report records the judged file's sha256, and the registry refuses to register an
   artifact whose sha256 differs;
2. reads the ``evaluate.split`` rows of the manifest, decodes the images and
   resizes them to the model's input size (the preprocessing contract);
3. builds every scenario (clean, corruptions seeded per image, metadata slices,
   curated lists), predicts, computes metrics with bootstrap intervals;
4. when ``evaluate.compare_champion`` is set and
   ``models:/<registry.model_name>@<registry.champion_alias>`` exists, runs the champion on
   the *same* scenario images (paired comparison);
5. decides the gates with the pure :func:`~cvplatform.evaluation.gates.check_gates`;
6. writes ``artifacts/evaluate/`` (report.md/html, plots, metrics.json,
   gate_report.json, summary.json, and model_card.md when the evaluated model is the
   exported artifact) — always, also when a gate fails;
7. logs the report, the model card and the metrics to the training run in MLflow (when
   the evaluated model is that run's checkpoint or its exported artifact);
8. raises :class:`~cvplatform.errors.GateFailed` (exit code 3) listing the failed
   must-pass checks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cvplatform.errors import ConfigError, GateFailed, ModelError, RegistryError
from cvplatform.stage import StageResult
from cvplatform.utils.io import ProjectPaths, write_json

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from cvplatform.config import EvaluateParams, Params, RegistryParams
    from cvplatform.evaluation.gates import GateReport
    from cvplatform.evaluation.predictors import Predictor
    from cvplatform.evaluation.suite_runner import BuiltScenario
    from cvplatform.tasks.base import Task

log = logging.getLogger(__name__)

STAGE = "evaluate"
#: Files/folders this stage owns under artifacts/evaluate/ (removed before a run so nothing stale survives).
OUTPUTS = ("report.md", "report.html", "plots", "metrics.json", "scenarios.json", "gate_report.json", "summary.json",
           "model_card.md")


@dataclass
class EvaluateResult(StageResult):
    """What ``run_evaluate`` returns (and writes to ``artifacts/evaluate/summary.json``)."""

    stage: ClassVar[str] = STAGE
    summary_model: ClassVar[str | None] = "EvaluateSummary"

    model: str
    """The evaluated model (path or models:/ URI)."""
    model_sha256: str | None
    """sha256 of the evaluated file (None for a models:/ URI whose bytes are not known)."""
    suite: str
    split: str
    passed: bool
    """No must-pass gate check failed."""
    n_images: int
    """Images of the evaluated split."""
    class_names: list[str]
    scenarios: list[dict[str, Any]]
    """Per scenario: name, kind, level, n, status, each metric of the task (``<metric>_ci`` where it has an
    interval; classification: accuracy (+ci), macro_f1 (+ci), ece, critical_fpr)."""
    pass_rate: float | None
    mce: float | None
    """mCE with the champion as the reference model (None without a comparable champion)."""
    error_multiple_vs_clean: float | None
    """Mean corruption error divided by the model's own clean error (reference-free; not mCE)."""
    mean_degradation: float | None
    champion: str | None
    champion_note: str
    failures: list[str]
    warnings: list[str]
    outputs: dict[str, str] = field(default_factory=dict)
    robustness: dict[str, Any] = field(default_factory=dict)
    """Every suite-wide robustness number of the task's corruption summary (classification: mce & co.;
    detection: mpc, rpc, champion_mpc)."""
    mlflow_run_id: str | None = None
    mlflow_note: str = ""
    predictions: int = 0
    """Images passed through the model (all scenarios, champion excluded)."""
    duration_s: float = 0.0
    timings_s: dict[str, float] = field(default_factory=dict)
    """Seconds per phase: load (suite, model, images), champion, scenarios (corrupt + predict + metrics),
    gates, report (plots, files), mlflow."""
    seed: int = 0
    metrics: list[tuple[str, str]] = field(default_factory=list)
    """The task's metrics as ``(name, label)``, the first one with its interval (the columns of :meth:`lines`)."""

    def lines(self) -> list[str]:
        (first, first_label), *rest = self.metrics or [("accuracy", "accuracy")]
        out = [
            f"evaluate: {self.model} on {self.n_images} {self.split} images, suite {self.suite}",
            f"  {'scenario':<22} {'kind':<10} {'level':<9} {'n':>5} {first_label:>8} {'95% CI':>15} "
            + " ".join(f"{label:>6}" for _, label in rest) + "  status",
        ]

        def num(v: Any) -> str:
            return "—" if v is None else f"{v:.3f}"

        corr: dict[str, list[str]] = {}
        for s in self.scenarios:
            if s["kind"] == "corruption":
                v = "  —  " if s.get(first) is None else f"{s[first]:.3f}"
                mark = {"failed": "!", "warned": "~"}.get(s["status"], "")
                corr.setdefault(s["corruption"], []).append(f"{v}{mark}")
                continue
            ci_v = s.get(f"{first}_ci")
            ci = "" if ci_v is None else f"[{ci_v[0]:.3f},{ci_v[1]:.3f}]"
            out.append(f"  {s['name']:<22} {s['kind']:<10} {s['level']:<9} {s['n']:>5} {num(s.get(first)):>8} {ci:>15} "
                       + " ".join(f"{num(s.get(name)):>6}" for name, _ in rest) + f"  {s['status']}")
        if corr:
            if self.robustness and "mce" not in self.robustness and "error_multiple_vs_clean" not in self.robustness:
                from cvplatform.evaluation.report import corruption_lines  # a task without an error rate

                head = "; ".join(corruption_lines(self.robustness))
            else:
                mce = "n/a (no champion to use as reference)" if self.mce is None else f"{self.mce:.2f}"
                mult = "—" if self.error_multiple_vs_clean is None else f"{self.error_multiple_vs_clean:.2f}"
                head = f"mCE vs champion {mce}; error ÷ clean error {mult}"
            out.append(f"  corruptions ({first_label} at severity 1..5; ! failed, ~ warning); {head}:")
            for name, accs in corr.items():
                out.append(f"    {name:<16} " + " ".join(f"{a:>7}" for a in accs))
        out.append(f"  champion: {self.champion or 'none'}{(' — ' + self.champion_note) if self.champion_note else ''}")
        rate = "n/a" if self.pass_rate is None else f"{self.pass_rate:.0%}"
        out.append(f"  gates: {'PASSED' if self.passed else 'FAILED'} (scenario pass rate {rate}, "
                   f"{len(self.failures)} failed, {len(self.warnings)} warnings)")
        out.extend(f"    {line}" for line in self.failures)
        out.extend(f"    {line}" for line in self.warnings[:10])
        if len(self.warnings) > 10:
            out.append(f"    ... {len(self.warnings) - 10} more warning(s) in the report")
        if self.model_sha256:
            out.append(f"  judged artifact sha256: {self.model_sha256}")
        if self.outputs.get("report_html"):
            out.append(f"  report: {self.outputs['report_html']}")
        return out


def _scenario_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:bootstrap:{name}".encode()).digest()[:4], "big")


# --------------------------------------------------------------------------- champion
def find_champion(registry: RegistryParams, tracking_uri: str) -> tuple[str | None, str]:
    """Resolve ``models:/<registry.model_name>@<registry.champion_alias>``; ``(None, why)`` when it does not exist.

    Raises:
        RegistryError: the registry cannot be reached (naming the URI).

    Example:
        >>> find_champion(params.registry, "sqlite:///mlflow.db")  # doctest: +SKIP
        ('models:/cvplatform@champion', 'version 3')
    """
    from mlflow.exceptions import MlflowException

    from cvplatform.mlflow_store import MlflowStore

    name, alias = registry.model_name, registry.champion_alias
    uri = f"models:/{name}@{alias}"
    client = MlflowStore(tracking_uri, tracking_uri).client()
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        code = getattr(exc, "error_code", "")
        text = str(exc)
        if code == "RESOURCE_DOES_NOT_EXIST" and "Registered Model" in text:
            return None, f"registered model {name!r} does not exist in {tracking_uri}"
        if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") and "not found" in text.lower():
            return None, f"registered model {name!r} has no alias {alias!r}"
        raise RegistryError(f"cannot look up {uri} in {tracking_uri}: {text}") from exc
    except Exception as exc:
        raise RegistryError(
            f"cannot reach the MLflow registry at {tracking_uri} to look up {uri} ({type(exc).__name__}: {exc}). "
            "Start the tracking server, or set evaluate.compare_champion: false."
        ) from exc
    return uri, f"version {mv.version}"


def _load_champion(uri: str, tracking_uri: str, root: Path, task: Task) -> Predictor:
    """The champion through the registry's sha256-verified loader; a failure keeps its error class."""
    from cvplatform.evaluation.predictors import load_registered_onnx

    try:
        return load_registered_onnx(uri, tracking_uri=tracking_uri, root=root, task=task)
    except (ModelError, RegistryError) as exc:
        raise type(exc)(
            f"champion {uri} exists but cannot be loaded: {exc} Fix or re-register the champion version, "
            "or set evaluate.compare_champion: false."
        ) from None


def _headline_metrics(rows: list[dict[str, Any]], task: Task) -> dict[str, float]:
    """What ``dvc metrics show`` prints for evaluate: the clean scenario's headline metrics of the task
    (classification: accuracy, macro-F1 and ECE) under their short names, and the first metric's mean over
    the corruption scenarios (``corrupt_acc``), to four decimals so the table fits a terminal (every
    scenario's full-precision numbers are in ``scenarios.json``)."""
    out: dict[str, float] = {}
    clean = next((r for r in rows if r["kind"] == "clean"), None)
    if clean is not None:
        for spec in task.metrics:
            if spec.headline and isinstance(clean.get(spec.name), int | float):
                out[spec.short or spec.name] = round(float(clean[spec.name]), 4)
    metric, key = task.corruption_headline
    corrupted = [float(r[metric]) for r in rows if r["kind"] == "corruption" and r.get(metric) is not None]
    if corrupted:
        out[key] = round(sum(corrupted) / len(corrupted), 4)
    return out


def _champion(cfg: EvaluateParams, registry: RegistryParams, mlflow_uri: str, predictor: Predictor,
              root: Path, task: Task) -> tuple[Predictor | None, str | None, str, str | None]:
    """``(champion, uri, note, incompatible)``: the champion predictor when comparable; else why not."""
    if not cfg.compare_champion:
        return None, None, "evaluate.compare_champion is false", None
    uri, note = find_champion(registry, mlflow_uri)
    if uri is None:
        return None, None, note, None
    champion = _load_champion(uri, mlflow_uri, root, task)
    diffs = []
    if list(champion.class_names) != list(predictor.class_names):
        diffs.append(f"champion classes {list(champion.class_names)} differ from the model's "
                     f"{list(predictor.class_names)}")
    if champion.contract.input_size != predictor.contract.input_size:
        diffs.append(f"champion input size {list(champion.contract.input_size)} differs from the model's "
                     f"{list(predictor.contract.input_size)}")
    if champion.contract.resize_label != predictor.contract.resize_label:  # both see the model's resized pixels
        diffs.append(f"champion resize {champion.contract.resize_label} differs from the model's "
                     f"{predictor.contract.resize_label}")
    if not diffs:
        return champion, uri, note, None
    incompatible = f"{uri} ({note}): " + "; ".join(diffs)
    log.warning("evaluate: champion not comparable: %s", incompatible)
    return None, None, f"{note}; not comparable: " + "; ".join(diffs), incompatible


def _model_sha256(ref: str, paths: ProjectPaths, predictor: Predictor) -> str | None:
    """sha256 of the evaluated file (what the gate report vouches for); a registry loader may provide it."""
    from cvplatform.utils.io import sha256_file

    if ref.startswith("models:/"):
        sha = getattr(predictor, "sha256", None)
        return str(sha) if sha else None
    return sha256_file(paths.resolve(ref))


def _belongs_to_run(paths: ProjectPaths, train_summary: dict[str, Any], ref: str, sha: str | None) -> bool:
    """The evaluated model is the training run's checkpoint, or the artifact exported from that checkpoint."""
    if ref.startswith("models:/"):
        return False
    best = train_summary.get("best_checkpoint")
    if best and Path(best).resolve() == paths.resolve(ref).resolve():
        return True
    export = _read_export_summary(paths)
    run_id = train_summary.get("mlflow_run_id") or train_summary.get("run_id")
    return bool(sha) and export.get("sha256") == sha and bool(run_id) and export.get("train_run_id") == run_id


def _read_export_summary(paths: ProjectPaths) -> dict[str, Any]:
    """``artifacts/export/summary.json`` as a dict ({} when missing; a warning and {} when invalid)."""
    from cvplatform.artifacts import ArtifactError, ExportSummary

    try:
        summary = ExportSummary.read_if_present(ExportSummary.at(paths.root))
    except ArtifactError as exc:
        log.warning("evaluate: %s", exc)
        return {}
    return summary.to_dict() if summary is not None else {}


def _write_card(paths: ProjectPaths, params: Params, out_dir: Path, model_sha: str | None, manifest: pd.DataFrame,
                manifest_path: Path, gate_doc: dict[str, Any], rows: list[dict[str, Any]],
                summary: dict[str, Any]) -> Path | None:
    """The model card of the exported artifact, once it has been judged (None when another model was evaluated)."""
    from cvplatform.export.model_card import Evaluation, ModelCardInputs, write_model_card
    from cvplatform.tasks import get_task

    export = _read_export_summary(paths)
    if not model_sha or export.get("sha256") != model_sha:
        return None
    try:
        rel = manifest_path.resolve().relative_to(paths.root).as_posix()
    except ValueError:
        rel = str(manifest_path)
    evaluation = Evaluation(summary={**summary, "scenarios": rows}, gate_report=gate_doc)
    task = get_task(params.project.task)
    return write_model_card(
        ModelCardInputs(export=export, intended_use=params.export.intended_use or task.intended_use, manifest=manifest,
                        manifest_path=rel, evaluation=evaluation, lineage=export.get("lineage") or {}, task=task),
        out_dir / "model_card.md",
    )


# --------------------------------------------------------------------------- report helpers
def _gallery(b: BuiltScenario, res: Any, task: Task, class_names: list[str], k: int, seed: int):
    """The scenario's worst-handled images (``task.worst_images``) with their pixels, for the report."""
    from cvplatform.evaluation.report import GalleryItem

    if k <= 0 or res.n == 0:
        return [], None
    worst = task.worst_images(res, class_names, k)
    if not worst:
        return [], None
    import numpy as np

    order = np.asarray([w[0] for w in worst], dtype=np.int64)
    pix = b.pixels(seed, order)
    paths = b.source.rows["path"]
    items = [GalleryItem(res.image_ids[i], truth, pred, float(score), str(paths.iat[int(b.base[i])]))
             for i, truth, pred, score in worst]
    return items, pix


# --------------------------------------------------------------------------- mlflow
def _train_run(paths: ProjectPaths) -> dict[str, Any]:
    """``artifacts/train/summary.json`` as a dict ({} when missing; a warning and {} when invalid)."""
    from cvplatform.artifacts import ArtifactError, TrainSummary

    try:
        summary = TrainSummary.read_if_present(TrainSummary.at(paths.root))
    except ArtifactError as exc:
        log.warning("%s; evaluation results are not logged to MLflow", exc)
        return {}
    return summary.to_dict() if summary is not None else {}


def _log_to_mlflow(run_id: str, tracking_uri: str, metrics: dict[str, float], tags: dict[str, str],
                   files: list[Path], plots_dir: Path) -> None:
    """Log metrics (those the run lacks), tags and files to the training run; retried as a whole (idempotent)."""
    from cvplatform.mlflow_store import log_to_run

    log_to_run(tracking_uri, run_id, f"log the evaluation to MLflow run {run_id}", metrics=metrics, tags=tags,
               files=files, artifact_path="evaluate", dirs={"evaluate/plots": plots_dir})


def _mlflow_key(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in name)


# --------------------------------------------------------------------------- the stage's steps
class _Laps:
    """Wall time of each named step since the previous one (``timings_s`` of the result)."""

    def __init__(self) -> None:
        self.start = self.mark = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self.mark, 4)
        self.mark = now

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class _Inputs:
    """Everything ``evaluate`` judges: the suite, the model, the images, where MLflow is."""

    suite_path: Path
    suite: Any
    scenarios: list[Any]
    ref: str
    predictor: Predictor
    model_sha: str | None
    class_names: list[str]
    manifest_path: Path
    manifest: pd.DataFrame
    data: Any
    train_summary: dict[str, Any]
    mlflow_uri: str
    """The registry (models:/ refs, champion) follows the current configuration."""
    run_uri: str
    """The training run is logged to wherever it was created."""
    root: Path
    task: Task
    """The project's task (``project.task``): it turns each scenario's outputs into its result and metrics."""


def _load_inputs(params: Params, paths: ProjectPaths, model: str | os.PathLike[str] | None) -> _Inputs:
    """Load the suite, the model under test (hashed) and the evaluated split's images.

    Raises:
        ConfigError: bad suite, or critical classes the model does not have.
        DataError: missing manifest/images, empty split. ModelError: the model cannot be loaded.
    """
    from cvplatform.data.manifest import read_manifest
    from cvplatform.evaluation.predictors import load_predictor
    from cvplatform.evaluation.scenarios import load_suite
    from cvplatform.evaluation.suite_runner import load_images, select_split
    from cvplatform.tasks import get_task
    from cvplatform.tracking import tracking_uri as default_tracking_uri

    cfg = params.evaluate
    task = get_task(params.project.task)
    suite_path = paths.resolve(cfg.suite)
    suite = load_suite(suite_path, task)
    train_summary = _train_run(paths)
    mlflow_uri = default_tracking_uri(paths.root)
    ref = str(model) if model is not None else cfg.model
    log.info("evaluate: loading model %s", ref)
    predictor = load_predictor(ref, root=paths.root, tracking_uri=mlflow_uri, task=task)
    class_names = list(predictor.class_names)
    bad_critical = [c for c in suite.critical_classes if c not in class_names]
    if bad_critical:
        raise ConfigError(
            f"{suite_path}: critical_classes {bad_critical} are not classes of the model {predictor.name} "
            f"({class_names}). Fix critical_classes in the suite."
        )
    manifest_path = paths.resolve(params.project.manifest)
    manifest = read_manifest(manifest_path)
    split_rows = select_split(manifest, cfg.split, cfg.max_images, source=str(manifest_path), key="evaluate.split")
    data = load_images(split_rows, paths.root, predictor, f"{manifest_path} (split {cfg.split!r})")
    return _Inputs(suite_path, suite, suite.expand(), ref, predictor, _model_sha256(ref, paths, predictor),
                   class_names, manifest_path, manifest, data, train_summary, mlflow_uri,
                   str(train_summary.get("tracking_uri") or mlflow_uri), paths.root, task)


@dataclass
class _Judged:
    """Per-scenario results of the model (and of the champion, on the same pixels)."""

    results: dict[str, Any]
    """Scenario -> ``task.evaluate_scenario`` result (the scenario-result protocol of cvplatform.tasks.base)."""
    champ_results: dict[str, Any]
    built: list[BuiltScenario]
    predictions: int


def _run_scenarios(inp: _Inputs, cfg: EvaluateParams, seed: int, champion: Predictor | None) -> _Judged:
    """Predict every scenario with the model (and the champion) and compute its metrics."""
    from cvplatform.evaluation.corruption_cache import open_cache
    from cvplatform.evaluation.suite_runner import run_suite, scenario_targets

    predictors: list[Predictor] = [inp.predictor] + ([champion] if champion is not None else [])
    cache = open_cache(cfg.corruption_cache, inp.root)
    runs = run_suite(predictors, inp.data, suite_path=inp.suite_path, scenarios=inp.scenarios,
                     manifest=inp.manifest, root=inp.root,
                     seed=seed, batch_size=cfg.batch_size, progress=STAGE, cache=cache)
    if cache is not None:
        log.info("evaluate: %s", cache.summary())
    judged = _Judged({}, {}, [r.built for r in runs], 0)
    for run in runs:
        b, sc, outputs = run.built, run.scenario, run.outputs
        judged.predictions += len(b.ids)
        common = {
            "critical_classes": inp.suite.critical_classes, "n_bootstrap": cfg.bootstrap_samples,
            "confidence": cfg.confidence, "seed": _scenario_seed(seed, sc.name), "n_bins": cfg.calibration_bins,
            "note": b.note, "corruption": sc.corruption, "severity": sc.severity,
        }
        targets = scenario_targets(inp.task, b, inp.class_names)
        judged.results[sc.name] = inp.task.evaluate_scenario(
            sc.name, sc.kind, b.ids, targets, outputs[0], inp.class_names, **common)
        if champion is not None:
            judged.champ_results[sc.name] = inp.task.evaluate_scenario(
                sc.name, sc.kind, b.ids, targets, outputs[1], inp.class_names, **common)
        log.debug("evaluate: %s done (%d images)", sc.name, len(b.ids))
    return judged


@dataclass
class _Decision:
    """The gates' verdict and the corruption summary."""

    gates: GateReport
    policy: Any
    corruption_summary: dict[str, Any]


def _decide(inp: _Inputs, judged: _Judged, cfg: EvaluateParams, seed: int, champion: _Champion) -> _Decision:
    """Decide the gates (pure :func:`check_gates`) and summarise the corruption errors (mCE & co.)."""
    from cvplatform.evaluation.gates import check_gates

    results, champ_results = judged.results, judged.champ_results
    corruptions = [s for s in inp.scenarios if s.kind == "corruption"]
    clean = results[next(s.name for s in inp.scenarios if s.kind == "clean")]
    corrupted = {(str(s.corruption), int(s.severity or 0)): results[s.name] for s in corruptions}
    reference = {(str(s.corruption), int(s.severity or 0)): champ_results[s.name]
                 for s in corruptions if s.name in champ_results} if champ_results else None
    cs = inp.task.corruption_summary(clean, corrupted, reference, champion.uri)
    policy = inp.suite.policy(seed=seed, n_bootstrap=cfg.bootstrap_samples, confidence=cfg.confidence)
    gates = check_gates(results, policy, champ_results if champion.predictor is not None else None,
                        champion_note=champion.note or None, champion_incompatible=champion.incompatible,
                        task=inp.task, robustness=cs)
    gates = replace(gates, champion=champion.uri)
    return _Decision(gates, policy, cs)


@dataclass
class _Champion:
    """The champion compared with (``predictor`` None when there is none or it is not comparable)."""

    predictor: Predictor | None
    uri: str | None
    note: str
    incompatible: str | None


def _clear_outputs(out_dir: Path) -> None:
    """Remove this stage's outputs so nothing stale survives a run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _write_report(inp: _Inputs, judged: _Judged, dec: _Decision, champion: _Champion, cfg: EvaluateParams,
                  seed: int, out_dir: Path) -> dict[str, Path]:
    """The HTML/Markdown report with its plots and galleries of the worst failures."""
    from cvplatform.evaluation.report import ReportContext, write_report

    galleries, gallery_images = {}, {}
    for b in judged.built:
        items, pix = _gallery(b, judged.results[b.scenario.name], inp.task, inp.class_names, cfg.gallery_size, seed)
        if items:
            galleries[b.scenario.name] = items
            gallery_images[b.scenario.name] = pix
    ctx = ReportContext(
        model=inp.predictor.name, suite=str(cfg.suite), split=cfg.split, class_names=inp.class_names,
        scenarios=inp.scenarios, results=judged.results, gates=dec.gates, corruption_summary=dec.corruption_summary,
        champion=champion.uri, champion_note=champion.note, champion_results=judged.champ_results or None,
        galleries=galleries, gallery_images=gallery_images, critical_classes=inp.suite.critical_classes,
        confidence=cfg.confidence, seed=seed, extra={"model_sha256": inp.model_sha}, task=inp.task,
    )
    return write_report(ctx, out_dir)


def _scenario_rows(inp: _Inputs, judged: _Judged, gates: GateReport) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per scenario (summary, model card) and the per-scenario part of scenarios.json."""
    from cvplatform.evaluation.report import scenario_status

    rows, per_scenario = [], {}
    for sc in inp.scenarios:
        r = judged.results[sc.name]
        values, intervals = r.values, r.intervals
        status = scenario_status(sc.name, gates)
        row: dict[str, Any] = {"name": sc.name, "kind": sc.kind, "level": sc.gate.level, "n": r.n, "status": status,
                               "corruption": sc.corruption, "severity": sc.severity}
        for spec in inp.task.metrics:
            row[spec.name] = values.get(spec.name)
            if spec.name in intervals:  # metrics with an interval (classification: accuracy, macro-F1)
                ci = intervals[spec.name]
                row[f"{spec.name}_ci"] = list(ci) if ci is not None else None
        rows.append({**row, **inp.task.scenario_extras(r)})
        per_scenario[sc.name] = {"n": r.n, **{spec.name: values.get(spec.name) for spec in inp.task.metrics},
                                 "passed": status in ("passed", "warned", "-")}
    return rows, per_scenario


def _scenarios_json(inp: _Inputs, judged: _Judged, dec: _Decision, per_scenario: dict[str, Any]) -> dict[str, Any]:
    """``scenarios.json``: every scenario's metrics plus the clean (the first metric with its interval) and
    corruption headline."""
    clean = judged.results[next(s.name for s in inp.scenarios if s.kind == "clean")]
    cs, gates = dec.corruption_summary, dec.gates
    first, *rest = inp.task.metrics
    ci = clean.intervals.get(first.name)
    clean_doc = {first.name: clean.values.get(first.name), f"{first.name}_low": ci[0] if ci else None,
                 f"{first.name}_high": ci[1] if ci else None, **{m.name: clean.values.get(m.name) for m in rest}}
    per_class = inp.task.per_class_metrics(clean)
    if per_class:  # detection: AP per class
        clean_doc["per_class"] = per_class
    return {
        "scenarios": per_scenario,
        "clean": clean_doc,
        "gates_passed": gates.passed,
        "pass_rate": gates.pass_rate,
        "pass_rate_all": gates.extra.get("pass_rate_all"),
        "mce": cs.get("mce"),
        "error_multiple_vs_clean": cs.get("error_multiple_vs_clean"),
        "mean_degradation": cs.get("mean_degradation"),
        "mean_corruption_error": cs.get("mean_corruption_error"),
        # every suite-wide robustness number of the task (detection: mpc, rpc, champion_mpc)
        "robustness": {k: v for k, v in cs.items() if v is None or isinstance(v, int | float | str)},
    }


@dataclass
class _Written:
    files: dict[str, Path]
    rows: list[dict[str, Any]]
    metrics_json: dict[str, Any]


def _write_outputs(params: Params, paths: ProjectPaths, inp: _Inputs, judged: _Judged, dec: _Decision,
                   champion: _Champion, seed: int, out_dir: Path) -> _Written:
    """Write the report, scenarios.json, metrics.json, gate_report.json and (for the export) the model card."""
    from cvplatform.artifacts import GateReportFile

    cfg = params.evaluate
    gates, cs = dec.gates, dec.corruption_summary
    _clear_outputs(out_dir)
    written = _write_report(inp, judged, dec, champion, cfg, seed, out_dir)
    rows, per_scenario = _scenario_rows(inp, judged, gates)
    metrics_json = _scenarios_json(inp, judged, dec, per_scenario)
    written["scenarios"] = write_json(out_dir / "scenarios.json", metrics_json)
    written["metrics"] = write_json(out_dir / "metrics.json", _headline_metrics(rows, inp.task))
    gate_doc = {
        **gates.to_dict(), "model": inp.predictor.name, "model_sha256": inp.model_sha, "split": cfg.split,
        "n_images": len(inp.data.ids), "class_names": inp.class_names, "suite": str(cfg.suite),
        "champion_note": champion.note, "policy": dec.policy.model_dump(mode="json"), "corruption_summary": cs,
    }
    written["gate_report"] = GateReportFile.model_validate(gate_doc).write(out_dir / "gate_report.json")
    card = _write_card(paths, params, out_dir, inp.model_sha, inp.manifest, inp.manifest_path, gate_doc, rows, {
        "model": inp.predictor.name, "model_sha256": inp.model_sha, "suite": str(cfg.suite), "split": cfg.split,
        "passed": gates.passed, "champion": champion.uri, "champion_note": champion.note,
        "n_images": len(inp.data.ids), "pass_rate": gates.pass_rate, "mce": cs.get("mce"),
        "error_multiple_vs_clean": cs.get("error_multiple_vs_clean"), "scenarios": rows,
        "failures": [c.line() for c in gates.failures], "warnings": [c.line() for c in gates.warnings],
    })
    if card is not None:
        written["model_card"] = card
    return _Written(written, rows, metrics_json)


def _log_evaluation(paths: ProjectPaths, inp: _Inputs, judged: _Judged, dec: _Decision, champion: _Champion,
                    cfg: EvaluateParams, out: _Written, out_dir: Path) -> tuple[str | None, str]:
    """Log metrics, tags, report and model card to the training run; ``(run id logged to, note why not)``.

    Only when the evaluated model is that run's checkpoint or its exported artifact; a logging failure is a
    note, never an error (the outputs on disk are the source of truth).
    """
    run_id = inp.train_summary.get("mlflow_run_id") or inp.train_summary.get("run_id")
    if not cfg.log_to_mlflow:
        return None, "evaluate.log_to_mlflow is false"
    if not run_id:
        return None, "no training run id in artifacts/train/summary.json"
    if not _belongs_to_run(paths, inp.train_summary, inp.ref, inp.model_sha):
        return None, (f"model {inp.ref} is neither the training run's checkpoint nor its exported artifact; not "
                      f"logged to run {run_id}")
    mm: dict[str, float] = {}
    for sc in inp.scenarios:
        key = _mlflow_key(sc.name)
        mm.update({f"eval.{key}.{k}": float(v) for k, v in judged.results[sc.name].values.items() if v is not None})
    for k in ("pass_rate", "mce", "error_multiple_vs_clean", "mean_degradation"):
        v = out.metrics_json.get(k)
        if v is not None:
            mm[f"eval.{k}"] = float(v)
    gates = dec.gates
    tags = {"eval.gates_passed": str(gates.passed).lower(), "eval.suite": str(cfg.suite),
            "eval.failed_checks": str(len(gates.failures)), "eval.champion": champion.uri or "none",
            "eval.model_sha256": inp.model_sha or "unknown"}
    w = out.files
    files = [w["report_md"], w["report_html"], w["metrics"], w["scenarios"], w["gate_report"],
             *([w["model_card"]] if "model_card" in w else [])]
    try:
        _log_to_mlflow(str(run_id), inp.run_uri, mm, tags, files, out_dir / "plots")
    except Exception as exc:  # tracking is secondary: outputs on disk are the source of truth
        note = f"logging to MLflow run {run_id} failed: {type(exc).__name__}: {exc}"
        log.warning("evaluate: %s", note)
        return None, note
    return str(run_id), ""


def _gate_failure(result: EvaluateResult, gates: GateReport, report_html: Path) -> GateFailed:
    """The GateFailed listing the failed must-pass checks (``.result`` carries the result)."""
    lines = "\n".join(f"  {c.line()}" for c in gates.failures)
    exc = GateFailed(
        f"evaluation gates failed for {result.model} ({len(gates.failures)} must-pass check(s)):\n{lines}\n"
        f"Report: {report_html} (summary: {result.summary_path})"
    )
    exc.result = result  # type: ignore[attr-defined]
    return exc


# --------------------------------------------------------------------------- the stage
def run_evaluate(
    params: Params,
    *,
    root: str | os.PathLike[str] | None = None,
    model: str | os.PathLike[str] | None = None,
) -> EvaluateResult:
    """Evaluate a model on the scenario suite, decide the release gates and write the report.

    Args:
        params: Loaded params (uses ``evaluate.*``, ``registry.*`` and ``project.*``).
        root: Project root (default: cwd).
        model: ``*.ckpt``, ``*.onnx`` or ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``;
            default ``evaluate.model`` (``artifacts/export/model.onnx``).

    Returns:
        :class:`EvaluateResult` (also written to ``artifacts/evaluate/summary.json``).

    Raises:
        GateFailed: a must-pass check failed (everything is written first; the
            exception lists the failed checks and carries ``.result``).
        ConfigError: bad suite (unknown corruption, slice on a missing column, ...).
        DataError: missing manifest/images, empty split, labels the model does not know.
        ModelError: the model (or an existing champion) cannot be loaded.

    Example:
        >>> from cvplatform import load_params, run_evaluate
        >>> result = run_evaluate(load_params("params.yaml"))  # doctest: +SKIP
        >>> result.passed, result.scenarios[0]["accuracy"]  # doctest: +SKIP
        (True, 0.97)
    """
    from cvplatform.utils.logs import quiet_libraries

    quiet_libraries()  # no third-party INFO floods in task logs and notebooks
    clock = _Laps()
    paths = ProjectPaths.at(root)
    cfg = params.evaluate
    seed = int(params.project.seed)
    out_dir = paths.artifacts(STAGE)
    inp = _load_inputs(params, paths, model)
    clock.lap("load")
    champion = _Champion(*_champion(cfg, params.registry, inp.mlflow_uri, inp.predictor, paths.root,
                                            inp.task))
    clock.lap("champion")
    judged = _run_scenarios(inp, cfg, seed, champion.predictor)
    clock.lap("scenarios")
    dec = _decide(inp, judged, cfg, seed, champion)
    clock.lap("gates")
    out = _write_outputs(params, paths, inp, judged, dec, champion, seed, out_dir)
    clock.lap("report")
    logged_run, mlflow_note = _log_evaluation(paths, inp, judged, dec, champion, cfg, out, out_dir)
    clock.lap("mlflow")
    gates, cs, duration = dec.gates, dec.corruption_summary, clock.total
    result = EvaluateResult(
        model=inp.predictor.name, model_sha256=inp.model_sha, suite=str(cfg.suite), split=cfg.split,
        passed=gates.passed, n_images=len(inp.data.ids), class_names=inp.class_names, scenarios=out.rows,
        pass_rate=gates.pass_rate, mce=cs.get("mce"), error_multiple_vs_clean=cs.get("error_multiple_vs_clean"),
        mean_degradation=cs.get("mean_degradation"), champion=champion.uri, champion_note=champion.note,
        robustness={k: v for k, v in cs.items() if v is None or isinstance(v, int | float | str)},
        failures=[c.line() for c in gates.failures], warnings=[c.line() for c in gates.warnings],
        outputs={k: str(v) for k, v in out.files.items()
                 if k in ("report_md", "report_html", "metrics", "gate_report", "model_card")},
        mlflow_run_id=logged_run, mlflow_note=mlflow_note, predictions=judged.predictions,
        duration_s=round(duration, 3), timings_s=clock.timings, seed=seed,
        metrics=[(m.name, m.display) for m in inp.task.metrics],
    )
    result.write_summary(out_dir)
    log.info("evaluate: %d scenarios, %d predictions in %.1fs; gates %s", len(inp.scenarios), judged.predictions,
             duration, "passed" if gates.passed else "FAILED")
    if not gates.passed:
        raise _gate_failure(result, gates, out.files["report_html"])
    return result


__all__ = ["EvaluateResult", "find_champion", "run_evaluate"]
