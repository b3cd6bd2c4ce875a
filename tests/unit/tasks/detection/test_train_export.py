"""``cvplatform ingest``, ``train`` then ``export`` on a tiny detection project (``project.task: detection``), through
the real stages: ``run_ingest`` of the scenes source (48 px images, the annotation table, a manifest with an
``annotations`` column) -> ``run_train`` (resized to a 32 px input, a random flip) -> ``best.ckpt`` -> ``run_export``
(ONNX, parity gate; INT8 off: no detection scenario suite yet) -> the shipped ``model.onnx`` decodes to the
checkpoint's boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.fixtures.detection_project import CLASSES, ingest_detection_project
from tests.unit.export.helpers import load

pytestmark = pytest.mark.slow  # ingests, trains 3 epochs and exports: about 40 s on a CPU

OVERRIDES = ("train.epochs=3", "train.batch_size=4", "train.model.small_cnn={width: 8, stages: 2}",
             "train.optimizer.lr=0.01", "export.int8.enabled=false", "export.benchmark.enabled=false")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from cvplatform.train import run_train

    root = ingest_detection_project(tmp_path_factory.mktemp("det") / "project", count=20, size=48, input_size=32,
                                    overrides=OVERRIDES)
    result = run_train(load(root), root=root)
    return root, result


def test_training_a_detector_writes_a_checkpoint_that_loads_as_the_exported_graph(trained):
    from cvplatform.models.checkpoint import load_checkpoint
    from cvplatform.tasks import get_task
    from cvplatform.tasks.detection.model import ExportedDetector

    root, result = trained
    best = root / "artifacts" / "train" / "best.ckpt"
    assert best.is_file() and result.class_names == list(CLASSES)
    metrics = json.loads((root / "artifacts" / "train" / "metrics.json").read_text())
    assert set(metrics) == {"map", "map50", "loss"}  # the task's monitored metrics of the best epoch
    loaded = load_checkpoint(best, task=get_task("detection"))
    assert isinstance(loaded.model, ExportedDetector) and loaded.class_names == list(CLASSES)
    assert loaded.input_size == (32, 32)
    import torch

    boxes, scores, labels = loaded.model(torch.zeros(2, 3, 32, 32))
    assert boxes.shape[0] == 2 and boxes.shape[2] == 4 and scores.shape == labels.shape == boxes.shape[:2]
    # without the task the checkpoint is read as a classifier, and that is a clear error, not a wrong network
    from cvplatform.errors import ModelError

    with pytest.raises(ModelError, match="best.ckpt"):
        load_checkpoint(best)


def test_export_of_a_detector_passes_parity_and_the_onnx_file_decodes_to_the_checkpoint_boxes(trained):
    from cvplatform.data.manifest import read_manifest
    from cvplatform.evaluation.predictors import OnnxPredictor, TorchCheckpointPredictor
    from cvplatform.export.run import run_export
    from cvplatform.imageio import read_image
    from cvplatform.tasks import get_task

    root, _ = trained
    result = run_export(load(root), root=root)
    out = root / "artifacts" / "export"
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] is True and parity["n"] == 4 and result.chosen == "fp32"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["class_names"] == list(CLASSES)

    task = get_task("detection")
    manifest = read_manifest(root / "data" / "processed" / "manifest.parquet")
    images = [read_image(root / p) for p in manifest["path"]]
    onnx = OnnxPredictor(out / "model.onnx", task=task).predict(images)
    torch_out = TorchCheckpointPredictor(root / "artifacts" / "train" / "best.ckpt", task=task).predict(images)
    assert set(onnx) == set(torch_out) == {"boxes", "scores", "labels"}
    np.testing.assert_array_equal(onnx["labels"], torch_out["labels"])
    np.testing.assert_allclose(onnx["scores"], torch_out["scores"], atol=1e-5)
    np.testing.assert_allclose(onnx["boxes"], torch_out["boxes"], atol=1e-3)
    # the decoded detections (the task's threshold) and the scored ones (COCO's floor) are the same boxes
    for threshold in (None, task.eval_score_threshold):
        a = task.detections(onnx, CLASSES, score_threshold=threshold)
        b = task.detections(torch_out, CLASSES, score_threshold=threshold)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x["labels"], y["labels"])
            np.testing.assert_allclose(x["boxes"], y["boxes"], atol=1e-3)
    assert sum(len(d["boxes"]) for d in task.detections(onnx, CLASSES, score_threshold=task.eval_score_threshold))
    for x, y in zip(task.decode(onnx, CLASSES), task.decode(torch_out, CLASSES), strict=True):
        assert [d["class"] for d in x["detections"]] == [d["class"] for d in y["detections"]]
        for dx, dy in zip(x["detections"], y["detections"], strict=True):
            assert dx["box"] == pytest.approx(dy["box"], abs=1e-3)


def test_evaluate_judges_a_trained_detector_on_a_detection_suite(trained):
    """``run_evaluate`` on the trained checkpoint with a detection suite: COCO metrics per scenario, mPC / rPC,
    the report and scenarios.json, whatever the verdict of a 3-epoch model."""
    import yaml

    from cvplatform.errors import GateFailed
    from cvplatform.evaluation.run import run_evaluate

    root, _ = trained
    suite = {"name": "tiny-detection", "robustness": {"min_rpc": 0.0},
             "scenarios": [{"name": "clean", "kind": "clean", "level": "must_pass", "min_map50": 0.0},
                           {"kind": "corruption", "corruption": "gaussian_noise", "severities": [2],
                            "min_relative_map50": 0.0}]}
    (root / "configs/scenarios/tiny_detection.yaml").write_text(yaml.safe_dump(suite))
    params = load(root, "evaluate.suite=configs/scenarios/tiny_detection.yaml", "evaluate.compare_champion=false",
                  "evaluate.log_to_mlflow=false", "evaluate.bootstrap_samples=20")
    try:
        result = run_evaluate(params, root=root, model=str(root / "artifacts/train/best.ckpt"))
    except GateFailed as exc:  # a verdict, not a crash: the stage wrote everything first
        result = exc.result
    out = root / "artifacts" / "evaluate"
    doc = json.loads((out / "scenarios.json").read_text())
    assert result.n_images > 0 and list(doc["scenarios"]) == ["clean", "gaussian_noise_s2"]
    clean = doc["scenarios"]["clean"]
    assert {"map", "map50", "map75", "mar_100"} <= set(clean) and 0.0 <= clean["map50"] <= 1.0
    assert set(doc["robustness"]) >= {"mpc", "rpc"}
    report = (out / "report.md").read_text()
    assert "mPC" in report and "rPC" in report and "min_rpc" in report
