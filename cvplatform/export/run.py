"""The ``export`` stage: ``run_export(params) -> ExportResult`` (``cvplatform export``).

What it does, in order:

1. loads the checkpoint (``--checkpoint`` or ``export.checkpoint``) and checks it
   against params and the manifest: architecture = ``train.model.arch``, classes =
   the manifest's sorted labels (``train.num_classes`` when set), and a recipe the
   preprocessing contract can express (resize + normalise only) — else ModelError;
2. exports fp32 ONNX (fixed opset, dynamic batch, ``input`` -> ``logits``), checks it
   with ``onnx.checker`` (full), and stores the preprocessing contract and version
   info in its ``metadata_props`` (:mod:`cvplatform.export.onnx_export`);
3. **parity gate**: onnxruntime vs PyTorch on the manifest's test split
   (``export.parity``); fails with :class:`~cvplatform.errors.GateFailed` naming the
   worst images; NaN/Inf outputs raise :class:`~cvplatform.errors.ModelError`;
4. **INT8** (``export.int8``): static QDQ quantization calibrated on the train split,
   judged on the scenario suite against fp32 (same code, same images); shipped
   only if every must-pass scenario (and clean) drops at most ``max_drop``;
5. copies the chosen file to ``model.onnx`` and runs it once more;
6. **benchmark** (``export.benchmark``): PyTorch eager vs ORT fp32 vs ORT INT8;
7. writes metrics and summary; logs to the training MLflow run. The model card is
   written by the ``evaluate`` stage, which runs *after* export on the chosen
   artifact (it needs the verdict of the gates on what ships).

Reads: ``export.checkpoint`` (``artifacts/train/best.ckpt``), ``project.manifest``
(and the images it lists), ``artifacts/train/summary.json`` (run id, data version),
``dvc.lock`` (data version fallback), the scenario suite (``export.int8.suite`` or
``evaluate.suite``) on which INT8 is compared with fp32.

Writes ``artifacts/export/``: ``model_fp32.onnx``, ``model_int8.onnx`` (when INT8 is
enabled), ``model.onnx`` (a copy of the chosen file), ``parity.json``, ``int8.json`` and
``benchmark.json`` (``{"enabled": false, ...}`` when disabled), ``metrics.json``,
``summary.json``. When the parity gate fails only ``model_fp32.onnx`` and
``parity.json`` are left: no ``model.onnx`` and no ``summary.json``, so nothing
downstream can pick up an unverified model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cvplatform.errors import DataError, ModelError
from cvplatform.stage import StageResult
from cvplatform.utils.io import ProjectPaths, sha256_file, write_json

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from cvplatform.config import ExportParams, Params
    from cvplatform.models.checkpoint import LoadedModel
    from cvplatform.tasks.base import Task

log = logging.getLogger(__name__)

STAGE = "export"
FP32_NAME = "model_fp32.onnx"
INT8_NAME = "model_int8.onnx"
MODEL_NAME = "model.onnx"
#: Everything the stage writes under ``artifacts/export/`` (removed first on every run).
OUTPUTS: tuple[str, ...] = (
    FP32_NAME, INT8_NAME, MODEL_NAME, "parity.json", "int8.json", "benchmark.json", "metrics.json",
    "summary.json", "model_card.md",  # model_card.md: no longer written here (evaluate writes it); removed if stale
)


@dataclass
class ExportResult(StageResult):
    """What ``run_export`` returns (and writes to ``artifacts/export/summary.json``).

    The registry reads ``chosen``, ``artifact``, ``sha256``, ``precision``,
    ``int8_rejected_reason``, ``parity``, ``benchmark``, ``train_run_id``,
    ``data_hash`` and ``class_names``.
    """

    stage: ClassVar[str] = STAGE
    summary_model: ClassVar[str | None] = "ExportSummary"

    chosen: str
    """``fp32`` or ``int8``: which file ``model.onnx`` is."""
    artifact: str
    """``artifacts/export/model.onnx`` (relative to the project root)."""
    sha256: str
    """sha256 of ``model.onnx``."""
    precision: str
    """Precision of ``model.onnx`` (same as ``chosen``)."""
    int8_rejected_reason: str | None
    """Why INT8 does not ship (None when it ships)."""
    parity: dict[str, Any]
    """The fp32 parity report (``parity.json``)."""
    benchmark: dict[str, Any] | None
    """The benchmark report (``benchmark.json``), None when disabled."""
    train_run_id: str | None
    """MLflow run of the training that produced the checkpoint."""
    data_hash: str | None
    """DVC md5 of the manifest the model was trained on."""
    class_names: list[str]
    arch: str
    arch_kwargs: dict[str, Any]
    contract: dict[str, Any]
    """The preprocessing contract (input_size, mean, std, class_names, channel_order, layout, interpolation, resize
    and, for a letterbox, pad_value)."""
    opset: int
    size_bytes: int
    """Size of ``model.onnx``."""
    checkpoint: str
    checkpoint_sha256: str
    fp32: dict[str, Any]
    """``path``, ``sha256``, ``size_bytes`` of ``model_fp32.onnx``."""
    int8: dict[str, Any]
    """``enabled``, ``path``, ``sha256``, ``size_bytes``, ``accepted``, calibration info, ``decision``."""
    metadata: dict[str, str]
    """The ``metadata_props`` of ``model.onnx``."""
    lineage: dict[str, Any]
    """git commit, data hash (+source), params hashes, MLflow run and URI, checkpoint sha256."""
    model_card: str = ""
    """Where the model card of this artifact will be (written by the evaluate stage, which runs next)."""
    outputs: dict[str, str] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    """Run the outputs were logged to (None when not logged; see ``mlflow_note``)."""
    mlflow_note: str = ""
    duration_s: float = 0.0

    def lines(self) -> list[str]:
        p = self.parity
        out = [
            f"export: {self.artifact} = {self.chosen} ({self.size_bytes / 1024:.1f} KiB, sha256 {self.sha256[:12]}…) "
            f"from {self.checkpoint}",
            f"  model: {self.arch} on {len(self.class_names)} classes, input {self.contract.get('input_size')}, "
            f"opset {self.opset}",
            f"  parity (onnxruntime fp32 vs PyTorch, {p.get('n')} test images): max |Δlogit| "
            f"{p.get('max_abs_diff', float('nan')):.2e} (atol {p.get('atol')}), agreement "
            f"{p.get('agreement', p.get('top1_agreement', float('nan'))):.2%} (min {p.get('min_agreement')}): "
            f"{'PASSED' if p.get('passed') else 'FAILED'}",
        ]
        if not self.int8.get("enabled"):
            out.append("  INT8: disabled (export.int8.enabled: false)")
        elif self.chosen == "int8":
            d = self.int8.get("decision") or {}
            out.append(f"  INT8: accepted (worst drop {d.get('worst_drop', 0) or 0:+.4f} on {d.get('worst_scenario')} "
                       f"<= max_drop {d.get('max_drop')}); shipping INT8")
        else:
            out.append(f"  INT8: rejected — {self.int8_rejected_reason}; shipping fp32")
        b = self.benchmark
        if b:
            out.append(f"  benchmark ({b.get('threads')} thread(s), batch-1 latency; throughput at batch "
                       f"{b.get('batch_size')}; {b.get('price_per_core_hour')} USD/core-hour):")
            out.append(f"    {'runtime':<12} {'provider':<22} {'p50 ms':>8} {'p95 ms':>8} {'img/s':>10} {'USD/1k':>10}")
            for name, r in (b.get("runtimes") or {}).items():
                lat = r["latency_ms"]
                out.append(f"    {name:<12} {r['provider']:<22} {lat['p50']:>8.3f} {lat['p95']:>8.3f} "
                           f"{r['throughput_ips']:>10.1f} {r['cost_per_1k_usd']:>10.3g}")
            sp = b.get("speedups") or {}
            if sp:
                out.append("    speed-ups: " + ", ".join(f"{k} {v:.2f}x" for k, v in sp.items()))
            from cvplatform.export.model_card import int8_speed_note

            note = int8_speed_note({"chosen": self.chosen, "benchmark": b})
            if note:
                out.append(f"  note: {note}")
        else:
            out.append("  benchmark: disabled (export.benchmark.enabled: false)")
        if self.model_card:
            out.append(f"  model card: {self.model_card} (written by `cvplatform evaluate` once the gates judged "
                       "this artifact)")
        out.append(f"  mlflow run: {self.mlflow_run_id or 'not logged'}"
                   + (f" ({self.mlflow_note})" if self.mlflow_note else ""))
        out.append(f"  time: {self.duration_s:.1f}s")
        return out


# --------------------------------------------------------------------------- helpers
def _read_train_summary(root: Path) -> dict[str, Any]:
    """``artifacts/train/summary.json`` as a dict ({} when missing; a warning and {} when invalid)."""
    from cvplatform.artifacts import ArtifactError, TrainSummary

    try:
        summary = TrainSummary.read_if_present(TrainSummary.at(root))
    except ArtifactError as exc:
        log.warning("export: %s; lineage from it is not available", exc)
        return {}
    return summary.to_dict() if summary is not None else {}


def check_checkpoint_matches(loaded: LoadedModel, params: Params, manifest: pd.DataFrame, manifest_path: Path,
                             *, task: Task | None = None, root: Path | None = None) -> None:
    """Raise ModelError when the checkpoint's architecture or classes disagree with params / the manifest.

    The manifest's classes are what the task reads from it (``task.class_names``: classification's sorted
    labels, detection's box classes); ``root`` is the project root relative paths are under (default cwd).

    Example:
        >>> check_checkpoint_matches(load_checkpoint("best.ckpt"), params, manifest, Path("m.parquet"))  # doctest: +SKIP
    """
    from cvplatform.tasks import get_task

    where = str(loaded.path)
    want_arch = params.train.model.arch
    if loaded.arch != want_arch:
        raise ModelError(
            f"{where}: checkpoint architecture {loaded.arch!r} differs from train.model.arch {want_arch!r} in the "
            f"params. Export the checkpoint trained with these params (re-run `cvplatform train`), pass the right "
            f"--checkpoint, or set train.model.arch: {loaded.arch}."
        )
    labels = (task or get_task()).class_names(manifest, Path(root or Path.cwd()), str(manifest_path),
                                              for_training=False)
    names = [str(c) for c in loaded.class_names]
    if names != labels:
        missing = [c for c in labels if c not in names]
        extra = [c for c in names if c not in labels]
        detail = []
        if missing:
            detail.append(f"manifest classes not in the checkpoint: {missing}")
        if extra:
            detail.append(f"checkpoint classes not in the manifest: {extra}")
        if not detail:
            detail.append("same classes in a different order")
        raise ModelError(
            f"{where}: checkpoint has {len(names)} classes {names} but the manifest {manifest_path} has "
            f"{len(labels)} classes {labels} ({'; '.join(detail)}). Re-train on this manifest (`cvplatform train`) "
            "or export with the manifest the checkpoint was trained on (project.manifest)."
        )
    if params.train.num_classes is not None and params.train.num_classes != loaded.num_classes:
        raise ModelError(
            f"{where}: checkpoint has {loaded.num_classes} classes but train.num_classes is "
            f"{params.train.num_classes}. Set train.num_classes: {loaded.num_classes} (or null), or re-train."
        )


def same_model_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when ``a`` and ``b`` are the same file, or the same ``artifacts/<stage>/<file>`` of a project that moved.

    Stage summaries record absolute paths; a project copied or mounted elsewhere (another
    Airflow worker, a CI checkout) keeps its layout, so the last three path parts identify it.

    Example:
        >>> same_model_file("/a/artifacts/train/best.ckpt", "/b/artifacts/train/best.ckpt")
        True
        >>> same_model_file("/a/artifacts/train/best.ckpt", "/a/artifacts/train/last.ckpt")
        False
    """
    pa, pb = Path(a), Path(b)
    try:
        if pa.resolve() == pb.resolve():
            return True
    except OSError:  # pragma: no cover
        pass
    return len(pa.parts) >= 3 and pa.parts[-3:] == pb.parts[-3:] and pa.parts[-3] == "artifacts"


def _is_training_checkpoint(paths: ProjectPaths, train_summary: dict[str, Any], ckpt: Path) -> bool:
    recorded = [train_summary.get("best_checkpoint"), train_summary.get("last_checkpoint")]
    return any(r and same_model_file(r, ckpt) for r in recorded)


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _rel(paths: ProjectPaths, p: Path) -> str:
    try:
        return p.resolve().relative_to(paths.root).as_posix()
    except ValueError:
        return str(p)


def _file_info(paths: ProjectPaths, p: Path) -> dict[str, Any]:
    return {"path": _rel(paths, p), "sha256": sha256_file(p), "size_bytes": p.stat().st_size}


def _metrics(bench: dict[str, Any] | None, chosen: str, sizes: dict[str, int]) -> dict[str, Any]:
    """What ``dvc metrics show`` prints for export: the shipped model's size and batch-1 latency.

    Parity, the INT8 decision and every runtime's latency/throughput/cost are in
    ``parity.json``, ``int8.json``, ``benchmark.json`` and ``summary.json``.
    """
    from cvplatform.export.benchmark import ORT_FP32, ORT_INT8

    m: dict[str, Any] = {"size_mb": round(sizes["shipped"] / 1e6, 4)}
    runtime = (bench or {}).get("runtimes", {}).get(ORT_INT8 if chosen == "int8" else ORT_FP32)
    if runtime:
        m["latency_ms"] = round(float(runtime["latency_ms"]["p50"]), 4)
    return m


def _mlflow_log(run_id: str, tracking_uri: str, metrics: dict[str, float], tags: dict[str, str],
                files: list[Path]) -> None:
    """Log metrics (those the run lacks), tags and files to the training run; retried as a whole (idempotent)."""
    from cvplatform.mlflow_store import log_to_run

    log_to_run(tracking_uri, run_id, f"log the export to MLflow run {run_id}", metrics=metrics, tags=tags,
               files=files, artifact_path=STAGE)


# --------------------------------------------------------------------------- the stage's steps
@dataclass
class _Inputs:
    """What the export reads, checked before anything is written."""

    ckpt: Path
    manifest_path: Path
    manifest: pd.DataFrame
    torch_pred: Any
    """The checkpoint as a predictor (``TorchCheckpointPredictor``: ``.loaded``, ``.contract``)."""
    test_rows: pd.DataFrame
    cal_rows: pd.DataFrame | None
    task: Task
    """The project's task (``project.task``): parity agreement and the INT8 metric are its questions."""


def _read_inputs(params: Params, paths: ProjectPaths, checkpoint: str | os.PathLike[str] | None) -> _Inputs:
    """Load the manifest and the checkpoint, check they agree, select the parity and calibration rows.

    Raises:
        ModelError: missing/corrupt checkpoint, architecture or classes that disagree with params/manifest.
        DataError: missing manifest, an empty test split, an empty calibration split.
    """
    from cvplatform.data.manifest import read_manifest
    from cvplatform.evaluation.predictors import TorchCheckpointPredictor
    from cvplatform.export.suite import select_split
    from cvplatform.tasks import get_task

    cfg = params.export
    ckpt = paths.resolve(checkpoint if checkpoint is not None else cfg.checkpoint)
    manifest_path = paths.resolve(params.project.manifest)
    manifest = read_manifest(manifest_path)
    log.info("export: loading %s", ckpt)
    task = get_task(params.project.task)
    # ModelError: missing/corrupt, or eval steps beyond resize+normalise
    torch_pred = TorchCheckpointPredictor(ckpt, task=task)
    check_checkpoint_matches(torch_pred.loaded, params, manifest, manifest_path, task=task, root=paths.root)
    test_rows = select_split(manifest, "test", cfg.parity.max_images, source=str(manifest_path), key="export.parity")
    cal_rows = None
    if cfg.int8.enabled:
        split = cfg.int8.calibration_split
        cal_rows = manifest[manifest["split"] == split].sort_values("sha256", kind="mergesort")
        cal_rows = cal_rows.head(cfg.int8.calibration_images)
        if cal_rows.empty:
            raise DataError(
                f"{manifest_path}: the INT8 calibration split {split!r} (export.int8.calibration_split) has no "
                f"images (splits present: {sorted(str(s) for s in manifest['split'].unique())}). Re-run "
                "`cvplatform ingest` so it gets images, set export.int8.calibration_split to a split that has "
                "images, or set export.int8.enabled: false."
            )
    return _Inputs(ckpt, manifest_path, manifest, torch_pred, test_rows, cal_rows, task)


@dataclass
class _Lineage:
    """Where the checkpoint came from: its training run and data version."""

    train_summary: dict[str, Any]
    train_run_id: str | None
    data_hash: str
    data_hash_source: str | None
    ckpt_sha: str


def _read_lineage(paths: ProjectPaths, inp: _Inputs) -> _Lineage:
    """The training run and data version of the checkpoint (from the training summary when it is that run's)."""
    from cvplatform.tracking import data_version

    train_summary = _read_train_summary(paths.root)
    if train_summary and not _is_training_checkpoint(paths, train_summary, inp.ckpt):
        log.warning("export: %s is not the checkpoint recorded in artifacts/train/summary.json (%s); its training "
                    "run id and data version are unknown and nothing is logged to that run",
                    inp.ckpt, train_summary.get("best_checkpoint"))
        train_summary = {}
    train_run_id = train_summary.get("mlflow_run_id") or train_summary.get("run_id")
    data_hash = train_summary.get("data_version")
    data_hash_source = "artifacts/train/summary.json" if data_hash else None
    if not data_hash:
        dv = data_version(inp.manifest_path, paths.root)
        data_hash, data_hash_source = dv.md5, dv.source
    return _Lineage(train_summary, train_run_id, data_hash, data_hash_source, sha256_file(inp.ckpt))


def _export_fp32(inp: _Inputs, lin: _Lineage, cfg: ExportParams, out_dir: Path) -> tuple[Path, Any]:
    """Export the fp32 ONNX model and load it back with its own metadata; ``(path, OnnxPredictor)``."""
    from cvplatform.evaluation.predictors import OnnxPredictor
    from cvplatform.export.onnx_export import export_onnx, version_metadata

    loaded, contract = inp.torch_pred.loaded, inp.torch_pred.contract
    version = version_metadata(
        arch=loaded.arch, arch_kwargs=loaded.arch_kwargs, train_run_id=lin.train_run_id, data_hash=lin.data_hash,
        checkpoint_sha256=lin.ckpt_sha, checkpoint_epoch=loaded.epoch, precision="fp32", opset=cfg.opset,
    )
    fp32_path = export_onnx(loaded, out_dir / FP32_NAME, contract, extra_metadata=version, opset=cfg.opset,
                            exporter=cfg.exporter, task=inp.task)
    fp32_pred = OnnxPredictor(fp32_path, task=inp.task)  # run what we export: load it back with its own metadata
    if fp32_pred.contract != contract:
        raise ModelError(
            f"{fp32_path}: the preprocessing contract read back from the ONNX metadata ({fp32_pred.contract}) "
            f"differs from the checkpoint's ({contract}). This is a bug in the export; please report it."
        )
    return fp32_path, fp32_pred


@dataclass
class _Parity:
    test: Any
    """The test split's images (``load_images``)."""
    test_paths: list[str]
    report: Any
    doc: dict[str, Any]
    path: Path


def _parity_gate(paths: ProjectPaths, inp: _Inputs, cfg: ExportParams, fp32_path: Path, fp32_pred: Any,
                 out_dir: Path) -> _Parity:
    """Compare the fp32 ONNX model with the checkpoint on the test split; write parity.json.

    Raises:
        GateFailed: the ONNX model does not reproduce the checkpoint.
    """
    from cvplatform.evaluation.suite_runner import targets_of
    from cvplatform.export.parity import raise_if_failed, run_parity
    from cvplatform.export.suite import load_images

    test = load_images(inp.test_rows, paths.root, inp.torch_pred, f"{inp.manifest_path} (split 'test')")
    test_paths = [str(v) for v in test.rows["path"].tolist()]
    classes = list(inp.torch_pred.class_names)
    parity = run_parity(
        inp.torch_pred, fp32_pred, test.images, ids=test.ids, paths=test_paths, labels=test.labels,
        atol=cfg.parity.atol, min_agreement=cfg.parity.min_agreement, worst=cfg.parity.worst,
        batch_size=cfg.batch_size, split="test", task=inp.task,
        targets=targets_of(inp.task, test, classes), max_metric_delta=cfg.parity.max_metric_delta, class_names=classes,
    )
    parity.reference = f"{_rel(paths, inp.ckpt)} (PyTorch)"
    parity.candidate = f"{_rel(paths, fp32_path)} (onnxruntime)"
    doc = parity.to_dict()
    path = write_json(out_dir / "parity.json", doc)
    log.info("export: parity %s", parity.line())
    raise_if_failed(parity, report_path=str(path))
    return _Parity(test, test_paths, parity, doc, path)


@dataclass
class _Int8:
    report: dict[str, Any]
    """``int8.json``."""
    path: Path | None = None
    accepted: bool = False
    rejected_reason: str | None = "INT8 disabled (export.int8.enabled: false)"


def _try_int8(params: Params, paths: ProjectPaths, inp: _Inputs, par: _Parity, fp32_path: Path, fp32_pred: Any,
              out_dir: Path) -> _Int8:
    """Quantize to INT8 and accept it only when no judged scenario of the suite drops too much; write int8.json.

    A broken INT8 model is rejected (fp32 ships), never an error: INT8 is an optimisation.
    """
    cfg = params.export
    out = _Int8({"enabled": bool(cfg.int8.enabled)})
    if cfg.int8.enabled:
        _quantize_and_decide(params, paths, inp, par, fp32_path, fp32_pred, out_dir, out)
    write_json(out_dir / "int8.json", out.report)  # always written (DVC outs are unconditional)
    return out


def _quantize_and_decide(params: Params, paths: ProjectPaths, inp: _Inputs, par: _Parity, fp32_path: Path,
                         fp32_pred: Any, out_dir: Path, out: _Int8) -> None:
    """Fill ``out``: the quantized file, its parity with the checkpoint, the suite comparison and the decision."""
    from cvplatform.evaluation.corruption_cache import open_cache
    from cvplatform.evaluation.predictors import OnnxPredictor
    from cvplatform.export.parity import run_parity
    from cvplatform.export.quantize import decide_int8, quantize_int8
    from cvplatform.export.suite import compare_on_suite, load_images
    from cvplatform.preprocess import preprocess

    cfg, int8 = params.export, out.report
    assert inp.cal_rows is not None
    cal = load_images(inp.cal_rows, paths.root, inp.torch_pred,
                      f"{inp.manifest_path} (calibration split {cfg.int8.calibration_split!r})")
    suite_ref = cfg.int8.suite or params.evaluate.suite
    int8.update({
        "calibration_split": cfg.int8.calibration_split, "calibration_images": len(cal.ids),
        "suite": suite_ref, "split": params.evaluate.split, "per_channel": cfg.int8.per_channel,
        "metric": inp.task.int8_metric,
        "higher_is_better": next((m.higher_is_better for m in inp.task.metrics if m.name == inp.task.int8_metric), True),
    })
    problem: str | None = None
    try:
        info = quantize_int8(fp32_path, out_dir / INT8_NAME, preprocess(cal.images, inp.torch_pred.contract),
                             per_channel=cfg.int8.per_channel, pre_process=cfg.int8.pre_process)
        out.path = info.path
        int8.update({"pre_processed": info.pre_processed, "note": info.note, **_file_info(paths, info.path)})
        int8_pred = OnnxPredictor(info.path, task=inp.task)
        test = par.test
        vs_torch = run_parity(
            inp.torch_pred, int8_pred, test.images, ids=test.ids, paths=par.test_paths, labels=test.labels,
            atol=float(cfg.parity.atol), min_agreement=0.0, worst=cfg.parity.worst, batch_size=cfg.batch_size,
            task=inp.task,
        )
        int8["vs_torch"] = {"n": vs_torch.n, "max_abs_diff": vs_torch.max_abs_diff,
                            "agreement": vs_torch.agreement, "top1_agreement": vs_torch.agreement,
                            "disagreements": vs_torch.disagreements}
    except ModelError as exc:  # INT8 is an optimisation: a broken INT8 model is rejected, fp32 ships
        problem = str(exc)
        log.warning("export: INT8 rejected: %s", problem)
    if problem is None:
        comps = compare_on_suite(
            fp32_pred, int8_pred, suite_path=paths.resolve(suite_ref), manifest_path=inp.manifest_path,
            split=params.evaluate.split, root=paths.root, seed=int(params.project.seed),
            batch_size=cfg.batch_size, max_images=cfg.int8.max_images, task=inp.task,
            cache=open_cache(params.evaluate.corruption_cache, paths.root),
        )
        decision = decide_int8(comps, cfg.int8.max_drop)
        int8["decision"] = decision.to_dict()
        out.accepted, out.rejected_reason = decision.accepted, decision.reason
    else:
        int8["decision"] = {"accepted": False, "reason": problem, "max_drop": cfg.int8.max_drop,
                            "worst_scenario": None, "worst_drop": None, "scenarios": []}
        out.accepted, out.rejected_reason = False, f"INT8 model unusable: {problem}"
    int8["accepted"] = out.accepted
    log.info("export: INT8 %s", "accepted" if out.accepted else f"rejected: {out.rejected_reason}")


def _ship(inp: _Inputs, par: _Parity, q: _Int8, cfg: ExportParams, fp32_path: Path,
          out_dir: Path) -> tuple[str, Path]:
    """Copy the chosen file to model.onnx and check it loads and runs on its own metadata; ``(chosen, path)``."""
    from cvplatform.evaluation.predictors import OnnxPredictor
    from cvplatform.export.parity import check_finite

    chosen = "int8" if q.accepted and q.path is not None else "fp32"
    if chosen == "fp32" and not cfg.int8.enabled:
        q.rejected_reason = "INT8 disabled (export.int8.enabled: false)"
    if chosen == "int8":
        q.rejected_reason = None
    model_path = out_dir / MODEL_NAME
    _copy_atomic(q.path if chosen == "int8" and q.path is not None else fp32_path, model_path)
    final = OnnxPredictor(model_path, task=inp.task)  # the shipped file must load and run on its own metadata
    probe = final.predict(par.test.images[: min(len(par.test.ids), 8)], batch_size=cfg.batch_size)
    check_finite(probe, None, candidate_name=str(model_path), reference_name="", paths=par.test_paths)
    if final.contract != inp.torch_pred.contract:
        raise ModelError(f"{model_path}: preprocessing contract differs from the checkpoint's after copying; "
                         "this is a bug in the export, please report it.")
    return chosen, model_path


def _benchmark(params: Params, inp: _Inputs, fp32_path: Path, q: _Int8, out_dir: Path) -> dict[str, Any] | None:
    """Latency, throughput and cost of PyTorch and the ONNX runtimes; writes benchmark.json (None when off)."""
    cfg = params.export
    bench: dict[str, Any] | None = None
    if cfg.benchmark.enabled:
        from cvplatform.export.benchmark import ORT_FP32, ORT_INT8, benchmark_runtimes

        b = cfg.benchmark
        onnx_models: dict[str, Path] = {ORT_FP32: fp32_path}
        if q.path is not None and q.path.is_file():
            onnx_models[ORT_INT8] = q.path
        report = benchmark_runtimes(
            inp.torch_pred.loaded.model, onnx_models, inp.torch_pred.contract.input_size, threads=b.threads,
            batch_size=b.batch_size, iterations=b.iterations, warmup=b.warmup, providers=cfg.providers,
            price_per_core_hour=b.price_per_core_hour, seed=int(params.project.seed),
        )
        bench = report.to_dict()
    write_json(out_dir / "benchmark.json", bench if bench is not None else
               {"enabled": False, "reason": "export.benchmark.enabled is false"})
    return bench


def _lineage_doc(params: Params, paths: ProjectPaths, inp: _Inputs, lin: _Lineage, tracking: str) -> dict[str, Any]:
    """The lineage recorded in the summary and the model card."""
    from cvplatform.config import params_hash
    from cvplatform.tracking import airflow_run_id
    from cvplatform.utils.io import git_commit

    return {
        "git_commit": git_commit(paths.root),
        "data_hash": lin.data_hash,
        "data_hash_source": lin.data_hash_source,
        "params_hash": params_hash(params),
        "train_params_hash": (lin.train_summary.get("extra") or {}).get("params_hash"),
        "train_run_id": lin.train_run_id,
        "tracking_uri": tracking if lin.train_run_id else None,
        "checkpoint": _rel(paths, inp.ckpt),
        "checkpoint_sha256": lin.ckpt_sha,
        "airflow_run_id": airflow_run_id(),
    }


def _log_export(result: ExportResult, cfg: ExportParams, lin: _Lineage, par: _Parity, tracking: str,
                files: list[Path]) -> None:
    """Log the export's metrics, tags and files to the training run (a failure is a note, never an error)."""
    if not cfg.log_to_mlflow:
        result.mlflow_note = "export.log_to_mlflow is false"
        return
    if not lin.train_run_id:
        result.mlflow_note = "no training run id in artifacts/train/summary.json"
        return
    mm: dict[str, float] = {
        "export.parity.max_abs_diff": par.report.max_abs_diff,
        "export.parity.top1_agreement": par.report.agreement,  # the MLflow metric keeps its first name
        "export.int8.accepted": float(result.chosen == "int8"),
        "export.size_bytes": float(result.size_bytes),
    }
    for name, r in ((result.benchmark or {}).get("runtimes") or {}).items():
        mm[f"export.{name}.latency_p50_ms"] = r["latency_ms"]["p50"]
        mm[f"export.{name}.latency_p95_ms"] = r["latency_ms"]["p95"]
        mm[f"export.{name}.latency_p99_ms"] = r["latency_ms"]["p99"]
        mm[f"export.{name}.throughput_ips"] = r["throughput_ips"]
        mm[f"export.{name}.cost_per_1k_usd"] = r["cost_per_1k_usd"]
    tags = {"export.chosen": result.chosen, "export.sha256": result.sha256, "export.precision": result.chosen,
            "export.artifact": result.artifact, "export.opset": str(cfg.opset),
            "export.int8_rejected_reason": result.int8_rejected_reason or "none"}
    try:
        _mlflow_log(str(lin.train_run_id), tracking, mm, tags, files)
        result.mlflow_run_id = str(lin.train_run_id)
    except Exception as exc:  # tracking is secondary: the files on disk are the source of truth
        result.mlflow_note = f"logging to MLflow run {lin.train_run_id} failed: {type(exc).__name__}: {exc}"
        log.warning("export: %s", result.mlflow_note)


# --------------------------------------------------------------------------- the stage
def run_export(
    params: Params,
    *,
    root: str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> ExportResult:
    """Export the trained checkpoint to ONNX, gate it on parity, try INT8, benchmark.

    Args:
        params: Loaded params (``export.*``; also ``train.model.arch``, ``train.num_classes``,
            ``evaluate.suite``, ``evaluate.split``, ``project.seed`` and ``project.manifest``).
        root: Project root (default: cwd).
        checkpoint: Checkpoint to export; default ``export.checkpoint`` (``artifacts/train/best.ckpt``).

    Returns:
        :class:`ExportResult` (also written to ``artifacts/export/summary.json``).

    Raises:
        GateFailed: the fp32 ONNX model does not reproduce the checkpoint (parity gate).
        ModelError: missing/corrupt checkpoint, architecture or classes that disagree with
            params/manifest, a recipe the contract cannot express, an export that fails
            ``onnx.checker`` or produces NaN/Inf.
        DataError: missing manifest/images, an empty test split, an empty calibration split.
        ConfigError: an invalid scenario suite.

    Example:
        >>> from cvplatform import load_params, run_export
        >>> result = run_export(load_params("params.yaml"))  # doctest: +SKIP
        >>> result.chosen, result.artifact  # doctest: +SKIP
        ('int8', 'artifacts/export/model.onnx')
    """
    from cvplatform.utils.logs import quiet_libraries

    quiet_libraries()  # no third-party INFO floods in task logs and notebooks
    from cvplatform.export.onnx_export import read_metadata
    from cvplatform.tracking import tracking_uri as default_tracking_uri

    t0 = time.perf_counter()
    paths = ProjectPaths.at(root)
    cfg = params.export
    out_dir = paths.artifacts(STAGE)
    inp = _read_inputs(params, paths, checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)
    lin = _read_lineage(paths, inp)
    fp32_path, fp32_pred = _export_fp32(inp, lin, cfg, out_dir)
    par = _parity_gate(paths, inp, cfg, fp32_path, fp32_pred, out_dir)
    q = _try_int8(params, paths, inp, par, fp32_path, fp32_pred, out_dir)
    chosen, model_path = _ship(inp, par, q, cfg, fp32_path, out_dir)
    fp32_info = _file_info(paths, fp32_path)
    bench = _benchmark(params, inp, fp32_path, q, out_dir)
    sizes = {"fp32": fp32_info["size_bytes"], "shipped": model_path.stat().st_size}
    if q.report.get("size_bytes") is not None:
        sizes["int8"] = q.report["size_bytes"]
    metrics_path = write_json(out_dir / "metrics.json", _metrics(bench, chosen, sizes))
    tracking = str(lin.train_summary.get("tracking_uri") or default_tracking_uri(paths.root))
    loaded, contract = inp.torch_pred.loaded, inp.torch_pred.contract
    result = ExportResult(
        chosen=chosen, artifact=_rel(paths, model_path), sha256=sha256_file(model_path), precision=chosen,
        int8_rejected_reason=q.rejected_reason, parity=par.doc, benchmark=bench, train_run_id=lin.train_run_id,
        data_hash=lin.data_hash, class_names=list(contract.class_names), arch=loaded.arch,
        arch_kwargs=dict(loaded.arch_kwargs), contract={k: json.loads(v) for k, v in contract.to_metadata().items()},
        opset=int(cfg.opset), size_bytes=model_path.stat().st_size, checkpoint=_rel(paths, inp.ckpt),
        checkpoint_sha256=lin.ckpt_sha, fp32=fp32_info, int8=q.report, metadata=read_metadata(model_path),
        lineage=_lineage_doc(params, paths, inp, lin, tracking),
    )
    # the model card needs the gates' verdict on this artifact: `cvplatform evaluate` writes it next
    result.model_card = "artifacts/evaluate/model_card.md"
    outputs = {"model": model_path, "fp32": fp32_path, "parity": par.path, "metrics": metrics_path,
               "int8_report": out_dir / "int8.json", "benchmark": out_dir / "benchmark.json"}
    if q.path is not None:
        outputs["int8"] = q.path
    result.outputs = {k: _rel(paths, v) for k, v in outputs.items()}
    _log_export(result, cfg, lin, par, tracking, [out_dir / "benchmark.json", par.path, out_dir / "int8.json",
                                                 metrics_path, fp32_path, out_dir / INT8_NAME, model_path])
    result.duration_s = round(time.perf_counter() - t0, 3)
    result.write_summary(out_dir)
    log.info("export: shipped %s (%s) in %.1fs", model_path, chosen, result.duration_s)
    return result


__all__ = ["OUTPUTS", "ExportResult", "check_checkpoint_matches", "run_export", "same_model_file"]
