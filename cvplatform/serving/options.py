"""Per-request decoding parameters: what a request may ask of how the model's outputs are decoded.

The project's task declares them (:meth:`cvplatform.tasks.Task.request_parameters`; detection:
``score_threshold`` and ``max_detections``, bounded by the model's outputs); serving only checks them and
hands them to the task's ``decode`` / ``tensor_outputs``. Where they come from:

* ``/v1/predict``: the query string (every body kind: ``?score_threshold=0.5&max_detections=10``), a
  multipart body's text fields (``-F score_threshold=0.5``) or a JSON body's ``parameters`` object
  (``{"instances": [...], "parameters": {"score_threshold": 0.5}}``); the same name in the query and the
  body is refused;
* OIP v2 inference: the request's ``parameters`` (beside ``binary_data_output``).

A value of the wrong type or outside its bounds is a 422 ``invalid_parameter`` naming the parameter, the
value and the allowed range. A parameter that another known task declares but this model's task does not
(``score_threshold`` sent to a classification model) is a 422 too: it would otherwise be ignored silently.
Other unknown names keep their old treatment: ignored in the query string and in OIP ``parameters`` (an
extensible map by the protocol), refused in the JSON ``parameters`` object (like any unknown key of the
body).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from cvplatform.serving.models import ServingError
from cvplatform.tasks import RequestParameter, Task


@cache
def _declared_by_other_tasks(task_name: str) -> frozenset[str]:
    """Names of the request parameters the other known tasks declare (computed once per task name)."""
    from cvplatform.tasks import get_task, known_tasks

    names: set[str] = set()
    for other in known_tasks():
        if other == task_name:
            continue
        try:
            names.update(p.name for p in get_task(other).request_parameters(None))
        except Exception:  # noqa: S112 - a broken plugin must not break serving this task
            continue
    return frozenset(names)


def _range(spec: RequestParameter) -> str:
    if spec.kind == "int":
        return f"an integer in [{int(spec.low)}, {int(spec.high)}]"
    return f"a number in [{spec.low:g}, {spec.high:g}]"


def _value(spec: RequestParameter, raw: Any, where: str, text: bool) -> float | int:
    """``raw`` as the parameter's type within its bounds, or a 422 naming it, the value and the range."""
    value: Any = raw
    if text:  # a query-string value: parse it
        try:
            value = int(raw) if spec.kind == "int" else float(raw)
        except (TypeError, ValueError):
            value = None
    elif isinstance(raw, bool) or not isinstance(raw, int | float) or (spec.kind == "int" and isinstance(raw, float)):
        value = None
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or not spec.low <= value <= spec.high:
        shown = repr(raw)[:60]
        raise ServingError(422, "invalid_parameter",
                           f"{where}{spec.name} = {shown}: expected {_range(spec)} ({spec.description}; default "
                           f"{spec.default:g}).")
    return int(value) if spec.kind == "int" else float(value)


def request_options(task: Task, output_shapes: Mapping[str, Any] | None,
                    given: Iterable[tuple[str, Any]], where: str, *, text: bool = False,
                    strict: bool = False) -> dict[str, Any]:
    """The checked decoding options of one request (name -> value; only those sent).

    Args:
        task: the project's task (it declares the parameters).
        output_shapes: the served model's graph output shapes (they bound e.g. ``max_detections``; None =
            unknown).
        given: ``(name, value)`` pairs as sent (a name may repeat: refused).
        where: how the error names the source, e.g. ``"query parameter "``.
        text: the values are text (a query string) and are parsed.
        strict: refuse unknown names too (a JSON object with a closed schema), not only other tasks' ones.

    Raises:
        ServingError: 422 ``invalid_parameter``.
    """
    specs = {p.name: p for p in task.request_parameters(output_shapes)}
    out: dict[str, Any] = {}
    for name, raw in given:
        spec = specs.get(name)
        if spec is None:
            if strict or name in _declared_by_other_tasks(task.name):
                takes = f"it takes {sorted(specs)}" if specs else "it takes no request parameters"
                raise ServingError(422, "invalid_parameter",
                                   f"{where}{name} does not apply to this model (project.task: {task.name}); "
                                   f"{takes}.")
            continue
        if name in out:
            raise ServingError(422, "invalid_parameter", f"{where}{name} is given more than once; send it once.")
        out[name] = _value(spec, raw, where, text)
    return out


def parameter_names(task: Task) -> frozenset[str]:
    """Every request parameter name a request to ``task``'s model is checked for: its own and the other tasks'."""
    return frozenset(p.name for p in task.request_parameters(None)) | _declared_by_other_tasks(task.name)


def merge_options(first: Mapping[str, Any], second: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Options from two places of one request (query string and JSON body); a name in both is a 422."""
    both = sorted(set(first) & set(second))
    if both:
        raise ServingError(422, "invalid_parameter",
                           f"{', '.join(both)} given both in the query string and {where}; send each once.")
    return {**first, **second}


def parameter_schemas(task: Task, output_shapes: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """name -> JSON schema of the task's request parameters (OpenAPI)."""
    return {p.name: p.json_schema() for p in task.request_parameters(output_shapes)}


__all__ = ["merge_options", "parameter_names", "parameter_schemas", "request_options"]
