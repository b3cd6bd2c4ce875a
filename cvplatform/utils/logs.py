"""Logging that stays quiet by default, and progress that shows in any log.

* :func:`configure_logging` is what the CLI calls: cvplatform's own messages at INFO
  (DEBUG with ``-v``), third-party libraries at WARNING (INFO with ``-v``), so a stage
  prints its story and not Great Expectations' or Lightning's.
* :func:`quiet_libraries` applies the same rule where cvplatform does not own the logging
  set-up (an Airflow task, a notebook): it only raises the level of the known noisy
  libraries, and does nothing when cvplatform's own logger is at DEBUG.
* :class:`Progress` reports the progress of a long loop: a tqdm bar on an interactive
  terminal, otherwise (Airflow task logs, CI, ``2> file``) one log line every
  ``every_s`` seconds and at the end, e.g. ``ingest: 1200/1797 images (67%), 3.1 s, ~1.5 s left``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

#: Libraries that log at INFO (or louder) during normal operation.
NOISY_LOGGERS: tuple[str, ...] = (
    "great_expectations",
    "mlflow",
    "alembic",
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "lightning_fabric",
    "urllib3",
    "botocore",
    "boto3",
    "s3transfer",
    "httpx",
    "httpcore",
    "dvc",
    "dvc_objects",
    "dvc_data",
    "filelock",
    "matplotlib",
    "PIL",
    "numexpr",
    "asyncio",
    "onnxruntime",
    "torch",
    "git",
)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: bool = False) -> None:
    """Set up logging for a command-line run.

    Args:
        verbose: ``-v``: cvplatform at DEBUG and third-party libraries at INFO.

    Example:
        >>> configure_logging(verbose=False)
        >>> logging.getLogger("great_expectations").getEffectiveLevel() == logging.WARNING
        True
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=LOG_FORMAT,
                        stream=sys.stderr, force=True)
    logging.getLogger("cvplatform").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def quiet_libraries() -> None:
    """Raise the known noisy libraries to WARNING unless cvplatform's logger is at DEBUG.

    Stage functions call this, so an Airflow task log or a notebook cell is not flooded
    with third-party INFO lines either.
    """
    if logging.getLogger("cvplatform").getEffectiveLevel() <= logging.DEBUG:
        return
    for name in NOISY_LOGGERS:
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET or lg.level < logging.WARNING:
            lg.setLevel(logging.WARNING)


def _interactive() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Progress of a loop with a known total, as a bar on a terminal or as periodic log lines.

    Example:
        >>> log = logging.getLogger("cvplatform.demo")
        >>> with Progress("ingest", total=3, unit="images", logger=log) as p:
        ...     for _ in range(3):
        ...         p.update()
    """

    def __init__(self, desc: str, total: int, *, unit: str = "items", logger: logging.Logger | None = None,
                 every_s: float = 10.0, bar: bool | None = None) -> None:
        self.desc, self.total, self.unit = desc, max(int(total), 0), unit
        self.log = logger or logging.getLogger("cvplatform")
        self.every_s = every_s
        self.done = 0
        self._t0 = self._last = time.monotonic()
        self._bar: Any = None
        if bar if bar is not None else _interactive():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=sys.stderr, mininterval=0.5, leave=False)

    def __enter__(self) -> Progress:
        if self._bar is None:
            self.log.info("%s: 0/%d %s", self.desc, self.total, self.unit)
        return self

    def update(self, n: int = 1, note: str = "") -> None:
        """Count ``n`` more items; log a line when ``every_s`` has passed since the last one."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s and self.done < self.total:
            self._last = now
            self.log.info("%s", self._line(note))

    def _line(self, note: str = "") -> str:
        elapsed = time.monotonic() - self._t0
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = ""
        if 0 < self.done < self.total:
            eta = f", ~{elapsed / self.done * (self.total - self.done):.0f} s left"
        return f"{self.desc}: {self.done}/{self.total} {self.unit}{pct}, {elapsed:.1f} s{eta}" + (
            f" [{note}]" if note else "")

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
        if exc[0] is None:
            self.log.info("%s", self._line())


def track(items: Iterable[T], desc: str, total: int | None = None, **kwargs: Any) -> Iterator[T]:
    """Iterate ``items`` with a :class:`Progress` (``total`` defaults to ``len(items)``).

    Example:
        >>> list(track([1, 2], "demo", logger=logging.getLogger("cvplatform.demo")))
        [1, 2]
    """
    n = total if total is not None else len(items)  # type: ignore[arg-type]
    with Progress(desc, n, **kwargs) as p:
        for item in items:
            yield item
            p.update()
