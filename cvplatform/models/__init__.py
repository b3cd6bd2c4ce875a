"""Model architectures, selected by name (``train.model.arch``).

=============  ==================================================================
name           what it is (arguments go in ``train.model.<name>``)
=============  ==================================================================
small_cnn      a few VGG-style conv stages; ``width``, ``stages``, ``dropout``
resnet         ResNet with basic blocks; ``depth`` (10/18/34) or ``blocks``
               (e.g. ``[2, 2, 2, 2]``), ``width``, ``stem`` (``cifar``/``imagenet``)
mobilenet_v2   MobileNetV2 (inverted residuals, depthwise convs); ``width_mult``,
               ``small_input``, ``dropout``
=============  ==================================================================

Every architecture declares its arguments as a frozen pydantic model, so an
unknown or mistyped argument fails when the model is built (before training),
naming the argument and listing the valid ones. :func:`build_model` returns
the ``nn.Module`` and never needs anything but primitive arguments, which is
what lets checkpoints record ``(arch, kwargs)`` and rebuild the network with
``torch.load(..., weights_only=True)``.

This package is cheap to import; torch is imported when a model is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from cvplatform.errors import ModelConfigError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: where the builder and its argument schema live."""

    module: str
    """Module defining the architecture (imported lazily)."""
    builder: str
    """Name of ``build(num_classes: int, cfg) -> nn.Module`` in that module."""
    config: str
    """Name of the pydantic model of its keyword arguments in that module."""


_REGISTRY: dict[str, ModelSpec] = {
    "small_cnn": ModelSpec("cvplatform.models.small_cnn", "build", "SmallCNNConfig"),
    "resnet": ModelSpec("cvplatform.models.resnet", "build", "ResNetConfig"),
    "mobilenet_v2": ModelSpec("cvplatform.models.mobilenet", "build", "MobileNetV2Config"),
}
_CUSTOM: dict[str, tuple[Callable[..., Any], type[BaseModel]]] = {}


def available_models() -> list[str]:
    """Names accepted by :func:`build_model` (and ``train.model.arch``), sorted.

    Example:
        >>> from cvplatform.models import available_models
        >>> available_models()
        ['mobilenet_v2', 'resnet', 'small_cnn']
    """
    return sorted({*_REGISTRY, *_CUSTOM})


def register_model(name: str, builder: Callable[..., Any], config: type[BaseModel]) -> None:
    """Register an extra architecture: ``builder(num_classes, cfg) -> nn.Module``.

    ``config`` is a pydantic model of its keyword arguments (primitive types only,
    so checkpoints stay loadable with ``weights_only=True``).

    Example:
        >>> from pydantic import BaseModel
        >>> from cvplatform.models import register_model
        >>> class LinearCfg(BaseModel):
        ...     in_features: int = 3 * 8 * 8
        >>> def build_linear(num_classes, cfg):
        ...     import torch.nn as nn
        ...     return nn.Sequential(nn.Flatten(), nn.Linear(cfg.in_features, num_classes))
        >>> register_model("linear", build_linear, LinearCfg)  # doctest: +SKIP
    """
    if name in _REGISTRY:
        raise ModelError(f"register_model: '{name}' is a built-in architecture; pick another name.")
    _CUSTOM[name] = (builder, config)


def _resolve(name: str) -> tuple[Callable[..., Any], type[BaseModel]]:
    if name in _CUSTOM:
        return _CUSTOM[name]
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ModelConfigError(
            f"unknown architecture {name!r} (train.model.arch); valid names: {', '.join(available_models())}. "
            "Set train.model.arch to one of them."
        )
    mod = importlib.import_module(spec.module)
    return getattr(mod, spec.builder), getattr(mod, spec.config)


def resolve_model_kwargs(name: str, **kwargs: Any) -> dict[str, Any]:
    """Validate ``kwargs`` for architecture ``name``; return them with defaults filled in.

    The result is what checkpoints record as ``arch_kwargs`` (primitive types).

    Raises:
        ModelError: unknown architecture, or an unknown/invalid argument (named,
            with the list of valid ones).

    Example:
        >>> from cvplatform.models import resolve_model_kwargs
        >>> resolve_model_kwargs("small_cnn", width=8)["width"]
        8
    """
    _, config = _resolve(name)
    try:
        cfg = config.model_validate(kwargs)
    except ValidationError as exc:
        from cvplatform.config import format_validation_error

        msg = format_validation_error(exc, config, f"train.model.{name} (arguments of arch {name!r})")
        raise ModelConfigError(msg) from None
    return cfg.model_dump(mode="json")


def build_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` with a ``num_classes``-way classifier head.

    Args:
        name: Registry name (see :func:`available_models`).
        num_classes: Number of output logits (>= 2).
        **kwargs: Architecture arguments (``train.model.<arch>``), validated.

    Returns:
        A freshly initialised ``torch.nn.Module`` mapping ``(N, 3, H, W)`` float
        tensors to ``(N, num_classes)`` logits.

    Raises:
        ModelError: unknown architecture (lists the valid names), invalid
            arguments or a bad ``num_classes``.

    Example:
        >>> import torch
        >>> from cvplatform.models import build_model
        >>> net = build_model("small_cnn", num_classes=10, width=8)
        >>> tuple(net(torch.zeros(2, 3, 32, 32)).shape)
        (2, 10)
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ModelError(
            f"build_model({name!r}): num_classes (the width of the output layer) must be an integer >= 1, "
            f"got {num_classes!r}."
        )
    builder, config = _resolve(name)
    resolved = resolve_model_kwargs(name, **kwargs)
    return builder(num_classes, config.model_validate(resolved))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (optionally only trainable ones).

    Example:
        >>> from cvplatform.models import build_model, count_parameters
        >>> count_parameters(build_model("small_cnn", 10, width=8))
        18626
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "ModelSpec",
    "available_models",
    "build_model",
    "count_parameters",
    "register_model",
    "resolve_model_kwargs",
]
