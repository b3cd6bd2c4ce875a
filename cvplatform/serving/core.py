"""What every route shares: the server state (over the model manager) and the prediction core.

* :class:`ServerState` is what an app instance owns; it lives on ``app.state.cv`` and the routers
  get it with the :func:`get_state` dependency. The models themselves (champion / canary slots, the
  canary split, swaps on registry alias changes, the per-variant statistics) are held by its
  :class:`~cvplatform.serving.models.ModelManager`.
* :func:`predict_core` routes a request to a variant, decodes and preprocesses its images after
  routing (charging the decode memory first), runs it with the canary -> champion fallback,
  records statistics and metrics, and starts the shadow scoring.

Nothing here knows what the model predicts: the model's raw outputs are decoded by the project's
task (:attr:`ServerState.task`, from ``project.task``): ``task.decode_top`` gives each image's class
and confidence for the statistics, the per-class counters, the inference log and the shadow
agreement; the routes shape responses with ``task.decode`` / ``task.response`` and ``task.tensor_outputs``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from cvplatform.serving.budget import BudgetHold, MemoryBudget, decode_cost_bytes
from cvplatform.serving.inputs import OpenedImage, open_images
from cvplatform.serving.metrics import ServingMetrics, StatsBook
from cvplatform.serving.models import ModelHandle, ModelManager, ServingError
from cvplatform.serving.routing import choose_variant, routing_key, should_shadow
from cvplatform.serving.schemas import ServingConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from cvplatform.serving.batching import BatchTime
    from cvplatform.tasks import Task

log = logging.getLogger(__name__)


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
    bus: Any = None
    """:class:`cvplatform.serving.workers.WorkerBus` when several worker processes share the port, else None."""

    async def synced(self, out: dict[str, Any]) -> dict[str, Any]:
        """``out`` (an admin action's answer) after every other worker process applied the action (``workers``:
        which did); unchanged with one process."""
        if self.bus is not None:
            out["workers"] = await self.bus.publish(self.manager)
        return out

    def hold(self) -> BudgetHold:
        """A new charge against :attr:`budget` for one request."""
        if self.budget is None:
            self.budget = MemoryBudget(self.config.limits.max_inflight_decode_bytes)
        return self.budget.hold()

    @property
    def model_name(self) -> str:
        return self.manager.source.model_name

    @property
    def task(self) -> Task:
        """The project's task (held by the model manager)."""
        return self.manager.task

    def served(self, name: str, version: str | None = None) -> ModelHandle:
        """The handle serving ``name`` (``version``: pinned to the champion or canary), or a 404 / 503."""
        manager = self.manager
        champion = manager.champion
        if name != self.model_name:
            raise ServingError(404, "unknown_model",
                               f"model {name!r} is not served here; this server serves {self.model_name!r}.")
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

    def record(self, endpoint: str, out: Outcome | None, status: int, t0: float) -> None:
        """Count a finished request (``cvplatform_requests_total``) and its latency."""
        model = out.model if out else self.model_name
        version = out.version if out else "none"
        variant = out.variant if out else "none"
        self.metrics.requests.labels(endpoint, model, version, variant, str(status)).inc()
        self.metrics.request_latency.labels(endpoint, variant).observe(time.perf_counter() - t0)


async def get_state(request: Request) -> ServerState:
    """FastAPI dependency: the :class:`ServerState` of the app serving ``request``.

    A coroutine on purpose: FastAPI runs a plain ``def`` dependency in its threadpool, one thread hop
    per request for an attribute lookup.
    """
    return request.app.state.cv


@dataclass
class Outcome:
    """What a prediction produced (before it is shaped into a response)."""

    request_id: str
    handle: ModelHandle
    variant: str
    outputs: dict[str, np.ndarray]
    """The model's raw outputs by the task's ``output_names`` (classification: ``{"logits": (N, C)}``)."""
    fallback: bool = False
    classes: list[str] = field(default_factory=list)
    """Each image's class as the task decodes it (``task.decode_top``)."""
    confidences: list[float] = field(default_factory=list)
    task: Task | None = None
    """The task that decoded :attr:`outputs` (the routes shape the response with it)."""
    image_sizes: list[tuple[int, int]] | None = None
    """``(height, width)`` of each request image as decoded (None for a tensor input): a task whose predictions
    hold pixel positions maps them from the model input back to the image (``task.to_image_pixels``)."""
    options: dict[str, Any] = field(default_factory=dict)
    """The request's checked decoding parameters (:mod:`cvplatform.serving.options`; empty = the task's defaults),
    keyword arguments of ``task.decode`` / ``task.tensor_outputs``."""
    _predictions: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def decoded(self) -> list[dict[str, Any]] | None:
        """:attr:`predictions` when they were decoded already (the task's metrics need them), else None."""
        return self._predictions

    @property
    def predictions(self) -> list[dict[str, Any]]:
        """Each image's prediction as the task decodes it with the request's :attr:`options` (in model-input
        pixels; decoded once, on first use)."""
        if self._predictions is None:
            task = self.task
            assert task is not None
            self._predictions = task.decode(self.outputs, self.handle.model.class_names, **self.options)
        return self._predictions

    @property
    def model(self) -> str:
        return self.handle.model.name

    @property
    def version(self) -> str:
        return self.handle.version


# --------------------------------------------------------------------------- inputs
def _contract_key(h: ModelHandle) -> tuple:
    c = h.model.contract
    return (c.input_size, c.mean, c.std, c.interpolation, c.resize, c.pad_value)


def _same_contract(a: ModelHandle, b: ModelHandle) -> bool:
    """Whether both models take identically preprocessed inputs."""
    return _contract_key(a) == _contract_key(b)


async def _prepare(images: list[np.ndarray], handle: ModelHandle, inline_max_pixels: int) -> np.ndarray:
    """Preprocess decoded images for ``handle``: on the event loop when the work is small (the same
    ``batching.inline_decode_max_pixels`` budget as decoding: source + model-input pixels), else in a
    worker thread."""
    import numpy as np

    from cvplatform.preprocess import preprocess

    contract = handle.model.contract
    h, w = contract.input_size
    try:
        work = sum(int(np.shape(im)[0]) * int(np.shape(im)[1]) for im in images) + len(images) * int(h) * int(w)
    except (IndexError, TypeError, ValueError):  # not images: preprocess, in its thread, says what is wrong
        work = inline_max_pixels + 1
    if work <= inline_max_pixels:
        return preprocess(images, contract)
    return await asyncio.to_thread(preprocess, images, contract)


def _decode_and_preprocess(opened: list[OpenedImage], contract: Any) -> tuple[list[np.ndarray], np.ndarray]:
    from cvplatform.preprocess import preprocess

    images = [im.decode() for im in opened]
    return images, preprocess(images, contract)


def _decode_work(opened: list[OpenedImage], contract: Any) -> int:
    """Pixels a request costs to decode and preprocess: its source pixels + the model-input pixels per image."""
    h, w = contract.input_size
    return sum(im.pixels for im in opened) + len(opened) * int(h) * int(w)


class RequestInputs:
    """One request's input (decoded images, encoded blobs or a preprocessed tensor), prepared per contract.

    Blobs are decoded on first use, after routing: their headers are checked and their decode memory
    charged to ``hold`` before any pixel is decoded; small requests are decoded on the event loop,
    large ones in a worker thread (``batching.inline_decode_max_pixels``). Each model input is kept
    by preprocessing contract, so a fallback or shadow model with the same contract reuses it.
    """

    def __init__(self, state: ServerState, images: list[np.ndarray] | None, tensor: np.ndarray | None,
                 blobs: list[bytes] | None, hold: BudgetHold | None) -> None:
        self.state = state
        self.images = images
        self.tensor = tensor
        self.blobs = blobs
        self.hold = hold
        self.prepared: dict[tuple, np.ndarray] = {}

    async def prepare_for(self, h: ModelHandle) -> np.ndarray:
        if self.tensor is not None:
            return self.tensor
        key = _contract_key(h)
        if key in self.prepared:
            return self.prepared[key]
        if self.images is None and self.blobs is not None:
            opened = open_images(self.blobs, self.state.config.limits)  # headers only: format, size, pixel limits
            contract = h.model.contract
            if self.hold is not None:  # the memory the decoding needs, before any pixel is decoded
                self.hold.take(decode_cost_bytes(opened, contract.input_size),
                               f"decoding {len(opened)} image(s) of {sum(im.pixels for im in opened)} pixels")
            if _decode_work(opened, contract) <= self.state.config.batching.inline_decode_max_pixels:
                imgs, x = _decode_and_preprocess(opened, contract)  # small: cheaper than a thread hop
            else:  # large: a worker thread, so the event loop keeps serving
                imgs, x = await asyncio.to_thread(_decode_and_preprocess, opened, contract)
            self.images = imgs
        else:
            x = await _prepare(self.images or [], h, self.state.config.batching.inline_decode_max_pixels)
        self.prepared[key] = x
        return x


# --------------------------------------------------------------------------- prediction
def _route(state: ServerState, champion: ModelHandle | None, canary: ModelHandle | None, key: str,
           pinned_version: str | None, tensor: np.ndarray | None) -> tuple[str, ModelHandle]:
    """The variant that answers (and its handle): the pinned version, else the traffic split."""
    mgr = state.manager
    if champion is None:
        why = f" (last error: {mgr.errors['champion']})" if mgr.errors["champion"] else ""
        raise ServingError(503, "not_ready", f"no champion model is loaded{why}; retry later.")
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
        variant = choose_variant(key, mgr.traffic.canary_share, canary.version if canary is not None else None)
    if variant == "canary" and tensor is not None and canary is not None and not _same_contract(canary, champion):
        variant = "champion"  # the tensor was preprocessed with the advertised (champion) contract
    handle = champion if variant == "champion" else canary
    assert handle is not None
    return variant, handle


def _model_failed(state: ServerState, handle: ModelHandle, variant: str, request_id: str, exc: Exception) -> None:
    state.stats.record_error(variant, handle.version)
    state.metrics.model_errors.labels(handle.model.name, handle.version, variant, "answer").inc()
    log.error("%s v%s failed on request %s: %s", variant, handle.version, request_id, exc)


def _model_error(handle: ModelHandle, request_id: str) -> ServingError:
    return ServingError(503, "model_error", f"{handle.model.name} v{handle.version} failed on request "
                                            f"{request_id}; the server log has the cause.")


async def _answer(state: ServerState, handle: ModelHandle, variant: str, champion: ModelHandle, inputs: RequestInputs,
                  request_id: str, pinned: bool) -> tuple[ModelHandle, str, bool, np.ndarray, float, BatchTime]:
    """Run ``handle``; when an unpinned canary fails, the champion answers (``fallback``)."""
    try:
        raw, ms, timing = await handle.prepare_and_infer(lambda: inputs.prepare_for(handle))
        return handle, variant, False, raw, ms, timing
    except ServingError:  # bad input found while decoding: a 4xx, not a model failure
        raise
    except Exception as exc:
        if variant != "canary" or pinned:
            _model_failed(state, handle, variant, request_id, exc)
            raise _model_error(handle, request_id) from None
        state.stats.record_error(variant, handle.version)
        state.metrics.model_errors.labels(handle.model.name, handle.version, variant, "answer").inc()
        log.warning("canary v%s failed (champion answers): %s", handle.version, exc)
    try:
        raw, ms, timing = await champion.prepare_and_infer(lambda: inputs.prepare_for(champion))
    except ServingError:
        raise
    except Exception as exc2:
        _model_failed(state, champion, "champion", request_id, exc2)
        raise _model_error(champion, request_id) from None
    return champion, "champion", True, raw, ms, timing


def _outputs(state: ServerState, raw: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batcher's model outputs keyed as the task names them (:meth:`RuntimeModel.forward` returns them so;
    a bare array, e.g. from a test double, is the task's only output)."""
    return dict(raw) if isinstance(raw, dict) else {state.task.output_names[0]: raw}


def _top(state: ServerState, handle: ModelHandle, outputs: dict[str, np.ndarray]) -> tuple[list[str], list[float]]:
    """Each image's class and confidence, decoded by the task in one vectorised call."""
    classes, conf = state.task.decode_top(outputs, handle.model.class_names)
    return classes.tolist(), conf.tolist()


def _objects(state: ServerState, handle: ModelHandle, outputs: dict[str, np.ndarray],
             out: Outcome | None = None) -> list[dict[str, Any]] | None:
    """Each image's objects (``task.object_signals``: detection's boxes), or None for a one-class-per-image task.
    ``out``: the answer; when it is decoded with the task's defaults, its predictions are the objects' (the
    boxes are post-processed once per request)."""
    task = state.task
    decoded = out.predictions if out is not None and task.has_objects and not out.options else None
    return task.object_signals(outputs, handle.model.class_names, tuple(handle.model.contract.input_size),
                               predictions=decoded)


def _feedback(state: ServerState, handle: ModelHandle, outputs: dict[str, np.ndarray], truth: list[Any] | None,
              images: list[np.ndarray] | None) -> list[dict[str, Any]] | None:
    """The records of a labelled request the task keeps for its feedback score (``task.feedback``: detection's true
    and served boxes), or None (no truth sent, or a task whose truth is one class per image: accuracy)."""
    if truth is None:
        return None
    sizes = [(int(im.shape[0]), int(im.shape[1])) for im in images] if images is not None else None
    return state.task.feedback(outputs, handle.model.class_names, truth, handle.model.contract, sizes)


def _count_answer(state: ServerState, handle: ModelHandle, variant: str, top: list[str], conf: list[float],
                  ms: float) -> None:
    m = state.metrics
    m.inference_latency.labels(handle.model.name, handle.version, variant).observe(ms / 1000.0)
    for cls, n in collections.Counter(top).items():
        m.predictions.labels(handle.model.name, handle.version, variant, cls).inc(n)
    confidence = m.confidence.labels(handle.model.name, handle.version, variant)
    for c in conf:
        confidence.observe(c)


def _start_shadow(state: ServerState, other: ModelHandle, variant: str, inputs: RequestInputs,
                  labels: list[Any] | None, top: list[str], conf: list[float], request_id: str,
                  answered: tuple[ModelHandle, dict[str, np.ndarray]] | None = None) -> None:
    """Let ``other`` score the same input in the background (skipped when too many are pending)."""
    if len(state.shadow_tasks) >= state.config.traffic.max_pending_shadow:
        state.stats.record_shadow_skipped()
        state.metrics.shadow.labels("skipped").inc()
        return
    images, hold = inputs.images, inputs.hold
    x_other = inputs.tensor if inputs.tensor is not None else inputs.prepared.get(_contract_key(other))
    task = asyncio.create_task(_shadow(state, other, variant, images, x_other, labels, top, request_id, conf, hold,
                                       answered))
    state.shadow_tasks.add(task)
    task.add_done_callback(state.shadow_tasks.discard)
    if hold is not None and images is not None:  # the shadow keeps the decoded images alive
        hold.share()
        task.add_done_callback(lambda _t: hold.release())


async def predict_core(
    state: ServerState,
    *,
    request_id: str,
    session_id: str | None,
    labels: list[Any] | None,
    images: list[np.ndarray] | None = None,
    tensor: np.ndarray | None = None,
    blobs: list[bytes] | None = None,
    pinned_version: str | None = None,
    t_start: float | None = None,
    hold: BudgetHold | None = None,
    options: dict[str, Any] | None = None,
) -> Outcome:
    """Route, run (with canary -> champion fallback), record stats and metrics, start the shadow scoring.

    The input is decoded ``images``, encoded ``blobs`` (decoded and preprocessed after routing: on
    the event loop when small, see ``batching.inline_decode_max_pixels``, else in one worker-thread
    hop) or a preprocessed ``tensor``. Before ``blobs`` are decoded, their estimated decode memory
    is charged to ``hold`` (413/429 when it does not fit); a shadow scoring that keeps the decoded
    images shares the charge until it ends. ``options``: the request's checked decoding parameters
    (:func:`cvplatform.serving.options.request_options`); the task's metrics count what they decode.
    """
    champion, canary = state.manager.champion, state.manager.canary
    traffic = state.manager.traffic
    key = routing_key(request_id, session_id)
    variant, handle = _route(state, champion, canary, key, pinned_version, tensor)
    assert champion is not None
    inputs = RequestInputs(state, images, tensor, blobs, hold)
    handle, variant, fallback, raw, ms, timing = await _answer(state, handle, variant, champion, inputs,
                                                               request_id, pinned_version is not None)
    outputs = _outputs(state, raw)
    top, conf = _top(state, handle, outputs)
    request_ms = (time.perf_counter() - t_start) * 1000.0 if t_start is not None else None
    sizes = [(int(im.shape[0]), int(im.shape[1])) for im in inputs.images] if inputs.images is not None else None
    out = Outcome(request_id, handle, variant, outputs, fallback, top, conf, state.task, sizes, dict(options or {}))
    objects = _objects(state, handle, outputs, out)
    feedback = _feedback(state, handle, outputs, labels, inputs.images)
    state.stats.record_answer(variant, handle.version, top, conf, labels if feedback is None else None, ms,
                              request_ms, fallback=fallback, compute_ms=timing.ms_per_row, batch_rows=timing.rows,
                              overlapped=timing.overlapped, objects=objects, feedback=feedback)
    _count_answer(state, handle, variant, top, conf, ms)
    _log_requests(state, inputs.images, handle, variant, request_id, top, conf, hold, objects)
    # shadow: the other variant scores the same input in the background
    other = canary if variant == "champion" else champion
    mirror = other is not None and not fallback and pinned_version is None and should_shadow(key, traffic)
    if mirror and tensor is not None and not _same_contract(other, handle):
        mirror = False  # a preprocessed tensor fits only models with the same contract
    if mirror and other is not None:
        _start_shadow(state, other, "canary" if other is canary else "champion", inputs, labels, top, conf,
                      request_id, (handle, outputs))
    if state.metrics.task_metrics:  # the task's own metrics, on what the request is answered
        observed = state.task.served_observations(out.predictions, handle.model.class_names)
        state.metrics.observe_task(handle.model.name, handle.version, variant, observed)
    return out


async def _shadow(state: ServerState, handle: ModelHandle, variant: str, images: list[np.ndarray] | None,
                  x: np.ndarray | None, labels: list[Any] | None, answered: list[str], request_id: str,
                  answered_conf: list[float] | None = None, hold: BudgetHold | None = None,
                  answered_by: tuple[ModelHandle, dict[str, np.ndarray]] | None = None) -> None:
    """Score a mirrored request with ``handle`` (``x``: its input when already prepared) and record agreement:
    the task's per-image ``shadow_agreement`` with the answering model's outputs (``answered_by``), else top-1."""

    async def prepare() -> np.ndarray:
        if x is not None:
            return x
        return await _prepare(images or [], handle, state.config.batching.inline_decode_max_pixels)

    try:
        raw, ms, timing = await handle.prepare_and_infer(prepare)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.info("shadow %s v%s failed: %s", variant, handle.version, exc)
        state.stats.record_error(variant, handle.version, shadow=True)
        state.metrics.model_errors.labels(handle.model.name, handle.version, variant, "shadow").inc()
        state.metrics.shadow.labels("error").inc()
        return
    outputs = _outputs(state, raw)
    top, conf = _top(state, handle, outputs)
    agreement = None
    if answered_by is not None:
        a_handle, a_outputs = answered_by
        agreement = state.task.shadow_agreement(a_outputs, a_handle.model.class_names, outputs,
                                                handle.model.class_names).tolist()
    objects = _objects(state, handle, outputs)
    feedback = _feedback(state, handle, outputs, labels, images)
    state.stats.record_shadow(variant, handle.version, top, conf, labels if feedback is None else None, ms, answered,
                              request_id, answered_conf, compute_ms=timing.ms_per_row, batch_rows=timing.rows,
                              overlapped=timing.overlapped, agreement=agreement, objects=objects, feedback=feedback)
    _log_requests(state, images, handle, "shadow", request_id, top, conf, hold, objects)
    same = agreement if agreement is not None else [float(a == b) for a, b in zip(answered, top, strict=False)]
    for score in same:
        state.metrics.shadow.labels("agree" if score >= 1.0 - 1e-9 else "disagree").inc()


def _log_requests(state: ServerState, images: list[np.ndarray] | None, handle: ModelHandle, variant: str,
                  request_id: str, top: list[str], conf: list[float], hold: BudgetHold | None = None,
                  objects: list[dict[str, Any]] | None = None) -> None:
    """Queue one inference-log record per image (input statistics + prediction + the task's objects, if any) for
    ``cv_monitor``.

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
                                on_done=hold.release if keep else None, objects=objects):
        return
    if keep:
        hold.release()
    state.metrics.request_log_dropped.inc()


__all__ = ["Outcome", "RequestInputs", "ServerState", "get_state", "predict_core"]
