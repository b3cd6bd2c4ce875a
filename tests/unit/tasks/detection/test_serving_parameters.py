"""The real server (``build_app``, ``project.task: detection``) on an exported detector: the bounded request
parameters ``score_threshold`` / ``max_detections`` (query string, multipart fields, JSON ``parameters``, OIP v2
``parameters``), their 422s, what they change in the answer, the OpenAPI document, and the detection metrics on
``/metrics``."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from cvplatform.tasks import get_task
from tests.fixtures.serving_models import colour_image, encode_png

TOKEN = "unit-tests-admin-token-0123456789abcdef"
K = 20  # the fixture's max_peaks: the model's K


@pytest.fixture
def served(tmp_path, make_params, detection_onnx):
    """A TestClient on the detector, the request images and the task's offline decoding of them (default
    parameters, boxes on the 32 px input)."""
    from fastapi.testclient import TestClient

    from cvplatform.preprocess import PreprocessContract, preprocess
    from cvplatform.runtime import open_model
    from cvplatform.serving.app import build_app

    serving_yaml = tmp_path / "serving.yaml"
    serving_yaml.write_text("models:\n  poll_interval_s: 0\n")
    params = make_params("project.task=detection", "train.monitor=val_map", "train.mode=max",
                         "monitor.log_requests=false")
    app = build_app(params, root=tmp_path, model=detection_onnx.path, config_path=serving_yaml, admin_token=TOKEN)
    images = [colour_image(i, size=32, seed=i) for i in range(3)]
    runtime = open_model(detection_onnx.path)
    contract = PreprocessContract.from_metadata(dict(runtime.session.get_modelmeta().custom_metadata_map))
    raw = runtime.forward(preprocess(images, contract))
    with TestClient(app) as c:
        yield c, images, raw, detection_onnx.class_names


def _files(images):
    return [("files", (f"{i}.png", encode_png(im), "image/png")) for i, im in enumerate(images)]


def _b64(images):
    return [base64.b64encode(encode_png(im)).decode() for im in images]


def _oip(images, **parameters):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": _b64(images)}]}
    if parameters:
        body["parameters"] = parameters
    return body


BAD_QUERY = [("score_threshold", "-0.1"), ("score_threshold", "1.5"), ("score_threshold", "abc"),
             ("score_threshold", "nan"), ("score_threshold", "inf"), ("max_detections", "0"),
             ("max_detections", str(K + 1)), ("max_detections", "101"), ("max_detections", "2.5"),
             ("max_detections", "x"), ("max_detections", "-3")]
BAD_JSON = [("score_threshold", "0.5"), ("score_threshold", True), ("score_threshold", 2), ("score_threshold", None),
            ("max_detections", 1.0), ("max_detections", 0), ("max_detections", K + 1), ("max_detections", [3])]
RANGE = {"score_threshold": "a number in [0, 1]", "max_detections": f"an integer in [1, {K}]"}


def _is_422(r, name, shown):
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"] == "invalid_parameter", body
    assert name in body["detail"] and shown in body["detail"] and RANGE[name] in body["detail"], body["detail"]


def test_every_bad_value_is_a_422_naming_the_parameter_value_and_range(served):
    c, images, _, _ = served
    for name, value in BAD_QUERY:  # the query string, with every body kind
        _is_422(c.post(f"/v1/predict?{name}={value}", files=_files(images[:1])), name, repr(value))
        _is_422(c.post(f"/v1/predict?{name}={value}", content=encode_png(images[0]),
                       headers={"Content-Type": "image/png"}), name, repr(value))
        r = c.post("/v1/predict", files=_files(images[:1]), data={name: value})  # a multipart text field
        _is_422(r, name, repr(value))
        assert r.json()["detail"].startswith(f"form field {name} = ")
    for name, value in BAD_JSON:  # the JSON body's parameters, and OIP v2 request parameters
        _is_422(c.post("/v1/predict", json={"instances": _b64(images[:1]), "parameters": {name: value}}),
                name, repr(value))
        _is_422(c.post("/v2/models/cvplatform/infer", json=_oip(images[:1], **{name: value})), name, repr(value))

    # the same parameter twice, an unknown key in the JSON parameters: named; an unknown query key stays ignored
    r = c.post("/v1/predict?max_detections=1&max_detections=2", files=_files(images[:1]))
    assert r.status_code == 422 and "max_detections is given more than once" in r.json()["detail"]
    r = c.post("/v1/predict?max_detections=2", json={"instances": _b64(images[:1]), "parameters": {"max_detections": 2}})
    assert r.status_code == 422 and "both in the query string and in" in r.json()["detail"]
    r = c.post("/v1/predict?max_detections=2", files=_files(images[:1]), data={"max_detections": "2"})
    assert r.status_code == 422 and "both in the query string and as a form field" in r.json()["detail"]
    r = c.post("/v1/predict", json={"instances": _b64(images[:1]), "parameters": {"nms_iou": 0.5}})
    assert r.status_code == 422 and r.json()["error"] == "invalid_parameter" and "nms_iou" in r.json()["detail"]
    assert c.post("/v1/predict?cache_buster=1", files=_files(images[:1])).status_code == 200
    # OIP keeps the protocol's own parameters
    assert c.post("/v2/models/cvplatform/infer", json=_oip(images[:1], binary_data_output=False)).status_code == 200
    bad = c.get("/metrics").text
    assert 'cvplatform_bad_requests_total{endpoint="predict",error="invalid_parameter"}' in bad


def test_the_parameters_change_the_answer_as_the_task_decodes_them(served):
    c, images, raw, names = served
    task = get_task("detection")

    def boxes(r):
        assert r.status_code == 200, r.text
        return [[(d["class"], round(d["score"], 5)) for d in p["detections"]] for p in r.json()["predictions"]]

    def expected(**kw):
        return [[(d["class"], round(d["score"], 5)) for d in p["detections"]] for p in task.decode(raw, names, **kw)]

    default = boxes(c.post("/v1/predict", files=_files(images)))
    assert default == expected()
    scores = sorted(s for p in default for _, s in p)
    assert len(scores) >= 4 and max(len(p) for p in default) >= 2
    higher = float(scores[len(scores) // 2])  # the median score: about half the boxes stay
    high = boxes(c.post(f"/v1/predict?score_threshold={higher}", files=_files(images)))
    assert high == expected(score_threshold=higher)
    assert 0 < sum(map(len, high)) < sum(map(len, default)) and all(s >= higher for p in high for _, s in p)
    one = boxes(c.post("/v1/predict?max_detections=1", files=_files(images)))
    assert one == [p[:1] for p in default]  # the best box of each image, no other
    low = boxes(c.post("/v1/predict?score_threshold=0", files=_files(images)))
    assert low == expected(score_threshold=0.0) and sum(map(len, low)) > sum(map(len, default))
    assert all(len(p) <= K for p in low)
    # JSON parameters and the raw body give the same answers as the query string
    r = c.post("/v1/predict", json={"instances": _b64(images), "parameters": {"score_threshold": higher}})
    assert boxes(r) == high
    r = c.post("/v1/predict", files=_files(images), data={"score_threshold": str(higher), "note": "ignored"})
    assert boxes(r) == high
    r = c.post("/v1/predict?max_detections=1", content=encode_png(images[0]), headers={"Content-Type": "image/png"})
    assert boxes(r) == one[:1]

    # OIP v2: the request's parameters decide num_detections and the padded outputs
    r = c.post("/v2/models/cvplatform/infer", json=_oip(images, max_detections=1, score_threshold=higher))
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    want = [len(p) for p in expected(score_threshold=higher, max_detections=1)]
    assert out["num_detections"]["data"] == want and out["scores"]["shape"] == [3, max(want)]


def test_openapi_and_model_metadata_document_the_bounds(served):
    c, _, _, _ = served
    doc = c.get("/openapi.json").json()
    query = {p["name"]: p["schema"] for p in doc["paths"]["/v1/predict"]["post"]["parameters"] if p["in"] == "query"}
    assert query["score_threshold"] | {"description": ""} == {"type": "number", "minimum": 0.0, "maximum": 1.0,
                                                             "default": 0.3, "description": ""}
    assert (query["max_detections"]["type"], query["max_detections"]["minimum"],
            query["max_detections"]["maximum"]) == ("integer", 1, K)
    body = doc["components"]["schemas"]["PredictRequest"]["properties"]["parameters"]["anyOf"][0]
    assert set(body["properties"]) == {"score_threshold", "max_detections"} and body["additionalProperties"] is False
    form = doc["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["max_detections"] == query["max_detections"]
    meta = c.get("/v2/models/cvplatform").json()
    assert meta["parameters"]["request_parameters"]["max_detections"]["maximum"] == K


def _samples(text):
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_count_the_answered_boxes_per_image_score_and_class(served):
    c, images, raw, names = served
    task = get_task("detection")
    r1 = c.post("/v1/predict", files=_files(images))
    r2 = c.post("/v1/predict?max_detections=1", files=_files(images[:2]))
    r3 = c.post("/v2/models/cvplatform/infer", json=_oip(images[:1], score_threshold=0.9))
    assert {r1.status_code, r2.status_code, r3.status_code} == {200}
    first = {k: v[:2] for k, v in raw.items()}
    answered = [*task.decode(raw, names), *task.decode(first, names, max_detections=1),
                *task.decode({k: v[:1] for k, v in raw.items()}, names, score_threshold=0.9)]
    per_image = [len(p["detections"]) for p in answered]
    scores = [d["score"] for p in answered for d in p["detections"]]
    by_class = {n: sum(d["class"] == n for p in answered for d in p["detections"]) for n in names}
    s = _samples(c.get("/metrics").text)
    version = r1.json()["version"]
    base = (("model", "cvplatform"), ("variant", "champion"), ("version", version))
    assert s[("cvplatform_detections_per_image_count", base)] == len(answered) == 6
    assert s[("cvplatform_detections_per_image_sum", base)] == sum(per_image)
    assert s[("cvplatform_detections_per_image_bucket", tuple(sorted([*base, ("le", "0.0")])))] == per_image.count(0)
    assert s[("cvplatform_detection_score_count", base)] == len(scores) > 0
    assert s[("cvplatform_detection_score_sum", base)] == pytest.approx(sum(scores), rel=1e-6)
    assert s[("cvplatform_detection_score_bucket", tuple(sorted([*base, ("le", "0.5")])))] == sum(
        x <= 0.5 for x in scores)
    for n, count in by_class.items():
        assert s.get(("cvplatform_detections_total", tuple(sorted([*base, ("class", n)]))), 0.0) == count
    assert np.isclose(sum(by_class.values()), len(scores))
