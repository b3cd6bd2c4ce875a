"""The one preprocessing contract shared by evaluation, ONNX export parity and serving.

A model sees ``float32`` tensors in ``NCHW`` layout, RGB channel order, resized to
``input_size`` (height, width) and normalised per channel as
``(pixel / 255 - mean) / std``. The resize either stretches the image to ``input_size``
(``resize="stretch"``, the default) or letterboxes it (``resize="letterbox"``): scaled by
``min(H / h, W / w)`` keeping its aspect ratio, then centred and padded to ``input_size`` with the grey
level ``pad_value`` (:func:`resize_geometry` says where the image lands, so positions can be mapped back). :class:`PreprocessContract` records those
choices (plus the class names the logits refer to) and travels with the model:
in the checkpoint metadata, and as ONNX ``metadata_props`` (string key ->
JSON-string value, see :meth:`PreprocessContract.to_metadata`).

:func:`preprocess` is *the* implementation of the contract. It matches the fixed
tail of the training pipeline (:func:`cvplatform.data.augment.build_pipeline`:
``Resize`` with ``cv2.INTER_LINEAR``, or ``LongestMaxSize`` + ``PadIfNeeded(position="center")`` for the
letterbox, then ``Normalize(mean, std, max_pixel_value=255)``) pixel for pixel, so a model is evaluated
and served exactly as it was trained.

Only numpy and OpenCV are needed (no torch), so the serving image stays small.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from cvplatform.errors import DataError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: Keys written by :meth:`PreprocessContract.to_metadata` (all required by ``from_metadata``
#: except ``interpolation``, ``channel_order``, ``layout``, ``resize`` and ``pad_value``, which have defaults:
#: a model exported before the letterbox existed has no ``resize`` key and is stretched). ``pad_value`` is
#: written only for a letterbox.
METADATA_KEYS: tuple[str, ...] = (
    "input_size",
    "mean",
    "std",
    "class_names",
    "channel_order",
    "layout",
    "interpolation",
    "resize",
    "pad_value",
)
#: How the image becomes ``input_size``: stretched (both sides scaled independently) or letterboxed.
RESIZE_MODES: tuple[str, ...] = ("stretch", "letterbox")
#: Grey level of the letterbox padding when none is given (the YOLO convention).
DEFAULT_PAD_VALUE = 114
_REQUIRED_KEYS: tuple[str, ...] = ("input_size", "mean", "std", "class_names")
MAX_PIXEL_VALUE = 255.0


@dataclass(frozen=True)
class PreprocessContract:
    """How pixels become model inputs, and what the model's outputs mean.

    Attributes:
        input_size: ``(height, width)`` of the tensors the model sees.
        mean: Per-channel (RGB) mean of ``pixel / 255`` subtracted first.
        std: Per-channel (RGB) std the centred values are divided by.
        class_names: Class name of each logit, in output order.
        channel_order: Always ``"RGB"``.
        layout: Always ``"NCHW"``.
        interpolation: Resize interpolation, ``"linear"`` (cv2.INTER_LINEAR, what
            training uses) or ``"area"`` (cv2.INTER_AREA).
        resize: ``"stretch"`` (scale each side to ``input_size``) or ``"letterbox"`` (keep the aspect
            ratio, centre, pad with ``pad_value``).
        pad_value: Grey level (0-255, every channel) of the letterbox padding; ``None`` for a stretch
            (a letterbox without one gets :data:`DEFAULT_PAD_VALUE`).

    Example:
        >>> c = PreprocessContract((32, 32), (0.5,) * 3, (0.5,) * 3, ("cat", "dog"))
        >>> PreprocessContract.from_metadata(c.to_metadata()) == c
        True
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...]
    channel_order: Literal["RGB"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"
    interpolation: Literal["linear", "area"] = "linear"
    resize: Literal["stretch", "letterbox"] = "stretch"
    pad_value: int | None = None

    def __post_init__(self) -> None:
        # normalise sequences to tuples of the right types, then check them
        try:
            size = tuple(int(v) for v in self.input_size)
            mean = tuple(float(v) for v in self.mean)
            std = tuple(float(v) for v in self.std)
            names = tuple(str(v) for v in self.class_names)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"preprocess contract: non-numeric input_size/mean/std ({exc}).") from None
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "class_names", names)
        problems = []
        if len(size) != 2 or min(size) < 1:
            problems.append(f"input_size must be two positive integers (height, width), got {list(size)}")
        if len(mean) != 3:
            problems.append(f"mean must have 3 values (RGB), got {list(mean)}")
        if len(std) != 3 or min(std, default=0.0) <= 0:
            problems.append(f"std must have 3 positive values (RGB), got {list(std)}")
        if not names:
            problems.append("class_names must list at least one class")
        elif len(set(names)) != len(names):
            problems.append(f"class_names has duplicates: {list(names)}")
        if self.channel_order != "RGB":
            problems.append(f"channel_order must be 'RGB', got {self.channel_order!r}")
        if self.layout != "NCHW":
            problems.append(f"layout must be 'NCHW', got {self.layout!r}")
        if self.interpolation not in ("linear", "area"):
            problems.append(f"interpolation must be 'linear' or 'area', got {self.interpolation!r}")
        if self.resize not in RESIZE_MODES:
            problems.append(f"resize must be 'stretch' or 'letterbox', got {self.resize!r}")
        elif self.resize == "stretch" and self.pad_value is not None:
            problems.append(f"pad_value {self.pad_value!r} only applies to resize 'letterbox' (resize is 'stretch')")
        elif self.resize == "letterbox":
            pad = DEFAULT_PAD_VALUE if self.pad_value is None else self.pad_value
            if isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad <= 255:
                problems.append(f"pad_value must be an integer grey level 0-255, got {pad!r}")
            else:
                object.__setattr__(self, "pad_value", int(pad))
        if problems:
            raise ModelError("invalid preprocess contract: " + "; ".join(problems))

    @property
    def resize_label(self) -> str:
        """The resize in words: ``"stretch"`` or ``"letterbox (pad 114)"``.

        Example:
            >>> PreprocessContract((8, 8), (0,) * 3, (1,) * 3, ("a",), resize="letterbox").resize_label
            'letterbox (pad 114)'
        """
        return f"letterbox (pad {self.pad_value})" if self.resize == "letterbox" else "stretch"

    @property
    def num_classes(self) -> int:
        """Number of classes (= logits per image)."""
        return len(self.class_names)

    def to_metadata(self) -> dict[str, str]:
        """Serialise as ``{key: JSON string}`` (ONNX ``metadata_props``, MLflow tags).

        Example:
            >>> c = PreprocessContract((8, 8), (0, 0, 0), (1, 1, 1), ("a", "b"))
            >>> c.to_metadata()["input_size"]
            '[8, 8]'
        """
        return {
            "input_size": json.dumps(list(self.input_size)),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "class_names": json.dumps(list(self.class_names)),
            "channel_order": json.dumps(self.channel_order),
            "layout": json.dumps(self.layout),
            "interpolation": json.dumps(self.interpolation),
            "resize": json.dumps(self.resize),
            **({"pad_value": json.dumps(self.pad_value)} if self.resize == "letterbox" else {}),
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], *, source: str = "model metadata") -> PreprocessContract:
        """Rebuild a contract from :meth:`to_metadata` output (other keys are ignored).

        Args:
            meta: String key -> JSON string value (e.g. ONNX ``custom_metadata_map``).
            source: Where ``meta`` came from, for error messages (e.g. the ONNX path).

        Raises:
            ModelError: a required key is missing or a value is not valid JSON / invalid.

        Example:
            >>> meta = {"input_size": "[8, 8]", "mean": "[0, 0, 0]", "std": "[1, 1, 1]",
            ...         "class_names": '["a", "b"]'}
            >>> PreprocessContract.from_metadata(meta).class_names
            ('a', 'b')
        """
        missing = [k for k in _REQUIRED_KEYS if k not in meta]
        if missing:
            raise ModelError(
                f"{source}: preprocessing contract key(s) {missing} missing (has {sorted(meta)}). "
                "Export the model with cvplatform (it writes PreprocessContract.to_metadata() "
                "into the model metadata) or add the keys yourself."
            )
        values: dict[str, Any] = {}
        for key in METADATA_KEYS:
            if key not in meta:
                continue
            try:
                values[key] = json.loads(meta[key])
            except (TypeError, json.JSONDecodeError):
                raise ModelError(
                    f"{source}: metadata key {key!r} is not a JSON string: {meta[key]!r}. "
                    "Values must be JSON-encoded (e.g. input_size = '[32, 32]')."
                ) from None
        try:
            return cls(**values)
        except ModelError as exc:
            raise ModelError(f"{source}: {exc}") from None
        except TypeError as exc:
            raise ModelError(f"{source}: invalid preprocessing metadata ({exc}).") from None


def _cv2_interpolation(name: str) -> int:
    import cv2

    return {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}[name]


def _check_image(img: Any, where: str) -> np.ndarray:
    import numpy as np

    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise DataError(f"{where}: expected a uint8 image, got dtype {arr.dtype}. Decode images as 8-bit RGB.")
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(
            f"{where}: expected an HxWx3 RGB image, got shape {tuple(arr.shape)}. "
            "Convert grayscale/RGBA images to RGB first."
        )
    return arr


@dataclass(frozen=True)
class ResizeGeometry:
    """Where an image of ``image_size`` lands in the model input: resized to ``new_size`` and placed at
    ``offset`` (the rest is letterbox padding); a point ``(x, y)`` of the image is at
    ``(x * sx + left, y * sy + top)`` in the input, with ``(sy, sx) = scale``.

    The scale is ``new_size / image_size`` per side: exactly how albumentations moves boxes through a
    resize (normalised coordinates times the new size), so positions mapped back with :meth:`to_image`
    are the ones training saw.

    Attributes:
        image_size: ``(height, width)`` of the source image.
        input_size: ``(height, width)`` of the model input.
        new_size: ``(height, width)`` the image is resized to (``input_size`` for a stretch).
        offset: ``(top, left)`` padding before the resized image (``(0, 0)`` for a stretch).

    Example:
        >>> c = PreprocessContract((64, 64), (0,) * 3, (1,) * 3, ("a",), resize="letterbox")
        >>> g = resize_geometry((50, 100), c)
        >>> g.new_size, g.offset
        ((32, 64), (16, 0))
        >>> g.to_input([[10, 10, 20, 20]]).tolist()
        [[6.4, 22.4, 12.8, 28.8]]
        >>> g.to_image(g.to_input([[10, 10, 20, 20]])).round(6).tolist()
        [[10.0, 10.0, 20.0, 20.0]]
    """

    image_size: tuple[int, int]
    input_size: tuple[int, int]
    new_size: tuple[int, int]
    offset: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """``(sy, sx)``: input pixels per image pixel, per side."""
        return self.new_size[0] / self.image_size[0], self.new_size[1] / self.image_size[1]

    def to_input(self, boxes: Any) -> np.ndarray:
        """``(K, 4)`` xyxy boxes in image pixels -> model-input pixels (float64)."""
        import numpy as np

        (sy, sx), (top, left) = self.scale, self.offset
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        return b * np.array([sx, sy, sx, sy]) + np.array([left, top, left, top], np.float64)

    def to_image(self, boxes: Any) -> np.ndarray:
        """``(K, 4)`` xyxy boxes in model-input pixels -> image pixels (float64), clipped to the image (a box
        on the letterbox padding shrinks to the image's edge)."""
        import numpy as np

        (sy, sx), (top, left) = self.scale, self.offset
        h, w = self.image_size
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        out = (b - np.array([left, top, left, top], np.float64)) / np.array([sx, sy, sx, sy])
        return np.clip(out, 0.0, np.array([w, h, w, h], np.float64))


def resize_geometry(image_size: Sequence[int], contract: PreprocessContract) -> ResizeGeometry:
    """How ``contract`` resizes an image of ``image_size`` (``(height, width)``): see :class:`ResizeGeometry`.

    The letterbox is albumentations' ``LongestMaxSize(max_size_hw=input_size)`` followed by
    ``PadIfNeeded(*input_size, position="center")``: scale ``s = min(H / h, W / w)``, new size
    ``max(1, round(side * s))`` per side, padding ``(input - new) // 2`` before and the rest after.

    Raises:
        DataError: ``image_size`` is not two positive integers.

    Example:
        >>> c = PreprocessContract((32, 48), (0,) * 3, (1,) * 3, ("a",), resize="letterbox")
        >>> g = resize_geometry((100, 50), c)
        >>> g.new_size, g.offset
        ((32, 16), (0, 16))
        >>> resize_geometry((100, 50), PreprocessContract((32, 48), (0,) * 3, (1,) * 3, ("a",))).new_size
        (32, 48)
    """
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise DataError(f"resize: image size must be (height, width), got {image_size!r}.") from None
    if h < 1 or w < 1:
        raise DataError(f"resize: image size must be positive, got {(h, w)}.")
    th, tw = contract.input_size
    if contract.resize != "letterbox":
        return ResizeGeometry((h, w), (th, tw), (th, tw), (0, 0))
    # the same float operations, in the same order, as albumentations' LongestMaxSize and PadIfNeeded
    s = min(th / h, tw / w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    return ResizeGeometry((h, w), (th, tw), (nh, nw), (int((th - nh) / 2.0), int((tw - nw) / 2.0)))


def resize_to_contract(
    images: np.ndarray | Sequence[np.ndarray], contract: PreprocessContract
) -> np.ndarray:
    """Resize uint8 RGB images to ``contract.input_size``; returns a uint8 NHWC array.

    A stretch resizes each image to ``input_size``; a letterbox resizes it to
    :func:`resize_geometry`'s ``new_size`` (aspect ratio kept) and centres it on a ``pad_value`` canvas,
    giving the pixels of the training pipeline's ``LongestMaxSize`` + ``PadIfNeeded``. Images already at
    the right size are copied unchanged (both modes). This is the first half of :func:`preprocess`;
    evaluation calls it once and applies corruptions to the resized pixels (so a corruption's severity is
    relative to what the model sees).

    Args:
        images: A list of HxWx3 uint8 RGB arrays (sizes may differ) or an NHWC uint8 array.
        contract: The model's preprocessing contract.

    Returns:
        ``np.ndarray`` of shape ``(N, H, W, 3)``, dtype uint8.

    Example:
        >>> import numpy as np
        >>> c = PreprocessContract((4, 6), (0, 0, 0), (1, 1, 1), ("a",))
        >>> resize_to_contract([np.zeros((10, 10, 3), np.uint8)], c).shape
        (1, 4, 6, 3)
        >>> lb = PreprocessContract((4, 6), (0, 0, 0), (1, 1, 1), ("a",), resize="letterbox", pad_value=9)
        >>> resize_to_contract([np.zeros((10, 10, 3), np.uint8)], lb)[0, :, :, 0].tolist()
        [[9, 0, 0, 0, 0, 9], [9, 0, 0, 0, 0, 9], [9, 0, 0, 0, 0, 9], [9, 0, 0, 0, 0, 9]]
    """
    import cv2
    import numpy as np

    h, w = contract.input_size
    if isinstance(images, np.ndarray) and images.ndim == 4:
        batch = [images[i] for i in range(images.shape[0])]
    elif isinstance(images, np.ndarray) and images.ndim == 3:
        raise DataError(
            f"preprocess: got a single image of shape {images.shape}; pass a list of images or an NHWC batch."
        )
    else:
        batch = list(images)
    out = np.empty((len(batch), h, w, 3), dtype=np.uint8)
    interp = _cv2_interpolation(contract.interpolation)
    letterbox = contract.resize == "letterbox"
    for i, img in enumerate(batch):
        arr = _check_image(img, f"preprocess: image {i}")
        if arr.shape[0] == h and arr.shape[1] == w:
            out[i] = arr
        elif not letterbox:
            out[i] = cv2.resize(arr, (w, h), interpolation=interp)
        else:
            g = resize_geometry(arr.shape[:2], contract)
            (nh, nw), (top, left) = g.new_size, g.offset
            small = arr if (nh, nw) == arr.shape[:2] else cv2.resize(arr, (nw, nh), interpolation=interp)
            out[i] = contract.pad_value
            out[i, top:top + nh, left:left + nw] = small
    return out


@functools.lru_cache(maxsize=64)
def scale_offset(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The ``(1, 3, 1, 1)`` float32 ``scale`` and ``offset`` with ``x * scale + offset == (x / 255 - mean) / std``.

    Computed once per (mean, std) in float64, then rounded to float32; read-only (they are shared).

    Example:
        >>> scale, offset = scale_offset((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        >>> float(255 * scale.ravel()[0] + offset.ravel()[0])
        2.0
    """
    import numpy as np

    m = np.asarray(mean, dtype=np.float64).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float64).reshape(1, 3, 1, 1)
    scale = (1.0 / (MAX_PIXEL_VALUE * s)).astype(np.float32)
    offset = (-m / s).astype(np.float32)
    scale.flags.writeable = False
    offset.flags.writeable = False
    return scale, offset


def normalize(images_nhwc: np.ndarray, contract: PreprocessContract) -> np.ndarray:
    """Turn a uint8 NHWC batch already at ``input_size`` into the float32 NCHW model input.

    One fused pass per batch: ``x * scale + offset`` in float32, written straight into the NCHW
    output (the NHWC -> NCHW transpose is a strided read, no intermediate array), with the
    contract's cached :func:`scale_offset`. Equal to ``(x / 255 - mean) / std`` in float32 within
    float32 rounding (about 1e-7 for the usual means and stds).

    Example:
        >>> import numpy as np
        >>> c = PreprocessContract((1, 1), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), ("a",))
        >>> normalize(np.full((1, 1, 1, 3), 255, np.uint8), c).ravel().tolist()
        [1.0, 1.0, 1.0]
    """
    import numpy as np

    x = np.asarray(images_nhwc)
    if x.ndim != 4 or x.shape[3] != 3 or x.dtype != np.uint8:
        raise DataError(f"normalize: expected a uint8 NHWC batch with 3 channels, got {x.dtype} {x.shape}.")
    if tuple(x.shape[1:3]) != contract.input_size:
        raise DataError(
            f"normalize: batch is {x.shape[1]}x{x.shape[2]}, the contract wants {contract.input_size}; "
            "call resize_to_contract (or preprocess) first."
        )
    scale, offset = scale_offset(contract.mean, contract.std)
    n, h, w, _ = x.shape
    out = np.empty((n, 3, h, w), dtype=np.float32)
    np.multiply(x.transpose(0, 3, 1, 2), scale, out=out)
    np.add(out, offset, out=out)
    return out


def preprocess(images: np.ndarray | Sequence[np.ndarray], contract: PreprocessContract) -> np.ndarray:
    """Apply the contract: resize to ``input_size``, scale to [0, 1], normalise, NHWC -> NCHW.

    Args:
        images: A list of HxWx3 uint8 RGB arrays (sizes may differ) or an NHWC uint8 array.
        contract: The model's preprocessing contract.

    Returns:
        float32 array of shape ``(N, 3, H, W)``.

    Raises:
        DataError: an image is not uint8 or not 3-channel.

    Example:
        >>> import numpy as np
        >>> c = PreprocessContract((16, 16), (0.5,) * 3, (0.25,) * 3, ("a", "b"))
        >>> x = preprocess([np.zeros((20, 30, 3), np.uint8)], c)
        >>> x.shape, x.dtype.name, float(x.min())
        ((1, 3, 16, 16), 'float32', -2.0)
    """
    return normalize(resize_to_contract(images, contract), contract)


__all__ = [
    "DEFAULT_PAD_VALUE",
    "METADATA_KEYS",
    "RESIZE_MODES",
    "PreprocessContract",
    "ResizeGeometry",
    "normalize",
    "preprocess",
    "resize_geometry",
    "resize_to_contract",
    "scale_offset",
]
