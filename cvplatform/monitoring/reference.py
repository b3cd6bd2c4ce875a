"""The training reference drift is measured against: input statistics and label distribution.

:func:`build_reference` reads the manifest, computes the input statistics
(:mod:`cvplatform.monitoring.stats`) of the ``train`` split images (at most
``max_images``, the first by sha256, so the sample is deterministic) and counts the
train labels (all train rows); for a task whose answers are objects (detection), also the training
objects (``extra["objects"]``, the task's ``reference_objects``: boxes per image, box areas as a share of
the image, boxes per class, from the annotation tables). :func:`get_reference` caches the result as
``artifacts/monitor/reference.json``, keyed by the manifest's data hash (its DVC md5,
see :func:`cvplatform.tracking.data_version`), the split, ``max_images`` and the
statistics' definition version: a new dataset (or a changed setting) rebuilds it,
anything else is read from the cache.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cvplatform.errors import DataError
from cvplatform.monitoring.stats import STAT_NAMES, STATS_VERSION

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.json"


@dataclass
class Reference:
    """Input statistics of training images and the training label counts.

    Attributes:
        data_hash: DVC md5 of the manifest the reference was built from (the cache key).
        manifest: Manifest path (as given).
        split: Manifest split used (``train``).
        max_images: Cap on the images measured (None = all of the split).
        stats_version: :data:`~cvplatform.monitoring.stats.STATS_VERSION` at build time.
        n_images: Images measured.
        stats: Per statistic, one value per measured image.
        label_counts: Rows per label in the split (all rows, not capped).
        created: UTC time the reference was built (ISO-8601).

    Example:
        >>> ref = Reference("abc", "m.parquet", "train", None, 1, 1, {"brightness": [10.0]}, {"cat": 1})
        >>> Reference.from_dict(ref.to_dict()) == ref
        True
    """

    data_hash: str
    manifest: str
    split: str
    max_images: int | None
    stats_version: int
    n_images: int
    stats: dict[str, list[float]]
    label_counts: dict[str, int]
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reference:
        return cls(
            data_hash=str(data["data_hash"]),
            manifest=str(data["manifest"]),
            split=str(data["split"]),
            max_images=None if data.get("max_images") is None else int(data["max_images"]),
            stats_version=int(data["stats_version"]),
            n_images=int(data["n_images"]),
            stats={str(k): [float(v) for v in vals] for k, vals in data["stats"].items()},
            label_counts={str(k): int(v) for k, v in data["label_counts"].items()},
            created=str(data.get("created", "")),
            extra=dict(data.get("extra") or {}),
        )

    @property
    def objects(self) -> dict[str, Any] | None:
        """The training objects (``task.reference_objects``), or None for a task without objects."""
        obj = self.extra.get("objects")
        return obj if isinstance(obj, dict) else None

    def matches(self, data_hash: str, split: str, max_images: int | None, objects: bool = False) -> bool:
        """Whether this reference was built from the same data and settings (``objects``: it must hold the
        training objects, e.g. a reference cached before the project's task reported them does not)."""
        return (self.data_hash, self.split, self.max_images, self.stats_version) == (
            data_hash, split, max_images, STATS_VERSION,
        ) and (not objects or self.objects is not None)


def build_reference(
    manifest: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    split: str = "train",
    max_images: int | None = None,
    task: Any = None,
) -> Reference:
    """Compute the reference from the manifest's ``split`` rows.

    Args:
        manifest: The manifest (relative paths resolve against ``root``).
        root: Project root (default: cwd); manifest ``path`` values are relative to it.
        split: Manifest split to describe.
        max_images: Measure at most N images (the first N by sha256); None = all.
        task: The project's task (:class:`~cvplatform.tasks.base.Task`): its ``reference_objects`` of all the
            split's rows go to ``extra["objects"]`` (None: no objects).

    Raises:
        DataError: the manifest is missing/unreadable, the split is empty, or an image is missing.

    Example:
        >>> ref = build_reference("data/processed/manifest.parquet", ".", max_images=500)  # doctest: +SKIP
        >>> ref.n_images, sorted(ref.label_counts)[:3]  # doctest: +SKIP
        (500, ['0', '1', '2'])
    """
    from datetime import UTC, datetime

    from cvplatform.data.manifest import read_manifest
    from cvplatform.monitoring.stats import stats_of_files
    from cvplatform.tracking import data_version
    from cvplatform.utils.io import ProjectPaths

    paths = ProjectPaths.at(root)
    mpath = paths.resolve(manifest)
    df = read_manifest(mpath, required=("path", "sha256", "label", "split"))
    rows = df[df["split"].astype(str) == split]
    if rows.empty:
        have = sorted(df["split"].astype(str).unique())
        raise DataError(
            f"{mpath}: no rows in split {split!r} (splits present: {have}); the drift reference needs the "
            "training images. Re-run `cvplatform ingest`."
        )
    label_counts = {str(k): int(v) for k, v in rows["label"].astype(str).value_counts().sort_index().items()}
    chosen = rows.sort_values("sha256", kind="mergesort")
    if max_images is not None:
        chosen = chosen.head(int(max_images))
    files = [paths.resolve(p) for p in chosen["path"].astype(str)]
    log.info("drift reference: measuring %d %s image(s) of %s", len(files), split, mpath)
    per_image = stats_of_files(files)
    stats = {name: [float(r[name]) for r in per_image] for name in STAT_NAMES}
    objects = task.reference_objects(rows, paths.root) if task is not None else None
    return Reference(
        data_hash=data_version(mpath, paths.root).md5,
        manifest=str(manifest),
        split=split,
        max_images=None if max_images is None else int(max_images),
        stats_version=STATS_VERSION,
        n_images=len(per_image),
        stats=stats,
        label_counts=label_counts,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        extra={"objects": objects} if objects is not None else {},
    )


def load_reference(path: str | os.PathLike[str]) -> Reference:
    """Read a cached ``reference.json``.

    Raises:
        DataError: the file is missing or not a reference.

    Example:
        >>> load_reference("artifacts/monitor/reference.json").n_images  # doctest: +SKIP
        1257
    """
    p = Path(path)
    try:
        return Reference.from_dict(json.loads(p.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise DataError(f"{p}: no drift reference; run `cvplatform monitor` to build it.") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{p}: not a valid drift reference ({type(exc).__name__}: {exc}); delete it to rebuild.") \
            from exc


def get_reference(
    manifest: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    cache: str | os.PathLike[str] | None = None,
    split: str = "train",
    max_images: int | None = None,
    rebuild: bool = False,
    task: Any = None,
) -> tuple[Reference, bool]:
    """The reference for the manifest's current data, from the cache when it matches.

    Args:
        manifest: The manifest (relative to ``root``).
        root: Project root (default: cwd).
        cache: Cache file (default ``<root>/artifacts/monitor/reference.json``).
        split: Manifest split.
        max_images: Cap on measured images.
        rebuild: Ignore the cache.
        task: The project's task (its training objects, see :func:`build_reference`).

    Returns:
        ``(reference, from_cache)``.

    Example:
        >>> ref, cached = get_reference("data/processed/manifest.parquet", ".")  # doctest: +SKIP
    """
    from cvplatform.tracking import data_version
    from cvplatform.utils.io import ProjectPaths, write_json

    paths = ProjectPaths.at(root)
    mpath = paths.resolve(manifest)
    if not mpath.exists():
        raise DataError(f"{mpath}: manifest not found; the drift reference is built from its train split. "
                        "Run `cvplatform ingest` (or `dvc pull`) first.")
    cache_path = Path(cache) if cache is not None else paths.artifacts("monitor") / REFERENCE_FILE
    data_hash = data_version(mpath, paths.root).md5
    if not rebuild and cache_path.is_file():
        try:
            cached = load_reference(cache_path)
        except DataError as exc:
            log.warning("%s; rebuilding it", exc)
        else:
            wants_objects = bool(getattr(task, "has_objects", False))
            if cached.matches(data_hash, split, max_images, objects=wants_objects):
                log.info("drift reference: cached %s (data %s)", cache_path, data_hash[:12])
                return cached, True
            log.info("drift reference: %s is for data %s, the manifest is now %s; rebuilding",
                     cache_path, cached.data_hash[:12], data_hash[:12])
    ref = build_reference(mpath, paths.root, split=split, max_images=max_images, task=task)
    ref.manifest = str(manifest)
    write_json(cache_path, ref.to_dict())
    return ref, False


__all__ = ["REFERENCE_FILE", "Reference", "build_reference", "get_reference", "load_reference"]
