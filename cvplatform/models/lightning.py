"""The Lightning base every task's training module builds on: :class:`TaskModule`.

It owns what does not depend on the task: the optimiser (AdamW or SGD with Nesterov momentum),
the schedule (cosine, step or none, stepped once per epoch, with an optional linear warm-up),
the train/val/test step that logs ``{stage}_loss`` and the task's torchmetrics, and the model
metadata saved into every checkpoint under ``"cvplatform"``. A task's module
(:class:`cvplatform.tasks.classification.module.ClassifierModule`, ...) supplies the network,
the loss and the metrics.

Every constructor argument is a primitive (str, int, float, list, dict), saved with
``save_hyperparameters()``; so checkpoints load with ``torch.load(..., weights_only=True)`` and
:func:`cvplatform.models.checkpoint.load_checkpoint` can rebuild the network without this class.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torchmetrics import MetricCollection

from cvplatform.errors import ModelError

#: Version of the checkpoint metadata layout (bump on incompatible changes).
CHECKPOINT_FORMAT = 1
STAGES = ("train", "val", "test")


class TaskModule(pl.LightningModule):
    """Optimiser, schedule, logged steps and checkpoint metadata; subclasses add the task.

    Subclasses call ``save_hyperparameters`` with at least ``arch``, ``arch_kwargs``, ``class_names``,
    ``num_classes``, ``preprocess``, ``optimizer``, ``scheduler`` and ``max_epochs``, set
    ``self.model`` and ``self.{train,val,test}_metrics``, and implement :meth:`compute_loss`.
    """

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def compute_loss(self, outputs: Tensor, targets: Any) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def update_metrics(self, metrics: MetricCollection, outputs: Tensor, targets: Any) -> None:
        metrics.update(outputs.detach(), targets)

    def _step(self, batch: tuple[Tensor, Any], stage: str) -> Tensor:
        x, y = batch
        outputs = self(x)
        loss = self.compute_loss(outputs, y)
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        self.update_metrics(metrics, outputs, y)
        self.log(
            f"{stage}_loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True,
            batch_size=x.shape[0], sync_dist=True,
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=x.shape[0])
        return loss

    def training_step(self, batch: tuple[Tensor, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        o = self.hparams["optimizer"]
        name = o.get("name", "adamw")
        lr = float(o.get("lr", 1e-3))
        wd = float(o.get("weight_decay", 0.0))
        if name == "adamw":
            opt: torch.optim.Optimizer = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=wd)
        elif name == "sgd":
            momentum = float(o.get("momentum", 0.9))
            opt = torch.optim.SGD(
                self.parameters(), lr=lr, momentum=momentum, weight_decay=wd,
                nesterov=bool(o.get("nesterov", True)) and momentum > 0,
            )
        else:
            raise ModelError(f"unknown optimizer {name!r} (train.optimizer.name); valid: adamw, sgd.")
        s = self.hparams["scheduler"]
        sname = s.get("name", "none")
        warmup = int(s.get("warmup_epochs", 0))
        epochs = int(self.hparams["max_epochs"])
        if sname == "cosine":
            main: Any = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=max(1, epochs - warmup), eta_min=float(s.get("min_lr", 0.0))
            )
        elif sname == "step":
            main = torch.optim.lr_scheduler.StepLR(
                opt, step_size=int(s.get("step_size", 10)), gamma=float(s.get("gamma", 0.1))
            )
        elif sname == "none":
            main = None
        else:
            raise ModelError(f"unknown scheduler {sname!r} (train.scheduler.name); valid: cosine, step, none.")
        if warmup > 0:
            ramp = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / (warmup + 1), total_iters=warmup)
            rest = main or torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
            main = torch.optim.lr_scheduler.SequentialLR(opt, [ramp, rest], milestones=[warmup])
        if main is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": main, "interval": "epoch"}}

    # ------------------------------------------------------------------ metadata
    def metadata(self) -> dict[str, Any]:
        """Everything later stages need to use the model (primitive types only).

        Keys: ``format_version``, ``arch``, ``arch_kwargs``, ``num_classes``,
        ``class_names``, ``input_size`` ([H, W]), ``mean``, ``std``, ``preprocess``
        (the full recorded recipe metadata, incl. ``eval`` steps).
        """
        hp = self.hparams
        pre = dict(hp["preprocess"])
        return {
            "format_version": CHECKPOINT_FORMAT,
            "arch": hp["arch"],
            "arch_kwargs": dict(hp["arch_kwargs"]),
            "num_classes": int(hp["num_classes"]),
            "class_names": list(hp["class_names"]),
            "input_size": list(pre.get("input_size", [])),
            "mean": list(pre.get("mean", [])),
            "std": list(pre.get("std", [])),
            "preprocess": pre,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = self.metadata()
        trainer = self._trainer
        if trainer is not None:
            meta["metrics"] = {
                k: float(v) for k, v in trainer.callback_metrics.items() if isinstance(v, Tensor) and v.numel() == 1
            }
        checkpoint["cvplatform"] = meta


__all__ = ["CHECKPOINT_FORMAT", "STAGES", "TaskModule"]
