"""HTTP plumbing shared by the routers: body limits, body reading, JSON answers and the error shape.

Every refused request is answered ``{"error": <code>, "detail": <what/where/fix>}`` with a 4xx
status (:func:`install_error_handlers`); an unexpected failure is a 500 that never echoes internal
text. A client that disconnects before its body is read is :class:`ClientGone` (status 499, one
INFO line, no error).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cvplatform.serving.budget import BudgetHold, json_cost_bytes
from cvplatform.serving.inputs import parse_json, validation_detail
from cvplatform.serving.models import ServingError
from cvplatform.serving.routing import new_request_id
from cvplatform.serving.schemas import REFUSED_STATE_KEY

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.serving.core import Outcome, ServerState

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- body size limit
class PayloadTooLarge(ServingError):
    """413: the request body is larger than ``limits.max_body_bytes``."""

    def __init__(self, limit: int, got: int | None = None) -> None:
        what = f"{got} bytes" if got is not None else "more bytes"
        super().__init__(413, "payload_too_large",
                         f"request body has {what}; limits.max_body_bytes = {limit}. Send fewer or smaller images.")


class BodyLimitMiddleware:
    """Refuse request bodies above ``max_bytes`` with 413 (declared Content-Length or counted while read)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    await _send_json(send, 400, {"error": "invalid_header",
                                                 "detail": f"Content-Length {v[:40]!r} is not an integer."})
                    return
        if declared is not None and declared > self.max_bytes:
            # drain a moderately larger body so the client reads our answer instead of a reset connection
            if declared <= 8 * self.max_bytes:
                more = True
                while more:
                    msg = await receive()
                    more = msg.get("type") == "http.request" and msg.get("more_body", False)
            await _send_json(send, 413, {"error": "payload_too_large",
                                         "detail": f"request body has {declared} bytes; limits.max_body_bytes = "
                                                   f"{self.max_bytes}. Send fewer or smaller images."})
            return
        received = 0
        limit = self.max_bytes

        async def limited_receive() -> dict:
            nonlocal received
            msg = await receive()
            if msg.get("type") == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(limit)
            return msg

        await self.app(scope, limited_receive, send)


class ClientGone(ServingError):
    """The client closed the connection before its request was read: counted as status 499, not an error."""

    def __init__(self) -> None:
        super().__init__(499, "client_disconnect", "the client closed the connection before sending the whole "
                                                   "request.")


async def _send_json(send: Any, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


# --------------------------------------------------------------------------- requests
async def read_body(request: Request) -> bytes:
    """The whole request body; a client that went away is :class:`ClientGone` (or what the connection layer said)."""
    from starlette.requests import ClientDisconnect

    try:
        return await request.body()
    except ClientDisconnect:
        refused = (request.scope.get("state") or {}).get(REFUSED_STATE_KEY)
        if refused:  # the connection layer answered it (e.g. 408 body timeout): count it as that
            raise ServingError(*refused) from None
        raise ClientGone() from None


def json_body(body: bytes, hold: BudgetHold, where: str = "request body") -> Any:
    """Parse a JSON body after charging its parsing memory to the request's ``hold``."""
    if body:
        hold.take(json_cost_bytes(body), f"parsing the {len(body)}-byte JSON {where}")
    return parse_json(body, where)


def media_type(request: Request) -> str:
    return (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()


def request_ids(request: Request, state: ServerState, body_id: str | None = None) -> tuple[str, str | None]:
    """``(request id, session id)``: headers first, then the body's id, else a new id (200 chars at most)."""
    rid = request.headers.get(state.config.traffic.request_id_header) or body_id or new_request_id()
    session = request.headers.get(state.config.traffic.session_header) or None
    return rid[:200], (session[:200] if session else None)


def labels_from_header(request: Request, state: ServerState, n: int) -> list[Any] | None:
    """The true answers a client sent for the request's ``n`` images, one per image, or None.

    The project's task says which header (``task.truth_header_key``: ``traffic.label_header`` for a class per image,
    ``traffic.boxes_header`` for a detector's boxes) and reads it (``task.parse_truth``); a value it refuses is
    answered with ``task.truth_error`` naming the header. A truth header of another task is refused (422), not
    ignored: its sender expects it to count.
    """
    task = state.task
    traffic = state.config.traffic
    header = getattr(traffic, task.truth_header_key)
    raw = request.headers.get(header)
    if raw is None or not raw.strip():
        if task.truth_header_key != "label_header" and (request.headers.get(traffic.label_header) or "").strip():
            raise ServingError(422, "invalid_label_header",
                               f"{traffic.label_header}: this server's task ({task.name}) does not take one class per "
                               f"image; send the true answer in {header} instead ({task.truth_format}).")
        return None
    champion = state.manager.champion
    try:
        return task.parse_truth(raw, n, header, champion.model.class_names if champion is not None else None)
    except ValueError as exc:
        status, code = task.truth_error
        raise ServingError(status, code, str(exc)) from None


# --------------------------------------------------------------------------- responses
def json_response(body: dict[str, Any], headers: dict[str, str] | None = None, status: int = 200) -> Response:
    """A JSON response serialised with orjson (numpy arrays and scalars included)."""
    import orjson

    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, headers=headers,
                    media_type="application/json")


def header_value(text: str) -> str:
    r"""``text`` as a valid HTTP header value: percent-encoded when it has control or non-Latin-1 characters.

    A request id can come from a JSON body (OIP ``id``), where any character is allowed; echoing it
    raw in a response header would break the response.

    Example:
        >>> header_value("abc-1"), header_value("a\nb")
        ('abc-1', 'a%0Ab')
    """
    if all(c == "\t" or (" " <= c <= "\xff" and c != "\x7f") for c in text):
        return text
    from urllib.parse import quote

    return quote(text.encode("utf-8", "surrogatepass"), safe="".join(chr(i) for i in range(0x21, 0x7f) if chr(i) != "%"))


def answer_headers(out: Outcome, state: ServerState) -> dict[str, str]:
    """``X-Request-ID`` (as configured), ``X-Model-Version`` and ``X-Model-Variant`` of an answer."""
    return {state.config.traffic.request_id_header: header_value(out.request_id),
            "X-Model-Version": header_value(out.version), "X-Model-Variant": out.variant}


# --------------------------------------------------------------------------- errors
def endpoint_of(request: Request) -> str:
    """The ``endpoint`` label of a request's metrics."""
    p = request.url.path
    if p.startswith("/v1/predict"):
        return "predict"
    if p.startswith("/v2/models") and p.endswith("/infer"):
        return "infer"
    if p.startswith("/admin"):
        return "admin"
    return "other"


def error_response(request: Request, status: int, code: str, detail: str,
                   headers: dict[str, str] | None = None) -> Response:
    """``{"error": code, "detail": detail}`` with ``status``; a 4xx is counted in ``bad_requests``."""
    if 400 <= status < 500:
        request.app.state.cv.metrics.bad_requests.labels(endpoint_of(request), code).inc()
    # ASCII JSON: a detail quoting the client's text stays encodable whatever that text holds
    return Response(json.dumps({"error": code, "detail": detail}), status_code=status, headers=headers,
                    media_type="application/json")


_STATUS_HEADERS = {401: {"WWW-Authenticate": "Bearer"}, 429: {"Retry-After": "1"}, 408: {"Connection": "close"}}
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               415: "unsupported_media_type"}


async def _serving_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServingError)
    if isinstance(exc, ClientGone):  # nobody reads this answer: one INFO line and a counter, no error
        request.app.state.cv.metrics.client_disconnects.labels(endpoint_of(request)).inc()
        client = request.client
        log.info("client %s went away before its %s %s request was read",
                 f"{client.host}:{client.port}" if client else "?", request.method, request.url.path)
        return Response(status_code=exc.status)
    headers = _STATUS_HEADERS.get(exc.status)
    return error_response(request, exc.status, exc.code, exc.detail, dict(headers) if headers else None)


async def _validation_error(request: Request, exc: Exception) -> Response:
    return error_response(request, 422, "invalid_request", validation_detail(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    status = int(getattr(exc, "status_code", 500))
    code = _HTTP_CODES.get(status, "http_error")
    detail = str(getattr(exc, "detail", ""))
    if status == 404:
        detail = f"{request.method} {request.url.path}: no such endpoint (see /docs)."
    elif status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}."
    return error_response(request, status, code, detail)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug, not bad input
    error_id = new_request_id()
    log.exception("unhandled error %s on %s %s", error_id, request.method, request.url.path)
    return JSONResponse({"error": "internal_error",
                         "detail": f"the server failed on this request (error id {error_id}); its log has "
                                   "the cause."}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error as JSON ``{"error", "detail"}``: 4xx for bad input, never internal text."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


__all__ = [
    "BodyLimitMiddleware",
    "ClientGone",
    "PayloadTooLarge",
    "answer_headers",
    "endpoint_of",
    "error_response",
    "header_value",
    "install_error_handlers",
    "json_body",
    "json_response",
    "labels_from_header",
    "media_type",
    "read_body",
    "request_ids",
]
