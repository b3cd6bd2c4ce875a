"""DetectionModule: the COCO metric it logs, its options, a checkpoint round trip, and a real training smoke run
(scenes -> annotation table -> the task's target_of and collate -> Lightning fit with validation)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from cvplatform.errors import ModelError
from cvplatform.tasks import get_task
from cvplatform.tasks.detection.metrics import coco_metrics
from cvplatform.tasks.detection.module import CocoMeanAP, DetectionModule

PRE = {"input_size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "eval": []}
CLASSES = ["circle", "square", "triangle"]


def _module(**kw) -> DetectionModule:
    args = {"arch": "small_cnn", "arch_kwargs": {"width": 8, "stages": 2}, "num_classes": 3, "class_names": CLASSES,
            "preprocess": PRE, "head_width": 16, "max_peaks": 20}
    args.update(kw)
    return DetectionModule(**args)


def test_the_logged_map_equals_the_project_coco_evaluator():
    rng = np.random.default_rng(0)
    truth, preds = [], []
    for _ in range(6):
        k = int(rng.integers(1, 4))
        xy = rng.uniform(0, 40, (k, 2))
        b = np.c_[xy, xy + rng.uniform(4, 20, (k, 2))]
        truth.append({"boxes": b, "labels": rng.integers(0, 3, k), "iscrowd": np.zeros(k, bool)})
        noisy = b + rng.normal(0, 2, b.shape)
        preds.append({"boxes": noisy, "scores": rng.uniform(0, 1, k), "labels": rng.integers(0, 3, k)})
    expected = coco_metrics(truth, preds, CLASSES)
    for key in ("map", "map50"):
        m = CocoMeanAP(key, num_classes=3)
        m.update(preds[:3], truth[:3])
        m.update(preds[3:], truth[3:])
        assert float(m.compute()) == pytest.approx(expected[key], abs=1e-6)
    empty = CocoMeanAP("map50", num_classes=3)
    empty.update([{"boxes": [[0, 0, 4, 4]], "scores": [0.5], "labels": [0]}], [{"boxes": np.zeros((0, 4)), "labels": []}])
    assert math.isnan(float(empty.compute()))  # no ground truth: undefined, not 0


def test_options_detection_does_not_have_are_refused():
    with pytest.raises(ModelError, match="label_smoothing=0.1.*classification options"):
        _module(label_smoothing=0.1)
    with pytest.raises(ModelError, match="class_weights"):
        _module(class_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ModelError, match="input_size"):
        _module(preprocess={**PRE, "input_size": []})
    with pytest.raises(ModelError, match="one name per object class"):
        _module(num_classes=2)


def test_build_module_takes_the_training_stage_arguments_and_checkpoints_load_weights_only(tmp_path):
    torch.manual_seed(0)
    m = get_task("detection").build_module(
        arch="small_cnn", arch_kwargs={"width": 8, "stages": 2}, num_classes=3, class_names=CLASSES, preprocess=PRE,
        optimizer={"name": "adamw", "lr": 1e-3}, scheduler={"name": "none"}, label_smoothing=0.0, class_weights=None,
        max_epochs=2)
    assert isinstance(m, DetectionModule) and m.stride_px == 4
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.strategy.connect(m)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["cvplatform"]["class_names"] == CLASSES and ckpt["hyper_parameters"]["max_peaks"] == 100
    again = DetectionModule(**ckpt["hyper_parameters"])
    again.load_state_dict(ckpt["state_dict"])
    x = torch.randn(2, 3, 32, 32)
    for a, b in zip(m.exportable()(x), again.exportable()(x), strict=True):
        torch.testing.assert_close(a, b)


def _scene_rows(tmp_path, count=8):
    """Scenes on disk, their annotation table beside a manifest, and the manifest rows (what ingest will write)."""
    from cvplatform.tasks.detection.annotations import box_table, check_boxes, read_annotations
    from cvplatform.tasks.detection.scenes import ScenesParams, generate_scenes

    generate_scenes(ScenesParams(count=count, size=32, max_objects=3, classes=tuple(CLASSES)), tmp_path)
    ann = read_annotations(tmp_path)
    boxes, rows = {}, []
    for i, (origin, bs) in enumerate(sorted(ann.boxes.items())):
        sha = hashlib.sha256((tmp_path / origin).read_bytes()).hexdigest()
        boxes[sha], problem = check_boxes(bs, 32, 32, CLASSES)
        assert problem is None
        rows.append({"path": origin, "sha256": sha, "abs_path": str(tmp_path / origin), "annotations": "annotations.parquet",
                     "split": "train" if i < count - 2 else "val"})
    box_table(boxes).to_parquet(tmp_path / "annotations.parquet")
    return rows


def test_a_training_smoke_run_logs_the_monitored_metrics(tmp_path):
    import albumentations as A
    from albumentations.pytorch import ToTensorV2
    from torch.utils.data import DataLoader

    from cvplatform.data.datamodule import ManifestDataset

    task = get_task("detection")
    rows = _scene_rows(tmp_path)
    index = {c: i for i, c in enumerate(CLASSES)}
    pipe = A.Compose([A.Normalize(mean=PRE["mean"], std=PRE["std"]), ToTensorV2()])

    def loader(split: str) -> DataLoader:
        part = [r for r in rows if r["split"] == split]
        ds = ManifestDataset([r["abs_path"] for r in part], [task.target_of(r, index) for r in part], pipe, seeded=False)
        return DataLoader(ds, batch_size=3, shuffle=False, collate_fn=task.collate)

    images, targets = next(iter(loader("train")))
    assert tuple(images.shape) == (3, 3, 32, 32) and len(targets) == 3 and all(len(t["boxes"]) for t in targets)
    torch.manual_seed(0)
    module = _module()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, loader("train"), loader("val"))
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert task.monitor.default in logged and {"val_map50", "val_loss", "train_loss"} <= set(logged)
    assert 0.0 <= logged["val_map"] <= 1.0 and 0.0 <= logged["val_map50"] <= 1.0
    assert math.isfinite(logged["val_loss"]) and math.isfinite(logged["train_loss"])
