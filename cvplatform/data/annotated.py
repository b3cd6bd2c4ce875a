"""Ingest of annotated sources: images plus object boxes -> the annotation table beside the manifest.

A source is *annotated* when ``ingest.annotations`` is set (``coco:PATH`` | ``yolo:DIR`` | ``voc:DIR`` |
``auto``), when ``project.task`` is ``detection`` (``auto``), or when it is the built-in ``scenes`` source.
Ingest then

1. **lists** every file of the source except the annotation files (and the optional metadata CSV,
   ``ingest.labels_csv``: ``path`` plus metadata columns) as an image (:func:`list_annotated`);
2. **reads** the annotations with :func:`cvplatform.tasks.detection.annotations.read_annotations`; an
   annotation file or entry that names no listed image, or cannot be read at all, becomes a quarantine row
   of its own, named by the annotation file (:func:`problem_items`);
3. **judges** each decoded image's boxes (:func:`judge_images`) in the pixels of the file as stored, then
   moves them with the file's EXIF orientation exactly as ingest moves its pixels, so boxes are in the
   pixels of the normalised PNG: an unreadable object, a box outside the image beyond
   ``ingest.box_tolerance`` (small overhangs are clipped), of zero size or of an unknown class, or a
   declared image size that is not the file's, quarantines the image with the annotation file and the
   object in the detail; an image without boxes is kept as a background image only with
   ``ingest.keep_background`` (otherwise ``no_boxes``);
4. **labels** each image with the class of its largest box (ties: the first class name), or
   :data:`BACKGROUND`, so stratified splits and the class counts work as for classification;
5. **writes** the annotation table (:func:`write_table`; ``annotations.parquet`` beside the manifest, one row
   per box keyed by the image's sha256) and names it in the manifest's ``annotations`` column.

Without annotations ingest writes the table empty (it is a DVC output of the ingest stage either way).
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from cvplatform.data.sources import SourceItem, _read_labels_csv, _walk
from cvplatform.errors import SourceError
from cvplatform.tasks.detection.annotations import REASONS as ANNOTATION_REASONS
from cvplatform.tasks.detection.annotations import (
    YOLO_CLASS_FILES,
    AnnotationSet,
    Box,
    Problem,
    box_table,
    check_boxes,
    detect_format,
    exif_transform,
    parse_spec,
    read_annotations,
)
from cvplatform.tasks.detection.task import ANNOTATIONS_COLUMN, ANNOTATIONS_FILE

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from cvplatform.config import Params
    from cvplatform.data.ingest import DecodeOutcome

BACKGROUND = "background"
"""The ``label`` of an image without boxes (kept only with ``ingest.keep_background``)."""
_TRANSPOSED = (5, 6, 7, 8)
"""EXIF orientations that swap width and height."""


def annotation_spec(params: Params) -> str | None:
    """The annotation source ingest reads: ``ingest.annotations``, else ``auto`` for a detection project.

    Example:
        >>> from cvplatform.config import load_params
        >>> annotation_spec(load_params("params.yaml", ["ingest.annotations=voc:xml"]))  # doctest: +SKIP
        'voc:xml'
    """
    if params.ingest.annotations is not None:
        return params.ingest.annotations
    return "auto" if params.project.task == "detection" else None


def table_path(manifest: Path) -> Path:
    """Where the annotation table goes: ``annotations.parquet`` beside the manifest."""
    return manifest.with_name(ANNOTATIONS_FILE)


# --------------------------------------------------------------------------- listing
def _annotation_origins(root: Path, fmt: str, rel: str) -> set[str]:
    """The files the annotation reader reads (origins inside ``root``): they are not images."""
    base = (root / rel).resolve()
    root_res = root.resolve()
    if fmt == "coco":
        files = [base]
    else:
        files = list(base.rglob("*.xml" if fmt == "voc" else "*.txt"))
        if fmt == "yolo":
            files += [d / n for d in (base, base.parent, root_res) for n in YOLO_CLASS_FILES if (d / n).is_file()]
    return {f.resolve().relative_to(root_res).as_posix() for f in files if f.resolve().is_relative_to(root_res)}


def _metadata(root: Path, csv_name: str, walked: set[str]) -> tuple[dict[str, tuple], tuple[str, ...],
                                                                     list[SourceItem]]:
    """Metadata rows by origin, the metadata columns, and items for rows naming no file of the source."""
    csv_path = root / csv_name
    if not csv_path.resolve().is_relative_to(root.resolve()) or not csv_path.is_file():
        raise SourceError(f"{csv_path}: metadata CSV (ingest.labels_csv={csv_name!r}) not found inside the source "
                          f"{root}. Give a path relative to the source root, or null.")
    rows, meta = _read_labels_csv(csv_path, need_label=False)
    by_origin: dict[str, tuple] = {}
    bad: list[SourceItem] = []
    for line, row in rows:
        raw = row["path"].strip()
        origin = os.path.normpath(raw).replace(os.sep, "/") if raw else ""
        metadata = tuple(sorted((c, (row[c].strip() or None)) for c in meta))
        where = f"{csv_path.name} line {line}"
        if not raw or PurePosixPath(raw).is_absolute() or ".." in PurePosixPath(origin).parts:
            bad.append(SourceItem(origin=raw, label=None, local_path=None, reason="path_escape" if raw else "missing_file",
                                  detail=f"{where}: {'empty' if not raw else 'absolute or escaping'} path", row=line))
        elif origin not in walked:
            bad.append(SourceItem(origin=origin, label=None, local_path=None, reason="missing_file",
                                  detail=f"{where}: no such file in the source", row=line))
        else:
            by_origin[origin] = metadata
    return by_origin, meta, bad


def list_annotated(root: Path, spec: str, metadata_csv: str | None = None,
                   ) -> tuple[list[SourceItem], tuple[str, ...], str]:
    """List an annotated source: every file except the annotation files (and ``metadata_csv``) is an image.

    Returns:
        ``(items sorted by origin, metadata columns, the annotation source with auto resolved)``.

    Raises:
        SourceError: ``root`` is not a folder; the metadata CSV is missing or malformed.
        DataError: ``spec`` is not an annotation source, or ``auto`` finds none or several.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: source folder does not exist or is not a folder. Check ingest.source / --source.")
    fmt, rel = parse_spec(spec)
    if fmt is None:
        fmt, rel = detect_format(root)
    skip = _annotation_origins(root, fmt, rel)
    walked = [w for w in _walk(root) if w[0] not in skip]
    meta_cols: tuple[str, ...] = ()
    by_origin: dict[str, tuple] = {}
    items: list[SourceItem] = []
    if metadata_csv:
        csv_file = (root / metadata_csv).resolve()
        if not csv_file.is_relative_to(root.resolve()):
            raise SourceError(f"ingest.labels_csv={metadata_csv!r} resolves to {csv_file}, outside the source {root}. "
                              "Give a path relative to the source root, or null.")
        skip_csv = csv_file.relative_to(root.resolve()).as_posix()
        walked = [w for w in walked if w[0] != skip_csv]
        by_origin, meta_cols, items = _metadata(root, metadata_csv, {w[0] for w in walked if w[2] is None})
    for origin, path, reason, detail in walked:
        items.append(SourceItem(origin=origin, label=None, local_path=path if reason is None else None,
                                metadata=by_origin.get(origin, tuple((c, None) for c in sorted(meta_cols))),
                                reason=reason, detail=detail))
    return sorted(items, key=lambda i: i.sort_key), meta_cols, f"{fmt}:{rel}"


# --------------------------------------------------------------------------- reading
def problem_items(ann: AnnotationSet, items: list[SourceItem], spec: str, root: Path) -> list[SourceItem]:
    """Quarantine items for annotation problems that belong to no listed image.

    A file or entry the reader could not tie to an image (a VOC/YOLO file naming no image, a COCO entry with a
    bad ``image_id``, an unreadable XML file) and a COCO image entry naming a file the source does not hold
    (``annotation_without_image``) become rows of their own, named by the annotation file (whose original is
    kept in the quarantine like a rejected image's).
    """
    listed = {it.origin for it in items}
    by_file: dict[str, list[Problem]] = defaultdict(list)
    for p in ann.problems:
        if p.origin not in listed:
            by_file[p.origin].append(p)
    coco_file = spec.partition(":")[2] if ann.format == "coco" else ""
    for origin in sorted(set(ann.boxes) - listed):
        n = len(ann.boxes[origin])
        by_file[coco_file or origin].append(Problem(coco_file or origin, "annotation_without_image",
                                                    f"{coco_file or spec}: image {origin!r} ({n} box(es)) is not in "
                                                    "the source"))
    out: list[SourceItem] = []
    for file, problems in sorted(by_file.items()):
        local = (root / file).resolve()
        keep = local if local.is_file() and local.is_relative_to(root.resolve()) else None
        for k, p in enumerate(problems, 1):
            out.append(SourceItem(origin=file, label=None, local_path=keep, reason=p.reason, detail=p.detail, row=k))
    return out


# --------------------------------------------------------------------------- judging
@dataclass
class Judged:
    """The annotated images after judging: labels set, rejected ones marked, boxes by origin."""

    items: list[SourceItem]
    outcomes: dict[int, DecodeOutcome]
    boxes: dict[str, list[Box]]
    """Each accepted image's boxes, in pixels of the normalised (EXIF-transposed) image."""


def _label_of(boxes: list[Box]) -> str:
    if not boxes:
        return BACKGROUND
    return min(boxes, key=lambda b: (-b.area, b.cls)).cls


def _judge_one(origin: str, o: DecodeOutcome, ann: AnnotationSet, spec: str, problems: list[Problem],
               tolerance: float, keep_background: bool) -> tuple[list[Box] | None, str, str]:
    """``(boxes, "", "")`` for a usable image, else ``(None, reason, detail)``."""
    if problems:
        return None, problems[0].reason, "; ".join(p.detail for p in problems)
    w, h = o.width, o.height
    raw_w, raw_h = (h, w) if o.orientation in _TRANSPOSED else (w, h)
    declared = ann.sizes.get(origin)
    if declared is not None and declared not in ((raw_w, raw_h), (w, h)):
        return None, "malformed_annotation", (f"{spec}: declares {origin} as {declared[0]}x{declared[1]}, but the "
                                              f"image is {raw_w}x{raw_h}; fix the size or the image")
    checked, problem = check_boxes(ann.boxes.get(origin, []), raw_w, raw_h, ann.classes, tolerance=tolerance)
    if problem is not None:
        return None, problem.reason, problem.detail
    if not checked and not keep_background:
        said = "has no boxes" if origin in ann.boxes else "is named by no annotation"
        return None, "no_boxes", (f"{spec}: the image {said}; set ingest.keep_background: true to keep images without "
                                  "boxes as background images")
    return exif_transform(checked, o.orientation, raw_w, raw_h), "", ""


def judge_images(items: list[SourceItem], outcomes: dict[int, DecodeOutcome], ann: AnnotationSet, spec: str, *,
                 tolerance: float, keep_background: bool) -> Judged:
    """Judge every decoded image's boxes; a rejected image's outcome carries the annotation reason."""
    from cvplatform.data.ingest import DecodeOutcome

    problems: dict[str, list[Problem]] = defaultdict(list)
    for p in ann.problems:
        problems[p.origin].append(p)
    items = list(items)
    outcomes = dict(outcomes)
    boxes: dict[str, list[Box]] = {}
    for i, it in enumerate(items):
        o = outcomes.get(i)
        if it.reason is not None or o is None or o.reason is not None:
            continue
        found, reason, detail = _judge_one(it.origin, o, ann, spec, problems.get(it.origin, []), tolerance,
                                           keep_background)
        if found is None:
            outcomes[i] = DecodeOutcome(i, reason, detail)
            continue
        boxes[it.origin] = found
        items[i] = replace(it, label=_label_of(found))
    return Judged(items, outcomes, boxes)


# --------------------------------------------------------------------------- the table
def write_table(rows: list[dict[str, object]], boxes: dict[str, list[Box]] | None, path: Path,
                root: Path) -> tuple[Path, dict[str, int]]:
    """Write the annotation table of the manifest ``rows`` (empty when ``boxes`` is None) and name it in each row.

    Deterministic bytes (sorted rows, fixed parquet options, no pandas metadata). Returns the path and the
    number of boxes per class.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    per_sha: dict[str, list[Box]] = {}
    if boxes is not None:
        ref = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        for r in rows:
            per_sha[str(r["sha256"])] = boxes[str(r["origin"])]
            r[ANNOTATIONS_COLUMN] = ref
    table: pd.DataFrame = box_table(per_sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    arrow = pa.Table.from_pandas(table, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(arrow, tmp, compression="zstd", use_dictionary=True, write_statistics=True)
    os.replace(tmp, path)
    return path, dict(sorted(Counter(table["class"].astype(str)).items()))


def count_background(rows: list[dict[str, Any]], boxes: dict[str, list[Box]]) -> int:
    """Accepted images without boxes."""
    return sum(1 for r in rows if not boxes.get(str(r["origin"])))


__all__ = [
    "ANNOTATION_REASONS",
    "BACKGROUND",
    "Judged",
    "annotation_spec",
    "count_background",
    "judge_images",
    "list_annotated",
    "problem_items",
    "read_annotations",
    "table_path",
    "write_table",
]
