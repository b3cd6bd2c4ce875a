"""Property-based fuzzing of a real ``cvplatform serve`` process from its own ``/openapi.json`` (schemathesis).

Every operation of the schema is called with generated path parameters, headers, query strings and bodies
(JSON, multipart, raw images), the state-changing admin endpoints included, with a valid admin token. The
server runs a real SQLite registry (champion plus two more approved versions) and tiny ONNX models, so
``/admin/canary``, ``promote`` and ``rollback`` really load versions and move aliases. No answer may be a
5xx, and every refusal must have the JSON error shape. The example count is bounded (and derandomized) so
the test takes well under a minute on two cores.

(The loop calls ``APIOperation.as_strategy`` under ``hypothesis.given`` rather than schemathesis's pytest
plugin: its lazy ``from_fixture`` loader does not work with pytest 9.)
"""

from __future__ import annotations

import collections
import itertools
import json

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from cvplatform.serving.local import LocalServer
from tests.fixtures.serving_models import make_serving_project

pytestmark = pytest.mark.integration

MODEL = "fuzzed"
MAX_EXAMPLES = 25
SERVING = {"models.poll_interval_s": 0, "models.intra_op_threads": 1, "batching.max_wait_ms": 2,
           "limits.max_body_bytes": 1048576, "limits.max_images": 8}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("CVPLATFORM_ADMIN_TOKEN", raising=False)
    root, _, _ = make_serving_project(tmp_path_factory.mktemp("fuzz"), MODEL, SERVING,
                                      kinds=("champion", "good", "permuted"))
    try:
        with LocalServer(root, log_level="warning") as srv:
            yield srv
            log = srv.log_path.read_text(encoding="utf-8", errors="replace")  # the whole log, not its tail
    finally:
        mp.undo()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-5000:]


def _problem(case, response) -> str | None:
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    if response.status_code >= 500 and not (response.status_code == 503 and case.path == "/v2/health/ready"):
        return where
    if response.status_code >= 400:
        try:
            body = json.loads(response.content)
        except ValueError:
            return "not JSON: " + where
        if not (isinstance(body, dict) and body.get("error") and isinstance(body.get("detail"), str)):
            return "not the error shape: " + where
    return None


def _fixed(op) -> list[dict]:
    """Besides fully generated cases: the served model's name (random names only reach the 404), a
    served version, and a canary that really loads (so traffic, promote and rollback find one)."""
    out: list[dict] = [{}]
    if "{name}" in op.path:
        out.append({"path_parameters": {"name": MODEL}})
        if "{version}" in op.path:
            out.append({"path_parameters": {"name": MODEL, "version": "1"}})
    if op.method.upper() == "POST" and op.path == "/admin/canary":
        out.append({"body": {"version": "2", "share": 0.5, "shadow": True}})
    return out


def test_no_generated_request_gets_a_5xx(fuzz_server):
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    # aborting the canary last, so that promote and rollback run while a canary is loaded
    operations = sorted((result.ok() for result in schema.get_all_operations()),
                        key=lambda op: op.path == "/admin/canary/abort")
    assert len(operations) >= 20 and any(op.path == "/admin/promote" for op in operations)
    auth = {"Authorization": f"Bearer {fuzz_server.token}"}
    calls: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    for op in operations:
        for fixed, mode in itertools.product(_fixed(op), (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):

            @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(mode, **fixed))
            def call(case) -> None:
                calls[case.operation.label] += 1
                problem = _problem(case, case.call(headers=auth, timeout=60))
                if problem:
                    failures.append(problem)

            try:
                call()
            except Unsatisfiable:  # nothing in this operation can violate the schema (no parameters / body)
                assert mode == GenerationMode.NEGATIVE, op.label
    assert not failures, "\n".join(failures[:20])
    assert all(calls[op.label] > 0 for op in operations), calls
