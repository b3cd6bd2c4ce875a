"""load_checkpoint: weights_only loading, full metadata, clear errors for bad files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from cvplatform.errors import ModelError
from cvplatform.models.checkpoint import load_checkpoint
from cvplatform.tasks import get_task
from cvplatform.tasks.classification.module import ClassifierModule

PRE = {"input_size": [16, 16], "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3], "eval": [],
       "resize_interpolation": "bilinear", "max_pixel_value": 255.0, "color": "RGB", "layout": "CHW"}


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    torch.manual_seed(0)
    m = ClassifierModule("resnet", {"blocks": [1, 1], "width": 4}, 2, ["cat", "dog"], PRE)
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0, 1] * 4)
    dl = DataLoader(TensorDataset(x, y), batch_size=4)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(m, dl, dl)
    path = tmp_path_factory.mktemp("ckpt") / "best.ckpt"
    trainer.save_checkpoint(path)
    m.eval()
    with torch.no_grad():
        expected = m(x)
    return path, x, expected


def test_roundtrip_rebuilds_identical_network_and_metadata(ckpt_path):
    path, x, expected = ckpt_path
    lm = load_checkpoint(path)
    assert not lm.model.training
    with torch.no_grad():
        assert torch.allclose(lm.model(x), expected, atol=1e-6)
    assert lm.arch == "resnet"
    assert lm.arch_kwargs["blocks"] == [1, 1] and lm.arch_kwargs["width"] == 4
    assert lm.num_classes == 2 and lm.class_names == ["cat", "dog"]
    assert lm.input_size == (16, 16)
    assert lm.mean == (0.4, 0.5, 0.6) and lm.std == (0.2, 0.25, 0.3)
    assert lm.eval_transforms == [] and lm.preprocess["max_pixel_value"] == 255.0
    assert lm.epoch == 1 and lm.global_step == 2  # saved after the (only) epoch completed
    assert "val_acc" in lm.metrics
    meta = lm.metadata()
    assert meta["class_names"] == ["cat", "dog"] and meta["input_size"] == [16, 16]


def test_eval_pipeline_and_forward(ckpt_path):
    lm = load_checkpoint(ckpt_path[0])
    img = np.full((40, 30, 3), 128, np.uint8)
    t = lm.eval_pipeline()(image=img)["image"]
    assert tuple(t.shape) == (3, 16, 16)
    # (128/255 - mean) / std, per channel
    assert float(t[0, 0, 0]) == pytest.approx((128 / 255 - 0.4) / 0.2, abs=1e-4)
    logits = lm.forward([img, img])
    assert logits.shape == (2, 2) and torch.isfinite(logits).all() and torch.equal(logits[0], logits[1])
    classes, confidences = get_task().decode_top({"logits": logits.numpy()}, lm.class_names)
    assert set(classes) <= {"cat", "dog"} and ((confidences >= 0.5) & (confidences <= 1)).all()


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_corrupt_and_truncated_files(tmp_path, ckpt_path):
    bad = tmp_path / "garbage.ckpt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelError, match="garbage.ckpt") as ei:
        load_checkpoint(bad)
    assert "corrupt" in str(ei.value) and "cvplatform train" in str(ei.value)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt_path[0].read_bytes()[:2000])
    with pytest.raises(ModelError, match="cut.ckpt"):
        load_checkpoint(cut)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_arbitrary_pickles_are_refused(tmp_path):
    p = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Evil()}, p, pickle_module=pickle)
    with pytest.raises(ModelError, match="weights_only"):
        load_checkpoint(p)


def test_checkpoint_without_metadata(tmp_path):
    p = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"lr": 0.1}}, p)
    with pytest.raises(ModelError, match="metadata"):
        load_checkpoint(p)
    q = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, q)
    with pytest.raises(ModelError, match="state_dict"):
        load_checkpoint(q)


def test_weights_that_do_not_fit_the_architecture(tmp_path, ckpt_path):
    ckpt = torch.load(ckpt_path[0], weights_only=True)
    ckpt["hyper_parameters"]["arch_kwargs"]["width"] = 8
    p = tmp_path / "mismatch.ckpt"
    torch.save(ckpt, p)
    with pytest.raises(ModelError, match="do not fit"):
        load_checkpoint(p)


def test_a_calibration_temperature_scales_the_loaded_network_without_changing_predictions(ckpt_path, tmp_path):
    import shutil

    from cvplatform.models.checkpoint import set_temperature

    src, x, expected = ckpt_path
    calibrated_path = tmp_path / "calibrated.ckpt"
    shutil.copy(src, calibrated_path)
    set_temperature(calibrated_path, 2.5)
    plain, scaled = load_checkpoint(src), load_checkpoint(calibrated_path)
    assert scaled.temperature == 2.5 and plain.temperature == 1.0
    with torch.inference_mode():
        a, b = plain.model(x), scaled.model(x)
    assert torch.allclose(a, expected, atol=1e-6) and torch.allclose(a / 2.5, b, atol=1e-6)
    assert torch.equal(a.argmax(1), b.argmax(1))  # same predictions, softer confidences
