"""The detection module through the export stage's own functions: ``export_onnx`` (task-driven output names and
output check) -> ``open_model`` (the serving runtime, which checks the outputs with the task named in the ONNX
metadata) -> the task's decode equals the PyTorch decode on the same inputs, for a dynamic batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvplatform.export.onnx_export import export_onnx, read_metadata
from cvplatform.models.checkpoint import LoadedModel
from cvplatform.preprocess import PreprocessContract
from cvplatform.runtime import open_model
from cvplatform.tasks import get_task
from cvplatform.tasks.detection.module import DetectionModule

PRE = {"input_size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "eval": []}
CLASSES = ["circle", "square"]


def _trained_like(module: DetectionModule) -> None:
    """Sharpen the heatmap so that a few peaks pass the task's score threshold (an untrained head scores 0.01)."""
    with torch.no_grad():
        last = module.model.heatmap[-1]
        last.weight.mul_(5.0)
        last.bias.fill_(-1.0)


def test_exported_detector_decodes_like_pytorch(tmp_path):
    torch.manual_seed(0)
    task = get_task("detection")
    module = DetectionModule("small_cnn", {"width": 8, "stages": 2}, 2, CLASSES, PRE, head_width=16, max_peaks=20)
    _trained_like(module)
    net = module.exportable()
    loaded = LoadedModel(model=net, arch="small_cnn", arch_kwargs=dict(module.hparams["arch_kwargs"]), num_classes=2,
                         class_names=CLASSES, input_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, eval_transforms=[],
                         preprocess=PRE, path=tmp_path / "best.ckpt")
    contract = PreprocessContract((32, 32), (0.5,) * 3, (0.5,) * 3, tuple(CLASSES))
    path = export_onnx(loaded, tmp_path / "model_fp32.onnx", contract, task=task)
    assert read_metadata(path)["task"] == '"detection"'

    runtime = open_model(path)
    runtime.check_batchable()
    assert runtime.task.name == "detection" and tuple(runtime.output_names) == task.output_names
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        ref = {n: t.numpy() for n, t in zip(task.output_names, net(x), strict=True)}
    got = runtime.forward(x.numpy())  # checked by the task's check_outputs inside
    assert got["boxes"].shape == (5, 20, 4) and got["labels"].dtype == np.int64

    want, have = task.decode(ref, CLASSES), task.decode(got, CLASSES)
    assert sum(len(d["detections"]) for d in want) > 0
    for w, h in zip(want, have, strict=True):
        assert [d["class"] for d in h["detections"]] == [d["class"] for d in w["detections"]]
        np.testing.assert_allclose(h["boxes"], w["boxes"], atol=1e-3)
        np.testing.assert_allclose(h["scores"], w["scores"], atol=1e-5)
    agreement = task.agreement(ref, got)
    assert agreement.rate == 1.0 and agreement.max_abs_diff == pytest.approx(0.0, abs=1e-3)
    np.testing.assert_array_equal(task.decode_top(got, CLASSES)[0], task.decode_top(ref, CLASSES)[0])
