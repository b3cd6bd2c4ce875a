"""Built-in sample sources: scikit-learn's digits and a seeded synthetic shapes generator.

Both write ordinary image files into a staging folder (``data/sources/<name>/``)
that ingest then reads like any folder source, so generated data goes through
exactly the same decode / verify / quarantine path as user data.

* :func:`write_digits` writes scikit-learn's bundled 8x8 digits (no download) as
  grayscale PNGs in an ImageFolder layout (``<label>/<index>.png``, label "0".."9").
* :func:`generate_shapes` draws one shape (circle / square / triangle / star) per
  image on a plain, gradient or noise background, then applies a lighting level
  and a camera look, and writes ``labels.csv`` with the metadata columns
  ``background``, ``lighting`` and ``camera`` (usable as evaluation slices).

Same parameters (and seed) give byte-identical files.
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from cvplatform.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

    from cvplatform.config import DigitsParams, ShapesParams

log = logging.getLogger(__name__)

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "noise")
LIGHTING: dict[str, float] = {"bright": 1.4, "normal": 1.0, "dim": 0.55}
"""Lighting level -> multiplicative brightness factor applied to the whole image."""
CAMERAS: tuple[str, ...] = ("a", "b", "c")
"""Camera looks: ``a`` sharp and clean; ``b`` soft focus (Gaussian blur); ``c`` warm colour cast + sensor noise."""

SHAPES_CSV = "labels.csv"
_PNG_OPTS = {"format": "PNG", "compress_level": 6}


def _reset_dir(dest: Path) -> Path:
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    return dest


# --------------------------------------------------------------------------- digits
def write_digits(params: DigitsParams, dest: str | Path) -> Path:
    """Write scikit-learn's bundled digits as PNG files in an ImageFolder layout.

    Each 8x8 digit (intensities 0..16) is scaled to 0..255 and upscaled to
    ``params.size`` x ``params.size`` with **bilinear** interpolation (smooth
    strokes, closer to real scans than nearest-neighbour blocks). Images are
    white-on-black grayscale PNGs named ``<dest>/<label>/<index:04d>.png`` where
    ``index`` is the position in scikit-learn's dataset. ``params.limit`` keeps
    the first N (scikit-learn orders them 0,1,...,9,0,1,..., so N >= 10 covers
    every class). ``dest`` is cleared first.

    Args:
        params: ``ingest.digits`` parameters.
        dest: staging folder (e.g. ``data/sources/digits``).

    Returns:
        ``dest`` as a Path.

    Example:
        >>> from cvplatform.config import DigitsParams
        >>> write_digits(DigitsParams(size=16, limit=20), "/tmp/digits")  # doctest: +SKIP
        PosixPath('/tmp/digits')
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    dest = _reset_dir(Path(dest))
    data = load_digits()
    n = len(data.images) if params.limit is None else min(params.limit, len(data.images))
    for idx in range(n):
        label = str(int(data.target[idx]))
        pixels = np.round(data.images[idx] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(pixels).resize((params.size, params.size), Image.Resampling.BILINEAR)
        out = dest / label / f"{idx:04d}.png"
        out.parent.mkdir(exist_ok=True)
        img.save(out, **_PNG_OPTS)
    log.info("digits: wrote %d images (%dx%d) to %s", n, params.size, params.size, dest)
    return dest


# --------------------------------------------------------------------------- shapes
def shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Corners of a square, triangle or star of radius ``r`` centred on ``(cx, cy)``, rotated by ``angle``."""
    if kind == "square":
        pts = [(r * math.cos(angle + k * math.pi / 2 + math.pi / 4), r * math.sin(angle + k * math.pi / 2 + math.pi / 4))
               for k in range(4)]
    elif kind == "triangle":
        pts = [(r * math.cos(angle + k * 2 * math.pi / 3), r * math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    elif kind == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.42
            a = angle + k * math.pi / 5
            pts.append((rr * math.cos(a), rr * math.sin(a)))
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(kind)
    return [(cx + x, cy + y) for x, y in pts]


def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    import numpy as np

    base = rng.integers(0, 256, size=3).astype(np.float64)
    if kind == "plain":
        arr = np.broadcast_to(base, (size, size, 3)).copy()
    elif kind == "gradient":
        other = rng.integers(0, 256, size=3).astype(np.float64)
        t = np.linspace(0.0, 1.0, size)[:, None]
        ramp = base * (1 - t) + other * t  # (size, 3)
        arr = np.broadcast_to(ramp[:, None, :], (size, size, 3)).copy()
        if rng.integers(0, 2):  # horizontal instead of vertical
            arr = arr.transpose(1, 0, 2).copy()
    else:  # noise
        arr = base + rng.normal(0.0, 28.0, size=(size, size, 3))
    return arr


def _shape_colour(bg_mean: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    import numpy as np

    colour = rng.integers(0, 256, size=3)
    for _ in range(16):  # keep the shape visible against the background
        if np.abs(colour - bg_mean).sum() >= 150:
            break
        colour = rng.integers(0, 256, size=3)
    else:
        colour = 255 - np.round(bg_mean).astype(np.int64)
    return (int(colour[0]), int(colour[1]), int(colour[2]))


def render_shape(
    kind: str, size: int, rng: np.random.Generator, background: str, lighting: str, camera: str
) -> Image.Image:
    """Render one synthetic image (RGB, ``size`` x ``size``) using ``rng`` for every random choice.

    Args:
        kind: one of :data:`SHAPE_CLASSES`.
        size: image side in pixels.
        rng: numpy Generator (the only source of randomness: same state, same image).
        background: ``plain`` | ``gradient`` | ``noise``.
        lighting: ``bright`` | ``normal`` | ``dim`` (brightness factor, see :data:`LIGHTING`).
        camera: ``a`` | ``b`` | ``c`` (see :data:`CAMERAS`).

    Returns:
        The rendered PIL image.

    Example:
        >>> import numpy as np
        >>> img = render_shape("star", 64, np.random.default_rng(0), "noise", "dim", "c")
        >>> img.size
        (64, 64)
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    bg = _background(background, size, rng)
    img = Image.fromarray(np.clip(np.round(bg), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    r = float(rng.uniform(0.18, 0.34)) * size
    cx = float(rng.uniform(r, size - r))
    cy = float(rng.uniform(r, size - r))
    angle = float(rng.uniform(0.0, 2 * math.pi))
    colour = _shape_colour(bg.reshape(-1, 3).mean(axis=0), rng)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon(shape_polygon(kind, cx, cy, r, angle), fill=colour)

    arr = np.asarray(img, dtype=np.float64) * LIGHTING[lighting]
    img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    if camera == "b":
        img = img.filter(ImageFilter.GaussianBlur(radius=max(1.0, size / 48)))
    elif camera == "c":
        arr = np.asarray(img, dtype=np.float64) * np.array([1.12, 1.0, 0.82])
        arr = arr + rng.normal(0.0, 10.0, size=arr.shape)
        img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    return img


def generate_shapes(params: ShapesParams, dest: str | Path) -> Path:
    """Generate the synthetic shapes dataset and its labels CSV; return the CSV path.

    Image ``i`` gets class ``classes[i % len(classes)]`` (balanced classes) and a
    background, lighting level and camera drawn from a ``numpy`` Generator seeded
    with ``params.seed``, then a random size, position, rotation and colour for
    the shape. Files: ``<dest>/images/<i:05d>.png`` and ``<dest>/labels.csv``
    with columns ``path,label,background,lighting,camera``. ``dest`` is cleared
    first; the same params give byte-identical files.

    Args:
        params: ``ingest.shapes`` parameters.
        dest: staging folder (e.g. ``data/sources/shapes``).

    Returns:
        Path of the labels CSV.

    Raises:
        ConfigError: ``params.classes`` is empty or names an unknown shape.

    Example:
        >>> from cvplatform.config import ShapesParams
        >>> generate_shapes(ShapesParams(count=12, size=32), "/tmp/shapes")  # doctest: +SKIP
        PosixPath('/tmp/shapes/labels.csv')
    """
    import numpy as np

    classes = tuple(params.classes)
    unknown = [c for c in classes if c not in SHAPE_CLASSES]
    if not classes or unknown:
        raise ConfigError(
            f"ingest.shapes.classes: {list(classes)!r} is not a non-empty subset of {list(SHAPE_CLASSES)}"
            + (f" (unknown: {unknown})" if unknown else "")
            + ". Fix params.yaml or pass --set ingest.shapes.classes=[circle,square]."
        )
    dest = _reset_dir(Path(dest))
    (dest / "images").mkdir()
    rng = np.random.default_rng(params.seed)
    rows = []
    for i in range(params.count):
        kind = classes[i % len(classes)]
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        lighting = tuple(LIGHTING)[int(rng.integers(len(LIGHTING)))]
        camera = CAMERAS[int(rng.integers(len(CAMERAS)))]
        img = render_shape(kind, params.size, rng, background, lighting, camera)
        rel = f"images/{i:05d}.png"
        img.save(dest / rel, **_PNG_OPTS)
        rows.append((rel, kind, background, lighting, camera))
    csv_path = dest / SHAPES_CSV
    with csv_path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["path", "label", "background", "lighting", "camera"])
        w.writerows(rows)
    log.info("shapes: wrote %d images (%s) to %s", params.count, ", ".join(classes), dest)
    return csv_path


__all__ = [
    "BACKGROUNDS",
    "CAMERAS",
    "LIGHTING",
    "SHAPES_CSV",
    "SHAPE_CLASSES",
    "generate_shapes",
    "render_shape",
    "shape_polygon",
    "write_digits",
]
