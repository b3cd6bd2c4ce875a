"""The real server (``build_app``) for ``project.task: detection`` serves an exported detector: ``/v1/predict``
answers the task's detections, the statistics record ``decode_top``'s classes, and OIP v2 offers and returns the
task's padded ``boxes`` / ``scores`` / ``labels`` / ``num_detections``."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from cvplatform.tasks import get_task
from tests.fixtures.serving_models import colour_image, encode_png

TOKEN = "unit-tests-admin-token-0123456789abcdef"


def test_the_server_answers_detections(tmp_path, make_params, detection_onnx):
    from fastapi.testclient import TestClient

    from cvplatform.preprocess import PreprocessContract, preprocess
    from cvplatform.runtime import open_model
    from cvplatform.serving.app import build_app

    task, names = get_task("detection"), detection_onnx.class_names
    serving_yaml = tmp_path / "serving.yaml"
    serving_yaml.write_text("models:\n  poll_interval_s: 0\n")
    params = make_params("project.task=detection", "train.monitor=val_map", "train.mode=max",
                         "monitor.log_requests=false")
    app = build_app(params, root=tmp_path, model=detection_onnx.path, config_path=serving_yaml, admin_token=TOKEN)
    assert app.state.cv.task is task
    images = [colour_image(i, seed=i) for i in range(3)]
    # what the server should answer: the task's decoding of the runtime's outputs on the contract's preprocessing
    runtime = open_model(detection_onnx.path)
    contract = PreprocessContract.from_metadata(dict(runtime.session.get_modelmeta().custom_metadata_map))
    expected = task.decode(runtime.forward(preprocess(images, contract)), names)
    assert sum(len(e["detections"]) for e in expected) > 0
    with TestClient(app) as c:
        r = c.post("/v1/predict", files=[("files", (f"{i}.png", encode_png(im), "image/png"))
                                         for i, im in enumerate(images)])
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        for p, e in zip(preds, expected, strict=True):
            assert [d["class"] for d in p["detections"]] == [d["class"] for d in e["detections"]]
            # the 24 px request images were resized to the 32 px input: boxes come back in the image's pixels
            np.testing.assert_allclose(np.asarray([d["box"] for d in p["detections"]]).reshape(-1, 4),
                                       np.clip(e["boxes"].reshape(-1, 4) * 24 / 32, 0, 24), atol=1e-3)
            assert p["variant"] == "champion"
        classes = c.get("/admin/stats", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        top = [e["detections"][0]["class"] if e["detections"] else "" for e in expected]
        assert classes["variants"]["champion"]["classes"] == {k: top.count(k) for k in set(top)}

        meta = c.get("/v2/models/cvplatform").json()
        assert meta["outputs"] == task.tensor_output_specs(names)
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3],
                            "data": [base64.b64encode(encode_png(im)).decode() for im in images]}]}
        r = c.post("/v2/models/cvplatform/infer", json=body)
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        counts = [len(e["detections"]) for e in expected]
        assert out["num_detections"]["data"] == counts and out["boxes"]["shape"] == [3, max(counts), 4]
        labels = np.asarray(out["labels"]["data"], dtype=object).reshape(3, max(counts))
        assert labels[0, :counts[0]].tolist() == [d["class"] for d in expected[0]["detections"]]


def test_served_boxes_are_in_the_request_images_pixels(tmp_path, make_params, detection_onnx):
    """Images of another size than the model input: the server answers boxes in each image's own pixels (the
    offline boxes on the resized input, scaled back by width / height), inside the image."""
    from fastapi.testclient import TestClient

    from cvplatform.preprocess import PreprocessContract, preprocess
    from cvplatform.runtime import open_model
    from cvplatform.serving.app import build_app

    task, names = get_task("detection"), detection_onnx.class_names
    serving_yaml = tmp_path / "serving.yaml"
    serving_yaml.write_text("models:\n  poll_interval_s: 0\n")
    params = make_params("project.task=detection", "train.monitor=val_map", "train.mode=max",
                         "monitor.log_requests=false")
    app = build_app(params, root=tmp_path, model=detection_onnx.path, config_path=serving_yaml, admin_token=TOKEN)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size=(48, 96, 3), dtype=np.uint8), rng.integers(0, 256, size=(80, 40, 3),
                                                                                   dtype=np.uint8)]
    runtime = open_model(detection_onnx.path)
    contract = PreprocessContract.from_metadata(dict(runtime.session.get_modelmeta().custom_metadata_map))
    expected = task.decode(runtime.forward(preprocess(images, contract)), names)  # boxes on the 32x32 input
    assert sum(len(e["detections"]) for e in expected) > 0
    with TestClient(app) as c:
        r = c.post("/v1/predict", files=[("files", (f"{i}.png", encode_png(im), "image/png"))
                                         for i, im in enumerate(images)])
    assert r.status_code == 200, r.text
    for p, e, im in zip(r.json()["predictions"], expected, images, strict=True):
        h, w = im.shape[:2]
        want = np.clip(e["boxes"].reshape(-1, 4) * [w / 32, h / 32, w / 32, h / 32], 0, [w, h, w, h])
        got = np.asarray([d["box"] for d in p["detections"]]).reshape(-1, 4)
        np.testing.assert_allclose(got, want, atol=1e-3)
        assert (got[:, [0, 2]] <= w).all() and (got[:, [1, 3]] <= h).all()


def test_a_letterbox_model_is_served_letterboxed_and_its_boxes_come_back_unpadded(tmp_path, make_params,
                                                                                  letterbox_onnx):
    """A model recorded with ``resize: letterbox``: its ONNX contract says so, the server letterboxes the request
    images (the offline letterboxed outputs are what it decodes) and answers boxes with the scale and the centring
    padding undone, inside each image."""
    from fastapi.testclient import TestClient

    from cvplatform.preprocess import PreprocessContract, preprocess, resize_geometry
    from cvplatform.runtime import open_model
    from cvplatform.serving.app import build_app

    task, names = get_task("detection"), letterbox_onnx.class_names
    serving_yaml = tmp_path / "serving.yaml"
    serving_yaml.write_text("models:\n  poll_interval_s: 0\n")
    params = make_params("project.task=detection", "train.monitor=val_map", "train.mode=max",
                         "monitor.log_requests=false")
    app = build_app(params, root=tmp_path, model=letterbox_onnx.path, config_path=serving_yaml, admin_token=TOKEN)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size=(48, 96, 3), dtype=np.uint8),
              rng.integers(0, 256, size=(80, 40, 3), dtype=np.uint8)]
    runtime = open_model(letterbox_onnx.path)
    contract = PreprocessContract.from_metadata(dict(runtime.session.get_modelmeta().custom_metadata_map))
    assert (contract.resize, contract.pad_value) == ("letterbox", 114)
    expected = task.decode(runtime.forward(preprocess(images, contract)), names)  # boxes on the letterboxed input
    assert sum(len(e["detections"]) for e in expected) > 0
    with TestClient(app) as c:
        r = c.post("/v1/predict", files=[("files", (f"{i}.png", encode_png(im), "image/png"))
                                         for i, im in enumerate(images)])
    assert r.status_code == 200, r.text
    for p, e, im in zip(r.json()["predictions"], expected, images, strict=True):
        h, w = im.shape[:2]
        g = resize_geometry((h, w), contract)  # 48x96 -> 16x32 at top 8; 80x40 -> 32x16 at left 8
        (sy, sx), (top, left) = g.scale, g.offset
        assert sx == sy == 32 / max(h, w) and (top, left) == ((8, 0) if w > h else (0, 8))
        want = np.clip((e["boxes"].reshape(-1, 4) - [left, top, left, top]) / [sx, sy, sx, sy], 0, [w, h, w, h])
        got = np.asarray([d["box"] for d in p["detections"]]).reshape(-1, 4)
        assert [d["class"] for d in p["detections"]] == [d["class"] for d in e["detections"]]
        np.testing.assert_allclose(got, want, atol=1e-3)
        assert (got[:, [0, 2]] <= w).all() and (got[:, [1, 3]] <= h).all()


def test_the_server_records_each_images_boxes_in_its_stats_and_inference_log(tmp_path, make_params, detection_onnx):
    """What the canary's object checks and drift read: ``/admin/stats`` reports the task, and each variant's boxes
    per image, classes and scores (``task.object_signals``); the inference log holds each image's boxes."""
    from fastapi.testclient import TestClient

    from cvplatform.monitoring.inference_log import read_log
    from cvplatform.preprocess import PreprocessContract, preprocess
    from cvplatform.runtime import open_model
    from cvplatform.serving.app import build_app

    task, names = get_task("detection"), detection_onnx.class_names
    serving_yaml = tmp_path / "serving.yaml"
    serving_yaml.write_text("models:\n  poll_interval_s: 0\n")
    params = make_params("project.task=detection", "train.monitor=val_map", "train.mode=max",
                         "monitor.log_requests=true", "monitor.log_dir=requests")
    app = build_app(params, root=tmp_path, model=detection_onnx.path, config_path=serving_yaml, admin_token=TOKEN)
    images = [colour_image(i, seed=i) for i in range(3)]
    runtime = open_model(detection_onnx.path)
    contract = PreprocessContract.from_metadata(dict(runtime.session.get_modelmeta().custom_metadata_map))
    expected = task.object_signals(runtime.forward(preprocess(images, contract)), names, (32, 32))
    counts = [len(e["scores"]) for e in expected]
    assert sum(counts) > 0
    with TestClient(app) as c:
        r = c.post("/v1/predict", files=[("files", (f"{i}.png", encode_png(im), "image/png"))
                                         for i, im in enumerate(images)])
        assert r.status_code == 200, r.text
        assert [len(p["detections"]) for p in r.json()["predictions"]] == counts
        stats = c.get("/admin/stats", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert stats["task"] == "detection" and stats["shadow"]["measure"].startswith("matched-box F1")
    objects = stats["variants"]["champion"]["objects"]
    assert objects["images"] == 3 and objects["total"] == sum(counts)
    assert objects["per_image"] == {str(k): counts.count(k) for k in set(counts)}
    assert objects["classes"] == {c: sum(e["classes"].count(c) for e in expected)
                                  for c in {c for e in expected for c in e["classes"]}}
    assert sorted(objects["score_samples"]) == pytest.approx(sorted(s for e in expected for s in e["scores"]), abs=1e-5)
    logged = read_log(tmp_path / "requests")
    assert len(logged) == 3 and [len(o["scores"]) for o in logged["objects"]] == counts
    assert all(0.0 < a <= 1.0 for o in logged["objects"] for a in o["areas"])
