"""The serving traffic log: one JSON line per served image, read back by drift monitoring.

The inference server keeps one :class:`InferenceLogger` and calls
:meth:`InferenceLogger.log` once per prediction::

    logger = InferenceLogger.from_params(params, root)          # at start-up
    logger.log(image, model="cvplatform", version="3", variant="champion",
               request_id=rid, predicted="cat", confidence=0.93)  # per image

Each record (see :data:`LOG_COLUMNS`) holds the UTC time, the model, version and
variant (``champion`` | ``canary`` | ``shadow``) that scored the image, the request
id, the image's input statistics (:mod:`cvplatform.monitoring.stats`), the predicted
class and its confidence (the task's ``decode_top``) and, for a task whose answers are objects
(detection), ``objects``: the served boxes' ``scores``, ``classes`` and ``areas`` (share of the image;
the task's ``object_signals``). No pixels are stored.

Files are ``<dir>/requests-<UTC timestamp>.jsonl``; when the current file would grow
past ``max_bytes`` it is closed and a new one is started (created exclusively, so
several server processes can share one folder). Lines are flushed as they are
written: a reader (:func:`read_log`) sees every finished line, and a line cut short
by a crash is skipped with a warning, never fatal.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cvplatform.errors import ConfigError, DataError
from cvplatform.monitoring.stats import STAT_NAMES

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("champion", "canary", "shadow")
#: Columns of every record, in order (the input statistics sit between request_id and predicted).
LOG_COLUMNS: tuple[str, ...] = (
    "time", "model", "version", "variant", "request_id", *STAT_NAMES, "predicted", "confidence",
)
#: The optional column of a task's objects per image (``{"scores", "classes", "areas"}``; absent for classification).
OBJECTS_COLUMN = "objects"
FILE_PREFIX = "requests-"
FILE_SUFFIX = ".jsonl"
DEFAULT_MAX_BYTES = 10_000_000


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class InferenceLogger:
    """Thread-safe JSONL writer of served predictions with size-based rotation.

    Args:
        directory: Folder of the ``requests-*.jsonl`` files (created on the first record).
        max_bytes: Start a new file when the current one would grow beyond this size.
        clock: Returns the current UTC time (tests inject a fixed clock).
        tag: Added to every file name (``requests-<stamp>-<tag>.jsonl``): one per server worker process, so
            each worker writes its own files (``serve.workers`` > 1).

    Example:
        >>> import numpy as np
        >>> with InferenceLogger("/tmp/requests", max_bytes=1_000_000) as logger:  # doctest: +SKIP
        ...     rec = logger.log(np.zeros((8, 8, 3), np.uint8), model="cvplatform", version="1",
        ...                      variant="champion", request_id="r1", predicted="cat", confidence=0.9)
        >>> rec["brightness"]  # doctest: +SKIP
        0.0
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        clock: Any = None,
        tag: str | None = None,
    ) -> None:
        if int(max_bytes) < 1:
            raise ConfigError(f"InferenceLogger: max_bytes must be >= 1, got {max_bytes!r}.")
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self._clock = clock or _utcnow
        if tag is not None and (not tag or not all(c.isalnum() for c in tag)):
            raise ConfigError(f"InferenceLogger: tag must be letters and digits only, got {tag!r}.")
        self.tag = tag
        self._lock = threading.Lock()
        self._fh: IO[str] | None = None
        self._path: Path | None = None
        self._size = 0
        self.records_written = 0
        self.files_written: list[Path] = []

    @classmethod
    def from_params(cls, params: Any, root: str | os.PathLike[str] | None = None, *,
                    tag: str | None = None) -> InferenceLogger:
        """The logger configured by ``params.monitor`` (``log_dir``, ``log_max_bytes``) under ``root``.

        Example:
            >>> from cvplatform.config import load_params
            >>> logger = InferenceLogger.from_params(load_params("params.yaml"), ".")  # doctest: +SKIP
        """
        from cvplatform.utils.io import ProjectPaths

        cfg = params.monitor
        return cls(ProjectPaths.at(root).resolve(cfg.log_dir), max_bytes=cfg.log_max_bytes, tag=tag)

    # ---------------------------------------------------------------- writing
    def now(self) -> datetime:
        """The current UTC time from the logger's clock (the time a record is stamped with)."""
        return self._clock()

    @property
    def current_file(self) -> Path | None:
        """The file being appended to (None before the first record / after close)."""
        return self._path

    def log(
        self,
        image: np.ndarray | None,
        *,
        model: str,
        version: str | int,
        variant: str,
        request_id: str,
        predicted: str,
        confidence: float,
        stats: Mapping[str, float] | None = None,
        flush: bool = True,
        at: datetime | None = None,
        objects: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one served prediction; returns the record written.

        Args:
            image: The decoded ``uint8`` RGB image the model scored, or None when only a
                preprocessed tensor was received (the statistics are then null).
            model: Registered model name.
            version: Model version.
            variant: ``champion`` | ``canary`` | ``shadow``.
            request_id: The request id (one request may log several images).
            predicted: Predicted class name.
            confidence: Top-1 probability.
            stats: Precomputed :func:`~cvplatform.monitoring.stats.image_stats` (skips recomputing).
            flush: Flush the file after this line (False: the caller calls :meth:`flush` after a
                group of records, as :class:`InferenceLogQueue` does).
            at: When the image was served (default: now, from the logger's clock).
            objects: The image's objects (``task.object_signals``: ``scores``, ``classes``, ``areas`` lists), or
                None (a task answering one class per image).

        Raises:
            DataError: an unknown variant, a non-finite confidence or a malformed image.

        Example:
            >>> logger.log(img, model="cvplatform", version="3", variant="canary",  # doctest: +SKIP
            ...            request_id="abc", predicted="dog", confidence=0.71)
        """
        if variant not in VARIANTS:
            raise DataError(f"InferenceLogger.log: variant {variant!r} is not one of {list(VARIANTS)}.")
        conf = float(confidence)
        if not math.isfinite(conf):
            raise DataError(f"InferenceLogger.log: confidence must be a finite number, got {confidence!r}.")
        import orjson

        if stats is None and image is not None:
            from cvplatform.monitoring.stats import image_stats

            stats = image_stats(image)
        record: dict[str, Any] = {
            "time": _iso(at if at is not None else self._clock()),
            "model": str(model),
            "version": str(version),
            "variant": variant,
            "request_id": str(request_id),
        }
        for name in STAT_NAMES:
            v = None if stats is None or stats.get(name) is None else float(stats[name])
            record[name] = v if v is not None and math.isfinite(v) else None  # non-finite: logged as missing
        record["predicted"] = str(predicted)
        record["confidence"] = conf
        if objects is not None:
            record[OBJECTS_COLUMN] = {k: list(objects.get(k) or []) for k in ("scores", "classes", "areas")}
        line = orjson.dumps(record).decode("utf-8") + "\n"
        data = line.encode("utf-8")
        with self._lock:
            if self._fh is None or (self._size > 0 and self._size + len(data) > self.max_bytes):
                self._rotate()
            assert self._fh is not None
            self._fh.write(line)
            if flush:
                self._fh.flush()
            self._size += len(data)
            self.records_written += 1
        return record

    def _rotate(self) -> None:
        """Close the current file and exclusively create the next one (caller holds the lock)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = self._clock()
        stamp = (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).astimezone(UTC)
        base = stamp.strftime("%Y%m%dT%H%M%S.%fZ") + (f"-{self.tag}" if self.tag else "")
        for n in range(10_000):
            path = self.directory / f"{FILE_PREFIX}{base}{'' if n == 0 else f'-{n}'}{FILE_SUFFIX}"
            try:
                self._fh = path.open("x", encoding="utf-8")
            except FileExistsError:
                continue
            self._path, self._size = path, 0
            self.files_written.append(path)
            log.debug("inference log: writing %s", path)
            return
        raise DataError(f"{self.directory}: cannot create a new {FILE_PREFIX}{base}*.jsonl file (all names taken).")

    def flush(self) -> None:
        """Flush the current file, so readers see every record written so far."""
        with self._lock:
            if self._fh is not None:
                self._fh.flush()

    def close(self) -> None:
        """Close the current file (a later :meth:`log` starts a new one)."""
        with self._lock:
            if self._fh is not None:
                self._fh.close()
            self._fh, self._path, self._size = None, None, 0

    def __enter__(self) -> InferenceLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InferenceLogQueue:
    """Feeds an :class:`InferenceLogger` from one background thread, so serving only enqueues.

    The inference server calls :meth:`submit` once per answered request on its event loop: a
    ``put`` on a bounded queue, no thread hop, no file I/O. A daemon writer thread computes the
    image statistics, writes the lines and flushes once per group of records it drained.
    When ``max_pending`` requests are waiting (the disk cannot keep up), further requests are
    not logged and counted in :attr:`dropped`: monitoring never slows serving down. The decoded
    images waiting in the queue are bounded too (``max_pending_bytes``), so large images cannot pile
    up in memory behind a slow disk.
    :meth:`close` writes everything queued before it, then closes the file.

    Args:
        logger: where the records go.
        max_pending: most requests waiting to be written.
        max_pending_bytes: most bytes of decoded images waiting (a request above it is dropped).

    Example:
        >>> import numpy as np
        >>> q = InferenceLogQueue(InferenceLogger("/tmp/requests"))  # doctest: +SKIP
        >>> q.submit([np.zeros((8, 8, 3), np.uint8)], model="m", version="1", variant="champion",
        ...          request_id="r1", predicted=["cat"], confidence=[0.9])  # doctest: +SKIP
        True
        >>> q.close()  # doctest: +SKIP
    """

    _STOP = object()

    def __init__(self, logger: InferenceLogger, max_pending: int = 10_000,
                 max_pending_bytes: int = 256 * 1024 * 1024) -> None:
        import queue

        if int(max_pending) < 1:
            raise ConfigError(f"InferenceLogQueue: max_pending must be >= 1, got {max_pending!r}.")
        if int(max_pending_bytes) < 1:
            raise ConfigError(f"InferenceLogQueue: max_pending_bytes must be >= 1, got {max_pending_bytes!r}.")
        self.max_pending_bytes = int(max_pending_bytes)
        self._pending_bytes = 0
        self._bytes_lock = threading.Lock()
        self.logger = logger
        self.dropped = 0
        """Requests not logged because the queue was full."""
        self.failed = 0
        """Records the writer could not write (bad record or I/O error; logged as warnings)."""
        self._queue: queue.Queue = queue.Queue(maxsize=int(max_pending))
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="inference-log-writer", daemon=True)
        self._thread.start()

    def submit(
        self,
        images: list[np.ndarray] | None,
        *,
        model: str,
        version: str | int,
        variant: str,
        request_id: str,
        predicted: list[str],
        confidence: list[float],
        on_done: Callable[[], None] | None = None,
        objects: list[dict[str, Any]] | None = None,
    ) -> bool:
        """Queue the records of one request (one per image); False if it was dropped (queue full / closed).

        ``on_done`` is called by the writer thread once it no longer needs ``images`` (only when
        the request was queued); the server uses it to keep the images charged to its memory budget.
        """
        import queue

        size = sum(int(getattr(img, "nbytes", 0)) for img in images) if images is not None else 0
        with self._bytes_lock:
            if self._closed or self._pending_bytes + size > self.max_pending_bytes:
                self.dropped += 1
                return False
            self._pending_bytes += size
        try:
            self._queue.put_nowait((images, model, version, variant, request_id, predicted, confidence,
                                    self.logger.now(), size, on_done, objects))
        except queue.Full:
            with self._bytes_lock:
                self._pending_bytes -= size
                self.dropped += 1
            return False
        return True

    def drain(self) -> None:
        """Block until everything submitted so far is written and flushed."""
        self._queue.join()

    def close(self) -> None:
        """Write everything queued, stop the writer thread and close the file."""
        if not self._closed:
            self._closed = True
            self._queue.put(self._STOP)
            self._thread.join()
        self.logger.close()

    def _write(self, item: tuple) -> None:
        images, model, version, variant, request_id, predicted, confidence, at, _, _, objects = item
        for i, (cls, conf) in enumerate(zip(predicted, confidence, strict=True)):
            img = images[i] if images is not None and i < len(images) else None
            obj = objects[i] if objects is not None and i < len(objects) else None
            try:
                self.logger.log(img, model=model, version=version, variant=variant, request_id=request_id,
                                predicted=cls, confidence=conf, flush=False, at=at, objects=obj)
            except Exception as exc:  # one bad record must not stop the writer
                self.failed += 1
                log.warning("inference log: record of request %s not written: %s", request_id, exc)

    def _run(self) -> None:
        import queue

        stop = False
        while not stop:
            batch = [self._queue.get()]
            while True:  # take what else is waiting (after a stop: everything), then flush once
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            done: list[Callable[[], None]] = []
            for item in batch:
                if item is self._STOP:
                    stop = True
                else:
                    try:
                        self._write(item)
                    finally:
                        with self._bytes_lock:
                            self._pending_bytes -= item[8]
                        if item[9] is not None:
                            done.append(item[9])
            try:
                self.logger.flush()
            except Exception as exc:
                log.warning("inference log: flush failed: %s", exc)
            n = len(batch)
            batch.clear()  # drop the images now, not when the next request arrives
            item = None
            for callback in done:
                try:
                    callback()
                except Exception as exc:
                    log.warning("inference log: on_done callback failed: %s", exc)
            for _ in range(n):
                self._queue.task_done()


# --------------------------------------------------------------------------- reading
def _as_utc(t: datetime | str | None) -> datetime | None:
    if t is None:
        return None
    if isinstance(t, str):
        try:
            t = datetime.fromisoformat(t.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"since/until: {t!r} is not an ISO-8601 time; use e.g. 2026-01-31T12:00:00Z."
            ) from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


#: Clock-skew allowance when whole files are skipped by modification / creation time.
MTIME_SLACK = timedelta(hours=1)


def _file_created(path: Path) -> datetime | None:
    """The UTC creation time encoded in a ``requests-<stamp>[-n].jsonl`` name (None if unparsable)."""
    stem = path.name[len(FILE_PREFIX): -len(FILE_SUFFIX)].split("-", 1)[0]
    try:
        return datetime.strptime(stem, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def log_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The ``requests-*.jsonl`` files of ``directory``, oldest first (empty if it does not exist)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}") if p.is_file())


def read_log(
    directory: str | os.PathLike[str],
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> pd.DataFrame:
    """Read every record logged in ``directory`` with ``since <= time < until``.

    Naive datetimes are taken as UTC. Files last modified before ``since`` are not
    opened. Blank lines are ignored; a malformed line (e.g. cut short by a crash) is
    skipped with a warning naming the file and line.

    Returns:
        A DataFrame with the :data:`LOG_COLUMNS` (in that order, also when empty), plus
        :data:`OBJECTS_COLUMN` when any record has objects (None in the records without),
        ``time`` as UTC timestamps, sorted by time.

    Example:
        >>> df = read_log("artifacts/serving/requests", since="2026-01-31T00:00:00Z")  # doctest: +SKIP
        >>> df.groupby("variant").size()  # doctest: +SKIP
    """
    import pandas as pd

    lo, hi = _as_utc(since), _as_utc(until)
    rows: list[dict[str, Any]] = []
    bad = 0
    for path in log_files(directory):
        if lo is not None and datetime.fromtimestamp(path.stat().st_mtime, UTC) < lo - MTIME_SLACK:
            continue  # nothing written to it since `since` (with slack for clock skew)
        created = _file_created(path)
        if hi is not None and created is not None and created > hi + MTIME_SLACK:
            continue  # started after `until`: every record in it is later
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict) or "time" not in rec:
                        raise ValueError("not a record")
                except ValueError:
                    bad += 1
                    if bad <= 5:
                        log.warning("%s:%d: skipping a malformed inference-log line", path, n)
                    continue
                rows.append(rec)
    if bad > 5:
        log.warning("%s: skipped %d malformed inference-log lines in all", directory, bad)
    columns = list(LOG_COLUMNS) + ([OBJECTS_COLUMN] if any(OBJECTS_COLUMN in r for r in rows) else [])
    df = pd.DataFrame(rows, columns=columns) if rows else pd.DataFrame(
        {c: pd.Series(dtype="object") for c in LOG_COLUMNS}
    )
    df["time"] = pd.to_datetime(df["time"], utc=True, format="ISO8601", errors="coerce")
    for c in (*STAT_NAMES, "confidence"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in ("model", "version", "variant", "request_id", "predicted"):
        df[c] = df[c].astype("object").where(df[c].notna(), None)
        df[c] = df[c].map(lambda v: None if v is None else str(v))
    df = df[df["time"].notna()]
    if lo is not None:
        df = df[df["time"] >= pd.Timestamp(lo)]
    if hi is not None:
        df = df[df["time"] < pd.Timestamp(hi)]
    return df.sort_values("time", kind="mergesort").reset_index(drop=True)


__all__ = ["DEFAULT_MAX_BYTES", "LOG_COLUMNS", "OBJECTS_COLUMN", "VARIANTS", "InferenceLogQueue", "InferenceLogger", "log_files",
           "read_log"]
