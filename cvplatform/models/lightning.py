"""The LightningModule that trains every architecture: :class:`ClassifierModule`.

* Loss: cross-entropy with optional label smoothing and per-class weights
  (``none`` | ``balanced`` | explicit list, resolved to a list by the caller).
* Optimiser: AdamW or SGD (Nesterov momentum); schedule: cosine, step or none,
  stepped once per epoch, with an optional linear warm-up.
* Metrics (torchmetrics): accuracy (micro) and macro-F1 for train, val and test,
  plus the mean loss: ``{train,val,test}_{loss,acc,f1}``, all epoch-level.

Every constructor argument is a primitive (str, int, float, list, dict), saved
with ``save_hyperparameters()``; so checkpoints load with
``torch.load(..., weights_only=True)`` and :func:`cvplatform.models.checkpoint.load_checkpoint`
can rebuild the network without this class. The checkpoint also carries a
``"cvplatform"`` entry with the model metadata (see :meth:`ClassifierModule.metadata`).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from cvplatform.errors import ModelError
from cvplatform.models import build_model, resolve_model_kwargs

#: Version of the checkpoint metadata layout (bump on incompatible changes).
CHECKPOINT_FORMAT = 1
STAGES = ("train", "val", "test")


def _metrics(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes=num_classes, average="macro"),
        },
        prefix=f"{prefix}_",
    )


class ClassifierModule(pl.LightningModule):
    """Image classifier: ``build_model(arch)`` + loss, optimiser, schedule and metrics.

    Args:
        arch: Architecture name (``train.model.arch``).
        arch_kwargs: Architecture arguments (``train.model.<arch>``; defaults get filled in).
        num_classes: Output logits; must equal ``len(class_names)``.
        class_names: Label of each output index (sorted manifest labels).
        preprocess: Preprocessing metadata (``AugmentRecipe.to_metadata()``): input_size,
            mean, std, eval steps. Recorded, not applied here.
        optimizer: ``{"name": "adamw"|"sgd", "lr", "weight_decay", "momentum", "nesterov"}``.
        scheduler: ``{"name": "cosine"|"step"|"none", "warmup_epochs", "min_lr", "step_size", "gamma"}``.
        label_smoothing: Cross-entropy label smoothing in [0, 1).
        class_weights: One positive weight per class, or None (unweighted).
        max_epochs: Epochs the schedule spans (cosine period).

    Example:
        >>> import torch
        >>> from cvplatform.models.lightning import ClassifierModule
        >>> m = ClassifierModule("small_cnn", {"width": 4}, 2, ["a", "b"],
        ...                      {"input_size": [16, 16], "mean": [0.5] * 3, "std": [0.5] * 3, "eval": []})
        >>> tuple(m(torch.zeros(1, 3, 16, 16)).shape)
        (1, 2)
    """

    def __init__(
        self,
        arch: str,
        arch_kwargs: dict[str, Any],
        num_classes: int,
        class_names: list[str],
        preprocess: dict[str, Any],
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        max_epochs: int = 10,
    ) -> None:
        super().__init__()
        if len(class_names) != num_classes:
            raise ModelError(
                f"ClassifierModule: num_classes={num_classes} but {len(class_names)} class names were given "
                f"({class_names}); they must match."
            )
        if class_weights is not None and len(class_weights) != num_classes:
            raise ModelError(
                f"ClassifierModule: {len(class_weights)} class weights for {num_classes} classes; "
                "give one weight per class (train.loss.class_weights)."
            )
        arch_kwargs = resolve_model_kwargs(arch, **dict(arch_kwargs))
        self.save_hyperparameters(
            {
                "arch": arch,
                "arch_kwargs": arch_kwargs,
                "num_classes": int(num_classes),
                "class_names": [str(c) for c in class_names],
                "preprocess": dict(preprocess),
                "optimizer": dict(optimizer or {"name": "adamw", "lr": 1e-3}),
                "scheduler": dict(scheduler or {"name": "none"}),
                "label_smoothing": float(label_smoothing),
                "class_weights": None if class_weights is None else [float(w) for w in class_weights],
                "max_epochs": int(max_epochs),
            }
        )
        self.model = build_model(arch, num_classes, **arch_kwargs)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weight", weights, persistent=False)
        self.train_metrics = _metrics(num_classes, "train")
        self.val_metrics = _metrics(num_classes, "val")
        self.test_metrics = _metrics(num_classes, "test")

    # ------------------------------------------------------------------ forward / steps
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def compute_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy with the configured class weights and label smoothing."""
        return F.cross_entropy(
            logits, targets, weight=self.class_weight, label_smoothing=self.hparams["label_smoothing"]
        )

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.compute_loss(logits, y)
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        metrics.update(logits.detach(), y)
        self.log(
            f"{stage}_loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True,
            batch_size=x.shape[0], sync_dist=True,
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=x.shape[0])
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return torch.softmax(self(x), dim=1)

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


__all__ = ["CHECKPOINT_FORMAT", "ClassifierModule"]
