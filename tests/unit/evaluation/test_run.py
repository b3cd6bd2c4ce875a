"""The evaluate stage end to end on a tiny project: ONNX, checkpoint and registry models; gates; outputs; CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from cvplatform.config import load_params
from cvplatform.errors import ConfigError, DataError, GateFailed, ModelError
from cvplatform.evaluation.run import run_evaluate
from cvplatform.tasks.classification import softmax
from tests.fixtures.tiny_dataset import make_tiny_project

from .conftest import colour_model, contract, export_onnx, register_onnx

SUITE = {
    "name": "tiny",
    "defaults": {"max_drop": 0.05},
    "scenarios": [
        {"name": "clean", "kind": "clean", "level": "must_pass", "min_accuracy": 0.9, "min_macro_f1": 0.9,
         "max_ece": 0.5, "max_drop": 0.02},
        {"kind": "corruption", "corruption": "gaussian_noise", "severities": [1, 3]},
        {"kind": "corruption", "corruption": "rotation", "severities": [2]},
        {"name": "reds", "kind": "slice", "where": [{"column": "label", "value": "red"}], "level": "must_pass",
         "min_accuracy": 0.9},
    ],
}
OUTPUTS = ("report.md", "report.html", "metrics.json", "scenarios.json", "gate_report.json", "summary.json",
           "plots/scenarios.png", "plots/corruptions.png", "plots/confusion_clean.png", "plots/reliability_clean.png",
           "plots/scenarios.csv", "plots/corruptions.csv", "plots/reliability.csv", "plots/confusion.csv")


def make_project(tmp_path: Path, suite: dict | None = None, overrides=(), per_class: int = 10) -> Path:
    root = make_tiny_project(
        tmp_path / "project", per_class=per_class,
        overrides=["evaluate.suite=suite.yaml", "evaluate.bootstrap_samples=200", "evaluate.compare_champion=false",
                   "evaluate.gallery_size=3", *overrides],
    )
    (root / "suite.yaml").write_text(yaml.safe_dump(suite or SUITE, sort_keys=False))
    export_onnx(colour_model(), root / "models" / "perfect.onnx", contract(16))
    export_onnx(colour_model(perm=(1, 0, 2)), root / "models" / "swapped.onnx", contract(16))
    return root


def evaluate(root: Path, model: str | None = "models/perfect.onnx", *overrides: str):
    return run_evaluate(load_params(root / "params.yaml", list(overrides)), root=root, model=model)


def checks(root: Path) -> list[dict]:
    return json.loads((root / "artifacts/evaluate/gate_report.json").read_text())["checks"]


def test_onnx_model_end_to_end_writes_every_output(tmp_path):
    root = make_project(tmp_path)
    r = evaluate(root)
    assert r.passed and r.n_images == 6 and r.class_names == ["red", "green", "blue"]
    assert [s["name"] for s in r.scenarios] == ["clean", "gaussian_noise_s1", "gaussian_noise_s3", "rotation_s2", "reds"]
    assert r.predictions == 6 * 4 + 2
    out = root / "artifacts" / "evaluate"
    for rel in OUTPUTS:
        assert (out / rel).is_file(), rel
    headline = json.loads((out / "metrics.json").read_text())  # what `dvc metrics show` prints: numbers only
    assert headline == {"accuracy": 1.0, "f1": 1.0, "ece": pytest.approx(headline["ece"]), "corrupt_acc": 1.0}
    metrics = json.loads((out / "scenarios.json").read_text())
    assert metrics["clean"]["accuracy"] == 1.0 and metrics["gates_passed"] is True
    assert metrics["scenarios"]["reds"]["n"] == 2
    assert metrics["error_multiple_vs_clean"] == 0.0 and metrics["mean_degradation"] == 0.0  # no error anywhere
    assert metrics["mce"] is None  # mCE needs a reference model (the champion); there is none
    champion = [c for c in checks(root) if c["name"] == "champion"]
    assert champion[0]["status"] == "skipped" and "evaluate.compare_champion is false" in champion[0]["reason"]
    from cvplatform.utils.io import sha256_file

    gate = json.loads((out / "gate_report.json").read_text())
    assert gate["model_sha256"] == sha256_file(root / "models" / "perfect.onnx") == r.model_sha256
    assert gate["n_images"] == 6 and gate["class_names"] == ["red", "green", "blue"]
    md = (out / "report.md").read_text()
    assert "**Verdict: 🟢 PASSED" in md and "![accuracy per scenario](plots/scenarios.png)" in md
    assert "mCE: not available" in md and "Wilson" in md
    assert "<img src='plots/reliability_clean.png'" in (out / "report.html").read_text()
    assert len((out / "plots/scenarios.csv").read_text().strip().splitlines()) == 1 + 5
    assert len((out / "plots/confusion.csv").read_text().strip().splitlines()) == 1 + 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "evaluate" and summary["passed"] is True and summary["model"].endswith("perfect.onnx")
    assert "no training run id" in summary["mlflow_note"]
    text = "\n".join(r.lines())
    assert "gates: PASSED" in text and "gaussian_noise" in text
    assert not (root / "mlflow.db").exists()  # nothing touched MLflow


def test_reruns_are_identical(tmp_path):
    root = make_project(tmp_path)
    evaluate(root)
    first = {p: (root / "artifacts/evaluate" / p).read_bytes() for p in ("metrics.json", "gate_report.json",
                                                                         "plots/scenarios.csv", "report.md")}
    evaluate(root)
    for p, data in first.items():
        assert (root / "artifacts/evaluate" / p).read_bytes() == data, p


def test_failing_gate_writes_everything_then_raises(tmp_path):
    root = make_project(tmp_path)
    with pytest.raises(GateFailed) as info:
        evaluate(root, "models/swapped.onnx")
    msg = str(info.value)
    assert "evaluation gates failed for" in msg and "swapped.onnx" in msg
    assert "[FAIL] must_pass clean" in msg and "min_accuracy" in msg and "reds" in msg
    assert info.value.exit_code == 3
    result = info.value.result
    assert result.passed is False and result.failures
    out = root / "artifacts" / "evaluate"
    for rel in OUTPUTS:
        assert (out / rel).is_file(), rel
    assert json.loads((out / "summary.json").read_text())["passed"] is False
    md = (out / "report.md").read_text()
    assert "**Verdict: 🔴 FAILED" in md
    assert "| 🔴 failed | must_pass | clean | min_accuracy |" in md  # failed checks first, marked red
    html_report = (out / "report.html").read_text()
    assert "background:#ffebee" in html_report and "color:#c62828" in html_report
    # the gallery shows the most confident failures with thumbnails
    assert (out / "plots/gallery/clean.png").is_file()
    assert "Worst failures" in (out / "report.md").read_text()


def test_empty_slice_is_a_failed_check_not_a_silent_pass(tmp_path):
    suite = {**SUITE, "scenarios": [*SUITE["scenarios"],
                                    {"name": "purple", "kind": "slice", "level": "must_pass", "min_accuracy": 0.5,
                                     "where": [{"column": "label", "value": "purple"}]}]}
    root = make_project(tmp_path, suite)
    with pytest.raises(GateFailed, match=r"purple\s+images\s+scenario has no images \(slice matched no image"):
        evaluate(root)
    suite["scenarios"][-1]["level"] = "warn"
    (root / "suite.yaml").write_text(yaml.safe_dump(suite))
    r = evaluate(root)
    assert r.passed and any("purple" in w for w in r.warnings)
    assert next(s for s in r.scenarios if s["name"] == "purple")["status"] == "empty"


def test_slice_on_a_missing_column_names_scenario_and_key(tmp_path):
    suite = {**SUITE, "scenarios": [SUITE["scenarios"][0],
                                    {"name": "dim", "kind": "slice", "where": [{"column": "lighting", "value": "dim"}]}]}
    root = make_project(tmp_path, suite)
    with pytest.raises(ConfigError, match=r"suite.yaml: scenario 'dim' \(scenarios\[1\].where\[0\].column\): "
                                          r"column 'lighting' is not in the manifest"):
        evaluate(root)


def test_bad_suite_and_critical_classes_are_config_errors(tmp_path):
    root = make_project(tmp_path, {**SUITE, "critical_classes": ["zebra"]})
    with pytest.raises(ConfigError, match=r"critical_classes \['zebra'\] are not classes of the model"):
        evaluate(root)
    bad = {**SUITE, "scenarios": [*SUITE["scenarios"], {"kind": "corruption", "corruption": "snow"}]}
    (root / "suite.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"scenarios\[4\] \(snow\): .*unknown corruption 'snow'"):
        evaluate(root)


def test_curated_list_from_any_split(tmp_path):
    root = make_project(tmp_path)
    m = pd.read_parquet(root / "data/processed/manifest.parquet")
    picks = [m[(m.split == "test") & (m.label == "red")].sha256.iloc[0], m[m.split == "train"].sha256.iloc[0]]
    (root / "mnf.txt").write_text("# must not fail\n" + "\n".join(picks) + "\n")
    suite = {**SUITE, "scenarios": [*SUITE["scenarios"],
                                    {"name": "mnf", "kind": "curated", "hashes_file": "mnf.txt", "level": "must_pass"}]}
    (root / "suite.yaml").write_text(yaml.safe_dump(suite))
    r = evaluate(root)
    mnf = next(s for s in r.scenarios if s["name"] == "mnf")
    assert mnf["n"] == 2 and mnf["accuracy"] == 1.0 and mnf["status"] == "passed"
    floor = next(c for c in checks(root) if c["scenario"] == "mnf" and c["name"] == "min_accuracy")
    assert floor["threshold"] == 1.0
    with pytest.raises(GateFailed, match=r"mnf\s+min_accuracy"):
        evaluate(root, "models/swapped.onnx")  # the red image is now called green
    (root / "mnf.txt").write_text("f" * 64 + "\n")
    with pytest.raises(DataError, match=r"mnf.txt: scenario 'mnf': 1 listed image\(s\) are not in the manifest"):
        evaluate(root)


def test_split_and_max_images(tmp_path):
    root = make_project(tmp_path, {**SUITE, "scenarios": SUITE["scenarios"][:1]})
    r = evaluate(root, "models/perfect.onnx", "evaluate.split=val", "evaluate.max_images=4")
    assert r.split == "val" and r.n_images == 4
    export_onnx(colour_model(), root / "models" / "gb.onnx", contract(16, ("x", "green", "blue")))
    with pytest.raises(DataError, match=r"\(split 'test'\): label\(s\) \['red'\] are not classes of the model"):
        evaluate(root, "models/gb.onnx")


@pytest.mark.slow
def test_champion_regression_gate_copy_passes_degraded_fails(tmp_path):
    suite = {**SUITE, "scenarios": [
        {"name": "clean", "kind": "clean", "level": "must_pass", "min_accuracy": 0.0, "max_drop": 0.02},
        {"kind": "corruption", "corruption": "gaussian_noise", "severities": [2], "level": "warn"},
    ]}
    root = make_project(tmp_path, suite, ["evaluate.compare_champion=true"], per_class=15)
    # no registered model yet: reported, not silently passed
    r0 = evaluate(root)
    assert r0.champion is None and "registered model 'cvplatform' does not exist" in r0.champion_note
    register_onnx(root, root / "models" / "perfect.onnx", alias=None)
    r1 = evaluate(root)
    assert "has no alias 'champion'" in r1.champion_note
    register_onnx(root, root / "models" / "perfect.onnx", alias="champion")  # version 2 = champion

    copy = evaluate(root, "models/perfect.onnx")
    assert copy.passed and copy.champion == "models:/cvplatform@champion" and copy.champion_note == "version 2"
    reg = [c for c in checks(root) if c["name"] == "champion_regression"]
    assert {c["scenario"] for c in reg} == {"clean", "gaussian_noise_s2"}
    assert all(c["status"] == "passed" and c["value"] == 0.0 and c["ci"] == [0.0, 0.0] for c in reg)
    assert "Δ vs champion" in (root / "artifacts/evaluate/report.md").read_text()

    with pytest.raises(GateFailed) as info:
        evaluate(root, "models/swapped.onnx")
    failed = [c for c in checks(root) if c["status"] == "failed"]
    clean_reg = next(c for c in failed if c["scenario"] == "clean" and c["name"] == "champion_regression")
    assert clean_reg["level"] == "must_pass" and clean_reg["ci"][0] < -0.02 and clean_reg["value"] < -0.5
    assert "champion_regression" in str(info.value)
    assert not any(c["name"] == "min_accuracy" for c in failed)  # the regression gate alone failed it

    # the champion evaluated through the registry URI is the same model: identical verdict
    assert evaluate(root, "models:/cvplatform@champion").passed


@pytest.mark.slow
def test_tampered_registered_model_is_never_evaluated_nor_used_as_the_champion(tmp_path, monkeypatch):
    """The registry artifact is replaced after registration by another *valid* model (the swapped one):
    `cvplatform evaluate --model models:/...` and the champion comparison of a plain evaluate both go
    through the registry's sha256-verified loader and refuse it (exit 1), evaluating nothing."""
    from cvplatform.cli import app
    from cvplatform.tracking import tracking_uri
    from tests.unit.registry.project import stored_onnx_path

    root = make_project(tmp_path, None, ["evaluate.compare_champion=true"])
    version = register_onnx(root, root / "models" / "perfect.onnx", alias="champion")
    monkeypatch.chdir(root)
    runner = CliRunner()
    assert runner.invoke(app, ["evaluate", "--model", "models:/cvplatform@champion"]).exit_code == 0
    (root / "artifacts" / "evaluate" / "summary.json").unlink()

    stored = stored_onnx_path(tracking_uri(root), "cvplatform", version)
    assert stored.is_file() and stored.read_bytes() == (root / "models" / "perfect.onnx").read_bytes()
    stored.write_bytes((root / "models" / "swapped.onnx").read_bytes())  # loads fine, predicts wrongly

    direct = runner.invoke(app, ["evaluate", "--model", "models:/cvplatform@champion"])
    assert direct.exit_code == 1, direct.output
    assert "refusing to load version 1 of 'cvplatform'" in direct.output
    assert "modified after registration" in direct.output
    assert not (root / "artifacts" / "evaluate" / "summary.json").exists()  # nothing was evaluated

    baseline = runner.invoke(app, ["evaluate", "--model", "models/perfect.onnx"])
    assert baseline.exit_code == 1, baseline.output
    assert "champion models:/cvplatform@champion exists but cannot be loaded" in baseline.output
    assert "modified after registration" in baseline.output
    assert not (root / "artifacts" / "evaluate" / "summary.json").exists()


@pytest.mark.slow
def test_champion_that_cannot_be_loaded_is_a_clear_error(tmp_path):
    root = make_project(tmp_path, None, ["evaluate.compare_champion=true"])
    export_onnx(colour_model(), root / "models" / "bare.onnx", None)
    register_onnx(root, root / "models" / "bare.onnx", alias="champion")
    with pytest.raises(ModelError, match=r"champion models:/cvplatform@champion exists but cannot be loaded: .*"
                                         r"preprocessing contract key\(s\)"):
        evaluate(root)


@pytest.mark.slow
def test_trained_checkpoint_end_to_end_logs_to_the_training_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from cvplatform.evaluation.predictors import TorchCheckpointPredictor
    from cvplatform.train import run_train

    lenient = {**SUITE, "scenarios": [{**SUITE["scenarios"][0], "min_accuracy": 0.0, "min_macro_f1": 0.0,
                                       "max_ece": None}, *SUITE["scenarios"][1:3]]}
    from cvplatform.export.run import run_export

    root = make_project(tmp_path, lenient, ["train.epochs=2", "export.int8.enabled=false",
                                            "export.benchmark.enabled=false"], per_class=12)
    train = run_train(load_params(root / "params.yaml"), root=root)
    exported = run_export(load_params(root / "params.yaml"), root=root)
    r = evaluate(root, None)  # default model: evaluate.model = artifacts/export/model.onnx, the artifact that ships
    assert r.passed and r.model.endswith("artifacts/export/model.onnx")
    assert r.model_sha256 == exported.sha256  # the gates judged exactly the exported bytes
    assert r.mlflow_run_id == train.run_id  # the exported artifact of the training run: logged to that run
    client = MlflowClient(train.tracking_uri)
    run = client.get_run(train.run_id)
    assert run.data.metrics["eval.clean.accuracy"] == pytest.approx(r.scenarios[0]["accuracy"])
    assert run.data.tags["eval.gates_passed"] == "true" and run.data.tags["eval.model_sha256"] == exported.sha256
    logged = {a.path for a in client.list_artifacts(train.run_id, "evaluate")}
    assert {"evaluate/report.md", "evaluate/report.html", "evaluate/metrics.json", "evaluate/plots",
            "evaluate/model_card.md"} <= logged
    card = (root / "artifacts/evaluate/model_card.md").read_text()
    assert exported.sha256 in card and "gates **PASSED**" in card

    ckpt = evaluate(root, "artifacts/train/best.ckpt")  # the checkpoint is still the training run's own model
    assert ckpt.mlflow_run_id == train.run_id and not (root / "artifacts/evaluate/model_card.md").exists()

    # the checkpoint predictor preprocesses exactly like training's eval pipeline
    pred = TorchCheckpointPredictor(root / "artifacts/train/best.ckpt")
    m = pd.read_parquet(root / "data/processed/manifest.parquet")
    imgs = [np.asarray(Image.open(root / p).convert("RGB")) for p in m[m.split == "test"].path]
    ours = softmax(pred.predict_logits(imgs))
    theirs = softmax(pred.loaded.forward(imgs).numpy())
    np.testing.assert_allclose(ours, theirs, atol=1e-5)

    # an explicitly given other model is evaluated but not logged to the training run
    r2 = evaluate(root, "models/perfect.onnx")
    assert r2.mlflow_run_id is None and "neither the training run's checkpoint nor its exported artifact" in \
        r2.mlflow_note


def test_cli_exit_codes(tmp_path, monkeypatch):
    from cvplatform.cli import app

    root = make_project(tmp_path)
    monkeypatch.chdir(root)
    runner = CliRunner()
    ok = runner.invoke(app, ["evaluate", "--model", "models/perfect.onnx"])
    assert ok.exit_code == 0, ok.output
    assert "gates: PASSED" in ok.output and "summary:" in ok.output
    bad = runner.invoke(app, ["evaluate", "--model", "models/swapped.onnx", "--set", "evaluate.gallery_size=0"])
    assert bad.exit_code == 3, bad.output
    assert "[FAIL] must_pass clean" in bad.output and "evaluation gates failed" in bad.output
    missing = runner.invoke(app, ["evaluate", "--model", "models/nope.onnx"])
    assert missing.exit_code == 1 and "ONNX model not found" in missing.output
    cfg = runner.invoke(app, ["evaluate", "--set", "evaluate.spilt=val"])
    assert cfg.exit_code == 2 and "evaluate.spilt: unknown key" in cfg.output
