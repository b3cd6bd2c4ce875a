"""A detection network exported through the export stage's ``export_onnx`` (shared by the export and serving tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PRE = {"input_size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "eval": []}
CLASSES = ["circle", "square"]


@dataclass
class ExportedDetection:
    path: Path
    net: Any
    """The PyTorch network that was exported (``DetectionModule.exportable()``)."""
    class_names: list[str]


@pytest.fixture
def detection_onnx(tmp_path) -> ExportedDetection:
    """An untrained ``DetectionModule`` whose heatmap is sharpened so a few peaks pass the task's score threshold
    (an untrained head scores every cell 0.01), exported with ``export_onnx`` for the detection task."""
    return _export(tmp_path, PRE)


@pytest.fixture
def letterbox_onnx(tmp_path) -> ExportedDetection:
    """The same detector trained (recorded) with ``resize: letterbox``: its ONNX contract letterboxes."""
    return _export(tmp_path, {**PRE, "resize": "letterbox", "pad_value": 114})


def _export(tmp_path: Path, pre: dict[str, Any]) -> ExportedDetection:
    import torch

    from cvplatform.evaluation.predictors import contract_from_checkpoint
    from cvplatform.export.onnx_export import export_onnx
    from cvplatform.models.checkpoint import LoadedModel
    from cvplatform.tasks import get_task
    from cvplatform.tasks.detection.module import DetectionModule

    torch.manual_seed(0)
    module = DetectionModule("small_cnn", {"width": 8, "stages": 2}, 2, CLASSES, pre, head_width=16, max_peaks=20)
    with torch.no_grad():
        last = module.model.heatmap[-1]
        last.weight.mul_(5.0)
        last.bias.fill_(-1.0)
    net = module.exportable()
    loaded = LoadedModel(model=net, arch="small_cnn", arch_kwargs=dict(module.hparams["arch_kwargs"]), num_classes=2,
                         class_names=CLASSES, input_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, eval_transforms=[],
                         preprocess=pre, path=tmp_path / "best.ckpt")
    contract = contract_from_checkpoint(loaded)  # what export does: the recorded recipe becomes the ONNX contract
    path = export_onnx(loaded, tmp_path / "model_fp32.onnx", contract, task=get_task("detection"))
    return ExportedDetection(path, net, list(CLASSES))
