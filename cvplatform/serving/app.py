"""The inference service: a FastAPI app over onnxruntime with traffic split, shadowing and an admin API.

``cvplatform serve`` runs :func:`create_app` under uvicorn. Endpoints:

==============================================  ==============================================================
``POST /v1/predict``                            images as multipart (``files=``, repeatable), JSON
                                                ``{"instances": [{"b64": ...}]}``, or one raw ``image/*`` body;
                                                per image: class, confidence, probabilities by class name,
                                                model, version and variant (champion/canary)
``GET  /v2``, ``/v2/health/live|ready``         Open Inference Protocol v2 (KServe / Triton) server endpoints
``GET  /v2/models/{name}[/versions/{v}]``       model metadata: inputs / outputs with datatype and shape
``GET  /v2/models/{name}[/versions/{v}]/ready``
``POST /v2/models/{name}[/versions/{v}]/infer`` OIP inference: one input, either FP32 ``[N, 3, H, W]`` already
                                                preprocessed with the model's contract, or BYTES ``[N]`` of
                                                encoded image files (base64 strings in JSON; raw bytes with
                                                the binary tensor extension). Outputs ``probabilities``
                                                (FP32 ``[N, C]``) and ``label`` (BYTES ``[N]``).
``GET  /metrics``                               Prometheus exposition (per-app registry)
``/admin/...``                                  ``Authorization: Bearer <token>``: status, canary, traffic,
                                                abort, promote, rollback, reload, stats (GET / reset)
==============================================  ==============================================================

Every refused request gets a 4xx JSON body ``{"error": <code>, "detail": <what/where/fix>}``
(never a 5xx, never internal text); 503 is reserved for "no model loaded" and a failing
champion. A request that would decode more than the memory budgets allow is refused from its
image headers, before decoding (413, or 429 while other requests hold the budget; see
:mod:`cvplatform.serving.budget`). A client that disconnects before its body is read is
counted with status 499, not as an error. Under ``cvplatform serve``, malformed HTTP and slow
or idle connections are handled by :mod:`cvplatform.serving.protocol` with the same JSON shape.

Routing: a request goes to the canary when the hash of its routing key (``X-Session-ID`` if
sent, else ``X-Request-ID``, generated when absent) falls inside the canary share
(:mod:`cvplatform.serving.routing`). When the canary fails on a request, the champion answers
it (the failure is counted against the canary). In shadow mode the variant that did not answer
scores the request in the background and the agreement is recorded.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request  # app.py is imported only when serving (never by `import cvplatform`)
from fastapi.responses import JSONResponse, Response

from cvplatform.serving.budget import BudgetHold, MemoryBudget, decode_cost_bytes, json_cost_bytes
from cvplatform.serving.inputs import (
    OpenedImage,
    b64decode_strict,
    bytes_tensor,
    fp32_tensor,
    multipart_files,
    open_images,
    parse_json,
    split_binary_body,
    validation_detail,
)
from cvplatform.serving.metrics import ServingMetrics, StatsBook
from cvplatform.serving.models import (
    FileSource,
    ModelHandle,
    ModelManager,
    ModelSource,
    RegistrySource,
    ServingError,
)
from cvplatform.serving.routing import choose_variant, new_request_id, routing_key, should_shadow
from cvplatform.serving.schemas import (
    REFUSED_STATE_KEY,
    AbortRequest,
    CanaryRequest,
    ErrorResponse,
    OipInferRequest,
    PredictRequest,
    PromoteRequest,
    RollbackRequest,
    ServingConfig,
    TrafficRequest,
    check_admin_token,
    load_serving_config,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

log = logging.getLogger(__name__)

SERVER_NAME = "cvplatform"


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
    import json

    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


# --------------------------------------------------------------------------- state
@dataclass
class ServerState:
    """Everything an app instance owns (one per app: tests create several in one process)."""

    config: ServingConfig
    manager: ModelManager
    metrics: ServingMetrics
    stats: StatsBook
    admin_token: str | None
    shadow_tasks: set[asyncio.Task] = field(default_factory=set)
    started: float = field(default_factory=time.time)
    request_log: Any = None
    """:class:`cvplatform.monitoring.inference_log.InferenceLogQueue` (drift monitoring), or None."""
    budget: MemoryBudget | None = None
    """Decode memory shared by the requests in flight (``limits.max_inflight_decode_bytes``)."""

    def hold(self) -> BudgetHold:
        """A new charge against :attr:`budget` for one request."""
        if self.budget is None:
            self.budget = MemoryBudget(self.config.limits.max_inflight_decode_bytes)
        return self.budget.hold()


def _log_requests(state: ServerState, images: list[np.ndarray] | None, handle: ModelHandle, variant: str,
                  request_id: str, top: list[str], conf: list[float], hold: BudgetHold | None = None) -> None:
    """Queue one inference-log record per image (input statistics + prediction) for ``cv_monitor``.

    Only a queue ``put`` happens here; the statistics and the file writes run in the log's own
    writer thread. Never fails or slows a request: a full queue drops the records (counted).
    The queued images stay charged to the request's memory ``hold`` until the writer is done.
    """
    if state.request_log is None:
        return
    keep = hold is not None and images is not None
    if keep:
        hold.share()
    if state.request_log.submit(images, model=handle.model.name, version=handle.version, variant=variant,
                                request_id=request_id, predicted=top, confidence=conf,
                                on_done=hold.release if keep else None):
        return
    if keep:
        hold.release()
    state.metrics.request_log_dropped.inc()


@dataclass
class Outcome:
    """What a prediction produced (before it is shaped into a response)."""

    request_id: str
    handle: ModelHandle
    variant: str
    probs: np.ndarray
    fallback: bool = False

    @property
    def model(self) -> str:
        return self.handle.model.name

    @property
    def version(self) -> str:
        return self.handle.version


def _labels_from_header(request: Request, state: ServerState, n: int) -> list[str] | None:
    raw = request.headers.get(state.config.traffic.label_header)
    if raw is None or not raw.strip():
        return None
    labels = [s.strip() for s in raw.split(",")]
    if len(labels) != n:
        raise ServingError(400, "invalid_label_header",
                           f"{state.config.traffic.label_header}: {len(labels)} label(s) for {n} image(s); send one "
                           "comma-separated label per image, in order.")
    return labels


def _request_ids(request: Request, state: ServerState, body_id: str | None = None) -> tuple[str, str | None]:
    rid = request.headers.get(state.config.traffic.request_id_header) or body_id or new_request_id()
    session = request.headers.get(state.config.traffic.session_header) or None
    return rid[:200], (session[:200] if session else None)


def _contract_key(h: ModelHandle) -> tuple:
    c = h.model.contract
    return (c.input_size, c.mean, c.std, c.interpolation)


def _same_contract(a: ModelHandle, b: ModelHandle) -> bool:
    """Whether both models take identically preprocessed inputs."""
    return _contract_key(a) == _contract_key(b)


async def _prepare(images: list[np.ndarray], handle: ModelHandle) -> np.ndarray:
    from cvplatform.preprocess import preprocess

    return await asyncio.to_thread(preprocess, images, handle.model.contract)


def _decode_and_preprocess(opened: list[OpenedImage], contract: Any) -> tuple[list[np.ndarray], np.ndarray]:
    from cvplatform.preprocess import preprocess

    images = [im.decode() for im in opened]
    return images, preprocess(images, contract)


def _decode_work(opened: list[OpenedImage], contract: Any) -> int:
    """Pixels a request costs to decode and preprocess: its source pixels + the model-input pixels per image."""
    h, w = contract.input_size
    return sum(im.pixels for im in opened) + len(opened) * int(h) * int(w)


async def predict_core(
    state: ServerState,
    *,
    request_id: str,
    session_id: str | None,
    labels: list[str] | None,
    images: list[np.ndarray] | None = None,
    tensor: np.ndarray | None = None,
    blobs: list[bytes] | None = None,
    pinned_version: str | None = None,
    t_start: float | None = None,
    hold: BudgetHold | None = None,
) -> Outcome:
    """Route, run (with canary -> champion fallback), record stats and metrics, start the shadow scoring.

    The input is decoded ``images``, encoded ``blobs`` (decoded and preprocessed after routing: on
    the event loop when small, see ``batching.inline_decode_max_pixels``, else in one worker-thread
    hop) or a preprocessed ``tensor``. Before ``blobs`` are decoded, their estimated decode memory
    is charged to ``hold`` (413/429 when it does not fit); a shadow scoring that keeps the decoded
    images shares the charge until it ends.
    """
    import numpy as np

    mgr = state.manager
    champion, canary = mgr.champion, mgr.canary
    if champion is None:
        why = f" (last error: {mgr.errors['champion']})" if mgr.errors["champion"] else ""
        raise ServingError(503, "not_ready", f"no champion model is loaded{why}; retry later.")
    traffic = mgr.traffic
    key = routing_key(request_id, session_id)
    if pinned_version is not None:
        if champion.version == pinned_version:
            variant = "champion"
        elif canary is not None and canary.version == pinned_version:
            variant = "canary"
        else:
            raise ServingError(404, "unknown_version",
                               f"version {pinned_version} of {champion.model.name!r} is not being served "
                               f"(champion v{champion.version}"
                               f"{f', canary v{canary.version}' if canary else ''}).")
    else:
        variant = choose_variant(key, traffic.canary_share, canary.version if canary is not None else None)
    if variant == "canary" and tensor is not None and canary is not None and not _same_contract(canary, champion):
        variant = "champion"  # the tensor was preprocessed with the advertised (champion) contract
    handle = champion if variant == "champion" else canary
    assert handle is not None
    decoded: list[list[np.ndarray]] = [images] if images is not None else []
    prepared: dict[tuple, np.ndarray] = {}  # preprocessing key -> model input (reused by fallback / shadow)

    async def prepare_for(h: ModelHandle) -> np.ndarray:
        if tensor is not None:
            return tensor
        key = _contract_key(h)
        if key in prepared:
            return prepared[key]
        if not decoded and blobs is not None:
            opened = open_images(blobs, state.config.limits)  # headers only: format, size, pixel limits
            if hold is not None:  # the memory the decoding needs, before any pixel is decoded
                hold.take(decode_cost_bytes(opened, h.model.contract.input_size),
                          f"decoding {len(opened)} image(s) of {sum(im.pixels for im in opened)} pixels")
            if _decode_work(opened, h.model.contract) <= state.config.batching.inline_decode_max_pixels:
                imgs, x = _decode_and_preprocess(opened, h.model.contract)  # small: cheaper than a thread hop
            else:  # large: a worker thread, so the event loop keeps serving
                imgs, x = await asyncio.to_thread(_decode_and_preprocess, opened, h.model.contract)
            decoded.append(imgs)
        else:
            x = await _prepare(decoded[0] if decoded else [], h)
        prepared[key] = x
        return x

    fallback = False
    try:
        probs, ms, timing = await handle.prepare_and_infer(lambda: prepare_for(handle))
    except ServingError:  # bad input found while decoding: a 4xx, not a model failure
        raise
    except Exception as exc:
        state.stats.record_error(variant, handle.version)
        state.metrics.model_errors.labels(handle.model.name, handle.version, variant, "answer").inc()
        if variant != "canary" or pinned_version is not None:
            log.error("%s v%s failed on request %s: %s", variant, handle.version, request_id, exc)
            raise ServingError(503, "model_error", f"{handle.model.name} v{handle.version} failed on request "
                                                   f"{request_id}; the server log has the cause.") from None
        log.warning("canary v%s failed (champion answers): %s", handle.version, exc)
        handle, variant, fallback = champion, "champion", True
        try:
            probs, ms, timing = await champion.prepare_and_infer(lambda: prepare_for(champion))
        except ServingError:
            raise
        except Exception as exc2:
            state.stats.record_error("champion", champion.version)
            state.metrics.model_errors.labels(champion.model.name, champion.version, "champion", "answer").inc()
            log.error("champion v%s failed on request %s: %s", champion.version, request_id, exc2)
            raise ServingError(503, "model_error", f"{champion.model.name} v{champion.version} failed on request "
                                                   f"{request_id}; the server log has the cause.") from None
    images = decoded[0] if decoded else images
    names = handle.model.class_names
    top = [names[i] for i in np.argmax(probs, axis=1)]
    conf = [float(v) for v in probs.max(axis=1)]
    request_ms = (time.perf_counter() - t_start) * 1000.0 if t_start is not None else None
    state.stats.record_answer(variant, handle.version, top, conf, labels, ms, request_ms, fallback=fallback,
                              compute_ms=timing.ms_per_row, batch_rows=timing.rows, overlapped=timing.overlapped)
    m = state.metrics
    m.inference_latency.labels(handle.model.name, handle.version, variant).observe(ms / 1000.0)
    for cls, n in collections.Counter(top).items():
        m.predictions.labels(handle.model.name, handle.version, variant, cls).inc(n)
    confidence = m.confidence.labels(handle.model.name, handle.version, variant)
    for c in conf:
        confidence.observe(c)
    _log_requests(state, images, handle, variant, request_id, top, conf, hold)
    # shadow: the other variant scores the same input in the background
    other = canary if variant == "champion" else champion
    mirror = other is not None and not fallback and pinned_version is None and should_shadow(key, traffic)
    if mirror and tensor is not None and not _same_contract(other, handle):
        mirror = False  # a preprocessed tensor fits only models with the same contract
    if mirror:
        if len(state.shadow_tasks) >= state.config.traffic.max_pending_shadow:
            state.stats.record_shadow_skipped()
            m.shadow.labels("skipped").inc()
        else:
            x_other = tensor if tensor is not None else prepared.get(_contract_key(other))
            task = asyncio.create_task(_shadow(state, other, "canary" if other is canary else "champion",
                                               images, x_other, labels, top, request_id, conf, hold))
            state.shadow_tasks.add(task)
            task.add_done_callback(state.shadow_tasks.discard)
            if hold is not None and images is not None:  # the shadow keeps the decoded images alive
                hold.share()
                task.add_done_callback(lambda _t: hold.release())
    return Outcome(request_id, handle, variant, probs, fallback)


async def _shadow(state: ServerState, handle: ModelHandle, variant: str, images: list[np.ndarray] | None,
                  x: np.ndarray | None, labels: list[str] | None, answered: list[str], request_id: str,
                  answered_conf: list[float] | None = None, hold: BudgetHold | None = None) -> None:
    """Score a mirrored request with ``handle`` (``x``: its input when already prepared) and record agreement."""
    import numpy as np

    async def prepare() -> np.ndarray:
        return x if x is not None else await _prepare(images or [], handle)

    try:
        probs, ms, timing = await handle.prepare_and_infer(prepare)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.info("shadow %s v%s failed: %s", variant, handle.version, exc)
        state.stats.record_error(variant, handle.version, shadow=True)
        state.metrics.model_errors.labels(handle.model.name, handle.version, variant, "shadow").inc()
        state.metrics.shadow.labels("error").inc()
        return
    names = handle.model.class_names
    top = [names[i] for i in np.argmax(probs, axis=1)]
    conf = [float(v) for v in probs.max(axis=1)]
    state.stats.record_shadow(variant, handle.version, top, conf, labels, ms, answered, request_id, answered_conf,
                              compute_ms=timing.ms_per_row, batch_rows=timing.rows, overlapped=timing.overlapped)
    _log_requests(state, images, handle, "shadow", request_id, top, conf, hold)
    for a, b in zip(answered, top, strict=False):
        state.metrics.shadow.labels("agree" if a == b else "disagree").inc()


# --------------------------------------------------------------------------- responses
def _json(body: dict[str, Any], headers: dict[str, str] | None = None, status: int = 200) -> Response:
    """A JSON response serialised with orjson (numpy arrays and scalars included)."""
    import orjson

    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, headers=headers,
                    media_type="application/json")


def _predict_response(out: Outcome) -> dict[str, Any]:
    names = out.handle.model.class_names
    preds = []
    for row in out.probs:
        i = int(row.argmax())
        preds.append({
            "class": names[i],
            "confidence": float(row[i]),
            "probabilities": {n: float(p) for n, p in zip(names, row, strict=True)},
            "model": out.model,
            "version": out.version,
            "variant": out.variant,
        })
    return {"request_id": out.request_id, "model": out.model, "version": out.version, "variant": out.variant,
            "fallback": out.fallback, "predictions": preds}


def header_value(text: str) -> str:
    """``text`` as a valid HTTP header value: percent-encoded when it has control or non-Latin-1 characters.

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


def _headers(out: Outcome, state: ServerState) -> dict[str, str]:
    return {state.config.traffic.request_id_header: header_value(out.request_id),
            "X-Model-Version": header_value(out.version), "X-Model-Variant": out.variant}


def _media_type(request: Request) -> str:
    return (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()


# --------------------------------------------------------------------------- OpenAPI
_BINARY = {"type": "string", "format": "binary"}
_ADMIN_BODIES: dict[str, type] = {
    "/admin/canary": CanaryRequest, "/admin/traffic": TrafficRequest, "/admin/canary/abort": AbortRequest,
    "/admin/promote": PromoteRequest, "/admin/rollback": RollbackRequest,
}


def _schema_ref(components: dict[str, Any], model: type) -> dict[str, str]:
    """Put ``model``'s JSON schema (and its nested models) into ``components``; return its ``$ref``."""
    js = model.model_json_schema(ref_template="#/components/schemas/{model}")  # type: ignore[attr-defined]
    components.update(js.pop("$defs", {}))
    components[model.__name__] = js
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _document_requests(app: FastAPI, config: ServingConfig) -> None:
    """Describe the request bodies, headers, admin auth and error shape in ``/openapi.json``.

    The handlers read their bodies themselves (to bound memory and answer every bad body with a
    4xx), so FastAPI cannot infer these; clients, ``/docs`` and the schema fuzz test need them.
    """
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = base()
        comps = schema.setdefault("components", {})
        models = comps.setdefault("schemas", {})
        error = {"description": "refused: a stable error code and what to do",
                 "content": {"application/json": {"schema": _schema_ref(models, ErrorResponse)}}}
        comps.setdefault("securitySchemes", {})["adminToken"] = {"type": "http", "scheme": "bearer"}
        t = config.traffic
        routing = [{"name": h, "in": "header", "required": False, "schema": {"type": "string"}}
                   for h in (t.request_id_header, t.session_header, t.label_header)]
        image_body = {"required": True, "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
                "files": {"type": "array", "items": _BINARY}}}},
            "application/json": {"schema": _schema_ref(models, PredictRequest)},
            "image/png": {"schema": _BINARY}, "image/jpeg": {"schema": _BINARY},
            "application/octet-stream": {"schema": _BINARY},
        }}
        infer_body = {"required": True, "content": {"application/json": {"schema": _schema_ref(models, OipInferRequest)}}}
        for path, ops in schema.get("paths", {}).items():
            for method, op in ops.items():
                op.setdefault("responses", {})["4XX"] = error
                if path == "/v1/predict" and method == "post":
                    op["requestBody"] = image_body
                    op.setdefault("parameters", []).extend(routing)
                elif path.endswith("/infer") and method == "post":
                    op["requestBody"] = infer_body
                    op.setdefault("parameters", []).extend(routing)
                if path.startswith("/admin"):
                    op["security"] = [{"adminToken": []}]
                    if path in _ADMIN_BODIES and method == "post":
                        op["requestBody"] = {"required": False, "content": {
                            "application/json": {"schema": _schema_ref(models, _ADMIN_BODIES[path])}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# --------------------------------------------------------------------------- the app
def create_app(config: ServingConfig, source: ModelSource, *, admin_token: str | None = None,
               request_log: Any = None) -> FastAPI:
    """Build the inference service for ``source`` with ``config``.

    Args:
        config: the serving configuration (``configs/deploy/serving.yaml``).
        source: where models come from (:class:`~cvplatform.serving.models.RegistrySource` or
            :class:`~cvplatform.serving.models.FileSource`).
        admin_token: bearer token of the admin API (default :meth:`ServingConfig.admin_token`);
            None and unset = admin API disabled (403).
        request_log: an :class:`~cvplatform.monitoring.inference_log.InferenceLogger` that gets one record
            per served image (input statistics + prediction) for drift monitoring; None = no log.

    Example:
        >>> from cvplatform.serving.models import FileSource
        >>> app = create_app(ServingConfig(), FileSource("model.onnx"))  # doctest: +SKIP
        >>> import uvicorn; uvicorn.run(app, port=8080)  # doctest: +SKIP
    """
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    metrics = ServingMetrics()
    stats = StatsBook(config.stats.window, config.stats.confidence_bins, config.stats.disagreements_kept)
    manager = ModelManager(source, config, metrics, stats)
    token = (admin_token or None) if admin_token is not None else config.admin_token()
    check_admin_token(token, "the admin_token argument" if admin_token else config.admin_token_source())
    log_queue = None
    if request_log is not None:
        from cvplatform.monitoring.inference_log import InferenceLogQueue

        log_queue = InferenceLogQueue(request_log)
    state = ServerState(config, manager, metrics, stats, token, request_log=log_queue,
                        budget=MemoryBudget(config.limits.max_inflight_decode_bytes,
                                            on_change=metrics.decode_bytes_in_flight.set))

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        await manager.start()
        try:
            yield
        finally:
            for t in list(state.shadow_tasks):
                t.cancel()
            if state.shadow_tasks:
                await asyncio.gather(*state.shadow_tasks, return_exceptions=True)
            await manager.stop()
            if log_queue is not None:
                await asyncio.to_thread(log_queue.close)  # writes what is still queued

    app = FastAPI(title="cvplatform inference service", version="1", lifespan=lifespan,
                  description=__doc__)
    app.state.cv = state
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.limits.max_body_bytes)
    _document_requests(app, config)
    limits = config.limits

    # ---------------------------------------------------------------- errors: always JSON, 4xx for bad input
    def _error(status: int, code: str, detail: str, endpoint: str = "other",
               headers: dict[str, str] | None = None) -> Response:
        import json

        if 400 <= status < 500:
            metrics.bad_requests.labels(endpoint, code).inc()
        # ASCII JSON: a detail quoting the client's text stays encodable whatever that text holds
        return Response(json.dumps({"error": code, "detail": detail}), status_code=status, headers=headers,
                        media_type="application/json")

    def _endpoint_of(request: Request) -> str:
        p = request.url.path
        if p.startswith("/v1/predict"):
            return "predict"
        if p.startswith("/v2/models") and p.endswith("/infer"):
            return "infer"
        if p.startswith("/admin"):
            return "admin"
        return "other"

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> Response:
        if isinstance(exc, ClientGone):  # nobody reads this answer: one INFO line and a counter, no error
            endpoint = _endpoint_of(request)
            metrics.client_disconnects.labels(endpoint).inc()
            client = request.client
            log.info("client %s went away before its %s %s request was read",
                     f"{client.host}:{client.port}" if client else "?", request.method, request.url.path)
            return Response(status_code=exc.status)
        headers = None
        if exc.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        elif exc.status == 429:
            headers = {"Retry-After": "1"}
        elif exc.status == 408:
            headers = {"Connection": "close"}
        return _error(exc.status, exc.code, exc.detail, _endpoint_of(request), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _error(422, "invalid_request", validation_detail(exc), _endpoint_of(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                 415: "unsupported_media_type"}
        code = codes.get(exc.status_code, "http_error")
        detail = str(exc.detail)
        if exc.status_code == 404:
            detail = f"{request.method} {request.url.path}: no such endpoint (see /docs)."
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}."
        return _error(exc.status_code, code, detail, _endpoint_of(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug, not bad input
        error_id = new_request_id()
        log.exception("unhandled error %s on %s %s", error_id, request.method, request.url.path)
        return JSONResponse({"error": "internal_error",
                             "detail": f"the server failed on this request (error id {error_id}); its log has "
                                       "the cause."}, status_code=500)

    # ---------------------------------------------------------------- helpers
    def _model_or_404(name: str, version: str | None = None) -> ModelHandle:
        champion = manager.champion
        if name != source.model_name:
            raise ServingError(404, "unknown_model",
                               f"model {name!r} is not served here; this server serves {source.model_name!r}.")
        if champion is None:
            raise ServingError(503, "not_ready", f"no version of {name!r} is loaded yet; retry later.")
        if version is None or version == champion.version:
            return champion
        canary = manager.canary
        if canary is not None and canary.version == version:
            return canary
        raise ServingError(404, "unknown_version", f"version {version} of {name!r} is not being served "
                                                   f"(champion v{champion.version}"
                                                   f"{f', canary v{canary.version}' if canary else ''}).")

    def _record(endpoint: str, out: Outcome | None, status: int, t0: float) -> None:
        model = out.model if out else source.model_name
        version = out.version if out else "none"
        variant = out.variant if out else "none"
        metrics.requests.labels(endpoint, model, version, variant, str(status)).inc()
        metrics.request_latency.labels(endpoint, variant).observe(time.perf_counter() - t0)

    async def _body(request: Request) -> bytes:
        from starlette.requests import ClientDisconnect

        try:
            return await request.body()
        except ClientDisconnect:
            refused = (request.scope.get("state") or {}).get(REFUSED_STATE_KEY)
            if refused:  # the connection layer answered it (e.g. 408 body timeout): count it as that
                raise ServingError(*refused) from None
            raise ClientGone() from None

    def _json_body(body: bytes, hold: BudgetHold, where: str = "request body") -> Any:
        """Parse a JSON body after charging its parsing memory to the request's ``hold``."""
        if body:
            hold.take(json_cost_bytes(body), f"parsing the {len(body)}-byte JSON {where}")
        return parse_json(body, where)

    # ---------------------------------------------------------------- /v1/predict
    async def _images_from_request(request: Request, hold: BudgetHold) -> list[bytes]:
        media = _media_type(request)
        body = await _body(request)
        if media == "multipart/form-data":
            return multipart_files(body, request.headers.get("content-type", ""), limits)
        if media == "application/json" or media.endswith("+json"):
            data = _json_body(body, hold)
            try:
                req = PredictRequest.model_validate(data)
            except ValidationError as exc:
                raise ServingError(422, "invalid_request",
                                   'expected {"instances": [{"b64": "<base64 image>"}, ...]}: '
                                   + validation_detail(exc)) from None
            return [b64decode_strict(inst if isinstance(inst, str) else inst.b64, f"instances[{i}]")
                    for i, inst in enumerate(req.instances)]
        if media.startswith("image/") or media == "application/octet-stream":
            if not body:
                raise ServingError(400, "empty_image", "the request body is empty; send the image file bytes.")
            return [body]
        shown = media or "none"
        raise ServingError(415, "unsupported_media_type",
                           f"Content-Type {shown!r}: send multipart/form-data (files=), application/json "
                           '({"instances": [{"b64": ...}]}) or an image/* body.')

    @app.post("/v1/predict", tags=["predict"])
    async def predict(request: Request) -> Response:
        """Classify one or more images (multipart ``files``, JSON ``instances`` or a raw image body)."""
        t0 = time.perf_counter()
        out: Outcome | None = None
        status = 500
        hold = state.hold()
        try:
            blobs = await _images_from_request(request, hold)
            if len(blobs) > limits.max_images:
                raise ServingError(413, "too_many_images",
                                   f"{len(blobs)} images; limits.max_images = {limits.max_images}.")
            rid, session = _request_ids(request, state)
            labels = _labels_from_header(request, state, len(blobs))
            out = await predict_core(state, request_id=rid, session_id=session, labels=labels, blobs=blobs,
                                     t_start=t0, hold=hold)
            status = 200
            return _json(_predict_response(out), headers=_headers(out, state))
        except ServingError as exc:
            status = exc.status
            raise
        finally:
            hold.release()
            _record("predict", out, status, t0)

    # ---------------------------------------------------------------- OIP v2
    @app.get("/v2", tags=["oip"])
    async def server_metadata() -> dict[str, Any]:
        from cvplatform import __version__

        return {"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", tags=["oip"])
    async def live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["oip"])
    async def ready() -> Response:
        if manager.ready():
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "error": "not_ready",
                             "detail": manager.errors["champion"] or "no champion model loaded yet"},
                            status_code=503)

    def _metadata(handle: ModelHandle) -> dict[str, Any]:
        m = handle.model
        h, w = m.contract.input_size
        versions = [manager.champion.version] if manager.champion else []
        if manager.canary is not None:
            versions.append(manager.canary.version)
        return {
            "name": m.name,
            "versions": versions,
            "platform": "onnxruntime_onnx",
            "inputs": [
                {"name": m.input_name, "datatype": "FP32", "shape": [-1, 3, h, w]},
                {"name": "image", "datatype": "BYTES", "shape": [-1]},
            ],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, m.contract.num_classes]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
            ],
            "parameters": {
                "version": m.version,
                "class_names": list(m.class_names),
                "preprocess": {k: v for k, v in m.contract.to_metadata().items()},
                "note": "send exactly one input: FP32 (preprocessed NCHW) or BYTES (encoded images; base64 "
                        "strings in JSON, raw bytes with the binary tensor extension)",
            },
        }

    @app.get("/v2/models/{name}", tags=["oip"])
    async def model_metadata(name: str) -> dict[str, Any]:
        return _metadata(_model_or_404(name))

    @app.get("/v2/models/{name}/versions/{version}", tags=["oip"])
    async def model_version_metadata(name: str, version: str) -> dict[str, Any]:
        return _metadata(_model_or_404(name, version))

    @app.get("/v2/models/{name}/ready", tags=["oip"])
    async def model_ready(name: str) -> dict[str, Any]:
        h = _model_or_404(name)
        return {"name": name, "version": h.version, "ready": True}

    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["oip"])
    async def model_version_ready(name: str, version: str) -> dict[str, Any]:
        h = _model_or_404(name, version)
        return {"name": name, "version": h.version, "ready": True}

    async def _infer(request: Request, name: str, version: str | None) -> Response:
        import numpy as np

        t0 = time.perf_counter()
        out: Outcome | None = None
        status = 500
        hold = state.hold()
        try:
            handle = _model_or_404(name, version)
            media = _media_type(request)
            if media and media not in ("application/json", "application/octet-stream") and not media.endswith(
                    "+json"):
                raise ServingError(415, "unsupported_media_type",
                                   f"Content-Type {media!r}: OIP inference takes application/json (or "
                                   "application/octet-stream with Inference-Header-Content-Length).")
            body = await _body(request)
            header, blob = split_binary_body(body, request.headers.get("inference-header-content-length"),
                                             parse=lambda b, where: _json_body(b, hold, where))
            try:
                req = OipInferRequest.model_validate(header)
            except ValidationError as exc:
                raise ServingError(422, "invalid_request", "OIP v2 inference request: " + validation_detail(exc)
                                   ) from None
            if len(req.inputs) != 1:
                raise ServingError(400, "invalid_inputs",
                                   f"{len(req.inputs)} inputs; send exactly one: FP32 "
                                   f"{handle.model.input_name!r} [N,3,H,W] or BYTES 'image' [N].")
            tensor_in = req.inputs[0]
            dtype = tensor_in.datatype.upper()
            tensor = None
            blobs = None
            if dtype == "FP32":
                tensor, _ = fp32_tensor(tensor_in, blob, 0, handle.model.contract.input_size, limits.max_images)
                n = tensor.shape[0]
            elif dtype == "BYTES":
                blobs, _ = bytes_tensor(tensor_in, blob, 0, limits.max_images)
                n = len(blobs)
            else:
                raise ServingError(400, "unsupported_datatype",
                                   f"input {tensor_in.name!r}: datatype {tensor_in.datatype!r}; send FP32 "
                                   "(preprocessed tensor) or BYTES (encoded images).")
            wanted = [o.name for o in (req.outputs or [])] or ["probabilities", "label"]
            unknown = [w for w in wanted if w not in ("probabilities", "label")]
            if unknown:
                raise ServingError(400, "unknown_output", f"outputs {unknown} do not exist; choose from "
                                                          "['probabilities', 'label'].")
            rid, session = _request_ids(request, state, req.id)
            labels = _labels_from_header(request, state, n)
            out = await predict_core(state, request_id=rid, session_id=session, labels=labels, blobs=blobs,
                                     tensor=tensor, pinned_version=version, t_start=t0, hold=hold)
            names = out.handle.model.class_names
            outputs = []
            for w in wanted:
                if w == "probabilities":
                    outputs.append({"name": "probabilities", "datatype": "FP32", "shape": list(out.probs.shape),
                                    "data": np.asarray(out.probs, np.float64).ravel()})
                else:
                    outputs.append({"name": "label", "datatype": "BYTES", "shape": [out.probs.shape[0]],
                                    "data": [names[int(i)] for i in out.probs.argmax(axis=1)]})
            body_out = {"model_name": out.model, "model_version": out.version, "id": req.id or rid,
                        "parameters": {"variant": out.variant, "fallback": out.fallback}, "outputs": outputs}
            status = 200
            return _json(body_out, headers=_headers(out, state))
        except ServingError as exc:
            status = exc.status
            raise
        finally:
            hold.release()
            _record("infer", out, status, t0)

    @app.post("/v2/models/{name}/infer", tags=["oip"])
    async def infer(name: str, request: Request) -> Response:
        """OIP v2 inference (the serving variant is chosen by the traffic split)."""
        return await _infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer", tags=["oip"])
    async def infer_version(name: str, version: str, request: Request) -> Response:
        """OIP v2 inference pinned to a served version (champion or canary)."""
        return await _infer(request, name, version)

    # ---------------------------------------------------------------- metrics
    @app.get("/metrics", tags=["ops"])
    async def prometheus() -> Response:
        data, ctype = metrics.render()
        return Response(data, media_type=ctype)

    @app.get("/", tags=["ops"])
    async def index() -> dict[str, Any]:
        return {"service": SERVER_NAME, "model": source.model_name, "ready": manager.ready(),
                "endpoints": ["/v1/predict", "/v2/models/{name}/infer", "/metrics", "/docs"]}

    # ---------------------------------------------------------------- admin
    def _admin(request: Request) -> None:
        auth = request.headers.get("authorization")
        if not auth:
            raise ServingError(401, "unauthorized", "admin API: missing 'Authorization: Bearer <token>' header.")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ServingError(401, "unauthorized", "admin API: use 'Authorization: Bearer <token>'.")
        if not state.admin_token:
            raise ServingError(403, "admin_disabled",
                               f"admin API is disabled: set ${config.admin.token_env} (or admin.token in the serving "
                               "config) when starting the server.")
        if not hmac.compare_digest(given.strip().encode(), state.admin_token.encode()):
            raise ServingError(403, "forbidden", "admin API: wrong token.")

    async def _admin_body(request: Request, model: type) -> Any:
        body = await _body(request)
        hold = state.hold()
        try:
            data = _json_body(body, hold) if body.strip() else {}
            return model.model_validate(data)
        except ValidationError as exc:
            raise ServingError(422, "invalid_request", validation_detail(exc)) from None
        finally:
            hold.release()

    @app.get("/admin/status", tags=["admin"])
    async def admin_status(request: Request) -> dict[str, Any]:
        _admin(request)
        out = manager.status()
        out["uptime_s"] = time.time() - state.started
        out["shadow_pending"] = len(state.shadow_tasks)
        return out

    @app.post("/admin/canary", tags=["admin"])
    async def admin_canary(request: Request) -> dict[str, Any]:
        """Load a version as the canary (registry alias ``canary``), optionally with its share / shadow mode."""
        _admin(request)
        req = await _admin_body(request, CanaryRequest)
        return await manager.set_canary(req.version, share=req.share, shadow=req.shadow,
                                        shadow_share=req.shadow_share)

    @app.post("/admin/traffic", tags=["admin"])
    async def admin_traffic(request: Request) -> dict[str, Any]:
        _admin(request)
        req = await _admin_body(request, TrafficRequest)
        return await manager.set_traffic(canary_share=req.canary_share, shadow=req.shadow,
                                         shadow_share=req.shadow_share)

    @app.post("/admin/canary/abort", tags=["admin"])
    async def admin_abort(request: Request) -> dict[str, Any]:
        """Stop the canary (share 0, unloaded, alias removed) and tag the reason on its version."""
        _admin(request)
        req = await _admin_body(request, AbortRequest)
        return await manager.abort_canary(req.reason, req.version, status=req.status)

    @app.post("/admin/promote", tags=["admin"])
    async def admin_promote(request: Request) -> dict[str, Any]:
        """Promote the loaded canary (registry promote: alias ``champion`` moves) and swap it in."""
        _admin(request)
        req = await _admin_body(request, PromoteRequest)
        return await manager.promote(req.version, req.reason)

    @app.post("/admin/rollback", tags=["admin"])
    async def admin_rollback(request: Request) -> dict[str, Any]:
        """Return the champion to the previous champion (registry rollback) and load it."""
        _admin(request)
        req = await _admin_body(request, RollbackRequest)
        return await manager.rollback(req.reason)

    @app.post("/admin/reload", tags=["admin"])
    async def admin_reload(request: Request) -> dict[str, Any]:
        """Re-read the registry aliases now and swap in what changed."""
        _admin(request)
        try:
            changes = await manager.refresh(retry_failed=True)
        except ServingError:
            raise
        except Exception as exc:
            raise ServingError(409, "reload_failed", f"cannot read the registry aliases: {exc}") from None
        out = manager.status()
        out["changes"] = changes
        return out

    @app.get("/admin/stats", tags=["admin"])
    async def admin_stats(request: Request, samples: bool = True) -> dict[str, Any]:
        """Per-variant statistics since the last reset (what the canary controller analyses)."""
        _admin(request)
        out = stats.snapshot(with_samples=samples)
        out["traffic"] = manager.status()["traffic"]
        out["versions"] = {v: (h.version if h else None) for v, h in manager.slots.items()}
        return out

    @app.post("/admin/stats/reset", tags=["admin"])
    async def admin_stats_reset(request: Request) -> dict[str, Any]:
        _admin(request)
        stats.reset()
        return {"reset": True, "since": stats.since}

    return app


# --------------------------------------------------------------------------- building from params
def registered_model_name(params: Any, config: ServingConfig | None = None) -> str:
    """The registered model to serve: serving config, then ``serve.registered_model``, then
    ``registry.model_name``, then ``evaluate.registered_model``.

    Example:
        >>> from cvplatform.config import Params
        >>> registered_model_name(Params())
        'cvplatform'
    """
    if config is not None and config.models.registered_model:
        return config.models.registered_model
    serve = getattr(params, "serve", None)
    if serve is not None and getattr(serve, "registered_model", None):
        return str(serve.registered_model)
    registry = getattr(params, "registry", None)
    if registry is not None and getattr(registry, "model_name", None):
        return str(registry.model_name)
    return str(params.evaluate.registered_model)


def build_app(
    params: Any,
    *,
    root: str | os.PathLike[str] | None = None,
    model: str | os.PathLike[str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
    admin_token: str | None = None,
) -> FastAPI:
    """The app for a project: serving config from ``serve.config``, models from the registry (or ``model``).

    Args:
        params: project params (``load_params``).
        root: project root (default: cwd).
        model: serve this local ONNX file instead of registry aliases.
        config_path: serving config (default ``serve.config``).
        admin_token: admin bearer token (default ``$CVPLATFORM_ADMIN_TOKEN`` / ``admin.token``).

    Example:
        >>> from cvplatform.config import load_params
        >>> app = build_app(load_params("params.yaml"))  # doctest: +SKIP
    """
    from cvplatform.utils.io import ProjectPaths

    paths = ProjectPaths.at(root)
    serve = getattr(params, "serve", None)
    cfg_path = config_path or (serve.config if serve is not None else None)
    config = load_serving_config(paths.resolve(cfg_path) if cfg_path else None)
    m = config.models
    src: ModelSource
    if model is not None:
        if not paths.resolve(model).is_file():  # a typo: fail now, not as a server that is never ready
            from cvplatform.errors import ConfigError

            raise ConfigError(f"--model {paths.resolve(model)}: no such file. Pass an exported ONNX model "
                              "(`cvplatform export` writes artifacts/export/model.onnx), or leave --model out "
                              "to serve the registry's champion alias.")
        src = FileSource(paths.resolve(model), model_name=registered_model_name(params, config),
                         providers=m.providers, intra_op_threads=m.intra_op_threads,
                         allow_spinning=m.allow_spinning, champion_alias=m.champion_alias)
    else:
        src = RegistrySource(registered_model_name(params, config), root=paths.root, params=params,
                             providers=m.providers, intra_op_threads=m.intra_op_threads,
                             allow_spinning=m.allow_spinning, champion_alias=m.champion_alias)
    request_log = None
    mon = getattr(params, "monitor", None)
    if mon is not None and mon.log_requests:
        from cvplatform.monitoring.inference_log import InferenceLogger

        request_log = InferenceLogger.from_params(params, paths.root)
    return create_app(config, src, admin_token=admin_token, request_log=request_log)


def serve(
    params: Any,
    *,
    host: str | None = None,
    port: int | None = None,
    root: str | os.PathLike[str] | None = None,
    model: str | os.PathLike[str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
    log_level: str = "info",
) -> None:
    """Run the inference service under uvicorn until interrupted (``cvplatform serve``).

    The connection layer is :mod:`cvplatform.serving.protocol` (JSON protocol errors, header and
    body timeouts, idle timeout and header size limit from the serving config's ``limits``);
    WebSocket upgrades are off.

    Example:
        >>> from cvplatform.config import load_params
        >>> serve(load_params("params.yaml"), host="127.0.0.1", port=8080)  # doctest: +SKIP
    """
    import uvicorn

    from cvplatform.serving.budget import return_large_buffers_to_os
    from cvplatform.serving.protocol import protocol_class

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in server logs
    if not return_large_buffers_to_os():
        log.debug("mallopt is not available: freed image buffers may stay resident (RSS above the decode budget)")
    s = getattr(params, "serve", None)
    host = host or (s.host if s is not None else "127.0.0.1")
    port = int(port if port is not None else (s.port if s is not None else 8080))
    app = build_app(params, root=root, model=model, config_path=config_path)
    limits = app.state.cv.config.limits
    log.info("serving %s on http://%s:%d", app.state.cv.manager.source.model_name, host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, ws="none",
                http=protocol_class(limits), timeout_keep_alive=limits.keep_alive_timeout_s)  # type: ignore[arg-type]


__all__ = ["BodyLimitMiddleware", "ServerState", "build_app", "create_app", "predict_core",
           "registered_model_name", "serve"]
