"""The ``register`` stage: ``register_model(params) -> RegisterResult`` (``cvplatform registry register``).

What it does, in order:

1. **Reads and cross-checks its inputs** (nothing is sent to MLflow before they
   are all fine): ``artifacts/export/summary.json`` and the ONNX file it names
   (sha256 must match; the preprocessing contract must be in its
   ``metadata_props`` and agree with the summary's class names),
   ``artifacts/evaluate/gate_report.json`` (required, and it must judge *this*
   artifact: its ``model_sha256`` equals the ONNX file's sha256, else
   :class:`GateReportMismatchError`, exit code 3), ``metrics.json``,
   ``report.md`` / ``report.html`` and ``artifacts/evaluate/model_card.md`` (attached
   when present), ``artifacts/train/summary.json`` (its run id must match the
   export's). The training run must exist on the tracking server.
2. **Idempotency.** A version of ``registry.model_name`` tagged with the same
   training run id *and* artifact sha256 is the same registration: it is returned
   (``created=False``) and no new version is made. A registration interrupted
   after the version was created (``registration.state = verifying``) is finished.
3. Creates a registration run (a child of the training run, in its experiment),
   attaches the model card, gate report and evaluation report, and logs the ONNX
   model with ``mlflow.onnx.log_model`` and a signature (``float32 [-1, 3, H, W]``
   -> ``float32 [-1, C]``). The stored ``model.onnx`` is hashed again: it must be
   byte-identical to the exported file.
4. Creates the model version **with all its tags at once**: lineage (git commit,
   DVC data hash, params hash, Airflow run id, training run id), artifact sha256
   and precision, gate results (passed, must-pass failures, a short text),
   headline metrics (clean accuracy and macro-F1), task and input contract, author
   (the authenticated user on a tracking server), the Airflow user who triggered the
   run, ``approval.status = pending`` and the signed ``registered`` audit event that
   starts the version's hash chain (:mod:`cvplatform.registry.audit`). A lost response is recovered by a
   unique ``registration.id`` tag, so retries never duplicate a version.
5. Loads the new version back through the registry (:func:`~cvplatform.registry.loading.load_model`:
   sha256 verified, onnxruntime session, contract); if that fails the version is
   deleted again.
6. Only then points the ``challenger`` alias at it (when its gates passed; the
   alias means "newest version that passed the gates") and marks the registration
   complete.

Writes ``artifacts/register/summary.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cvplatform.artifacts import ArtifactError, ExportSummary, GateReportFile, StageArtifact, TrainSummary
from cvplatform.errors import CVPlatformError, ModelError, RegistryError
from cvplatform.registry.audit import event_tags, new_event
from cvplatform.registry.client import (
    ONNX_FILE,
    STATE_COMPLETE,
    STATE_VERIFYING,
    STATUS_PENDING,
    TAG_AIRFLOW_RUN,
    TAG_APPROVAL_STATUS,
    TAG_AUTHOR,
    TAG_CLASS_NAMES,
    TAG_CONTRACT,
    TAG_DATA_HASH,
    TAG_GATE_REPORT_SHA256,
    TAG_GATES_FAILED,
    TAG_GATES_PASSED,
    TAG_GATES_SUMMARY,
    TAG_GATES_WARNINGS,
    TAG_GIT_COMMIT,
    TAG_INPUT_SIZE,
    TAG_OVERRIDES,
    TAG_PARAMS_HASH,
    TAG_PRECISION,
    TAG_REGISTRATION_ID,
    TAG_REGISTRATION_STATE,
    TAG_REGISTRATION_TIME,
    TAG_SHA256,
    TAG_TASK,
    TAG_TRAIN_RUN,
    TAG_TRIGGERED_BY,
    RegistryClient,
    is_already_exists,
    is_not_found,
    short_error,
    tag_filter,
)
from cvplatform.registry.compat import DEFAULT_TASK, ModelFacts
from cvplatform.registry.errors import GateReportMismatchError, RegistrationInputError
from cvplatform.registry.identity import display_name, resolve_actor
from cvplatform.registry.keys import load_key
from cvplatform.stage import StageResult
from cvplatform.utils.io import ProjectPaths, sha256_bytes, sha256_file

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.entities.model_registry import ModelVersion

    from cvplatform.config import Params
    from cvplatform.preprocess import PreprocessContract

log = logging.getLogger(__name__)

STAGE = "register"
MODEL_ARTIFACT = "model"
ATTACHMENT_DIR = "registration"
_SUMMARY_LIMIT = 480


@dataclass
class RegisterResult(StageResult):
    """What ``register_model`` returns (and writes to ``artifacts/register/summary.json``)."""

    stage: ClassVar[str] = STAGE

    model_name: str
    version: str
    created: bool
    """False when an identical registration (same training run + artifact sha256) already existed."""
    model_uri: str
    """``models:/NAME/VERSION``."""
    tracking_uri: str
    run_id: str | None
    """The MLflow run holding the model and its attachments."""
    train_run_id: str
    artifact_sha256: str
    precision: str
    gates_passed: bool
    aliases: list[str]
    approval_status: str
    author: str
    tags: dict[str, str] = field(default_factory=dict)
    attachments: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        what = "registered" if self.created else "already registered (same training run and artifact)"
        aliases = ", ".join(self.aliases) or "none"
        out = [
            f"register: {self.model_uri} {what}",
            f"  tracking: {self.tracking_uri}  run: {self.run_id}",
            f"  artifact: {self.precision}, sha256 {self.artifact_sha256[:16]}...  training run: {self.train_run_id}",
            f"  gates: {'passed' if self.gates_passed else 'FAILED'}  "
            f"({self.tags.get(TAG_GATES_SUMMARY, 'no summary')})",
            f"  author: {self.author}  approval: {self.approval_status}  aliases: {aliases}",
        ]
        out.extend(f"  note: {n}" for n in self.notes)
        if self.approval_status == STATUS_PENDING and self.gates_passed:
            out.append(f"  next: cvplatform registry approve {self.model_name} {self.version} "
                       "--reviewer NAME --comment TEXT")
        return out


# --------------------------------------------------------------------------- inputs
@dataclass
class RegistrationInputs:
    """Everything ``register_model`` needs from the earlier stages, checked."""

    onnx_path: Path
    sha256: str
    precision: str
    train_run_id: str
    data_hash: str | None
    class_names: list[str]
    contract: PreprocessContract
    input_name: str
    output_name: str
    gate_report: dict[str, Any]
    gate_report_sha256: str
    metrics: dict[str, Any]
    attachments: list[Path]
    export_summary: dict[str, Any]


def _read_artifact(model: type[StageArtifact], path: Path) -> dict[str, Any]:
    """A stage artifact through its typed model, as a dict; its errors become RegistrationInputError."""
    try:
        return model.read(path).to_dict()
    except ArtifactError as exc:
        raise RegistrationInputError(str(exc)) from None


def _read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    if not path.is_file():
        raise RegistrationInputError(f"{path}: {what} not found. {fix}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RegistrationInputError(f"{path}: {what} is not readable JSON ({exc}). {fix}") from None
    if not isinstance(data, dict):
        raise RegistrationInputError(f"{path}: {what} must be a JSON object, got {type(data).__name__}. {fix}")
    return data


def _onnx_facts(path: Path, where: str) -> tuple[PreprocessContract, str, str, int | None]:
    import onnx

    from cvplatform.preprocess import PreprocessContract

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise RegistrationInputError(f"{path}: not a readable ONNX model ({short_error(exc)}). Re-run "
                                     "`cvplatform export`.") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    try:
        contract = PreprocessContract.from_metadata(meta, source=f"{where} (ONNX metadata_props)")
    except ModelError as exc:
        raise RegistrationInputError(str(exc)) from None
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(proto.graph.output) < 1:
        raise RegistrationInputError(
            f"{where}: expected one image input and a logits output, found inputs {[i.name for i in inputs]} "
            f"and outputs {[o.name for o in proto.graph.output]}. Re-run `cvplatform export`."
        )
    out_dims = [d.dim_value if d.HasField("dim_value") else None
                for d in proto.graph.output[0].type.tensor_type.shape.dim]
    n_out = out_dims[1] if len(out_dims) == 2 else None
    return contract, inputs[0].name, proto.graph.output[0].name, n_out


def model_facts(inputs: RegistrationInputs) -> ModelFacts:
    """Task, class list and input contract of the artifact (what compatibility with the champion compares)."""
    meta = {k: json.loads(v) for k, v in inputs.contract.to_metadata().items()}
    meta.pop("class_names", None)
    return ModelFacts(DEFAULT_TASK, tuple(inputs.class_names), meta)


def read_inputs(paths: ProjectPaths) -> RegistrationInputs:
    """Read and cross-check the export, evaluation and training outputs ``register_model`` uses.

    Raises:
        RegistrationInputError: a required file is missing, unreadable or inconsistent
            (naming the file and the command that writes it).

    Example:
        >>> inputs = read_inputs(ProjectPaths.at("."))  # doctest: +SKIP
        >>> inputs.precision  # doctest: +SKIP
        'fp32'
    """
    exp_dir, eval_dir, train_dir = paths.artifacts("export"), paths.artifacts("evaluate"), paths.artifacts("train")
    summary_path = exp_dir / "summary.json"
    export = _read_artifact(ExportSummary, summary_path)
    missing = [k for k in ("artifact", "sha256") if not export.get(k)]
    if missing:
        raise RegistrationInputError(f"{summary_path}: key(s) {missing} missing. Re-run `cvplatform export`.")
    onnx_path = paths.resolve(str(export["artifact"]))
    if not onnx_path.is_file():
        raise RegistrationInputError(
            f"{onnx_path}: exported model named by {summary_path} (artifact) not found. Re-run `cvplatform export`."
        )
    sha = sha256_file(onnx_path)
    if sha != export["sha256"]:
        raise RegistrationInputError(
            f"{onnx_path}: sha256 is {sha}, but {summary_path} records {export['sha256']}: the file changed after "
            "export. Re-run `cvplatform export` (never edit exported files by hand)."
        )
    contract, in_name, out_name, n_out = _onnx_facts(onnx_path, str(onnx_path))
    names = [str(c) for c in (export.get("class_names") or contract.class_names)]
    if tuple(names) != contract.class_names:
        raise RegistrationInputError(
            f"{summary_path}: class_names {names} differ from the model's contract {list(contract.class_names)} "
            f"in {onnx_path}. Re-run `cvplatform export`."
        )
    if n_out is not None and n_out != len(names):
        raise RegistrationInputError(
            f"{onnx_path}: the model outputs {n_out} logits but has {len(names)} class names. Re-run `cvplatform export`."
        )

    train_summary_path = train_dir / "summary.json"
    train = _read_artifact(TrainSummary, train_summary_path) if train_summary_path.is_file() else {}
    train_run = export.get("train_run_id") or train.get("mlflow_run_id") or train.get("run_id")
    if not train_run:
        raise RegistrationInputError(
            f"{summary_path}: no train_run_id (and no run id in {train_summary_path}); a registered version must "
            "name its training run. Train with MLflow tracking (`cvplatform train`), then export again."
        )
    train_side = train.get("mlflow_run_id") or train.get("run_id")
    if train_side and train_side != train_run:
        raise RegistrationInputError(
            f"{summary_path} was exported from training run {train_run}, but {train_summary_path} is run "
            f"{train_side}: the export is stale. Re-run `cvplatform export` (and `cvplatform evaluate`)."
        )

    gate_path = eval_dir / "gate_report.json"
    gate = _read_artifact(GateReportFile, gate_path)
    if gate.get("passed") is None:
        raise RegistrationInputError(f"{gate_path}: key 'passed' missing. Re-run `cvplatform evaluate`.")
    judged = gate.get("model_sha256")
    if judged != sha:
        raise GateReportMismatchError(
            f"{gate_path} judged a model with sha256 {judged or '(not recorded)'}, but the artifact to register, "
            f"{onnx_path}, has sha256 {sha}: the gates were not run on what would ship. Re-run `cvplatform evaluate` "
            "(it evaluates artifacts/export/model.onnx by default), then register again."
        )
    metrics_path = eval_dir / "scenarios.json"  # every scenario's metrics (metrics.json holds the headline)
    metrics = _read_json(metrics_path, "evaluation metrics", "") if metrics_path.is_file() else {}

    attachments = [p for p in (
        eval_dir / "model_card.md", summary_path, gate_path, metrics_path,
        eval_dir / "report.md", eval_dir / "report.html",
        paths.root / "dvc.lock",  # the pipeline state it came from (cvplatform.registry.lineage)
    ) if p.is_file()]
    return RegistrationInputs(
        onnx_path=onnx_path, sha256=sha, precision=str(export.get("precision") or export.get("chosen") or "fp32"),
        train_run_id=str(train_run), data_hash=export.get("data_hash") or train.get("data_version"),
        class_names=names, contract=contract, input_name=in_name, output_name=out_name, gate_report=gate,
        gate_report_sha256=sha256_file(gate_path), metrics=metrics, attachments=attachments, export_summary=export,
    )


def gate_facts(gate: dict[str, Any]) -> tuple[bool, int, int, str]:
    """``(passed, must-pass failures, warnings, short text)`` from a gate report (``GateReport.to_dict``).

    Example:
        >>> gate_facts({"passed": False, "checks": [
        ...     {"name": "min_accuracy", "scenario": "clean", "status": "failed", "level": "must_pass"}]})
        (False, 1, 0, 'FAILED: 1 must-pass check(s) failed of 1 checks: clean/min_accuracy')
    """
    checks = [c for c in gate.get("checks") or [] if isinstance(c, dict)]
    failed = [c for c in checks if c.get("status") == "failed" and c.get("level") == "must_pass"]
    warned = [c for c in checks if c.get("status") == "failed" and c.get("level") == "warn"]
    n_failed = int(gate.get("n_failed_must_pass", len(failed)))
    n_warn = int(gate.get("n_warnings", len(warned)))
    passed = bool(gate.get("passed")) and n_failed == 0
    if passed:
        text = f"passed: {len(checks)} checks, 0 must-pass failures, {n_warn} warning(s)"
        if warned:
            text += ": " + ", ".join(f"{c.get('scenario')}/{c.get('name')}" for c in warned[:5])
    else:
        text = (f"FAILED: {n_failed} must-pass check(s) failed of {len(checks)} checks: "
                + ", ".join(f"{c.get('scenario')}/{c.get('name')}" for c in failed[:8]))
    if len(text) > _SUMMARY_LIMIT:
        text = text[: _SUMMARY_LIMIT - 3] + "..."
    return passed, n_failed, n_warn, text


#: Serving facts of the artifact (from the export benchmark), shown against the champion's on the approval page.
TAG_LATENCY_P50 = "metrics.latency_p50_ms"
TAG_LATENCY_P95 = "metrics.latency_p95_ms"
TAG_COST = "metrics.cost_per_1k_usd"
TAG_SIZE = "artifact.size_bytes"
TAG_TEST_IMAGES = "metrics.test_images"


def _tag_safe(name: str) -> str:
    """``name`` with what MLflow refuses in a tag key (anything but letters, digits, ``_ - . / `` and space) as ``_``."""
    import re

    return re.sub(r"[^\w\-./ ]", "_", name)


def _headline(metrics: dict[str, Any], export: dict[str, Any] | None = None,
              gate: dict[str, Any] | None = None) -> dict[str, str]:
    clean = metrics.get("clean") if isinstance(metrics.get("clean"), dict) else {}
    out = {}
    # every headline number of the clean scenario (classification: TAG_ACCURACY, TAG_MACRO_F1; detection: map,
    # map50, map75, AP by size, mar_100), its per-class numbers (detection: AP per class) and the suite's
    # robustness (detection: mPC, rPC)
    for key, v in clean.items():
        if isinstance(v, int | float) and not isinstance(v, bool) and not key.endswith(("_low", "_high")):
            out[f"metrics.clean_{key}"] = f"{float(v):.6f}"
    for name, by_class in (clean.get("per_class") or {}).items():
        for cls, v in (by_class or {}).items():
            if isinstance(v, int | float):
                out[f"metrics.clean_{name}.{_tag_safe(str(cls))}"] = f"{float(v):.6f}"
    robustness = metrics.get("robustness") if isinstance(metrics.get("robustness"), dict) else {}
    for key in ("mpc", "rpc"):
        if isinstance(robustness.get(key), int | float):
            out[f"metrics.{key}"] = f"{float(robustness[key]):.6f}"
    export = export or {}
    if isinstance(export.get("size_bytes"), int):
        out[TAG_SIZE] = str(export["size_bytes"])
    runtime = (((export.get("benchmark") or {}).get("runtimes") or {})
               .get("ort_int8" if export.get("chosen") == "int8" else "ort_fp32") or {})
    lat = runtime.get("latency_ms") or {}
    for tag, v in ((TAG_LATENCY_P50, lat.get("p50")), (TAG_LATENCY_P95, lat.get("p95")),
                   (TAG_COST, runtime.get("cost_per_1k_usd"))):
        if isinstance(v, int | float):
            out[tag] = f"{float(v):.6g}"
    if isinstance((gate or {}).get("n_images"), int):
        out[TAG_TEST_IMAGES] = str(gate["n_images"])  # type: ignore[index]
    return out


def lineage_tags(params: Params, paths: ProjectPaths, inputs: RegistrationInputs, author: str) -> dict[str, str]:
    """The tags every version registered from ``inputs`` carries (no approval / audit tags)."""
    from cvplatform.config import params_hash
    from cvplatform.tracking import airflow_run_id, run_overrides
    from cvplatform.utils.io import git_commit

    passed, n_failed, n_warn, text = gate_facts(inputs.gate_report)
    exp_lineage = inputs.export_summary.get("lineage") if isinstance(inputs.export_summary.get("lineage"), dict) \
        else {}
    tags = {
        TAG_AUTHOR: author,
        TAG_TRAIN_RUN: inputs.train_run_id,
        # the commit that produced the artifact (export time); the current one if the export did not record it
        TAG_GIT_COMMIT: str(exp_lineage.get("git_commit") or git_commit(paths.root) or "unknown"),
        TAG_DATA_HASH: str(inputs.data_hash or "unknown"),
        TAG_PARAMS_HASH: params_hash(params),
        TAG_SHA256: inputs.sha256,
        TAG_PRECISION: inputs.precision,
        TAG_GATES_PASSED: "true" if passed else "false",
        TAG_GATES_FAILED: str(n_failed),
        TAG_GATES_WARNINGS: str(n_warn),
        TAG_GATES_SUMMARY: text,
        TAG_CLASS_NAMES: json.dumps(list(inputs.class_names)),
        TAG_INPUT_SIZE: json.dumps(list(inputs.contract.input_size)),
        TAG_TASK: model_facts(inputs).task,
        TAG_CONTRACT: json.dumps(model_facts(inputs).contract, sort_keys=True),
        TAG_GATE_REPORT_SHA256: inputs.gate_report_sha256,
        **_headline(inputs.metrics, inputs.export_summary, inputs.gate_report),
    }
    airflow = airflow_run_id()
    if airflow:
        tags[TAG_AIRFLOW_RUN] = airflow
    overrides = run_overrides()
    if overrides:  # the run's own settings (an Airflow run's working copy), never written to params.yaml
        tags[TAG_OVERRIDES] = json.dumps(overrides)
    return tags


# --------------------------------------------------------------------------- mlflow steps
def _signature(inputs: RegistrationInputs) -> Any:
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    h, w = inputs.contract.input_size
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, h, w), inputs.input_name)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(inputs.class_names)), inputs.output_name)]),
    )


def _log_params(c: RegistryClient, run_id: str, params: Params) -> None:
    """Every params.yaml value on the registration run (what the approval page diffs against the champion's)."""
    from mlflow.entities import Param

    from cvplatform.tracking import flatten_params

    flat = flatten_params(params.model_dump(mode="json"))
    items = [Param(k[:250], v[:6000]) for k, v in sorted(flat.items())]
    for i in range(0, len(items), 100):
        c.call("log params on the registration run",
               lambda chunk=items[i : i + 100]: c.mlflow.log_batch(run_id, params=chunk))


def _ensure_model(c: RegistryClient, name: str) -> None:
    try:
        c.call(f"get registered model {name!r}", lambda: c.mlflow.get_registered_model(name))
        return
    except RegistryError:
        raise
    except Exception as exc:
        if not is_not_found(exc):
            raise
    try:
        c.call(f"create registered model {name!r}", lambda: c.mlflow.create_registered_model(
            name, description="Image classifier registered by cvplatform (ONNX + preprocessing contract)."))
        log.info("register: created registered model %r", name)
    except RegistryError:
        raise
    except Exception as exc:
        if not is_already_exists(exc):  # created concurrently (or by a retried call): fine
            raise


def _find_existing(c: RegistryClient, name: str, inputs: RegistrationInputs) -> ModelVersion | None:
    found = c.versions(name, f"{tag_filter(TAG_TRAIN_RUN, inputs.train_run_id)} and "
                             f"{tag_filter(TAG_SHA256, inputs.sha256)}")
    return found[0] if found else None


def _log_model(c: RegistryClient, run_id: str, experiment_id: str, inputs: RegistrationInputs,
               tags: dict[str, str]) -> tuple[str, str]:
    """Log the ONNX model to ``run_id``; returns ``(model_id, model_uri)``."""
    import mlflow.onnx
    import onnx

    proto = onnx.load(str(inputs.onnx_path))
    lm = c.call("create logged model", lambda: c.mlflow.create_logged_model(
        experiment_id=experiment_id, name=MODEL_ARTIFACT, source_run_id=run_id,
        tags={k: v for k, v in tags.items() if k != TAG_AUTHOR}))
    reqs = []
    from importlib import metadata

    for dist in ("onnx", "onnxruntime"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            reqs.append(dist)
    info = c.call("log the ONNX model", lambda: mlflow.onnx.log_model(  # call() points mlflow's globals at c.uri
        proto, name=MODEL_ARTIFACT, signature=_signature(inputs), run_id=run_id, model_id=lm.model_id,
        save_as_external_data=False, pip_requirements=reqs,
        metadata={"cvplatform.sha256": inputs.sha256, "cvplatform.precision": inputs.precision},
    ))
    return lm.model_id, info.model_uri


def _check_stored_bytes(c: RegistryClient, model_id: str, inputs: RegistrationInputs) -> None:
    import mlflow.artifacts

    lm = c.call("get logged model", lambda: c.mlflow.get_logged_model(model_id))
    uri = f"{lm.artifact_location.rstrip('/')}/{ONNX_FILE}"
    with tempfile.TemporaryDirectory(prefix="cvplatform-register-") as tmp:
        local = c.call(f"download {uri}", lambda: mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=tmp, tracking_uri=c.uri))
        stored = sha256_bytes(Path(local).read_bytes())
    if stored != inputs.sha256:
        raise RegistryError(
            f"the ONNX model stored at {uri} has sha256 {stored}, but the exported file {inputs.onnx_path} has "
            f"{inputs.sha256}: MLflow did not store it byte-for-byte, so it could never be verified at load time. "
            "No version was created. Check the onnx / mlflow versions (an ONNX re-serialisation changed the bytes)."
        )


def _create_version(c: RegistryClient, name: str, model_uri: str, model_id: str, run_id: str,
                    tags: dict[str, str], description: str) -> ModelVersion:
    reg_id = tags[TAG_REGISTRATION_ID]

    def recover() -> ModelVersion | None:
        found = c.versions(name, tag_filter(TAG_REGISTRATION_ID, reg_id))
        return found[0] if found else None

    return c.call(
        f"create a version of {name!r}",
        lambda: c.mlflow.create_model_version(name, model_uri, run_id=run_id, tags=tags, description=description,
                                              model_id=model_id),
        recover=recover,
    )


def _finish(c: RegistryClient, params: Params, name: str, mv: ModelVersion, *, delete_on_failure: bool) -> list[str]:
    """Load the version back (verified), set the challenger alias if its gates passed, mark it complete."""
    from cvplatform.registry.loading import load_model

    v = str(mv.version)
    try:
        load_model(f"models:/{name}/{v}", client=c)
    except CVPlatformError as exc:
        if delete_on_failure:
            try:
                c.call(f"delete version {v} of {name!r}", lambda: c.mlflow.delete_model_version(name, v))
            except Exception as del_exc:  # the original error matters more
                log.warning("register: could not delete unverifiable version %s: %s", v, short_error(del_exc))
        raise RegistryError(
            f"version {v} of {name!r} failed verification after registration ({exc}); "
            + ("it was deleted again. " if delete_on_failure else "")
            + "Fix the cause and run `cvplatform registry register` again."
        ) from exc
    notes = []
    if (mv.tags or {}).get(TAG_GATES_PASSED) == "true":
        alias = params.registry.challenger_alias
        c.call(f"point {name}@{alias} at version {v}", lambda: c.mlflow.set_registered_model_alias(name, alias, v))
    else:
        notes.append(f"gates failed: alias {params.registry.challenger_alias!r} not moved; this version cannot be "
                     "approved (reject it with a reason)")
    c.call(f"mark version {v} of {name!r} complete",
           lambda: c.mlflow.set_model_version_tag(name, v, TAG_REGISTRATION_STATE, STATE_COMPLETE))
    return notes


def _result(c: RegistryClient, params: Params, name: str, version: str, created: bool, inputs: RegistrationInputs,
            author: str, notes: list[str], out_dir: Path) -> RegisterResult:
    mv = c.version(name, version)
    tags = dict(mv.tags or {})
    result = RegisterResult(
        model_name=name, version=str(mv.version), created=created, model_uri=f"models:/{name}/{mv.version}",
        tracking_uri=c.uri, run_id=mv.run_id, train_run_id=inputs.train_run_id, artifact_sha256=inputs.sha256,
        precision=inputs.precision, gates_passed=tags.get(TAG_GATES_PASSED) == "true",
        aliases=sorted(mv.aliases or []), approval_status=tags.get(TAG_APPROVAL_STATUS, STATUS_PENDING),
        author=tags.get(TAG_AUTHOR, author),
        tags={k: v for k, v in sorted(tags.items()) if not k.startswith("audit.")},
        attachments=[p.name for p in inputs.attachments], notes=notes,
    )
    result.write_summary(out_dir)
    return result


def _register_new_version(c: RegistryClient, params: Params, name: str, inputs: RegistrationInputs, train_run: Any,
                          base_tags: dict[str, str], author: str, key: Any, identity: Any) -> tuple[Any, list[str]]:
    """Create the version in a registration run under the training run: attachments, the ONNX model (stored
    bytes verified), the signed ``registered`` audit event; then aliases and checks (:func:`_finish`).

    Returns ``(model version, notes)``; the registration run ends FINISHED, or FAILED on any error.
    """
    run = c.call("create the registration run", lambda: c.mlflow.create_run(
        train_run.info.experiment_id, run_name=f"register-{inputs.train_run_id[:8]}",
        tags={"mlflow.parentRunId": inputs.train_run_id, "cvplatform.stage": STAGE,
              **{k: v for k, v in base_tags.items() if k != TAG_GATES_SUMMARY}}))
    run_id = run.info.run_id
    try:
        _log_params(c, run_id, params)
        for f in inputs.attachments:
            c.call(f"attach {f.name}", lambda f=f: c.mlflow.log_artifact(run_id, str(f), ATTACHMENT_DIR))
        model_id, model_uri = _log_model(c, run_id, train_run.info.experiment_id, inputs, base_tags)
        _check_stored_bytes(c, model_id, inputs)

        reg_id = uuid.uuid4().hex
        event = new_event(name, "?", "registered", author, "", {
            "train_run_id": inputs.train_run_id, "sha256": inputs.sha256,
            "gates_passed": base_tags[TAG_GATES_PASSED], "run_id": run_id,
            "gate_report_sha256": inputs.gate_report_sha256, "facts": model_facts(inputs).to_dict(),
            "triggered_by": base_tags.get(TAG_TRIGGERED_BY),
        }, existing={TAG_REGISTRATION_ID: reg_id}, key=key, identity=identity)
        tags = {
            **base_tags,
            TAG_APPROVAL_STATUS: STATUS_PENDING,
            TAG_REGISTRATION_ID: reg_id,
            TAG_REGISTRATION_STATE: STATE_VERIFYING,
            TAG_REGISTRATION_TIME: event.time,
            **dict(event_tags(event)),
        }
        description = (f"Training run {inputs.train_run_id}; data {base_tags[TAG_DATA_HASH]}; "
                       f"{inputs.precision} ONNX sha256 {inputs.sha256}; gates {base_tags[TAG_GATES_SUMMARY]}")
        mv = _create_version(c, name, model_uri, model_id, run_id, tags, description)
        log.info("register: created version %s of %r", mv.version, name)
        notes = _finish(c, params, name, mv, delete_on_failure=True)
        c.call("finish the registration run", lambda: c.mlflow.set_terminated(run_id, "FINISHED"))
    except BaseException:
        with contextlib.suppress(Exception):  # best effort: the original error is what matters
            c.mlflow.set_terminated(run_id, "FAILED")
        raise
    return mv, notes


def register_model(
    params: Params, *, root: str | os.PathLike[str] | None = None, client: RegistryClient | None = None,
    triggered_by: str | None = None,
) -> RegisterResult:
    """Register the exported ONNX model as a new version of ``registry.model_name`` (idempotent).

    Args:
        params: Validated params (``registry`` section; the whole params are hashed as lineage).
        root: Project root holding ``artifacts/`` (default: cwd).
        client: An existing :class:`RegistryClient` (default: one on the project's tracking URI).
        triggered_by: The user who started the run that produced the artifact (the Airflow DAG
            passes its triggering user); they may not approve the version (four-eyes).

    Returns:
        A :class:`RegisterResult` (also written to ``artifacts/register/summary.json``).

    Raises:
        RegistrationInputError: an input file is missing / inconsistent, or the training run is unknown.
        GateReportMismatchError: the gate report judged another artifact (exit code 3).
        AuditKeyError: no platform key to sign the audit trail (tracking server without one, exit code 2).
        RegistryUnavailableError: the tracking server stayed unreachable for the whole retry budget.
        RegistryError: MLflow refused an operation, or the stored model failed verification.

    Example:
        >>> from cvplatform import load_params, register_model
        >>> res = register_model(load_params("params.yaml"))  # doctest: +SKIP
        >>> res.model_uri, res.aliases, res.approval_status  # doctest: +SKIP
        ('models:/cvplatform/4', ['challenger'], 'pending')
    """
    from mlflow.exceptions import MlflowException

    paths = ProjectPaths.at(root)
    out_dir = paths.artifacts(STAGE)
    inputs = read_inputs(paths)
    c = client or RegistryClient.from_params(params, paths.root)
    name = params.registry.model_name
    key = load_key(c.uri, create=True)
    author, identity = resolve_actor(c)
    try:
        try:
            train_run = c.call(f"get training run {inputs.train_run_id}",
                               lambda: c.mlflow.get_run(inputs.train_run_id))
        except MlflowException as exc:
            if not is_not_found(exc):
                raise
            raise RegistrationInputError(
                f"training run {inputs.train_run_id} (from artifacts/export/summary.json) does not exist at {c.uri}. "
                "Point MLFLOW_TRACKING_URI at the store the model was trained with, or re-run train and export."
            ) from None

        _ensure_model(c, name)
        existing = _find_existing(c, name, inputs)
        if existing is not None:
            v = str(existing.version)
            notes = [f"identical to version {v} (training run {inputs.train_run_id}, sha256 "
                     f"{inputs.sha256[:12]}...): no new version"]
            if (existing.tags or {}).get(TAG_REGISTRATION_STATE, STATE_COMPLETE) != STATE_COMPLETE:
                notes.append("finished an interrupted registration")
                notes += _finish(c, params, name, existing, delete_on_failure=False)
            log.info("register: %s already registered as version %s", inputs.onnx_path, v)
            return _result(c, params, name, v, False, inputs, author, notes, out_dir)

        base_tags = lineage_tags(params, paths, inputs, author)
        if triggered_by and display_name(triggered_by):
            base_tags[TAG_TRIGGERED_BY] = display_name(triggered_by)
        mv, notes = _register_new_version(c, params, name, inputs, train_run, base_tags, author, key, identity)
        return _result(c, params, name, str(mv.version), True, inputs, author, notes, out_dir)
    except MlflowException as exc:
        raise RegistryError(
            f"MLflow at {c.uri} refused to register {inputs.onnx_path} as {name!r}: {short_error(exc)}. "
            "Check the registry.model_name and the server's logs."
        ) from exc


__all__ = ["TAG_COST", "TAG_LATENCY_P50", "TAG_LATENCY_P95", "TAG_SIZE", "TAG_TEST_IMAGES",
           "GateReportMismatchError", "RegisterResult", "RegistrationInputs", "gate_facts", "lineage_tags",
           "model_facts", "read_inputs", "register_model"]
