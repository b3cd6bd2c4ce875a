"""The OpenAPI document of the inference service: request bodies, routing headers, admin auth, error shape.

The handlers read their bodies themselves (to bound memory and answer every bad body with a 4xx),
so FastAPI cannot infer these; clients, ``/docs`` and the schema fuzz test need them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from cvplatform.serving.schemas import (
    AbortRequest,
    CanaryRequest,
    ErrorResponse,
    OipInferRequest,
    PredictRequest,
    PromoteRequest,
    RollbackRequest,
    ServingConfig,
    TrafficRequest,
)
from cvplatform.tasks import Task

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


def _parameters(app: FastAPI, task: Task | None, models: dict[str, Any]) -> list[dict[str, Any]]:
    """The task's request parameters (bounded by the champion's outputs when one is loaded) as query parameters
    of ``/v1/predict``; the same schemas go into ``PredictRequest.parameters``, ``OipInferRequest.parameters``
    and (by the caller) the multipart body's fields."""
    from cvplatform.serving.options import parameter_schemas

    if task is None:
        return []
    state = getattr(app.state, "cv", None)
    champion = state.manager.champion if state is not None else None
    schemas = parameter_schemas(task, champion.model.output_shapes if champion is not None else None)
    body = {"type": "object", "properties": schemas, "additionalProperties": False,
            "description": f"decoding parameters of the {task.name} task"
                           + ("" if schemas else " (it takes none)")}
    models["PredictRequest"].setdefault("properties", {})["parameters"] = {"anyOf": [body, {"type": "null"}]}
    if schemas:
        oip = models["OipInferRequest"].setdefault("properties", {})
        oip["parameters"] = {"anyOf": [{**body, "additionalProperties": True}, {"type": "null"}]}
    return [{"name": name, "in": "query", "required": False, "schema": sch, "description": sch["description"]}
            for name, sch in schemas.items()]


def document_requests(app: FastAPI, config: ServingConfig, task: Task | None = None) -> None:
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
                   for h in (t.request_id_header, t.session_header)]
        truth = {"name": t.label_header, "in": "header", "required": False, "schema": {"type": "string"}}
        if task is not None:  # the header the task reads its labelled feedback from, and its format
            truth.update(name=getattr(t, task.truth_header_key),
                         description=f"the true answer (labelled feedback): {task.truth_format}")
        routing.append(truth)
        image_body = {"required": True, "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
                "files": {"type": "array", "items": _BINARY}}}},
            "application/json": {"schema": _schema_ref(models, PredictRequest)},
            "image/png": {"schema": _BINARY}, "image/jpeg": {"schema": _BINARY},
            "application/octet-stream": {"schema": _BINARY},
        }}
        infer_body = {"required": True, "content": {"application/json": {"schema": _schema_ref(models, OipInferRequest)}}}
        decoding = _parameters(app, task, models)
        image_body["content"]["multipart/form-data"]["schema"]["properties"].update(
            {p["name"]: p["schema"] for p in decoding})  # the same parameters as text fields
        for path, ops in schema.get("paths", {}).items():
            for method, op in ops.items():
                op.setdefault("responses", {})["4XX"] = error
                if path == "/v1/predict" and method == "post":
                    op["requestBody"] = image_body
                    op.setdefault("parameters", []).extend([*routing, *decoding])
                elif path.endswith("/infer") and method == "post":
                    op["requestBody"] = infer_body
                    op.setdefault("parameters", []).extend(routing)
                    ok = op["responses"].setdefault("200", {"description": "Successful Response"})
                    ok["description"] = ("the outputs; application/octet-stream when outputs are asked for as "
                                         "binary data: the JSON answer (Inference-Header-Content-Length bytes), "
                                         "then the outputs' raw bytes (binary tensor extension)")
                    ok.setdefault("content", {})["application/octet-stream"] = {"schema": _BINARY}
                if path.startswith("/admin"):
                    op["security"] = [{"adminToken": []}]
                    if path in _ADMIN_BODIES and method == "post":
                        op["requestBody"] = {"required": False, "content": {
                            "application/json": {"schema": _schema_ref(models, _ADMIN_BODIES[path])}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["document_requests"]
