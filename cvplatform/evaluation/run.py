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
   ``models:/<registered_model>@<champion_alias>`` exists, runs the champion on
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
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cvplatform.errors import ConfigError, DataError, GateFailed, ModelError, RegistryError
from cvplatform.stage import StageResult
from cvplatform.utils.io import ProjectPaths, write_json

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

    from cvplatform.config import EvaluateParams, Params
    from cvplatform.evaluation.gates import GateReport
    from cvplatform.evaluation.metrics import ScenarioResult
    from cvplatform.evaluation.predictors import Predictor
    from cvplatform.evaluation.scenarios import Scenario

log = logging.getLogger(__name__)

STAGE = "evaluate"
#: Files/folders this stage owns under artifacts/evaluate/ (removed before a run so nothing stale survives).
OUTPUTS = ("report.md", "report.html", "plots", "metrics.json", "scenarios.json", "gate_report.json", "summary.json",
           "model_card.md")


@dataclass
class EvaluateResult(StageResult):
    """What ``run_evaluate`` returns (and writes to ``artifacts/evaluate/summary.json``)."""

    stage: ClassVar[str] = STAGE

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
    """Per scenario: name, kind, level, n, accuracy (+ci), macro_f1 (+ci), ece, status."""
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
    mlflow_run_id: str | None = None
    mlflow_note: str = ""
    predictions: int = 0
    """Images passed through the model (all scenarios, champion excluded)."""
    duration_s: float = 0.0
    timings_s: dict[str, float] = field(default_factory=dict)
    """Seconds per phase: load (suite, model, images), champion, scenarios (corrupt + predict + metrics),
    gates, report (plots, files), mlflow."""
    seed: int = 0

    def lines(self) -> list[str]:
        out = [
            f"evaluate: {self.model} on {self.n_images} {self.split} images, suite {self.suite}",
            f"  {'scenario':<22} {'kind':<10} {'level':<9} {'n':>5} {'accuracy':>8} {'95% CI':>15} "
            f"{'F1':>6} {'ECE':>6}  status",
        ]
        corr: dict[str, list[str]] = {}
        for s in self.scenarios:
            if s["kind"] == "corruption":
                acc = "  —  " if s["accuracy"] is None else f"{s['accuracy']:.3f}"
                mark = {"failed": "!", "warned": "~"}.get(s["status"], "")
                corr.setdefault(s["corruption"], []).append(f"{acc}{mark}")
                continue
            acc = "—" if s["accuracy"] is None else f"{s['accuracy']:.3f}"
            ci = "" if s["accuracy_ci"] is None else f"[{s['accuracy_ci'][0]:.3f},{s['accuracy_ci'][1]:.3f}]"
            f1 = "—" if s["macro_f1"] is None else f"{s['macro_f1']:.3f}"
            ece = "—" if s["ece"] is None else f"{s['ece']:.3f}"
            out.append(f"  {s['name']:<22} {s['kind']:<10} {s['level']:<9} {s['n']:>5} {acc:>8} {ci:>15} "
                       f"{f1:>6} {ece:>6}  {s['status']}")
        if corr:
            mce = "n/a (no champion to use as reference)" if self.mce is None else f"{self.mce:.2f}"
            mult = "—" if self.error_multiple_vs_clean is None else f"{self.error_multiple_vs_clean:.2f}"
            out.append(f"  corruptions (accuracy at severity 1..5; ! failed, ~ warning); mCE vs champion {mce}; "
                       f"error ÷ clean error {mult}:")
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


# --------------------------------------------------------------------------- data
@dataclass
class _EvalImages:
    ids: list[str]
    labels: list[str]
    y: np.ndarray
    images: np.ndarray
    """(N, H, W, 3) uint8 at the challenger's input size."""
    rows: pd.DataFrame


def _decode(path: Path) -> np.ndarray:
    from cvplatform.imageio import ImageDecodeError, read_image  # the decoder training and serving use

    try:
        return read_image(path)
    except ImageDecodeError as exc:
        raise DataError(
            f"{path}: image listed in the manifest is missing or unreadable ({exc.detail}). Run `dvc pull` or "
            "re-run `cvplatform ingest` so data/raw matches the manifest."
        ) from None


def _load_images(rows: pd.DataFrame, root: Path, predictor: Predictor, what: str) -> _EvalImages:
    import numpy as np

    from cvplatform.preprocess import resize_to_contract

    names = list(predictor.class_names)
    index = {c: i for i, c in enumerate(names)}
    labels = [str(v) for v in rows["label"].tolist()]
    unknown = sorted({lbl for lbl in labels if lbl not in index})
    if unknown:
        raise DataError(
            f"{what}: label(s) {unknown} are not classes of the model {predictor.name} ({names}). "
            "Evaluate a model trained on this label set, or re-train."
        )
    contract = predictor.contract
    h, w = contract.input_size
    images = np.empty((len(rows), h, w, 3), dtype=np.uint8)
    for i, rel in enumerate(rows["path"].tolist()):
        p = Path(str(rel))
        images[i] = resize_to_contract([_decode(p if p.is_absolute() else root / p)], contract)[0]
    return _EvalImages(
        ids=[str(v) for v in rows["sha256"].tolist()],
        labels=labels,
        y=np.asarray([index[lbl] for lbl in labels], dtype=np.int64),
        images=images,
        rows=rows.reset_index(drop=True),
    )


def _scenario_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:bootstrap:{name}".encode()).digest()[:4], "big")


# --------------------------------------------------------------------------- champion
def find_champion(cfg: EvaluateParams, tracking_uri: str) -> tuple[str | None, str]:
    """Resolve ``models:/<registered_model>@<champion_alias>``; ``(None, why)`` when it does not exist.

    Raises:
        RegistryError: the registry cannot be reached (naming the URI).

    Example:
        >>> find_champion(params.evaluate, "sqlite:///mlflow.db")  # doctest: +SKIP
        ('models:/cvplatform@champion', 'version 3')
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = f"models:/{cfg.registered_model}@{cfg.champion_alias}"
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        mv = client.get_model_version_by_alias(cfg.registered_model, cfg.champion_alias)
    except MlflowException as exc:
        code = getattr(exc, "error_code", "")
        text = str(exc)
        if code == "RESOURCE_DOES_NOT_EXIST" and "Registered Model" in text:
            return None, f"registered model {cfg.registered_model!r} does not exist in {tracking_uri}"
        if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") and "not found" in text.lower():
            return None, f"registered model {cfg.registered_model!r} has no alias {cfg.champion_alias!r}"
        raise RegistryError(f"cannot look up {uri} in {tracking_uri}: {text}") from exc
    except Exception as exc:
        raise RegistryError(
            f"cannot reach the MLflow registry at {tracking_uri} to look up {uri} ({type(exc).__name__}: {exc}). "
            "Start the tracking server, or set evaluate.compare_champion: false."
        ) from exc
    return uri, f"version {mv.version}"


def _load_champion(uri: str, tracking_uri: str, root: Path) -> Predictor:
    """The champion through the registry's sha256-verified loader; a failure keeps its error class."""
    from cvplatform.evaluation.predictors import load_registered_onnx

    try:
        return load_registered_onnx(uri, tracking_uri=tracking_uri, root=root)
    except (ModelError, RegistryError) as exc:
        raise type(exc)(
            f"champion {uri} exists but cannot be loaded: {exc} Fix or re-register the champion version, "
            "or set evaluate.compare_champion: false."
        ) from None


def _headline_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """What ``dvc metrics show`` prints for evaluate: clean accuracy, macro-F1 and ECE, and the mean
    accuracy over the corruption scenarios, to four decimals so the table fits a terminal (every
    scenario's full-precision numbers are in ``scenarios.json``)."""
    out: dict[str, float] = {}
    clean = next((r for r in rows if r["kind"] == "clean"), None)
    if clean is not None:
        for key, short in (("accuracy", "accuracy"), ("macro_f1", "f1"), ("ece", "ece")):
            if isinstance(clean.get(key), int | float):
                out[short] = round(float(clean[key]), 4)
    corrupted = [float(r["accuracy"]) for r in rows if r["kind"] == "corruption" and r.get("accuracy") is not None]
    if corrupted:
        out["corrupt_acc"] = round(sum(corrupted) / len(corrupted), 4)
    return out


def _champion(cfg: EvaluateParams, mlflow_uri: str, predictor: Predictor,
              root: Path) -> tuple[Predictor | None, str | None, str, str | None]:
    """``(champion, uri, note, incompatible)``: the champion predictor when comparable; else why not."""
    if not cfg.compare_champion:
        return None, None, "evaluate.compare_champion is false", None
    uri, note = find_champion(cfg, mlflow_uri)
    if uri is None:
        return None, None, note, None
    champion = _load_champion(uri, mlflow_uri, root)
    diffs = []
    if list(champion.class_names) != list(predictor.class_names):
        diffs.append(f"champion classes {list(champion.class_names)} differ from the model's "
                     f"{list(predictor.class_names)}")
    if champion.contract.input_size != predictor.contract.input_size:
        diffs.append(f"champion input size {list(champion.contract.input_size)} differs from the model's "
                     f"{list(predictor.contract.input_size)}")
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
    p = paths.artifacts("export") / "summary.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except (OSError, json.JSONDecodeError):
        log.warning("evaluate: %s is unreadable", p)
        return {}
    return data if isinstance(data, dict) else {}


def _write_card(paths: ProjectPaths, params: Params, out_dir: Path, model_sha: str | None, manifest: pd.DataFrame,
                manifest_path: Path, gate_doc: dict[str, Any], rows: list[dict[str, Any]],
                summary: dict[str, Any]) -> Path | None:
    """The model card of the exported artifact, once it has been judged (None when another model was evaluated)."""
    from cvplatform.export.model_card import Evaluation, ModelCardInputs, write_model_card

    export = _read_export_summary(paths)
    if not model_sha or export.get("sha256") != model_sha:
        return None
    try:
        rel = manifest_path.resolve().relative_to(paths.root).as_posix()
    except ValueError:
        rel = str(manifest_path)
    evaluation = Evaluation(summary={**summary, "scenarios": rows}, gate_report=gate_doc)
    return write_model_card(
        ModelCardInputs(export=export, intended_use=params.export.intended_use, manifest=manifest,
                        manifest_path=rel, evaluation=evaluation, lineage=export.get("lineage") or {}),
        out_dir / "model_card.md",
    )


# --------------------------------------------------------------------------- scenario execution
@dataclass
class _Built:
    scenario: Scenario
    ids: list[str]
    y: np.ndarray
    labels: list[str]
    base: np.ndarray
    """Indices into the source images (clean split or curated set)."""
    source: _EvalImages
    note: str = ""


def _build_scenarios(
    suite_path: Path, scenarios: list[Scenario], data: _EvalImages,
    manifest: pd.DataFrame, root: Path, predictor: Predictor,
) -> list[_Built]:
    import numpy as np

    from cvplatform.evaluation.scenarios import read_hashes, select_curated, select_slice

    built = []
    for sc in scenarios:
        if sc.kind in ("clean", "corruption"):
            idx = np.arange(len(data.ids))
            built.append(_Built(sc, data.ids, data.y, data.labels, idx, data))
        elif sc.kind == "slice":
            sub = select_slice(data.rows, sc, str(suite_path))
            idx = sub.index.to_numpy()
            note = "slice matched no image of the split" if len(idx) == 0 else ""
            built.append(_Built(sc, [data.ids[i] for i in idx], data.y[idx], [data.labels[i] for i in idx],
                                idx, data, note))
        elif sc.kind == "curated":
            hpath = Path(sc.hashes_file or "")
            hpath = hpath if hpath.is_absolute() else root / hpath
            hashes = read_hashes(hpath, scenario=sc.name)
            rows = select_curated(manifest, hashes, sc, hpath)
            cur = _load_images(rows, root, predictor, f"{hpath} (scenario {sc.name!r})")
            idx = np.arange(len(cur.ids))
            note = "curated list is empty" if len(idx) == 0 else ""
            built.append(_Built(sc, cur.ids, cur.y, cur.labels, idx, cur, note))
    return built


def _scenario_pixels(b: _Built, seed: int, subset: np.ndarray | None = None) -> np.ndarray:
    """The uint8 pixels of scenario ``b`` (optionally only rows ``subset`` of it)."""
    from cvplatform.evaluation.corruptions import apply_corruption

    rows = b.base if subset is None else b.base[subset]
    imgs = b.source.images[rows]
    if b.scenario.kind == "corruption":
        ids = [b.source.ids[i] for i in rows]
        imgs = apply_corruption(imgs, ids, str(b.scenario.corruption), int(b.scenario.severity or 0), seed,
                                where=f"scenario {b.scenario.name!r}")
    return imgs


def _predict(predictors: list[Predictor], b: _Built, seed: int, batch_size: int) -> list[np.ndarray]:
    """Logits of every predictor on scenario ``b`` (pixels generated once per chunk, shared)."""
    import numpy as np

    n = len(b.ids)
    outs = [np.empty((n, len(p.class_names)), dtype=np.float32) for p in predictors]
    chunk = max(batch_size, 1)
    for s in range(0, n, chunk):
        sel = np.arange(s, min(n, s + chunk))
        pix = _scenario_pixels(b, seed, sel)
        for out, p in zip(outs, predictors, strict=True):
            out[sel] = p.predict_logits(pix, batch_size=batch_size)
    return outs


def _gallery(b: _Built, res: ScenarioResult, class_names: list[str], k: int, seed: int):
    import numpy as np

    from cvplatform.evaluation.report import GalleryItem

    if k <= 0 or res.n == 0:
        return [], None
    wrong = np.flatnonzero(~res.correct)
    if len(wrong) == 0:
        return [], None
    conf = res.confidence[wrong]
    order = wrong[np.lexsort((np.array([res.image_ids[i] for i in wrong]), -conf))][:k]
    pix = _scenario_pixels(b, seed, order)
    items = []
    for i in order:
        row = b.source.rows.iloc[int(b.base[i])]
        items.append(GalleryItem(res.image_ids[i], class_names[int(res.y_true[i])],
                                 class_names[int(res.y_pred[i])], float(res.confidence[i]), str(row["path"])))
    return items, pix


# --------------------------------------------------------------------------- mlflow
def _train_run(paths: ProjectPaths) -> dict[str, Any]:
    p = paths.artifacts("train") / "summary.json"
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        log.warning("%s is unreadable; evaluation results are not logged to MLflow", p)
        return {}


def _log_to_mlflow(run_id: str, tracking_uri: str, metrics: dict[str, float], tags: dict[str, str],
                   files: list[Path], plots_dir: Path) -> None:
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    have = client.get_run(run_id).data.metrics
    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, 0) for k, v in metrics.items()
             if v is not None and not (k in have and have[k] == float(v))]
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i : i + 500])
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    for f in files:
        if f.is_file():
            client.log_artifact(run_id, str(f), artifact_path="evaluate")
    if plots_dir.is_dir():
        client.log_artifacts(run_id, str(plots_dir), artifact_path="evaluate/plots")


def _mlflow_key(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in name)


# --------------------------------------------------------------------------- the stage
def run_evaluate(
    params: Params,
    *,
    root: str | os.PathLike[str] | None = None,
    model: str | os.PathLike[str] | None = None,
) -> EvaluateResult:
    """Evaluate a model on the scenario suite, decide the release gates and write the report.

    Args:
        params: Loaded params (uses ``evaluate.*`` and ``project.seed``).
        root: Project root (default: cwd).
        model: ``*.ckpt``, ``*.onnx`` or ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``;
            default ``evaluate.model`` (``artifacts/train/best.ckpt``).

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
    import numpy as np

    from cvplatform.data.manifest import read_manifest
    from cvplatform.evaluation.gates import check_gates
    from cvplatform.evaluation.metrics import ScenarioResult, corruption_error_summary, softmax
    from cvplatform.evaluation.predictors import load_predictor
    from cvplatform.evaluation.report import ReportContext, scenario_status, write_report
    from cvplatform.evaluation.scenarios import load_suite
    from cvplatform.tracking import tracking_uri as default_tracking_uri

    t0 = time.perf_counter()
    paths = ProjectPaths.at(root)
    cfg = params.evaluate
    seed = int(params.project.seed)
    out_dir = paths.artifacts(STAGE)
    suite_path = paths.resolve(cfg.suite)
    suite = load_suite(suite_path)
    scenarios = suite.expand()
    train_summary = _train_run(paths)
    # the registry (models:/ refs, champion) follows the current configuration; the training run is
    # logged to wherever it was created
    mlflow_uri = default_tracking_uri(paths.root)
    run_uri = str(train_summary.get("tracking_uri") or mlflow_uri)

    ref = str(model) if model is not None else cfg.model
    log.info("evaluate: loading model %s", ref)
    predictor = load_predictor(ref, root=paths.root, tracking_uri=mlflow_uri)
    model_sha = _model_sha256(ref, paths, predictor)
    class_names = list(predictor.class_names)
    bad_critical = [c for c in suite.critical_classes if c not in class_names]
    if bad_critical:
        raise ConfigError(
            f"{suite_path}: critical_classes {bad_critical} are not classes of the model {predictor.name} "
            f"({class_names}). Fix critical_classes in the suite."
        )

    manifest_path = paths.resolve(cfg.manifest)
    manifest = read_manifest(manifest_path)
    split_rows = manifest[manifest["split"] == cfg.split].sort_values("sha256", kind="mergesort")
    if cfg.max_images is not None:
        split_rows = split_rows.head(cfg.max_images)
    if split_rows.empty:
        raise DataError(
            f"{manifest_path}: split {cfg.split!r} has no images (splits present: "
            f"{sorted(manifest['split'].unique().tolist())}). Set evaluate.split or re-run ingest."
        )
    data = _load_images(split_rows, paths.root, predictor, f"{manifest_path} (split {cfg.split!r})")
    built = _build_scenarios(suite_path, scenarios, data, manifest, paths.root, predictor)

    timings: dict[str, float] = {}
    mark = t0

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        timings[name] = round(now - mark, 4)
        mark = now

    lap("load")
    # champion
    champion, champion_uri, champion_note, incompatible = _champion(cfg, mlflow_uri, predictor, paths.root)
    lap("champion")
    # run the scenarios
    predictors: list[Predictor] = [predictor] + ([champion] if champion is not None else [])
    results: dict[str, ScenarioResult] = {}
    champ_results: dict[str, ScenarioResult] = {}
    predictions = 0
    from cvplatform.utils.logs import track

    for b in track(built, "evaluate", unit="scenarios", logger=log):
        sc = b.scenario
        logits = _predict(predictors, b, seed, cfg.batch_size) if b.ids else [
            np.empty((0, len(class_names)), np.float32) for _ in predictors]
        predictions += len(b.ids)
        common = {
            "critical_classes": suite.critical_classes, "n_bootstrap": cfg.bootstrap_samples,
            "confidence": cfg.confidence, "seed": _scenario_seed(seed, sc.name), "n_bins": cfg.calibration_bins,
            "note": b.note, "corruption": sc.corruption, "severity": sc.severity,
        }
        results[sc.name] = ScenarioResult.from_predictions(
            sc.name, sc.kind, b.ids, b.y, softmax(logits[0]) if b.ids else logits[0], class_names, **common)
        if champion is not None:
            champ_results[sc.name] = ScenarioResult.from_predictions(
                sc.name, sc.kind, b.ids, b.y, softmax(logits[1]) if b.ids else logits[1], class_names, **common)
        log.debug("evaluate: %s done (%d images)", sc.name, len(b.ids))

    lap("scenarios")
    policy = suite.policy(seed=seed, n_bootstrap=cfg.bootstrap_samples, confidence=cfg.confidence)
    gates: GateReport = check_gates(results, policy, champ_results if champion is not None else None,
                                    champion_note=champion_note or None, champion_incompatible=incompatible)
    gates = replace(gates, champion=champion_uri)

    clean_name = next(s.name for s in scenarios if s.kind == "clean")
    clean = results[clean_name]
    corr_errors = {(str(s.corruption), int(s.severity or 0)): results[s.name].metrics.error
                   for s in scenarios if s.kind == "corruption" and results[s.name].metrics is not None}
    ref_errors = {(str(s.corruption), int(s.severity or 0)): champ_results[s.name].metrics.error
                  for s in scenarios if s.kind == "corruption" and s.name in champ_results
                  and champ_results[s.name].metrics is not None} if champ_results else None
    cs = corruption_error_summary(clean.metrics.error if clean.metrics else 1.0, corr_errors, clean.n,
                                  ref_errors, champion_uri)

    lap("gates")
    # outputs (always written, also when the gates fail)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    galleries, gallery_images = {}, {}
    for b in built:
        items, pix = _gallery(b, results[b.scenario.name], class_names, cfg.gallery_size, seed)
        if items:
            galleries[b.scenario.name] = items
            gallery_images[b.scenario.name] = pix
    ctx = ReportContext(
        model=predictor.name, suite=str(cfg.suite), split=cfg.split, class_names=class_names, scenarios=scenarios,
        results=results, gates=gates, corruption_summary=cs, champion=champion_uri, champion_note=champion_note,
        champion_results=champ_results or None, galleries=galleries, gallery_images=gallery_images,
        critical_classes=suite.critical_classes, confidence=cfg.confidence, seed=seed,
        extra={"model_sha256": model_sha},
    )
    written = write_report(ctx, out_dir)

    rows = []
    metrics_json: dict[str, Any] = {"scenarios": {}}
    for sc in scenarios:
        r = results[sc.name]
        m = r.metrics
        status = scenario_status(sc.name, gates)
        rows.append({
            "name": sc.name, "kind": sc.kind, "level": sc.gate.level, "n": r.n, "status": status,
            "corruption": sc.corruption, "severity": sc.severity,
            "accuracy": m.accuracy if m else None, "accuracy_ci": list(m.accuracy_ci) if m else None,
            "macro_f1": m.macro_f1 if m else None, "macro_f1_ci": list(m.macro_f1_ci) if m else None,
            "ece": m.ece if m else None, "critical_fpr": dict(m.critical_fpr) if m else {},
        })
        metrics_json["scenarios"][sc.name] = {
            "n": r.n, "accuracy": m.accuracy if m else None, "macro_f1": m.macro_f1 if m else None,
            "ece": m.ece if m else None, "passed": status in ("passed", "warned", "-"),
        }
    metrics_json.update({
        "clean": {
            "accuracy": clean.metrics.accuracy if clean.metrics else None,
            "accuracy_low": clean.metrics.accuracy_ci[0] if clean.metrics else None,
            "accuracy_high": clean.metrics.accuracy_ci[1] if clean.metrics else None,
            "macro_f1": clean.metrics.macro_f1 if clean.metrics else None,
            "ece": clean.metrics.ece if clean.metrics else None,
        },
        "gates_passed": gates.passed,
        "pass_rate": gates.pass_rate,
        "pass_rate_all": gates.extra.get("pass_rate_all"),
        "mce": cs.get("mce"),
        "error_multiple_vs_clean": cs.get("error_multiple_vs_clean"),
        "mean_degradation": cs.get("mean_degradation"),
        "mean_corruption_error": cs.get("mean_corruption_error"),
    })
    written["scenarios"] = write_json(out_dir / "scenarios.json", metrics_json)
    written["metrics"] = write_json(out_dir / "metrics.json", _headline_metrics(rows))
    gate_doc = {
        **gates.to_dict(),
        "model": predictor.name,
        "model_sha256": model_sha,
        "split": cfg.split,
        "n_images": len(data.ids),
        "class_names": class_names,
        "suite": str(cfg.suite),
        "champion_note": champion_note,
        "policy": policy.model_dump(mode="json"),
        "corruption_summary": cs,
    }
    written["gate_report"] = write_json(out_dir / "gate_report.json", gate_doc)

    card = _write_card(paths, params, out_dir, model_sha, manifest, manifest_path, gate_doc, rows, {
        "model": predictor.name, "model_sha256": model_sha, "suite": str(cfg.suite), "split": cfg.split,
        "passed": gates.passed, "champion": champion_uri, "champion_note": champion_note,
        "n_images": len(data.ids), "pass_rate": gates.pass_rate, "mce": cs.get("mce"),
        "error_multiple_vs_clean": cs.get("error_multiple_vs_clean"), "scenarios": rows,
        "failures": [c.line() for c in gates.failures], "warnings": [c.line() for c in gates.warnings],
    })
    if card is not None:
        written["model_card"] = card

    lap("report")
    # mlflow: only when the evaluated model is the training run's checkpoint or its exported artifact
    run_id = train_summary.get("mlflow_run_id") or train_summary.get("run_id")
    mlflow_note = ""
    logged_run: str | None = None
    is_train_model = _belongs_to_run(paths, train_summary, ref, model_sha)
    if not cfg.log_to_mlflow:
        mlflow_note = "evaluate.log_to_mlflow is false"
    elif not run_id:
        mlflow_note = "no training run id in artifacts/train/summary.json"
    elif not is_train_model:
        mlflow_note = (f"model {ref} is neither the training run's checkpoint nor its exported artifact; not logged "
                       f"to run {run_id}")
    else:
        mm: dict[str, float] = {}
        for sc in scenarios:
            m = results[sc.name].metrics
            if m is not None:
                key = _mlflow_key(sc.name)
                mm[f"eval.{key}.accuracy"] = m.accuracy
                mm[f"eval.{key}.macro_f1"] = m.macro_f1
                mm[f"eval.{key}.ece"] = m.ece
        for k in ("pass_rate", "mce", "error_multiple_vs_clean", "mean_degradation"):
            v = metrics_json.get(k)
            if v is not None:
                mm[f"eval.{k}"] = float(v)
        tags = {"eval.gates_passed": str(gates.passed).lower(), "eval.suite": str(cfg.suite),
                "eval.failed_checks": str(len(gates.failures)), "eval.champion": champion_uri or "none",
                "eval.model_sha256": model_sha or "unknown"}
        try:
            _log_to_mlflow(str(run_id), run_uri, mm, tags,
                           [written["report_md"], written["report_html"], written["metrics"], written["scenarios"],
                            written["gate_report"],
                            *([written["model_card"]] if "model_card" in written else [])],
                           out_dir / "plots")
            logged_run = str(run_id)
        except Exception as exc:  # tracking is secondary: outputs on disk are the source of truth
            mlflow_note = f"logging to MLflow run {run_id} failed: {type(exc).__name__}: {exc}"
            log.warning("evaluate: %s", mlflow_note)

    lap("mlflow")
    duration = time.perf_counter() - t0
    result = EvaluateResult(
        model=predictor.name, model_sha256=model_sha, suite=str(cfg.suite), split=cfg.split, passed=gates.passed,
        n_images=len(data.ids), class_names=class_names, scenarios=rows, pass_rate=gates.pass_rate,
        mce=cs.get("mce"), error_multiple_vs_clean=cs.get("error_multiple_vs_clean"),
        mean_degradation=cs.get("mean_degradation"), champion=champion_uri, champion_note=champion_note,
        failures=[c.line() for c in gates.failures], warnings=[c.line() for c in gates.warnings],
        outputs={k: str(v) for k, v in written.items()
                 if k in ("report_md", "report_html", "metrics", "gate_report", "model_card")},
        mlflow_run_id=logged_run, mlflow_note=mlflow_note, predictions=predictions,
        duration_s=round(duration, 3), timings_s=timings, seed=seed,
    )
    result.write_summary(out_dir)
    log.info("evaluate: %d scenarios, %d predictions in %.1fs; gates %s", len(scenarios), predictions, duration,
             "passed" if gates.passed else "FAILED")
    if not gates.passed:
        lines = "\n".join(f"  {c.line()}" for c in gates.failures)
        exc = GateFailed(
            f"evaluation gates failed for {predictor.name} ({len(gates.failures)} must-pass check(s)):\n{lines}\n"
            f"Report: {written['report_html']} (summary: {result.summary_path})"
        )
        exc.result = result  # type: ignore[attr-defined]
        raise exc
    return result


__all__ = ["EvaluateResult", "find_champion", "run_evaluate"]
