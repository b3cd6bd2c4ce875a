"""The request log: write, rotate, read back; concurrent writers; time filters; damaged lines."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from cvplatform.errors import ConfigError, DataError
from cvplatform.monitoring.inference_log import LOG_COLUMNS, InferenceLogger, log_files, read_log
from cvplatform.monitoring.stats import image_stats

IMG = np.full((8, 12, 3), 60, np.uint8)


class Clock:
    """A controllable UTC clock (a fixed past time that advances by hand)."""

    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def _log(logger: InferenceLogger, i: int, **kw):
    args = {"model": "cvplatform", "version": "3", "variant": "champion", "request_id": f"req-{i}",
            "predicted": "cat", "confidence": 0.75, **kw}
    return logger.log(IMG, **args)


def test_round_trip_one_record_per_image(tmp_path):
    with InferenceLogger(tmp_path / "requests") as logger:
        rec = _log(logger, 1)
        _log(logger, 2, variant="canary", version=4, predicted="dog", confidence=0.5)
        logger.log(None, model="cvplatform", version="3", variant="shadow", request_id="req-3",
                   predicted="cat", confidence=0.6)  # a tensor request: no image statistics
    assert list(rec) == list(LOG_COLUMNS)
    files = log_files(tmp_path / "requests")
    assert len(files) == 1 and files[0].name.startswith("requests-") and files[0].suffix == ".jsonl"
    df = read_log(tmp_path / "requests")
    assert list(df.columns) == list(LOG_COLUMNS) and len(df) == 3
    assert df["request_id"].tolist() == ["req-1", "req-2", "req-3"]
    assert df["variant"].tolist() == ["champion", "canary", "shadow"]
    assert df["version"].tolist() == ["3", "4", "3"]
    assert str(df["time"].dt.tz) == "UTC"
    stats = image_stats(IMG)
    for name, value in stats.items():
        assert df.loc[0, name] == pytest.approx(value)
    assert np.isnan(df.loc[2, "brightness"])
    assert df["confidence"].tolist() == [0.75, 0.5, 0.6]


def test_rotation_by_size_keeps_every_record(tmp_path):
    logger = InferenceLogger(tmp_path, max_bytes=1024)
    for i in range(40):
        _log(logger, i)
    logger.close()
    files = log_files(tmp_path)
    assert len(files) >= 4
    assert all(f.stat().st_size <= 1024 for f in files)
    assert files == logger.files_written
    df = read_log(tmp_path)
    assert df["request_id"].tolist() == [f"req-{i}" for i in range(40)]


def test_concurrent_writers_from_threads(tmp_path):
    logger = InferenceLogger(tmp_path, max_bytes=4096)
    n_threads, per_thread = 8, 60
    barrier = threading.Barrier(n_threads)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            _log(logger, t * 1000 + i, predicted=f"c{t}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    logger.close()
    files = log_files(tmp_path)
    assert len(files) > 1  # it rotated while threads were writing
    lines = [line for f in files for line in f.read_text().splitlines()]
    assert len(lines) == n_threads * per_thread
    assert all(json.loads(line)["model"] == "cvplatform" for line in lines)  # no interleaved writes
    df = read_log(tmp_path)
    assert len(df) == n_threads * per_thread and df["request_id"].is_unique
    assert df.groupby("predicted").size().tolist() == [per_thread] * n_threads


def test_two_loggers_in_one_folder_never_share_a_file(tmp_path):
    clock = Clock(datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    a, b = InferenceLogger(tmp_path, clock=clock), InferenceLogger(tmp_path, clock=clock)
    _log(a, 1)
    _log(b, 2)
    a.close()
    b.close()
    assert a.files_written[0] != b.files_written[0]
    assert sorted(read_log(tmp_path)["request_id"]) == ["req-1", "req-2"]


def test_since_and_until_filter_by_record_time(tmp_path):
    t0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    clock = Clock(t0)
    with InferenceLogger(tmp_path, clock=clock) as logger:
        for i in range(5):
            clock.t = t0 + timedelta(hours=i)
            _log(logger, i)
    assert read_log(tmp_path, since=t0 + timedelta(hours=2))["request_id"].tolist() == ["req-2", "req-3", "req-4"]
    assert read_log(tmp_path, since="2026-01-05T13:00:00Z", until="2026-01-05T15:00:00Z")[
        "request_id"].tolist() == ["req-1", "req-2"]
    naive = datetime(2026, 1, 5, 16, 0)  # naive = UTC
    assert read_log(tmp_path, since=naive)["request_id"].tolist() == ["req-4"]


def test_damaged_and_blank_lines_are_skipped(tmp_path, caplog):
    with InferenceLogger(tmp_path) as logger:
        _log(logger, 1)
        path = logger.current_file
    with path.open("a") as fh:
        fh.write("\n")
        fh.write('{"time": "2026-01-0')  # cut short by a crash
    df = read_log(tmp_path)
    assert df["request_id"].tolist() == ["req-1"]
    assert "malformed" in caplog.text and path.name in caplog.text


def test_missing_folder_reads_as_no_traffic(tmp_path):
    df = read_log(tmp_path / "nothing-here")
    assert df.empty and list(df.columns) == list(LOG_COLUMNS)


def test_bad_records_are_refused(tmp_path):
    logger = InferenceLogger(tmp_path)
    with pytest.raises(DataError, match="variant 'blue'"):
        _log(logger, 1, variant="blue")
    with pytest.raises(DataError, match="finite"):
        _log(logger, 1, confidence=float("nan"))
    assert logger.records_written == 0 and log_files(tmp_path) == []


def test_from_params_uses_the_monitor_section(tmp_path, make_params):
    params = make_params("monitor.log_dir=logs/requests", "monitor.log_max_bytes=2048")
    logger = InferenceLogger.from_params(params, tmp_path)
    assert logger.directory == tmp_path / "logs" / "requests" and logger.max_bytes == 2048


# --------------------------------------------------------------------------- the background writer
def _submit(q, i: int, n: int = 2, **kw) -> bool:
    args = {"model": "cvplatform", "version": "3", "variant": "champion", "request_id": f"req-{i}",
            "predicted": ["cat"] * n, "confidence": [0.75] * n, **kw}
    return q.submit([IMG] * n, **args)


def test_log_queue_writes_every_record_of_every_request_and_close_flushes(tmp_path):
    from cvplatform.monitoring.inference_log import InferenceLogQueue

    clock = Clock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    q = InferenceLogQueue(InferenceLogger(tmp_path, clock=clock))
    assert all(_submit(q, i) for i in range(50))
    q.drain()  # everything submitted so far is on disk now
    assert len(read_log(tmp_path)) == 100
    clock.t += timedelta(minutes=5)
    assert _submit(q, 50, n=1)
    q.close()
    df = read_log(tmp_path)
    assert len(df) == 101 and df["request_id"].nunique() == 51
    assert df["brightness"].notna().all()  # statistics computed in the writer thread
    # each record carries the time it was submitted (served), not the time the writer got to it
    assert df.loc[df["request_id"] == "req-50", "time"].iloc[0] == pd.Timestamp(clock.t)
    assert not _submit(q, 99) and q.dropped == 1  # closed: refused and counted, never raises


def test_log_queue_lets_go_of_the_images_once_written_and_says_so(tmp_path):
    """The writer must not keep the last request's decoded images until the next request arrives,
    and ``on_done`` (the server's memory budget) is called only once it no longer holds them."""
    import gc
    import weakref

    from cvplatform.monitoring.inference_log import InferenceLogQueue

    class Pixels(np.ndarray):  # an ndarray that can be weakly referenced
        pass

    q = InferenceLogQueue(InferenceLogger(tmp_path))
    img = np.full((64, 64, 3), 120, np.uint8).view(Pixels)
    ref = weakref.ref(img)
    seen_alive: list[bool] = []
    assert q.submit([img], model="m", version="1", variant="champion", request_id="r", predicted=["cat"],
                    confidence=[0.5], on_done=lambda: seen_alive.append(gc.collect() >= 0 and ref() is not None))
    del img
    q.drain()
    gc.collect()
    assert ref() is None  # released without another submit
    assert seen_alive == [False]  # the callback ran after the writer dropped the images
    q.close()
    assert len(read_log(tmp_path)) == 1


class GatedLogger(InferenceLogger):
    """An InferenceLogger whose writes wait for ``gate``: a writer thread stuck behind a slow disk."""

    def __init__(self, directory, gate: threading.Event) -> None:
        super().__init__(directory)
        self.gate = gate

    def log(self, *a, **kw):
        self.gate.wait(10)
        return super().log(*a, **kw)


def test_log_queue_drops_and_counts_when_the_writer_falls_behind(tmp_path):
    from cvplatform.monitoring.inference_log import InferenceLogQueue

    gate = threading.Event()
    q = InferenceLogQueue(GatedLogger(tmp_path, gate), max_pending=3)
    results = [_submit(q, i, n=1) for i in range(10)]  # the writer is stuck on the first record
    assert results.count(False) >= 6 and q.dropped == results.count(False)
    gate.set()
    q.close()
    assert len(read_log(tmp_path)) == results.count(True)


def test_log_queue_a_bad_record_does_not_stop_the_writer(tmp_path):
    from cvplatform.monitoring.inference_log import InferenceLogQueue

    q = InferenceLogQueue(InferenceLogger(tmp_path))
    _submit(q, 1, n=1, confidence=[float("nan")])  # refused by InferenceLogger.log
    _submit(q, 2, n=1, variant="nope")
    _submit(q, 3, n=1)
    q.close()
    assert list(read_log(tmp_path)["request_id"]) == ["req-3"] and q.failed == 2
    with pytest.raises(Exception, match="max_pending"):
        InferenceLogQueue(InferenceLogger(tmp_path), max_pending=0)


def test_log_queue_bounds_the_decoded_images_it_holds(tmp_path):
    from cvplatform.monitoring.inference_log import InferenceLogQueue

    gate = threading.Event()
    q = InferenceLogQueue(GatedLogger(tmp_path, gate), max_pending_bytes=3 * IMG.nbytes)
    results = [_submit(q, i, n=1) for i in range(6)]  # one image each; at most 3 images' bytes held
    assert results[:3] == [True] * 3 and q.dropped >= 2
    gate.set()
    q.close()
    assert len(read_log(tmp_path)) == results.count(True)


def test_worker_tags_give_each_worker_its_own_files_and_readers_see_all(tmp_path):
    from cvplatform.monitoring.inference_log import _file_created, log_files

    t0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    clock = Clock(t0)
    a, b = InferenceLogger(tmp_path, clock=clock, tag="w0"), InferenceLogger(tmp_path, clock=clock, tag="w1")
    _log(a, 1)
    _log(b, 2)
    a.close()
    b.close()
    names = sorted(p.name for p in log_files(tmp_path))
    assert names == ["requests-20260105T120000.000000Z-w0.jsonl", "requests-20260105T120000.000000Z-w1.jsonl"]
    assert {_file_created(p) for p in log_files(tmp_path)} == {t0}
    assert sorted(read_log(tmp_path)["request_id"]) == ["req-1", "req-2"]
    with pytest.raises(ConfigError, match="tag"):
        InferenceLogger(tmp_path, tag="../x")
