"""Per-image input statistics: what drift monitoring compares between training data and traffic.

Each image (``uint8`` RGB, ``H x W x 3``) is summarised by six numbers:

=============  ==================================================================
statistic      meaning
=============  ==================================================================
brightness     mean luma (ITU-R BT.601: ``0.299 R + 0.587 G + 0.114 B``), 0..255
contrast       standard deviation of the luma, 0..~128
sharpness      variance of the Laplacian of the luma (OpenCV, 3x3 aperture);
               0 for a flat image, large for crisp edges, small for blur
width          pixels
height         pixels
aspect_ratio   width / height
=============  ==================================================================

The same function computes the training reference (:mod:`cvplatform.monitoring.reference`)
and the statistics the inference server logs per request
(:mod:`cvplatform.monitoring.inference_log`), so both sides are measured alike.
Images larger than :data:`MAX_SIDE` are downscaled (``cv2.INTER_AREA``) before the
luma statistics so logging stays cheap on big uploads; width, height and aspect
ratio always describe the original image.

Only numpy and OpenCV are needed (imported inside the functions).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from cvplatform.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: The statistics, in report order.
STAT_NAMES: tuple[str, ...] = ("brightness", "contrast", "sharpness", "width", "height", "aspect_ratio")

#: Longest side the luma statistics are computed at (larger images are downscaled first).
MAX_SIDE = 1024

#: Bumped whenever the definition of a statistic changes (invalidates cached references).
STATS_VERSION = 1


def _check_image(image: np.ndarray, where: str) -> np.ndarray:
    import numpy as np

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise DataError(f"{where}: expected a uint8 image, got dtype {arr.dtype}. Pass decoded 0..255 RGB pixels.")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise DataError(
            f"{where}: expected an H x W x 3 RGB (or H x W gray) array, got shape {tuple(arr.shape)}."
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(f"{where}: empty image of shape {tuple(arr.shape)}.")
    return arr


def luma(image: np.ndarray) -> np.ndarray:
    """The BT.601 luma of an RGB ``uint8`` image as ``float64`` (a gray image is returned as is).

    Example:
        >>> import numpy as np
        >>> float(luma(np.full((2, 2, 3), 100, np.uint8)).mean())
        100.0
    """
    import numpy as np

    arr = _check_image(image, "luma")
    if arr.ndim == 2:
        return arr.astype(np.float64)
    # integer weights, one division: a gray pixel keeps its exact value (the weighted sums are exact
    # integers in float64, so the matrix product equals the channel-by-channel sum bit for bit)
    h, w = arr.shape[:2]
    return (arr.reshape(-1, 3) @ np.array([299.0, 587.0, 114.0])).reshape(h, w) / 1000.0


def image_stats(image: np.ndarray, *, max_side: int | None = MAX_SIDE) -> dict[str, float]:
    """The six input statistics of one image.

    Args:
        image: Decoded pixels, ``uint8``, ``H x W x 3`` RGB (``H x W`` gray is accepted).
        max_side: Downscale (``cv2.INTER_AREA``) to this longest side before the luma
            statistics; None = never. Keep the default so traffic and reference match.

    Returns:
        ``{"brightness", "contrast", "sharpness", "width", "height", "aspect_ratio"}`` as floats.

    Raises:
        DataError: not a ``uint8`` RGB/gray array.

    Example:
        >>> import numpy as np
        >>> s = image_stats(np.full((8, 16, 3), 128, np.uint8))
        >>> (s["brightness"], s["contrast"], s["sharpness"], s["aspect_ratio"])
        (128.0, 0.0, 0.0, 2.0)
    """
    import cv2

    arr = _check_image(image, "image_stats")
    h, w = int(arr.shape[0]), int(arr.shape[1])
    if max_side is not None and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        arr = cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
    y = luma(arr)
    lap = cv2.Laplacian(y, cv2.CV_64F, ksize=1)
    mean, std = cv2.meanStdDev(y)  # one pass each in OpenCV: several times cheaper than numpy on small images
    _, lap_std = cv2.meanStdDev(lap)
    return {
        "brightness": float(mean[0, 0]),
        "contrast": float(std[0, 0]),
        "sharpness": float(lap_std[0, 0]) ** 2,
        "width": float(w),
        "height": float(h),
        "aspect_ratio": float(w) / float(h),
    }


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file to ``uint8`` RGB with :func:`cvplatform.imageio.read_image`, as the server does.

    Raises:
        DataError: the file is missing or not a decodable image.

    Example:
        >>> read_rgb("data/raw/0/00000.png").shape  # doctest: +SKIP
        (32, 32, 3)
    """
    from cvplatform.imageio import ImageDecodeError, read_image

    p = Path(path)
    try:
        return read_image(p)
    except ImageDecodeError as exc:
        if exc.reason == "unreadable" and not p.exists():
            raise DataError(f"{p}: image not found. Re-run `cvplatform ingest` (or `dvc pull`) to restore "
                            "data/raw.") from None
        raise DataError(f"{p}: cannot decode image ({exc.detail}).") from None


def stats_of_files(paths: Iterable[str | os.PathLike[str]], *, max_side: int | None = MAX_SIDE) -> list[dict]:
    """:func:`image_stats` of each image file, in order.

    Example:
        >>> rows = stats_of_files(["data/raw/0/00000.png"])  # doctest: +SKIP
        >>> sorted(rows[0])  # doctest: +SKIP
        ['aspect_ratio', 'brightness', 'contrast', 'height', 'sharpness', 'width']
    """
    return [image_stats(read_rgb(p), max_side=max_side) for p in paths]


__all__ = ["MAX_SIDE", "STATS_VERSION", "STAT_NAMES", "image_stats", "luma", "read_rgb", "stats_of_files"]
