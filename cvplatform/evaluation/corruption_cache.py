"""An on-disk cache of corrupted scenario pixels, reused across runs while the split is unchanged.

Corrupting the images is most of evaluation's own cost (``benchmarks/evaluate.py``), and its result
depends only on what the key below covers, so ``evaluate`` and export's INT8 suite comparison keep
each corruption scenario's pixels in ``evaluate.corruption_cache`` (default
``.cvplatform/cache/corruptions``, ``null`` turns it off) and load them on the next run
instead of corrupting the images again.

The key of one scenario is the sha256 of:

* the clean pixels the corruption starts from (the split's images decoded and resized to the
  model's input size; any change of image, split, input size, interpolation or decoder changes it)
  and their manifest sha256s, in order;
* the corruption name, the severity and the seed (``project.seed``);
* the corruption code: the source of ``cvplatform/evaluation/corruptions.py`` and the versions of
  numpy, OpenCV and albumentations, whose transforms it uses.

A file is written atomically (temporary file, then rename) and read as a memory map; a file that
cannot be read or has the wrong shape is recomputed and replaced, and a folder that cannot be
written only costs the speed-up (a warning): the cache never changes a result. Delete the folder
to reclaim the space (about ``images x side x side x 3`` bytes per corruption scenario).

Example:
    >>> cache = CorruptionCache(".cvplatform/cache/corruptions")  # doctest: +SKIP
    >>> pixels = cache.get_or_compute(key, lambda: apply_corruption(...))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

log = logging.getLogger(__name__)

#: Bump to invalidate every cached file when the file format changes.
FORMAT = 1


@cache
def code_fingerprint() -> str:
    """sha256 over the corruption code and the libraries it runs on (part of every key)."""
    import albumentations
    import cv2
    import numpy as np

    from cvplatform.evaluation import corruptions

    h = hashlib.sha256(Path(corruptions.__file__).read_bytes())
    h.update(f"|numpy={np.__version__}|cv2={cv2.__version__}|albumentations={albumentations.__version__}"
             f"|format={FORMAT}".encode())
    return h.hexdigest()


def pixels_fingerprint(images: np.ndarray, ids: Sequence[str]) -> str:
    """sha256 of clean uint8 pixels (shape, dtype, bytes) and their image ids, in order."""
    import numpy as np

    x = np.ascontiguousarray(images)
    h = hashlib.sha256(f"{x.shape}|{x.dtype}|".encode())
    h.update(memoryview(x).cast("B"))
    h.update("\n".join(str(i) for i in ids).encode())
    return h.hexdigest()


def scenario_key(clean: str, corruption: str, severity: int, seed: int) -> str:
    """The cache key of one corruption scenario over clean pixels with fingerprint ``clean``."""
    text = f"{clean}|{corruption}|{int(severity)}|{int(seed)}|{code_fingerprint()}"
    return hashlib.sha256(text.encode()).hexdigest()


class CorruptionCache:
    """Corrupted pixels by key, as ``<key>.npy`` files in one folder; counts its hits and misses."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0
        self._unwritable = False

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.npy"

    def get_or_compute(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array of ``key`` (read-only memory map), or ``compute()`` stored under it."""
        cached = self._load(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        value = compute()
        self._store(key, value)
        return value

    def _load(self, key: str) -> np.ndarray | None:
        import numpy as np

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            log.warning("corruption cache: %s is unreadable (%s); recomputing it", path, exc)
            return None
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3:
            log.warning("corruption cache: %s holds %s %s, not uint8 NHWC pixels; recomputing it", path,
                        arr.dtype, arr.shape)
            return None
        return arr

    def _store(self, key: str, value: np.ndarray) -> None:
        import numpy as np

        if self._unwritable:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.save(fh, np.ascontiguousarray(value), allow_pickle=False)
                os.replace(tmp, self.path(key))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            self._unwritable = True
            log.warning("corruption cache: cannot write to %s (%s); evaluation goes on without the cache. "
                        "Fix the folder's permissions or set evaluate.corruption_cache: null.", self.directory, exc)

    def summary(self) -> str:
        """One log line: how many scenarios were reused."""
        total = self.hits + self.misses
        return f"corruption cache {self.directory}: {self.hits} of {total} corruption scenario(s) reused"


def open_cache(setting: str | None, root: str | os.PathLike[str]) -> CorruptionCache | None:
    """The cache of ``evaluate.corruption_cache`` (a folder, relative to the project ``root``), or None when off."""
    if setting is None or not str(setting).strip():
        return None
    folder = Path(setting).expanduser()
    return CorruptionCache(folder if folder.is_absolute() else Path(root) / folder)


__all__ = ["CorruptionCache", "code_fingerprint", "open_cache", "pixels_fingerprint", "scenario_key"]
