"""The ingest stage: source files -> normalised PNGs in ``data/raw`` + quarantine + manifest.

``run_ingest(params)`` is the one entry point (CLI ``cvplatform ingest``, DVC,
Airflow, notebooks). For every file the source holds it either

* **accepts** it: decodes and verifies it with Pillow, applies the EXIF
  orientation, converts it to 8-bit RGB, optionally blurs faces
  (``ingest.privacy.redact_faces``), re-encodes it as a metadata-free PNG and
  stores it as ``data/raw/<label dir>/<sha256>.png`` (``sha256`` of those PNG
  bytes is the image's identity and the manifest key); or
* **quarantines** it: writes one row to ``data/quarantine/report.csv``
  (``file,reason,detail,label,sha256,stored``; ``sha256`` of the original
  bytes) and keeps a copy of the original bytes for review under
  ``data/quarantine/originals/<reason>/`` (see *Quarantined originals* below); or
* counts it as a **duplicate**: same normalised content and same label as an
  accepted file (the first by origin path is kept; pairs are listed in
  ``artifacts/ingest/duplicates.csv``).

Counts always balance: ``seen = accepted + quarantined + duplicates``.

Normalisation rules (decisions):

* Transparency (RGBA, LA, PA, palette/grey/RGB with a ``tRNS`` colour) is
  **composited on white**: hidden RGB values under alpha 0 are arbitrary, white
  is what a viewer shows on a page.
* 16-bit images (``I;16*``, and ``I`` with values in 0..65535) are scaled to
  8 bits with rounding (``v * 255 / 65535``), not clipped. 32-bit integer images
  outside that range and float images (``F``) have no known range:
  ``unsupported_mode``.
* CMYK, YCbCr, LAB, HSV, 1-bit, grey and palette images use Pillow's conversion
  to RGB (embedded ICC profiles are not applied; they are dropped).
* Animated / multi-frame files keep their first frame.
* The output PNG carries no metadata at all (no EXIF, GPS, ICC, text, dpi):
  a fresh image is built from the pixels and saved with fixed encoder settings
  (``compress_level=6``), so the same pixels give the same bytes.

Reasons (stable codes, see :data:`REASONS`): ``empty_file``, ``unreadable``,
``undecodable``, ``too_large`` (``width*height > ingest.max_pixels``, read from
the header before any pixel is decoded; Pillow's decompression-bomb guard is set
to the same limit and mapped here), ``too_small``, ``unsupported_mode``,
``path_escape``, ``missing_file``, ``no_label``, ``label_conflict`` (the same
normalised content with different labels: every copy is quarantined).

Annotated sources (``ingest.annotations``, ``project.task: detection`` or the ``scenes`` source;
:mod:`cvplatform.data.annotated`): each image's boxes follow its EXIF orientation like its pixels and
are written to the annotation table beside the manifest (``annotations.parquet``, named in the
manifest's ``annotations`` column); the label is the class of the largest box. Bad annotations add
the reasons of :data:`cvplatform.tasks.detection.annotations.REASONS` (``malformed_annotation``,
``annotation_without_image``, ``box_outside``, ``box_degenerate``, ``unknown_class``, ``no_boxes``);
an annotation file or entry naming no image of the source is a quarantine row (and counts as seen)
of its own. Without annotations the table is written empty.

Quarantined originals (privacy): a rejected file is unprocessed, so it may carry
EXIF/GPS metadata and unblurred faces. Its original bytes therefore stay on this
machine: ``data/quarantine/originals`` is neither a DVC output nor in git, so it
is never cached or pushed. ``report.csv`` (file, reason, detail, label, sha256)
is the DVC output that is versioned and pushed. Originals are kept across runs
(one file per content and reason, named by its sha256) and deleted
``ingest.quarantine.retention_days`` after they were first quarantined, at the
start of every ingest (:func:`prune_quarantine`). With
``ingest.quarantine.push_originals: true`` they are kept in
``data/quarantine/pushed`` instead, a DVC output that ``dvc push`` uploads.
Faces are blurred (``ingest.privacy.redact_faces``) in everything ingest
publishes: ``data/raw`` and therefore the manifest, the DVC cache and remotes.

The other outputs are rebuilt from scratch on every run (``data/raw``, the
report and the manifest are cleared first), and every output is a deterministic
function of the input: the worker count and completion order do not change a byte.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import os
import re
import shutil
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cvplatform.data import annotated
from cvplatform.data.manifest import write_manifest
from cvplatform.data.sources import SourceItem, open_source
from cvplatform.data.split import SPLIT_NAMES, assign_split
from cvplatform.errors import CVPlatformError, DataError, SourceError
from cvplatform.stage import StageResult
from cvplatform.utils.io import ProjectPaths, sha256_bytes, sha256_file, write_json

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

    from cvplatform.config import Params

log = logging.getLogger(__name__)

REASONS: dict[str, str] = {
    "empty_file": "the file has zero bytes",
    "unreadable": "the file cannot be read (permissions, special file)",
    "undecodable": "not a decodable image (truncated, corrupt, or not an image despite its extension)",
    "too_large": "width*height exceeds ingest.max_pixels (checked from the header, before decoding)",
    "too_small": "width or height is below ingest.min_side",
    "unsupported_mode": "the pixel format cannot be converted to 8-bit RGB",
    "path_escape": "a symlink or CSV path that resolves outside the source root",
    "missing_file": "a labels-CSV row (or symlink) that points at nothing",
    "no_label": "no class label (file outside a class folder, not listed in the CSV, or empty label)",
    "label_conflict": "the same normalised image appears with different labels (every copy quarantined)",
    **{k: f"annotated sources: {v}" for k, v in annotated.ANNOTATION_REASONS.items()},
}
"""Stable quarantine reason codes and what they mean."""

REPORT_COLUMNS: tuple[str, ...] = ("file", "reason", "detail", "label", "sha256", "stored")
ORIGINALS_DIR = "originals"
"""``data/quarantine/originals``: rejected files' original bytes, local only (no DVC output, git-ignored)."""
PUSHED_DIR = "pushed"
"""``data/quarantine/pushed``: the same, when ``ingest.quarantine.push_originals`` (a DVC output)."""
REPORT_FILE = "report.csv"
PNG_SAVE_OPTIONS: dict[str, object] = {"format": "PNG", "compress_level": 6, "optimize": False}
_INCOMING = ".incoming"


# --------------------------------------------------------------------------- decoding
class Rejected(Exception):
    """Raised by :func:`normalise_image` with a stable reason code and a human detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class NormalisedImage:
    """An accepted image: metadata-free RGB PNG bytes and what we learned decoding it."""

    png: bytes
    sha256: str
    width: int
    height: int
    format: str
    faces: int = 0
    orientation: int = 1
    """The file's EXIF orientation (1 = none), applied to the pixels (and, by ingest, to the boxes)."""


@contextlib.contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Set Pillow's decompression-bomb limit to ``max_pixels`` (and make its warning an error)."""
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a loaded PIL image to an RGB uint8 array (H, W, 3) following the module's rules.

    The one conversion shared by ingest and the inference server: transparency is composited
    on white, 16-bit greyscale is scaled to 8 bits, palette / CMYK / greyscale become RGB.

    Raises:
        Rejected: ``unsupported_mode`` for pixel modes with no known 8-bit range (e.g. float ``F``).

    Example:
        >>> from PIL import Image
        >>> to_rgb_array(Image.new("LA", (2, 1), (0, 0))).tolist()  # fully transparent black -> white
        [[[255, 255, 255], [255, 255, 255]]]
    """
    import numpy as np
    from PIL import Image

    mode = img.mode
    try:
        if mode.startswith("I;16") or mode == "I":
            a = np.asarray(img).astype(np.int64)
            if a.ndim != 2:
                raise Rejected("unsupported_mode", f"mode {mode} with shape {a.shape}")
            if a.size and (a.min() < 0 or a.max() > 65535):
                raise Rejected(
                    "unsupported_mode",
                    f"mode {mode}: values {a.min()}..{a.max()} outside 0..65535, no known range to scale to 8 bits",
                )
            g = ((a * 255 + 32767) // 65535).astype(np.uint8)
            return np.repeat(g[:, :, None], 3, axis=2)
        if mode == "F":
            raise Rejected("unsupported_mode", "mode F (32-bit float pixels): no known range to scale to 8 bits")
        if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", img.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(white, rgba).convert("RGB")
        elif mode == "RGB":
            rgb = img
        else:
            rgb = img.convert("RGB")
        arr = np.asarray(rgb, dtype=np.uint8)
    except Rejected:
        raise
    except Exception as exc:  # Pillow raises ValueError/OSError/KeyError for unknown conversions
        raise Rejected("unsupported_mode", f"mode {mode}: cannot convert to RGB ({exc})") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise Rejected("unsupported_mode", f"mode {mode}: converted to shape {arr.shape}, expected (H, W, 3)")
    return arr


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode an RGB uint8 array as a PNG with fixed settings and no metadata chunks.

    Example:
        >>> import numpy as np
        >>> encode_png(np.zeros((2, 2, 3), np.uint8))[:8]
        b'\\x89PNG\\r\\n\\x1a\\n'
    """
    import numpy as np
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))  # fresh image: empty .info
    buf = io.BytesIO()
    img.save(buf, **PNG_SAVE_OPTIONS)
    return buf.getvalue()


def normalise_image(
    data: bytes,
    *,
    max_pixels: int,
    min_side: int,
    redact: bool = False,
    min_face_size: int = 24,
) -> NormalisedImage:
    """Decode, verify and normalise one image file's bytes, or raise :class:`Rejected`.

    Order of checks: empty -> header (format, size; ``too_large`` before any
    decoding) -> ``verify()`` -> full decode -> EXIF orientation -> RGB
    conversion -> ``too_small`` -> optional face redaction -> PNG encoding.

    Args:
        data: the file's bytes.
        max_pixels: largest accepted ``width * height``.
        min_side: smallest accepted width/height (after EXIF rotation).
        redact: blur faces (see :mod:`cvplatform.data.privacy`).
        min_face_size: smallest face side for the detector.

    Returns:
        The normalised image.

    Raises:
        Rejected: with one of the codes in :data:`REASONS`.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.new("L", (16, 12), 200).save(buf, "PNG")
        >>> n = normalise_image(buf.getvalue(), max_pixels=10_000, min_side=8)
        >>> (n.width, n.height, n.format)
        (16, 12, 'PNG')
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise Rejected("empty_file", "zero bytes")
    with _pixel_limit(max_pixels):
        try:
            header = Image.open(io.BytesIO(data))  # reads the header only; Pillow's bomb guard fires here
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Rejected("too_large", f"declared size exceeds ingest.max_pixels = {max_pixels} ({exc})") from None
        except UnidentifiedImageError:
            raise Rejected("undecodable", "not a recognised image format") from None
        except Exception as exc:
            raise Rejected("undecodable", f"unreadable header ({type(exc).__name__}: {exc})") from None
        fmt = header.format or "unknown"
        w, h = header.size
        if w * h > max_pixels:  # normally caught by Pillow's guard above; kept for plugins that skip it
            raise Rejected("too_large", f"{w}x{h} = {w * h} pixels > ingest.max_pixels = {max_pixels}")
        try:
            header.verify()
        except Exception as exc:
            raise Rejected("undecodable", f"{fmt}: verify failed ({type(exc).__name__}: {exc})") from None
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Rejected("too_large", f"exceeds ingest.max_pixels = {max_pixels} ({exc})") from None
        except Exception as exc:
            raise Rejected("undecodable", f"{fmt}: decode failed ({type(exc).__name__}: {exc})") from None
    try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)  # ExifTags.Base.Orientation, as exif_transpose reads it
        ImageOps.exif_transpose(img, in_place=True)  # no copy when there is nothing to rotate
    except Exception as exc:
        raise Rejected("undecodable", f"{fmt}: invalid EXIF orientation ({type(exc).__name__}: {exc})") from None
    rgb = to_rgb_array(img)
    height, width = rgb.shape[:2]
    if min(width, height) < min_side:
        raise Rejected("too_small", f"{width}x{height}: a side is below ingest.min_side = {min_side}")
    faces = 0
    if redact:
        from cvplatform.data.privacy import redact_faces

        rgb, faces = redact_faces(rgb, min_face_size)
    png = encode_png(rgb)
    return NormalisedImage(png=png, sha256=sha256_bytes(png), width=width, height=height, format=fmt, faces=faces,
                           orientation=orientation if 1 <= orientation <= 8 else 1)


@dataclass(frozen=True)
class DecodeOptions:
    """What a decode worker needs (picklable)."""

    max_pixels: int
    min_side: int
    redact: bool
    min_face_size: int
    incoming: str


@dataclass(frozen=True)
class DecodeOutcome:
    """A worker's answer for one file: a rejection, or where its normalised PNG went."""

    index: int
    reason: str | None = None
    detail: str = ""
    sha256: str | None = None
    width: int = 0
    height: int = 0
    format: str = ""
    faces: int = 0
    orientation: int = 1


_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation


def _read_file(path: str) -> bytes:
    """The whole file with the fewest system calls (open, fstat, read until the end, close); Python's ``open``
    adds buffer set-up, seeks and a second ``fstat`` per file."""
    fd = os.open(path, os.O_RDONLY | _O_BINARY)
    try:
        size = os.fstat(fd).st_size
        parts, got = [], 0
        while True:  # a file that grew or a pipe-like special file: read until EOF
            chunk = os.read(fd, max(size - got, 0) + 1)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def _create_file(path: str, data: bytes) -> None:
    """Create ``path`` exclusively with ``data`` (open, write, close); an existing name is left alone (the caller
    names files by their content's sha256, so it holds the same bytes)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)  # as open(): umask applies
    except FileExistsError:
        return
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _decode_task(task: tuple[int, str, str], opts: DecodeOptions) -> DecodeOutcome:
    """Worker body: read one file, normalise it, write ``<folder>/<sha256>.png`` (``folder``: the image's final
    ``data/raw/<label dir>`` when its label is known before decoding, else ``opts.incoming``).

    One open and one write per image, no temporary name, rename or existence check: the file is created
    exclusively (``xb``), and when its name already exists another copy of the same content (same sha256, so the
    same bytes) created it first, in this process or another; nothing reads these files before every worker is
    done."""
    index, path, folder = task
    try:
        data = _read_file(path)
    except OSError as exc:
        return DecodeOutcome(index, "unreadable", f"cannot read: {exc.strerror or exc}")
    try:
        img = normalise_image(
            data, max_pixels=opts.max_pixels, min_side=opts.min_side, redact=opts.redact,
            min_face_size=opts.min_face_size,
        )
    except Rejected as rej:
        return DecodeOutcome(index, rej.reason, rej.detail)
    except CVPlatformError:
        raise  # e.g. the face cascade cannot be loaded: fail the run, do not quarantine everything
    except Exception as exc:  # a decoder/codec bug on one odd file must not sink the whole run
        return DecodeOutcome(index, "undecodable", f"unexpected {type(exc).__name__} while normalising: {exc}")
    _create_file(os.path.join(folder or opts.incoming, f"{img.sha256}.png"), img.png)
    return DecodeOutcome(index, None, "", img.sha256, img.width, img.height, img.format, img.faces, img.orientation)


def _decode_all(tasks: list[tuple[int, str, str]], opts: DecodeOptions, workers: int) -> dict[int, DecodeOutcome]:
    from cvplatform.utils.logs import Progress

    out: dict[int, DecodeOutcome] = {}
    with Progress("ingest", len(tasks), unit="images", logger=log) as bar:
        if workers <= 1 or len(tasks) < 2:
            for t in tasks:
                o = _decode_task(t, opts)
                out[o.index] = o
                bar.update()
        else:
            from concurrent.futures import ProcessPoolExecutor

            n = min(workers, len(tasks))
            chunk = max(1, min(64, len(tasks) // (n * 8)))
            # The platform's default start method (fork on Linux/3.11, spawn on macOS/Windows): with spawn
            # or forkserver, a calling *script* needs the usual `if __name__ == "__main__":` guard.
            with ProcessPoolExecutor(max_workers=n) as pool:
                for o in pool.map(partial(_decode_task, opts=opts), tasks, chunksize=chunk):
                    out[o.index] = o
                    bar.update()
    return out


# --------------------------------------------------------------------------- naming
def label_dirname(label: str) -> str:
    """A filesystem-safe folder name for a label (the real label stays in the manifest).

    Safe labels (ASCII letters, digits, ``.``, ``_``, ``-``, not starting with a
    dot) are used as they are; anything else is sanitised and suffixed with 8 hex
    digits of the label's sha256 so two different labels never share a folder.

    Example:
        >>> label_dirname("cat")
        'cat'
        >>> label_dirname("chat noir").startswith("chat_noir-")
        True
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._")[:60]
    if safe == label and safe:
        return safe
    return f"{safe or 'label'}-{hashlib.sha256(label.encode('utf-8')).hexdigest()[:8]}"


def _quarantine_name(item: SourceItem, sha256: str) -> str:
    """``<sha256 of the bytes>-<sanitised file name>``: the same content keeps one file across runs."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", item.origin.rsplit("/", 1)[-1]).strip("._")[:80] or "file"
    return f"{sha256[:16]}-{base}"


# --------------------------------------------------------------------------- quarantine store
def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()) if folder.is_dir() else []


def _drop_empty_dirs(folder: Path) -> None:
    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()


def prune_quarantine(params: Params, *, root: str | Path | None = None, now: float | None = None) -> list[str]:
    """Delete quarantined originals older than ``ingest.quarantine.retention_days``; return what was deleted.

    Age is the file's modification time: when it was first quarantined (a file quarantined again is
    not rewritten). Runs at the start of every ingest; call it from a scheduler to enforce the
    retention between ingests too. ``retention_days: null`` keeps everything.

    Args:
        params: validated params (``params.ingest.quarantine``).
        root: project root (default: the current directory).
        now: the current time (seconds since the epoch; default: now).

    Example:
        >>> from cvplatform.config import load_params
        >>> prune_quarantine(load_params("params.yaml"))  # doctest: +SKIP
        ['data/quarantine/originals/undecodable/3f2a...-broken.jpg']
    """
    import time

    days = params.ingest.quarantine.retention_days
    paths = ProjectPaths.at(root)
    if days is None:
        return []
    cutoff = (time.time() if now is None else now) - days * 86_400
    removed: list[str] = []
    for folder in (paths.quarantine / ORIGINALS_DIR, paths.quarantine / PUSHED_DIR):
        for f in _files(folder):
            if days == 0 or f.lstat().st_mtime <= cutoff:
                f.unlink()
                removed.append(f.relative_to(paths.root).as_posix())
        _drop_empty_dirs(folder)
    if removed:
        log.info("quarantine: removed %d original(s) older than %d day(s)", len(removed), days)
    return removed


def _prepare_quarantine(params: Params, paths: ProjectPaths) -> tuple[Path, int]:
    """Clear the report (and anything of older layouts), prune expired originals.

    Returns where this run keeps originals, and how many expired ones were deleted.

    Originals already kept move to the folder the current ``push_originals`` setting selects
    (their age is kept), so switching the setting moves them in or out of the DVC output.
    """
    q = paths.quarantine
    q.mkdir(parents=True, exist_ok=True)
    keep = {ORIGINALS_DIR, PUSHED_DIR}
    for entry in q.iterdir():
        if entry.name not in keep:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    pruned = len(prune_quarantine(params, root=paths.root))
    push = params.ingest.quarantine.push_originals
    store, other = (q / PUSHED_DIR, q / ORIGINALS_DIR) if push else (q / ORIGINALS_DIR, q / PUSHED_DIR)
    store.mkdir(exist_ok=True)
    (q / PUSHED_DIR).mkdir(exist_ok=True)  # the DVC output exists even when empty
    for f in _files(other):
        dest = store / f.relative_to(other)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, dest)  # keeps the modification time: retention still counts from the first quarantine
    _drop_empty_dirs(other)
    return store, pruned


def _keep_original(item: SourceItem, reason: str, store: Path, root: Path, keep: bool) -> tuple[str, str, str]:
    """sha256 of a rejected file's bytes, where its original is kept ("" if not), and a note on failure."""
    if item.local_path is None or reason in ("path_escape", "missing_file", "unreadable"):
        return "", "", ""  # bytes outside the root are never read; unreadable ones cannot be
    try:
        sha = sha256_file(item.local_path)
    except OSError as exc:
        return "", "", f"; could not read it for the quarantine: {exc}"
    if not keep:
        return sha, "", ""
    target = store / reason / _quarantine_name(item, sha)
    try:
        if not target.is_file():  # an original quarantined before keeps its file and its age
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.local_path, target)  # the original bytes; the source is never touched
        return sha, target.relative_to(root).as_posix(), ""
    except OSError as exc:
        return sha, "", f"; could not copy to quarantine: {exc}"


# --------------------------------------------------------------------------- result
@dataclass
class IngestResult(StageResult):
    """What ``run_ingest`` did. Paths are relative to the project root (posix)."""

    stage: ClassVar[str] = "ingest"
    summary_model: ClassVar[str | None] = "IngestSummary"
    source: str
    seen: int
    accepted: int
    quarantined: int
    duplicates: int
    by_reason: dict[str, int] = field(default_factory=dict)
    by_label: dict[str, int] = field(default_factory=dict)
    by_split: dict[str, int] = field(default_factory=dict)
    redacted_faces: int = 0
    metadata_columns: list[str] = field(default_factory=list)
    manifest: str = ""
    manifest_sha256: str = ""
    raw_dir: str = ""
    quarantine_dir: str = ""
    originals_dir: str = ""
    """Where rejected files' original bytes are kept ("" when ``retention_days`` is 0)."""
    originals_pruned: int = 0
    """Originals deleted by the retention rule at the start of this run."""
    report: str = ""
    duplicates_report: str = ""
    annotations: str = ""
    """The annotation table (written empty when the source has no annotations)."""
    annotation_source: str = ""
    """Where the boxes came from (``coco:PATH`` | ``yolo:DIR`` | ``voc:DIR``), "" without annotations."""
    boxes: int = 0
    """Boxes of the accepted images."""
    boxes_by_class: dict[str, int] = field(default_factory=dict)
    background_images: int = 0
    """Accepted images without boxes (``ingest.keep_background``)."""

    @property
    def balanced(self) -> bool:
        """``seen == accepted + quarantined + duplicates`` (always true for a finished run)."""
        return self.seen == self.accepted + self.quarantined + self.duplicates

    def lines(self) -> list[str]:
        """One screen of human summary."""

        def fmt(d: dict[str, int], limit: int = 12) -> str:
            items = [f"{k}={v}" for k, v in sorted(d.items())]
            more = f", ... (+{len(items) - limit} more)" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more if items else "-"

        out = [
            f"ingest: {self.source}",
            f"  seen {self.seen} = accepted {self.accepted} + quarantined {self.quarantined}"
            f" + duplicates {self.duplicates}",
            f"  quarantined by reason: {fmt(self.by_reason)}",
            f"  labels ({len(self.by_label)}): {fmt(self.by_label)}",
            f"  splits: {', '.join(f'{s}={self.by_split.get(s, 0)}' for s in SPLIT_NAMES)}",
        ]
        if self.annotation_source:
            out.append(f"  boxes {self.boxes} from {self.annotation_source} ({len(self.boxes_by_class)} classes: "
                       f"{fmt(self.boxes_by_class)}); background images {self.background_images}")
        if self.metadata_columns:
            out.append(f"  metadata columns: {', '.join(self.metadata_columns)}")
        if self.redacted_faces:
            out.append(f"  faces redacted: {self.redacted_faces}")
        out.append(f"  manifest: {self.manifest}")
        if self.annotation_source:
            out.append(f"  annotation table: {self.annotations}")
        out.append(f"  quarantine report: {self.report}")
        if self.originals_dir:
            out.append(f"  quarantined originals: {self.originals_dir}"
                       f"{f' ({self.originals_pruned} expired removed)' if self.originals_pruned else ''}")
        return out


# --------------------------------------------------------------------------- the stage
def _reset_dir(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def _group_by_content(items: list[SourceItem], outcomes: dict[int, DecodeOutcome],
                      ) -> tuple[list[tuple[int, str, str]], dict[str, list[int]]]:
    """Split the listed files into rejected ones ``(index, reason, detail)`` and accepted ones by content sha256."""
    rejected: list[tuple[int, str, str]] = []
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        if it.reason is not None:
            rejected.append((i, it.reason, it.detail))
            continue
        o = outcomes[i]
        if o.reason is not None:
            rejected.append((i, o.reason, o.detail))
        else:
            by_sha[str(o.sha256)].append(i)
    return rejected, by_sha


@dataclass
class _Placed:
    rows: list[dict[str, object]]
    """Manifest rows of the accepted images."""
    duplicates: list[tuple[str, ...]]
    """``(file, duplicate_of, sha256, label)`` of the copies that were dropped."""
    faces: int
    """Faces blurred in the accepted images."""


def _place_images(items: list[SourceItem], outcomes: dict[int, DecodeOutcome], by_sha: dict[str, list[int]],
                  listing: Any, paths: ProjectPaths, incoming: Path, ip: Any,
                  rejected: list[tuple[int, str, str]], direct: bool = False) -> _Placed:
    """Move each distinct image to ``data/raw/<label>/<sha256>.png`` and make its manifest row.

    The first copy (by source order) of an image is kept, the others are duplicates; an image whose copies
    carry different labels is rejected (``label_conflict``, appended to ``rejected``). ``direct``: the workers
    wrote every image into its label's folder already (:func:`_decode_tasks`), so nothing moves; a conflicting
    image is deleted from each of its labels' folders.
    """
    placed = _Placed([], [], 0)
    made: set[str] = set()
    for sha in sorted(by_sha):
        idxs = sorted(by_sha[sha], key=lambda i: items[i].sort_key)
        png = incoming / f"{sha}.png"
        labels = sorted({str(items[i].label) for i in idxs})
        if len(labels) > 1:
            for i in idxs:
                others = [items[j].origin for j in idxs if j != i]
                shown = ", ".join(others[:5]) + (f" (+{len(others) - 5} more)" if len(others) > 5 else "")
                rejected.append((i, "label_conflict",
                                 f"same image (sha256 {sha[:12]}) labelled {labels}; other copies: {shown}"))
            for written in ([paths.raw / label_dirname(lbl) / f"{sha}.png" for lbl in labels] if direct else [png]):
                written.unlink(missing_ok=direct)
            continue
        keep = items[idxs[0]]
        label = str(keep.label)
        folder = label_dirname(label)
        if folder not in made and not direct:
            (paths.raw / folder).mkdir(parents=True, exist_ok=True)
        made.add(folder)
        dest = paths.raw / folder / f"{sha}.png"
        if not direct:
            os.replace(png, dest)
        o = outcomes[idxs[0]]
        placed.faces += o.faces
        row: dict[str, object] = {
            "path": dest.relative_to(paths.root).as_posix(), "sha256": sha, "label": label, "width": o.width,
            "height": o.height, "channels": 3, "format": o.format, "source": listing.spec.spec,
            "origin": keep.origin, "split": assign_split(sha, label, ip.split),
        }
        meta = dict(keep.metadata)
        for col in listing.metadata_columns:
            row[col] = meta.get(col)
        placed.rows.append(row)
        placed.duplicates.extend((items[j].origin, keep.origin, sha, label) for j in idxs[1:])
    if direct:  # a label folder made before decoding whose every image was rejected goes again
        for d in {t for t in os.listdir(paths.raw) if t != _INCOMING} - made:
            with contextlib.suppress(OSError):
                (paths.raw / d).rmdir()
    return placed


def _decode_tasks(items: list[SourceItem], raw: Path, direct: bool) -> list[tuple[int, str, str]]:
    """``(index, file, folder)`` of every file to decode. ``direct`` (no annotations, so the label a file is
    listed with is final): ``folder`` is its ``data/raw/<label dir>``, made here once per label, and the worker
    writes the image where it stays; otherwise "" (the incoming folder, placed after the run)."""
    tasks, made = [], set()
    for i, it in enumerate(items):
        if it.reason is not None or not it.local_path:
            continue
        folder = ""
        if direct:
            name = label_dirname(str(it.label))  # the folder _place_images names (str(label), as always)
            if name not in made:
                (raw / name).mkdir(parents=True, exist_ok=True)
                made.add(name)
            folder = str(raw / name)
        tasks.append((i, str(it.local_path), folder))
    return tasks


def _quarantine_rows(items: list[SourceItem], rejected: list[tuple[int, str, str]], store: Path,
                     paths: ProjectPaths, keep: bool) -> list[tuple[str, ...]]:
    """The quarantine report's rows (sorted), keeping each rejected original when retention allows."""
    report_rows: list[tuple[str, ...]] = []
    for i, reason, detail in rejected:
        it = items[i]
        sha, stored, note = _keep_original(it, reason, store, paths.root, keep)
        report_rows.append((it.origin, reason, detail + note, it.label or "", sha, stored))
    report_rows.sort()
    return report_rows


def _reset_outputs(params: Params, paths: ProjectPaths) -> tuple[Path, int, Path, Path]:
    """Empty data/raw, prune the quarantine, remove the manifest and metrics.json.

    Returns ``(quarantine store, originals pruned, incoming folder, artifacts/ingest)``.
    """
    _reset_dir(paths.raw)
    store, pruned = _prepare_quarantine(params, paths)
    paths.resolve(params.project.manifest).unlink(missing_ok=True)
    annotated.table_path(paths.resolve(params.project.manifest)).unlink(missing_ok=True)
    incoming = paths.raw / _INCOMING
    incoming.mkdir()
    artifacts = paths.artifacts("ingest")
    (artifacts / "metrics.json").unlink(missing_ok=True)  # only a run that accepts images writes it
    return store, pruned, incoming, artifacts


def run_ingest(params: Params, *, root: str | Path | None = None) -> IngestResult:
    """Ingest ``params.ingest.source`` into ``data/raw``, ``data/quarantine`` and the manifest.

    Args:
        params: validated params (``params.ingest`` is used).
        root: project root (default: the current directory); every fixed path
            (``data/raw``, ``data/quarantine``, ``data/processed/manifest.parquet``, the annotation table
            ``data/processed/annotations.parquet``, ``artifacts/ingest``) is relative to it, and so are
            ``folder:`` sources.

    Returns:
        The :class:`IngestResult`; also written to ``artifacts/ingest/summary.json``.

    Raises:
        SourceError: the source spec, folder, bucket or labels CSV is unusable, or holds no files.
        DataError: no file was accepted (the quarantine report and summary are still written), or the
            annotation source (``ingest.annotations``) is missing, ambiguous or unreadable as a whole.

    Example:
        >>> from cvplatform.config import load_params
        >>> from cvplatform.data.ingest import run_ingest
        >>> params = load_params("params.yaml", ["ingest.source=digits", "ingest.digits.limit=50"])  # doctest: +SKIP
        >>> result = run_ingest(params)  # doctest: +SKIP
        >>> result.seen == result.accepted + result.quarantined + result.duplicates  # doctest: +SKIP
        True
    """
    from cvplatform.utils.logs import quiet_libraries

    quiet_libraries()  # no third-party INFO floods in task logs and notebooks
    import pandas as pd

    ip = params.ingest
    paths = ProjectPaths.at(root)
    listing = open_source(ip, paths, annotations=annotated.annotation_spec(params))
    items = list(listing.items)
    spec = listing.spec.spec
    if not items:
        raise SourceError(
            f"{spec}: no files found in {listing.root}. Put images there (one sub-folder per class, "
            "or files listed in ingest.labels_csv) or point ingest.source elsewhere."
        )
    ann = annotated.read_annotations(listing.root, listing.annotations) if listing.annotations else None
    if ann is not None:  # annotation files or entries naming no image: quarantine rows of their own
        problems = annotated.problem_items(ann, items, str(listing.annotations), listing.root)
        items = sorted([*items, *problems], key=lambda i: i.sort_key)
    log.info("ingest: %d file(s) from %s (root %s)", len(items), spec, listing.root)

    store, pruned, incoming, artifacts = _reset_outputs(params, paths)
    opts = DecodeOptions(
        max_pixels=ip.max_pixels, min_side=ip.min_side, redact=ip.privacy.redact_faces,
        min_face_size=ip.privacy.min_face_size, incoming=str(incoming),
    )
    direct = ann is None  # every listed label is final: each image is written where it stays
    outcomes = _decode_all(_decode_tasks(items, paths.raw, direct), opts, ip.workers)
    boxes = None
    if ann is not None:
        judged = annotated.judge_images(items, outcomes, ann, str(listing.annotations), tolerance=ip.box_tolerance,
                                        keep_background=ip.keep_background)
        items, outcomes, boxes = judged.items, judged.outcomes, judged.boxes

    rejected, by_sha = _group_by_content(items, outcomes)
    placed = _place_images(items, outcomes, by_sha, listing, paths, incoming, ip, rejected, direct)
    shutil.rmtree(incoming)
    keep = ip.quarantine.retention_days != 0
    report_rows = _quarantine_rows(items, rejected, store, paths, keep)
    table, by_class = annotated.write_table(placed.rows, boxes, annotated.table_path(
        paths.resolve(params.project.manifest)), paths.root)
    result = _result(listing, items, placed, report_rows, paths, artifacts, store if keep else None, pruned)
    result.annotations = table.relative_to(paths.root).as_posix()
    if boxes is not None:
        result.annotation_source, result.boxes_by_class = str(listing.annotations), by_class
        result.boxes = sum(by_class.values())
        result.background_images = annotated.count_background(placed.rows, boxes)
    if not result.balanced:  # pragma: no cover - an invariant; failing loudly beats a silent loss
        raise DataError(f"ingest counts do not balance: {result.to_dict()}; this is a bug, please report it")
    if not placed.rows:
        result.write_summary(artifacts)
        raise DataError(
            f"{spec}: none of the {len(items)} file(s) was accepted ({result.by_reason}). "
            f"See {result.report} for the reason of each file."
        )
    manifest = write_manifest(pd.DataFrame(placed.rows), paths.resolve(params.project.manifest))
    result.manifest = manifest.relative_to(paths.root).as_posix()
    result.manifest_sha256 = sha256_file(manifest)
    result.write_summary(artifacts)
    # `dvc metrics show`: the counts a user compares between versions (the rest is in summary.json)
    write_json(artifacts / "metrics.json", {"images": result.accepted, "quarantined": result.quarantined,
                                            **({"boxes": result.boxes} if boxes is not None else {})})
    log.info(
        "ingest: seen %d, accepted %d, quarantined %d %s, duplicates %d",
        result.seen, result.accepted, result.quarantined, result.by_reason, result.duplicates,
    )
    return result


def _result(listing: Any, items: list[SourceItem], placed: _Placed, report_rows: list[tuple[str, ...]],
            paths: ProjectPaths, artifacts: Path, store: Path | None, pruned: int) -> IngestResult:
    """Write the quarantine and duplicates reports; the counts of a run."""
    report = _write_csv(paths.quarantine / REPORT_FILE, REPORT_COLUMNS, report_rows)
    dup_report = _write_csv(artifacts / "duplicates.csv", ("file", "duplicate_of", "sha256", "label"),
                            sorted(placed.duplicates))
    rows = placed.rows

    def rel(p: Path) -> str:
        return p.relative_to(paths.root).as_posix()

    return IngestResult(
        source=listing.spec.spec, seen=len(items), accepted=len(rows), quarantined=len(report_rows),
        duplicates=len(placed.duplicates), by_reason=dict(sorted(Counter(r[1] for r in report_rows).items())),
        by_label=dict(sorted(Counter(str(r["label"]) for r in rows).items())),
        by_split={s: sum(1 for r in rows if r["split"] == s) for s in SPLIT_NAMES}, redacted_faces=placed.faces,
        metadata_columns=list(listing.metadata_columns), raw_dir=rel(paths.raw),
        quarantine_dir=rel(paths.quarantine), originals_dir=rel(store) if store is not None else "",
        originals_pruned=pruned, report=rel(report), duplicates_report=rel(dup_report),
    )


__all__ = [
    "REASONS",
    "DecodeOutcome",
    "IngestResult",
    "NormalisedImage",
    "Rejected",
    "encode_png",
    "label_dirname",
    "normalise_image",
    "prune_quarantine",
    "run_ingest",
    "to_rgb_array",
]
