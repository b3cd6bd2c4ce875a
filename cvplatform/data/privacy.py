"""Privacy: find faces with OpenCV's bundled Haar cascade and blur them before images are stored.

Used by ingest when ``ingest.privacy.redact_faces`` is true: every accepted image
is redacted before it is written to ``data/raw/`` (so faces never reach the
dataset, the DVC cache or a remote). Redaction is irreversible: each face box
(grown by a margin) is pixelated to a coarse grid, then Gaussian-blurred.

The detector is ``haarcascade_frontalface_default.xml`` shipped inside the
``opencv-python-headless`` wheel (``cv2.data.haarcascades``), so no download is
needed. Haar cascades find frontal, upright faces; profile or small faces can be
missed, so this is a best-effort safeguard, not a guarantee.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cvplatform.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

log = logging.getLogger(__name__)

CASCADE_FILE = "haarcascade_frontalface_default.xml"
Box = tuple[int, int, int, int]
"""A face box ``(x, y, width, height)`` in pixels."""

_cascade = None  # loaded once per process


def _get_cascade():
    global _cascade
    if _cascade is None:
        import os

        import cv2

        path = os.path.join(getattr(getattr(cv2, "data", None), "haarcascades", ""), CASCADE_FILE)
        clf = cv2.CascadeClassifier(path)
        if clf.empty():
            raise ModelError(
                f"{path}: cannot load the OpenCV face cascade needed by ingest.privacy.redact_faces. "
                "Install opencv-python-headless 4.x (its wheels ship the Haar cascades) or set "
                "ingest.privacy.redact_faces: false."
            )
        _cascade = clf
    return _cascade


def detect_faces(rgb: np.ndarray, min_face_size: int = 24) -> list[Box]:
    """Detect frontal faces in an RGB ``uint8`` image (H, W, 3).

    Args:
        rgb: image array, RGB channel order.
        min_face_size: smallest face side in pixels to look for (``ingest.privacy.min_face_size``).

    Returns:
        Face boxes ``(x, y, w, h)`` sorted top-to-bottom, left-to-right (deterministic).

    Raises:
        ModelError: the cascade file cannot be loaded.

    Example:
        >>> import numpy as np
        >>> detect_faces(np.zeros((64, 64, 3), np.uint8))
        []
    """
    import cv2

    h, w = rgb.shape[:2]
    if min(h, w) < min_face_size:
        return []
    gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    found = _get_cascade().detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=4, minSize=(min_face_size, min_face_size)
    )
    boxes = [tuple(int(v) for v in b) for b in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: (b[1], b[0], b[2], b[3]))  # type: ignore[return-value]


def blur_regions(rgb: np.ndarray, boxes: list[Box], margin: float = 0.15) -> np.ndarray:
    """Return a copy of ``rgb`` with each box (grown by ``margin`` of its size) pixelated and blurred.

    Pixels outside the (grown) boxes are unchanged.

    Args:
        rgb: image array (H, W, 3), ``uint8``.
        boxes: ``(x, y, w, h)`` boxes.
        margin: fraction of the box size added on every side.

    Returns:
        The redacted copy.

    Example:
        >>> import numpy as np
        >>> img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        >>> out = blur_regions(img, [(16, 16, 32, 32)])
        >>> bool((out[:8] == img[:8]).all()), bool(out[24:40, 24:40].std() < img[24:40, 24:40].std())
        (True, True)
    """
    import cv2
    import numpy as np

    out = np.array(rgb, dtype=np.uint8, copy=True)
    H, W = out.shape[:2]
    for x, y, w, h in boxes:
        mx, my = int(round(w * margin)), int(round(h * margin))
        x0, y0 = max(0, x - mx), max(0, y - my)
        x1, y1 = min(W, x + w + mx), min(H, y + h + my)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        region = out[y0:y1, x0:x1]
        rh, rw = region.shape[:2]
        cells = 6  # coarse grid: identity-bearing detail is gone before blurring
        small = cv2.resize(region, (max(1, min(cells, rw)), max(1, min(cells, rh))), interpolation=cv2.INTER_AREA)
        pix = cv2.resize(small, (rw, rh), interpolation=cv2.INTER_NEAREST)
        k = max(3, (min(rw, rh) // 4) | 1)
        out[y0:y1, x0:x1] = cv2.GaussianBlur(pix, (k, k), 0)
    return out


def redact_faces(rgb: np.ndarray, min_face_size: int = 24) -> tuple[np.ndarray, int]:
    """Detect and blur faces; return ``(redacted image, number of faces)``.

    Args:
        rgb: image array (H, W, 3), ``uint8``, RGB.
        min_face_size: smallest face side in pixels.

    Returns:
        The image (a redacted copy when faces were found, else the input) and the face count.

    Example:
        >>> import numpy as np
        >>> _, n = redact_faces(np.full((48, 48, 3), 128, np.uint8))
        >>> n
        0
    """
    boxes = detect_faces(rgb, min_face_size)
    if not boxes:
        return rgb, 0
    log.debug("redacting %d face(s): %s", len(boxes), boxes)
    return blur_regions(rgb, boxes), len(boxes)


__all__ = ["CASCADE_FILE", "Box", "blur_regions", "detect_faces", "redact_faces"]
