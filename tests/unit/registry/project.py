"""Build the inputs of ``register_model`` by hand: a tiny ONNX model with a preprocessing contract,
the export summary, the evaluation gate report / metrics / report, and a real MLflow training run.

Shared by the unit tests (embedded SQLite store) and the integration tests (a real
``mlflow server``), so neither depends on the train / evaluate / export stages.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

CLASSES = ("cat", "dog")
SIZE = 8


def onnx_model_bytes(seed: int = 0, classes: tuple[str, ...] = CLASSES, size: int = SIZE) -> bytes:
    """A tiny conv net exported with ``torch.onnx.export`` plus ``PreprocessContract.to_metadata()``.

    Different seeds give different weights, hence a different sha256.
    """
    import onnx
    import torch

    from cvplatform.preprocess import PreprocessContract

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, len(classes)),
    ).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, torch.zeros(1, 3, size, size), buf, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    contract = PreprocessContract((size, size), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), classes)
    onnx.helper.set_model_props(proto, contract.to_metadata())
    return proto.SerializeToString()


def gate_report(passed: bool = True, model_sha256: str | None = None) -> dict:
    """A gate report in the format of ``GateReport.to_dict()`` (cvplatform.evaluation.gates) for the model
    with ``model_sha256`` (the registry refuses a report about another artifact)."""
    clean = {"name": "min_accuracy", "scenario": "clean", "status": "passed" if passed else "failed",
             "level": "must_pass", "reason": "accuracy 0.9 >= floor 0.8" if passed else "accuracy 0.5 < floor 0.8",
             "value": 0.9 if passed else 0.5, "threshold": 0.8, "ci": None, "passed": passed}
    noise = {"name": "min_accuracy", "scenario": "gaussian_noise_s3", "status": "failed", "level": "warn",
             "reason": "accuracy 0.6 < floor 0.7", "value": 0.6, "threshold": 0.7, "ci": None, "passed": False}
    rate = {"name": "pass_rate", "scenario": "*", "status": "passed" if passed else "failed", "level": "must_pass",
            "reason": "...", "value": 1.0 if passed else 0.0, "threshold": 1.0, "ci": None, "passed": passed}
    return {"passed": passed, "pass_rate": 1.0 if passed else 0.0, "champion": None,
            "n_failed_must_pass": 0 if passed else 2, "n_warnings": 1, "checks": [clean, noise, rate],
            "model": "artifacts/export/model.onnx", "model_sha256": model_sha256, "split": "test", "n_images": 40,
            "class_names": list(CLASSES), "policy": {"min_images_per_class": 15},
            "suite": "configs/scenarios/default.yaml"}


@dataclass
class Project:
    root: Path
    train_run_id: str
    sha256: str
    onnx_path: Path


def write_export(root: Path, model: bytes, train_run_id: str, *, precision: str = "fp32",
                 classes: tuple[str, ...] = CLASSES) -> str:
    """Write artifacts/export/{model.onnx, summary.json}; returns the sha256."""
    from cvplatform.utils.io import sha256_bytes, write_json

    out = root / "artifacts" / "export"
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(model)
    sha = sha256_bytes(model)
    write_json(out / "summary.json", {
        "chosen": precision, "artifact": "artifacts/export/model.onnx", "sha256": sha, "precision": precision,
        "train_run_id": train_run_id, "data_hash": "d41d8cd98f00b204e9800998ecf8427e",
        "class_names": list(classes), "parity": {"passed": True}, "size_bytes": len(model),
        "benchmark": {"runtimes": {"ort_fp32": {"latency_ms": {"p50": 0.1, "p95": 0.2, "p99": 0.3},
                                                "throughput_ips": 9000.0, "cost_per_1k_usd": 1.25e-06}}},
    })
    return sha


def write_evaluation(root: Path, *, passed: bool = True, model_sha256: str | None = None) -> None:
    """Write artifacts/evaluate/{gate_report.json, metrics.json, scenarios.json, report.md, report.html, model_card.md} judging the
    exported model (``model_sha256``, default: the sha256 of artifacts/export/model.onnx)."""
    from cvplatform.utils.io import sha256_file, write_json

    out = root / "artifacts" / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    if model_sha256 is None:
        model_sha256 = sha256_file(root / "artifacts" / "export" / "model.onnx")
    write_json(out / "gate_report.json", gate_report(passed, model_sha256))
    write_json(out / "scenarios.json", {"clean": {"accuracy": 0.9125, "macro_f1": 0.9, "ece": 0.05},
                                        "gates_passed": passed})
    write_json(out / "metrics.json", {"accuracy": 0.9125, "f1": 0.9, "ece": 0.05})
    (out / "report.md").write_text("# Evaluation report\n", encoding="utf-8")
    (out / "report.html").write_text("<html><body>report</body></html>\n", encoding="utf-8")
    (out / "model_card.md").write_text("# Model card\n\nA tiny test model.\n", encoding="utf-8")


def start_train_run(root: Path, experiment: str = "cvplatform") -> str:
    """A real, finished MLflow training run (on $MLFLOW_TRACKING_URI or the project's embedded store)."""
    from cvplatform.tracking import TrackingRun

    run = TrackingRun.start(root, experiment, "train-test", tags={"cvplatform.stage": "train"})
    run.finish()
    return run.run_id


def make_project(root: Path, model: bytes, *, passed: bool = True, train_run_id: str | None = None,
                 params_yaml: str | None = "{}\n") -> Project:
    """A project root with everything ``register_model`` reads, and a training run in the tracking store."""
    from cvplatform.utils.io import write_json

    root.mkdir(parents=True, exist_ok=True)
    if params_yaml is not None:
        (root / "params.yaml").write_text(params_yaml, encoding="utf-8")
    run_id = train_run_id or start_train_run(root)
    (root / "artifacts" / "train").mkdir(parents=True, exist_ok=True)
    write_json(root / "artifacts" / "train" / "summary.json", {"run_id": run_id, "data_version": "d41d8cd9"})
    sha = write_export(root, model, run_id)
    write_evaluation(root, passed=passed)
    return Project(root, run_id, sha, root / "artifacts" / "export" / "model.onnx")


def new_training(project: Project, model: bytes | None = None) -> Project:
    """Simulate a retraining in the same project: a new training run (and optionally a new model)."""
    from cvplatform.utils.io import write_json

    run_id = start_train_run(project.root)
    write_json(project.root / "artifacts" / "train" / "summary.json", {"run_id": run_id})
    data = model if model is not None else project.onnx_path.read_bytes()
    passed = read_json(project.root / "artifacts" / "evaluate" / "gate_report.json")["passed"]
    sha = write_export(project.root, data, run_id)
    write_evaluation(project.root, passed=passed)  # the gates judged the new artifact
    return Project(project.root, run_id, sha, project.onnx_path)


def stored_onnx_path(tracking_uri: str, name: str, version: str, artifacts_root: Path | None = None) -> Path:
    """Where the artifact store keeps ``model.onnx`` of a version, as a local path.

    For the embedded store the download URI is a local path; for a server with
    ``--artifacts-destination DIR`` it is ``mlflow-artifacts:/<path>``, i.e. ``DIR/<path>``.
    """
    from urllib.parse import urlparse

    from mlflow.tracking import MlflowClient

    uri = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).get_model_version_download_uri(
        name, version)
    if uri.startswith("mlflow-artifacts:"):
        assert artifacts_root is not None
        return artifacts_root / urlparse(uri).path.lstrip("/") / "model.onnx"
    parsed = urlparse(uri)
    return Path(parsed.path if parsed.scheme == "file" else uri) / "model.onnx"


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
