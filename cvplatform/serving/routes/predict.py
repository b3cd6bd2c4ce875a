"""``POST /v1/predict``: images as multipart (``files=``), JSON ``{"instances": [{"b64": ...}]}`` or a raw body."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError

from cvplatform.serving.budget import BudgetHold
from cvplatform.serving.core import Outcome, ServerState, get_state, predict_core
from cvplatform.serving.inputs import b64decode_strict, multipart_files, validation_detail
from cvplatform.serving.models import ServingError
from cvplatform.serving.schemas import LimitsConfig, PredictRequest
from cvplatform.serving.web import (
    answer_headers,
    json_body,
    json_response,
    labels_from_header,
    media_type,
    read_body,
    request_ids,
)
from cvplatform.tasks import get_task

router = APIRouter()


async def images_from_request(request: Request, hold: BudgetHold, limits: LimitsConfig) -> list[bytes]:
    """The encoded image files of a ``/v1/predict`` request, by its Content-Type."""
    media = media_type(request)
    body = await read_body(request)
    if media == "multipart/form-data":
        return multipart_files(body, request.headers.get("content-type", ""), limits)
    if media == "application/json" or media.endswith("+json"):
        data = json_body(body, hold)
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


def predict_response(out: Outcome) -> dict[str, Any]:
    """The ``/v1/predict`` answer: per image, the task's response item (classification: class, confidence
    and every class's probability) plus the model, version and variant that answered."""
    task = out.task or get_task()
    names = out.handle.model.class_names
    served = {"model": out.model, "version": out.version, "variant": out.variant}
    decoded = task.decode(out.outputs, names)
    if out.image_sizes is not None:  # positions in the request image's pixels, not the model input's
        contract = out.handle.model.contract  # its resize (stretch or letterbox) is what to undo
        decoded = [task.to_image_pixels(p, contract, s) for p, s in zip(decoded, out.image_sizes, strict=True)]
    preds = [{**task.response(pred, names), **served} for pred in decoded]
    return {"request_id": out.request_id, "model": out.model, "version": out.version, "variant": out.variant,
            "fallback": out.fallback, "predictions": preds}


@router.post("/v1/predict", tags=["predict"])
async def predict(request: Request, state: ServerState = Depends(get_state)) -> Response:
    """Classify one or more images (multipart ``files``, JSON ``instances`` or a raw image body)."""
    t0 = time.perf_counter()
    out: Outcome | None = None
    status = 500
    hold = state.hold()
    limits = state.config.limits
    try:
        blobs = await images_from_request(request, hold, limits)
        if len(blobs) > limits.max_images:
            raise ServingError(413, "too_many_images",
                               f"{len(blobs)} images; limits.max_images = {limits.max_images}.")
        rid, session = request_ids(request, state)
        labels = labels_from_header(request, state, len(blobs))
        out = await predict_core(state, request_id=rid, session_id=session, labels=labels, blobs=blobs,
                                 t_start=t0, hold=hold)
        status = 200
        return json_response(predict_response(out), headers=answer_headers(out, state))
    except ServingError as exc:
        status = exc.status
        raise
    finally:
        hold.release()
        state.record("predict", out, status, t0)


__all__ = ["images_from_request", "predict", "predict_response", "router"]
