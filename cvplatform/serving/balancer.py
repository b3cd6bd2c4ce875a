"""One entry point in front of several ``cvplatform serve`` replicas: a small round-robin reverse proxy.

``python -m cvplatform.serving.balancer --port 8180 --replica r1=http://127.0.0.1:8181 --replica
r2=http://127.0.0.1:8182`` (started by ``make stack``, :mod:`cvplatform.stack`).

* **Round robin** over the replicas that are currently healthy. A background task asks every
  replica ``GET <health_path>`` (default ``/v2/health/live``: the process answers, model loaded or
  not) every ``health_interval_s``; a replica that fails it is skipped until it answers again.
* **Failover before the request is sent**: when a replica refuses the connection, it is marked
  down and the request goes to the next one (the body has not been read yet, so nothing is lost).
  A failure after the body started streaming answers ``502`` (never a silent replay of a
  non-idempotent request).
* **Streaming and transparency**: request and response bodies are streamed (never buffered whole),
  the status code, headers (hop-by-hop headers excepted) and body of the replica are passed
  through unchanged; the response carries ``X-Cvplatform-Replica: <name>`` naming the replica
  that answered.
* ``GET /_balancer/status``: every replica with its health, requests sent and last error.
* With no healthy replica: ``503 {"error": "no_replica", "detail": ...}`` (the service's error shape).

Only Starlette, httpx and uvicorn are used (all already dependencies of the serving app).

Example:
    >>> b = Balancer([Replica("r1", "http://127.0.0.1:8181"), Replica("r2", "http://127.0.0.1:8182")])
    >>> [b.pick(set()).name for _ in range(3)]
    ['r1', 'r2', 'r1']
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cvplatform.errors import ConfigError

log = logging.getLogger(__name__)

REPLICA_HEADER = "X-Cvplatform-Replica"
STATUS_PATH = "/_balancer/status"
#: RFC 9110 §7.6.1 connection-specific headers (never forwarded), plus Host (set per replica).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "transfer-encoding", "upgrade", "proxy-connection"})
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass
class Replica:
    """One upstream ``cvplatform serve`` process.

    Attributes:
        name: what ``X-Cvplatform-Replica`` and ``/_balancer/status`` call it.
        url: its base URL, e.g. ``http://127.0.0.1:8181``.
    """

    name: str
    url: str
    healthy: bool = True
    requests: int = 0
    failures: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "healthy": self.healthy, "requests": self.requests,
                "failures": self.failures, "last_error": self.last_error}


def parse_replica(spec: str) -> Replica:
    """``"r1=http://127.0.0.1:8181"`` -> ``Replica("r1", "http://127.0.0.1:8181")``.

    Example:
        >>> parse_replica("r1=http://127.0.0.1:8181/").url
        'http://127.0.0.1:8181'
    """
    name, sep, url = spec.partition("=")
    if not sep or not name.strip() or not url.strip().startswith(("http://", "https://")):
        raise ConfigError(f"--replica {spec!r}: expected NAME=http://HOST:PORT, e.g. r1=http://127.0.0.1:8181")
    return Replica(name.strip(), url.strip().rstrip("/"))


@dataclass
class Balancer:
    """Round robin over healthy replicas, with active health checks.

    Args:
        replicas: the upstreams (names must be unique).
        health_path: path asked on every replica every ``health_interval_s`` (200 = healthy).
        health_interval_s: seconds between health rounds.
        connect_timeout_s: seconds to open a connection to a replica before trying the next one.
        read_timeout_s: seconds a replica may stay silent while answering (None = no limit).
    """

    replicas: Sequence[Replica]
    health_path: str = "/v2/health/live"
    health_interval_s: float = 2.0
    connect_timeout_s: float = 3.0
    read_timeout_s: float | None = 300.0
    _next: int = field(default=0, init=False, repr=False)
    _client: httpx.AsyncClient | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.replicas = list(self.replicas)
        names = [r.name for r in self.replicas]
        if not names:
            raise ConfigError("the balancer needs at least one replica (--replica NAME=URL)")
        if len(set(names)) != len(names):
            raise ConfigError(f"replica names must be unique, got {names}")

    # -- choice ----------------------------------------------------------------------------------
    def pick(self, exclude: set[str]) -> Replica | None:
        """The next healthy replica not in ``exclude`` (round robin), or None."""
        n = len(self.replicas)
        for i in range(n):
            r = self.replicas[(self._next + i) % n]
            if r.healthy and r.name not in exclude:
                self._next = (self._next + i + 1) % n
                return r
        return None

    # -- health ----------------------------------------------------------------------------------
    async def check(self, replica: Replica) -> None:
        """Ask one replica its health once and record the answer."""
        assert self._client is not None
        try:
            r = await self._client.get(replica.url + self.health_path, timeout=self.connect_timeout_s + 2.0)
            ok = r.status_code == 200
            err = None if ok else f"{self.health_path} answered {r.status_code}"
        except httpx.HTTPError as exc:
            ok, err = False, f"{type(exc).__name__}: {exc}"
        if ok != replica.healthy:
            log.warning("replica %s (%s) is now %s%s", replica.name, replica.url, "healthy" if ok else "DOWN",
                        f": {err}" if err else "")
        replica.healthy = ok
        if err:
            replica.last_error = err

    async def _health_loop(self) -> None:
        while True:
            await asyncio.gather(*(self.check(r) for r in self.replicas))
            await asyncio.sleep(self.health_interval_s)

    # -- proxy -----------------------------------------------------------------------------------
    async def status(self, request: Request) -> Response:
        return JSONResponse({"replicas": [r.as_dict() for r in self.replicas], "health_path": self.health_path})

    async def proxy(self, request: Request) -> Response:
        assert self._client is not None
        started = False

        async def body() -> AsyncIterator[bytes]:
            nonlocal started
            async for chunk in request.stream():
                started = True
                if chunk:
                    yield chunk

        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}]
        client = request.client.host if request.client else ""
        prior = request.headers.get("x-forwarded-for")
        headers.append(("x-forwarded-for", f"{prior}, {client}" if prior else client))
        headers.append(("x-forwarded-proto", request.url.scheme))
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        has_body = request.method not in ("GET", "HEAD", "OPTIONS", "DELETE") or "content-length" in request.headers \
            or "transfer-encoding" in request.headers
        tried: set[str] = set()
        while True:
            replica = self.pick(tried)
            if replica is None:
                down = ", ".join(f"{r.name} ({r.last_error or 'unhealthy'})" for r in self.replicas)
                return JSONResponse({"error": "no_replica",
                                     "detail": f"no serving replica is healthy or reachable: {down}. Check the "
                                               "replicas' logs (make stack: .cvplatform/stack/logs/)."},
                                    status_code=503)
            tried.add(replica.name)
            req = self._client.build_request(request.method, replica.url + target, headers=headers,
                                             content=body() if has_body else None)
            try:
                resp = await self._client.send(req, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                replica.healthy, replica.failures = False, replica.failures + 1
                replica.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("replica %s refused a connection (%s): marked down", replica.name, exc)
                if started:
                    return self._bad_gateway(replica, exc)
                continue
            except httpx.HTTPError as exc:
                replica.failures += 1
                replica.last_error = f"{type(exc).__name__}: {exc}"
                return self._bad_gateway(replica, exc)
            replica.requests += 1
            out = StreamingResponse(self._relay(resp, replica), status_code=resp.status_code,
                                    background=BackgroundTask(resp.aclose))
            raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.multi_items()
                   if k.lower() not in HOP_BY_HOP]
            raw.append((REPLICA_HEADER.lower().encode(), replica.name.encode("latin-1")))
            out.raw_headers = raw
            return out

    async def _relay(self, resp: httpx.Response, replica: Replica) -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:  # the replica died mid-answer: the client sees a truncated body
            replica.failures += 1
            replica.last_error = f"{type(exc).__name__} while streaming: {exc}"
            log.warning("replica %s failed mid-response: %s", replica.name, exc)

    @staticmethod
    def _bad_gateway(replica: Replica, exc: Exception) -> Response:
        return JSONResponse({"error": "bad_gateway",
                             "detail": f"replica {replica.name} ({replica.url}) failed: {type(exc).__name__}. "
                                       "The request was not retried (its body was already being sent)."},
                            status_code=502)

    # -- app ---------------------------------------------------------------------------------------
    def app(self) -> Starlette:
        """The ASGI app: ``/_balancer/status`` and every other path proxied."""

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
            timeout = httpx.Timeout(connect=self.connect_timeout_s, read=self.read_timeout_s, write=self.read_timeout_s,
                                    pool=self.connect_timeout_s)
            async with httpx.AsyncClient(limits=limits, timeout=timeout, follow_redirects=False) as client:
                self._client = client
                await asyncio.gather(*(self.check(r) for r in self.replicas))
                task = asyncio.create_task(self._health_loop())
                try:
                    yield
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    self._client = None

        return Starlette(routes=[Route(STATUS_PATH, self.status, methods=["GET"]),
                                 Route("/{path:path}", self.proxy, methods=METHODS)], lifespan=lifespan)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cvplatform.serving.balancer``: run the balancer under uvicorn until interrupted."""
    import uvicorn

    ap = argparse.ArgumentParser(prog="python -m cvplatform.serving.balancer", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, required=True, help="TCP port of the entry point")
    ap.add_argument("--replica", action="append", default=[], metavar="NAME=URL", help="an upstream (repeat)")
    ap.add_argument("--health-path", default="/v2/health/live")
    ap.add_argument("--health-interval", type=float, default=2.0, help="seconds between health checks")
    ap.add_argument("--read-timeout", type=float, default=300.0, help="seconds a replica may stay silent")
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        bal = Balancer([parse_replica(s) for s in args.replica], health_path=args.health_path,
                       health_interval_s=args.health_interval, read_timeout_s=args.read_timeout)
    except ConfigError as exc:
        ap.error(str(exc))
    log.info("balancing http://%s:%d over %s", args.host, args.port,
             ", ".join(f"{r.name}={r.url}" for r in bal.replicas))
    # the replica's own Date and Server headers are relayed: the balancer's uvicorn adds none (no duplicates)
    uvicorn.run(bal.app(), host=args.host, port=args.port, log_level=args.log_level, access_log=False, ws="none",
                server_header=False, date_header=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
