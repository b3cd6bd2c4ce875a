"""Dynamic micro-batching: batches form, every caller gets its own rows, nothing is dropped."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from cvplatform.errors import ConfigError, ModelError
from cvplatform.serving.batching import MicroBatcher


class Recorder:
    """A batch function that records the batch sizes it saw and tags rows with their batch number."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.delay = delay
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            self.sizes.append(x.shape[0])
            n = len(self.sizes)
            self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and n == self.fail_on:
            raise ModelError("boom")
        return np.concatenate([x * 2, np.full((x.shape[0], 1), n, x.dtype)], axis=1)


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_one_call_and_get_their_own_rows():
    fn = Recorder()

    async def main():
        b = MicroBatcher(fn, max_batch_size=8, max_wait_ms=200, name="t")
        await b.start()
        outs = await asyncio.gather(*(b.submit(np.full((1, 2), i, np.float32)) for i in range(16)))
        await b.close()
        return outs, b

    outs, b = run(main())
    assert fn.sizes == [8, 8]  # 16 requests, two calls
    assert b.batches == 2 and b.rows == 16
    for i, o in enumerate(outs):
        assert o.shape == (1, 3) and o[0, 0] == 2 * i and o[0, 1] == 2 * i
    assert all(t.startswith("batch-t") for t in fn.threads)  # the model ran in the batcher's thread pool


def test_multi_row_items_are_kept_whole_and_a_big_item_runs_alone():
    fn = Recorder()

    async def main():
        b = MicroBatcher(fn, max_batch_size=4, max_wait_ms=100)
        await b.start()
        outs = await asyncio.gather(
            b.submit(np.zeros((3, 1), np.float32)),
            b.submit(np.ones((3, 1), np.float32)),
            b.submit(np.full((10, 1), 5, np.float32)),
        )
        await b.close()
        return outs

    a, c, big = run(main())
    assert sorted(fn.sizes) == [3, 3, 10]  # 3 + 3 > 4: never split an item; 10 > 4 runs alone
    assert a.shape == (3, 2) and (a[:, 0] == 0).all()
    assert c.shape == (3, 2) and (c[:, 0] == 2).all()
    assert big.shape == (10, 2) and (big[:, 0] == 10).all()


def test_a_failing_batch_fails_only_its_callers_and_the_batcher_keeps_working():
    fn = Recorder(fail_on=1)

    async def main():
        b = MicroBatcher(fn, max_batch_size=4, max_wait_ms=50)
        await b.start()
        first = await asyncio.gather(*(b.submit(np.zeros((1, 1), np.float32)) for _ in range(4)),
                                     return_exceptions=True)
        second = await b.submit(np.ones((1, 1), np.float32))
        await b.close()
        return first, second

    first, second = run(main())
    assert all(isinstance(e, ModelError) for e in first)
    assert second[0, 0] == 2


def test_wrong_row_count_from_the_model_is_an_error():
    async def main():
        b = MicroBatcher(lambda x: x[:1], max_batch_size=4, max_wait_ms=50)
        await b.start()
        res = await asyncio.gather(*(b.submit(np.zeros((1, 1), np.float32)) for _ in range(3)),
                                   return_exceptions=True)
        await b.close()
        return res

    res = run(main())
    assert all(isinstance(e, ModelError) and "one output row per input row" in str(e) for e in res)


def test_close_drains_the_queue_and_later_submissions_still_run():
    fn = Recorder(delay=0.05)

    async def main():
        b = MicroBatcher(fn, max_batch_size=2, max_wait_ms=1)
        await b.start()
        tasks = [asyncio.create_task(b.submit(np.full((1, 1), i, np.float32))) for i in range(6)]
        await asyncio.sleep(0)  # queued, mostly not run yet
        await b.close()
        late = await b.submit(np.full((1, 1), 7, np.float32))  # e.g. a request holding a swapped-out model
        return await asyncio.gather(*tasks), late

    outs, late = run(main())
    assert [float(o[0, 0]) for o in outs] == [2.0 * i for i in range(6)]
    assert late[0, 0] == 14


def test_the_event_loop_keeps_running_while_the_model_computes():
    fn = Recorder(delay=0.3)

    async def main():
        b = MicroBatcher(fn, max_batch_size=1, max_wait_ms=0)
        await b.start()
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        await b.submit(np.zeros((1, 1), np.float32))
        t.cancel()
        await b.close()
        return ticks

    assert run(main()) >= 5  # the loop ticked during the 0.3 s model call


def test_a_cancelled_caller_does_not_break_the_others():
    fn = Recorder(delay=0.05)

    async def main():
        b = MicroBatcher(fn, max_batch_size=8, max_wait_ms=50)
        await b.start()
        t1 = asyncio.create_task(b.submit(np.zeros((1, 1), np.float32)))
        t2 = asyncio.create_task(b.submit(np.ones((1, 1), np.float32)))
        await asyncio.sleep(0)
        t1.cancel()
        out = await t2
        await b.close()
        return out, t1

    out, t1 = run(main())
    assert out[0, 0] == 2 and t1.cancelled()


@pytest.mark.parametrize("kw", [{"max_batch_size": 0}, {"max_wait_ms": -1}, {"workers": 0}])
def test_bad_settings_are_rejected(kw):
    with pytest.raises(ConfigError):
        MicroBatcher(lambda x: x, **kw)


def test_a_batch_waits_for_company_only_when_requests_are_announced():
    fn = Recorder()

    async def scenario(announce: bool):
        b = MicroBatcher(fn, max_batch_size=8, max_wait_ms=2000)
        await b.start()
        if announce:
            b.announce()
            b.announce()
        first = asyncio.create_task(b.submit(np.zeros((1, 1), np.float32), announced=announce))
        await asyncio.sleep(0.1)  # the second request is still being decoded
        second = await b.submit(np.ones((1, 1), np.float32), announced=announce)
        await first
        await b.close()
        return second

    fn.sizes.clear()
    run(scenario(announce=False))
    assert fn.sizes == [1, 1]  # nobody announced: the first request did not wait (else both would share one)
    fn.sizes.clear()
    run(scenario(announce=True))
    assert fn.sizes == [2]  # the announced second request joined the first one's batch


def test_withdraw_releases_a_waiting_batch():
    fn = Recorder()

    async def main():
        b = MicroBatcher(fn, max_batch_size=8, max_wait_ms=5000)
        await b.start()
        b.announce()
        b.announce()
        task = asyncio.create_task(b.submit(np.zeros((1, 1), np.float32), announced=True))
        await asyncio.sleep(0.05)
        b.withdraw()  # the other request failed to decode: no reason to keep waiting
        out = await asyncio.wait_for(task, timeout=2)
        await b.close()
        return out

    assert run(main())[0, 0] == 0 and fn.sizes == [1]


def test_the_next_batch_starts_without_waiting_for_the_event_loop():
    """The batch thread forms its next batch itself when the previous one ends: a busy loop cannot idle the model."""
    starts: list[float] = []
    fn = Recorder(delay=0.1)

    def timed(x):
        starts.append(time.perf_counter())
        return fn(x)

    async def main():
        b = MicroBatcher(timed, max_batch_size=8, max_wait_ms=0, name="t")
        await b.start()
        first = asyncio.create_task(b.submit(np.zeros((1, 1), np.float32)))
        await asyncio.sleep(0.03)  # the first batch is running
        rest = [asyncio.create_task(b.submit(np.full((1, 1), i, np.float32))) for i in (1, 2)]
        await asyncio.sleep(0)  # both are queued
        time.sleep(0.3)  # the event loop is busy (e.g. decoding a large request)
        unblocked = time.perf_counter()
        outs = await asyncio.gather(first, *rest)
        await b.close()
        return outs, unblocked

    outs, unblocked = run(main())
    assert fn.sizes == [1, 2]  # the two queued requests shared the second batch
    assert starts[1] < unblocked  # ... which ran while the loop was still blocked
    assert [float(o[0, 0]) for o in outs] == [0.0, 2.0, 4.0]


def test_submit_timed_returns_the_batch_model_time_per_row():
    calls: list[float] = []

    def fn(x: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        time.sleep(0.01)
        calls.append((time.perf_counter() - t0) * 1000.0)
        return x * 2

    async def main():
        b = MicroBatcher(fn, max_batch_size=8, max_wait_ms=200, name="t")
        await b.start()
        outs = await asyncio.gather(*(b.submit_timed(np.full((1, 1), i, np.float32)) for i in range(4)))
        await b.close()
        late = await b.submit_timed(np.ones((2, 1), np.float32))  # after close: runs on its own, still timed
        return outs, late

    outs, late = run(main())
    assert len(calls) == 2  # one batch of 4 rows, one late call of 2 rows
    timings = {t for _, t in outs}
    assert len(timings) == 1  # every item of a batch gets the batch's timing
    (t,) = timings
    assert t.rows == 4
    assert calls[0] / 4 <= t.ms_per_row <= calls[0]  # the call's time split over its 4 rows
    assert [float(o[0, 0]) for o, _ in outs] == [0.0, 2.0, 4.0, 6.0]
    assert late[1].rows == 2 and late[1].ms_per_row >= calls[1] / 2 > 0


def test_calls_that_share_the_machine_are_marked_overlapped():
    from cvplatform.serving.batching import CallTracker

    tracker = CallTracker()
    gate = threading.Event()

    def slow(x: np.ndarray) -> np.ndarray:
        gate.wait(5)
        return x

    async def main():
        a = MicroBatcher(slow, max_batch_size=1, max_wait_ms=0, name="a", tracker=tracker)
        b = MicroBatcher(lambda x: x, max_batch_size=1, max_wait_ms=0, name="b", tracker=tracker)
        await a.start()
        await b.start()
        alone = await b.submit_timed(np.zeros((1, 1), np.float32))  # nothing else running
        pending = asyncio.create_task(a.submit_timed(np.zeros((1, 1), np.float32)))
        while tracker._in_flight == 0:  # a's call has begun
            await asyncio.sleep(0.001)
        during = await b.submit_timed(np.zeros((1, 1), np.float32))  # runs while a's call is in flight
        gate.set()
        long = await pending
        await a.close()
        await b.close()
        return alone[1], during[1], long[1]

    alone, during, long = run(main())
    assert not alone.overlapped
    assert during.overlapped and long.overlapped  # both saw the other


def test_a_model_with_several_outputs_gets_each_output_split_by_rows():
    """RuntimeModel.forward returns every graph output by name (detection: boxes, scores, ...): each caller
    gets its own rows of every output; an output without one row per input fails the whole batch."""
    calls: list[int] = []

    def several(x: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(x.shape[0])
        return {"boxes": np.repeat(x[:, :1, None], 4, axis=2) * np.ones((1, 3, 4), np.float32),
                "count": x[:, 0].astype(np.int32)}

    async def main():
        b = MicroBatcher(several, max_batch_size=8, max_wait_ms=200, name="multi")
        await b.start()
        outs = await asyncio.gather(*(b.submit(np.full((1 + i % 2, 2), i, np.float32)) for i in range(6)))
        await b.close()
        bad = MicroBatcher(lambda x: {"boxes": np.zeros((x.shape[0] + 1, 4))}, max_batch_size=8, max_wait_ms=1,
                           name="bad")
        await bad.start()
        with pytest.raises(ModelError, match="one output row per input row"):
            await bad.submit(np.zeros((2, 2), np.float32))
        await bad.close()
        return outs

    outs = run(main())
    assert sum(calls) == 9
    for i, o in enumerate(outs):
        rows = 1 + i % 2
        assert set(o) == {"boxes", "count"}
        assert o["boxes"].shape == (rows, 3, 4) and (o["boxes"] == i).all()
        assert o["count"].tolist() == [i] * rows
