"""Dynamic micro-batching: concurrent requests share one onnxruntime call.

:class:`MicroBatcher` collects the preprocessed inputs of concurrent requests
(each ``(k, ...)`` rows) and runs them as one batch once ``max_batch_size``
rows are waiting or the oldest one has waited ``max_wait_ms``. The model runs in
``workers`` dedicated batch threads, so the asyncio event loop keeps accepting
requests while onnxruntime computes. A batch thread forms its next batch itself,
from everything queued meanwhile, the moment it finishes the previous one: the
model never waits for the event loop between batches, and batches grow with the
load. Results go back to the callers through the loop (``call_soon_threadsafe``).

Guarantees:

* every submitted item gets exactly its own rows of the output, or the
  exception of its batch (a failing batch fails only the items in it);
* items submitted in one turn of the event loop are seen together (the batch
  threads are woken once per turn), so a burst of requests shares a batch;
* nothing is dropped on :meth:`MicroBatcher.close`: queued items are still run,
  and an item submitted after ``close`` runs on its own (used when a model is
  swapped while requests still hold the old one).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cvplatform.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

log = logging.getLogger(__name__)

BatchFn = Callable[["np.ndarray"], "np.ndarray"]
"""Runs one batch: ``(N, ...)`` input rows -> ``(N, ...)`` output rows (called in a worker thread)."""
BatchHook = Callable[[int, float], None]
"""Called after each batch with ``(rows, seconds)`` (metrics)."""


@dataclass(frozen=True)
class BatchTime:
    """The model call a request ran in: its time per row in ms, its rows (the batch size), and whether
    another model call (of any batcher sharing the same :class:`CallTracker`) overlapped it."""

    ms_per_row: float
    rows: int
    overlapped: bool = False


class CallTracker:
    """Counts model calls in flight across the batchers that share it (a server's champion and canary).

    A call that began while another was running, or during which another began, *overlapped*: on
    shared cores its wall time includes the other call's contention, so it is only compared with
    other overlapped calls.

    Example:
        >>> t = CallTracker()
        >>> a = t.begin(); b = t.begin()
        >>> t.end(b), t.end(a)
        (True, True)
        >>> t.end(t.begin())
        False
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._started = 0

    def begin(self) -> tuple[int, int]:
        """Mark a call as started; return the token :meth:`end` needs."""
        with self._lock:
            token = (self._in_flight, self._started + 1)
            self._in_flight += 1
            self._started += 1
            return token

    def end(self, token: tuple[int, int]) -> bool:
        """Mark the call of ``token`` as ended; return whether another call overlapped it."""
        others_at_start, started = token
        with self._lock:
            self._in_flight -= 1
            return others_at_start > 0 or self._started != started


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    timing: BatchTime | None = None
    """Set on delivery: the model time of the batch this item ran in (queue wait excluded)."""

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


class MicroBatcher:
    """Batch concurrent :meth:`submit` calls into single calls of ``fn``.

    Args:
        fn: runs one batch in a batch thread (e.g. an onnxruntime session call).
        max_batch_size: most rows per call (a single larger item runs alone).
        max_wait_ms: longest time the oldest waiting item waits for company.
        workers: calls of ``fn`` in flight at once (one batch thread each).
        name: shown in thread names and logs.
        on_batch: optional hook called on the event loop with ``(rows, seconds)`` after each batch.
        tracker: shared with the other batchers of a server, so each call knows whether another overlapped it.

    Example:
        >>> import asyncio, numpy as np
        >>> async def demo():
        ...     b = MicroBatcher(lambda x: x * 2, max_batch_size=8, max_wait_ms=5)
        ...     await b.start()
        ...     outs = await asyncio.gather(*(b.submit(np.full((1, 2), i, np.float32)) for i in range(4)))
        ...     await b.close()
        ...     return [float(o[0, 0]) for o in outs], b.batches
        >>> asyncio.run(demo())
        ([0.0, 2.0, 4.0, 6.0], 1)
    """

    def __init__(
        self,
        fn: BatchFn,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 2.0,
        workers: int = 1,
        name: str = "model",
        on_batch: BatchHook | None = None,
        tracker: CallTracker | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ConfigError(f"batching.max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ConfigError(f"batching.max_wait_ms must be >= 0, got {max_wait_ms}")
        if workers < 1:
            raise ConfigError(f"batching.workers must be >= 1, got {workers}")
        self.fn = fn
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.workers = int(workers)
        self.name = name
        self.on_batch = on_batch
        self.tracker = tracker or CallTracker()
        self.batches = 0
        """Batches run so far."""
        self.rows = 0
        """Rows run so far (through batches)."""
        self._cond = threading.Condition()
        """Guards ``_pending``, ``_incoming`` and ``_closed``; batch threads wait on it."""
        self._incoming = 0
        """Requests announced (:meth:`announce`) but not yet submitted: a batch waits for company only then."""
        self._pending: collections.deque[_Item] = collections.deque()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick_scheduled = False
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        """Start the batch threads; results are delivered on the running event loop."""
        if self._threads:
            return
        self._loop = asyncio.get_running_loop()
        self._threads = [threading.Thread(target=self._thread_main, name=f"batch-{self.name}-{i}", daemon=True)
                         for i in range(self.workers)]
        for t in self._threads:
            t.start()

    async def close(self) -> None:
        """Stop accepting batches: run everything already queued, then stop the batch threads."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            await asyncio.to_thread(t.join)
        await asyncio.sleep(0)  # let the last deliveries (call_soon_threadsafe) run

    # ------------------------------------------------------------------ submit
    @property
    def queued_rows(self) -> int:
        return sum(it.rows for it in self._pending)

    def announce(self) -> None:
        """Say a request is on its way (being decoded / preprocessed) and will :meth:`submit` soon.

        A forming batch waits up to ``max_wait_ms`` for company only while announced requests are
        still outstanding; with nothing announced it runs at once (no idle wait at low load).
        Every ``announce`` must be followed by ``submit(..., announced=True)`` or :meth:`withdraw`.
        """
        with self._cond:
            self._incoming += 1

    def withdraw(self) -> None:
        """Cancel an :meth:`announce` (the request failed before reaching the model)."""
        with self._cond:
            self._incoming = max(0, self._incoming - 1)
        self._schedule_kick()

    async def submit(self, x: np.ndarray, *, announced: bool = False) -> np.ndarray:
        """Queue ``x`` (``(k, ...)`` rows) and return the model output rows for it.

        Args:
            x: input rows.
            announced: this request was :meth:`announce` d earlier.

        Raises:
            Exception: whatever ``fn`` raised for the batch this item ran in.
        """
        return (await self.submit_timed(x, announced=announced))[0]

    async def submit_timed(self, x: np.ndarray, *, announced: bool = False) -> tuple[np.ndarray, BatchTime]:
        """:meth:`submit`, also returning the :class:`BatchTime` of the call ``x`` ran in.

        The time is the ``fn`` call alone (no queue wait) divided by the batch's rows: what one image
        cost the model at that batch size, comparable between models at the same batch size.
        """
        loop = asyncio.get_running_loop()
        with self._cond:
            if announced:
                self._incoming = max(0, self._incoming - 1)
            queued = not self._closed and bool(self._threads)
            if queued:
                item = _Item(x, loop.create_future())
                self._pending.append(item)
        if not queued:
            # closed (model swapped out) or never started: run on our own, never drop a request
            token = self.tracker.begin()
            t0 = time.perf_counter()
            try:
                y = await loop.run_in_executor(None, self.fn, x)
            finally:
                overlapped = self.tracker.end(token)
            rows = max(1, int(x.shape[0]))
            return y, BatchTime((time.perf_counter() - t0) * 1000.0 / rows, rows, overlapped)
        self._schedule_kick()
        y = await item.future
        return y, item.timing if item.timing is not None else BatchTime(0.0, item.rows)

    def _schedule_kick(self) -> None:
        """Wake a batch thread at the end of this loop turn (once), after every submit of the turn."""
        if self._kick_scheduled or self._loop is None:
            return
        self._kick_scheduled = True
        self._loop.call_soon(self._kick)

    def _kick(self) -> None:
        self._kick_scheduled = False
        with self._cond:
            self._cond.notify()

    # ------------------------------------------------------------------ batch threads
    def _take_batch(self) -> list[_Item]:
        batch = [self._pending.popleft()]
        rows = batch[0].rows
        while self._pending and rows + self._pending[0].rows <= self.max_batch_size:
            item = self._pending.popleft()
            batch.append(item)
            rows += item.rows
        return batch

    def _next_batch(self) -> list[_Item] | None:
        """Wait for work and form the next batch (None: closed and nothing left to run)."""
        with self._cond:
            while True:
                while not self._pending:
                    if self._closed:
                        return None
                    self._cond.wait()
                # wait for company (only while announced requests are on their way) until the batch
                # is full or the oldest item's deadline passes
                deadline = self._pending[0].enqueued + self.max_wait_s
                while (not self._closed and self._pending and self._incoming > 0
                       and self.queued_rows < self.max_batch_size):
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if not self._pending:  # another batch thread took them
                    continue
                batch = self._take_batch()
                if self._pending:
                    self._cond.notify()  # let an idle batch thread start on the rest
                return batch

    def _thread_main(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except Exception:  # never lose the thread: the callers get the error
                log.exception("batcher %s: batch failed unexpectedly", self.name)

    def _run(self, batch: list[_Item]) -> None:
        import numpy as np

        live = [it for it in batch if not it.future.done()]  # cancelled callers: skip their rows
        if not live:
            return
        x = live[0].x if len(live) == 1 else np.concatenate([it.x for it in live], axis=0)
        token = self.tracker.begin()
        t0 = time.perf_counter()
        try:
            y = self.fn(x)
        except Exception as exc:  # the model failed: every caller in this batch gets the error
            self.tracker.end(token)
            self._deliver_soon(live, None, exc, 0, 0.0)
            return
        seconds = time.perf_counter() - t0
        overlapped = self.tracker.end(token)
        arrays = list(y.values()) if isinstance(y, dict) else [y]
        if not arrays or any(getattr(a, "shape", None) is None or not a.shape or a.shape[0] != x.shape[0]
                             for a in arrays):
            from cvplatform.errors import ModelError

            shapes = ({k: getattr(a, "shape", type(a).__name__) for k, a in y.items()} if isinstance(y, dict)
                      else getattr(y, "shape", type(y).__name__))
            exc = ModelError(
                f"model {self.name}: returned {shapes} rows for a batch of "
                f"{x.shape[0]}; the model must return one output row per input row."
            )
            self._deliver_soon(live, None, exc, 0, 0.0)
            return
        self.batches += 1
        self.rows += int(x.shape[0])
        self._deliver_soon(live, y, None, int(x.shape[0]), seconds, overlapped)

    def _deliver_soon(self, live: list[_Item], y: np.ndarray | None, exc: BaseException | None, rows: int,
                      seconds: float, overlapped: bool = False) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._deliver, live, y, exc, rows, seconds, overlapped)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is waiting any more
            log.debug("batcher %s: event loop closed, %d result(s) dropped", self.name, len(live))

    def _deliver(self, live: list[_Item], y: np.ndarray | None, exc: BaseException | None, rows: int,
                 seconds: float, overlapped: bool = False) -> None:
        """On the event loop: the metrics hook, then every caller's rows (or the batch's error)."""
        if y is not None and self.on_batch is not None:
            try:
                self.on_batch(rows, seconds)
            except Exception:  # metrics must never break inference
                log.exception("batcher %s: on_batch hook failed", self.name)
        start = 0
        timing = BatchTime(seconds * 1000.0 / rows, rows, overlapped) if rows else None
        for it in live:
            it.timing = timing
            if not it.future.done():
                if y is None:
                    it.future.set_exception(exc if exc is not None else RuntimeError("batch failed"))
                elif isinstance(y, dict):  # several outputs (detection: boxes, scores, ...): each split by rows
                    it.future.set_result({k: v[start : start + it.rows] for k, v in y.items()})
                else:
                    it.future.set_result(y[start : start + it.rows])
            start += it.rows


__all__ = ["BatchFn", "BatchHook", "BatchTime", "CallTracker", "MicroBatcher"]
