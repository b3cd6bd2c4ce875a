"""``POST /v1/predict``: images as multipart (``files=``), JSON ``{"instances": [{"b64": ...}]}`` or a raw body;
the task's decoding parameters in the query string, multipart text fields or the JSON ``parameters``
(:mod:`cvplatform.serving.options`)."""

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
from cvplatform.serving.options import merge_options, parameter_names, request_options
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


async def images_from_request(request: Request, hold: BudgetHold, limits: LimitsConfig,
                              parameter_names: frozenset[str] = frozenset()
                              ) -> tuple[list[bytes], dict[str, Any] | list[tuple[str, Any]] | None]:
    """The encoded image files of a ``/v1/predict`` request, by its Content-Type, and the body's parameters:
    a JSON body's ``parameters`` object, a multipart body's text fields named in ``parameter_names`` as
    ``(name, text)`` pairs, or None."""
    media = media_type(request)
    body = await read_body(request)
    if media == "multipart/form-data":
        fields: dict[str, list[bytes]] = {n: [] for n in parameter_names}
        files = multipart_files(body, request.headers.get("content-type", ""), limits, fields)
        sent = [(n, v.decode("utf-8", "replace")) for n, vs in fields.items() for v in vs]
        return files, (sent or None)
    if media == "application/json" or media.endswith("+json"):
        data = json_body(body, hold)
        try:
            req = PredictRequest.model_validate(data)
        except ValidationError as exc:
            raise ServingError(422, "invalid_request",
                               'expected {"instances": [{"b64": "<base64 image>"}, ...], "parameters": {...}}: '
                               + validation_detail(exc)) from None
        return [b64decode_strict(inst if isinstance(inst, str) else inst.b64, f"instances[{i}]")
                for i, inst in enumerate(req.instances)], req.parameters
    if media.startswith("image/") or media == "application/octet-stream":
        if not body:
            raise ServingError(400, "empty_image", "the request body is empty; send the image file bytes.")
        return [body], None
    shown = media or "none"
    raise ServingError(415, "unsupported_media_type",
                       f"Content-Type {shown!r}: send multipart/form-data (files=), application/json "
                       '({"instances": [{"b64": ...}]}) or an image/* body.')


def predict_options(request: Request, state: ServerState,
                    body_parameters: dict[str, Any] | list[tuple[str, Any]] | None) -> dict[str, Any]:
    """The request's checked decoding parameters: the query string's and the body's (a JSON ``parameters``
    object or multipart text fields; :mod:`cvplatform.serving.options`), bounded by the champion's outputs."""
    champion = state.manager.champion
    shapes = champion.model.output_shapes if champion is not None else None
    query = request_options(state.task, shapes, request.query_params.multi_items(), "query parameter ", text=True)
    if body_parameters is None:
        return query
    if isinstance(body_parameters, list):  # multipart text fields
        body = request_options(state.task, shapes, body_parameters, "form field ", text=True)
        return merge_options(query, body, "as a form field")
    body = request_options(state.task, shapes, body_parameters.items(), "parameters.", strict=True)
    return merge_options(query, body, "in the JSON body's parameters")


def predict_response(out: Outcome) -> dict[str, Any]:
    """The ``/v1/predict`` answer: per image, the task's response item (classification: class, confidence
    and every class's probability) plus the model, version and variant that answered."""
    task = out.task or get_task()
    names = out.handle.model.class_names
    served = {"model": out.model, "version": out.version, "variant": out.variant}
    decoded = out.predictions if out.task is not None else task.decode(out.outputs, names, **out.options)
    if out.image_sizes is not None:  # positions in the request image's pixels, not the model input's
        contract = out.handle.model.contract  # its resize (stretch or letterbox) is what to undo
        decoded = task.to_image_pixels_many(decoded, contract, out.image_sizes)
    preds = [{**task.response(pred, names), **served} for pred in decoded]
    return {"request_id": out.request_id, "model": out.model, "version": out.version, "variant": out.variant,
            "fallback": out.fallback, "predictions": preds}


@router.post("/v1/predict", tags=["predict"])
async def predict(request: Request, state: ServerState = Depends(get_state)) -> Response:
    """Predict on one or more images (multipart ``files``, JSON ``instances`` or a raw image body); the task's
    request parameters (detection: ``score_threshold``, ``max_detections``) in the query string, multipart text
    fields or the JSON body's ``parameters``."""
    t0 = time.perf_counter()
    out: Outcome | None = None
    status = 500
    hold = state.hold()
    limits = state.config.limits
    try:
        blobs, body_parameters = await images_from_request(request, hold, limits, parameter_names(state.task))
        if len(blobs) > limits.max_images:
            raise ServingError(413, "too_many_images",
                               f"{len(blobs)} images; limits.max_images = {limits.max_images}.")
        options = predict_options(request, state, body_parameters)
        rid, session = request_ids(request, state)
        labels = labels_from_header(request, state, len(blobs))
        out = await predict_core(state, request_id=rid, session_id=session, labels=labels, blobs=blobs,
                                 t_start=t0, hold=hold, options=options)
        status = 200
        return json_response(predict_response(out), headers=answer_headers(out, state))
    except ServingError as exc:
        status = exc.status
        raise
    finally:
        hold.release()
        state.record("predict", out, status, t0)


__all__ = ["images_from_request", "predict", "predict_options", "predict_response", "router"]
