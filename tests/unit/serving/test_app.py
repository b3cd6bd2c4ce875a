"""The FastAPI app in-process (Starlette TestClient) over a real SQLite registry: responses, parity,
fallback, shadowing, admin actions, readiness and metrics."""

from __future__ import annotations

import base64
import io

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from cvplatform.preprocess import PreprocessContract, preprocess
from cvplatform.serving.app import create_app
from cvplatform.serving.models import FileSource, RegistrySource
from cvplatform.serving.schemas import ServingConfig
from cvplatform.tasks.classification import softmax
from tests.fixtures.serving_models import SIZE, build_model, colour_image, encode_png, get_alias, set_alias

TOKEN = "unit-tests-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(registry):
    from fastapi.testclient import TestClient

    config = ServingConfig.model_validate({"models": {"poll_interval_s": 0}, "batching": {"max_wait_ms": 5}})
    app = create_app(config, RegistrySource(registry.name, root=registry.root), admin_token=TOKEN)
    with TestClient(app) as c:
        yield c


def _offline(model_path, images):
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    contract = PreprocessContract.from_metadata(sess.get_modelmeta().custom_metadata_map)
    return softmax(sess.run(None, {"input": preprocess(images, contract)})[0]), contract.class_names


def test_predict_multipart_json_and_raw_match_offline_onnxruntime(client, registry):
    images = [colour_image(i % 3, size=24 + i, seed=i) for i in range(5)]
    pngs = [encode_png(im) for im in images]
    want, names = _offline(registry.paths["champion"], images)
    r = client.post("/v1/predict", files=[("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(pngs)],
                    headers={"X-Request-ID": "abc"})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "abc"
    body = r.json()
    assert (body["request_id"], body["model"], body["version"], body["variant"]) == (
        "abc", registry.name, registry.versions["champion"], "champion")
    for p, row in zip(body["predictions"], want, strict=True):
        assert p["class"] == names[int(row.argmax())] and p["confidence"] == pytest.approx(row.max(), abs=1e-6)
        np.testing.assert_allclose([p["probabilities"][n] for n in names], row, atol=1e-6, rtol=0)
    r = client.post("/v1/predict", json={"instances": [base64.b64encode(pngs[0]).decode(),
                                                        {"b64": base64.b64encode(pngs[1]).decode()}]})
    np.testing.assert_allclose([[p["probabilities"][n] for n in names] for p in r.json()["predictions"]],
                               want[:2], atol=1e-6, rtol=0)
    r = client.post("/v1/predict", content=pngs[2], headers={"Content-Type": "image/png"})
    assert r.json()["predictions"][0]["class"] == names[int(want[2].argmax())]


@pytest.mark.parametrize("inline_max", [0, 65_536, 10**7])
def test_small_requests_decoded_on_the_loop_and_large_ones_in_a_thread_give_the_same_answers(
        tmp_path, monkeypatch, inline_max):
    """``batching.inline_decode_max_pixels`` only moves the decoding; the answers stay the offline ones."""
    import asyncio

    from fastapi.testclient import TestClient

    p = tmp_path / "m.onnx"
    p.write_bytes(build_model().SerializeToString())
    hops = []
    real_to_thread = asyncio.to_thread

    async def counting_to_thread(fn, *a, **kw):
        hops.append(getattr(fn, "__name__", ""))
        return await real_to_thread(fn, *a, **kw)

    monkeypatch.setattr(asyncio, "to_thread", counting_to_thread)
    config = ServingConfig.model_validate({"batching": {"inline_decode_max_pixels": inline_max}})
    small = [colour_image(i % 3, size=8, seed=i) for i in range(3)]  # 3 * 8*8 source + 3 * 16*16 model input
    large = [colour_image(1, size=400, seed=9)]  # 160,000 source pixels
    with TestClient(create_app(config, FileSource(p, model_name="m"))) as c:
        for images in (small, large):
            hops.clear()
            want, names = _offline(p, images)
            r = c.post("/v1/predict", files=[("files", (f"{i}.png", encode_png(im), "image/png"))
                                             for i, im in enumerate(images)])
            assert r.status_code == 200, r.text
            got = [[pr["probabilities"][n] for n in names] for pr in r.json()["predictions"]]
            np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
            h, w = SIZE, SIZE  # the model input
            work = sum(im.shape[0] * im.shape[1] for im in images) + len(images) * h * w
            assert ("_decode_and_preprocess" in hops) == (work > inline_max)


def test_an_erroring_canary_is_answered_by_the_champion_and_counted(client, registry):
    r = client.post("/admin/canary", json={"version": registry.versions["erroring"], "share": 1.0}, headers=ADMIN)
    assert r.status_code == 200, r.text
    for i in range(5):
        r = client.post("/v1/predict", content=encode_png(colour_image(i % 3, seed=i)),
                        headers={"Content-Type": "image/png", "X-True-Label": ["red", "green", "blue"][i % 3]})
        assert r.status_code == 200
        assert r.json()["variant"] == "champion" and r.json()["fallback"] is True
    stats = client.get("/admin/stats", headers=ADMIN).json()["variants"]
    assert stats["canary"]["requests"] == 5 and stats["canary"]["errors"] == 5
    assert stats["champion"]["fallbacks"] == 5 and stats["champion"]["correct"] == 5
    assert 'mode="answer",model="unit-tiny",variant="canary"' in client.get("/metrics").text


def test_shadow_mode_scores_the_canary_without_letting_it_answer(client, registry):
    client.post("/admin/canary", json={"version": registry.versions["permuted"], "share": 0.0, "shadow": True},
                headers=ADMIN)
    for i in range(12):
        r = client.post("/v1/predict", content=encode_png(colour_image(i % 3, seed=i)),
                        headers={"Content-Type": "image/png"})
        assert r.json()["variant"] == "champion"
    import time

    deadline = time.monotonic() + 10
    while client.get("/admin/stats", headers=ADMIN).json()["shadow"]["pairs"] < 12:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stats = client.get("/admin/stats", headers=ADMIN).json()
    assert stats["shadow"]["agreement"] == 0.0 and len(stats["shadow"]["recent_disagreements"]) == 12
    assert stats["variants"]["canary"]["shadow_scored"] == 12 and stats["variants"]["canary"]["requests"] == 0
    # every pair is binned by the champion's confidence (the champion answered: its answer's confidence)
    by = stats["shadow"]["by_champion_confidence"]
    assert sum(by["pairs"]) == 12 and sum(by["agree"]) == 0
    # the model's own compute time per image, per variant (what the canary's latency check compares)
    champion = stats["variants"]["champion"]["compute_ms_per_image"]
    canary = stats["variants"]["canary"]["compute_ms_per_image"]
    assert sum(g["count"] for k, g in champion.items() if k.startswith("answered/")) == 12, champion
    assert all(g["p50"] > 0 for g in champion.values())
    assert sum(g["count"] for k, g in canary.items() if k.startswith("shadowed/")) == 12, canary
    assert not [k for k in canary if k.startswith("answered/")]


def test_admin_promote_and_rollback_go_through_the_registry(client, registry):
    v = registry.versions
    assert client.post("/admin/promote", json={}, headers=ADMIN).json()["error"] == "no_canary"
    client.post("/admin/canary", json={"version": int(v["good"]), "share": 0.5}, headers=ADMIN)
    r = client.post("/admin/promote", json={"version": v["permuted"]}, headers=ADMIN)
    assert r.status_code == 409 and r.json()["error"] == "version_mismatch"
    r = client.post("/admin/promote", json={"version": v["good"]}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["champion"]["version"] == v["good"] and r.json()["previous_champion"] == v["champion"]
    assert get_alias(registry.root, registry.name, "champion") == v["good"]
    assert client.post("/v1/predict", content=encode_png(colour_image(0)),
                       headers={"Content-Type": "image/png"}).json()["version"] == v["good"]
    r = client.post("/admin/rollback", json={"reason": "test"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["champion"]["version"] == v["champion"]


def test_reload_picks_up_an_alias_change(client, registry):
    set_alias(registry.root, registry.name, "champion", registry.versions["good"])
    r = client.post("/admin/reload", headers=ADMIN)
    assert r.json()["changes"]["champion"]["action"] == "loaded"
    assert r.json()["champion"]["version"] == registry.versions["good"]


def test_admin_validation_and_auth(client):
    assert client.post("/admin/traffic", json={"canary_share": 2}, headers=ADMIN).status_code == 422
    assert client.post("/admin/traffic", content=b"{", headers=ADMIN).json()["error"] == "malformed_json"
    assert client.get("/admin/stats").status_code == 401
    assert client.get("/admin/stats", headers={"Authorization": "Bearer x"}).status_code == 403


def test_admin_is_disabled_without_a_token_and_not_ready_without_a_champion(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.delenv("CVPLATFORM_ADMIN_TOKEN", raising=False)
    p = tmp_path / "m.onnx"
    p.write_bytes(build_model().SerializeToString())
    with TestClient(create_app(ServingConfig(), FileSource(p, model_name="m"))) as c:
        r = c.get("/admin/status", headers=ADMIN)
        assert r.status_code == 403 and r.json()["error"] == "admin_disabled"
        assert c.get("/v2/health/ready").json() == {"ready": True}
    p.write_bytes(b"not a model")  # the only model fails to load: live, not ready, 503 with JSON
    with TestClient(create_app(ServingConfig(), FileSource(p, model_name="m"))) as c:
        assert c.get("/v2/health/live").status_code == 200
        r = c.get("/v2/health/ready")
        assert r.status_code == 503 and "cannot load" in r.json()["detail"]
        r = c.post("/v1/predict", content=encode_png(colour_image(0)), headers={"Content-Type": "image/png"})
        assert r.status_code == 503 and r.json()["error"] == "not_ready"


def test_images_of_any_size_and_mode_are_served(client):
    for img in (Image.new("L", (7, 40), 128), Image.new("RGBA", (33, 9), (0, 0, 255, 255)), Image.new("P", (16, 16))):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        assert client.post("/v1/predict", content=buf.getvalue(), headers={"Content-Type": "image/png"}
                           ).status_code == 200



def test_served_images_are_written_to_the_inference_log_for_drift_monitoring(tmp_path):
    from fastapi.testclient import TestClient

    from cvplatform.monitoring.inference_log import InferenceLogger, read_log

    p = tmp_path / "m.onnx"
    p.write_bytes(build_model().SerializeToString())
    logger = InferenceLogger(tmp_path / "requests")
    with TestClient(create_app(ServingConfig(), FileSource(p, model_name="m"), request_log=logger)) as c:
        bodies = [encode_png(colour_image(k)) for k in (0, 1, 2)]
        answers = [c.post("/v1/predict", content=b, headers={"Content-Type": "image/png", "X-Request-ID": f"r{i}"})
                   for i, b in enumerate(bodies)]
        assert all(a.status_code == 200 for a in answers)
    df = read_log(tmp_path / "requests")
    assert sorted(df["request_id"]) == ["r0", "r1", "r2"]
    assert set(df["variant"]) == {"champion"} and set(df["model"]) == {"m"}
    served = {a.json()["predictions"][0]["class"] for a in answers}
    assert set(df["predicted"]) == served
    assert df["brightness"].notna().all() and (df["width"] > 0).all()


# --------------------------------------------------------------------------- hostile input (issue: no 5xx, bounded memory)
def _file_app(tmp_path, config: ServingConfig | None = None, token: str | None = TOKEN):
    p = tmp_path / "m.onnx"
    p.write_bytes(build_model().SerializeToString())
    return create_app(config or ServingConfig(), FileSource(p, model_name="m"), admin_token=token)


def test_a_client_that_goes_away_is_a_499_and_one_info_line(tmp_path, caplog):
    """The ASGI app is called directly with a receive() that reports the disconnect mid-body."""
    import asyncio
    import logging

    from fastapi.testclient import TestClient

    app = _file_app(tmp_path)
    with TestClient(app):  # runs the lifespan (model loaded)
        sent: list[dict] = []
        messages = [{"type": "http.request", "body": b"hello", "more_body": True}, {"type": "http.disconnect"}]

        async def receive() -> dict:
            return messages.pop(0)

        async def send(msg: dict) -> None:
            sent.append(msg)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"image/png"), (b"content-length", b"5000")],
                 "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 8080), "scheme": "http", "state": {}}
        with caplog.at_level(logging.DEBUG):
            asyncio.run(app(scope, receive, send))
        text = app.state.cv.metrics.render()[0].decode()
    assert 'status="499"' in text and 'status="500"' not in text
    assert 'cvplatform_client_disconnects_total{endpoint="predict"} 1.0' in text
    records = [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith(("cvplatform", "uvicorn"))
               and "went away" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_decode_memory_is_charged_before_decoding(tmp_path):
    from fastapi.testclient import TestClient

    from cvplatform.serving.budget import MIB

    config = ServingConfig.model_validate({"limits": {"max_inflight_decode_bytes": 8 * MIB,
                                                      "max_request_pixels": 4_000_000}})
    app = _file_app(tmp_path, config)
    small = encode_png(colour_image(1, size=64))
    big = encode_png(np.zeros((1000, 1000, 3), np.uint8))  # ~12 MB to decode: never fits 8 MiB
    with TestClient(app) as c:
        state = app.state.cv
        assert c.post("/v1/predict", content=small, headers={"Content-Type": "image/png"}).status_code == 200
        r = c.post("/v1/predict", content=big, headers={"Content-Type": "image/png"})
        assert r.status_code == 413 and r.json()["error"] == "request_too_large"
        other = state.budget.hold()
        other.take(8 * MIB - 1000, "another request")  # the budget is taken by someone else right now
        r = c.post("/v1/predict", content=small, headers={"Content-Type": "image/png"})
        assert r.status_code == 429 and r.json()["error"] == "server_busy" and r.headers["Retry-After"] == "1"
        other.release()
        assert c.post("/v1/predict", content=small, headers={"Content-Type": "image/png"}).status_code == 200
        r = c.post("/v1/predict", files=[("files", (f"{i}.png", big, "image/png")) for i in range(5)])
        assert r.status_code == 413 and r.json()["error"] == "too_many_pixels"
        assert state.budget.in_use == 0
        assert "cvplatform_decode_bytes_in_flight 0.0" in c.get("/metrics").text


def test_an_unexpected_failure_does_not_echo_internal_text(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    import cvplatform.serving.routes.predict as predict_module

    def broken(out):
        raise RuntimeError("secret internal state /etc/passwd")

    monkeypatch.setattr(predict_module, "predict_response", broken)
    with TestClient(_file_app(tmp_path), raise_server_exceptions=False) as c:
        r = c.post("/v1/predict", content=encode_png(colour_image(0)), headers={"Content-Type": "image/png"})
    assert r.status_code == 500 and r.json()["error"] == "internal_error"
    assert "secret" not in r.text and "RuntimeError" not in r.text and "error id" in r.json()["detail"]


@pytest.mark.parametrize("token", ["change-me", "CHANGE-ME", "short-but-random-x7Q", "changeme"])
def test_weak_admin_tokens_are_refused_at_start_up(tmp_path, monkeypatch, token):
    from cvplatform.errors import ConfigError

    monkeypatch.delenv("CVPLATFORM_ADMIN_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"secrets\.token_urlsafe\(32\)") as info:
        _file_app(tmp_path, token=token)
    assert "the admin_token argument" in str(info.value)
    monkeypatch.setenv("CVPLATFORM_ADMIN_TOKEN", token)
    with pytest.raises(ConfigError, match=r"\$CVPLATFORM_ADMIN_TOKEN: the admin token"):
        _file_app(tmp_path, token=None)


def test_weak_admin_token_makes_cvplatform_serve_exit_2(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cvplatform.cli import app

    model = tmp_path / "m.onnx"
    model.write_bytes(build_model().SerializeToString())
    (tmp_path / "params.yaml").write_text("{}\n", encoding="utf-8")
    (tmp_path / "configs" / "deploy").mkdir(parents=True)
    (tmp_path / "configs" / "deploy" / "serving.yaml").write_text("{}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CVPLATFORM_ADMIN_TOKEN", "change-me")
    r = CliRunner().invoke(app, ["serve", "--model", str(model), "--port", "1"])
    assert r.exit_code == 2, r.output
    assert "change-me" in r.output and "secrets.token_urlsafe(32)" in r.output


def test_the_openapi_schema_documents_request_bodies_and_the_error_shape(tmp_path):
    from fastapi.testclient import TestClient

    with TestClient(_file_app(tmp_path)) as c:
        doc = c.get("/openapi.json").json()
    predict = doc["paths"]["/v1/predict"]["post"]
    assert set(predict["requestBody"]["content"]) >= {"multipart/form-data", "application/json", "image/png"}
    assert doc["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"][
        "schema"] == {"$ref": "#/components/schemas/OipInferRequest"}
    canary = doc["paths"]["/admin/canary"]["post"]
    assert canary["security"] == [{"adminToken": []}]
    assert canary["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/CanaryRequest")
    assert predict["responses"]["4XX"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert {"OipTensor", "PredictRequest", "Instance"} <= set(doc["components"]["schemas"])


OPENAPI_OPERATIONS = {
    ("/", "get", "index__get"),
    ("/admin/canary", "post", "admin_canary_admin_canary_post"),
    ("/admin/canary/abort", "post", "admin_abort_admin_canary_abort_post"),
    ("/admin/promote", "post", "admin_promote_admin_promote_post"),
    ("/admin/reload", "post", "admin_reload_admin_reload_post"),
    ("/admin/rollback", "post", "admin_rollback_admin_rollback_post"),
    ("/admin/stats", "get", "admin_stats_admin_stats_get"),
    ("/admin/stats/reset", "post", "admin_stats_reset_admin_stats_reset_post"),
    ("/admin/status", "get", "admin_status_admin_status_get"),
    ("/admin/traffic", "post", "admin_traffic_admin_traffic_post"),
    ("/metrics", "get", "prometheus_metrics_get"),
    ("/v1/predict", "post", "predict_v1_predict_post"),
    ("/v2", "get", "server_metadata_v2_get"),
    ("/v2/health/live", "get", "live_v2_health_live_get"),
    ("/v2/health/ready", "get", "ready_v2_health_ready_get"),
    ("/v2/models/{name}", "get", "model_metadata_v2_models__name__get"),
    ("/v2/models/{name}/infer", "post", "infer_v2_models__name__infer_post"),
    ("/v2/models/{name}/ready", "get", "model_ready_v2_models__name__ready_get"),
    ("/v2/models/{name}/versions/{version}", "get", "model_version_metadata_v2_models__name__versions__version__get"),
    ("/v2/models/{name}/versions/{version}/infer", "post",
     "infer_version_v2_models__name__versions__version__infer_post"),
    ("/v2/models/{name}/versions/{version}/ready", "get",
     "model_version_ready_v2_models__name__versions__version__ready_get"),
}


def test_the_routers_keep_every_path_operation_and_parameter(tmp_path):
    """The API split into routers: the same paths, methods and operation ids, and no dependency leaks a parameter."""
    doc = _file_app(tmp_path).openapi()
    ops = {(p, m, op["operationId"]) for p, methods in doc["paths"].items() for m, op in methods.items()}
    assert ops == OPENAPI_OPERATIONS
    params = {(p, m): sorted(x["name"] for x in op.get("parameters", []))
              for p, methods in doc["paths"].items() for m, op in methods.items()}
    routing = ["X-Request-ID", "X-Session-ID", "X-True-Label"]
    assert params[("/v1/predict", "post")] == routing
    assert params[("/v2/models/{name}/versions/{version}/infer", "post")] == sorted(["name", "version", *routing])
    assert params[("/admin/stats", "get")] == ["feedback", "samples"]
    assert params[("/admin/status", "get")] == [] and params[("/metrics", "get")] == []


def test_a_classification_model_refuses_detection_parameters_and_has_no_detection_metrics(tmp_path):
    """``score_threshold`` / ``max_detections`` (declared by detection) do not apply to a classification model: a 422
    naming the parameter and the task, on every way to send them; other query keys stay ignored; ``/metrics`` has
    no detection family."""
    from fastapi.testclient import TestClient

    png = encode_png(colour_image(0, seed=0))
    b64 = base64.b64encode(png).decode()
    with TestClient(_file_app(tmp_path)) as c:
        refused = [
            c.post("/v1/predict?score_threshold=0.5", files=[("files", ("a.png", png, "image/png"))]),
            c.post("/v1/predict?max_detections=3", content=png, headers={"Content-Type": "image/png"}),
            c.post("/v1/predict", files=[("files", ("a.png", png, "image/png"))], data={"score_threshold": "0.5"}),
            c.post("/v1/predict", json={"instances": [b64], "parameters": {"score_threshold": 0.5}}),
            c.post("/v2/models/m/infer", json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                                           "data": [b64]}], "parameters": {"max_detections": 3}}),
        ]
        names = ["score_threshold", "max_detections", "score_threshold", "score_threshold", "max_detections"]
        for r, name in zip(refused, names, strict=True):
            assert r.status_code == 422 and r.json()["error"] == "invalid_parameter", r.text
            assert f"{name} does not apply to this model (project.task: classification)" in r.json()["detail"]
            assert "takes no request parameters" in r.json()["detail"]
        assert c.post("/v1/predict?foo=1", content=png, headers={"Content-Type": "image/png"}).status_code == 200
        assert c.post("/v1/predict", json={"instances": [b64], "parameters": {}}).status_code == 200
        text = c.get("/metrics").text
    assert "cvplatform_predictions_total" in text and "detection" not in text
