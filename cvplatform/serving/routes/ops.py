"""Health, metrics and the index: ``/v2/health/live|ready`` (OIP v2), ``/metrics`` (Prometheus), ``/``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from cvplatform.serving.core import ServerState, get_state

router = APIRouter()
SERVER_NAME = "cvplatform"


@router.get("/v2/health/live", tags=["oip"])
async def live() -> dict[str, Any]:
    return {"live": True}


@router.get("/v2/health/ready", tags=["oip"])
async def ready(state: ServerState = Depends(get_state)) -> Response:
    manager = state.manager
    if manager.ready():
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False, "error": "not_ready",
                         "detail": manager.errors["champion"] or "no champion model loaded yet"},
                        status_code=503)


@router.get("/metrics", tags=["ops"])
async def prometheus(state: ServerState = Depends(get_state)) -> Response:
    if state.bus is not None:  # several worker processes: the sum of all of them
        data, ctype = await state.bus.gather_metrics(state.metrics)
    else:
        data, ctype = state.metrics.render()
    return Response(data, media_type=ctype)


@router.get("/", tags=["ops"])
async def index(state: ServerState = Depends(get_state)) -> dict[str, Any]:
    return {"service": SERVER_NAME, "model": state.model_name, "ready": state.manager.ready(),
            "endpoints": ["/v1/predict", "/v2/models/{name}/infer", "/metrics", "/docs"]}


__all__ = ["SERVER_NAME", "router"]
