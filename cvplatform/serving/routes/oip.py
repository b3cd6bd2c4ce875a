"""Open Inference Protocol v2 (KServe / Triton): server and model metadata, readiness, inference.

The health endpoints (``/v2/health/live|ready``) are in :mod:`.ops`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError

from cvplatform.serving.budget import BudgetHold
from cvplatform.serving.core import Outcome, ServerState, get_state, predict_core
from cvplatform.serving.inputs import (
    bytes_tensor,
    fp32_tensor,
    split_binary_body,
    tensor_bytes,
    validation_detail,
)
from cvplatform.serving.models import ModelHandle, ServingError
from cvplatform.serving.options import parameter_schemas, request_options
from cvplatform.serving.routes.ops import SERVER_NAME
from cvplatform.serving.schemas import OipInferRequest
from cvplatform.serving.web import (
    answer_headers,
    json_body,
    json_response,
    labels_from_header,
    media_type,
    read_body,
    request_ids,
)
from cvplatform.tasks import Task, get_task

router = APIRouter()


@router.get("/v2", tags=["oip"])
async def server_metadata() -> dict[str, Any]:
    from cvplatform import __version__

    return {"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}


def _metadata(state: ServerState, handle: ModelHandle) -> dict[str, Any]:
    m = handle.model
    h, w = m.contract.input_size
    manager = state.manager
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
        "outputs": state.task.tensor_output_specs(m.class_names),
        "parameters": {
            "version": m.version,
            "class_names": list(m.class_names),
            "preprocess": {k: v for k, v in m.contract.to_metadata().items()},
            "request_parameters": parameter_schemas(state.task, m.output_shapes),
            "note": "send exactly one input: FP32 (preprocessed NCHW) or BYTES (encoded images; base64 "
                    "strings in JSON, raw bytes with the binary tensor extension)",
        },
    }


@router.get("/v2/models/{name}", tags=["oip"])
async def model_metadata(name: str, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    return _metadata(state, state.served(name))


@router.get("/v2/models/{name}/versions/{version}", tags=["oip"])
async def model_version_metadata(name: str, version: str,
                                 state: ServerState = Depends(get_state)) -> dict[str, Any]:
    return _metadata(state, state.served(name, version))


@router.get("/v2/models/{name}/ready", tags=["oip"])
async def model_ready(name: str, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    h = state.served(name)
    return {"name": name, "version": h.version, "ready": True}


@router.get("/v2/models/{name}/versions/{version}/ready", tags=["oip"])
async def model_version_ready(name: str, version: str,
                              state: ServerState = Depends(get_state)) -> dict[str, Any]:
    h = state.served(name, version)
    return {"name": name, "version": h.version, "ready": True}


async def _read_infer_request(request: Request, hold: BudgetHold) -> tuple[OipInferRequest, bytes]:
    """The parsed inference header and the binary tail after it (binary tensor extension)."""
    media = media_type(request)
    if media and media not in ("application/json", "application/octet-stream") and not media.endswith("+json"):
        raise ServingError(415, "unsupported_media_type",
                           f"Content-Type {media!r}: OIP inference takes application/json (or "
                           "application/octet-stream with Inference-Header-Content-Length).")
    body = await read_body(request)
    header, blob = split_binary_body(body, request.headers.get("inference-header-content-length"),
                                     parse=lambda b, where: json_body(b, hold, where))
    try:
        req = OipInferRequest.model_validate(header)
    except ValidationError as exc:
        raise ServingError(422, "invalid_request", "OIP v2 inference request: " + validation_detail(exc)) from None
    return req, blob


def _inputs(req: OipInferRequest, blob: bytes, handle: ModelHandle, max_images: int
            ) -> tuple[Any, list[bytes] | None, int]:
    """``(tensor, blobs, rows)`` of the request's one input: a preprocessed FP32 tensor or BYTES images."""
    if len(req.inputs) != 1:
        raise ServingError(400, "invalid_inputs",
                           f"{len(req.inputs)} inputs; send exactly one: FP32 "
                           f"{handle.model.input_name!r} [N,3,H,W] or BYTES 'image' [N].")
    tensor_in = req.inputs[0]
    dtype = tensor_in.datatype.upper()
    if dtype == "FP32":
        tensor, _ = fp32_tensor(tensor_in, blob, 0, handle.model.contract.input_size, max_images)
        return tensor, None, tensor.shape[0]
    if dtype == "BYTES":
        blobs, _ = bytes_tensor(tensor_in, blob, 0, max_images)
        return None, blobs, len(blobs)
    raise ServingError(400, "unsupported_datatype",
                       f"input {tensor_in.name!r}: datatype {tensor_in.datatype!r}; send FP32 "
                       "(preprocessed tensor) or BYTES (encoded images).")


def _wanted_outputs(req: OipInferRequest, task: Task, class_names: Sequence[str]) -> list[str]:
    """The outputs the request asks for (default: all the task offers), or a 400 naming the valid ones."""
    offered = [o["name"] for o in task.tensor_output_specs(class_names)]
    wanted = [o.name for o in (req.outputs or [])] or offered
    unknown = [w for w in wanted if w not in offered]
    if unknown:
        raise ServingError(400, "unknown_output", f"outputs {unknown} do not exist; choose from {offered}.")
    return wanted


def _infer_response(out: Outcome, req: OipInferRequest, wanted: list[str]) -> dict[str, Any]:
    task = out.task or get_task()
    outputs = task.tensor_outputs_of(out.decoded, out.outputs, out.handle.model.class_names, wanted, **out.options)
    return {"model_name": out.model, "model_version": out.version, "id": req.id or out.request_id,
            "parameters": {"variant": out.variant, "fallback": out.fallback}, "outputs": outputs}


def _flag(params: dict[str, Any] | None, key: str, where: str) -> bool | None:
    value = (params or {}).get(key)
    if value is not None and not isinstance(value, bool):
        raise ServingError(400, "invalid_request", f"{where}.parameters.{key} = {value!r}; send true or false.")
    return value


def _binary_outputs(req: OipInferRequest, wanted: list[str]) -> set[str]:
    """The outputs to answer as binary data (binary tensor extension), or a 400 naming a bad flag.

    An output's ``parameters.binary_data`` decides for it; otherwise the request's
    ``parameters.binary_data_output`` (what tritonclient sends when it names no output).
    """
    default = bool(_flag(req.parameters, "binary_data_output", "request"))
    per_output = {o.name: _flag(o.parameters, "binary_data", f"outputs[{i}]")
                  for i, o in enumerate(req.outputs or [])}
    return {w for w in wanted if (default if per_output.get(w) is None else per_output[w])}


def _respond(body: dict[str, Any], binary: set[str], headers: dict[str, str]) -> Response:
    """The JSON response, or with ``binary`` outputs the binary tensor extension's (JSON header, raw tail)."""
    if not binary:
        return json_response(body, headers=headers)
    import orjson

    tails: list[bytes] = []
    for output in body["outputs"]:
        if output["name"] in binary:
            raw = tensor_bytes(output.pop("data"), output["datatype"])
            output["parameters"] = {**(output.get("parameters") or {}), "binary_data_size": len(raw)}
            tails.append(raw)
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(header + b"".join(tails), media_type="application/octet-stream",
                    headers={**headers, "Inference-Header-Content-Length": str(len(header))})


async def _infer(request: Request, state: ServerState, name: str, version: str | None) -> Response:
    t0 = time.perf_counter()
    out: Outcome | None = None
    status = 500
    hold = state.hold()
    try:
        handle = state.served(name, version)
        req, blob = await _read_infer_request(request, hold)
        tensor, blobs, n = _inputs(req, blob, handle, state.config.limits.max_images)
        wanted = _wanted_outputs(req, state.task, handle.model.class_names)
        binary = _binary_outputs(req, wanted)
        # the task's decoding parameters among the request's parameters (other keys: the protocol's, ignored)
        options = request_options(state.task, handle.model.output_shapes, (req.parameters or {}).items(),
                                  "request parameters.")
        rid, session = request_ids(request, state, req.id)
        labels = labels_from_header(request, state, n)
        out = await predict_core(state, request_id=rid, session_id=session, labels=labels, blobs=blobs,
                                 tensor=tensor, pinned_version=version, t_start=t0, hold=hold, options=options)
        status = 200
        return _respond(_infer_response(out, req, wanted), binary, answer_headers(out, state))
    except ServingError as exc:
        status = exc.status
        raise
    finally:
        hold.release()
        state.record("infer", out, status, t0)


@router.post("/v2/models/{name}/infer", tags=["oip"])
async def infer(name: str, request: Request, state: ServerState = Depends(get_state)) -> Response:
    """OIP v2 inference (the serving variant is chosen by the traffic split)."""
    return await _infer(request, state, name, None)


@router.post("/v2/models/{name}/versions/{version}/infer", tags=["oip"])
async def infer_version(name: str, version: str, request: Request,
                        state: ServerState = Depends(get_state)) -> Response:
    """OIP v2 inference pinned to a served version (champion or canary)."""
    return await _infer(request, state, name, version)


__all__ = ["router"]
