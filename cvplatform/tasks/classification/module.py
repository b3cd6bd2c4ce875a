"""Classification's training module: :class:`ClassifierModule`.

* Loss: cross-entropy with optional label smoothing and per-class weights
  (``none`` | ``balanced`` | explicit list, resolved to a list by the caller).
* Metrics (torchmetrics): accuracy (micro) and macro-F1 for train, val and test,
  plus the mean loss: ``{train,val,test}_{loss,acc,f1}``, all epoch-level.
* Optimiser, schedule, steps and checkpoint metadata: :class:`cvplatform.models.lightning.TaskModule`.

The checkpoint carries a ``"cvplatform"`` entry with the model metadata (see
:meth:`~cvplatform.models.lightning.TaskModule.metadata`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from cvplatform.errors import ModelError
from cvplatform.models import build_model, resolve_model_kwargs
from cvplatform.models.lightning import TaskModule


def _metrics(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes=num_classes, average="macro"),
        },
        prefix=f"{prefix}_",
    )


class ClassifierModule(TaskModule):
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
        >>> from cvplatform.tasks.classification.module import ClassifierModule
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
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ModelError(f"ClassifierModule: num_classes must be an integer >= 2, got {num_classes!r}. "
                             "A classifier needs at least two classes in the manifest.")
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

    def compute_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy with the configured class weights and label smoothing."""
        return F.cross_entropy(
            logits, targets, weight=self.class_weight, label_smoothing=self.hparams["label_smoothing"]
        )

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return torch.softmax(self(x), dim=1)


__all__ = ["ClassifierModule"]
