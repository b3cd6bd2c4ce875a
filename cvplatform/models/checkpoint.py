"""Loading trained models: :func:`load_checkpoint` -> :class:`LoadedModel`.

Training writes Lightning checkpoints (``artifacts/train/best.ckpt`` and
``last.ckpt``). They are loaded here with ``torch.load(..., weights_only=True)``
only, never unpickling arbitrary objects, which works because every
hyper-parameter is a primitive. What a checkpoint holds (all plain data):

``state_dict``
    network weights, keys prefixed ``model.`` (the LightningModule attribute).
``hyper_parameters``
    the :class:`~cvplatform.tasks.classification.module.ClassifierModule` arguments:
    ``arch``, ``arch_kwargs``, ``num_classes``, ``class_names``, ``preprocess``,
    ``optimizer``, ``scheduler``, ``label_smoothing``, ``class_weights``, ``max_epochs``.
``cvplatform``
    the model metadata (``format_version``, ``arch``, ``arch_kwargs``,
    ``num_classes``, ``class_names``, ``input_size``, ``mean``, ``std``,
    ``preprocess``) plus ``metrics``: the epoch's train/val metrics when saved.
``epoch``, ``global_step``, optimizer/scheduler/loop/callback states
    used by ``cvplatform train --resume``.

``preprocess`` describes exactly how an image must be prepared (what later stages
and serving must reproduce): decode to RGB uint8 HxWx3; apply the recipe's
``eval`` steps (albumentations, usually none); resize to ``input_size`` (H, W)
with bilinear interpolation (``resize: stretch``, also when the key is absent) or
letterbox it (``resize: letterbox``: aspect ratio kept, centred, padded with the
grey level ``pad_value``); divide by ``max_pixel_value`` (255); subtract
``mean`` and divide by ``std`` per channel; transpose to CHW float32. Output
index ``i`` of the network is ``class_names[i]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvplatform.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import albumentations as A
    import numpy as np
    import torch
    from torch import nn

    from cvplatform.tasks.base import Task

_REQUIRED_HPARAMS = ("arch", "arch_kwargs", "num_classes", "class_names", "preprocess")


@dataclass
class LoadedModel:
    """A trained network in eval mode plus everything needed to use it."""

    model: nn.Module
    """The network (eval mode, on the requested device): ``(N,3,H,W)`` float -> ``(N,C)`` logits."""
    arch: str
    """Registry name of the architecture (``cvplatform.models``)."""
    arch_kwargs: dict[str, Any]
    """Architecture arguments (with defaults filled in): ``build_model(arch, num_classes, **arch_kwargs)``."""
    num_classes: int
    """Number of output logits."""
    class_names: list[str]
    """Label of each output index (sorted manifest labels)."""
    input_size: tuple[int, int]
    """(height, width) of the network input."""
    mean: tuple[float, ...]
    """Per-channel RGB mean of pixel/255."""
    std: tuple[float, ...]
    """Per-channel RGB std of pixel/255."""
    eval_transforms: list[dict[str, Any]]
    """Recipe ``eval`` steps (``{name, params}``) applied before resize/normalise."""
    preprocess: dict[str, Any]
    """Full preprocessing metadata (see the module docstring)."""
    path: Path
    """File the model was loaded from."""
    epoch: int = -1
    """Epoch (0-based) at which the checkpoint was saved."""
    global_step: int = -1
    """Optimiser steps done when saved."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Metrics of that epoch (``val_acc``, ``val_f1``, ``val_loss``, ``train_*``)."""
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    """All training hyper-parameters stored in the checkpoint."""
    format_version: int = 1
    """Checkpoint metadata layout version."""
    temperature: float = 1.0
    """Calibration temperature the logits are divided by (already part of ``model``)."""

    def eval_pipeline(self) -> A.Compose:
        """The albumentations eval pipeline (recipe eval steps + resize + normalise + tensor).

        Example:
            >>> lm = load_checkpoint("artifacts/train/best.ckpt")  # doctest: +SKIP
            >>> lm.eval_pipeline()(image=rgb)["image"].shape  # doctest: +SKIP
            torch.Size([3, 32, 32])
        """
        from cvplatform.data.augment import build_pipeline, recipe_from_metadata

        return build_pipeline(recipe_from_metadata(self.preprocess), "eval", source=str(self.path))

    def forward(self, images: list[np.ndarray]) -> torch.Tensor:
        """The network's raw output (``(N, C)`` logits for classification) for RGB uint8 HxWx3 images,
        on the CPU; the project's task turns it into predictions (``task.decode``/``decode_top``).

        Example:
            >>> lm.forward([rgb]).shape  # doctest: +SKIP
            torch.Size([1, 10])
        """
        import torch

        pipe = self.eval_pipeline()
        batch = torch.stack([pipe(image=img)["image"] for img in images])
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            return self.model(batch.to(device)).cpu()

    def metadata(self) -> dict[str, Any]:
        """JSON-friendly metadata (everything but the network)."""
        return {
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "eval_transforms": self.eval_transforms,
            "preprocess": self.preprocess,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "metrics": self.metrics,
            "format_version": self.format_version,
            "temperature": self.temperature,
            "path": str(self.path),
        }


def read_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with clear errors; returns the raw dict.

    Raises:
        ModelError: file missing, unreadable/corrupt, or holding non-primitive objects.

    Example:
        >>> ckpt = read_checkpoint("artifacts/train/last.ckpt")  # doctest: +SKIP
        >>> ckpt["epoch"]  # doctest: +SKIP
        4
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: checkpoint not found. Run `cvplatform train` first (or pass the right path).")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt zip, truncated file, pickle with forbidden globals, ...
        detail = " ".join(str(exc).split())[:300]
        raise ModelError(
            f"{p}: not a readable checkpoint ({type(exc).__name__}: {detail}). The file is corrupt, truncated "
            "or not a cvplatform checkpoint (only weights_only=True checkpoints are loaded). Delete it and "
            "re-run `cvplatform train` (without --resume)."
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ModelError(
            f"{p}: not a training checkpoint (no 'state_dict' entry). Use a .ckpt written by `cvplatform train`."
        )
    return ckpt


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu", *, task: Task | None = None) -> LoadedModel:
    """Load a training checkpoint as an eval-mode network plus its metadata.

    Args:
        path: ``.ckpt`` file written by ``cvplatform train`` (e.g. ``artifacts/train/best.ckpt``).
        map_location: Device to load onto (default CPU).
        task: The task the checkpoint was trained for (default: classification); its
            ``rebuild_network`` rebuilds the network from the hyper-parameters and weights
            (classification's classifier, detection's detector with its in-graph decoding).

    Returns:
        A :class:`LoadedModel` (``.model`` in eval mode; ``.class_names``,
        ``.input_size``, ``.mean``, ``.std``, ``.eval_pipeline()``, ...).

    Raises:
        ModelError: missing/corrupt file, missing metadata, or weights that do
            not fit the recorded architecture.

    Example:
        >>> from cvplatform.models.checkpoint import load_checkpoint
        >>> lm = load_checkpoint("artifacts/train/best.ckpt")  # doctest: +SKIP
        >>> lm.class_names[:3], lm.input_size  # doctest: +SKIP
        (['0', '1', '2'], (32, 32))
    """
    from cvplatform.tasks import get_task

    p = Path(path)
    ckpt = read_checkpoint(p, map_location)
    hp = ckpt.get("hyper_parameters") or {}
    missing = [k for k in _REQUIRED_HPARAMS if k not in hp]
    if missing:
        raise ModelError(
            f"{p}: checkpoint lacks model metadata {missing} in 'hyper_parameters'. It was not written by "
            "`cvplatform train`; retrain with `cvplatform train`."
        )
    pre = dict(hp["preprocess"])
    model = (task or get_task()).rebuild_network(hp, ckpt["state_dict"], str(p))
    meta = ckpt.get("cvplatform") or {}
    temperature = float(meta.get("temperature", 1.0))
    if temperature != 1.0:  # calibrated by `cvplatform train` (the task's `calibrate`)

        model = temperature_scaled(model, temperature)
    model.to(map_location).eval()
    h, w = pre.get("input_size", [0, 0])
    return LoadedModel(
        model=model,
        arch=str(hp["arch"]),
        arch_kwargs=dict(hp["arch_kwargs"]),
        num_classes=int(hp["num_classes"]),
        class_names=[str(c) for c in hp["class_names"]],
        input_size=(int(h), int(w)),
        mean=tuple(float(x) for x in pre.get("mean", ())),
        std=tuple(float(x) for x in pre.get("std", ())),
        eval_transforms=list(pre.get("eval", [])),
        preprocess=pre,
        path=p,
        epoch=int(ckpt.get("epoch", -1)),
        global_step=int(ckpt.get("global_step", -1)),
        metrics=dict(meta.get("metrics", {})),
        hyper_parameters=dict(hp),
        format_version=int(meta.get("format_version", 1)),
        temperature=temperature,
    )


def temperature_scaled(net: nn.Module, temperature: float) -> nn.Module:
    """``net`` whose output is divided by ``temperature`` (an ``nn.Module``; exports to ONNX as a Div).

    The temperature is the one the task's calibration fitted (``Task.calibrate``, recorded by
    :func:`set_temperature`).

    Example:
        >>> import torch
        >>> m = temperature_scaled(torch.nn.Identity(), 2.0)
        >>> m(torch.tensor([[4.0, 2.0]])).tolist()
        [[2.0, 1.0]]
    """
    import torch
    from torch import nn

    class TemperatureScaled(nn.Module):
        """A calibrated network: ``net(x) / temperature``."""

        def __init__(self, inner: nn.Module, t: float) -> None:
            super().__init__()
            self.net = inner
            self.register_buffer("temperature", torch.tensor(float(t), dtype=torch.float32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x) / self.temperature

    return TemperatureScaled(net, temperature)


def set_temperature(path: str | os.PathLike[str], temperature: float) -> None:
    """Record a calibration temperature in a checkpoint (atomically): loaders then divide the logits by it.

    Example:
        >>> set_temperature("artifacts/train/best.ckpt", 1.42)  # doctest: +SKIP
        >>> load_checkpoint("artifacts/train/best.ckpt").temperature  # doctest: +SKIP
        1.42
    """
    import torch

    p = Path(path)
    ckpt = read_checkpoint(p)
    ckpt.setdefault("cvplatform", {})["temperature"] = float(temperature)
    tmp = p.with_name(p.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, p)


__all__ = ["LoadedModel", "load_checkpoint", "read_checkpoint", "set_temperature", "temperature_scaled"]
