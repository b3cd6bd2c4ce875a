"""Several worker processes' consistency pieces: summed statistics and the shared control folder.

Two :class:`WorkerBus` ends on one folder stand for two worker processes (each with its own real
:class:`ModelManager` over the SQLite registry and its own :class:`StatsBook`); the integration test
``tests/integration/test_serving_workers.py`` runs the same through two real processes.
"""

from __future__ import annotations

import asyncio

import pytest

from cvplatform.serving.metrics import ServingMetrics, StatsBook
from cvplatform.serving.models import ModelManager, RegistrySource
from cvplatform.serving.schemas import ServingConfig
from cvplatform.serving.workers import WorkerBus


def _events(book: StatsBook, part: int) -> None:
    """The same kinds of events, different values per part."""
    book.record_answer("champion", "1", ["a", "b"], [0.95, 0.55 - 0.1 * part], ["a", "a"], 2.0 + part, 5.0 + part,
                       compute_ms=0.2 + part, batch_rows=1)
    book.record_answer("canary", "2", ["a"], [0.91], ["a"], 8.0 * (part + 1), 12.0, compute_ms=0.3, batch_rows=2)
    book.record_error("canary", "2")
    book.record_shadow("canary", "2", ["a", "c"], [0.9, 0.3], ["a", "a"], 9.0, ["a", "b"], f"rid-{part}",
                       answered_confidences=[0.95, 0.4])
    book.record_shadow_skipped()


def _comparable(snap: dict) -> dict:
    snap = dict(snap)
    snap.pop("since"), snap.pop("elapsed_s")
    for v in snap["variants"].values():
        v["confidence_samples"] = sorted(v["confidence_samples"])
    snap["shadow"]["recent_disagreements"] = sorted(snap["shadow"]["recent_disagreements"], key=str)
    return snap


def test_merged_stats_of_two_workers_equal_one_book_that_saw_everything():
    one, parts = StatsBook(window=100, bins=10), [StatsBook(window=100, bins=10) for _ in range(2)]
    for i, book in enumerate(parts):
        _events(book, i)
        _events(one, i)
    merged = StatsBook.merged([p.export() for p in parts], 100, 10, 50)
    assert _comparable(merged.snapshot()) == _comparable(one.snapshot())
    assert merged.snapshot()["variants"]["champion"]["requests"] == 2
    assert merged.since == min(p.since for p in parts)


def test_merged_stats_leave_out_a_worker_still_on_another_version():
    a, b = StatsBook(), StatsBook()
    a.record_answer("canary", "2", ["a"], [0.9], None, 1.0, 2.0)
    b.record_answer("canary", "3", ["a"], [0.9], None, 1.0, 2.0)
    b.record_answer("champion", "1", ["a"], [0.9], None, 1.0, 2.0)
    snap = StatsBook.merged([a.export(), b.export()], 100, 10, 50).snapshot()["variants"]
    assert (snap["canary"]["version"], snap["canary"]["requests"]) == ("2", 1)
    assert (snap["champion"]["version"], snap["champion"]["requests"]) == ("1", 1)


def _manager(registry) -> ModelManager:
    config = ServingConfig.model_validate({"models": {"poll_interval_s": 0}})
    return ModelManager(RegistrySource(registry.name, root=registry.root), config, ServingMetrics(), StatsBook())


def test_an_admin_action_in_one_worker_reaches_the_other_before_it_returns(registry, tmp_path):
    v = registry.versions

    async def main():
        managers = [_manager(registry), _manager(registry)]
        buses = [WorkerBus(tmp_path, i, 2, interval_s=0.01, timeout_s=30) for i in range(2)]
        for m in managers:
            await m.start()
        follower = asyncio.create_task(buses[1].run(managers[1], managers[1].stats))
        try:
            await managers[0].set_canary(v["permuted"], share=0.3, shadow=True)
            report = await buses[0].publish(managers[0])
            assert report["applied"] == [0, 1] and report["pending"] == [] and not report["errors"]
            assert managers[1].canary is not None and managers[1].canary.version == v["permuted"]
            assert managers[1].traffic == managers[0].traffic and managers[1].traffic.canary_share == 0.3
            # a promotion: the follower's canary handle moves into its champion slot (no second load)
            moved = managers[1].canary.model
            await managers[0].promote(v["permuted"], "unit test")
            await buses[0].publish(managers[0])
            assert managers[1].champion.model is moved and managers[1].canary is None
            assert managers[1].traffic.canary_share == 0.0
            # a canary that fails to load in a follower is reported, and gets no traffic there
            state = managers[0].shared_state() | {"canary": v["broken"]}
            state["traffic"]["canary_share"] = 0.5
            errors = await managers[1].apply_shared(state)
            assert f"v{v['broken']}" in errors["canary"] and managers[1].canary is None
            assert managers[1].champion.version == v["permuted"]
        finally:
            follower.cancel()
            for m in managers:
                await m.stop()

    asyncio.run(main())


def test_stats_reset_and_gather_span_both_workers(tmp_path):
    async def main():
        books = [StatsBook(), StatsBook()]
        buses = [WorkerBus(tmp_path, i, 2, interval_s=0.01, timeout_s=30) for i in range(2)]
        follower = asyncio.create_task(buses[1].run(None, books[1]))  # type: ignore[arg-type]
        try:
            for i, book in enumerate(books):
                for _ in range(i + 1):
                    book.record_answer("champion", "1", ["a"], [0.9], None, 1.0, 2.0)
            merged, report = await buses[0].gather_stats(books[0])
            assert merged.snapshot()["variants"]["champion"]["requests"] == 3
            assert report["requests"] == {"0": {"champion": 1, "canary": 0}, "1": {"champion": 2, "canary": 0}}
            report = await buses[0].reset_stats(books[0])
            assert report["applied"] == [0, 1]
            assert [b.snapshot()["variants"]["champion"]["requests"] for b in books] == [0, 0]
        finally:
            follower.cancel()

    asyncio.run(main())


def test_a_worker_that_never_answers_is_reported_after_the_timeout(tmp_path):
    async def main():
        bus = WorkerBus(tmp_path, 0, 2, interval_s=0.01, timeout_s=0.2)
        book = StatsBook()
        book.record_answer("champion", "1", ["a"], [0.9], None, 1.0, 2.0)
        merged, report = await bus.gather_stats(book)
        assert report["applied"] == [0] and report["pending"] == [1]
        assert merged.snapshot()["variants"]["champion"]["requests"] == 1

    asyncio.run(main())


@pytest.mark.parametrize("bad", [0, -1])
def test_serve_workers_must_be_positive(bad):
    from pydantic import ValidationError

    from cvplatform.config import ServeParams

    with pytest.raises(ValidationError):
        ServeParams(workers=bad)


def test_merged_metrics_sum_counters_and_histograms_and_take_the_max_of_model_gauges():
    from cvplatform.serving.metrics import render_merged

    parts = [ServingMetrics(), ServingMetrics()]
    for i, m in enumerate(parts):
        m.requests.labels("predict", "m", "1", "champion", "200").inc(i + 1)
        m.request_latency.labels("predict", "champion").observe(0.002 * (i + 1))
        m.set_model("champion", "m", "1", None)
        m.canary_share.set(0.25)
        m.decode_bytes_in_flight.set(100 * (i + 1))
    text = render_merged([m.export_samples() for m in parts])[0].decode()
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert float(lines['cvplatform_requests_total{endpoint="predict",model="m",status="200",variant="champion",'
                       'version="1"}']) == 3.0
    assert float(lines['cvplatform_request_latency_seconds_count{endpoint="predict",variant="champion"}']) == 2.0
    assert float(lines['cvplatform_request_latency_seconds_bucket{endpoint="predict",le="0.0025",'
                       'variant="champion"}']) == 1.0
    assert float(lines['cvplatform_model_info{model="m",variant="champion",version="1"}']) == 1.0
    assert float(lines["cvplatform_canary_share"]) == 0.25
    assert float(lines["cvplatform_decode_bytes_in_flight"]) == 300.0
    assert "# TYPE cvplatform_requests_total counter" in text
