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
import logging
import os
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI  # app.py is imported only when serving (never by `import cvplatform`)

from cvplatform.serving.budget import MemoryBudget
from cvplatform.serving.core import Outcome, ServerState, get_state, predict_core
from cvplatform.serving.metrics import ServingMetrics, StatsBook
from cvplatform.serving.models import FileSource, ModelManager, ModelSource, RegistrySource
from cvplatform.serving.openapi import document_requests
from cvplatform.serving.options import parameter_names
from cvplatform.serving.routes import ROUTERS
from cvplatform.serving.routes.ops import SERVER_NAME
from cvplatform.serving.schemas import ServingConfig, check_admin_token, load_serving_config
from cvplatform.serving.web import (
    BodyLimitMiddleware,
    ClientGone,
    PayloadTooLarge,
    header_value,
    install_error_handlers,
)
from cvplatform.tasks import Task, get_task

log = logging.getLogger(__name__)

#: Name of this server among several replicas of one project (letters and digits): tags its request-log files.
ENV_REPLICA = "CVPLATFORM_SERVING_REPLICA"


# --------------------------------------------------------------------------- the app
def create_app(config: ServingConfig, source: ModelSource, *, admin_token: str | None = None,
               request_log: Any = None, task: Task | None = None, bus: Any = None) -> FastAPI:
    """Build the inference service for ``source`` with ``config``.

    Args:
        config: the serving configuration (``configs/deploy/serving.yaml``).
        source: where models come from (:class:`~cvplatform.serving.models.RegistrySource` or
            :class:`~cvplatform.serving.models.FileSource`).
        admin_token: bearer token of the admin API (default :meth:`ServingConfig.admin_token`);
            None and unset = admin API disabled (403).
        request_log: an :class:`~cvplatform.monitoring.inference_log.InferenceLogger` that gets one record
            per served image (input statistics + prediction) for drift monitoring; None = no log.
        task: the project's task (``get_task(params.project.task)``; default classification): it decodes
            the model's outputs into responses, OIP outputs, statistics, metrics and log records.
        bus: the :class:`~cvplatform.serving.workers.WorkerBus` of this worker process when several share the
            port (``serve.workers`` > 1): admin actions and statistics then span every worker. None = one process.

    Example:
        >>> from cvplatform.serving.models import FileSource
        >>> app = create_app(ServingConfig(), FileSource("model.onnx"))  # doctest: +SKIP
        >>> import uvicorn; uvicorn.run(app, port=8080)  # doctest: +SKIP
    """
    task = task if task is not None else get_task()
    parameter_names(task)  # the request parameters other tasks declare, found now rather than on the first request
    metrics = ServingMetrics(task.served_metrics)
    stats = StatsBook(config.stats.window, config.stats.confidence_bins, config.stats.disagreements_kept,
                      config.stats.feedback_kept)
    manager = ModelManager(source, config, metrics, stats, task=task)
    token = (admin_token or None) if admin_token is not None else config.admin_token()
    check_admin_token(token, "the admin_token argument" if admin_token else config.admin_token_source())
    log_queue = None
    if request_log is not None:
        from cvplatform.monitoring.inference_log import InferenceLogQueue

        log_queue = InferenceLogQueue(request_log)
    state = ServerState(config, manager, metrics, stats, token, request_log=log_queue,
                        budget=MemoryBudget(config.limits.max_inflight_decode_bytes,
                                            on_change=metrics.decode_bytes_in_flight.set), bus=bus)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        await manager.start()
        if bus is not None:
            await bus.catch_up(manager, stats)  # a restarted worker serves the published state from its first request
        follower = asyncio.create_task(bus.run(manager, stats), name="worker-bus") if bus is not None else None
        try:
            yield
        finally:
            if follower is not None:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
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
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    document_requests(app, config, task)
    return app


# --------------------------------------------------------------------------- building from params
def registered_model_name(params: Any) -> str:
    """The registered model to serve: ``registry.model_name`` of the params.

    Example:
        >>> from cvplatform.config import Params
        >>> registered_model_name(Params())
        'cvplatform'
    """
    return str(params.registry.model_name)


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
        src = FileSource(paths.resolve(model), model_name=registered_model_name(params),
                         providers=m.providers, intra_op_threads=m.intra_op_threads,
                         allow_spinning=m.allow_spinning, champion_alias=params.registry.champion_alias)
    else:
        src = RegistrySource(registered_model_name(params), root=paths.root, params=params,
                             providers=m.providers, intra_op_threads=m.intra_op_threads,
                             allow_spinning=m.allow_spinning, champion_alias=params.registry.champion_alias)
    from cvplatform.serving.workers import bus_from_env

    bus = bus_from_env()  # set in the worker processes of `serve.workers` > 1
    request_log = None
    mon = getattr(params, "monitor", None)
    if mon is not None and mon.log_requests:
        from cvplatform.monitoring.inference_log import InferenceLogger

        # one request-log file per process: the replica's name (several `cvplatform serve` on one project,
        # e.g. `make stack`) and the worker index (`serve.workers` > 1)
        tag = os.environ.get(ENV_REPLICA, "") + (f"w{bus.index}" if bus else "")
        request_log = InferenceLogger.from_params(params, paths.root, tag=tag or None)
    project = getattr(params, "project", None)
    task = get_task(getattr(project, "task", None))
    return create_app(config, src, admin_token=admin_token, request_log=request_log, task=task, bus=bus)


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
    workers = int(getattr(s, "workers", 1) or 1)
    if workers > 1:  # a supervisor over `workers` processes sharing one socket (cvplatform.serving.workers)
        from cvplatform.serving.workers import run_workers

        code = run_workers(params, host=host, port=port, workers=workers, root=root, model=model,
                           config_path=config_path, log_level=log_level)
        if code:
            raise SystemExit(code)
        return
    app = build_app(params, root=root, model=model, config_path=config_path)
    limits = app.state.cv.config.limits
    log.info("serving %s on http://%s:%d", app.state.cv.manager.source.model_name, host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, ws="none",
                http=protocol_class(limits), timeout_keep_alive=limits.keep_alive_timeout_s)  # type: ignore[arg-type]


__all__ = ["SERVER_NAME", "BodyLimitMiddleware", "ClientGone", "Outcome", "PayloadTooLarge", "ServerState",
           "build_app", "create_app", "get_state", "header_value", "predict_core", "registered_model_name", "serve"]
