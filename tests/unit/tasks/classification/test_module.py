"""ClassifierModule: loss options, optimisers/schedules, metrics, metadata in checkpoints."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from cvplatform.errors import ModelError
from cvplatform.tasks.classification.module import ClassifierModule

PRE = {"input_size": [16, 16], "mean": [0.5] * 3, "std": [0.5] * 3, "eval": []}


def _module(**kw) -> ClassifierModule:
    args = {"arch": "small_cnn", "arch_kwargs": {"width": 4, "stages": 2}, "num_classes": 3,
            "class_names": ["a", "b", "c"], "preprocess": PRE}
    args.update(kw)
    return ClassifierModule(**args)


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 16, generator=g), torch.tensor([0, 1, 2] * (n // 3))


def test_forward_and_hparams_are_primitive():
    m = _module()
    assert m(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
    hp = dict(m.hparams)
    assert hp["arch_kwargs"] == {"width": 4, "stages": 2, "dropout": 0.1, "in_channels": 3}

    def primitive(v):
        if isinstance(v, dict):
            return all(isinstance(k, str) and primitive(x) for k, x in v.items())
        if isinstance(v, list | tuple):
            return all(primitive(x) for x in v)
        return v is None or isinstance(v, str | int | float | bool)

    assert primitive(hp)


def test_label_smoothing_and_class_weights_change_the_loss():
    x, y = _batch()
    torch.manual_seed(0)
    base = _module().eval()
    torch.manual_seed(0)
    smooth = _module(label_smoothing=0.3).eval()
    torch.manual_seed(0)
    weighted = _module(class_weights=[5.0, 1.0, 1.0]).eval()
    with torch.no_grad():
        losses = [float(m.compute_loss(m(x), y)) for m in (base, smooth, weighted)]
    expected = float(torch.nn.functional.cross_entropy(base(x), y))
    assert losses[0] == pytest.approx(expected)
    assert losses[1] != pytest.approx(losses[0])
    assert losses[2] != pytest.approx(losses[0])


def test_mismatched_names_or_weights_are_rejected():
    with pytest.raises(ModelError, match="class names"):
        _module(num_classes=4)
    with pytest.raises(ModelError, match="class weights"):
        _module(class_weights=[1.0, 2.0])


@pytest.mark.parametrize(
    ("opt", "sched", "opt_type", "sched_type"),
    [
        ({"name": "adamw", "lr": 0.01}, {"name": "cosine"}, torch.optim.AdamW,
         torch.optim.lr_scheduler.CosineAnnealingLR),
        ({"name": "sgd", "lr": 0.1, "momentum": 0.9}, {"name": "step", "step_size": 2},
         torch.optim.SGD, torch.optim.lr_scheduler.StepLR),
        ({"name": "sgd", "lr": 0.1}, {"name": "cosine", "warmup_epochs": 2},
         torch.optim.SGD, torch.optim.lr_scheduler.SequentialLR),
        ({"name": "adamw", "lr": 0.01}, {"name": "none"}, torch.optim.AdamW, None),
    ],
)
def test_configure_optimizers(opt, sched, opt_type, sched_type):
    cfg = _module(optimizer=opt, scheduler=sched, max_epochs=6).configure_optimizers()
    if sched_type is None:
        assert isinstance(cfg, opt_type)
    else:
        assert isinstance(cfg["optimizer"], opt_type)
        assert isinstance(cfg["lr_scheduler"]["scheduler"], sched_type)
        assert cfg["lr_scheduler"]["interval"] == "epoch"
        assert cfg["optimizer"].param_groups[0]["lr"] <= opt["lr"]


def test_cosine_schedule_decays_to_min_lr():
    cfg = _module(optimizer={"name": "adamw", "lr": 0.1}, scheduler={"name": "cosine", "min_lr": 0.001},
                  max_epochs=4).configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1)
    assert lrs == sorted(lrs, reverse=True)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)


def test_fit_logs_epoch_metrics_and_checkpoint_carries_metadata(tmp_path):
    x, y = _batch(12)
    dl = DataLoader(TensorDataset(x, y), batch_size=4)
    m = _module()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(m, dl, dl)
    keys = set(trainer.callback_metrics)
    assert {"train_loss", "train_acc", "train_f1", "val_loss", "val_acc", "val_f1"} <= keys
    assert 0.0 <= float(trainer.callback_metrics["val_acc"]) <= 1.0
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    trainer.test(m, dl, verbose=False)
    assert {"test_loss", "test_acc", "test_f1"} <= set(trainer.callback_metrics)

    ckpt = torch.load(path, weights_only=True)  # primitive-only: loads without unpickling objects
    meta = ckpt["cvplatform"]
    assert meta["class_names"] == ["a", "b", "c"]
    assert meta["input_size"] == [16, 16] and meta["mean"] == [0.5] * 3
    assert meta["format_version"] == 1
    assert "val_acc" in meta["metrics"]
