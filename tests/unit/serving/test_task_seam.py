"""Serving is task-agnostic: a server built for another registered task answers with that task's decoding.

The task here is classification with three changes a different task would make: its response item
has an extra field, its headline class (``decode_top``) is named differently, and it offers an extra
OIP output. Every one must show up in what the server returns and records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from cvplatform.serving.app import build_app, create_app
from cvplatform.serving.models import FileSource
from cvplatform.serving.schemas import ServingConfig
from cvplatform.tasks import get_task, register_task, unregister_task
from cvplatform.tasks.classification import ClassificationTask, softmax
from tests.fixtures.serving_models import build_model, colour_image, encode_png

TOKEN = "unit-tests-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


class TaggedTask(ClassificationTask):
    name = "tagged"

    def response(self, prediction: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
        return {**super().response(prediction, class_names), "runner_up": class_names[int(np.argsort(prediction["probs"])[-2])]}

    def decode_top(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        classes, conf = super().decode_top(outputs, class_names)
        return np.array([f"tagged-{c}" for c in classes], dtype=object), conf

    def tensor_output_specs(self, class_names: Sequence[str]) -> list[dict[str, Any]]:
        return [*super().tensor_output_specs(class_names), {"name": "logits", "datatype": "FP32", "shape": [-1, len(class_names)]}]

    def tensor_outputs(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str],
                       wanted: Sequence[str]) -> list[dict[str, Any]]:
        base = super().tensor_outputs(outputs, class_names, [w for w in wanted if w != "logits"])
        extra = {"name": "logits", "datatype": "FP32", "shape": list(outputs["logits"].shape),
                 "data": np.asarray(outputs["logits"], np.float64).ravel()}
        by_name = {o["name"]: o for o in [*base, extra]}
        return [by_name[w] for w in wanted]


@pytest.fixture
def tagged():
    register_task("tagged", TaggedTask)
    try:
        yield get_task("tagged")
    finally:
        unregister_task("tagged")


def _model(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(build_model().SerializeToString())
    return p


def test_a_server_for_another_task_uses_that_tasks_decoding(tmp_path, tagged, make_params):
    from fastapi.testclient import TestClient

    serving_yaml = tmp_path / "serving.yaml"
    serving_yaml.write_text("models:\n  poll_interval_s: 0\n")
    params = make_params("project.task=tagged", "monitor.log_requests=false")
    app = build_app(params, root=tmp_path, model=_model(tmp_path), config_path=serving_yaml, admin_token=TOKEN)
    assert app.state.cv.task is tagged and app.state.cv.manager.task is tagged
    images = [colour_image(i, seed=i) for i in range(3)]
    with TestClient(app) as c:
        r = c.post("/v1/predict", files=[("files", (f"{i}.png", encode_png(im), "image/png"))
                                         for i, im in enumerate(images)])
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        names = list(preds[0]["probabilities"])
        for p in preds:  # the task's own response item, plus the fields serving adds
            probs = [p["probabilities"][n] for n in names]
            assert p["runner_up"] == names[int(np.argsort(probs)[-2])] and p["runner_up"] != p["class"]
            assert p["model"] == "cvplatform" and p["version"] == "local" and p["variant"] == "champion"
        # statistics and the per-class Prometheus counter carry the task's decoded classes
        classes = c.get("/admin/stats", headers=ADMIN).json()["variants"]["champion"]["classes"]
        assert classes == {f"tagged-{p['class']}": 1 for p in preds}
        metrics = c.get("/metrics").text
        for p in preds:
            assert f'class="tagged-{p["class"]}"' in metrics
        assert 'class="red"' not in metrics
        # OIP v2: the task's outputs in metadata and inference
        meta = c.get("/v2/models/cvplatform").json()
        assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label", "logits"]
        import base64

        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3],
                            "data": [base64.b64encode(encode_png(im)).decode() for im in images]}]}
        out = c.post("/v2/models/cvplatform/infer", json=body).json()["outputs"]
        assert [o["name"] for o in out] == ["probabilities", "label", "logits"]
        logits = np.asarray(out[2]["data"]).reshape(out[2]["shape"])
        np.testing.assert_allclose(softmax(logits).ravel(), out[0]["data"], atol=1e-6)
        assert out[1]["data"] == [p["class"] for p in preds]
        r = c.post("/v2/models/cvplatform/infer", json={**body, "outputs": [{"name": "masks"}]})
        assert r.status_code == 400 and "['probabilities', 'label', 'logits']" in r.json()["detail"]


def test_create_app_defaults_to_classification(tmp_path):
    app = create_app(ServingConfig(), FileSource(_model(tmp_path), model_name="m"), admin_token=TOKEN)
    assert app.state.cv.task is get_task("classification")


def test_each_replica_logs_requests_to_its_own_files(tmp_path, make_params, monkeypatch):
    """Two `cvplatform serve` replicas of one project (make stack) never append to the same request-log file."""
    from fastapi.testclient import TestClient

    from cvplatform.serving.app import ENV_REPLICA

    serving_yaml = tmp_path / "serving.yaml"
    serving_yaml.write_text("models:\n  poll_interval_s: 0\n")
    params = make_params("monitor.log_requests=true")
    for replica in ("replica1", "replica2"):
        monkeypatch.setenv(ENV_REPLICA, replica)
        app = build_app(params, root=tmp_path, model=_model(tmp_path), config_path=serving_yaml, admin_token=TOKEN)
        with TestClient(app) as c:
            r = c.post("/v1/predict", files=[("files", ("0.png", encode_png(colour_image(0, seed=0)), "image/png"))])
            assert r.status_code == 200, r.text
    files = sorted(p.name for p in (tmp_path / params.monitor.log_dir).rglob("*.jsonl*"))
    assert [f for f in files if "replica1" in f] and [f for f in files if "replica2" in f], files
    assert all("replica1" in f or "replica2" in f for f in files), files
