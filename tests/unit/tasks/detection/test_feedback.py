"""Labelled feedback for detectors: a request's true boxes (``X-True-Boxes``, ``DetectionTask.parse_truth``), the
records each variant keeps (``task.feedback``: true and served boxes in the request image's pixels, capped by
``stats.feedback_kept`` and merged across worker processes), their COCO mAP50 (``task.feedback_summary``) and the
canary's ``feedback_map50`` check; the real server records them, reports them in ``/admin/stats`` and refuses a bad
header with a 422 naming it; the replay client sends each image's boxes from the annotation table."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from cvplatform.deploy.analysis import analyze_step, check_feedback_map50, load_canary_policy
from cvplatform.preprocess import PreprocessContract
from cvplatform.serving.metrics import StatsBook
from cvplatform.tasks import get_task
from tests.fixtures.serving_models import colour_image, encode_png

REPO = Path(__file__).resolve().parents[4]
TOKEN = "unit-tests-admin-token-0123456789abcdef"
NAMES = ["circle", "square"]
#: The true objects of every image, in the pixels of a 64 (high) x 128 (wide) request image.
TRUTH = [[8.0, 4.0, 40.0, 20.0, "circle"], [64.0, 32.0, 120.0, 60.0, "square"], [80.0, 2.0, 120.0, 20.0, "circle"]]
CONTRACT = PreprocessContract((32, 32), (0.5,) * 3, (0.5,) * 3, tuple(NAMES))  # a stretch: x / 4, y / 2


def _outputs(n: int, scores: list[float]) -> dict[str, np.ndarray]:
    """Raw outputs (model-input pixels) of ``n`` images: the three true objects 1 px off, with ``scores``, plus two
    low-scoring boxes elsewhere."""
    boxes = [[b[0] / 4 + 0.25, b[1] / 2 - 0.5, b[2] / 4 + 0.25, b[3] / 2 - 0.5] for b in TRUTH]
    boxes += [[1, 28, 4, 31], [28, 28, 31, 31]]
    labels = [NAMES.index(str(b[4])) for b in TRUTH] + [0, 1]
    return {"boxes": np.asarray([boxes] * n, np.float32), "scores": np.asarray([[*scores, 0.05, 0.05]] * n, np.float32),
            "labels": np.asarray([labels] * n, np.int64)}


def _records(scores: list[float], n: int = 40) -> list[dict]:
    task = get_task("detection")
    truth = task.parse_truth(json.dumps([TRUTH] * n), n, "X-True-Boxes", NAMES)
    return task.feedback(_outputs(n, scores), NAMES, truth, CONTRACT, [(64, 128)] * n)


GOOD = [0.9, 0.8, 0.7]
MISSING = [0.9, 0.2, 0.1]  # two of the three objects score under the serving threshold (0.3): never answered


def _stats(champion: list[dict], canary: list[dict]) -> dict:
    """An ``/admin/stats`` snapshot as the server builds it: the records kept by a real ``StatsBook`` (the champion
    answers, the canary shadows the same requests) and each variant's ``task.feedback_summary``."""
    task = get_task("detection")
    book = StatsBook(window=100, bins=10, feedback_kept=500)
    for i, (a, b) in enumerate(zip(champion, canary, strict=True)):
        book.record_answer("champion", "1", ["circle"], [0.9], None, 1.0, 1.0, feedback=[a])
        book.record_shadow("canary", "2", ["circle"], [0.9], None, 1.0, ["circle"], f"r{i}", [0.9], feedback=[b])
    out = book.snapshot()
    for variant, records in book.feedback_records().items():
        counts = out["variants"][variant].get("feedback") or {"seen": 0, "kept": 0}
        out["variants"][variant]["feedback"] = {**counts, **task.feedback_summary(records)}
    out["task"] = "detection"
    return out


def test_feedback_records_are_the_true_and_served_boxes_in_the_request_images_pixels():
    rec = _records(GOOD, n=1)[0]
    assert rec["truth"] == TRUTH
    # the served boxes (score >= 0.3 only), moved from the 32x32 input back to the 64x128 image: 1 px off in x by 4
    assert [p[4:] for p in rec["pred"]] == [["circle", 0.9], ["square", 0.8], ["circle", 0.7]]
    np.testing.assert_allclose([p[:4] for p in rec["pred"]], [[b[0] + 1, b[1] - 1, b[2] + 1, b[3] - 1] for b in TRUTH])
    assert len(_records(MISSING, n=1)[0]["pred"]) == 1


def test_feedback_summary_is_the_coco_map50_of_the_served_boxes():
    task = get_task("detection")
    good = task.feedback_summary(_records(GOOD))
    assert good == {"images": 40, "objects": 120, "detections": 120, "map50": pytest.approx(1.0), "map": good["map"]}
    # circle: one of its two objects found per image (AP 0.5); square: none (AP 0) -> mAP50 0.25
    missing = task.feedback_summary(_records(MISSING))
    assert missing["map50"] == pytest.approx(0.25, abs=0.01) and missing["detections"] == 40
    assert task.feedback_summary([{"truth": [], "pred": [[0, 0, 5, 5, "circle", 0.9]]}])["map50"] is None


def test_the_canary_fails_a_detector_that_misses_objects_and_passes_a_good_one():
    policy = load_canary_policy(REPO / "configs" / "deploy" / "canary.yaml", ["thresholds.min_labelled=20"])
    th = policy.thresholds
    bad = analyze_step(_stats(_records(GOOD), _records(MISSING)), th)
    check = bad.check("feedback_map50")
    assert check.status == "fail" and check.value == pytest.approx(0.75, abs=0.01), check
    assert "canary 0.25" in check.detail and "champion 1.000" in check.detail and "40 images" in check.detail
    assert "feedback_map50" in bad.failed
    # one class per image does not apply to boxes: skipped, saying which check judges instead
    accuracy = bad.check("accuracy")
    assert accuracy.status == "skip" and "feedback_map50" in accuracy.detail
    good = analyze_step(_stats(_records(GOOD), _records(GOOD)), th).check("feedback_map50")
    assert good.status == "pass" and good.value == pytest.approx(0.0, abs=1e-6), good
    # the threshold is the policy's: a drop within max_map_drop passes
    assert th.max_map_drop == 0.05
    slight = _stats(_records(GOOD), _records(GOOD))
    slight["variants"]["canary"]["feedback"]["map50"] = 0.96
    assert check_feedback_map50(slight["variants"]["canary"], slight["variants"]["champion"], th).status == "pass"


def test_too_few_labelled_images_skip_the_check():
    th = load_canary_policy(REPO / "configs" / "deploy" / "canary.yaml").thresholds  # min_labelled 50 > 40 images
    check = analyze_step(_stats(_records(GOOD), _records(MISSING)), th).check("feedback_map50")
    assert check.status == "skip" and "too few labelled images" in check.detail and "X-True-Boxes" in check.detail
    # a detection server that saw no labelled request still lists the check (skipped), and no accuracy
    empty = _stats([], [])
    assert empty["variants"]["canary"]["feedback"]["images"] == 0
    res = analyze_step(empty, th)
    assert res.check("feedback_map50").status == "skip" and res.check("accuracy").status == "skip"


def test_a_classification_snapshot_keeps_the_accuracy_check_and_has_no_feedback_check():
    stats = {"variants": {"champion": {"labelled": 100, "correct": 95}, "canary": {"labelled": 100, "correct": 60}},
             "task": "classification"}
    res = analyze_step(stats, load_canary_policy(REPO / "configs" / "deploy" / "canary.yaml").thresholds)
    assert res.check("feedback_map50") is None and res.check("accuracy").status == "fail"


def test_kept_records_are_capped_per_worker_and_merged_across_workers():
    records = _records(GOOD, n=30)
    books = [StatsBook(window=100, bins=10, feedback_kept=10) for _ in range(2)]
    for k, book in enumerate(books):
        for i, rec in enumerate(records):
            book.record_answer("canary", "2", ["circle"], [0.9], None, 1.0, 1.0, feedback=[rec])
            if k == 0 and i < 5:
                book.record_answer("champion", "1", ["circle"], [0.9], None, 1.0, 1.0, feedback=[rec])
    assert len(books[0].feedback_records()["canary"]) == 10  # the last 10 of 30 (bounded memory)
    assert books[0].snapshot()["variants"]["canary"]["feedback"] == {"seen": 30, "kept": 10}
    merged = StatsBook.merged([json.loads(json.dumps(b.export())) for b in books], 100, 10, 50, feedback_kept=10)
    assert len(merged.feedback_records()["canary"]) == 20 and len(merged.feedback_records()["champion"]) == 5
    snap = merged.snapshot()["variants"]
    assert snap["canary"]["feedback"] == {"seen": 60, "kept": 20} and snap["champion"]["feedback"]["seen"] == 5
    # labelled feedback of boxes is not counted as one-class-per-image accuracy
    assert snap["canary"]["labelled"] == 0 and snap["canary"]["accuracy"] is None


@pytest.mark.parametrize(("value", "n", "says"), [
    ("not json", 1, "not JSON"),
    ('{"boxes": []}', 1, "got a JSON dict"),
    ('[[1, 2, 3, 4]]', 1, "cannot read 1 item(s) as the boxes of 1 image(s)"),
    ('[[1, 2, 11, 12, "circle"]]', 2, "cannot read 1 item(s) as the boxes of 2 image(s)"),
    ('[[10, 2, 1, 12, "circle"]]', 1, "zero size"),
    ('[["1", 2, 11, 12, "circle"]]', 1, "coordinates must be numbers"),
    ('[[1, 2, NaN, 12, "circle"]]', 1, "not finite"),
    ('[[1, 2, 1' + "0" * 400 + ', 12, "circle"]]', 1, "not finite"),
    ("[" * 50000 + "]" * 50000, 1, "nested too deeply"),
    ("[[" + "[" * 900 + "]" * 900 + "]]", 1, "is not [x0, y0, x1, y1"),
    ('[[1, 2, 11, 12, "dog"]]', 1, "class 'dog' is not one of the model's classes"),
    ('[[1, 2, 11, 12, ""]]', 1, "non-empty name"),
    (json.dumps([[0, 0, 5, 5, "circle"]] * 1001), 1, "at most 1000 per request"),
])
def test_bad_true_boxes_are_refused_naming_the_header_and_the_format(value, n, says):
    with pytest.raises(ValueError) as err:
        get_task("detection").parse_truth(value, n, "X-True-Boxes", NAMES)
    assert str(err.value).startswith("X-True-Boxes") and says in str(err.value), str(err.value)


def test_the_server_records_labelled_boxes_and_refuses_bad_ones(tmp_path, make_params, detection_onnx):
    """The real server of an exported detector: a request with the image's true boxes is scored (its served boxes as
    the truth: mAP50 1.0; boxes it never answers: lower); ``/admin/stats`` carries the champion's ``feedback``; a bad
    ``X-True-Boxes`` or an ``X-True-Label`` is a 422 naming the header, and nothing of it is recorded."""
    from fastapi.testclient import TestClient

    from cvplatform.serving.app import build_app

    serving_yaml = tmp_path / "serving.yaml"
    serving_yaml.write_text("models:\n  poll_interval_s: 0\n")
    params = make_params("project.task=detection", "train.monitor=val_map", "train.mode=max",
                         "monitor.log_requests=false")
    app = build_app(params, root=tmp_path, model=detection_onnx.path, config_path=serving_yaml, admin_token=TOKEN)
    admin = {"Authorization": f"Bearer {TOKEN}"}
    images = [encode_png(colour_image(i, seed=i)) for i in range(3)]

    def predict(png: bytes, headers: dict[str, str] | None = None):
        return c.post("/v1/predict", files=[("files", ("x.png", png, "image/png"))], headers=headers or {})

    with TestClient(app) as c:
        served = [predict(png).json()["predictions"][0]["detections"] for png in images]
        assert sum(len(s) for s in served) > 0
        stats = c.get("/admin/stats", headers=admin).json()
        assert stats["variants"]["champion"]["feedback"] == {"seen": 0, "kept": 0, "images": 0, "objects": 0,
                                                             "detections": 0, "map50": None, "map": None}
        for png, dets in zip(images, served, strict=True):
            truth = json.dumps([[*d["box"], d["class"]] for d in dets])
            r = predict(png, {"X-True-Boxes": truth})
            assert r.status_code == 200, r.text
        fb = c.get("/admin/stats", headers=admin).json()["variants"]["champion"]["feedback"]
        n_obj = sum(len(s) for s in served)
        assert fb["seen"] == fb["kept"] == fb["images"] == 3 and fb["objects"] == fb["detections"] == n_obj
        assert fb["map50"] == pytest.approx(1.0)
        # the controller's polls between analyses skip the COCO evaluation: the counts only
        light = c.get("/admin/stats?feedback=false", headers=admin).json()["variants"]["champion"]["feedback"]
        assert light == {"seen": 3, "kept": 3}
        # OIP v2 takes the same header (one list per image of the request)
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                            "data": [base64.b64encode(png).decode() for png in images[:2]]}]}
        truth = json.dumps([[[*d["box"], d["class"]] for d in dets] for dets in served[:2]])
        r = c.post("/v2/models/cvplatform/infer", json=body, headers={"X-True-Boxes": truth})
        assert r.status_code == 200, r.text
        fb = c.get("/admin/stats", headers=admin).json()["variants"]["champion"]["feedback"]
        assert fb["images"] == 5 and fb["map50"] == pytest.approx(1.0)
        n_obj += sum(len(s) for s in served[:2])
        # an object the detector does not answer (a square where it answers nothing): mAP50 falls
        r = predict(images[0], {"X-True-Boxes": json.dumps([[0, 0, 2, 2, "square"]])})
        assert r.status_code == 200, r.text
        fb = c.get("/admin/stats", headers=admin).json()["variants"]["champion"]["feedback"]
        assert fb["images"] == 6 and fb["objects"] == n_obj + 1 and fb["map50"] < 1.0

        bad = [({"X-True-Boxes": "[[1, 2, 3]]"}, "X-True-Boxes"),
               ({"X-True-Boxes": '[[1, 2, 11, 12, "dog"]]'}, "not one of the model's classes"),
               ({"X-True-Boxes": json.dumps([[[1, 2, 11, 12, "circle"]], []])}, "boxes of 1 image(s)"),
               ({"X-True-Label": "circle"}, "send the true answer in X-True-Boxes")]
        for headers, says in bad:
            r = predict(images[0], headers)
            assert r.status_code == 422, (headers, r.text)
            body = r.json()
            assert body["error"] in ("invalid_true_boxes", "invalid_label_header") and says in body["detail"], body
            assert "x0, y0, x1, y1" in body["detail"] or "zero size" in body["detail"] or "classes" in body["detail"]
        stats = c.get("/admin/stats", headers=admin).json()
        assert stats["variants"]["champion"]["feedback"]["seen"] == 6  # refused requests recorded nothing
        assert stats["variants"]["champion"]["labelled"] == 0  # boxes are not one class per image
        doc = c.get("/openapi.json").json()
        headers = [p["name"] for p in doc["paths"]["/v1/predict"]["post"]["parameters"] if p["in"] == "header"]
        assert "X-True-Boxes" in headers and "X-True-Label" not in headers


def test_the_replay_client_sends_each_images_true_boxes(tmp_path):
    """``load_items`` of a detection project: each image (and its corrupted copy) carries its boxes from the
    annotation table as an ``X-True-Boxes`` value the server accepts."""
    import pandas as pd

    from cvplatform.serving.replay import load_items
    from tests.fixtures.detection_project import CLASSES, ingest_detection_project

    root = ingest_detection_project(tmp_path / "p", count=12, size=48, input_size=32)
    items = load_items("data/processed/manifest.parquet", split="train", root=root, corrupt=0.5)
    table = pd.read_parquet(root / "data" / "processed" / "annotations.parquet")
    assert items and any(it.corruption for it in items)
    task = get_task("detection")
    for it in items:
        assert it.truth_header == "X-True-Boxes" and it.truth is not None
        rows = table[table["sha256"] == it.id.split(":")[0]]
        want = [[*(round(float(v), 2) for v in r[["x0", "y0", "x1", "y1"]]), r["class"]] for _, r in rows.iterrows()
                if not bool(r.get("iscrowd", False))]
        assert json.loads(it.truth) == want
        parsed = task.parse_truth(it.truth, 1, "X-True-Boxes", list(CLASSES))
        assert len(parsed[0]["boxes"]) == len(want)
