"""The model card: every section, evaluation read from the evaluate stage's files, limitations listed."""

from __future__ import annotations

import json

import pandas as pd

from cvplatform.export.model_card import (
    SECTIONS,
    Evaluation,
    ModelCardInputs,
    read_evaluation,
    render_model_card,
)
from cvplatform.tasks.classification import ClassificationTask

EXPORT = {
    "arch": "small_cnn", "arch_kwargs": {"width": 4}, "class_names": ["cat", "dog"], "precision": "fp32",
    "artifact": "artifacts/export/model.onnx", "sha256": "ab" * 32, "size_bytes": 2048, "opset": 17,
    "contract": {"input_size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "linear"},
    "int8_rejected_reason": "scenario 'clean' (must_pass, 10 images): drop +0.0300 > export.int8.max_drop +0.0100",
    "parity": {"n": 10, "split": "test", "max_abs_diff": 1e-7, "atol": 1e-4, "top1_agreement": 1.0,
               "min_agreement": 0.999, "passed": True},
    "int8": {"enabled": True, "calibration_images": 8, "calibration_split": "train",
             "decision": {"accepted": False, "max_drop": 0.01, "scenarios": [
                 {"name": "clean", "level": "must_pass", "n": 10, "reference_accuracy": 0.9,
                  "candidate_accuracy": 0.87, "drop": 0.03, "agreement": 0.97, "judged": True},
                 {"name": "fog_s1", "level": "warn", "n": 10, "reference_accuracy": 0.8,
                  "candidate_accuracy": 0.8, "drop": 0.0, "agreement": 1.0, "judged": False}]}},
    "benchmark": None,
}
EVAL_SUMMARY = {
    "model": "/p/artifacts/train/best.ckpt", "suite": "configs/scenarios/default.yaml", "split": "test",
    "n_images": 10, "passed": False, "pass_rate": 0.5, "mce": 1.5, "failures": ["x"], "warnings": ["y"],
    "champion": None, "champion_note": "registered model 'cvplatform' does not exist",
    "scenarios": [
        {"name": "clean", "kind": "clean", "level": "must_pass", "n": 10, "accuracy": 0.9,
         "accuracy_ci": [0.7, 1.0], "macro_f1": 0.88, "macro_f1_ci": [0.6, 1.0], "ece": 0.05, "status": "passed"},
        {"name": "fog_s1", "kind": "corruption", "level": "warn", "n": 10, "accuracy": 0.5,
         "accuracy_ci": [0.2, 0.8], "macro_f1": 0.4, "macro_f1_ci": [0.1, 0.7], "ece": 0.2, "status": "warned"},
    ],
}
GATES = {"policy": {"confidence": 0.95}, "checks": [
    {"name": "min_accuracy", "scenario": "fog_s1", "status": "failed", "level": "warn",
     "reason": "accuracy 0.5000 < floor 0.6000"},
    {"name": "min_accuracy", "scenario": "clean", "status": "passed", "level": "must_pass", "reason": "ok"},
    {"name": "pass_rate", "scenario": "*", "status": "failed", "level": "must_pass",
     "reason": "1/2 must-pass scenarios pass"},
]}


def _manifest() -> pd.DataFrame:
    rows = [{"label": lab, "split": sp, "source": src}
            for lab, sp, src, k in (("cat", "train", "digits", 3), ("cat", "test", "s3://b/x", 1),
                                    ("dog", "train", "digits", 2), ("dog", "val", "digits", 1))
            for _ in range(k)]
    return pd.DataFrame(rows)


def test_card_has_every_section_in_order_with_evaluation_and_limitations():
    card = render_model_card(ModelCardInputs(
        export=EXPORT, intended_use="Sorting cats from dogs.", manifest=_manifest(),
        manifest_path="data/processed/manifest.parquet",
        evaluation=Evaluation(EVAL_SUMMARY, GATES), lineage={"git_commit": "abc123", "data_hash": "md5x",
                                                             "params_hash": "ph", "train_run_id": "run9"}))
    positions = [card.index(f"\n## {s}\n") for s in SECTIONS]
    assert positions == sorted(positions)
    assert "Sorting cats from dogs." in card
    assert "| `cat` | 3 | 0 | 1 | 4 |" in card and "| `dog` | 2 | 1 | 0 | 3 |" in card  # class x split
    assert "| `s3://b/x` | 0 | 0 | 1 | 1 |" in card  # per source
    assert "[0.700, 1.000]" in card and f"95% intervals: {ClassificationTask.interval_note}" in card
    limits = card.split("## Known limitations")[1].split("\n## ")[0]
    assert "`fog_s1` — warning `min_accuracy`" in limits and "must-pass check FAILED `pass_rate`" in limits
    assert "INT8 was not shipped" in limits
    export_sec = card.split("## Export and quantization")[1].split("\n## ")[0]
    assert "| `clean` | must_pass | 10 | 0.900 | 0.870 | 0.0300 |" in export_sec
    assert "`fog_s1`" not in export_sec and "other 1 scenario(s)" in export_sec  # unchanged rows summarised
    assert "Not measured" in card.split("## Latency and cost")[1]
    lineage = card.split("## Lineage")[1]
    assert "`abc123`" in lineage and "`md5x`" in lineage and "`ph`" in lineage and "`run9`" in lineage


def test_missing_or_foreign_evaluation_is_said_not_hidden(tmp_path):
    ev = read_evaluation(tmp_path / "evaluate", tmp_path / "best.ckpt")
    assert ev.summary is None and "cvplatform evaluate" in ev.note
    card = render_model_card(ModelCardInputs(export=EXPORT, intended_use="x", evaluation=ev))
    assert all(f"## {s}" in card for s in SECTIONS)
    assert "Not available" in card.split("## Evaluation")[1]

    d = tmp_path / "evaluate"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps(EVAL_SUMMARY))
    (d / "gate_report.json").write_text(json.dumps(GATES))
    ev = read_evaluation(d, tmp_path / "best.ckpt")
    assert ev.summary["n_images"] == 10 and ev.gate_report["checks"]
    assert "not the exported checkpoint" in ev.note
    assert read_evaluation(d, "/p/artifacts/train/best.ckpt").note == ""


def test_int8_slower_than_fp32_is_reported_as_a_limitation():
    from cvplatform.export.model_card import int8_speed_note

    slow = {**EXPORT, "chosen": "int8", "int8_rejected_reason": None, "benchmark": {
        "speedups": {"int8_vs_fp32_batch1": 0.6, "int8_vs_fp32_batched": 0.9}, "runtimes": {}}}
    assert "0.60x at batch 1" in int8_speed_note(slow)
    card = render_model_card(ModelCardInputs(export=slow, intended_use="x"))
    assert "ran slower than fp32" in card.split("## Known limitations")[1].split("\n## ")[0]
    fast = {**slow, "benchmark": {"speedups": {"int8_vs_fp32_batch1": 0.9, "int8_vs_fp32_batched": 1.8}}}
    assert int8_speed_note(fast) is None
    assert int8_speed_note({**slow, "chosen": "fp32"}) is None


def test_same_model_file_survives_a_moved_project(tmp_path):
    from cvplatform.export.run import same_model_file

    f = tmp_path / "artifacts" / "train" / "best.ckpt"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"x")
    assert same_model_file(f, tmp_path / "artifacts" / "train" / ".." / "train" / "best.ckpt")
    assert same_model_file("/old/root/artifacts/train/best.ckpt", f)
    assert not same_model_file("/old/root/artifacts/train/last.ckpt", f)
    assert not same_model_file("/old/root/elsewhere/best.ckpt", tmp_path / "elsewhere" / "best.ckpt")


def test_model_details_come_from_the_task():
    card = render_model_card(ModelCardInputs(export=EXPORT, intended_use="x", evaluation=Evaluation(EVAL_SUMMARY, GATES)))
    details = card.split("## Model details")[1].split("\n## ")[0]
    assert "- **task**: classification; **2 classes**: `cat`, `dog`" in details
    assert "- **clean**: accuracy 0.9000, macro-F1 0.8800, ECE 0.0500" in details
    assert "output(s) `logits`, decoded by the `classification` task" in details
    assert "softmax" not in card

    class Boxes(ClassificationTask):
        name = "boxes"

        @property
        def output_names(self) -> tuple[str, ...]:
            return ("boxes", "scores")

        def summary_lines(self, scenarios, class_names):
            return [f"- **task**: boxes over {len(class_names)} classes; clean n={scenarios['clean']['n']}"]

    card = render_model_card(ModelCardInputs(export=EXPORT, intended_use="x", evaluation=Evaluation(EVAL_SUMMARY, GATES),
                                             task=Boxes()))
    details = card.split("## Model details")[1].split("\n## ")[0]
    assert "- **task**: boxes over 2 classes; clean n=10" in details and "macro-F1" not in details
    assert "output(s) `boxes`, `scores`, decoded by the `boxes` task" in details


def test_the_card_states_the_resize_a_letterbox_model_needs():
    card = render_model_card(ModelCardInputs(export=EXPORT, intended_use="x"))
    assert "resize (linear) to the input size" in card  # a contract without `resize` is a stretch
    lb = {**EXPORT, "contract": {**EXPORT["contract"], "resize": "letterbox", "pad_value": 114}}
    card = render_model_card(ModelCardInputs(export=lb, intended_use="x"))
    assert "letterbox (linear) to the input size: aspect ratio kept, centred, padded with grey 114" in card
