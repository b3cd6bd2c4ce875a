"""run_export end to end on a tiny trained model: outputs, contract, inference on what was exported, failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cvplatform.errors import DataError, ModelError
from cvplatform.utils.io import sha256_file
from tests.unit.export.helpers import load, run_onnx_file, split_images

pytestmark = pytest.mark.slow

CONTRACT_KEYS = {"chosen", "artifact", "sha256", "precision", "int8_rejected_reason", "parity", "benchmark",
                 "train_run_id", "data_hash", "class_names"}


def _summary(root: Path) -> dict:
    return json.loads((root / "artifacts" / "export" / "summary.json").read_text())


def test_export_writes_the_registry_contract_and_the_shipped_file_runs(exported):
    root, result = exported
    out = root / "artifacts" / "export"
    for name in ("model_fp32.onnx", "model_int8.onnx", "model.onnx", "parity.json", "int8.json", "benchmark.json",
                 "metrics.json", "summary.json"):
        assert (out / name).is_file(), name
    assert not (out / "model_card.md").exists()  # evaluate writes the card once the gates judged this artifact
    s = _summary(root)
    assert set(s) >= CONTRACT_KEYS
    assert s["artifact"] == "artifacts/export/model.onnx"
    assert s["sha256"] == sha256_file(out / "model.onnx") == result.sha256
    # max_drop 1.0 in the test params: INT8 is accepted and model.onnx is a copy of it
    assert s["chosen"] == s["precision"] == "int8" and s["int8_rejected_reason"] is None
    assert (out / "model.onnx").read_bytes() == (out / "model_int8.onnx").read_bytes()
    assert s["class_names"] == ["blue", "green", "red"]
    train = json.loads((root / "artifacts" / "train" / "summary.json").read_text())
    assert s["train_run_id"] == train["run_id"] and s["data_hash"] == train["data_version"]
    assert s["parity"]["passed"] is True and s["parity"]["n"] == 6

    # run what was exported: plain onnxruntime + the metadata, batch of 6 and batch 1
    images, labels = split_images(root, "test")
    for f in ("model.onnx", "model_fp32.onnx"):
        batch, single = run_onnx_file(out / f, images)
        assert batch.shape == (6, 3) and np.isfinite(batch).all()
        assert np.allclose(batch, single, atol=1e-4)
    # the fp32 file reproduces PyTorch on the same images
    from cvplatform.evaluation.predictors import TorchCheckpointPredictor

    torch_logits = TorchCheckpointPredictor(root / "artifacts" / "train" / "best.ckpt").predict_logits(images)
    fp32, _ = run_onnx_file(out / "model_fp32.onnx", images)
    assert np.abs(fp32 - torch_logits).max() <= 1e-4
    assert (fp32.argmax(1) == torch_logits.argmax(1)).all()
    assert any("parity" in line and "PASSED" in line for line in result.lines())


def test_metadata_round_trip_and_version_info(exported):
    import onnxruntime as ort

    from cvplatform.evaluation.predictors import contract_from_checkpoint
    from cvplatform.export.onnx_export import VERSION_KEYS
    from cvplatform.models.checkpoint import load_checkpoint
    from cvplatform.preprocess import PreprocessContract

    root, result = exported
    ckpt = root / "artifacts" / "train" / "best.ckpt"
    expected = contract_from_checkpoint(load_checkpoint(ckpt))
    for name, precision in (("model.onnx", "int8"), ("model_fp32.onnx", "fp32"), ("model_int8.onnx", "int8")):
        path = root / "artifacts" / "export" / name
        meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
        assert PreprocessContract.from_metadata(meta, source=name) == expected
        assert set(VERSION_KEYS) <= set(meta)
        assert json.loads(meta["precision"]) == precision
        assert json.loads(meta["model_arch"]) == "small_cnn"
        assert json.loads(meta["train_run_id"]) == result.train_run_id
        assert json.loads(meta["data_hash"]) == result.data_hash
        assert json.loads(meta["checkpoint_sha256"]) == sha256_file(ckpt)
        assert "time" not in " ".join(meta)  # no export timestamp: same checkpoint, same file
    assert result.metadata == {k: v for k, v in meta.items()}


def test_model_card_has_every_section_and_the_evaluation(exported):
    from cvplatform.export.model_card import SECTIONS

    root, result = exported
    card = (root / "artifacts" / "evaluate" / "model_card.md").read_text()
    for section in SECTIONS:
        assert f"\n## {section}\n" in card, section
    assert result.sha256 in card and result.data_hash in card and result.train_run_id in card
    ev = json.loads((root / "artifacts" / "evaluate" / "summary.json").read_text())
    for sc in ev["scenarios"]:
        assert f"`{sc['name']}`" in card
    assert "accuracy CI" in card and "[" in card  # per-scenario CIs
    limitations = card.split("## Known limitations")[1].split("\n## ")[0]
    assert "`dark_s5`" in limitations  # the warn-level scenario the 1-epoch model fails
    assert "describes model" not in card  # the evaluation is of the exported artifact
    assert f"Judged artifact sha256 `{result.sha256}`" in card
    assert "| `blue` | 6 | 2 | 2 | 10 |" in card  # counts per class and split
    assert "cost_per_1k = latency_s * threads / 3600" in card


def test_benchmark_metrics_and_cost_formula(exported):
    root, result = exported
    out = root / "artifacts" / "export"
    bench = json.loads((out / "benchmark.json").read_text())
    assert set(bench["runtimes"]) == {"torch_eager", "ort_fp32", "ort_int8"}
    for r in bench["runtimes"].values():
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] and lat["n"] == 5
        assert r["throughput_ips"] > 0
        expected = lat["p50"] / 1000 * bench["threads"] / 3600 * bench["price_per_core_hour"] * 1000
        assert r["cost_per_1k_usd"] == pytest.approx(expected)
    assert {"ort_fp32_vs_torch_batch1", "int8_vs_fp32_batched"} <= set(bench["speedups"])
    assert bench["runtimes"]["ort_fp32"]["provider"] == "CPUExecutionProvider"
    metrics = json.loads((out / "metrics.json").read_text())  # what `dvc metrics show` prints: numbers only
    assert metrics == {"size_mb": pytest.approx((out / "model.onnx").stat().st_size / 1e6, abs=1e-4),
                       "latency_ms": pytest.approx(bench["runtimes"]["ort_int8"]["latency_ms"]["p50"], abs=1e-4)}


def test_outputs_are_logged_to_the_training_run(exported):
    from mlflow.tracking import MlflowClient

    root, result = exported
    train = json.loads((root / "artifacts" / "train" / "summary.json").read_text())
    assert result.mlflow_run_id == train["run_id"]
    client = MlflowClient(tracking_uri=train["tracking_uri"])
    names = {Path(a.path).name for a in client.list_artifacts(result.mlflow_run_id, "export")}
    assert {"benchmark.json", "parity.json", "model.onnx", "model_fp32.onnx", "model_int8.onnx"} <= names
    evaluated = {Path(a.path).name for a in client.list_artifacts(result.mlflow_run_id, "evaluate")}
    assert "model_card.md" in evaluated  # logged by evaluate, which judged this very artifact
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["export.sha256"] == result.sha256
    assert run.data.metrics["export.parity.top1_agreement"] == 1.0


def test_int8_rejected_ships_fp32_and_says_why(project):
    from cvplatform.export.run import run_export

    result = run_export(load(project, "export.int8.max_drop=-1", "export.benchmark.enabled=false"), root=project)
    out = project / "artifacts" / "export"
    assert result.chosen == "fp32" and _summary(project)["chosen"] == "fp32"
    assert "clean" in result.int8_rejected_reason and "max_drop" in result.int8_rejected_reason
    assert (out / "model.onnx").read_bytes() == (out / "model_fp32.onnx").read_bytes()
    assert (out / "model_int8.onnx").is_file()  # produced and judged, just not shipped
    assert result.benchmark is None
    assert json.loads((out / "benchmark.json").read_text())["enabled"] is False  # DVC outs are unconditional
    assert "rejected" in "\n".join(result.lines())
    batch, _ = run_onnx_file(out / "model.onnx", split_images(project)[0])
    assert np.isfinite(batch).all()
    from cvplatform.evaluation.run import run_evaluate

    run_evaluate(load(project), root=project)  # the pipeline's next stage writes the card
    card = (project / "artifacts" / "evaluate" / "model_card.md").read_text()
    assert "INT8 was not shipped" in card


def test_parity_failure_exits_3_and_ships_nothing(project, monkeypatch):
    from typer.testing import CliRunner

    from cvplatform.cli import app

    monkeypatch.chdir(project)
    res = CliRunner().invoke(app, ["export", "--set", "export.parity.atol=1e-12", "--set", "export.int8.enabled=false"])
    assert res.exit_code == 3, res.output
    out = project / "artifacts" / "export"
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] is False and parity["max_abs_diff"] > 1e-12
    assert "parity gate failed" in res.output and parity["worst"][0]["path"] in res.output
    assert not (out / "model.onnx").exists() and not (out / "summary.json").exists()


def test_cli_export_succeeds(project, monkeypatch):
    from typer.testing import CliRunner

    from cvplatform.cli import app

    monkeypatch.chdir(project)
    res = CliRunner().invoke(app, ["export", "--set", "export.int8.enabled=false", "--set",
                                   "export.benchmark.enabled=false", "--set", "export.log_to_mlflow=false"])
    assert res.exit_code == 0, res.output
    assert "export: artifacts/export/model.onnx = fp32" in res.output
    assert _summary(project)["int8_rejected_reason"] == "INT8 disabled (export.int8.enabled: false)"
    out = project / "artifacts" / "export"
    assert json.loads((out / "int8.json").read_text()) == {"enabled": False}
    assert not (out / "model_int8.onnx").exists()
    assert (out / "model.onnx").read_bytes() == (out / "model_fp32.onnx").read_bytes()


def test_checkpoint_of_another_architecture_is_refused(project):
    from cvplatform.export.run import run_export

    with pytest.raises(ModelError, match="small_cnn.*differs from train.model.arch 'resnet'"):
        run_export(load(project, "train.model.arch=resnet"), root=project)
    assert not (project / "artifacts" / "export").exists()


def test_checkpoint_with_other_classes_than_the_manifest_is_refused(project):
    from cvplatform.data.manifest import read_manifest, write_manifest
    from cvplatform.export.run import run_export

    mpath = project / "data" / "processed" / "manifest.parquet"
    df = read_manifest(mpath)
    df.loc[df["label"] == "blue", "label"] = "navy"
    write_manifest(df, mpath)
    with pytest.raises(ModelError) as e:
        run_export(load(project), root=project)
    msg = str(e.value)
    assert "['navy']" in msg and "['blue']" in msg and "manifest" in msg


def test_nan_weights_are_a_clear_model_error(project):
    import torch

    from cvplatform.export.run import run_export

    ckpt_path = project / "artifacts" / "train" / "best.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if k.endswith("weight") and v.ndim == 4)
    ckpt["state_dict"][key] = torch.full_like(ckpt["state_dict"][key], float("nan"))
    torch.save(ckpt, ckpt_path)
    with pytest.raises(ModelError, match="non-finite outputs.*checkpoint itself is broken"):
        run_export(load(project), root=project)
    assert not (project / "artifacts" / "export" / "model.onnx").exists()


def test_empty_calibration_split_is_a_data_error(project):
    from cvplatform.data.manifest import read_manifest, write_manifest
    from cvplatform.export.run import run_export

    mpath = project / "data" / "processed" / "manifest.parquet"
    df = read_manifest(mpath)
    df.loc[df["split"] == "train", "split"] = "val"
    write_manifest(df, mpath)
    with pytest.raises(DataError, match="calibration split 'train'.*export.int8.calibration_split"):
        run_export(load(project), root=project)


def test_recipe_the_contract_cannot_express_is_refused(project):
    import torch

    from cvplatform.export.run import run_export

    ckpt_path = project / "artifacts" / "train" / "best.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["hyper_parameters"]["preprocess"]["eval"] = [{"name": "CenterCrop", "params": {"height": 12, "width": 12}}]
    torch.save(ckpt, ckpt_path)
    with pytest.raises(ModelError, match="CenterCrop"):
        run_export(load(project), root=project)



def test_a_checkpoint_training_did_not_record_gets_no_borrowed_lineage(project):
    from cvplatform.export.run import run_export

    other = project / "models" / "candidate.ckpt"
    other.parent.mkdir()
    shutil.copy(project / "artifacts" / "train" / "best.ckpt", other)
    result = run_export(load(project, "export.int8.enabled=false", "export.benchmark.enabled=false"),
                        root=project, checkpoint=other)
    assert result.train_run_id is None and result.mlflow_run_id is None
    assert "no training run id" in result.mlflow_note
    assert result.checkpoint == "models/candidate.ckpt"
    assert result.data_hash and result.lineage["data_hash_source"] != "artifacts/train/summary.json"
    batch, _ = run_onnx_file(project / "artifacts" / "export" / "model.onnx", split_images(project)[0])
    assert batch.shape == (6, 3)
