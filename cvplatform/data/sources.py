"""Data sources for ingest: parse a source spec and list the files it holds.

``ingest.source`` names *where the images come from*, in a form DVC can track as a
dependency of the ``ingest`` stage (``dvc.yaml`` lists ``${ingest.source}`` as a dep, so
added, changed or removed images make ``dvc status`` report ``ingest`` changed):

``PATH``
    A local folder, relative to the project root or absolute (``folder:PATH`` is
    accepted too, but only the bare path can be tracked by DVC in ``params.yaml``).
``s3://bucket/prefix``
    The same layouts in an S3 bucket, read through ``boto3.client("s3")``
    (endpoint, region and credentials from the standard AWS environment
    variables / config files, e.g. ``AWS_ENDPOINT_URL``). Objects are mirrored
    into ``data/sources/s3/<bucket>/<prefix>/`` and then read like a folder.
``configs/sources/digits.yaml`` / ``shapes.yaml`` / ``scenes.yaml``
    Built-in sample sets, described by a small spec file (``builtin: digits``) and
    generated into ``data/sources/<name>/`` (see :mod:`cvplatform.data.synthetic`; ``scenes``, the
    detection source with COCO boxes: :mod:`cvplatform.tasks.detection.scenes`).
    The short names ``digits``, ``shapes`` and ``scenes`` are accepted as well.

:func:`dvc_location` turns any accepted spelling into the DVC-trackable one (what the
Airflow trigger form writes into a run's ``params.yaml``).

Two layouts are understood:

* **ImageFolder** (``ingest.labels_csv`` is null): one sub-folder per class;
  files in nested sub-folders belong to the top-level class folder; files
  directly in the root have no label (quarantined as ``no_label``).
* **Labels CSV** (``ingest.labels_csv: labels.csv``, a path inside the source):
  columns ``path,label[,metadata...]``; ``path`` is relative to the source root
  (posix separators). Extra columns become manifest columns. Files in the source
  that no row references are quarantined as ``no_label``; rows whose path is
  absolute or escapes the root are ``path_escape``; rows pointing at nothing are
  ``missing_file``. For ``shapes`` the generator's own CSV is always used.
* **Annotated** (``ingest.annotations`` set, ``project.task: detection`` or the ``scenes`` source):
  every file except the annotation files is an image; labels come from the boxes
  (:mod:`cvplatform.data.annotated`), and ``ingest.labels_csv`` (optional) holds only
  ``path`` plus metadata columns.

Listing never opens images: it returns :class:`SourceItem` records, some of them
already rejected with a reason (``path_escape``, ``missing_file``, ``no_label``).
Symlinks are not followed out of the source root: a symlink whose target
resolves outside it is ``path_escape``; symlinked directories inside the root are
not descended into (their targets are listed on their own).
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal

from cvplatform.config import StrictModel
from cvplatform.data.manifest import CORE_COLUMNS
from cvplatform.errors import SourceError

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.config import IngestParams
    from cvplatform.utils.io import ProjectPaths

log = logging.getLogger(__name__)

SOURCE_FORMS = "PATH (or folder:PATH) | s3://bucket/prefix | digits | shapes | scenes | configs/sources/<builtin>.yaml"
"""The valid ``ingest.source`` forms, quoted in error messages."""

REJECT_AT_LISTING: tuple[str, ...] = ("path_escape", "missing_file", "no_label", "unreadable")
"""Reasons a file can be rejected with before it is opened."""

_S3_DOWNLOAD_THREADS = 8
_S3_PAGE_SIZE = 1000  # keys per ListObjectsV2 page (the S3 maximum); tests lower it to exercise paging


# --------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``ingest.source`` value.

    Attributes:
        kind: ``folder`` | ``s3`` | ``digits`` | ``shapes`` | ``builtin_file`` (a spec file naming
            a built-in generator; :func:`open_source` reads it).
        spec: the spec string as given (recorded in the manifest ``source`` column; the
            generator name for built-in sources).
        path: folder path for ``folder`` specs (as given, not resolved).
        bucket: S3 bucket for ``s3`` specs.
        prefix: S3 key prefix for ``s3`` specs, without leading/trailing ``/`` ("" = whole bucket).
    """

    kind: str
    spec: str
    path: str | None = None
    bucket: str | None = None
    prefix: str = ""


BUILTIN_SOURCES: tuple[str, ...] = ("digits", "shapes", "scenes")
"""Built-in generators (no download)."""
BUILTIN_SPEC_DIR = "configs/sources"
"""Where the spec files of the built-in sources live (``configs/sources/<name>.yaml``)."""


class BuiltinSource(StrictModel):
    """A built-in source's spec file (``configs/sources/<name>.yaml``)."""

    builtin: Literal["digits", "shapes", "scenes"]
    """The generator; its settings are ``ingest.<builtin>`` in params.yaml."""


def parse_source(spec: str) -> SourceSpec:
    """Parse a source spec, raising :class:`SourceError` listing the valid forms when it is not one.

    Args:
        spec: a folder path (or ``folder:PATH``), ``s3://bucket/prefix``, ``digits``, ``shapes``,
            or a built-in source's spec file (``configs/sources/digits.yaml``).

    Returns:
        The parsed :class:`SourceSpec`.

    Example:
        >>> parse_source("s3://my-bucket/datasets/cats")
        SourceSpec(kind='s3', spec='s3://my-bucket/datasets/cats', path=None, bucket='my-bucket', prefix='datasets/cats')
        >>> parse_source("folder:data/incoming").path
        'data/incoming'
        >>> parse_source("/mnt/cameras").kind, parse_source("configs/sources/shapes.yaml").kind
        ('folder', 'builtin_file')
    """
    s = (spec or "").strip()
    if s in BUILTIN_SOURCES:
        return SourceSpec(kind=s, spec=s)
    if s.startswith("s3://"):
        return _parse_s3(spec, s)
    path = s[len("folder:"):].strip() if s.startswith("folder:") else s
    if not path:
        raise SourceError(f"ingest.source {spec!r}: empty folder path. Use a folder path, e.g. data/incoming.")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", path):
        raise SourceError(
            f"ingest.source {spec!r} is not a known source. Valid forms: {SOURCE_FORMS} "
            "(set ingest.source in params.yaml or pass --source)."
        )
    if path.endswith((".yaml", ".yml")):
        return SourceSpec(kind="builtin_file", spec=s, path=path)
    return SourceSpec(kind="folder", spec=s, path=path)


def _parse_s3(spec: str, s: str) -> SourceSpec:
    rest = s[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-_]{2,62}", bucket):
        raise SourceError(
            f"ingest.source {spec!r}: {bucket!r} is not a valid S3 bucket name "
            "(lowercase letters, digits, '.', '-'). Use s3://bucket/prefix."
        )
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise SourceError(
            f"ingest.source {spec!r}: the prefix {prefix!r} has empty, '.' or '..' segments. "
            "Use a plain key prefix such as s3://bucket/datasets/cats."
        )
    return SourceSpec(kind="s3", spec=s, bucket=bucket, prefix=prefix)


def dvc_location(spec: str) -> str:
    """The spelling of ``spec`` that DVC can track as a dependency (for ``params.yaml``).

    Example:
        >>> dvc_location("folder:/mnt/cameras"), dvc_location("digits"), dvc_location("s3://bucket/p")
        ('/mnt/cameras', 'configs/sources/digits.yaml', 's3://bucket/p')
    """
    parsed = parse_source(spec)
    if parsed.kind in BUILTIN_SOURCES:
        return f"{BUILTIN_SPEC_DIR}/{parsed.kind}.yaml"
    if parsed.kind == "s3":
        return parsed.spec
    return str(parsed.path)


def _read_builtin_spec(spec: SourceSpec, paths: ProjectPaths) -> SourceSpec:
    from cvplatform.config import load_config

    file = paths.resolve(spec.path or "")
    if not file.is_file():
        raise SourceError(
            f"ingest.source {spec.spec!r}: {file} does not exist. Built-in sources are "
            f"{', '.join(f'{BUILTIN_SPEC_DIR}/{n}.yaml' for n in BUILTIN_SOURCES)} (or digits / shapes); "
            "a folder of images is given by its path."
        )
    cfg = load_config(file, BuiltinSource)
    return SourceSpec(kind=cfg.builtin, spec=cfg.builtin, path=spec.path)


# --------------------------------------------------------------------------- items
@dataclass(frozen=True)
class SourceItem:
    """One file of a source, before decoding.

    Attributes:
        origin: path inside the source, relative to its root (posix); for S3 the key minus the prefix.
        label: class label (NFC-normalised, stripped), or None when the file has none.
        local_path: the local file to read (None when there is nothing safe to read).
        metadata: ``(column, value)`` pairs from the labels CSV (sorted by column).
        reason: rejection reason decided at listing time (see :data:`REJECT_AT_LISTING`), else None.
        detail: human explanation of ``reason``.
        row: line number in the labels CSV, when the item comes from one.
    """

    origin: str
    label: str | None
    local_path: Path | None
    metadata: tuple[tuple[str, str | None], ...] = ()
    reason: str | None = None
    detail: str = ""
    row: int | None = None

    @property
    def sort_key(self) -> tuple[str, int]:
        return (self.origin, self.row or 0)


@dataclass(frozen=True)
class SourceListing:
    """Everything ingest needs to know about a source: where it is and its items, sorted."""

    spec: SourceSpec
    root: Path
    items: tuple[SourceItem, ...]
    metadata_columns: tuple[str, ...] = ()
    labels_csv: Path | None = None
    notes: tuple[str, ...] = field(default=())
    annotations: str | None = None
    """The annotation source (``coco:PATH``, ``yolo:DIR``, ``voc:DIR``; ``auto`` already resolved), or None
    for a source whose labels are folders or a labels CSV."""


def normalise_label(raw: object) -> str | None:
    """Strip and NFC-normalise a label; empty -> None.

    Example:
        >>> normalise_label("  cat ")
        'cat'
        >>> normalise_label("") is None
        True
    """
    if raw is None:
        return None
    s = unicodedata.normalize("NFC", str(raw)).strip()
    return s or None


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _walk(root: Path) -> Iterator[tuple[str, Path, str | None, str]]:
    """Yield ``(origin, path, reason, detail)`` for every non-directory entry under ``root``.

    ``reason`` is None for regular files (``path`` is then their resolved location),
    ``path_escape`` for symlinks resolving outside ``root``, ``missing_file`` for
    broken symlinks and ``unreadable`` for special files (FIFOs, sockets, devices).

    One ``os.scandir`` per folder: the entry types come with the listing, so a regular file costs
    no ``stat`` or ``resolve`` (symlinked folders are never descended, so a plain file's resolved
    location is the resolved root joined with its relative path); only symlinks are resolved.
    """
    import stat

    root_res = root.resolve()
    stack = [("", root)]
    while stack:
        rel_dir, folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            yield rel_dir.rstrip("/") or ".", folder, "unreadable", f"cannot list folder: {exc.strerror or exc}"
            continue
        for entry in entries:
            origin = f"{rel_dir}{entry.name}"
            full = folder / entry.name
            try:
                is_link = entry.is_symlink()
                if not is_link and entry.is_dir(follow_symlinks=False):
                    stack.append((origin + "/", full))
                    continue
                if not is_link:
                    if entry.is_file(follow_symlinks=False):
                        yield origin, root_res / origin, None, ""
                    else:
                        yield origin, full, "unreadable", "not a regular file (FIFO, socket or device)"
                    continue
            except OSError as exc:
                yield origin, full, "unreadable", f"cannot stat: {exc}"
                continue
            target = full.resolve()
            if not _inside(target, root_res):
                what = "symlinked folder" if target.is_dir() else "symlink"
                yield origin, full, "path_escape", f"{what} resolves to {target}, outside the source root"
                continue
            if target.is_dir():
                log.debug("not descending into symlinked folder %s (target %s is inside the source)", full, target)
                continue
            if not target.exists():
                yield origin, full, "missing_file", f"broken symlink (target {target} does not exist)"
                continue
            try:
                mode = os.stat(target).st_mode
            except OSError as exc:
                yield origin, full, "unreadable", f"cannot stat: {exc}"
                continue
            if not stat.S_ISREG(mode):
                yield origin, full, "unreadable", "not a regular file (FIFO, socket or device)"
                continue
            yield origin, target, None, ""


def _read_labels_csv(csv_path: Path, need_label: bool = True) -> tuple[list[tuple[int, dict[str, str]]], tuple[str, ...]]:
    """Rows ``(line, {column: value})`` and the metadata columns; ``need_label=False``: an annotated source's
    metadata CSV (``path`` plus metadata; a ``label`` column clashes: labels come from the boxes)."""
    try:
        fh = csv_path.open("r", encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise SourceError(f"{csv_path}: cannot open labels CSV ({exc}).") from exc
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise SourceError(f"{csv_path}: labels CSV is empty; it needs a header row path,label[,metadata...].") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise SourceError(f"{csv_path}: not a readable UTF-8 CSV ({exc}).") from exc
        cols = [c.strip() for c in header]
        dupes = sorted({c for c in cols if cols.count(c) > 1})
        if dupes:
            raise SourceError(f"{csv_path}: duplicate column(s) {dupes} in the header; each column name must be unique.")
        if need_label and ("path" not in cols or "label" not in cols):
            raise SourceError(
                f"{csv_path}: labels CSV needs columns 'path' and 'label' (found {cols}). "
                "Fix the header or set ingest.labels_csv: null for the one-folder-per-class layout."
            )
        if "path" not in cols:
            raise SourceError(
                f"{csv_path}: the metadata CSV of an annotated source needs a column 'path' (found {cols}); "
                "labels come from the annotations, the other columns become manifest columns."
            )
        meta = tuple(c for c in cols if c not in (("path", "label") if need_label else ("path",)))
        clash = [c for c in meta if c in CORE_COLUMNS or not c]
        if clash:
            raise SourceError(
                f"{csv_path}: metadata column(s) {clash} clash with manifest columns {list(CORE_COLUMNS)} "
                "(or are empty); rename them in the CSV header."
            )
        rows: list[tuple[int, dict[str, str]]] = []
        try:
            for values in reader:
                if not any(v.strip() for v in values):
                    continue  # blank line
                if len(values) != len(cols):
                    raise SourceError(
                        f"{csv_path}, line {reader.line_num}: {len(values)} fields, expected {len(cols)} ({cols}). "
                        "Quote values that contain commas."
                    )
                rows.append((reader.line_num, dict(zip(cols, values, strict=True))))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise SourceError(f"{csv_path}, line {reader.line_num}: unreadable CSV ({exc}).") from exc
    return rows, meta


def list_folder(root: str | Path, labels_csv: str | None = None) -> tuple[list[SourceItem], tuple[str, ...]]:
    """List every file of a local source folder, with labels, and decide listing-time rejections.

    Args:
        root: the source root folder.
        labels_csv: path of a labels CSV inside ``root`` (None = ImageFolder layout).

    Returns:
        ``(items sorted by origin, metadata column names)``.

    Raises:
        SourceError: ``root`` is not a folder, or the labels CSV is missing or malformed.

    Example:
        >>> items, meta = list_folder("data/sources/shapes", "labels.csv")  # doctest: +SKIP
        >>> items[0].label, meta  # doctest: +SKIP
        ('circle', ('background', 'camera', 'lighting'))
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: source folder does not exist or is not a folder. Check ingest.source / --source.")
    root_res = root.resolve()
    items: list[SourceItem] = []
    if labels_csv is None:
        for origin, path, reason, detail in _walk(root):
            parts = PurePosixPath(origin).parts
            label = normalise_label(parts[0]) if len(parts) > 1 else None
            if reason is None and label is None:
                reason, detail = "no_label", "file is directly in the source root; the layout is <root>/<class>/<file>"
            local = path if reason in (None, "no_label") else None
            items.append(SourceItem(origin=origin, label=label, local_path=local, reason=reason, detail=detail))
        return sorted(items, key=lambda i: i.sort_key), ()

    csv_path = (root / labels_csv)
    csv_res = csv_path.resolve()
    if not _inside(csv_res, root_res) or not csv_res.is_file():
        raise SourceError(
            f"{csv_path}: labels CSV (ingest.labels_csv={labels_csv!r}) not found inside the source {root}. "
            "Give a path relative to the source root, or null for the one-folder-per-class layout."
        )
    rows, meta = _read_labels_csv(csv_res)
    walked = list(_walk(root))
    plain_files = {origin: path for origin, path, reason, _ in walked if reason is None}
    referenced: set[Path] = set()  # resolved targets of rows that point at a file
    named: set[str] = set()  # normalised paths of every row
    for line, row in rows:
        raw_path = row["path"].strip()
        if raw_path:
            named.add(os.path.normpath(raw_path).replace(os.sep, "/"))
        label = normalise_label(row["label"])
        metadata = tuple(sorted((c, (row[c].strip() or None)) for c in meta))
        common = {"label": label, "metadata": metadata, "row": line}
        if not raw_path:
            items.append(SourceItem(origin="", local_path=None, reason="missing_file",
                                    detail=f"{csv_path.name} line {line}: empty path", **common))
            continue
        pure = PurePosixPath(raw_path)
        if pure.is_absolute() or (len(raw_path) > 1 and raw_path[1] == ":"):
            items.append(SourceItem(origin=raw_path, local_path=None, reason="path_escape",
                                    detail=f"{csv_path.name} line {line}: absolute path", **common))
            continue
        origin = os.path.normpath(raw_path).replace(os.sep, "/")
        # A row without ".." naming a file the walk found needs no resolve(): its components are the walked
        # folders (never symlinks) and the file itself. Anything else is resolved and checked the long way.
        known = plain_files.get(origin) if ".." not in pure.parts else None
        target = known if known is not None else (root / raw_path).resolve()
        if not _inside(target, root_res):
            items.append(SourceItem(origin=raw_path, local_path=None, reason="path_escape",
                                    detail=f"{csv_path.name} line {line}: resolves to {target}, outside the source root",
                                    **common))
            continue
        if known is None and not target.is_file():
            what = "is not a file" if target.exists() else "does not exist"
            items.append(SourceItem(origin=origin, local_path=None, reason="missing_file",
                                    detail=f"{csv_path.name} line {line}: {what}", **common))
            continue
        referenced.add(target)
        if label is None:
            items.append(SourceItem(origin=origin, local_path=target, reason="no_label",
                                    detail=f"{csv_path.name} line {line}: empty label", **common))
            continue
        items.append(SourceItem(origin=origin, local_path=target, **common))

    for origin, path, reason, detail in walked:
        if reason is None:
            if path == csv_res or path in referenced or origin in named:
                continue
            reason, detail = "no_label", f"not listed in {csv_path.name}"
        elif origin in named:
            continue  # the CSV row naming it already carries the rejection
        local = path if reason == "no_label" else None
        items.append(SourceItem(origin=origin, label=None, local_path=local, reason=reason, detail=detail))
    return sorted(items, key=lambda i: i.sort_key), meta


# --------------------------------------------------------------------------- S3
def _s3_error(exc: BaseException, spec: SourceSpec, action: str) -> SourceError:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, NoRegionError

    where = f"s3://{spec.bucket}/{spec.prefix}"
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or "AWS default"
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket", "404") and action == "list":
            return SourceError(
                f"{where}: bucket {spec.bucket!r} does not exist (endpoint: {endpoint}). "
                "Check the bucket name in ingest.source and AWS_ENDPOINT_URL / AWS_DEFAULT_REGION."
            )
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"):
            return SourceError(
                f"{where}: access denied while trying to {action} ({code}; endpoint: {endpoint}). "
                "Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket policy."
            )
        return SourceError(f"{where}: S3 error while trying to {action}: {code or exc} (endpoint: {endpoint}).")
    if isinstance(exc, EndpointConnectionError):
        return SourceError(
            f"{where}: cannot reach the S3 endpoint {endpoint} ({exc}). "
            "Check AWS_ENDPOINT_URL and that the object store is up."
        )
    if isinstance(exc, NoCredentialsError):
        return SourceError(
            f"{where}: no AWS credentials found. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE."
        )
    if isinstance(exc, NoRegionError):
        return SourceError(f"{where}: no AWS region configured. Set AWS_DEFAULT_REGION (e.g. us-east-1).")
    return SourceError(f"{where}: S3 failure while trying to {action}: {exc} (endpoint: {endpoint}).")


def mirror_s3(spec: SourceSpec, dest: str | Path) -> list[SourceItem]:
    """Download every object under ``s3://bucket/prefix/`` into ``dest`` (cleared first).

    Keys are mirrored relative to the prefix. Keys that are not a safe relative
    path (``..``, ``.`` or empty segments) are not downloaded and come back as
    ``path_escape`` items; folder-marker keys (ending in ``/``) are skipped.

    Args:
        spec: a parsed ``s3`` spec.
        dest: local mirror folder.

    Returns:
        The items rejected at listing time (unsafe keys).

    Raises:
        SourceError: the bucket does not exist, access is denied, the endpoint is
            unreachable or credentials are missing (the message names the bucket/prefix).

    Example:
        >>> rejected = mirror_s3(parse_source("s3://bucket/cats"), "data/sources/s3/bucket/cats")  # doctest: +SKIP
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    list_prefix = f"{spec.prefix}/" if spec.prefix else ""
    try:
        client = boto3.client("s3")
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=spec.bucket, Prefix=list_prefix, PaginationConfig={"PageSize": _S3_PAGE_SIZE}
        ):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(exc, spec, "list") from exc

    rejected: list[SourceItem] = []
    todo: list[tuple[str, Path]] = []
    for key in sorted(keys):
        rel = key[len(list_prefix):]
        if not rel or rel.endswith("/"):
            continue  # the prefix itself or a folder marker
        parts = rel.split("/")
        if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            rejected.append(SourceItem(origin=rel, label=None, local_path=None, reason="path_escape",
                                       detail=f"S3 key {key!r} is not a safe relative path"))
            continue
        todo.append((key, dest.joinpath(*parts)))

    def fetch(job: tuple[str, Path]) -> None:
        key, local = job
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.part")
        try:
            body = client.get_object(Bucket=spec.bucket, Key=key)["Body"]
            with tmp.open("wb") as fh:
                shutil.copyfileobj(body, fh, 1 << 20)
            os.replace(tmp, local)
        except (ClientError, BotoCoreError) as exc:
            tmp.unlink(missing_ok=True)
            raise _s3_error(exc, spec, f"download {key!r}") from exc

    if todo:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(_S3_DOWNLOAD_THREADS, len(todo))) as pool:
            list(pool.map(fetch, todo))
    log.info("s3: mirrored %d object(s) from s3://%s/%s to %s", len(todo), spec.bucket, spec.prefix, dest)
    return rejected


# --------------------------------------------------------------------------- entry point
def _check_no_overlap(root: Path, paths: ProjectPaths) -> None:
    root = root.resolve()
    for out in (paths.raw, paths.quarantine, paths.processed):
        out = out.resolve()
        if _inside(root, out):
            raise SourceError(
                f"source folder {root} is inside the ingest output {out}, which ingest clears on every run. "
                "Move the source elsewhere (e.g. data/incoming)."
            )
        if _inside(out, root):
            raise SourceError(
                f"source folder {root} contains the ingest output {out}; ingesting it would read its own "
                "outputs. Point ingest.source at a folder that holds only the input images."
            )


def sources_dir(paths: ProjectPaths) -> Path:
    """Staging folder for generated and mirrored sources: ``<root>/data/sources``.

    Example:
        >>> from cvplatform.utils.io import ProjectPaths
        >>> sources_dir(ProjectPaths.at("/proj")).as_posix()
        '/proj/data/sources'
    """
    return paths.root / "data" / "sources"


def open_source(params: IngestParams, paths: ProjectPaths, *, annotations: str | None = None) -> SourceListing:
    """Materialise the source named by ``params.source`` (generate / mirror) and list its files.

    Args:
        params: the ``ingest`` parameters (``source``, ``labels_csv``, ``digits``, ``shapes``).
        paths: project paths (folder paths and spec files are relative to ``paths.root``).
        annotations: an annotation source (``coco:PATH`` | ``yolo:DIR`` | ``voc:DIR`` | ``auto``): list the
            source as an annotated one (:func:`cvplatform.data.annotated.list_annotated`). The ``scenes``
            source is always annotated (its own ``coco:annotations.json``).

    Returns:
        A :class:`SourceListing` with items sorted by origin.

    Raises:
        SourceError: unknown spec, missing folder, S3 failure, bad labels CSV, or a
            source that overlaps the ingest outputs.

    Example:
        >>> from cvplatform.config import IngestParams
        >>> from cvplatform.utils.io import ProjectPaths
        >>> listing = open_source(IngestParams(source="shapes"), ProjectPaths.at("."))  # doctest: +SKIP
        >>> len(listing.items)  # doctest: +SKIP
        600
    """
    from cvplatform.data.synthetic import SHAPES_CSV, generate_shapes, write_digits

    spec = parse_source(params.source)
    if spec.kind == "builtin_file":
        spec = _read_builtin_spec(spec, paths)
    labels_csv = params.labels_csv
    notes: list[str] = []
    rejected: list[SourceItem] = []
    if spec.kind == "digits":
        if labels_csv:
            notes.append(f"ingest.labels_csv={labels_csv!r} ignored: the digits source has its own layout")
        root = write_digits(params.digits, sources_dir(paths) / "digits")
        labels_csv = None
    elif spec.kind == "shapes":
        if labels_csv and labels_csv != SHAPES_CSV:
            notes.append(f"ingest.labels_csv={labels_csv!r} ignored: the shapes source writes its own {SHAPES_CSV}")
        root = generate_shapes(params.shapes, sources_dir(paths) / "shapes").parent
        labels_csv = SHAPES_CSV
    elif spec.kind == "scenes":
        labels_csv, annotations, root = _generate_scenes(params, paths, labels_csv, annotations, notes)
    elif spec.kind == "folder":
        root = paths.resolve(spec.path or "")
        if not root.is_dir():
            raise SourceError(
                f"ingest.source {spec.spec!r}: folder {root} does not exist or is not a folder. "
                f"Paths are relative to the project root; check the spelling or give an absolute path. "
                f"Valid forms: {SOURCE_FORMS}."
            )
        _check_no_overlap(root, paths)
    else:  # s3
        root = sources_dir(paths) / "s3" / str(spec.bucket) / (spec.prefix or "_bucket_root")
        rejected = mirror_s3(spec, root)
    if annotations is not None:
        from cvplatform.data.annotated import list_annotated

        items, meta, annotations = list_annotated(root, annotations, labels_csv)
    else:
        items, meta = list_folder(root, labels_csv)
    items = sorted([*items, *rejected], key=lambda i: i.sort_key)
    for note in notes:
        log.warning(note)
    return SourceListing(
        spec=spec,
        root=root,
        items=tuple(items),
        metadata_columns=tuple(sorted(meta)),
        labels_csv=(root / labels_csv) if labels_csv else None,
        notes=tuple(notes),
        annotations=annotations,
    )


def _generate_scenes(params: IngestParams, paths: ProjectPaths, labels_csv: str | None, annotations: str | None,
                     notes: list[str]) -> tuple[str, str, Path]:
    """Generate the ``scenes`` source afresh; return its metadata CSV, its annotation source and its root."""
    from cvplatform.tasks.detection.scenes import SCENES_COCO, SCENES_CSV, generate_scenes

    own = f"coco:{SCENES_COCO}"
    if labels_csv and labels_csv != SCENES_CSV:
        notes.append(f"ingest.labels_csv={labels_csv!r} ignored: the scenes source writes its own {SCENES_CSV}")
    if annotations not in (None, "auto", own):
        notes.append(f"ingest.annotations={annotations!r} ignored: the scenes source writes its own {own}")
    dest = sources_dir(paths) / "scenes"
    if dest.exists():
        shutil.rmtree(dest)  # a smaller count must not leave older images behind
    root = generate_scenes(params.scenes, dest).parent
    return SCENES_CSV, own, root


__all__ = [
    "BUILTIN_SOURCES",
    "BuiltinSource",
    "REJECT_AT_LISTING",
    "SOURCE_FORMS",
    "SourceItem",
    "SourceListing",
    "SourceSpec",
    "list_folder",
    "mirror_s3",
    "normalise_label",
    "dvc_location",
    "open_source",
    "parse_source",
    "sources_dir",
]
