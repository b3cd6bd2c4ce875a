"""The HTTP/1.1 connection layer of ``cvplatform serve``: timeouts, header limits and JSON protocol errors.

uvicorn parses HTTP with httptools and answers requests it cannot parse itself, with a plain-text
``400 Invalid HTTP request received.``; it has no timeout for a request's headers or body and
none for a new connection that sends nothing. :func:`protocol_class` returns a subclass of
uvicorn's ``HttpToolsProtocol`` that adds, per connection:

* **JSON errors**: a request the parser refuses gets ``400 {"error": "malformed_request", ...}``
  like every other error of the service, then the connection is closed;
* **header limit**: a request line + headers larger than ``limits.max_header_bytes`` gets 431;
* **header timeout**: headers not complete ``limits.header_timeout_s`` after their first byte: 408;
* **body timeout**: a body not complete ``limits.body_timeout_s`` after its headers: 408 (a
  slow-drip or stalled upload cannot hold a connection and its buffer forever);
* **idle timeout**: a connection with no request in progress, a new one included, is closed after
  ``limits.keep_alive_timeout_s`` (uvicorn's ``timeout_keep_alive`` starts only after a response).

When the connection layer refuses a request whose handler is already waiting for its body, it
records the status in the request's ASGI ``scope["state"]`` (:data:`REFUSED_KEY`) before it
disconnects the handler, so the app counts it under that status instead of as a client that went
away.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from cvplatform.serving.schemas import REFUSED_STATE_KEY, LimitsConfig

log = logging.getLogger(__name__)

REFUSED_KEY = REFUSED_STATE_KEY
"""``scope["state"]`` key holding ``(status, code, detail)`` when the connection layer refused the request."""


def error_response(status: int, code: str, detail: str, default_headers: list[tuple[bytes, bytes]] = ()
                   ) -> bytes:
    """A complete HTTP/1.1 response with the service's JSON error body and ``Connection: close``.

    Example:
        >>> error_response(408, "request_timeout", "too slow").split(b"\\r\\n")[0]
        b'HTTP/1.1 408 Request Timeout'
    """
    body = json.dumps({"error": code, "detail": detail}).encode()
    head = [STATUS_LINE[status]]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [b"content-type: application/json\r\n", b"content-length: ", str(len(body)).encode(), b"\r\n",
             b"connection: close\r\n", b"\r\n"]
    return b"".join(head) + body


class HardenedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :class:`LimitsConfig` (see the module docstring).

    Use :func:`protocol_class` to get a subclass bound to a configuration.
    """

    limits: LimitsConfig = LimitsConfig()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = "idle"  # idle -> headers -> body -> idle
        self._header_bytes = 0  # bytes received since the current request's headers began (upper bound)
        self._head_size = 0  # exact size of its request target and headers, from the parser
        self._refusal: tuple[int, str, str] | None = None
        self._deadline: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- timers
    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _arm_idle(self) -> None:
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(self.limits.keep_alive_timeout_s,
                                                            self.timeout_keep_alive_handler)

    # ---------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_idle()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        self._unset_keepalive_if_required()

    def data_received(self, data: bytes) -> None:
        import httptools

        # the idle timer is cancelled when a request begins (on_message_begin), not by any byte: stray
        # CRLFs between requests must not keep a connection open forever
        if self._phase != "body":
            self._header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._refusal is not None:  # a callback below refused the request
                self._refuse(*self._refusal)
                return
            reason = " ".join(str(exc).encode("ascii", "replace").decode().split())[:160] or "unparseable"
            self._refuse(400, "malformed_request",
                         f"the request is not valid HTTP/1.1 ({reason}); the connection is closed.")
            return
        except httptools.HttpParserUpgrade:
            log.info("ignored an Upgrade request (this server speaks HTTP/1.1 only)")
            return
        if self._phase == "headers" and self._header_bytes > self.limits.max_header_bytes:
            self._refuse(*self._too_large_headers())

    def _too_large_headers(self) -> tuple[int, str, str]:
        return (431, "request_header_too_large",
                f"the request line and headers exceed limits.max_header_bytes = {self.limits.max_header_bytes} "
                "bytes; the connection is closed.")

    # ---------------------------------------------------------------- parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._unset_keepalive_if_required()
        self._phase = "headers"
        self._head_size = 0
        self._arm(self.limits.header_timeout_s, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._head_size > self.limits.max_header_bytes:
            self._refusal = self._too_large_headers()
            raise ValueError("headers too large")  # stops the parser; data_received answers the refusal
        super().on_headers_complete()  # may raise (e.g. an unparseable URL): still in the headers phase then
        self._phase = "body"
        self._header_bytes = 0
        self._arm(self.limits.body_timeout_s, self._body_timeout)

    def on_message_complete(self) -> None:
        self._phase = "idle"
        self._header_bytes = 0
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # re-arm with our setting (uvicorn used its own)
            self._arm_idle()

    # ---------------------------------------------------------------- refusing
    def _header_timeout(self) -> None:
        self._deadline = None
        self._refuse(408, "request_timeout",
                     f"the request headers did not arrive within limits.header_timeout_s = "
                     f"{self.limits.header_timeout_s:g} s; the connection is closed.")

    def _body_timeout(self) -> None:
        self._deadline = None
        self._refuse(408, "request_timeout",
                     f"the request body did not arrive within limits.body_timeout_s = "
                     f"{self.limits.body_timeout_s:g} s; the connection is closed.")

    def _refuse(self, status: int, code: str, detail: str) -> None:
        """Answer ``status`` with a JSON error (unless a response has started) and close the connection."""
        self._disarm()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._phase == "body":
            if cycle is None or cycle.response_started:
                # this request is answered (e.g. without reading its body) or being answered: only cut
                self.transport.close()
                return
            # its handler waits for a body that will not come: tell it why, then disconnect it
            state = cycle.scope.get("state")
            if isinstance(state, dict):
                state[REFUSED_KEY] = (status, code, detail)
            cycle.disconnected = True
            cycle.message_event.set()
        elif cycle is not None and not cycle.response_complete:
            # a previous (pipelined) request's response is still to be written: do not interleave, cut
            self.transport.close()
            return
        log.info("refused a request on the connection from %s: %d %s", _peer(self.client), status, code)
        self.transport.write(error_response(status, code, detail, self.server_state.default_headers))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:  # uvicorn's own 400 path, should anything still use it
        self._refuse(400, "malformed_request", "the request is not valid HTTP/1.1; the connection is closed.")


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def protocol_class(limits: LimitsConfig) -> type[HardenedHttpToolsProtocol]:
    """A :class:`HardenedHttpToolsProtocol` subclass bound to ``limits`` (pass it as uvicorn's ``http=``).

    Example:
        >>> import uvicorn
        >>> cls = protocol_class(LimitsConfig(body_timeout_s=5))
        >>> cls.limits.body_timeout_s
        5.0
        >>> uvicorn.Config("app:app", http=cls).http is cls
        True
    """
    return type("CvplatformHttpProtocol", (HardenedHttpToolsProtocol,), {"limits": limits})


__all__ = ["REFUSED_KEY", "HardenedHttpToolsProtocol", "error_response", "protocol_class"]
