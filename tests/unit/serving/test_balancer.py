"""The serving balancer over real HTTP servers (uvicorn on loopback ports, in threads): round robin,
status codes / headers / bodies passed through, streamed uploads and downloads, failover to the
other replica when one refuses connections, and the JSON 503 when none is left."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cvplatform.errors import ConfigError
from cvplatform.serving.balancer import REPLICA_HEADER, Balancer, Replica, parse_replica


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upstream(name: str) -> Starlette:
    """A tiny replica: names itself, echoes the upload's size and digest, sets any status, streams."""

    async def who(request: Request) -> Response:
        return JSONResponse({"replica": name, "query": request.url.query,
                             "header": request.headers.get("x-probe")}, headers={"X-Upstream": name})

    async def upload(request: Request) -> Response:
        h, n, chunks = hashlib.sha256(), 0, 0
        async for chunk in request.stream():
            h.update(chunk)
            n += len(chunk)
            chunks += 1
        return JSONResponse({"bytes": n, "sha256": h.hexdigest(), "chunks": chunks})

    async def status(request: Request) -> Response:
        code = int(request.path_params["code"])
        return JSONResponse({"error": "teapot", "detail": name}, status_code=code)

    async def stream(request: Request) -> Response:
        async def gen() -> Iterator[bytes]:
            for i in range(50):
                yield bytes([i % 256]) * 65536
        return StreamingResponse(gen(), media_type="application/octet-stream")

    return Starlette(routes=[Route("/who", who), Route("/upload", upload, methods=["POST"]),
                             Route("/status/{code}", status, methods=["GET", "POST"]), Route("/stream", stream),
                             Route("/v2/health/live", lambda r: JSONResponse({"live": True}))])


class Served:
    """An ASGI app under uvicorn in a thread, on a free loopback port."""

    def __init__(self, app: Starlette, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def two():
    with Served(upstream("a")) as a, Served(upstream("b")) as b:
        yield a, b


def _balanced(replicas: list[Replica], **kw) -> Served:
    return Served(Balancer(replicas, health_interval_s=kw.pop("health_interval_s", 60.0), **kw).app())


def test_round_robin_names_the_replica_and_passes_headers_and_query(two):
    a, b = two
    with _balanced([Replica("a", a.url), Replica("b", b.url)]) as bal, httpx.Client() as c:
        got = [c.get(f"{bal.url}/who?x=1&y=%20z", headers={"X-Probe": "p"}) for _ in range(4)]
    assert [r.headers[REPLICA_HEADER] for r in got] == ["a", "b", "a", "b"]
    assert [r.json()["replica"] for r in got] == ["a", "b", "a", "b"]
    assert got[0].json() == {"replica": "a", "query": "x=1&y=%20z", "header": "p"}
    assert got[1].headers["x-upstream"] == "b"


def test_status_codes_and_error_bodies_pass_through_unchanged(two):
    a, b = two
    with _balanced([Replica("a", a.url), Replica("b", b.url)]) as bal, httpx.Client() as c:
        for code in (404, 413, 418, 503):
            r = c.post(f"{bal.url}/status/{code}", content=b"x")
            assert r.status_code == code and r.json()["error"] == "teapot"


def test_large_upload_is_streamed_through_intact(two):
    a, b = two
    payload = bytes(range(256)) * 40_000  # ~10 MB, sent chunked

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 1 << 20):
            yield payload[i:i + (1 << 20)]

    with _balanced([Replica("a", a.url), Replica("b", b.url)]) as bal, httpx.Client(timeout=60) as c:
        r = c.post(f"{bal.url}/upload", content=chunks())
    assert r.status_code == 200
    assert r.json()["bytes"] == len(payload) and r.json()["sha256"] == hashlib.sha256(payload).hexdigest()
    assert r.json()["chunks"] > 1  # the replica received it in pieces: it was not buffered whole first


def test_large_download_is_streamed(two):
    a, b = two
    with (_balanced([Replica("a", a.url), Replica("b", b.url)]) as bal, httpx.Client(timeout=60) as c,
          c.stream("GET", f"{bal.url}/stream") as r):
        pieces = list(r.iter_raw())
    body = b"".join(pieces)
    assert len(body) == 50 * 65536 and body[-1] == 49 and len(pieces) > 1


def test_a_replica_refusing_connections_is_skipped_without_losing_requests(two):
    a, _ = two
    dead = Replica("dead", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    with _balanced([dead, Replica("a", a.url)]) as bal, httpx.Client() as c:
        got = [c.post(f"{bal.url}/upload", content=b"abc") for _ in range(4)]
        status = c.get(f"{bal.url}/_balancer/status").json()
    assert [r.status_code for r in got] == [200] * 4
    assert {r.headers[REPLICA_HEADER] for r in got} == {"a"}
    assert all(r.json()["bytes"] == 3 for r in got)
    by_name = {r["name"]: r for r in status["replicas"]}
    assert by_name["dead"]["healthy"] is False and by_name["dead"]["last_error"]
    assert by_name["a"]["healthy"] is True and by_name["a"]["requests"] == 4


def test_health_checks_bring_a_replica_back(two):
    a, _ = two
    port = _free_port()
    with _balanced([Replica("late", f"http://127.0.0.1:{port}"), Replica("a", a.url)],
                   health_interval_s=0.1) as bal, httpx.Client() as c:
        assert c.get(f"{bal.url}/_balancer/status").json()["replicas"][0]["healthy"] is False
        with Served(upstream("late"), port=port):
            deadline = time.monotonic() + 20
            while not c.get(f"{bal.url}/_balancer/status").json()["replicas"][0]["healthy"]:
                assert time.monotonic() < deadline, "the replica never came back"
                time.sleep(0.05)
            names = {c.get(f"{bal.url}/who").headers[REPLICA_HEADER] for _ in range(4)}
    assert names == {"late", "a"}


def test_no_replica_left_is_a_json_503_naming_them():
    dead = [Replica(n, f"http://127.0.0.1:{_free_port()}") for n in ("r1", "r2")]
    with _balanced(dead) as bal, httpx.Client() as c:
        r = c.get(f"{bal.url}/v1/predict")
    assert r.status_code == 503
    assert r.json()["error"] == "no_replica" and "r1" in r.json()["detail"] and "r2" in r.json()["detail"]


def test_replica_specs_and_names_are_checked():
    assert parse_replica("r1=http://127.0.0.1:1/").url == "http://127.0.0.1:1"
    for bad in ("r1", "=http://x", "r1=ftp://x"):
        with pytest.raises(ConfigError, match="NAME=http"):
            parse_replica(bad)
    with pytest.raises(ConfigError, match="unique"):
        Balancer([Replica("a", "http://x"), Replica("a", "http://y")])
    with pytest.raises(ConfigError, match="at least one"):
        Balancer([])
