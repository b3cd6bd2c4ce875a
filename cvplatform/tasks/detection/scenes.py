"""A built-in detection source: multi-object scenes on crops of scikit-learn's bundled photos.

:func:`generate_scenes` draws 1–8 shapes (circle, square, triangle, star) of several sizes per
image onto a background cropped from one of the two photos that ship inside scikit-learn
(``china.jpg``, ``flower.jpg``: no download), lets later shapes partially hide earlier ones, and
writes ordinary files that ingest reads like any annotated folder:

* ``images/<i:05d>.png``;
* ``annotations.json``: COCO JSON, one box per *visible* object (the tight box of its visible
  pixels; an object is never hidden below ``min_visible`` of its area, so every box marks
  something a model can see);
* ``labels.csv``: ``path`` plus metadata usable as evaluation slices: ``background`` (the photo),
  ``lighting`` (bright / normal / dim), ``object_size`` (small / medium / large: the median
  object's box side against the image side), ``objects`` (count) and ``occluded`` (whether any
  object is partly hidden).

Same parameters (and seed) give byte-identical files.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvplatform.config import ScenesParams
from cvplatform.data.synthetic import LIGHTING, SHAPE_CLASSES, shape_polygon
from cvplatform.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

log = logging.getLogger(__name__)

SCENES_CSV = "labels.csv"
SCENES_COCO = "annotations.json"
PHOTOS: tuple[str, ...] = ("china", "flower")
SIZE_BUCKETS: tuple[tuple[str, float], ...] = (("small", 0.16), ("medium", 0.32), ("large", math.inf))
"""``object_size`` slice: the median object's box side / image side below each bound."""


@dataclass(frozen=True)
class SceneObject:
    cls: str
    box: tuple[float, float, float, float]
    """Tight box of the visible pixels: x0, y0, x1, y1 (x1/y1 exclusive)."""
    visible: float
    """Visible share of the object's own area."""


def _photos() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    return {Path(f).stem: img for f, img in zip(data.filenames, data.images, strict=True)}


def _crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    import cv2

    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return cv2.resize(photo[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)


def _mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    import numpy as np
    from PIL import Image, ImageDraw

    r = float(rng.uniform(0.06, 0.3)) * size
    cx, cy = float(rng.uniform(r, size - r)), float(rng.uniform(r, size - r))
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        draw.polygon(shape_polygon(kind, cx, cy, r, float(rng.uniform(0, 2 * math.pi))), fill=1)
    return np.asarray(canvas, dtype=bool)


def _colour(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import numpy as np

    under = img[mask].mean(axis=0)
    for _ in range(16):  # stand out from what it covers
        c = rng.integers(0, 256, size=3)
        if np.abs(c - under).sum() >= 180:
            return c
    return 255 - np.round(under)


def render_scene(size: int, classes: tuple[str, ...], n_objects: int, photo: np.ndarray, lighting: str,
                 rng: np.random.Generator, min_visible: float = 0.5) -> tuple[np.ndarray, list[SceneObject]]:
    """One scene: an RGB uint8 image and its visible objects (see the module docstring)."""
    import numpy as np

    img = _crop(photo, size, rng).astype(np.float64)
    owner = np.full((size, size), -1, np.int16)  # which object each pixel shows
    areas: list[int] = []
    kinds: list[str] = []
    for k in range(n_objects):
        kind = classes[int(rng.integers(len(classes)))]
        for _ in range(20):  # placements that would hide an earlier object too much are redrawn
            mask = _mask(kind, size, rng)
            after = np.where(mask, len(areas), owner)
            if mask.sum() >= 9 and all((after == j).sum() >= min_visible * areas[j] for j in range(len(areas))):
                break
        else:
            log.debug("scene object %d: no placement keeps the others visible; left out", k)
            continue
        img[mask] = _colour(img.astype(np.uint8), mask, rng)
        owner = after
        areas.append(int(mask.sum()))
        kinds.append(kind)
    img = np.clip(np.round(img * LIGHTING[lighting]), 0, 255).astype(np.uint8)
    objects = []
    for j, kind in enumerate(kinds):
        ys, xs = np.nonzero(owner == j)
        objects.append(SceneObject(kind, (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)),
                                   round(len(xs) / areas[j], 4)))
    return img, objects


def _size_bucket(objects: list[SceneObject], size: int) -> str:
    import numpy as np

    if not objects:
        return "none"
    side = float(np.median([math.sqrt((o.box[2] - o.box[0]) * (o.box[3] - o.box[1])) for o in objects])) / size
    return next(name for name, bound in SIZE_BUCKETS if side < bound)


def generate_scenes(params: ScenesParams, dest: str | Path) -> Path:
    """Write ``params.count`` scenes, their COCO annotations and slice metadata; return the COCO path.

    Raises:
        ConfigError: unknown classes, or ``min_objects > max_objects``.
    """
    import numpy as np
    from PIL import Image

    classes = tuple(params.classes)
    unknown = [c for c in classes if c not in SHAPE_CLASSES]
    if not classes or unknown:
        raise ConfigError(f"scenes.classes: {list(classes)!r} is not a non-empty subset of {list(SHAPE_CLASSES)}.")
    if params.min_objects > params.max_objects:
        raise ConfigError(f"scenes: min_objects {params.min_objects} > max_objects {params.max_objects}.")
    dest = Path(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    photos = _photos()
    rng = np.random.default_rng(params.seed)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    rows = []
    for i in range(params.count):
        background = PHOTOS[int(rng.integers(len(PHOTOS)))]
        lighting = tuple(LIGHTING)[int(rng.integers(len(LIGHTING)))]
        n = int(rng.integers(params.min_objects, params.max_objects + 1))
        img, objects = render_scene(params.size, classes, n, photos[background], lighting, rng, params.min_visible)
        rel = f"images/{i:05d}.png"
        Image.fromarray(img).save(dest / rel, format="PNG", compress_level=6)
        images.append({"id": i + 1, "file_name": rel, "width": params.size, "height": params.size})
        for o in objects:
            x0, y0, x1, y1 = o.box
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": classes.index(o.cls) + 1,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        rows.append((rel, background, lighting, _size_bucket(objects, params.size), len(objects),
                     str(any(o.visible < 0.95 for o in objects)).lower()))
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": k + 1, "name": c, "supercategory": "shape"} for k, c in enumerate(classes)]}
    path = dest / SCENES_COCO
    path.write_text(json.dumps(coco, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    with (dest / SCENES_CSV).open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["path", "background", "lighting", "object_size", "objects", "occluded"])
        w.writerows(rows)
    log.info("scenes: wrote %d images with %d objects to %s", params.count, len(anns), dest)
    return path


__all__ = ["PHOTOS", "SCENES_COCO", "SCENES_CSV", "SceneObject", "ScenesParams", "generate_scenes", "render_scene"]
