"""Object-detection annotations: COCO JSON, YOLO txt and Pascal VOC XML in, one box table out.

The first piece of the detection task (``cvplatform/tasks/detection/``): everything that turns
annotation files into validated boxes in pixel coordinates, and back into COCO JSON.

* **Reading.** :func:`read_annotations` takes ``coco:PATH`` (one JSON file), ``yolo:DIR`` (one
  ``<image stem>.txt`` per image, class names in ``classes.txt`` / ``obj.names`` / ``data.yaml``)
  or ``voc:DIR`` (one ``<image stem>.xml`` per image) relative to the source root, or finds the
  format itself (:func:`detect_format`). It returns an :class:`AnnotationSet`: the boxes of each
  image, keyed by the image's path inside the source (its *origin*), the class names, and a
  :class:`Problem` for every file or object that cannot be read (``malformed_annotation``).
* **Checking.** :func:`check_boxes` judges one image's boxes against its decoded size: a box
  overhanging the image by at most ``tolerance`` (a share of the image side) is clipped, one
  further outside is ``box_outside``; a box of zero or negative size is ``box_degenerate``; a
  class not in the class list is ``unknown_class``. Every problem names the annotation file and
  the object (its index, class and coordinates), so a quarantined image says what to fix.
* **Geometry.** Boxes are ``x0, y0, x1, y1`` in pixels of the stored image (COCO's ``bbox`` is
  ``x, y, w, h``; YOLO's is normalised centre and size). :func:`exif_transform` moves boxes with
  the EXIF orientation that ingest applies to the pixels, :func:`resize` and :func:`letterbox`
  with a resize.
* **Table.** :func:`box_table` makes the annotation table that sits beside the manifest (one row
  per box: ``sha256, class, x0, y0, x1, y1, area, iscrowd``); :func:`to_coco` /
  :func:`from_coco` convert it to COCO JSON and back (a round trip gives the same table).

Pure Python plus numpy/pandas; no image decoding here (ingest decodes, then calls these).
"""

from __future__ import annotations

import contextlib
import json
import math
import xml.etree.ElementTree as ET  # noqa: S405  (parsing only files of the project's own source)
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from cvplatform.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

FORMATS = ("coco", "yolo", "voc")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
YOLO_CLASS_FILES = ("classes.txt", "obj.names", "data.yaml", "dataset.yaml")
#: Columns of the annotation table, in order.
BOX_COLUMNS: tuple[str, ...] = ("sha256", "class", "x0", "y0", "x1", "y1", "area", "iscrowd")
#: Reasons an image (or its annotation file) is quarantined.
REASONS: dict[str, str] = {
    "malformed_annotation": "the annotation file (or one object in it) cannot be read",
    "annotation_without_image": "an annotation names an image that is not in the source",
    "box_outside": "a box lies outside the image beyond the tolerance",
    "box_degenerate": "a box has zero or negative width or height",
    "unknown_class": "a box's class is not in the class list",
    "no_boxes": "the image has no boxes and background images are not kept",
}


@dataclass(frozen=True)
class Box:
    """One object: class name and corners in pixels (``x1 > x0``, ``y1 > y0`` once checked).

    ``normalised`` boxes (YOLO) hold shares of the image side until :meth:`in_pixels` knows the size.
    """

    cls: str
    x0: float
    y0: float
    x1: float
    y1: float
    iscrowd: bool = False
    normalised: bool = False
    where: str = ""
    """The file and object it came from (``labels/a.txt line 3``), for error messages."""

    @property
    def area(self) -> float:
        return max(self.x1 - self.x0, 0.0) * max(self.y1 - self.y0, 0.0)

    def in_pixels(self, width: int, height: int) -> Box:
        if not self.normalised:
            return self
        return replace(self, x0=self.x0 * width, y0=self.y0 * height, x1=self.x1 * width, y1=self.y1 * height,
                       normalised=False)

    def describe(self) -> str:
        return (f"{self.where}: {self.cls!r} [{self.x0:.1f}, {self.y0:.1f}, {self.x1:.1f}, {self.y1:.1f}]"
                + (" (normalised)" if self.normalised else ""))


@dataclass(frozen=True)
class Problem:
    """Why an image or annotation file cannot be used: a :data:`REASONS` code and a detail naming the object."""

    origin: str
    """The image's path inside the source (or the annotation file's, when it names no image)."""
    reason: str
    detail: str


@dataclass
class AnnotationSet:
    """What the annotation files say: boxes per image origin, class names, unreadable parts."""

    format: str
    classes: list[str]
    boxes: dict[str, list[Box]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Image sizes the annotation declares (COCO, VOC), checked against the decoded image."""

    def problem_of(self, origin: str) -> Problem | None:
        return next((p for p in self.problems if p.origin == origin), None)


# --------------------------------------------------------------------------- reading
def parse_spec(spec: str) -> tuple[str | None, str]:
    """``"coco:ann.json"`` -> ``("coco", "ann.json")``; ``"auto"`` / ``""`` -> ``(None, "")``.

    Raises:
        DataError: an unknown format (names the value and the accepted forms).
    """
    spec = (spec or "").strip()
    if spec in ("", "auto"):
        return None, ""
    fmt, sep, path = spec.partition(":")
    if not sep or fmt not in FORMATS or not path:
        raise DataError(f"ingest.annotations: {spec!r} is not an annotation source. Use coco:PATH (a COCO JSON "
                        "file), yolo:DIR (one .txt per image plus classes.txt), voc:DIR (one .xml per image), "
                        "all relative to the source root, or auto.")
    return fmt, path


def detect_format(root: Path) -> tuple[str, str]:
    """Find the annotations under a source root: a COCO JSON file, a VOC folder or a YOLO folder.

    Raises:
        DataError: none found, or several candidates (names them; set ``ingest.annotations``).
    """
    found: list[tuple[str, str]] = []
    for p in sorted(root.rglob("*.json")):
        try:
            head = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(head, dict) and {"images", "annotations"} <= set(head):
            found.append(("coco", p.relative_to(root).as_posix()))
    xml_dirs = sorted({p.parent for p in root.rglob("*.xml")})
    found += [("voc", d.relative_to(root).as_posix() or ".") for d in xml_dirs
              if any(_is_voc(x) for x in sorted(d.glob("*.xml"))[:3])]
    txt_dirs = sorted({p.parent for p in root.rglob("*.txt") if p.name not in YOLO_CLASS_FILES})
    found += [("yolo", d.relative_to(root).as_posix() or ".") for d in txt_dirs
              if _yolo_class_file(d, root) is not None]
    if len(found) != 1:
        what = "no annotations" if not found else f"several annotation sources {[f'{f}:{p}' for f, p in found]}"
        raise DataError(f"{root}: {what} found. Set ingest.annotations to coco:PATH, yolo:DIR or voc:DIR "
                        "(relative to the source root).")
    return found[0]


def _is_voc(path: Path) -> bool:
    try:
        return ET.parse(path).getroot().tag == "annotation"  # noqa: S314
    except (ET.ParseError, OSError):
        return False


def read_annotations(root: Path, spec: str = "auto") -> AnnotationSet:
    """Read the annotations of a source rooted at ``root`` (see the module docstring).

    Raises:
        DataError: the annotation source itself is missing or unusable (no class list, not JSON);
            a bad *object* or *file among many* becomes a :class:`Problem` instead.
    """
    fmt, rel = parse_spec(spec)
    if fmt is None:
        fmt, rel = detect_format(root)
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DataError(f"ingest.annotations: {spec!r} points outside the source root {root}.")
    if not path.exists():
        raise DataError(f"ingest.annotations: {path} does not exist (from {spec!r}, relative to the source root {root}).")
    reader = {"coco": _read_coco, "yolo": _read_yolo, "voc": _read_voc}[fmt]
    return reader(root, path)


def _where(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{what} is {value!r}, not a number")
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"{what} is {value!r}, not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{what} is {value!r}, not a finite number")
    return x


def _read_coco(root: Path, path: Path) -> AnnotationSet:
    name = _where(root, path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{name}: not a readable COCO JSON file ({exc}). Fix the file or set ingest.annotations.") from exc
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError(f"{name}: a COCO file needs lists 'images', 'annotations' and 'categories'.")
    cats: dict[Any, str] = {}
    for i, c in enumerate(doc["categories"]):
        if not isinstance(c, dict) or "id" not in c or not str(c.get("name", "")).strip():
            raise DataError(f"{name}: categories[{i}] needs an 'id' and a 'name' (got {c!r}).")
        cats[c["id"]] = str(c["name"]).strip()
    out = AnnotationSet("coco", sorted(set(cats.values())))
    base = path.parent
    images: dict[Any, str] = {}
    for i, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            out.problems.append(Problem(name, "malformed_annotation", f"{name}: images[{i}] needs 'id' and 'file_name'"))
            continue
        origin = _origin(root, base, im["file_name"])
        images[im["id"]] = origin
        out.boxes.setdefault(origin, [])
        if isinstance(im.get("width"), int) and isinstance(im.get("height"), int):
            out.sizes[origin] = (im["width"], im["height"])
    for i, a in enumerate(doc["annotations"]):
        where = f"{name} annotations[{i}]"
        origin = images.get(a.get("image_id")) if isinstance(a, dict) else None
        if origin is None:
            out.problems.append(Problem(name, "malformed_annotation",
                                        f"{where}: image_id {a.get('image_id') if isinstance(a, dict) else a!r} "
                                        "is not in 'images'"))
            continue
        try:
            x, y, w, h = (_number(v, "bbox value") for v in a["bbox"])
            cls = cats.get(a.get("category_id"))
            if cls is None:
                raise ValueError(f"category_id {a.get('category_id')!r} is not in 'categories'")
        except (KeyError, TypeError, ValueError) as exc:
            out.problems.append(Problem(origin, "malformed_annotation", f"{where}: {exc}"))
            continue
        out.boxes[origin].append(Box(cls, x, y, x + w, y + h, bool(a.get("iscrowd", 0)), where=where))
    return out


def _origin(root: Path, base: Path, file_name: str) -> str:
    """An annotation's image name as an origin (path inside the source root, posix)."""
    p = PurePosixPath(file_name.replace("\\", "/"))
    candidate = (base / p) if not p.is_absolute() else Path(p)
    try:
        return candidate.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return p.as_posix()  # outside the source: reported as an annotation without image


def _yolo_class_file(folder: Path, root: Path) -> Path | None:
    for d in (folder, folder.parent, root):
        for n in YOLO_CLASS_FILES:
            if (d / n).is_file():
                return d / n
    return None


def _yolo_classes(path: Path, name: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        names = (yaml.safe_load(text) or {}).get("names")
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names)]
        if not isinstance(names, list) or not names:
            raise DataError(f"{name}: a YOLO data.yaml needs 'names' (a list, or a mapping index -> name).")
        return [str(n).strip() for n in names]
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _read_yolo(root: Path, folder: Path) -> AnnotationSet:
    cfile = _yolo_class_file(folder, root)
    if cfile is None:
        raise DataError(f"{_where(root, folder)}: YOLO labels need a class-name file ({', '.join(YOLO_CLASS_FILES)}) "
                        "in the labels folder, its parent or the source root.")
    classes = _yolo_classes(cfile, _where(root, cfile))
    out = AnnotationSet("yolo", list(classes))
    images = _images_by_stem(root)
    for txt in sorted(folder.rglob("*.txt")):
        if txt.name in YOLO_CLASS_FILES:
            continue
        name = _where(root, txt)
        origin = images.get(txt.stem)
        if origin is None:
            out.problems.append(Problem(name, "annotation_without_image",
                                        f"{name}: no image named {txt.stem}.* in the source"))
            continue
        boxes = out.boxes.setdefault(origin, [])
        try:
            lines = txt.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            out.problems.append(Problem(origin, "malformed_annotation", f"{name}: unreadable ({exc})"))
            continue
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{name} line {n}"
            parts = line.split()
            try:
                if len(parts) != 5:
                    raise ValueError(f"{len(parts)} fields, expected 5 (class cx cy w h)")
                idx = int(parts[0])
                cx, cy, w, h = (_number(v, "coordinate") for v in parts[1:])
            except ValueError as exc:
                out.problems.append(Problem(origin, "malformed_annotation", f"{where}: {exc}"))
                continue
            cls = classes[idx] if 0 <= idx < len(classes) else f"#{idx}"
            boxes.append(Box(cls, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, normalised=True, where=where))
    return out


def _images_by_stem(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            out.setdefault(p.stem, p.relative_to(root).as_posix())
    return out


def _read_voc(root: Path, folder: Path) -> AnnotationSet:
    out = AnnotationSet("voc", [])
    images = _images_by_stem(root)
    classes: set[str] = set()
    for xml in sorted(folder.rglob("*.xml")):
        name = _where(root, xml)
        try:
            doc = ET.parse(xml).getroot()  # noqa: S314
            if doc.tag != "annotation":
                raise ValueError(f"root element <{doc.tag}>, expected <annotation>")
        except (ET.ParseError, OSError, ValueError) as exc:
            out.problems.append(Problem(name, "malformed_annotation", f"{name}: not a VOC annotation ({exc})"))
            continue
        file_name = (doc.findtext("filename") or "").strip()
        stem = PurePosixPath(file_name).stem if file_name else xml.stem
        origin = images.get(stem)
        if origin is None:
            out.problems.append(Problem(name, "annotation_without_image",
                                        f"{name}: no image named {file_name or stem + '.*'} in the source"))
            continue
        boxes = out.boxes.setdefault(origin, [])
        size = doc.find("size")
        if size is not None:
            with contextlib.suppress(ValueError):  # a missing/odd <size> is checked against the decoded image anyway
                out.sizes[origin] = (int(size.findtext("width", "")), int(size.findtext("height", "")))
        for k, obj in enumerate(doc.findall("object")):
            where = f"{name} object {k}"
            try:
                cls = (obj.findtext("name") or "").strip()
                if not cls:
                    raise ValueError("no <name>")
                bb = obj.find("bndbox")
                if bb is None:
                    raise ValueError("no <bndbox>")
                # VOC corners are 1-based inclusive pixels: xmin=1 is the first pixel column
                x0, y0, x1, y1 = (_number(bb.findtext(t), t) for t in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError as exc:
                out.problems.append(Problem(origin, "malformed_annotation", f"{where}: {exc}"))
                continue
            classes.add(cls)
            crowd = (obj.findtext("difficult") or "0").strip() == "1"
            boxes.append(Box(cls, x0 - 1, y0 - 1, x1, y1, crowd, where=where))
    out.classes = sorted(classes)
    return out


# --------------------------------------------------------------------------- checking
def check_boxes(boxes: Sequence[Box], width: int, height: int, classes: Iterable[str], *,
                tolerance: float = 0.02) -> tuple[list[Box], Problem | None]:
    """Clip small overhangs and judge one image's boxes (``width``/``height``: the decoded image).

    Returns:
        ``(boxes in pixels, clipped to the image, None)``, or ``([], Problem)`` for the first bad
        box (the image is quarantined whole: a half-annotated image teaches the model to miss).
    """
    known = set(classes)
    out: list[Box] = []
    tol_x, tol_y = tolerance * width, tolerance * height
    for b in boxes:
        p = b.in_pixels(width, height)
        if p.cls not in known:
            return [], Problem("", "unknown_class", f"{p.describe()}: class not in {sorted(known)}")
        if p.x1 <= p.x0 or p.y1 <= p.y0:
            return [], Problem("", "box_degenerate", f"{p.describe()}: zero or negative width/height")
        if p.x0 < -tol_x or p.y0 < -tol_y or p.x1 > width + tol_x or p.y1 > height + tol_y:
            return [], Problem("", "box_outside", f"{p.describe()}: outside the {width}x{height} image by more "
                               f"than ingest.box_tolerance = {tolerance}")
        c = replace(p, x0=min(max(p.x0, 0.0), width), y0=min(max(p.y0, 0.0), height),
                    x1=min(max(p.x1, 0.0), width), y1=min(max(p.y1, 0.0), height))
        if c.x1 <= c.x0 or c.y1 <= c.y0:  # only the overhang was inside the tolerance
            return [], Problem("", "box_degenerate", f"{p.describe()}: nothing left inside the image after clipping")
        out.append(c)
    return out, None


# --------------------------------------------------------------------------- geometry
def exif_transform(boxes: Sequence[Box], orientation: int, width: int, height: int) -> list[Box]:
    """Move pixel boxes of the *stored* (un-rotated) image the way ``ImageOps.exif_transpose`` moves its pixels.

    ``width``/``height`` are the stored image's; orientation 1 (or unknown) leaves boxes as they are.

    Example:
        >>> b = exif_transform([Box("a", 0, 0, 2, 1)], 6, width=4, height=3)[0]
        >>> (b.x0, b.y0, b.x1, b.y1)
        (2.0, 0.0, 3.0, 2.0)
    """
    w, h = float(width), float(height)
    maps = {  # (x, y) of a point in the stored image -> in the displayed image
        2: lambda x, y: (w - x, y),
        3: lambda x, y: (w - x, h - y),
        4: lambda x, y: (x, h - y),
        5: lambda x, y: (y, x),
        6: lambda x, y: (h - y, x),
        7: lambda x, y: (h - y, w - x),
        8: lambda x, y: (y, w - x),
    }
    f = maps.get(int(orientation))
    if f is None:
        return list(boxes)
    out = []
    for b in boxes:
        (ax, ay), (bx, by) = f(b.x0, b.y0), f(b.x1, b.y1)
        out.append(replace(b, x0=float(min(ax, bx)), y0=float(min(ay, by)), x1=float(max(ax, bx)), y1=float(max(ay, by))))
    return out


def resize(boxes: Sequence[Box], sx: float, sy: float, dx: float = 0.0, dy: float = 0.0) -> list[Box]:
    """Scale boxes by ``(sx, sy)`` then shift by ``(dx, dy)`` (a resize, or a letterbox's scale and padding)."""
    return [replace(b, x0=b.x0 * sx + dx, y0=b.y0 * sy + dy, x1=b.x1 * sx + dx, y1=b.y1 * sy + dy) for b in boxes]


#: Grey of the letterbox padding (the YOLO convention), recorded in the preprocessing contract.
LETTERBOX_FILL = 114


@dataclass(frozen=True)
class Letterbox:
    """Fit a ``width x height`` image into ``size = (W, H)`` keeping its aspect ratio, centred, padded with
    :data:`LETTERBOX_FILL`: exactly what albumentations' ``LongestMaxSize(max_size_hw) + PadIfNeeded(center)``
    do at training time (a test checks pixels and boxes agree), so serving and evaluation can apply and
    undo it with plain numpy/OpenCV.

    Example:
        >>> lb = Letterbox.fit(100, 50, (64, 64))
        >>> (lb.new_w, lb.new_h, lb.pad_x, lb.pad_y)
        (64, 32, 0, 16)
        >>> b = lb.boxes([Box("a", 10, 10, 20, 20)])[0]
        >>> (b.x0, b.y0, b.x1, b.y1)
        (6.4, 22.4, 12.8, 28.8)
        >>> lb.invert([b])[0].x0
        10.0
    """

    width: int
    height: int
    size: tuple[int, int]
    new_w: int
    new_h: int
    pad_x: int
    pad_y: int

    @classmethod
    def fit(cls, width: int, height: int, size: tuple[int, int]) -> Letterbox:
        tw, th = size
        s = min(th / height, tw / width)
        new_w, new_h = max(1, round(width * s)), max(1, round(height * s))
        return cls(width, height, (tw, th), new_w, new_h, (tw - new_w) // 2, (th - new_h) // 2)

    @property
    def scale(self) -> tuple[float, float]:
        return self.new_w / self.width, self.new_h / self.height

    def boxes(self, boxes: Sequence[Box]) -> list[Box]:
        """Boxes of the original image -> boxes of the letterboxed image."""
        sx, sy = self.scale
        return resize(boxes, sx, sy, self.pad_x, self.pad_y)

    def invert(self, boxes: Sequence[Box]) -> list[Box]:
        """Boxes of the letterboxed image -> the original image's pixels (clipped to it)."""
        sx, sy = self.scale
        out = resize(boxes, 1 / sx, 1 / sy, -self.pad_x / sx, -self.pad_y / sy)
        return [replace(b, x0=min(max(b.x0, 0.0), self.width), y0=min(max(b.y0, 0.0), self.height),
                        x1=min(max(b.x1, 0.0), self.width), y1=min(max(b.y1, 0.0), self.height)) for b in out]

    def apply(self, image: Any) -> Any:
        """The letterboxed ``(H, W, 3)`` uint8 image (bilinear resize, then padding)."""
        import cv2
        import numpy as np

        tw, th = self.size
        out = np.full((th, tw, *image.shape[2:]), LETTERBOX_FILL, dtype=image.dtype)
        small = cv2.resize(image, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)
        out[self.pad_y:self.pad_y + self.new_h, self.pad_x:self.pad_x + self.new_w] = small.reshape(
            self.new_h, self.new_w, *image.shape[2:])
        return out


# --------------------------------------------------------------------------- table and COCO
def box_table(boxes: Mapping[str, Sequence[Box]]) -> pd.DataFrame:
    """The annotation table: one row per box, ``sha256 -> boxes``, sorted (stable bytes in parquet)."""
    import pandas as pd

    rows = [(sha, b.cls, float(b.x0), float(b.y0), float(b.x1), float(b.y1), float(b.area), bool(b.iscrowd))
            for sha, bs in boxes.items() for b in bs]
    df = pd.DataFrame(rows, columns=list(BOX_COLUMNS))
    df = df.astype({"sha256": str, "class": str, "x0": "float64", "y0": "float64", "x1": "float64", "y1": "float64",
                    "area": "float64", "iscrowd": bool})
    return df.sort_values(["sha256", "y0", "x0", "class", "x1", "y1"], kind="mergesort").reset_index(drop=True)


def to_coco(table: pd.DataFrame, images: pd.DataFrame, classes: Sequence[str]) -> dict[str, Any]:
    """A COCO dataset dict from the annotation table and the manifest rows of its images.

    ``images`` needs columns ``sha256, path, width, height``; image and category ids are 1-based
    positions (images by sha256, categories in ``classes`` order). Images without boxes are listed
    (background images).
    """
    imgs = images.sort_values("sha256").reset_index(drop=True)
    image_id = {sha: i + 1 for i, sha in enumerate(imgs["sha256"])}
    cat_id = {c: i + 1 for i, c in enumerate(classes)}
    missing = sorted(set(table["class"]) - set(cat_id))
    if missing:
        raise DataError(f"annotation table: classes {missing} are not in the class list {list(classes)}.")
    out_images = [{"id": image_id[r.sha256], "file_name": str(r.path), "width": int(r.width), "height": int(r.height)}
                  for r in imgs.itertuples()]
    anns = []
    cols = [table[c].tolist() for c in BOX_COLUMNS]
    for k, (sha, cls, x0, y0, x1, y1, _area, crowd) in enumerate(zip(*cols, strict=True), 1):
        if sha not in image_id:
            raise DataError(f"annotation table: image {sha[:12]} has boxes but no manifest row.")
        w, h = x1 - x0, y1 - y0
        anns.append({"id": k, "image_id": image_id[sha], "category_id": cat_id[cls],
                     "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": int(crowd)})
    return {"images": out_images, "annotations": anns,
            "categories": [{"id": i, "name": c, "supercategory": "object"} for c, i in cat_id.items()]}


def from_coco(doc: Mapping[str, Any], sha_of: Mapping[str, str]) -> pd.DataFrame:
    """The annotation table of a COCO dict whose ``file_name`` values map to sha256 through ``sha_of``."""
    cats = {c["id"]: c["name"] for c in doc["categories"]}
    files = {im["id"]: im["file_name"] for im in doc["images"]}
    boxes: dict[str, list[Box]] = {sha_of[f]: [] for f in files.values()}
    for a in doc["annotations"]:
        x, y, w, h = (float(v) for v in a["bbox"])
        boxes[sha_of[files[a["image_id"]]]].append(Box(cats[a["category_id"]], x, y, x + w, y + h, bool(a.get("iscrowd"))))
    return box_table(boxes)


__all__ = [
    "BOX_COLUMNS", "FORMATS", "REASONS", "AnnotationSet", "Box", "Problem", "box_table", "check_boxes",
    "LETTERBOX_FILL", "Letterbox", "detect_format", "exif_transform", "from_coco", "parse_spec", "read_annotations", "resize", "to_coco",
]
