"""Augmentation recipes: ``configs/augment/*.yaml`` -> albumentations pipelines.

A recipe is a small YAML file::

    input_size: [32, 32]        # (height, width) the model sees
    resize: stretch             # stretch (default) | letterbox: keep the aspect ratio, pad to input_size
    pad_value: 114              # letterbox only: grey level 0-255 of the padding (default 114)
    mean: [0.5, 0.5, 0.5]       # per-channel mean of pixel/255 (RGB)
    std: [0.5, 0.5, 0.5]        # per-channel std of pixel/255 (RGB)
    train:                      # random augmentations, training only
      - name: Affine            # any albumentations transform, by class name
        params: {rotate: [-10, 10], p: 0.5}
      - name: OneOf             # composes take a nested `transforms` list
        params: {p: 0.3}
        transforms:
          - {name: GaussNoise}
          - {name: Blur, params: {blur_limit: 3}}
    eval: []                    # must stay empty: evaluation / serving apply only the fixed tail

Every pipeline (train and eval) ends with a fixed tail that the recipe cannot
forget: the resize to ``input_size`` (bilinear), ``Normalize(mean, std,
max_pixel_value=255)`` and ``ToTensorV2`` (HWC uint8 RGB -> CHW float32). The
resize is ``Resize(height, width)`` for ``resize: stretch`` (the default) and, for
``resize: letterbox``, ``LongestMaxSize(max_size_hw=(height, width))`` then
``PadIfNeeded(height, width, position="center", border_mode=BORDER_CONSTANT, fill=pad_value)``:
the aspect ratio is kept and the image centred on a ``pad_value`` grey canvas; boxes
(the task's ``bbox_params``) follow both steps. The eval pipeline, ``input_size``,
``resize``, ``pad_value``, ``mean`` and ``std`` are recorded with the model (see
:mod:`cvplatform.models.checkpoint`) so evaluation, export and serving preprocess
exactly like training did (:func:`cvplatform.preprocess.resize_to_contract` gives the
same pixels; a model recorded without ``resize`` is a stretch).

Unknown transforms, unknown arguments and invalid values raise
:class:`~cvplatform.errors.ConfigError` naming the file and the entry
(``train[1]``) *when the recipe is loaded*, never in the middle of training.
"""

from __future__ import annotations

import difflib
import inspect
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, StrictInt, ValidationInfo, field_validator

from cvplatform.config import StrictModel, load_config
from cvplatform.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import albumentations as A

#: Interpolation of the fixed Resize step (cv2.INTER_LINEAR); recorded with the model.
RESIZE_INTERPOLATION = "bilinear"
#: Pixel values are divided by this before mean/std normalisation.
MAX_PIXEL_VALUE = 255.0
#: Grey level of the letterbox padding when the recipe gives none (the YOLO convention).
DEFAULT_PAD_VALUE = 114

_COMPOSES = {"OneOf", "SomeOf", "Sequential", "OneOrOther", "SelectiveChannelTransform", "RandomOrder"}
#: Transforms that change the output type or are added by the fixed tail; not allowed in recipes.
_FORBIDDEN = {"ToTensorV2", "ToTensor3D", "Normalize", "Compose", "ReplayCompose"}
#: How the fixed tail brings an image to ``input_size`` (``resize`` in a recipe).
ResizeMode = Literal["stretch", "letterbox"]


class TransformSpec(StrictModel):
    """One entry of a recipe pipeline."""

    name: str
    """albumentations class name, e.g. ``Affine`` or ``RandomBrightnessContrast``."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the transform (YAML lists become tuples where albumentations wants them)."""
    transforms: list[TransformSpec] | None = None
    """Children, only for composes (``OneOf``, ``SomeOf``, ``Sequential``)."""


class AugmentRecipe(StrictModel):
    """A validated augmentation recipe (see the module docstring for the file format)."""

    input_size: tuple[int, int] = (32, 32)
    """(height, width) of the tensors the model sees."""
    resize: ResizeMode = "stretch"
    """How the fixed tail brings an image to ``input_size``: ``stretch`` (``Resize``, each side scaled on its
    own) or ``letterbox`` (``LongestMaxSize`` + centred ``PadIfNeeded``: aspect ratio kept, padded)."""
    pad_value: StrictInt | None = Field(default=None, ge=0, le=255)
    """Letterbox only: grey level (0-255, every channel) of the padding; ``None`` = :data:`DEFAULT_PAD_VALUE`."""
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Per-channel (RGB) mean of pixel/255 subtracted before the model."""
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Per-channel (RGB) std of pixel/255 the centred pixels are divided by."""
    train: list[TransformSpec] = Field(default_factory=list)
    """Training-time augmentations (random)."""
    eval: list[TransformSpec] = Field(default_factory=list)
    """Evaluation/serving-time steps (deterministic), applied before the fixed tail."""

    @field_validator("input_size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1:
            raise ValueError(f"input_size must be two positive integers (height, width), got {list(v)}")
        return v

    @field_validator("pad_value")
    @classmethod
    def _pad_needs_letterbox(cls, v: int | None, info: ValidationInfo) -> int | None:
        resize = info.data.get("resize")  # absent: resize itself was invalid (its own error says so)
        if v is not None and resize == "stretch":
            raise ValueError(
                f"pad_value only applies to `resize: letterbox` (resize is {resize!r}, which pads nothing): "
                "remove pad_value or set resize: letterbox"
            )
        return v

    @property
    def letterbox_fill(self) -> int:
        """The letterbox padding's grey level (``pad_value`` or :data:`DEFAULT_PAD_VALUE`)."""
        return DEFAULT_PAD_VALUE if self.pad_value is None else int(self.pad_value)

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError(f"std values must be > 0, got {list(v)}")
        return v

    @field_validator("eval")
    @classmethod
    def _contract_expressible(cls, v: list[TransformSpec]) -> list[TransformSpec]:
        # Evaluation, the ONNX export and the server preprocess through the shared contract
        # (cvplatform.preprocess): resize to input_size, then normalise. A recipe eval step would
        # be applied in validation during training but nowhere else: refuse it before training.
        if v:
            raise ValueError(
                f"eval step {v[0].name!r} (eval[0]) cannot be expressed in the preprocessing contract shared by "
                "evaluation, ONNX export and serving (resize to input_size, then normalise), so the model would "
                "be served differently from how it was validated. Remove the eval steps (keep `eval: []`) and "
                "put crops or resizes in the train pipeline instead"
            )
        return v

    def to_metadata(self) -> dict[str, Any]:
        """Primitive-typed description recorded with the model (checkpoint, MLflow)."""
        return {
            "input_size": [int(self.input_size[0]), int(self.input_size[1])],
            "resize": self.resize,
            **({"pad_value": self.letterbox_fill} if self.resize == "letterbox" else {}),
            "mean": [float(x) for x in self.mean],
            "std": [float(x) for x in self.std],
            "eval": [_spec_to_dict(s) for s in self.eval],
            "resize_interpolation": RESIZE_INTERPOLATION,
            "max_pixel_value": MAX_PIXEL_VALUE,
            "color": "RGB",
            "layout": "CHW",
        }


def _spec_to_dict(spec: TransformSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"name": spec.name, "params": _primitive(spec.params)}
    if spec.transforms is not None:
        out["transforms"] = [_spec_to_dict(s) for s in spec.transforms]
    return out


def _primitive(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _primitive(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_primitive(x) for x in v]
    return v


def _tuplify(v: Any) -> Any:
    """YAML gives lists; albumentations' schemas want tuples for ranges."""
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    if isinstance(v, dict):
        return {k: _tuplify(x) for k, x in v.items()}
    return v


def _transform_classes() -> dict[str, type]:
    import albumentations as A

    out = {}
    for name in dir(A):
        obj = getattr(A, name)
        if isinstance(obj, type) and issubclass(obj, A.BasicTransform | A.BaseCompose):
            out[name] = obj
    return out


def _build_one(spec: TransformSpec, where: str, source: str, classes: dict[str, type]) -> Any:
    if spec.name in _FORBIDDEN:
        raise ConfigError(
            f"{source}: {where}: '{spec.name}' is added automatically at the end of every pipeline "
            "(the resize to input_size, see `resize:`, Normalize with mean/std, ToTensorV2); remove this entry."
        )
    cls = classes.get(spec.name)
    if cls is None:
        close = difflib.get_close_matches(spec.name, list(classes), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"{source}: {where}: unknown albumentations transform '{spec.name}'.{hint} "
            "Use a class name from https://albumentations.ai/docs/ (e.g. Affine, HorizontalFlip)."
        )
    is_compose = spec.name in _COMPOSES
    if spec.transforms is not None and not is_compose:
        raise ConfigError(
            f"{source}: {where} ({spec.name}): only composes ({', '.join(sorted(_COMPOSES))}) take "
            "a nested 'transforms' list; move the children out or use OneOf/SomeOf/Sequential."
        )
    if is_compose and not spec.transforms:
        raise ConfigError(f"{source}: {where} ({spec.name}): a compose needs a non-empty 'transforms' list.")
    sig = inspect.signature(cls.__init__)
    allowed = [
        n for n, p in sig.parameters.items()
        if n not in ("self", "transforms") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    unknown = [k for k in spec.params if k not in allowed]
    if unknown:
        raise ConfigError(
            f"{source}: {where} ({spec.name}): unknown argument(s) {unknown}; "
            f"{spec.name} accepts: {', '.join(allowed)}."
        )
    kwargs = _tuplify(dict(spec.params))
    if is_compose:
        kwargs["transforms"] = [
            _build_one(child, f"{where}.transforms[{i}]", source, classes)
            for i, child in enumerate(spec.transforms or [])
        ]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            return cls(**kwargs)
    except Exception as exc:  # albumentations validates with pydantic and raises ValueError/TypeError/warnings
        detail = " ".join(str(exc).split())
        raise ConfigError(
            f"{source}: {where} ({spec.name}): invalid params {_primitive(spec.params)}: {detail}. "
            "Fix the values in the recipe (see the transform's documentation)."
        ) from None


def build_pipeline(
    recipe: AugmentRecipe,
    which: str = "eval",
    *,
    seed: int | None = None,
    source: str = "<recipe>",
    targets: Mapping[str, Any] | None = None,
) -> A.Compose:
    """Build the albumentations pipeline ``which`` (``train`` or ``eval``) of ``recipe``.

    The recipe's steps are followed by the fixed tail Resize (``resize: letterbox``: LongestMaxSize ->
    PadIfNeeded centred) -> Normalize -> ToTensorV2, so the output is a float32 CHW tensor of
    ``recipe.input_size``.

    Args:
        recipe: A validated recipe (see :func:`load_recipe`).
        which: ``"train"`` (random augmentations) or ``"eval"`` (deterministic steps).
        seed: Seed of the Compose's own random state (albumentations 2.x ignores
            global seeds); the data module re-seeds it per sample.
        source: Name shown in error messages (the recipe file).
        targets: What the pipeline moves beside the image: the project's task's
            ``albumentations_targets()`` (``{}`` for classification; detection's ``bbox_params``, so boxes
            follow every flip, crop and the final resize or letterbox). Default: the image only.

    Returns:
        An ``albumentations.Compose``; call it as ``pipe(image=rgb_uint8)["image"]`` (or through
        ``task.transform_sample(pipe, image, target)``, which passes the target too).

    Raises:
        ConfigError: unknown transform, unknown argument or invalid value, naming
            the file and the entry (``train[2]``).

    Example:
        >>> from cvplatform.data.augment import AugmentRecipe, build_pipeline
        >>> import numpy as np
        >>> pipe = build_pipeline(AugmentRecipe(input_size=(16, 16)), "eval")
        >>> tuple(pipe(image=np.zeros((20, 24, 3), np.uint8))["image"].shape)
        (3, 16, 16)
    """
    import albumentations as A
    import cv2
    from albumentations.pytorch import ToTensorV2

    if which not in ("train", "eval"):
        raise ConfigError(f"build_pipeline: which must be 'train' or 'eval', got {which!r}")
    classes = _transform_classes()
    specs = recipe.train if which == "train" else recipe.eval
    steps = [_build_one(s, f"{which}[{i}]", source, classes) for i, s in enumerate(specs)]
    h, w = recipe.input_size
    if recipe.resize == "letterbox":  # resize_to_contract (cvplatform.preprocess) reproduces these pixels
        steps += [
            A.LongestMaxSize(max_size_hw=(h, w), interpolation=cv2.INTER_LINEAR),
            A.PadIfNeeded(min_height=h, min_width=w, position="center", border_mode=cv2.BORDER_CONSTANT,
                          fill=recipe.letterbox_fill, fill_mask=0),
        ]
    else:
        steps.append(A.Resize(height=h, width=w, interpolation=cv2.INTER_LINEAR))
    steps += [
        A.Normalize(mean=recipe.mean, std=recipe.std, max_pixel_value=MAX_PIXEL_VALUE),
        ToTensorV2(),
    ]
    return A.Compose(steps, seed=seed, **dict(targets or {}))


def load_recipe(path: str | os.PathLike[str], *, validate: bool = True) -> AugmentRecipe:
    """Load and validate an augmentation recipe from YAML.

    With ``validate=True`` (default) both pipelines are built once, so an unknown
    transform or a bad argument fails here, naming the file and the entry.

    Example:
        >>> from cvplatform.data.augment import load_recipe
        >>> recipe = load_recipe("configs/augment/default.yaml")  # doctest: +SKIP
        >>> recipe.input_size  # doctest: +SKIP
        (32, 32)
    """
    recipe = load_config(path, AugmentRecipe)
    if validate:
        for which in ("train", "eval"):
            build_pipeline(recipe, which, source=str(path))
    return recipe


def recipe_from_metadata(meta: dict[str, Any]) -> AugmentRecipe:
    """Rebuild an (eval-only) recipe from the metadata recorded with a model (no ``resize``: a stretch,
    as every model recorded before the letterbox existed).

    Example:
        >>> from cvplatform.data.augment import AugmentRecipe, recipe_from_metadata
        >>> r = AugmentRecipe(input_size=(8, 8))
        >>> recipe_from_metadata(r.to_metadata()).input_size
        (8, 8)
    """
    return AugmentRecipe.model_validate(
        {
            "input_size": tuple(meta["input_size"]),
            "resize": meta.get("resize", "stretch"),
            "pad_value": meta.get("pad_value"),
            "mean": tuple(meta["mean"]),
            "std": tuple(meta["std"]),
            "eval": meta.get("eval", []),
        }
    )


def resolve_recipe_path(recipe: str | os.PathLike[str], root: Path) -> Path:
    """Resolve a recipe path against the project root (absolute paths are kept)."""
    p = Path(recipe)
    return p if p.is_absolute() else root / p


__all__ = [
    "DEFAULT_PAD_VALUE",
    "MAX_PIXEL_VALUE",
    "RESIZE_INTERPOLATION",
    "AugmentRecipe",
    "TransformSpec",
    "build_pipeline",
    "load_recipe",
    "recipe_from_metadata",
    "resolve_recipe_path",
]
