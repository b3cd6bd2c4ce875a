"""OIP v2 inference in-process: JSON tensors parsed with orjson and numpy give the binary path's
answers, and outputs come back as binary data (the binary tensor extension) when asked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cvplatform.serving.app import create_app
from cvplatform.serving.models import RegistrySource
from cvplatform.serving.schemas import ServingConfig
from tests.fixtures.serving_models import SIZE

TOKEN = "unit-tests-admin-token-0123456789abcdef"


@pytest.fixture
def client(registry):
    from fastapi.testclient import TestClient

    config = ServingConfig.model_validate({"models": {"poll_interval_s": 0}, "batching": {"max_wait_ms": 5}})
    app = create_app(config, RegistrySource(registry.name, root=registry.root), admin_token=TOKEN)
    with TestClient(app) as c:
        c.model_name = registry.name
        yield c


def _x(rows: int = 2) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((rows, 3, SIZE, SIZE)).astype(np.float32)


def _json_input(x: np.ndarray, nested: bool = False) -> dict:
    data = x.tolist() if nested else x.ravel().tolist()
    return {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": data}


def _split(r) -> tuple[dict, bytes]:
    n = int(r.headers["Inference-Header-Content-Length"])
    return json.loads(r.content[:n]), r.content[n:]


def _binary_outputs(header: dict, tail: bytes) -> dict[str, np.ndarray | list[str]]:
    """Decode the tail the way the extension specifies (in output order, binary_data_size bytes each)."""
    out: dict[str, np.ndarray | list[str]] = {}
    pos = 0
    for o in header["outputs"]:
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is None:
            continue
        raw, pos = tail[pos:pos + size], pos + size
        if o["datatype"] == "FP32":
            out[o["name"]] = np.frombuffer(raw, "<f4").reshape(o["shape"])
        else:
            items, i = [], 0
            while i < len(raw):
                n = int.from_bytes(raw[i:i + 4], "little")
                items.append(raw[i + 4:i + 4 + n].decode())
                i += 4 + n
            out[o["name"]] = items
    assert pos == len(tail)
    return out


def test_json_flat_nested_and_binary_inputs_give_the_same_answer(client):
    x = _x()
    url = f"/v2/models/{client.model_name}/infer"
    flat = client.post(url, json={"inputs": [_json_input(x)]})
    nested = client.post(url, json={"inputs": [_json_input(x, nested=True)]})
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    binary = client.post(url, content=header + x.astype("<f4").tobytes(),
                         headers={"Content-Type": "application/octet-stream",
                                  "Inference-Header-Content-Length": str(len(header))})
    assert flat.status_code == nested.status_code == binary.status_code == 200
    assert "Inference-Header-Content-Length" not in flat.headers  # no output asked for binary data
    answers = [r.json()["outputs"] for r in (flat, nested, binary)]
    assert answers[0] == answers[1] == answers[2]


def test_outputs_asked_as_binary_come_back_as_binary_data(client):
    x = _x(3)
    url = f"/v2/models/{client.model_name}/infer"
    plain = client.post(url, json={"inputs": [_json_input(x)]}).json()["outputs"]
    want = {o["name"]: o for o in plain}
    # one output binary, the other JSON
    r = client.post(url, json={"inputs": [_json_input(x)], "outputs": [
        {"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "label"}]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    header, tail = _split(r)
    got = _binary_outputs(header, tail)
    assert list(got) == ["probabilities"] and len(tail) == 4 * len(want["probabilities"]["data"])
    np.testing.assert_array_equal(got["probabilities"].ravel(), np.asarray(want["probabilities"]["data"], "<f4"))
    assert header["outputs"][1]["data"] == want["label"]["data"]
    assert "data" not in header["outputs"][0] and header["outputs"][0]["shape"] == want["probabilities"]["shape"]
    # request-level binary_data_output (what tritonclient sends when it names no output); BYTES length-prefixed
    r = client.post(url, json={"inputs": [_json_input(x)], "parameters": {"binary_data_output": True}})
    got = _binary_outputs(*_split(r))
    assert got["label"] == want["label"]["data"]
    np.testing.assert_array_equal(got["probabilities"].ravel(), np.asarray(want["probabilities"]["data"], "<f4"))
    # an output's own flag wins over the request's
    r = client.post(url, json={"inputs": [_json_input(x)], "parameters": {"binary_data_output": True},
                               "outputs": [{"name": "label", "parameters": {"binary_data": False}}]})
    assert r.status_code == 200 and "Inference-Header-Content-Length" not in r.headers
    assert r.json()["outputs"][0]["data"] == want["label"]["data"]


@pytest.mark.parametrize(("body", "where"), [
    ({"parameters": {"binary_data_output": "yes"}}, "request.parameters.binary_data_output"),
    ({"outputs": [{"name": "label", "parameters": {"binary_data": 1}}]}, "outputs[0].parameters.binary_data"),
])
def test_a_binary_flag_that_is_not_a_boolean_is_a_400_naming_it(client, body, where):
    r = client.post(f"/v2/models/{client.model_name}/infer", json={"inputs": [_json_input(_x(1))], **body})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request" and where in r.json()["detail"]


@pytest.mark.parametrize(("data", "code"), [
    ([0.5] * (3 * SIZE * SIZE - 1) + [True], "invalid_tensor"),  # one bool among numbers
    ([0.5] * (3 * SIZE * SIZE - 1) + ["0.5"], "invalid_tensor"),  # a number as a string
    ([0.5] * (3 * SIZE * SIZE - 1) + [None], "invalid_tensor"),
    ([[0.5] * (3 * SIZE * SIZE - 1), 0.5], None),  # mixed nesting still counts its values
    ([[[0.5]]] * 3 * SIZE * SIZE, None),
])
def test_json_tensor_values_are_checked_without_a_python_loop(client, data, code):
    r = client.post(f"/v2/models/{client.model_name}/infer", json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, 3, SIZE, SIZE], "data": data}]})
    if code is None:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 400 and set(r.json()) == {"error", "detail"} and r.json()["error"] == code
        assert "input 'input'" in r.json()["detail"]
