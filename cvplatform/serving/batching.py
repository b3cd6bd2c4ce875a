"""Dynamic micro-batching: concurrent requests share one onnxruntime call.

:class:`MicroBatcher` collects the preprocessed inputs of concurrent requests
(each ``(k, ...)`` rows) and runs them as one batch once ``max_batch_size``
rows are waiting or the oldest one has waited ``max_wait_ms``. The model runs in
a dedicated thread pool (``workers`` threads), so the asyncio event loop keeps
accepting requests while onnxruntime computes; while one batch runs, the next
one forms, so batches grow with the load.

Guarantees:

* every submitted item gets exactly its own rows of the output, or the
  exception of its batch (a failing batch fails only the items in it);
* nothing is dropped on :meth:`MicroBatcher.close`: queued items are still run,
  and an item submitted after ``close`` runs on its own (used when a model is
  swapped while requests still hold the old one).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


class MicroBatcher:
    """Batch concurrent :meth:`submit` calls into single calls of ``fn``.

    Args:
        fn: runs one batch in a worker thread (e.g. an onnxruntime session call).
        max_batch_size: most rows per call (a single larger item runs alone).
        max_wait_ms: longest time the oldest waiting item waits for company.
        workers: calls of ``fn`` in flight at once.
        name: shown in thread names and logs.
        on_batch: optional hook called with ``(rows, seconds)`` after each batch.

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
        self.batches = 0
        """Batches run so far."""
        self.rows = 0
        """Rows run so far (through batches)."""
        self._incoming = 0
        """Requests announced (:meth:`announce`) but not yet submitted: a batch waits for company only then."""
        self._pending: collections.deque[_Item] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        """Start the worker tasks on the running event loop."""
        if self._tasks:
            return
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=f"batch-{self.name}")
        self._tasks = [asyncio.create_task(self._worker(), name=f"batcher-{self.name}-{i}") for i in range(self.workers)]

    async def close(self) -> None:
        """Stop accepting batches: run everything already queued, then stop the workers."""
        if self._closed:
            return
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        # items that slipped in between the last worker check and now: run them individually
        while self._pending:
            item = self._pending.popleft()
            await self._run([item], executor=None)
        if self._executor is not None:
            self._executor.shutdown(wait=False)

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
        self._incoming += 1

    def withdraw(self) -> None:
        """Cancel an :meth:`announce` (the request failed before reaching the model)."""
        self._incoming = max(0, self._incoming - 1)
        if self._wakeup is not None:
            self._wakeup.set()

    async def submit(self, x: np.ndarray, *, announced: bool = False) -> np.ndarray:
        """Queue ``x`` (``(k, ...)`` rows) and return the model output rows for it.

        Args:
            x: input rows.
            announced: this request was :meth:`announce` d earlier.

        Raises:
            Exception: whatever ``fn`` raised for the batch this item ran in.
        """
        if announced:
            self._incoming = max(0, self._incoming - 1)
        loop = asyncio.get_running_loop()
        if self._closed or not self._tasks:
            # closed (model swapped out) or never started: run on our own, never drop a request
            return await loop.run_in_executor(None, self.fn, x)
        item = _Item(x, loop.create_future())
        self._pending.append(item)
        assert self._wakeup is not None
        self._wakeup.set()
        return await item.future

    # ------------------------------------------------------------------ workers
    def _take_batch(self) -> list[_Item]:
        batch = [self._pending.popleft()]
        rows = batch[0].rows
        while self._pending and rows + self._pending[0].rows <= self.max_batch_size:
            item = self._pending.popleft()
            batch.append(item)
            rows += item.rows
        return batch

    async def _worker(self) -> None:
        assert self._wakeup is not None
        while True:
            while not self._pending:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            # wait for company (only while announced requests are on their way) until the batch is
            # full or the oldest item's deadline passes
            deadline = self._pending[0].enqueued + self.max_wait_s
            while (not self._closed and self._pending and self._incoming > 0
                   and self.queued_rows < self.max_batch_size):
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
                except TimeoutError:
                    break
            if not self._pending:  # another worker took them
                continue
            batch = self._take_batch()
            if self._pending:
                self._wakeup.set()  # let an idle worker start on the rest
            await self._run(batch, executor=self._executor)
            await asyncio.sleep(0)  # let freshly woken requests enqueue before the next batch

    async def _run(self, batch: list[_Item], executor: ThreadPoolExecutor | None) -> None:
        import numpy as np

        loop = asyncio.get_running_loop()
        live = [it for it in batch if not it.future.done()]  # cancelled callers: skip their rows
        if not live:
            return
        x = live[0].x if len(live) == 1 else np.concatenate([it.x for it in live], axis=0)
        t0 = time.perf_counter()
        try:
            y = await loop.run_in_executor(executor, self.fn, x)
        except Exception as exc:  # the model failed: every caller in this batch gets the error
            for it in live:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        seconds = time.perf_counter() - t0
        self.batches += 1
        self.rows += int(x.shape[0])
        if self.on_batch is not None:
            try:
                self.on_batch(int(x.shape[0]), seconds)
            except Exception:  # metrics must never break inference
                log.exception("batcher %s: on_batch hook failed", self.name)
        if getattr(y, "shape", None) is None or y.shape[0] != x.shape[0]:
            from cvplatform.errors import ModelError

            exc = ModelError(
                f"model {self.name}: returned {getattr(y, 'shape', type(y).__name__)} rows for a batch of "
                f"{x.shape[0]}; the model must return one output row per input row."
            )
            for it in live:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        start = 0
        for it in live:
            if not it.future.done():
                it.future.set_result(y[start : start + it.rows])
            start += it.rows


__all__ = ["BatchFn", "BatchHook", "MicroBatcher"]
