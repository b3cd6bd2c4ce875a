"""``serve.workers: 2``: two real server processes on one port, consistent for the canary controller.

One ``cvplatform serve`` supervisor (``LocalServer``) over a real SQLite MLflow registry. Every
request opens a new connection, so the kernel spreads them over both workers. The tests check
that both workers answer, that ``/admin/stats`` sums both, that a canary split set through one
worker's admin API is applied by both before the call returns (every answer's variant is the one
the deterministic routing hash gives), that a promotion reaches both, and that stopping the
supervisor leaves no worker behind.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from cvplatform.config import apply_overrides, read_yaml
from cvplatform.data.manifest import read_manifest
from cvplatform.serving.local import LocalProcessError, LocalServer
from cvplatform.serving.routing import choose_variant, routing_key
from tests.fixtures.serving_models import register_version, set_alias, write_model
from tests.fixtures.tiny_dataset import make_tiny_project

pytestmark = pytest.mark.integration

MODEL = "tiny-workers"
REQUESTS = 160


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("CVPLATFORM_ADMIN_TOKEN", raising=False)
    root = make_tiny_project(tmp_path_factory.mktemp("workers"), per_class=6, size=20,
                             overrides=[f"registry.model_name={MODEL}"])
    serving = root / "configs" / "deploy" / "serving.yaml"
    overrides = ["models.poll_interval_s=0", "models.intra_op_threads=1", "batching.max_wait_ms=2"]
    serving.write_text(yaml.safe_dump(apply_overrides(read_yaml(serving), overrides, "serving"), sort_keys=False),
                       encoding="utf-8")
    versions = {}
    for kind in ("champion", "good", "permuted"):
        versions[kind] = register_version(root, MODEL, write_model(root / "models" / f"{kind}.onnx", kind))
    set_alias(root, MODEL, "champion", versions["champion"])
    yield root, versions
    mp.undo()


@pytest.fixture(scope="module")
def server(project):
    root, _ = project
    with LocalServer(root, overrides=["serve.workers=2"]) as srv:
        yield srv


def _admin(server):
    return {"Authorization": f"Bearer {server.token}"}


def _blob(root):
    df = read_manifest(root / "data" / "processed" / "manifest.parquet")
    return (root / df["path"].iloc[0]).read_bytes()


def _predict_many(server, blob: bytes, n: int) -> list[tuple[str, dict]]:
    """``n`` predictions, each on a new connection, 8 at a time: (request id, answer)."""
    import httpx

    def one(_: int) -> tuple[str, dict]:
        rid = uuid.uuid4().hex
        r = httpx.post(f"{server.url}/v1/predict", content=blob, timeout=30,
                       headers={"Content-Type": "image/png", "X-Request-ID": rid, "Connection": "close"})
        assert r.status_code == 200, r.text
        return rid, r.json()

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def _stats(server) -> dict:
    import httpx

    r = httpx.get(f"{server.url}/admin/stats", headers=_admin(server), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _post(server, path: str, body: dict | None = None) -> dict:
    import httpx

    r = httpx.post(f"{server.url}{path}", json=body or {}, headers=_admin(server), timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_both_workers_answer_and_stats_sum_them(project, server):
    root, versions = project
    reset = _post(server, "/admin/stats/reset")
    assert reset["workers"]["applied"] == [0, 1] and reset["workers"]["pending"] == []
    before = _metric_sum(server, "cvplatform_requests_total{")
    answers = _predict_many(server, _blob(root), REQUESTS)
    assert {a["version"] for _, a in answers} == {versions["champion"]}
    stats = _stats(server)
    w = stats["workers"]
    assert w["applied"] == [0, 1] and len(set(w["pids"].values())) == 2
    per_worker = {i: sum(v.values()) for i, v in w["requests"].items()}
    assert all(n > 0 for n in per_worker.values()), per_worker  # both processes served
    assert sum(per_worker.values()) == REQUESTS == stats["variants"]["champion"]["requests"]
    assert stats["variants"]["champion"]["request_latency_ms"]["count"] == REQUESTS  # samples pooled too
    # /metrics, answered by one worker, counts the requests of both (merged when scraped)
    assert _metric_sum(server, "cvplatform_requests_total{") - before == REQUESTS
    assert _metric_sum(server, "cvplatform_model_info{") == 1.0  # the max over workers, not a sum
    assert _metric_sum(server, "cvplatform_predictions_total{") >= REQUESTS


def _metric_sum(server, prefix: str) -> float:
    """The sum of every series starting with ``prefix`` in one ``/metrics`` scrape."""
    import httpx

    text = httpx.get(f"{server.url}/metrics", headers={"Connection": "close"}, timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_canary_split_set_through_one_worker_is_applied_by_both(project, server):
    root, versions = project
    out = _post(server, "/admin/canary", {"version": versions["permuted"], "share": 0.5})
    assert out["workers"]["applied"] == [0, 1] and not out["workers"]["errors"], out["workers"]
    _post(server, "/admin/stats/reset")
    try:
        answers = _predict_many(server, _blob(root), REQUESTS)
        for rid, a in answers:  # the routing hash says which variant each request must get, on any worker
            assert a["variant"] == choose_variant(routing_key(rid, None), 0.5, versions["permuted"]), rid
        share = sum(a["variant"] == "canary" for _, a in answers) / REQUESTS
        assert 0.3 <= share <= 0.7, share
        per_worker = _stats(server)["workers"]["requests"]
        assert all(v["canary"] > 0 and v["champion"] > 0 for v in per_worker.values()), per_worker
        out = _post(server, "/admin/traffic", {"canary_share": 0.0})
        assert out["workers"]["applied"] == [0, 1]
        assert {a["variant"] for _, a in _predict_many(server, _blob(root), 40)} == {"champion"}
    finally:
        out = _post(server, "/admin/canary/abort", {"reason": "test over"})
    assert out["workers"]["applied"] == [0, 1] and out["canary"]["loaded"] is False


def test_promotion_reaches_both_workers(project, server):
    root, versions = project
    _post(server, "/admin/canary", {"version": versions["good"], "share": 0.2})
    out = _post(server, "/admin/promote", {"version": versions["good"], "reason": "test"})
    assert out["workers"]["applied"] == [0, 1] and not out["workers"]["errors"], out["workers"]
    _post(server, "/admin/stats/reset")
    answers = _predict_many(server, _blob(root), 60)
    assert {(a["version"], a["variant"]) for _, a in answers} == {(versions["good"], "champion")}
    per_worker = _stats(server)["workers"]["requests"]
    assert all(v["champion"] > 0 for v in per_worker.values()), per_worker


def test_a_restarted_worker_follows_the_split_and_stopping_leaves_no_worker(project):
    root, versions = project
    srv = LocalServer(root, overrides=["serve.workers=2"]).start()
    try:
        out = _post(srv, "/admin/canary", {"version": versions["permuted"], "share": 0.5})
        assert out["workers"]["applied"] == [0, 1]
        first = {int(i): int(p) for i, p in _stats(srv)["workers"]["pids"].items()}
        assert len(set(first.values())) == 2 and srv.proc is not None and srv.proc.pid not in first.values()
        os.kill(first[1], signal.SIGKILL)
        deadline = time.monotonic() + 90
        while True:  # the supervisor starts a new worker 1; it loads the aliases, then the published split
            assert time.monotonic() < deadline and srv.proc.poll() is None, srv.log_text()
            try:
                w = _stats(srv)["workers"]
            except Exception as exc:
                raise AssertionError(srv.log_text()) from exc
            if w["pending"] == [] and int(w["pids"]["1"]) not in first.values():
                break
            time.sleep(0.5)
        pids = [int(p) for p in w["pids"].values()]
        _post(srv, "/admin/stats/reset")
        answers = _predict_many(srv, _blob(root), REQUESTS)
        for rid, a in answers:
            assert a["variant"] == choose_variant(routing_key(rid, None), 0.5, versions["permuted"]), rid
        assert all(v["canary"] > 0 for v in _stats(srv)["workers"]["requests"].values())
        srv.proc.send_signal(signal.SIGTERM)  # the supervisor alone (no process-group kill)
        assert srv.proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids), pids
    finally:
        srv.stop()
        set_alias(root, MODEL, "canary", None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_worker_that_cannot_start_stops_the_server_with_its_error(project):
    root, _ = project
    srv = LocalServer(root, overrides=["serve.workers=2"], model="models/missing.onnx", startup_timeout_s=60)
    with pytest.raises(LocalProcessError, match=r"exited with code 2(.|\n)*missing\.onnx: no such file"):
        srv.start()
