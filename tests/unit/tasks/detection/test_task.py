"""DetectionTask: every method the stages call, on small fixtures with known numbers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cvplatform.errors import DataError, ModelError
from cvplatform.tasks import get_task, known_tasks
from cvplatform.tasks.detection import DetectionTask
from cvplatform.tasks.detection.annotations import Box, box_table

CLASSES = ["circle", "square"]
INDEX = {c: i for i, c in enumerate(CLASSES)}


def _outputs(per_image, k=4):
    """Raw graph outputs (boxes, scores, labels) padded to ``k`` peaks with zero-score boxes."""
    n = len(per_image)
    boxes, scores, labels = np.zeros((n, k, 4), np.float32), np.zeros((n, k), np.float32), np.zeros((n, k), np.int64)
    for i, dets in enumerate(per_image):
        for j, (b, s, c) in enumerate(dets):
            boxes[i, j], scores[i, j], labels[i, j] = b, s, c
    return {"boxes": boxes, "scores": scores, "labels": labels}


def _truth(*boxes_labels):
    return {"boxes": np.asarray([b for b, _ in boxes_labels], np.float32).reshape(-1, 4),
            "labels": np.asarray([c for _, c in boxes_labels], np.int64), "iscrowd": np.zeros(len(boxes_labels), bool)}


A, B, C = [2.0, 2.0, 12.0, 12.0], [20.0, 4.0, 30.0, 18.0], [5.0, 20.0, 15.0, 30.0]
TRUTH = [_truth((A, 0), (B, 1)), _truth((C, 0))]
PERFECT = _outputs([[(A, 0.9, 0), (B, 0.8, 1)], [(C, 0.7, 0)]])


# --------------------------------------------------------------------------- registry
def test_detection_is_registered_and_imports_torch_only_when_training():
    assert "detection" in known_tasks() and isinstance(get_task("detection"), DetectionTask)
    code = ("import sys; from cvplatform.tasks import get_task; t = get_task('detection'); "
            "t.decode_top({'boxes': __import__('numpy').zeros((1, 1, 4)), 'scores': __import__('numpy').ones((1, 1)),"
            " 'labels': __import__('numpy').zeros((1, 1), int)}, ['a']); print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert res.stdout.strip() == "False"


def test_monitor_metrics_and_gate_keys():
    t = DetectionTask()
    assert t.target_kind == "boxes" and t.monitor.default == "val_map" and t.monitor.mode("val_loss") == "min"
    assert [m.name for m in t.metrics if m.headline] == ["map", "map50"]
    assert t.metrics[1].gate_key == "min_map50" and t.int8_metric == "map50"
    assert t.output_names == ("boxes", "scores", "labels")


# --------------------------------------------------------------------------- targets from the annotation table
def _table(tmp_path, name="annotations.parquet"):
    table = box_table({"aaa": [Box("square", 20, 4, 30, 18), Box("circle", 2, 2, 12, 12, iscrowd=True)],
                       "bbb": [Box("circle", 5, 20, 15, 30)]})
    path = tmp_path / "data" / "processed" / name
    path.parent.mkdir(parents=True)
    table.to_parquet(path) if name.endswith(".parquet") else table.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("name", ["annotations.parquet", "annotations.csv"])
def test_target_of_reads_the_image_boxes_from_the_table_by_sha256(tmp_path, name):
    _table(tmp_path, name)
    row = {"path": "data/raw/x/aaa.png", "sha256": "aaa", "abs_path": str(tmp_path / "data/raw/x/aaa.png"),
           "annotations": f"data/processed/{name}"}
    t = DetectionTask().target_of(row, INDEX)
    order = np.argsort(t["boxes"][:, 0])  # the table is sorted by (y0, x0)
    np.testing.assert_array_equal(t["boxes"][order], np.array([A, B], np.float32))
    assert t["labels"][order].tolist() == [0, 1] and t["iscrowd"][order].tolist() == [True, False]
    assert t["boxes"].dtype == np.float32 and t["labels"].dtype == np.int64
    background = DetectionTask().target_of({**row, "sha256": "ccc"}, INDEX)
    assert background["boxes"].shape == (0, 4) and background["labels"].shape == (0,)


def test_target_of_resolves_a_relative_table_against_the_working_directory(tmp_path, monkeypatch):
    _table(tmp_path)
    monkeypatch.chdir(tmp_path)
    t = DetectionTask().target_of({"path": "x.png", "sha256": "bbb", "annotations": "data/processed/annotations.parquet"},
                                  INDEX)
    assert t["boxes"].tolist() == [C] and t["labels"].tolist() == [0]


def test_target_of_names_what_is_wrong(tmp_path):
    path = _table(tmp_path)
    t = DetectionTask()
    with pytest.raises(DataError, match="no 'annotations' value.*ingest"):
        t.target_of({"path": "a.png", "sha256": "aaa"}, INDEX)
    with pytest.raises(DataError, match="does not exist"):
        t.target_of({"path": "a.png", "sha256": "aaa", "annotations": str(tmp_path / "nope.parquet")}, INDEX)
    with pytest.raises(DataError, match=r"class\(es\) \['square'\].*\['circle'\]"):
        t.target_of({"path": "a.png", "sha256": "aaa", "annotations": str(path)}, {"circle": 0})
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"sha256": ["aaa"], "class": ["circle"], "x0": [5.0], "y0": [1.0], "x1": [5.0], "y1": [3.0]}).to_csv(bad)
    with pytest.raises(DataError, match=r"bad.csv: row 0 \(image aaa, class 'circle'\).*zero size"):
        t.target_of({"path": "a.png", "sha256": "aaa", "annotations": str(bad)}, INDEX)
    short = tmp_path / "short.csv"
    pd.DataFrame({"sha256": ["aaa"], "class": ["circle"]}).to_csv(short, index=False)
    with pytest.raises(DataError, match=r"lacks column\(s\) \['x0', 'y0', 'x1', 'y1'\]"):
        t.target_of({"path": "a.png", "sha256": "aaa", "annotations": str(short)}, INDEX)


def test_collate_stacks_images_and_keeps_variable_length_targets():
    import torch

    batch = [(torch.zeros(3, 16, 16), TRUTH[0]), (torch.ones(3, 16, 16), TRUTH[1])]
    images, targets = DetectionTask().collate(batch)
    assert tuple(images.shape) == (2, 3, 16, 16) and float(images[1].mean()) == 1.0
    assert isinstance(targets, list) and [len(t["boxes"]) for t in targets] == [2, 1]


def test_the_bbox_params_move_boxes_with_a_geometric_transform_and_drop_hidden_ones():
    import albumentations as A

    t = DetectionTask()
    image = np.zeros((40, 60, 3), np.uint8)
    flip = A.Compose([A.HorizontalFlip(p=1.0)], **t.albumentations_targets())
    out = flip(image=image, bboxes=[[10, 5, 20, 25]], labels=[1])
    np.testing.assert_allclose(np.asarray(out["bboxes"]), [[40, 5, 50, 25]])
    assert list(out["labels"]) == [1]
    # a crop keeping the left 30 px: box 1 fully inside, box 2 (x 25..45) keeps 25% of its area < min_visibility 0.3
    crop = A.Compose([A.Crop(0, 0, 30, 40)], **t.albumentations_targets())
    out = crop(image=image, bboxes=[[2, 2, 12, 12], [25, 2, 45, 12]], labels=[0, 1])
    np.testing.assert_allclose(np.asarray(out["bboxes"]), [[2, 2, 12, 12]])
    assert list(out["labels"]) == [0]


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
@pytest.mark.parametrize(("hw", "input_size"), [((50, 100), (32, 32)), ((91, 37), (32, 32)), ((37, 91), (24, 40)),
                                                ((120, 45), (40, 24)), ((64, 64), (32, 48))])
def test_to_image_pixels_undoes_the_training_resize(resize, hw, input_size):
    """A box on a non-square image goes through the recipe's fixed tail (as training moves it, with the task's
    bbox_params) to model-input pixels; ``to_image_pixels`` with the model's contract brings it back to the same
    image pixels (within 1 px; here to 1e-3)."""
    from cvplatform.data.augment import AugmentRecipe, build_pipeline
    from cvplatform.preprocess import PreprocessContract, resize_to_contract

    t = DetectionTask()
    (h, w), (ih, iw) = hw, input_size
    recipe = AugmentRecipe(input_size=input_size, resize=resize)
    contract = PreprocessContract(input_size, recipe.mean, recipe.std, tuple(CLASSES), resize=resize,
                                  pad_value=recipe.letterbox_fill if resize == "letterbox" else None)
    image = np.zeros((h, w, 3), np.uint8)
    boxes = np.array([[0.1 * w, 0.2 * h, 0.6 * w, 0.9 * h], [0.0, 0.0, w, h], [0.7 * w, 0.05 * h, 0.95 * w, 0.5 * h]])
    image[int(boxes[0, 1]):int(boxes[0, 3]), int(boxes[0, 0]):int(boxes[0, 2])] = 255
    out = build_pipeline(recipe, "eval", targets=t.albumentations_targets())(
        image=image, bboxes=boxes, labels=np.arange(len(boxes)))
    on_input = np.asarray(out["bboxes"], np.float64)
    assert on_input.shape == (3, 4) and (on_input[:, [0, 2]] <= iw + 1e-6).all() and (on_input[:, [1, 3]] <= ih + 1e-6).all()
    # what the model sees under the moved box is the object: the contract's pixels agree with the pipeline's
    x0, y0, x1, y1 = np.round(on_input[0]).astype(int)
    assert (resize_to_contract([image], contract)[0, y0 + 1:y1 - 1, x0 + 1:x1 - 1] == 255).all()
    pred = {"detections": [{"box": b.tolist(), "class": "circle", "score": 0.9} for b in on_input],
            "boxes": on_input.copy()}
    back = t.to_image_pixels(pred, contract, (h, w))
    np.testing.assert_allclose(back["boxes"], boxes, atol=1e-3)
    np.testing.assert_allclose([d["box"] for d in back["detections"]], boxes, atol=1e-3)
    assert back["detections"][0]["class"] == "circle" and back["detections"][0]["score"] == 0.9


def test_to_image_pixels_clips_a_box_on_the_letterbox_padding_to_the_image():
    from cvplatform.preprocess import PreprocessContract

    contract = PreprocessContract((32, 32), (0.5,) * 3, (0.5,) * 3, tuple(CLASSES), resize="letterbox")
    # a 50x100 image fills rows 8..24 of the input: a box over the top padding ends at the image's top edge
    pred = {"detections": [{"box": [4.0, 0.0, 12.0, 10.0], "class": "circle", "score": 0.5}],
            "boxes": np.array([[4.0, 0.0, 12.0, 10.0]])}
    back = DetectionTask().to_image_pixels(pred, contract, (50, 100))
    np.testing.assert_allclose(back["boxes"], [[12.5, 0.0, 37.5, 6.25]])
    assert back["detections"][0]["box"] == [12.5, 0.0, 37.5, 6.25]


# --------------------------------------------------------------------------- contract
def test_check_outputs_refuses_what_does_not_fit():
    t = DetectionTask()
    t.check_outputs(PERFECT, CLASSES)
    with pytest.raises(ModelError, match=r"lacks output\(s\) \['labels'\]"):
        t.check_outputs({"boxes": PERFECT["boxes"], "scores": PERFECT["scores"]}, CLASSES)
    with pytest.raises(ModelError, match="expected boxes"):
        t.check_outputs({**PERFECT, "scores": PERFECT["scores"][:, :2]}, CLASSES)
    with pytest.raises(ModelError, match=r"integers in \[0, 0\]"):
        t.check_outputs(PERFECT, ["circle"])


def test_decode_gives_the_boxes_above_the_threshold_without_duplicates():
    out = _outputs([[(A, 0.9, 0), ([2.5, 2, 12, 12.5], 0.85, 0), (B, 0.2, 1), (A, 0.6, 1)], []])
    d = DetectionTask().decode(out, CLASSES)
    assert len(d) == 2 and d[1]["detections"] == []
    assert d[0]["detections"] == [{"box": A, "class": "circle", "score": pytest.approx(0.9)},
                                  {"box": A, "class": "square", "score": pytest.approx(0.6)}]
    resp = DetectionTask().response(d[0], CLASSES)
    assert [x["class"] for x in resp["detections"]] == ["circle", "square"] and resp["detections"][0]["box"] == A
    assert DetectionTask().prediction_signal(d[0]) == {"boxes": 2.0, "mean_score": pytest.approx(0.75)}
    assert DetectionTask().prediction_signal(d[1]) == {"boxes": 0.0, "mean_score": 0.0}


def test_agreement_is_the_f1_of_matched_boxes():
    t = DetectionTask()
    same = t.agreement(PERFECT, PERFECT)
    assert same.rate == 1.0 and same.n == 6 and same.max_abs_diff == 0.0 and same.detail["disagree_rows"] == []
    disjoint = _outputs([[([40, 40, 50, 50], 0.9, 0)], [([40, 0, 50, 8], 0.9, 1)]])
    assert t.agreement(PERFECT, disjoint).rate == 0.0
    # image 0 loses box B, image 1 predicts C as the wrong class: 1 match of 3 + 2 boxes -> F1 = 2 / 5
    partial = _outputs([[([2.5, 2, 12, 12], 0.9, 0)], [(C, 0.7, 1)]])
    a = t.agreement(PERFECT, partial)
    assert a.rate == pytest.approx(0.4) and a.detail["disagree_rows"] == [0, 1]
    assert a.max_abs_diff == pytest.approx(0.5)
    nothing = _outputs([[], []])
    assert t.agreement(nothing, nothing).rate == 1.0


# --------------------------------------------------------------------------- evaluation
def test_score_is_one_on_perfect_predictions_and_zero_on_wrong_classes():
    t = DetectionTask()
    s = t.score(PERFECT, np.asarray(TRUTH, dtype=object), CLASSES)
    assert s["map"] == pytest.approx(1.0) and s["map50"] == pytest.approx(1.0) and s["n"] == 2
    assert s["ap_per_class"] == {"circle": pytest.approx(1.0), "square": pytest.approx(1.0)}
    assert t.int8_score(PERFECT, TRUTH, CLASSES) == pytest.approx(1.0)
    swapped = {**PERFECT, "labels": 1 - PERFECT["labels"]}
    assert t.int8_score(swapped, TRUTH, CLASSES) == pytest.approx(0.0)
    # one box shifted to IoU 0.6 with its object: counts at IoU 0.5 but not at 0.75
    half = _outputs([[(A, 0.9, 0), ([20, 4, 30, 12.4], 0.8, 1)], [(C, 0.7, 0)]])
    s = t.score(half, TRUTH, CLASSES)
    assert s["map50"] == pytest.approx(1.0) and s["map75"] == pytest.approx(0.5)


def test_evaluate_scenario_follows_the_result_protocol():
    t = DetectionTask()
    res = t.evaluate_scenario("clean", "clean", ["i0", "i1"], TRUTH, PERFECT, CLASSES, n_bootstrap=20, seed=1,
                              note="two images")
    assert res.n == 2 and res.image_ids == ["i0", "i1"] and res.note == "two images"
    assert set(res.values) == {m.name for m in t.metrics} == set(res.intervals)
    assert res.values["map"] == pytest.approx(1.0) and res.intervals["map50"] == pytest.approx((1.0, 1.0))
    assert res.values["map_large"] is None and res.intervals["map_large"] is None  # no object > 96² px
    assert res.operating_point["f1"] == pytest.approx(1.0)
    empty = t.evaluate_scenario("none", "slice", [], np.zeros(0), _outputs([]), CLASSES)
    assert empty.n == 0 and all(v is None for v in empty.values.values())
    assert t.summary_lines({"clean": {"map": 0.5, "map50": 0.75}}, CLASSES)[1].startswith("- **clean**: mAP 0.5000, mAP50 0.7500")


def test_paired_delta_compares_map50_on_the_same_images():
    t = DetectionTask()
    worse_out = _outputs([[(A, 0.9, 0)], [(C, 0.7, 1)]])  # misses B, C of the wrong class
    good = t.evaluate_scenario("clean", "clean", ["i0", "i1"], TRUTH, PERFECT, CLASSES, n_bootstrap=10)
    worse = t.evaluate_scenario("clean", "clean", ["i0", "i1"], TRUTH, worse_out, CLASSES, n_bootstrap=10)
    assert t.paired_delta(good, good, n_bootstrap=30) == (0.0, 0.0, 0.0)
    delta, lo, hi = t.paired_delta(good, worse, n_bootstrap=30, seed=3)
    assert delta == pytest.approx(1.0 - worse.values["map50"]) and delta > 0 and lo <= delta <= hi
    assert t.paired_metric == "mAP50"


def test_worst_images_and_report_tables():
    t = DetectionTask()
    out = _outputs([[(A, 0.9, 0), ([40, 40, 50, 50], 0.8, 1)], [(C, 0.7, 0)]])  # image 0: B missed, one false box
    res = t.evaluate_scenario("clean", "clean", ["i0", "i1"], TRUTH, out, CLASSES, n_bootstrap=5)
    assert t.worst_images(res, CLASSES, 5) == [(0, "2 objects", "2 boxes", 2.0)]
    tables = t.report_details(res, CLASSES, None)["tables"]
    assert tables[0][2] == [["circle", "1.0000"], ["square", "0.0000"]]


# --------------------------------------------------------------------------- serving
def test_decode_top_and_tensor_outputs():
    t = DetectionTask()
    out = _outputs([[(A, 0.9, 0), (B, 0.8, 1)], [(C, 0.1, 1)], [(C, 0.5, 1)]])
    classes, conf = t.decode_top(out, CLASSES)
    assert classes.tolist() == ["circle", "", "square"] and conf.tolist() == pytest.approx([0.9, 0.0, 0.5])
    assert [s["name"] for s in t.tensor_output_specs(CLASSES)] == ["boxes", "scores", "labels", "num_detections"]
    got = {o["name"]: o for o in t.tensor_outputs(out, CLASSES, ["boxes", "labels", "num_detections", "scores"])}
    assert got["boxes"]["shape"] == [3, 2, 4] and got["scores"]["shape"] == [3, 2]
    assert got["labels"]["data"] == ["circle", "square", "", "", "square", ""]
    assert got["num_detections"]["data"].tolist() == [2, 0, 1] and got["num_detections"]["datatype"] == "INT32"
    np.testing.assert_allclose(np.asarray(got["boxes"]["data"]).reshape(3, 2, 4)[2, 0], C)
    with pytest.raises(ModelError, match="no output 'logits'"):
        t.tensor_outputs(out, CLASSES, ["logits"])


def test_params_select_detection_with_its_monitored_metrics(make_params):
    from cvplatform.errors import ConfigError

    p = make_params("project.task=detection", "train.monitor=val_map50", "train.mode=max")
    assert p.project.task == "detection"
    with pytest.raises(ConfigError, match="val_acc.*detection.*val_map, val_map50, val_loss"):
        make_params("project.task=detection", "train.monitor=val_acc", "train.mode=max")


@pytest.mark.parametrize("missing", [None, float("nan"), pd.NA, "  "])
def test_a_row_without_a_table_is_a_data_error(missing):
    with pytest.raises(DataError, match="a.png: the manifest row has no 'annotations' value"):
        DetectionTask().target_of({"path": "a.png", "sha256": "aaa", "annotations": missing}, INDEX)


def test_a_detection_suite_gates_on_map_and_compares_the_champion(tmp_path):
    import yaml

    from cvplatform.errors import ConfigError
    from cvplatform.evaluation.gates import check_gates
    from cvplatform.evaluation.scenarios import load_suite

    t = DetectionTask()
    suite = {"name": "det", "min_pass_rate": 1.0, "scenarios": [
        {"name": "clean", "kind": "clean", "level": "must_pass", "min_map50": 0.9, "min_map": 0.5, "max_drop": 0.1}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite), encoding="utf-8")
    policy = load_suite(path, task=t).policy(n_bootstrap=20)
    worse_out = _outputs([[(A, 0.9, 0)], [(C, 0.7, 1)]])  # misses B, C of the wrong class: mAP50 about 0.25
    good = {"clean": t.evaluate_scenario("clean", "clean", ["i0", "i1"], TRUTH, PERFECT, CLASSES, n_bootstrap=20)}
    worse = {"clean": t.evaluate_scenario("clean", "clean", ["i0", "i1"], TRUTH, worse_out, CLASSES, n_bootstrap=20)}
    passed = check_gates(good, policy, worse, task=t)
    failed = check_gates(worse, policy, good, task=t)
    checks = {c.name: c for c in failed.checks}
    assert passed.passed and not failed.passed
    assert checks["min_map50"].status == "failed" and checks["min_map50"].value == pytest.approx(worse["clean"].values["map50"])
    assert checks["champion_regression"].status == "failed" and "mAP50 change vs champion" in checks["champion_regression"].reason
    path.write_text(yaml.safe_dump({**suite, "scenarios": [{**suite["scenarios"][0], "min_accuracy": 0.9}]}))
    with pytest.raises(ConfigError, match="min_accuracy: unknown key.*min_map50"):
        load_suite(path, task=t)


def test_corruption_summary_reports_mpc_and_rpc_with_the_champion():
    """mPC = mean mAP over every corruption and severity, rPC = mPC / clean mAP (Michaelis et al. 2019); the
    report says both, and the champion's mPC when it was evaluated on the same images."""
    from types import SimpleNamespace as R

    from cvplatform.evaluation.report import corruption_lines

    task = get_task("detection")
    corrupted = {("fog", 1): R(values={"map": 0.40, "map50": 0.7}), ("fog", 2): R(values={"map": 0.30, "map50": 0.6}),
                 ("jpeg", 1): R(values={"map": None, "map50": None})}
    champion = {("fog", 1): R(values={"map": 0.2}), ("fog", 2): R(values={"map": 0.1})}
    cs = task.corruption_summary(R(values={"map": 0.5, "map50": 0.8}), corrupted, champion, "models:/m@champion")
    assert cs["mpc"] == pytest.approx(0.35) and cs["rpc"] == pytest.approx(0.7)
    assert cs["champion_mpc"] == pytest.approx(0.15) and cs["mean_corrupted_map50"] == pytest.approx(0.65)
    first, second = corruption_lines(cs)
    assert "mPC 0.3500" in first and "rPC 0.700" in first and "champion mPC 0.1500" in first
    assert "map50 -0.1500" in second
    assert task.corruption_summary(R(values={"map": 0.0}), corrupted, None, None)["rpc"] is None


def test_a_suite_gates_on_rpc_and_refuses_robustness_keys_the_task_lacks(tmp_path):
    """``robustness: {min_rpc: ...}`` is a suite-wide must-pass check on the corruption summary; a classification
    suite (no robustness keys) and an unknown key are configuration errors naming the key."""
    import yaml

    from cvplatform.errors import ConfigError
    from cvplatform.evaluation.gates import check_gates
    from cvplatform.evaluation.scenarios import load_suite

    t = DetectionTask()
    suite = {"name": "det", "robustness": {"min_rpc": 0.6},
             "scenarios": [{"name": "clean", "kind": "clean", "level": "must_pass", "min_map50": 0.5}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite), encoding="utf-8")
    policy = load_suite(path, task=t).policy(n_bootstrap=20)
    good = {"clean": t.evaluate_scenario("clean", "clean", ["i0", "i1"], TRUTH, PERFECT, CLASSES, n_bootstrap=20)}
    robust = check_gates(good, policy, task=t, robustness={"mpc": 0.8, "rpc": 0.8})
    fragile = check_gates(good, policy, task=t, robustness={"mpc": 0.4, "rpc": 0.4})
    unmeasured = check_gates(good, policy, task=t, robustness={})
    assert robust.passed and not fragile.passed and not unmeasured.passed
    check = next(c for c in fragile.checks if c.name == "min_rpc")
    assert (check.scenario, check.level, check.value, check.threshold) == ("*", "must_pass", 0.4, 0.6)
    assert check.reason == "rpc 0.4000 < min_rpc 0.6"
    assert "not measured" in next(c for c in unmeasured.checks if c.name == "min_rpc").reason

    path.write_text(yaml.safe_dump({**suite, "robustness": {"min_rcp": 0.6}}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"robustness.min_rcp: unknown key; task 'detection' allows: min_rpc, min_mpc"):
        load_suite(path, task=t)
    cls_suite = {"robustness": {"min_rpc": 0.6}, "scenarios": [{"name": "clean", "kind": "clean"}]}
    path.write_text(yaml.safe_dump(cls_suite), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"robustness.min_rpc: unknown key; task 'classification' allows: none"):
        load_suite(path)


def test_recall_and_false_positive_gates_on_what_the_server_returns(tmp_path):
    """``min_recall`` (curated lists default to 1.0: every listed object found), ``min_critical_recall`` and
    ``max_fp_per_image`` per critical class, at the served score threshold."""
    import yaml

    from cvplatform.evaluation.gates import check_gates
    from cvplatform.evaluation.scenarios import load_suite

    t = DetectionTask()
    # image 0: A found, B (square) missed, a false square; image 1: C found, a false circle below the threshold
    out = _outputs([[(A, 0.9, 0), ([40.0, 40.0, 50.0, 50.0], 0.8, 1)], [(C, 0.7, 0), ([0.0, 0.0, 4.0, 4.0], 0.2, 0)]])
    res = t.evaluate_scenario("cur", "curated", ["i0", "i1"], TRUTH, out, CLASSES, n_bootstrap=10)
    assert t.served_counts(res) == {"circle": {"objects": 2, "found": 2, "false": 0},
                                    "square": {"objects": 1, "found": 0, "false": 1}}
    suite = {"critical_classes": ["square"], "scenarios": [
        {"name": "clean", "kind": "clean", "level": "must_pass", "min_critical_recall": 0.5, "max_fp_per_image": 0.25},
        {"name": "cur", "kind": "curated", "hashes_file": "x.txt", "level": "must_pass"}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite), encoding="utf-8")
    policy = load_suite(path, task=t).policy(n_bootstrap=10)
    assert policy.scenarios["cur"].thresholds() == {"min_recall": 1.0}  # the task's curated default
    report = check_gates({"clean": res, "cur": res}, policy, task=t)
    checks = {(c.scenario, c.name): c for c in report.checks}
    assert checks["cur", "min_recall"].status == "failed" and checks["cur", "min_recall"].value == pytest.approx(2 / 3)
    assert "(2/3 objects)" in checks["cur", "min_recall"].reason
    assert checks["clean", "min_critical_recall:square"].status == "failed"
    fp = checks["clean", "max_fp_per_image:square"]
    assert fp.status == "failed" and fp.value == pytest.approx(0.5) and "1 on 2 images" in fp.reason
    perfect = t.evaluate_scenario("clean", "clean", ["i0", "i1"], TRUTH, PERFECT, CLASSES, n_bootstrap=10)
    assert check_gates({"clean": perfect, "cur": perfect}, policy, task=t).passed


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_to_image_pixels_many_equals_one_image_at_a_time(resize):
    """A request's predictions moved at once (one mapping per image size) give what ``to_image_pixels`` gives for
    each image: the same ``boxes`` arrays and the same detections, also when the detections are not the
    arrays' boxes."""
    from cvplatform.preprocess import PreprocessContract, resize_geometry

    rng = np.random.default_rng(0)
    contract = PreprocessContract((32, 48), (0.5,) * 3, (0.5,) * 3, ("cat", "dog"), resize=resize)
    out = {"boxes": np.sort(rng.uniform(-4, 52, (6, 8, 4)), axis=-1).astype(np.float32),
           "scores": rng.random((6, 8)).astype(np.float32), "labels": rng.integers(0, 2, (6, 8))}
    t = DetectionTask()
    preds = t.decode(out, ["cat", "dog"], score_threshold=0.2)
    preds[1] = {**preds[1], "detections": [{**d, "box": [0.0, 0.0, 8.0, 8.0]} for d in preds[1]["detections"]]}
    sizes = [(64, 64), (100, 30), (64, 64), (7, 300), (64, 64), (100, 30)]
    many = t.to_image_pixels_many(preds, contract, sizes)
    assert len(many) == len(preds) and sum(len(p["boxes"]) for p in preds) > 10
    for got, p, size in zip(many, preds, sizes, strict=True):
        g = resize_geometry(size, contract)  # each image's own mapping, box by box
        want = [{**d, "box": g.to_image(np.asarray([d["box"]], np.float64))[0].tolist()} for d in p["detections"]]
        assert got["detections"] == want
        assert np.array_equal(got["boxes"], g.to_image(np.asarray(p["boxes"], np.float64)))
        assert got["boxes"].dtype == np.float64
        assert got == {**got, **t.to_image_pixels(p, contract, size), "boxes": got["boxes"]}


def test_per_class_ap_rpc_and_intended_use_reach_the_model_card_lines():
    from cvplatform.tasks import get_task
    from cvplatform.tasks.detection.task import DetectionResult

    task = get_task("detection")
    res = DetectionResult(name="clean", kind="clean", image_ids=[], truth=[], preds=[])
    res.ap_per_class = {"circle": 0.4, "square": None}
    per_class = task.per_class_metrics(res)
    assert per_class == {"ap": {"circle": 0.4, "square": None}}
    lines = task.summary_lines({"clean": {"map": 0.3, "map50": 0.6, "per_class": per_class},
                                "robustness": {"mpc": 0.2, "rpc": 0.7}}, ["circle", "square"])
    assert "- **AP per class** (clean, AP@[.5:.95]): `circle` 0.4000, `square` —" in lines
    assert any(line.startswith("- **robustness**: mPC 0.2000, rPC 0.700") for line in lines)
    assert task.intended_use.startswith("Object detection") and get_task("classification").intended_use.startswith(
        "Image classification")
    assert get_task("classification").per_class_metrics(res) == {}
