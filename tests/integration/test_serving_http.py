"""The inference service as a real process (``cvplatform serve``) over real HTTP.

A tiny project with a real SQLite MLflow registry (champion, a second good version, a
disagreeing one and an unloadable one); one server subprocess per module with small input
limits, a fast alias poll and a 10 ms batching window. Plain ``httpx`` clients only (the way
any OIP v2 / REST client talks to it).
"""

from __future__ import annotations

import base64
import io
import json
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml

from cvplatform.config import apply_overrides, read_yaml
from cvplatform.data.manifest import read_manifest
from cvplatform.serving.local import LocalServer
from tests.fixtures.serving_models import get_alias, register_version, set_alias, version_tags, write_model
from tests.fixtures.tiny_dataset import make_tiny_project

pytestmark = pytest.mark.integration

MODEL = "tiny"
LIMITS = {"max_body_bytes": 262144, "max_pixels": 65536, "max_images": 8}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("CVPLATFORM_ADMIN_TOKEN", raising=False)
    root = make_tiny_project(tmp_path_factory.mktemp("serving"), per_class=10, size=20,
                             overrides=[f"registry.model_name={MODEL}"])
    serving = root / "configs" / "deploy" / "serving.yaml"
    overrides = [f"limits.{k}={v}" for k, v in LIMITS.items()] + [
        "models.poll_interval_s=0.5", "models.intra_op_threads=1", "batching.max_wait_ms=10",
    ]
    serving.write_text(yaml.safe_dump(apply_overrides(read_yaml(serving), overrides, "serving"), sort_keys=False),
                       encoding="utf-8")
    paths, versions = {}, {}
    for kind in ("champion", "good", "permuted", "broken"):
        paths[kind] = write_model(root / "models" / f"{kind}.onnx", kind)
        versions[kind] = register_version(root, MODEL, paths[kind])
    set_alias(root, MODEL, "champion", versions["champion"])
    yield root, versions, paths
    mp.undo()


@pytest.fixture(scope="module")
def server(project):
    root, _, _ = project
    with LocalServer(root) as srv:
        yield srv


@pytest.fixture
def http(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _admin(server):
    return {"Authorization": f"Bearer {server.token}"}


def _test_images(root):
    df = read_manifest(root / "data" / "processed" / "manifest.parquet")
    rows = df[df["split"] == "test"].sort_values("sha256")
    return [(root / p).read_bytes() for p in rows["path"]], list(rows["label"]), [root / p for p in rows["path"]]


def _offline(path, files):
    """Offline reference: the evaluation stage's ONNX predictor on the same files (cv2 decoding)."""
    import cv2

    from cvplatform.evaluation.predictors import OnnxPredictor
    from cvplatform.tasks.classification import softmax

    pred = OnnxPredictor(path)
    images = [cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for f in files]
    return softmax(pred.predict_logits(images)), pred


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- parity and OIP v2
def test_served_predictions_equal_offline_onnxruntime(project, http):
    root, _, paths = project
    blobs, labels, files = _test_images(root)
    want, pred = _offline(paths["champion"], files)
    names = list(pred.class_names)
    # one multipart request with several files ...
    r = http.post("/v1/predict", files=[("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs[:8])])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["variant"] == "champion" and body["model"] == MODEL and body["version"] == "1"
    got = body["predictions"]
    # ... and the rest one per JSON request
    for b in blobs[8:]:
        r = http.post("/v1/predict", json={"instances": [{"b64": base64.b64encode(b).decode()}]})
        assert r.status_code == 200, r.text
        got += r.json()["predictions"]
    assert len(got) == len(blobs)
    for p, row in zip(got, want, strict=True):
        assert p["class"] == names[int(row.argmax())]
        assert p["model"] == MODEL and p["version"] == "1" and p["variant"] == "champion"
        np.testing.assert_allclose([p["probabilities"][n] for n in names], row, atol=1e-6, rtol=0)
    assert sum(p["class"] == y for p, y in zip(got, labels, strict=True)) == len(labels)  # the colour model is right


def test_oip_v2_protocol_with_plain_http(project, http):
    from cvplatform.preprocess import PreprocessContract, preprocess

    root, versions, paths = project
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").status_code == 200
    assert http.get("/v2").json()["name"] == "cvplatform"
    meta = http.get(f"/v2/models/{MODEL}").json()
    assert meta["name"] == MODEL and versions["champion"] in meta["versions"]
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert inputs["input"] == {"name": "input", "datatype": "FP32", "shape": [-1, 3, 16, 16]}
    assert inputs["image"]["datatype"] == "BYTES"
    assert {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]} in meta["outputs"]
    assert http.get(f"/v2/models/{MODEL}/ready").json()["ready"] is True

    blobs, labels, files = _test_images(root)
    want, pred = _offline(paths["champion"], files)
    contract = PreprocessContract.from_metadata(meta["parameters"]["preprocess"])
    # FP32: the client preprocesses with the contract the metadata advertises
    from PIL import Image

    x = preprocess([np.asarray(Image.open(f).convert("RGB")) for f in files], contract)
    req = {"id": "req-1", "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                      "data": x.ravel().tolist()}]}
    r = http.post(f"/v2/models/{MODEL}/infer", json=req)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == MODEL and out["model_version"] == versions["champion"] and out["id"] == "req-1"
    probs = next(o for o in out["outputs"] if o["name"] == "probabilities")
    assert probs["datatype"] == "FP32" and probs["shape"] == [len(files), 3]
    np.testing.assert_allclose(np.asarray(probs["data"]).reshape(len(files), 3), want, atol=1e-6, rtol=0)
    label = next(o for o in out["outputs"] if o["name"] == "label")
    assert label["data"] == labels
    # BYTES, base64 in JSON, only one requested output
    req = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                       "data": [base64.b64encode(b).decode() for b in blobs[:2]]}],
           "outputs": [{"name": "label"}]}
    r = http.post(f"/v2/models/{MODEL}/versions/{versions['champion']}/infer", json=req)
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["label"] and r.json()["outputs"][0]["data"] == labels[:2]
    # BYTES, raw bytes with the binary tensor extension (4-byte little-endian length prefixes)
    raw = b"".join(len(b).to_bytes(4, "little") + b for b in blobs[:3])
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    r = http.post(f"/v2/models/{MODEL}/infer", content=header + raw,
                  headers={"Content-Type": "application/octet-stream",
                           "Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    got = np.asarray(next(o for o in r.json()["outputs"] if o["name"] == "probabilities")["data"]).reshape(3, 3)
    np.testing.assert_allclose(got, want[:3], atol=1e-6, rtol=0)
    # not served: unknown model, unknown version
    assert http.post("/v2/models/nope/infer", json=req).json()["error"] == "unknown_model"
    r = http.post(f"/v2/models/{MODEL}/versions/999/infer", json=req)
    assert r.status_code == 404 and r.json()["error"] == "unknown_version"


# --------------------------------------------------------------------------- bad input
def _malformed_requests(good_png: bytes) -> list[tuple[str, str, dict, int]]:
    """(method, path, httpx kwargs, expected status) for every kind of bad request."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (1000, 1000)).save(buf, format="PNG")  # small file, 1 M pixels declared
    huge_pixels = buf.getvalue()
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PPM")
    ppm = buf.getvalue()
    img = {"Content-Type": "image/png"}
    infer = f"/v2/models/{MODEL}/infer"
    fp32 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 16, 16], "data": [0.0] * 768}]}
    nested = "[" * 5000 + "]" * 5000
    kinds = [
        ("POST", "/v1/predict", {"content": b"definitely not an image", "headers": img}, 400),
        ("POST", "/v1/predict", {"content": good_png[: len(good_png) // 2], "headers": img}, 400),
        ("POST", "/v1/predict", {"content": good_png[:20], "headers": img}, 400),
        ("POST", "/v1/predict", {"content": b"\x89PNG" + bytes(300_000), "headers": img}, 413),
        ("POST", "/v1/predict", {"content": huge_pixels, "headers": img}, 413),
        ("POST", "/v1/predict", {"content": ppm, "headers": img}, 415),
        ("POST", "/v1/predict", {"content": b"", "headers": img}, 400),
        ("POST", "/v1/predict", {"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415),
        ("POST", "/v1/predict", {"content": b"<xml/>", "headers": {"Content-Type": "application/xml"}}, 415),
        ("POST", "/v1/predict", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400),
        ("POST", "/v1/predict", {"content": b"\xff\xfe\x00", "headers": {"Content-Type": "application/json"}}, 400),
        ("POST", "/v1/predict", {"content": nested.encode(), "headers": {"Content-Type": "application/json"}}, 400),
        ("POST", "/v1/predict", {"json": {"foo": 1}}, 422),
        ("POST", "/v1/predict", {"json": {"instances": []}}, 422),
        ("POST", "/v1/predict", {"json": {"instances": [{"b64": "%%%not-base64%%%"}]}}, 400),
        ("POST", "/v1/predict", {"json": {"instances": [{"b64": base64.b64encode(b"text").decode()}]}}, 400),
        ("POST", "/v1/predict", {"data": {"note": "no files"}, "files": {"other": ("a.txt", b"x")}}, 400),
        ("POST", "/v1/predict", {"content": b"--xx\r\ngarbage", "headers": {
            "Content-Type": "multipart/form-data; boundary=xx"}}, 400),
        ("POST", "/v1/predict", {"content": b"abc", "headers": {"Content-Type": "multipart/form-data"}}, 400),
        ("POST", "/v1/predict", {"files": [("files", (f"{i}.png", good_png, "image/png")) for i in range(9)]}, 413),
        ("POST", "/v1/predict", {"content": good_png, "headers": {**img, "X-True-Label": "red,green"}}, 400),
        ("GET", "/v1/predict", {}, 405),
        ("GET", "/v1/nothing-here", {}, 404),
        ("POST", "/v2/models/unknown-model/infer", {"json": fp32}, 404),
        ("GET", "/v2/models/unknown-model", {}, 404),
        ("POST", infer, {"json": {"inputs": [{**fp32["inputs"][0], "shape": [1, 3, 8, 8]}]}}, 400),
        ("POST", infer, {"json": {"inputs": [{**fp32["inputs"][0], "data": [0.0] * 10}]}}, 400),
        ("POST", infer, {"json": {"inputs": [{**fp32["inputs"][0], "datatype": "INT64"}]}}, 400),
        ("POST", infer, {"json": {"inputs": [{**fp32["inputs"][0], "data": ["a"] * 768}]}}, 400),
        ("POST", infer, {"content": json.dumps({"inputs": [{**fp32["inputs"][0], "data": [float("nan")] * 768}]}),
                         "headers": {"Content-Type": "application/json"}}, 400),
        ("POST", infer, {"json": {"inputs": []}}, 422),
        ("POST", infer, {"json": {"inputs": [fp32["inputs"][0], fp32["inputs"][0]]}}, 400),
        ("POST", infer, {"json": {**fp32, "outputs": [{"name": "nope"}]}}, 400),
        ("POST", infer, {"content": b"{]", "headers": {"Content-Type": "application/json"}}, 400),
        ("POST", infer, {"content": b"{}", "headers": {"Content-Type": "application/octet-stream",
                                                       "Inference-Header-Content-Length": "99"}}, 400),
        ("POST", infer, {"json": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                              "data": ["!!notbase64!!"]}]}}, 400),
        ("POST", infer, {"content": b"x", "headers": {"Content-Type": "text/csv"}}, 415),
        ("POST", "/admin/traffic", {"json": {"canary_share": 0.5}}, 401),
        ("POST", "/admin/traffic", {"json": {"canary_share": 0.5}, "headers": {"Authorization": "Bearer wrong"}}, 403),
    ]
    return kinds


def test_a_thousand_malformed_requests_get_4xx_and_the_server_stays_healthy(project, server):
    import httpx

    root, _, _ = project
    blobs, _, _ = _test_images(root)
    kinds = _malformed_requests(blobs[0])
    jobs = [kinds[i % len(kinds)] for i in range(max(1000, 26 * len(kinds)))]
    random.Random(0).shuffle(jobs)
    local = threading.local()

    def send(job):
        method, path, kwargs, want = job
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=server.url, timeout=30)
        r = local.client.request(method, path, **kwargs)
        try:
            body = r.json()
        except ValueError:
            body = None
        return path, want, r.status_code, body

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, jobs))
    assert len(results) >= 1000
    server_errors = [(p, s, b) for p, _, s, b in results if s >= 500]
    assert not server_errors, server_errors[:5]
    wrong = [(p, w, s, b) for p, w, s, b in results if s != w]
    assert not wrong, wrong[:5]
    assert all(isinstance(b, dict) and b.get("error") and "detail" in b for _, _, _, b in results)
    # still healthy: normal requests succeed
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/v2/health/ready").status_code == 200
        for b in blobs[:5]:
            r = c.post("/v1/predict", files={"files": ("x.png", b, "image/png")})
            assert r.status_code == 200 and r.json()["predictions"][0]["class"] in ("red", "green", "blue")
        metrics = c.get("/metrics").text
    assert 'cvplatform_bad_requests_total{endpoint="predict",error="invalid_image"}' in metrics


# --------------------------------------------------------------------------- reloads, canary, traffic split
def test_alias_flips_under_load_drop_no_request(project, server):
    import httpx

    root, versions, _ = project
    blobs, _, _ = _test_images(root)
    stop = threading.Event()
    outcomes: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                b = blobs[rng.randrange(len(blobs))]
                try:
                    r = c.post("/v1/predict", files={"files": ("x.png", b, "image/png")})
                    res = (r.status_code, r.json().get("version") if r.status_code == 200 else r.text[:200])
                except httpx.HTTPError as exc:
                    res = (0, repr(exc))
                with lock:
                    outcomes.append(res)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60, headers=_admin(server)) as admin:
            for i in range(6):
                target = versions["good"] if i % 2 == 0 else versions["champion"]
                set_alias(root, MODEL, "champion", target)
                if i % 3 == 2:  # let the background poll pick this one up
                    deadline = time.monotonic() + 20
                    while admin.get("/admin/status").json()["champion"]["version"] != target:
                        assert time.monotonic() < deadline, "the alias poll did not reload the champion"
                        time.sleep(0.1)
                else:
                    r = admin.post("/admin/reload")
                    assert r.status_code == 200 and r.json()["champion"]["version"] == target
                time.sleep(0.7)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert get_alias(root, MODEL, "champion") == versions["champion"]
    failures = [o for o in outcomes if o[0] != 200]
    assert len(outcomes) > 100 and not failures, failures[:5]
    assert {v for _, v in outcomes} == {versions["champion"], versions["good"]}


def test_canary_that_fails_to_load_never_receives_traffic(project, server, http):
    root, versions, _ = project
    h = _admin(server)
    r = http.post("/admin/canary", json={"version": versions["broken"], "share": 1.0}, headers=h)
    assert r.status_code == 409 and r.json()["error"] == "canary_load_failed"
    r = http.post("/admin/traffic", json={"canary_share": 1.0}, headers=h)
    assert r.status_code == 409 and r.json()["error"] == "no_canary"
    # the same through the registry alias (picked up by the poll)
    set_alias(root, MODEL, "canary", versions["broken"])
    try:
        deadline = time.monotonic() + 20
        while "v" + versions["broken"] not in str(http.get("/admin/status", headers=h).json()["canary"]["error"]):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert http.get("/admin/status", headers=h).json()["canary"]["loaded"] is False
        blobs, _, _ = _test_images(root)
        variants = {http.post("/v1/predict", content=blobs[i % len(blobs)],
                              headers={"Content-Type": "image/png"}).json()["variant"] for i in range(30)}
        assert variants == {"champion"}
        assert http.get("/admin/stats", headers=h).json()["variants"]["canary"]["requests"] == 0
    finally:
        set_alias(root, MODEL, "canary", None)


def test_traffic_split_is_deterministic_sticky_and_shadowed(project, server, http):
    root, versions, _ = project
    h = _admin(server)
    blobs, _, _ = _test_images(root)
    r = http.post("/admin/canary", json={"version": versions["permuted"], "share": 0.3, "shadow": True}, headers=h)
    assert r.status_code == 200, r.text
    assert get_alias(root, MODEL, "canary") == versions["permuted"]
    http.post("/admin/stats/reset", headers=h)
    try:
        def variant(headers):
            r = http.post("/v1/predict", content=blobs[0], headers={"Content-Type": "image/png", **headers})
            assert r.status_code == 200
            assert r.headers["X-Model-Variant"] == r.json()["variant"]
            return r.json()["variant"]

        seen = [variant({"X-Request-ID": uuid.uuid4().hex}) for _ in range(200)]
        share = seen.count("canary") / len(seen)
        assert 0.18 <= share <= 0.42, share
        rid = uuid.uuid4().hex
        assert len({variant({"X-Request-ID": rid}) for _ in range(5)}) == 1
        for s in range(10):
            assert len({variant({"X-Session-ID": f"user-{s}", "X-Request-ID": uuid.uuid4().hex})
                        for _ in range(4)}) == 1
        time.sleep(0.5)  # let the background shadow scorings finish
        stats = http.get("/admin/stats", headers=h).json()
        assert stats["shadow"]["pairs"] > 100
        assert stats["shadow"]["agreement"] == 0.0  # the permuted canary never agrees
        assert stats["variants"]["canary"]["shadow_scored"] > 0 and stats["variants"]["champion"]["shadow_scored"] > 0
    finally:
        r = http.post("/admin/canary/abort", json={"reason": "test over"}, headers=h)
    assert r.status_code == 200 and r.json()["canary"]["loaded"] is False and r.json()["traffic"]["canary_share"] == 0
    assert get_alias(root, MODEL, "canary") is None
    assert version_tags(root, MODEL, versions["permuted"])["deploy.rollback_reason"] == "test over"


def test_admin_api_needs_the_token(server, http):
    r = http.get("/admin/status")
    assert r.status_code == 401 and r.headers.get("WWW-Authenticate") == "Bearer"
    assert http.get("/admin/status", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert http.get("/admin/status", headers={"Authorization": "Basic abc"}).status_code == 401
    assert http.get("/admin/status", headers=_admin(server)).json()["ready"] is True


def test_concurrent_requests_are_micro_batched_and_metered(project, server):
    import httpx

    root, _, _ = project
    blobs, _, _ = _test_images(root)

    def one(i):
        with httpx.Client(base_url=server.url, timeout=30) as c:
            return c.post("/v1/predict", files={"files": ("x.png", blobs[i % len(blobs)], "image/png")}).status_code

    with httpx.Client(base_url=server.url, timeout=30) as c:
        before = _batch_counts(c.get("/metrics").text)
        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(one, range(64))) == {200}
        text = c.get("/metrics").text
    after = _batch_counts(text)
    batches, images = after[0] - before[0], after[1] - before[1]
    assert images >= 64 and batches < images, (batches, images)  # several requests shared onnxruntime calls
    for series in ('cvplatform_requests_total{endpoint="predict",model="tiny"',
                   "cvplatform_request_latency_seconds_bucket", "cvplatform_inference_latency_seconds_bucket",
                   'cvplatform_predictions_total{class="red"', "cvplatform_prediction_confidence_bucket",
                   'cvplatform_model_info{model="tiny",variant="champion",version="1"} 1.0'):
        assert series in text, series


def _batch_counts(text: str) -> tuple[float, float]:
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith("cvplatform_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
        elif line.startswith("cvplatform_batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
    return count, total
