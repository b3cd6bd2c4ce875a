"""The token-protected admin API (``Authorization: Bearer <token>``): status, canary, traffic, abort,
promote, rollback, reload and statistics. Every action goes through the app's model manager
(:class:`~cvplatform.serving.models.ModelManager`), which keeps the registry aliases in step.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from cvplatform.serving.core import ServerState, get_state
from cvplatform.serving.inputs import validation_detail
from cvplatform.serving.models import ServingError
from cvplatform.serving.schemas import (
    AbortRequest,
    CanaryRequest,
    PromoteRequest,
    RollbackRequest,
    TrafficRequest,
)
from cvplatform.serving.web import json_body, read_body


async def require_admin(request: Request, state: ServerState = Depends(get_state)) -> ServerState:
    """Dependency of every admin route: 401 without a bearer token, 403 when disabled or wrong (a coroutine:
    no threadpool hop for a header check)."""
    auth = request.headers.get("authorization")
    if not auth:
        raise ServingError(401, "unauthorized", "admin API: missing 'Authorization: Bearer <token>' header.")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ServingError(401, "unauthorized", "admin API: use 'Authorization: Bearer <token>'.")
    if not state.admin_token:
        raise ServingError(403, "admin_disabled",
                           f"admin API is disabled: set ${state.config.admin.token_env} (or admin.token in the "
                           "serving config) when starting the server.")
    if not hmac.compare_digest(given.strip().encode(), state.admin_token.encode()):
        raise ServingError(403, "forbidden", "admin API: wrong token.")
    return state


router = APIRouter()
Admin = Depends(require_admin)


async def _admin_body(request: Request, state: ServerState, model: type) -> Any:
    body = await read_body(request)
    hold = state.hold()
    try:
        data = json_body(body, hold) if body.strip() else {}
        return model.model_validate(data)
    except ValidationError as exc:
        raise ServingError(422, "invalid_request", validation_detail(exc)) from None
    finally:
        hold.release()


@router.get("/admin/status", tags=["admin"])
async def admin_status(state: ServerState = Admin) -> dict[str, Any]:
    out = state.manager.status()
    out["uptime_s"] = time.time() - state.started
    out["shadow_pending"] = len(state.shadow_tasks)
    if state.bus is not None:
        out["worker"] = {"index": state.bus.index, "pid": state.bus.pid, "workers": state.bus.workers}
    return out


@router.post("/admin/canary", tags=["admin"])
async def admin_canary(request: Request, state: ServerState = Admin) -> dict[str, Any]:
    """Load a version as the canary (registry alias ``canary``), optionally with its share / shadow mode."""
    req = await _admin_body(request, state, CanaryRequest)
    return await state.synced(await state.manager.set_canary(req.version, share=req.share, shadow=req.shadow,
                                                             shadow_share=req.shadow_share))


@router.post("/admin/traffic", tags=["admin"])
async def admin_traffic(request: Request, state: ServerState = Admin) -> dict[str, Any]:
    req = await _admin_body(request, state, TrafficRequest)
    return await state.synced(await state.manager.set_traffic(canary_share=req.canary_share, shadow=req.shadow,
                                                              shadow_share=req.shadow_share))


@router.post("/admin/canary/abort", tags=["admin"])
async def admin_abort(request: Request, state: ServerState = Admin) -> dict[str, Any]:
    """Stop the canary (share 0, unloaded, alias removed) and tag the reason on its version."""
    req = await _admin_body(request, state, AbortRequest)
    return await state.synced(await state.manager.abort_canary(req.reason, req.version, status=req.status))


@router.post("/admin/promote", tags=["admin"])
async def admin_promote(request: Request, state: ServerState = Admin) -> dict[str, Any]:
    """Promote the loaded canary (registry promote: alias ``champion`` moves) and swap it in."""
    req = await _admin_body(request, state, PromoteRequest)
    return await state.synced(await state.manager.promote(req.version, req.reason))


@router.post("/admin/rollback", tags=["admin"])
async def admin_rollback(request: Request, state: ServerState = Admin) -> dict[str, Any]:
    """Return the champion to the previous champion (registry rollback) and load it."""
    req = await _admin_body(request, state, RollbackRequest)
    return await state.synced(await state.manager.rollback(req.reason))


@router.post("/admin/reload", tags=["admin"])
async def admin_reload(state: ServerState = Admin) -> dict[str, Any]:
    """Re-read the registry aliases now and swap in what changed."""
    manager = state.manager
    try:
        changes = await manager.refresh(retry_failed=True)
    except ServingError:
        raise
    except Exception as exc:
        raise ServingError(409, "reload_failed", f"cannot read the registry aliases: {exc}") from None
    out = manager.status()
    out["changes"] = changes
    return await state.synced(out)


async def _feedback_summaries(state: ServerState, book: Any, out: dict[str, Any]) -> None:
    """Each variant's ``feedback``: the task's score of its kept labelled-feedback records (``task.feedback_summary``:
    detection's COCO mAP50 of the served boxes against the true ones, computed in a thread), with how many labelled
    images it saw (``seen``) and kept; nothing for a task without such records (classification: ``accuracy``)."""
    import asyncio

    task = state.task
    for variant, records in book.feedback_records().items():
        summary = await asyncio.to_thread(task.feedback_summary, records) if records else task.feedback_summary([])
        if summary is None:
            continue
        counts = out["variants"][variant].get("feedback") or {"seen": 0, "kept": 0}
        out["variants"][variant]["feedback"] = {**counts, **summary}


@router.get("/admin/stats", tags=["admin"])
async def admin_stats(samples: bool = True, feedback: bool = True, state: ServerState = Admin) -> dict[str, Any]:
    """Per-variant statistics since the last reset (what the canary controller analyses); with several worker
    processes, the sum over all of them (``workers``: which reported, and each one's request count).
    ``feedback=false`` leaves out the scores of the kept labelled feedback (detection: a COCO evaluation of up to
    ``stats.feedback_kept`` images per variant and worker, the costly part; the counts stay): the controller's
    polls between analyses ask for it."""
    if state.bus is None:
        book = state.stats
        out = book.snapshot(with_samples=samples)
    else:
        book, report = await state.bus.gather_stats(state.stats)
        out = book.snapshot(with_samples=samples)
        out["workers"] = report
    if feedback:
        await _feedback_summaries(state, book, out)
    out["task"] = state.task.name
    out["shadow"]["measure"] = state.task.agreement_measure
    out["traffic"] = state.manager.status()["traffic"]
    out["versions"] = {v: (h.version if h else None) for v, h in state.manager.slots.items()}
    return out


@router.post("/admin/stats/reset", tags=["admin"])
async def admin_stats_reset(state: ServerState = Admin) -> dict[str, Any]:
    if state.bus is None:
        state.stats.reset()
        return {"reset": True, "since": state.stats.since}
    report = await state.bus.reset_stats(state.stats)
    return {"reset": True, "since": state.stats.since, "workers": report}


__all__ = ["require_admin", "router"]
