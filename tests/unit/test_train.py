"""run_train end to end on a tiny project built from the REAL params.yaml (shrunk with --set overrides).

Covers: outputs (checkpoints, metrics.json, curves, summary, state), MLflow run contents
(params, lineage tags, each epoch's metrics once, artifacts), loading the best checkpoint,
bad input failing before training starts, the CLI, and bit-for-bit reproducibility.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from cvplatform.config import load_params
from cvplatform.data.manifest import read_manifest, write_manifest
from cvplatform.errors import ConfigError, DataError, ModelError
from cvplatform.tracking import file_md5
from cvplatform.train import CURVE_COLUMNS, run_train
from tests.fixtures.tiny_dataset import make_tiny_project

EPOCH_KEYS = ("lr", "train_loss", "train_acc", "train_f1", "val_loss", "val_acc", "val_f1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_tiny_project(tmp_path_factory.mktemp("train"), per_class=10)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
                   cwd=root, check=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("AIRFLOW_CTX_DAG_RUN_ID", "manual__2026-01-01")
        params = load_params(root / "params.yaml", ["train.epochs=2", "train.run_test=true"])
        result = run_train(params, root=root)
    return root, result


def test_outputs(trained):
    root, result = trained
    out = root / "artifacts" / "train"
    for name in ("best.ckpt", "last.ckpt", "metrics.json", "summary.json", "state.json", "plots/curves.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())  # what `dvc metrics show` prints: numbers only
    assert set(metrics) == {"accuracy", "f1", "loss"} and all(isinstance(v, float) for v in metrics.values())
    with (out / "plots" / "curves.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CURVE_COLUMNS
    assert [r["epoch"] for r in rows] == ["0", "1"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "train"
    assert summary["run_id"] == result.run_id
    assert summary["best_checkpoint"] == str(out / "best.ckpt")
    assert metrics["accuracy"] == round(summary["best_metrics"]["val_acc"], 4)  # metrics.json: 4 decimals
    assert {"test_acc", "test_f1"} <= set(summary["best_metrics"]) and summary["epochs_completed"] == 2
    assert summary["class_names"] == ["blue", "green", "red"]
    state = json.loads((out / "state.json").read_text())
    assert state["status"] == "finished" and state["run_id"] == result.run_id and state["epochs_completed"] == 2
    assert any("best epoch" in line for line in result.lines())


def test_best_checkpoint_loads_with_complete_metadata(trained):
    from cvplatform.models.checkpoint import load_checkpoint

    root, result = trained
    lm = load_checkpoint(result.best_checkpoint)
    assert lm.epoch == result.best_epoch
    assert lm.class_names == ["blue", "green", "red"] and lm.num_classes == 3
    assert lm.arch == "small_cnn" and lm.arch_kwargs["width"] == 4
    assert lm.input_size == (32, 32) and len(lm.mean) == len(lm.std) == 3
    assert lm.metrics["val_acc"] == pytest.approx(result.best_metrics["val_acc"])


def test_mlflow_run(trained):
    from mlflow.tracking import MlflowClient

    root, result = trained
    assert result.tracking_uri == f"sqlite:///{root.resolve()}/mlflow.db"
    client = MlflowClient(result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((root.resolve() / "mlartifacts").as_uri())
    p, t = run.data.params, run.data.tags
    assert p["train.epochs"] == "2" and p["seed"] == "42" and p["train.model.arch"] == "small_cnn"
    assert p["train.model.small_cnn.width"] == "4"
    assert t["data_version"] == file_md5(root / "data/processed/manifest.parquet")
    assert t["airflow_run_id"] == "manual__2026-01-01"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert t["git_commit"].startswith(head)
    assert t["env.torch"] and t["env.lightning"] and t["env.python"]
    for key in EPOCH_KEYS:
        steps = [m.step for m in client.get_metric_history(result.run_id, key)]
        assert sorted(steps) == [0, 1], key  # once per epoch, step = epoch
    arts = {a.path for a in client.list_artifacts(result.run_id, "checkpoints")}
    arts |= {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"checkpoints/best.ckpt", "plots/curves.png", "plots/curves.csv"} <= arts
    # train.calibrate: the task's calibration (classification: a temperature) is recorded in the checkpoint
    from cvplatform.models.checkpoint import load_checkpoint

    temperature = load_checkpoint(result.best_checkpoint).temperature
    assert temperature != 1.0 and run.data.metrics["calibration_temperature"] == pytest.approx(temperature)


def test_resume_refuses_changed_params(trained):
    from mlflow.tracking import MlflowClient

    root, result = trained
    params = load_params(root / "params.yaml", ["train.epochs=5", "train.run_test=true"])
    with pytest.raises(ConfigError) as ei:
        run_train(params, root=root, resume=True)
    assert "train.epochs (run: '2', now: '5')" in str(ei.value) and "without --resume" in str(ei.value)
    assert MlflowClient(result.tracking_uri).get_run(result.run_id).info.status == "FINISHED"


def _bad(tmp_path, overrides=(), mutate=None):
    root = make_tiny_project(tmp_path, classes=("a", "b"), per_class=5, overrides=overrides)
    if mutate is not None:
        mutate(root)
    return root


def _drop_val(root: Path) -> None:
    m = root / "data/processed/manifest.parquet"
    df = read_manifest(m)
    write_manifest(df[df.split != "val"], m)


def _drop_columns(root: Path) -> None:
    m = root / "data/processed/manifest.parquet"
    read_manifest(m).drop(columns=["label"]).to_parquet(m)


def _bad_recipe(root: Path) -> None:
    (root / "configs/augment/default.yaml").write_text("train:\n  - {name: Rotatee}\n")


@pytest.mark.parametrize(
    ("overrides", "mutate", "exc", "needles"),
    [
        (["train.model.arch=vgg99"], None, ModelError, ["vgg99", "small_cnn", "resnet", "mobilenet_v2"]),
        (["train.model.small_cnn={widht: 3}"], None, ModelError, ["widht", "width"]),
        (["train.num_classes=5"], None, ConfigError, ["train.num_classes", "5", "2 classes", "['a', 'b']"]),
        (["train.loss.class_weights=[1.0, 2.0, 3.0]"], None, ConfigError, ["class_weights", "3 weights"]),
        ([], _drop_val, DataError, ["split 'val' is empty"]),
        ([], _drop_columns, DataError, ["missing required column", "label"]),
        ([], _bad_recipe, ConfigError, ["default.yaml", "train[0]", "Rotatee"]),
    ],
    ids=["arch", "kwargs", "num_classes", "class_weights", "empty_split", "columns", "recipe"],
)
def test_bad_input_fails_before_training(tmp_path, monkeypatch, overrides, mutate, exc, needles):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = _bad(tmp_path, overrides, mutate)
    with pytest.raises(exc) as ei:
        run_train(load_params(root / "params.yaml"), root=root)
    for needle in needles:
        assert needle in str(ei.value)
    assert not (root / "mlflow.db").exists()  # nothing tracked ...
    assert not (root / "artifacts").exists()  # ... nothing trained


def test_resume_without_or_with_corrupt_checkpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = _bad(tmp_path)
    params = load_params(root / "params.yaml")
    with pytest.raises(ModelError, match="nothing to resume"):
        run_train(params, root=root, resume=True)
    last = root / "artifacts/train/last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelError) as ei:
        run_train(params, root=root, resume=True)
    assert str(last) in str(ei.value) and "corrupt" in str(ei.value)
    assert not (root / "mlflow.db").exists()


def test_cli_reports_errors_with_exit_code(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cvplatform.cli import app

    root = _bad(tmp_path)
    monkeypatch.chdir(root)
    res = CliRunner().invoke(app, ["train", "--set", "train.model.arch=nope"])
    assert res.exit_code != 0
    assert "nope" in res.output and "small_cnn" in res.output
    res = CliRunner().invoke(app, ["train", "--resume"])
    assert res.exit_code != 0 and "nothing to resume" in res.output


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    outs = []
    for name, workers in (("a", 0), ("b", 0), ("c", 2)):
        root = make_tiny_project(tmp_path / name, per_class=10,
                                 overrides=["train.epochs=2", f"train.num_workers={workers}"])
        run_train(load_params(root / "params.yaml"), root=root)
        art = root / "artifacts" / "train"
        outs.append(((art / "metrics.json").read_bytes(), (art / "plots" / "curves.csv").read_bytes()))
    assert outs[0][0] == outs[1][0]  # metrics.json identical, byte for byte
    assert outs[0][1] == outs[1][1]  # and every epoch's curve values
    assert outs[0] == outs[2]  # augmentation seeds do not depend on DataLoader workers


@pytest.mark.slow
def test_default_params_learn_digits(tmp_path, monkeypatch):
    """The shipped train: section (unchanged) reaches > 90 % validation accuracy on digits."""
    from tests.fixtures.tiny_dataset import make_digits_project

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = make_digits_project(tmp_path, overrides=["train.progress_bar=false"])
    result = run_train(load_params(root / "params.yaml"), root=root)
    assert result.num_classes == 10 and result.samples["train"] > 1200
    assert result.best_metrics["val_acc"] > 0.90


def test_failure_during_training_marks_run_failed(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = _bad(tmp_path)
    df = read_manifest(root / "data/processed/manifest.parquet")
    broken = root / df[df.split == "train"].path.iloc[0]
    broken.write_bytes(b"not a png")  # exists (passes setup) but cannot be decoded
    with pytest.raises(DataError, match=broken.name):
        run_train(load_params(root / "params.yaml"), root=root)
    state = json.loads((root / "artifacts/train/state.json").read_text())
    assert state["status"] == "failed"
    run = MlflowClient(state["tracking_uri"]).get_run(state["run_id"])
    assert run.info.status == "FAILED"
