"""The exported detector through the evaluation and export stages' multi-output functions: ``OnnxPredictor``
returns the three outputs by name, ``task.evaluate_scenario`` scores them against the annotation-table targets,
and the parity gate (``compare_outputs``) judges ONNX against PyTorch with the task's agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvplatform.evaluation.predictors import OnnxPredictor
from cvplatform.export.parity import compare_outputs
from cvplatform.preprocess import PreprocessContract, preprocess
from cvplatform.tasks import get_task


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def test_predictor_outputs_score_through_evaluate_scenario(detection_onnx):
    task, names = get_task("detection"), detection_onnx.class_names
    pred = OnnxPredictor(detection_onnx.path, task=task)
    images = _images(6)
    out = pred.predict(images, batch_size=4)
    assert list(out) == list(task.output_names) and out["labels"].dtype == np.int64
    assert out["boxes"].shape == (6, 20, 4)
    # ground truth = the model's own detections on images 0..2 (perfect there), nothing found on 3..5 is missed
    dets = task.detections(out, names)
    targets = np.asarray([{"boxes": d["boxes"], "labels": d["labels"]} for d in dets[:3]]
                         + [{"boxes": np.array([[1.0, 1.0, 9.0, 9.0]]), "labels": np.array([0])}] * 3, dtype=object)
    res = task.evaluate_scenario("clean", "clean", [f"i{i}" for i in range(6)], targets, out, names, n_bootstrap=10)
    found = sum(len(d["scores"]) for d in dets[:3])
    assert found > 0 and res.values["map50"] is not None
    # every detected truth box is found with the top score of its image set; the 3 planted boxes are missed
    assert res.operating_point["recall"] == pytest.approx(found / (found + 3))
    assert res.values["map50"] < 1.0


def test_parity_of_onnx_against_pytorch_passes_with_the_task_agreement(detection_onnx):
    task, names = get_task("detection"), detection_onnx.class_names
    images = _images(4)
    pred = OnnxPredictor(detection_onnx.path, task=task)
    cand = pred.predict(images)
    contract = PreprocessContract((32, 32), (0.5,) * 3, (0.5,) * 3, tuple(names))
    with torch.no_grad():
        ref = {n: t.numpy() for n, t in zip(task.output_names, detection_onnx.net(torch.from_numpy(
            preprocess(list(images), contract))), strict=True)}
    r = compare_outputs(ref, cand, ids=[f"i{i}" for i in range(4)], paths=[f"{i}.png" for i in range(4)],
                        labels=["x"] * 4, class_names=names, atol=1e-3, min_agreement=1.0, task=task)
    assert r.passed, r.reasons
    assert r.n == 4


def test_evaluation_loads_background_images_whose_label_is_no_class(detection_onnx, tmp_path):
    """A detection manifest's ``label`` is a summary (the largest box's class, or ``background``): loading the
    split does not refuse it, while a classifier still refuses a label that is not one of its classes."""
    import pandas as pd
    from PIL import Image

    from cvplatform.errors import DataError
    from cvplatform.evaluation.suite_runner import load_images
    from tests.fixtures.serving_models import build_model as build_classifier

    for i in range(2):
        Image.fromarray(_images(2)[i]).save(tmp_path / f"{i}.png")
    rows = pd.DataFrame({"path": ["0.png", "1.png"], "label": ["circle", "background"], "sha256": ["a", "b"]})
    data = load_images(rows, tmp_path, OnnxPredictor(detection_onnx.path, task=get_task("detection")), "test")
    assert data.images.shape == (2, 32, 32, 3) and data.y.tolist() == [0, -1]

    (tmp_path / "cls.onnx").write_bytes(build_classifier().SerializeToString())
    rows["label"] = ["red", "background"]
    with pytest.raises(DataError, match=r"label\(s\) \['background'\] are not classes of the model"):
        load_images(rows, tmp_path, OnnxPredictor(tmp_path / "cls.onnx"), "test")


def test_evaluation_scores_targets_where_the_letterbox_put_them(letterbox_onnx, tmp_path):
    """The annotation table's boxes are in the stored image's pixels; evaluation moves them into the model input
    the way the letterbox moved the pixels (``Letterbox`` predicts where), so a perfect detector scores 1."""
    import pandas as pd
    from PIL import Image

    from cvplatform.evaluation.gates import ScenarioGate
    from cvplatform.evaluation.scenarios import Scenario
    from cvplatform.evaluation.suite_runner import build_scenarios, load_images, scenario_targets
    from cvplatform.tasks.detection.annotations import Box, Letterbox, box_table

    task = get_task("detection")
    rng = np.random.default_rng(7)
    sizes = {"wide": (48, 96), "tall": (80, 40)}
    boxes = {"wide": [Box("circle", 12, 6, 36, 30)], "tall": [Box("square", 4, 50, 30, 78)]}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    box_table(boxes).to_parquet(tmp_path / "annotations.parquet")
    rows = pd.DataFrame({"path": ["wide.png", "tall.png"], "label": ["circle", "square"], "sha256": ["wide", "tall"],
                         "annotations": ["annotations.parquet"] * 2})
    predictor = OnnxPredictor(letterbox_onnx.path, task=task)
    assert predictor.contract.resize == "letterbox"
    data = load_images(rows, tmp_path, predictor, "test")
    assert data.image_sizes == [(48, 96), (80, 40)]
    (built,) = build_scenarios(tmp_path / "suite.yaml", [Scenario("clean", "clean", ScenarioGate())], data, rows,
                               tmp_path, predictor)
    targets = scenario_targets(task, built, ["circle", "square"])
    for t, name in zip(targets, ["wide", "tall"], strict=True):
        h, w = sizes[name]
        (want,) = Letterbox.fit(w, h, (32, 32)).boxes(boxes[name])
        np.testing.assert_allclose(t["boxes"], [[want.x0, want.y0, want.x1, want.y1]], atol=1e-4)
    perfect = {"boxes": np.stack([t["boxes"] for t in targets]), "scores": np.ones((2, 1), np.float32),
               "labels": np.array([[0], [1]])}
    assert task.score(perfect, targets, ["circle", "square"])["map50"] == pytest.approx(1.0)
